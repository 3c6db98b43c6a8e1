"""ackring: fast, crash-safe, acknowledged message passing between processes
on one Linux machine.

    q = ackring.create("orders", capacity=1024, message_size=4096)
    with q.producer() as p:
        p.put(b"payload")
    with q.consumer() as c, c.get(timeout=1.0) as m:
        handle(m.body)          # acked when the block exits normally
"""
import atexit as _atexit
import gc as _gc
import operator as _operator
import os as _os
import weakref as _weakref

from ._errors import (  # noqa: F401
    AlreadySettled,
    CorruptedQueue,
    Empty,
    Error,
    Full,
    IncompatibleQueue,
    MessageTooLarge,
    PrefetchExceeded,
    QueueClosed,
    QueueNotFound,
    Receipt,
    StaleDelivery,
    TooManyClients,
    UntrustedQueue,
)
from ._check import check_segment as _check_segment
from ._watchdog import Watchdog as _Watchdog
from . import _status
from .backend import Batch, Consumer, Message, Producer, Reservation, Segment
from .backend import name as backend

__version__ = "0.2.0"


def __getattr__(name):
    # ackring.aio (asyncio) and ackring.mp (multiprocessing.Queue drop-in) are
    # imported on first use, so that `import ackring` does not import asyncio.
    if name in ("aio", "mp"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


__all__ = [
    "create", "open", "unlink", "list_queues", "Queue", "Producer", "Consumer", "Message", "Reservation",
    "Batch", "Error", "Empty", "Full", "QueueNotFound", "MessageTooLarge", "IncompatibleQueue",
    "CorruptedQueue", "StaleDelivery", "AlreadySettled", "QueueClosed", "TooManyClients",
    "PrefetchExceeded", "UntrustedQueue", "Receipt", "connect",
]

DEFAULT_DIR = "/dev/shm"
#: Seconds between the watchdog's reclaim passes (see Queue.watchdog).
DEFAULT_WATCHDOG_INTERVAL = 0.1
DLQ_SUFFIX = ".dlq"
FILE_PREFIX = "ackring."
DEFAULT_MAX_DELIVERIES = 20   # as RabbitMQ quorum queues
DURABILITIES = _status.DURABILITY
_DEATH_SIZE = 40              # bytes of dead-letter header in every DLQ slot (ext/ackring.h)
_MAX_MESSAGE_SIZE = (1 << 30) - _DEATH_SIZE
_MAX_CAPACITY = 1 << 24
_UNSET = object()             # "left at its default": taken from an existing queue by exist_ok


def _directory(dir=None):
    """Where segments live: `dir`, else $ACKRING_DIR, else /dev/shm."""
    return dir or _os.environ.get("ACKRING_DIR") or DEFAULT_DIR


def _check_name(name, creating=False):
    if not isinstance(name, str):
        raise TypeError("queue name must be a str, not %s" % type(name).__name__)
    limit = 200 + (len(DLQ_SUFFIX) if name.endswith(DLQ_SUFFIX) and not creating else 0)
    if len(name) > limit or not Segment.valid_name(name):
        raise ValueError(
            "bad queue name %r: use 1 to 200 characters from [A-Za-z0-9._-], not starting with '.'"
            % (name,))
    if creating and name.endswith(DLQ_SUFFIX):
        raise ValueError("bad queue name %r: names ending in %r are the dead-letter queues'"
                         % (name, DLQ_SUFFIX))


def _locate(name, path, dir, creating=False):
    """(name, file path) of a queue given by name (in `dir`) or by `path`."""
    if path is not None:
        path = _os.fspath(path)
        if name is None:
            name = _os.path.basename(path)
            if name.startswith(FILE_PREFIX):
                name = name[len(FILE_PREFIX):]
        if creating and path.endswith(DLQ_SUFFIX):
            raise ValueError("bad queue path %r: paths ending in %r are the dead-letter queues'"
                             % (path, DLQ_SUFFIX))
        return name, path
    if name is None:
        raise TypeError("give a queue name, or path=")
    _check_name(name, creating)
    return name, _os.path.join(_directory(dir), FILE_PREFIX + name)


def _int_arg(value, what):
    if isinstance(value, bool):
        raise TypeError("%s must be an int, not bool" % what)
    try:
        return _operator.index(value)
    except TypeError:
        raise TypeError("%s must be an int, not %s" % (what, type(value).__name__)) from None


def _trust(trust_uids):
    uids = tuple(_int_arg(u, "trust_uids item") for u in (trust_uids or ()))
    if any(not 0 <= u < 1 << 32 for u in uids):
        raise ValueError("trust_uids must be uids (0 .. 2**32-1)")
    return uids


class Queue:
    """A handle on one queue, mapped into this process.

    Picklable by path: a child process that unpickles it opens the queue.

    ``watchdog`` is the interval in seconds of this process's watchdog thread,
    started with the first producer or consumer: it reclaims what dead
    processes hold, so their messages are redelivered within about that
    interval.  ``None`` turns it off (blocked calls still reclaim)."""

    def __init__(self, segment, watchdog=DEFAULT_WATCHDOG_INTERVAL, trust_uids=()):
        if watchdog is not None and not watchdog > 0:
            raise ValueError("watchdog must be None or an interval > 0 seconds, not %r" % (watchdog,))
        self._seg = segment
        self._clients = _weakref.WeakSet()
        self._watchdog_interval = watchdog
        self._watchdog = None
        self._dead_letters = None
        self._trust = trust_uids
        self.last_recovery = None
        _open_queues.add(self)

    # ---- identity
    name = property(lambda self: self._seg.name)
    path = property(lambda self: self._seg.path, doc="The queue's file.")
    capacity = property(lambda self: self._seg.capacity)
    message_size = property(lambda self: self._seg.message_size)
    queue_id = property(lambda self: self._seg.queue_id)
    closed = property(lambda self: self._seg.closed)
    config = property(lambda self: self._seg.config,
                      doc="Rules fixed at creation: max_deliveries, ttl, ack_timeout, durability, checksum.")
    durability = property(lambda self: self._seg.config["durability"])
    is_shutdown = property(lambda self: self._seg.is_shutdown)

    @property
    def dead_letters(self):
        """The dead-letter queue ``<name>.dlq`` (a Queue whose messages carry
        ``m.death``).  None for a dead-letter queue itself, or when it was removed."""
        if self._dead_letters is None and self._seg.dlq is not None and not self._seg.dlq.closed:
            self._dead_letters = Queue(self._seg.dlq, watchdog=None)
        return self._dead_letters

    @property
    def open_recovery(self):
        """What opening this queue repaired (dead entries, requeued messages,
        half-written ones discarded, a rebuild after reboot): a dict."""
        return self._seg.last_open() if self.last_recovery is None else self.last_recovery

    def __repr__(self):
        state = "closed" if self.closed else "capacity=%d message_size=%d" % (self.capacity, self.message_size)
        return "<ackring.Queue %r %s>" % (self.name, state)

    def __reduce__(self):
        return (_reopen, (self._seg.name, self._seg.path, self._watchdog_interval, self._trust))

    @property
    def watchdog(self):
        """This process's watchdog thread for the queue, or None."""
        return self._watchdog

    def _start_watchdog(self):
        if self._watchdog_interval is not None and (self._watchdog is None or not self._watchdog.is_alive()):
            self._watchdog = _Watchdog(self._seg, self._watchdog_interval)
            self._watchdog.start()

    # ---- clients
    def _client(self, make):
        try:
            c = make()
        except TooManyClients:
            # Clients dropped without close() are freed by their finalizers;
            # without reference counting (PyPy) those run at a collection.
            _gc.collect()
            c = make()
        self._clients.add(c)
        self._start_watchdog()
        return c

    def producer(self):
        """A new Producer (one process-table entry until it is closed)."""
        return self._client(lambda: Producer(self._seg))

    def consumer(self, prefetch=None, ack_timeout=None):
        """A new Consumer; closing it requeues whatever it still holds unsettled.

        ``prefetch``: at most this many unsettled messages at a time (get()
        past it raises PrefetchExceeded at once).  ``ack_timeout``: seconds a
        delivery may stay unsettled before it is taken back and redelivered
        (default: the queue's ack_timeout)."""
        return self._client(lambda: Consumer(self._seg, prefetch, ack_timeout))

    # ---- inspection, operations and repair
    def stats(self):
        """Counters and a snapshot: depth (ready), in_flight (delivered,
        unsettled), unsettled, published, acked, nacked (requeues only),
        redelivered, dead_lettered, recovered, reclaimed_entries,
        oldest_unsettled (age and holder), producers, consumers, ... (the
        README's table explains each)."""
        return self._seg.stats()

    def reclaim(self):
        """Repair what dead processes left (their deliveries are redelivered,
        their half-written slots discarded, their half-done ring operations
        finished) and take back deliveries whose lease ran out; returns the
        number of messages put right.  The details: ``last_recovery``."""
        r = self._seg.reclaim()
        self.last_recovery = r
        return r["requeued"] + r["discarded"] + r["repushed"] + r["leases"]

    def check(self):
        """Verify the whole segment; returns a list of problems in plain words,
        empty when sound.  Exact on a quiet queue; under traffic a finding
        can be transient."""
        return _check_segment(self._seg)

    def peek(self, n=10):
        """Up to n ready messages in delivery order, without taking them: a
        list of dicts (id, body, delivery_count, publish_time, requeued; on a
        dead-letter queue also death: reason, id, delivery_count,
        first_publish_time, time, as ``m.death``)."""
        n = _int_arg(n, "n")
        out = []
        for i, b, dc, pub, rq, death in self._seg.peek(n):
            row = {"id": i, "body": b, "delivery_count": dc, "publish_time": pub / 1e9, "requeued": rq}
            if death is not None:
                row["death"] = death
            out.append(row)
        return out

    def purge(self):
        """Drop every message that is ready now (not those held by consumers);
        returns how many."""
        with Consumer(self._seg) as c:
            return c.purge()

    def redrive(self, n=None, reason=None, timeout=0, put_timeout=None):
        """Move dead letters back to this queue (optionally only those of
        ``reason``, at most ``n``); returns how many moved.  Each is put here
        (confirmed) before it is acked in the DLQ, so a death midway leaves a
        copy in both places, never none.  Looks at most at the dead letters
        there when it starts (plus those arriving within ``timeout``).  If
        this queue stays full for ``put_timeout`` seconds (None: wait), the
        dead letter in hand goes back to the DLQ and Full is raised with
        ``.moved``, the count so far."""
        dlq = self.dead_letters
        if dlq is None:
            raise ValueError("queue %r has no dead-letter queue" % self.name)
        if reason is not None and reason not in ("rejected", "delivery_limit", "expired", "lease_expired"):
            raise ValueError("reason must be rejected, delivery_limit, expired or lease_expired, not %r" % (reason,))
        limit = None if n is None else _int_arg(n, "n")
        moved = 0
        skipped = []
        budget = dlq.stats()["depth"]
        with self.producer() as p, dlq.consumer() as c:
            try:
                while (limit is None or moved < limit) and (budget > 0 or timeout):
                    try:
                        m = c.get(timeout=timeout)
                    except Empty:
                        break
                    budget -= 1
                    if reason is not None and m.death["reason"] != reason:
                        skipped.append(m)
                        continue
                    try:
                        p.put(m.body, timeout=put_timeout)
                    except Full:
                        m.nack()
                        e = Full("queue %r stayed full for %ss: moved %d dead letter(s), stopped"
                                 % (self.name, put_timeout, moved))
                        e.moved = moved
                        raise e from None
                    m.ack()
                    moved += 1
            finally:
                for m in skipped:
                    m.nack()
        return moved

    def shutdown(self):
        """Shut the queue down for every process: puts raise QueueClosed at
        once; gets (and ``for m in c``) end once the ready messages are drained."""
        self._seg.shutdown()

    def sync(self):
        """File queues: make everything written so far durable (fdatasync)."""
        self._seg.sync()

    def run_watchdog(self, interval=DEFAULT_WATCHDOG_INTERVAL, stop=None, on_repair=None):
        """Run reclaim passes every ``interval`` seconds in this thread until
        ``stop`` (a threading.Event) is set or the queue is closed.  This is
        what ``ackring watchdog NAME`` runs."""
        import threading
        stop = stop or threading.Event()
        while not self._seg.closed and not stop.wait(interval):
            n = self.reclaim()
            if n and on_repair is not None:
                on_repair(n)

    def close(self):
        """Close every producer and consumer of this handle, then the handle.
        Idempotent.  The mapping goes when the last message view goes."""
        if self._seg.closed:
            return
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog.join(5)
        for c in list(self._clients):
            c.close()
        self._seg.close()
        if self._dead_letters is not None:
            self._dead_letters.close()
        elif self._seg.dlq is not None:
            self._seg.dlq.close()
        _open_queues.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_open_queues = _weakref.WeakSet()


def _restart_watchdogs_in_child():
    # Threads do not survive fork(): a child that inherited open queues gets
    # watchdogs of its own for those that had one.
    for q in list(_open_queues):
        if q._watchdog is not None and not q._seg.closed:
            q._watchdog = None
            q._start_watchdog()


_os.register_at_fork(after_in_child=_restart_watchdogs_in_child)


@_atexit.register
def _close_all():
    # Release process-table entries (and requeue unsettled deliveries) at exit;
    # close() joins each watchdog before its entries go.
    for q in list(_open_queues):
        try:
            q.close()
        except Exception:
            pass


def _reopen(name, path, watchdog=DEFAULT_WATCHDOG_INTERVAL, trust_uids=()):
    return _opened(Segment.open(path, name, trust_uids), watchdog, trust_uids)


def _opened(segment, watchdog, trust_uids):
    if not segment.is_dlq:
        try:
            dlq = Segment.open(segment.path + DLQ_SUFFIX, segment.name + DLQ_SUFFIX, trust_uids)
        except QueueNotFound:
            pass  # removed by hand: dead letters are dropped, and counted (stats "dropped")
        else:
            try:
                segment.attach_dlq(dlq)
            except BaseException:
                dlq.close()
                segment.close()
                raise
    q = Queue(segment, watchdog, trust_uids)
    # Opening a queue whose processes have all died recovers it.
    q.last_recovery = _merge(segment.last_open(), segment.reclaim())
    return q


def _merge(a, b):
    return {k: a[k] + b[k] for k in a}


def _check_capacity(capacity, what="capacity"):
    capacity = _int_arg(capacity, what)
    if capacity < 2 or capacity > _MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError("%s must be a power of two from 2 to %d, not %d" % (what, _MAX_CAPACITY, capacity))
    return capacity


def _durability(durability, durable):
    if durable is not None:
        if durability is not _UNSET:
            raise TypeError("give durability= or durable=, not both")
        return "sync" if durable else "memory"
    if durability is _UNSET:
        return _UNSET
    if durability not in DURABILITIES:
        raise ValueError("durability must be one of %s, not %r" % (", ".join(DURABILITIES), durability))
    return durability


def create(name=None, capacity=_UNSET, message_size=_UNSET, *, exist_ok=False, mode=0o600, max_clients=256,
           max_deliveries=_UNSET, ttl=_UNSET, ack_timeout=_UNSET, dead_letter_capacity=_UNSET,
           durability=_UNSET, durable=None, checksum=False, path=None, dir=None,
           watchdog=DEFAULT_WATCHDOG_INTERVAL, trust_uids=()):
    """Create queue `name` holding up to `capacity` unsettled messages (a
    power of two, default 1024) of up to `message_size` bytes (default 4096),
    and its dead-letter queue `name.dlq`.

    max_deliveries: dead-letter a message (reason "delivery_limit") instead of
    delivering it more often than this (default 20; None: unlimited).  ttl:
    seconds a message may wait undelivered (reason "expired").  ack_timeout:
    seconds a delivery may stay unsettled before it is taken back and
    redelivered (None: no lease).  dead_letter_capacity: of the DLQ (default
    capacity).  mode: permission bits of the files (0o600: this user only;
    0o660 shares with the group, see README "Security model").

    durability: "memory" (default: lives in /dev/shm, gone at reboot), "os"
    (a file on a real filesystem; survives any process crash, on disk after
    a clean shutdown) or "sync" (put returns once the message is on stable
    storage; group commit).  durable=True means "sync".  A file queue needs
    path= (its file) or dir= (a directory on a real filesystem).
    checksum=True: CRC32C per message also in memory queues.

    FileExistsError if it exists, unless exist_ok=True, which opens it; then
    any setting given here that differs from the queue's raises
    IncompatibleQueue naming it, and the existing queue must be this user's
    own unless its owner is in ``trust_uids`` (as for open)."""
    asked = {k: v for k, v in (("capacity", capacity), ("message_size", message_size),
                                ("max_deliveries", max_deliveries), ("ttl", ttl), ("ack_timeout", ack_timeout),
                                ("dead_letter_capacity", dead_letter_capacity)) if v is not _UNSET}
    durability = _durability(durability, durable)
    if durability is not _UNSET:
        asked["durability"] = durability
    _trust(trust_uids)  # checked before anything is made
    name, qpath = _locate(name, path, dir, creating=True)
    capacity = _check_capacity(1024 if capacity is _UNSET else capacity)
    dlq_capacity = capacity if dead_letter_capacity in (_UNSET, None) else _check_capacity(
        dead_letter_capacity, "dead_letter_capacity")
    message_size = _int_arg(4096 if message_size is _UNSET else message_size, "message_size")
    max_clients = _int_arg(max_clients, "max_clients")
    mode = _int_arg(mode, "mode")
    if max_deliveries is _UNSET:
        max_deliveries = DEFAULT_MAX_DELIVERIES
    if max_deliveries is not None:
        max_deliveries = _int_arg(max_deliveries, "max_deliveries")
        if not 1 <= max_deliveries <= 0xFFFF:
            raise ValueError("max_deliveries must be None or from 1 to 65535, not %d" % max_deliveries)
    if not 1 <= message_size <= _MAX_MESSAGE_SIZE:
        raise ValueError("message_size must be from 1 to %d bytes, not %d" % (_MAX_MESSAGE_SIZE, message_size))
    if not 1 <= max_clients <= 4095:
        raise ValueError("max_clients must be from 1 to 4095, not %d" % max_clients)
    if not 0 <= mode <= 0o777:
        raise ValueError("mode must be permission bits only, 0o000 to 0o777 (no setuid/setgid/sticky), not %o"
                         % mode)
    if not mode & 0o600 == 0o600:
        raise ValueError("mode %o must let the owner read and write (0o600)" % mode)
    dur = "memory" if durability is _UNSET else durability
    if dur != "memory" and path is None and dir is None:
        raise ValueError("durability=%r needs path= (the queue's file) or dir= (a directory on a real "
                         "filesystem, not /dev/shm)" % dur)
    directory = _os.path.dirname(qpath) or "."
    if not _os.path.isdir(directory):
        raise FileNotFoundError("the queue directory %r does not exist%s" % (
            directory, " (ACKRING_DIR)" if path is None and dir is None and _os.environ.get("ACKRING_DIR") else ""))
    ttl_v = None if ttl is _UNSET else ttl
    ack_v = None if ack_timeout is _UNSET else ack_timeout
    try:
        seg, dlq = Segment.create_pair(qpath, name, capacity, message_size, max_clients, dlq_capacity, mode,
                                       max_deliveries or 0, ttl_v, ack_v, DURABILITIES.index(dur), checksum)
    except FileExistsError:
        if not exist_ok:
            raise FileExistsError("queue %r exists (pass exist_ok=True to open it)" % name) from None
    else:
        q = Queue(seg, watchdog)
        q._dead_letters = Queue(dlq, watchdog=None)
        return q
    q = open(name, path=qpath, watchdog=watchdog, trust_uids=trust_uids)
    try:
        _check_existing(q, asked)
    except BaseException:
        q.close()
        raise
    return q


def _check_existing(q, asked):
    """exist_ok: every setting asked for must match the queue's own."""
    cfg = q.config
    have = {"capacity": q.capacity, "message_size": q.message_size,
            "max_deliveries": cfg["max_deliveries"], "ttl": cfg["ttl"], "ack_timeout": cfg["ack_timeout"],
            "durability": cfg["durability"],
            "dead_letter_capacity": q.dead_letters.capacity if q.dead_letters is not None else None}
    for key, want in asked.items():
        got = have[key]
        if key == "dead_letter_capacity" and want is None:
            want = q.capacity
        if key in ("ttl", "ack_timeout") and want is not None and got is not None:
            same = abs(float(want) - got) < 1e-9 * max(1.0, got)
        else:
            same = want == got
        if not same:
            raise IncompatibleQueue("queue %r exists with %s=%r, not %s=%r" % (q.name, key, got, key, want))


def open(name=None, *, path=None, dir=None, watchdog=DEFAULT_WATCHDOG_INTERVAL, trust_uids=()):  # noqa: A001
    """Open an existing queue, by name (in ``dir``, $ACKRING_DIR or /dev/shm)
    or by ``path``.  QueueNotFound if there is none; IncompatibleQueue if the
    file is not an ackring segment of this layout; UntrustedQueue if it is a
    symlink, another user's file (unless its uid is in ``trust_uids``), or
    writable by others against its creator's mode.  Whatever dead processes
    left in it is reclaimed on the way (``q.open_recovery`` says what)."""
    name, qpath = _locate(name, path, dir)
    trust = _trust(trust_uids)
    return _opened(Segment.open(qpath, name, trust), watchdog, trust)


def unlink(name=None, missing_ok=False, *, path=None, dir=None, trust_uids=()):
    """Shut queue `name` and its dead-letter queue down (every process still
    attached is woken: gets end once drained, puts raise) and remove both."""
    name, qpath = _locate(name, path, dir)
    try:
        Segment.unlink(qpath, name, _trust(trust_uids))
    except QueueNotFound:
        if not missing_ok:
            raise


def list_queues(dir=None):
    """The queues in ``dir`` (default $ACKRING_DIR or /dev/shm): a list of
    dicts with name, path, size, and (for those that open) depth, in_flight,
    consumers, producers, dlq_depth, durability; ``error`` for those that do not."""
    directory = _directory(dir)
    out = []
    try:
        names = sorted(_os.listdir(directory))
    except FileNotFoundError:
        raise FileNotFoundError("the queue directory %r does not exist" % directory) from None
    for fn in names:
        if not fn.startswith(FILE_PREFIX) or fn.endswith(DLQ_SUFFIX):
            continue
        name = fn[len(FILE_PREFIX):]
        p = _os.path.join(directory, fn)
        row = {"name": name, "path": p}
        try:
            row["size"] = _os.lstat(p).st_size + (_os.lstat(p + DLQ_SUFFIX).st_size
                                                  if _os.path.lexists(p + DLQ_SUFFIX) else 0)
            with open(name, dir=directory, watchdog=None) as q:
                st = q.stats()
                d = q.dead_letters
                row.update(depth=st["depth"], in_flight=st["in_flight"], consumers=st["consumers"],
                           producers=st["producers"], dlq_depth=d.stats()["depth"] if d is not None else None,
                           durability=st["durability"], capacity=st["capacity"])
        except (Error, OSError) as e:
            row["error"] = "%s: %s" % (type(e).__name__, e)
        out.append(row)
    return out


def connect(url, **kw):
    """The same Queue surface on a RabbitMQ broker: ``connect("amqp://user:pass@host:5672/vhost")``
    returns an ``ackring.amqp.Broker`` with create / open / unlink.  Needs pika
    (``pip install 'ackring[amqp]'``); imported here, so ``import ackring`` never does."""
    from .amqp import connect as _connect

    return _connect(url, **kw)
