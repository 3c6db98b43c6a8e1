"""ackring: fast, crash-safe, acknowledged message passing between processes
on one Linux machine.

    q = ackring.create("orders", capacity=1024, message_size=4096)
    with q.producer() as p:
        p.put(b"payload")
    with q.consumer() as c, c.get(timeout=1.0) as m:
        handle(m.body)          # acked when the block exits normally
"""
import atexit as _atexit
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
)
from ._check import check_segment as _check_segment
from ._watchdog import Watchdog as _Watchdog
from .backend import Consumer, Message, Producer, Reservation, Segment
from .backend import name as backend

__version__ = "0.1.0"


def __getattr__(name):
    # ackring.aio (asyncio) and ackring.mp (multiprocessing.Queue drop-in) are
    # imported on first use, so that `import ackring` does not import asyncio.
    if name in ("aio", "mp"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


__all__ = [
    "create", "open", "unlink", "Queue", "Producer", "Consumer", "Message", "Reservation",
    "Error", "Empty", "Full", "QueueNotFound", "MessageTooLarge", "IncompatibleQueue",
    "CorruptedQueue", "StaleDelivery", "AlreadySettled", "QueueClosed", "TooManyClients",
    "PrefetchExceeded", "Receipt",
]

DEFAULT_DIR = "/dev/shm"
#: Seconds between the watchdog's reclaim passes (see Queue.watchdog).
DEFAULT_WATCHDOG_INTERVAL = 0.1
DLQ_SUFFIX = ".dlq"
DEFAULT_MAX_DELIVERIES = 20   # as RabbitMQ quorum queues
_DEATH_SIZE = 40              # bytes of dead-letter header in every DLQ slot (ext/ackring.h)
_MAX_MESSAGE_SIZE = (1 << 30) - _DEATH_SIZE
_MAX_CAPACITY = 1 << 24


def _directory():
    """Where segments live: /dev/shm, or $ACKRING_DIR (tests point it at a private directory)."""
    return _os.environ.get("ACKRING_DIR") or DEFAULT_DIR


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


def _int_arg(value, what):
    if isinstance(value, bool):
        raise TypeError("%s must be an int, not bool" % what)
    return _operator.index(value)


class Queue:
    """A handle on one queue segment, mapped into this process.

    Picklable by name: a child process that unpickles it opens the queue.

    ``watchdog`` is the interval in seconds of this process's watchdog thread,
    started with the first producer or consumer: it reclaims what dead
    processes hold, so their messages are redelivered within about that
    interval.  ``None`` turns it off (blocked calls still reclaim)."""

    def __init__(self, segment, watchdog=DEFAULT_WATCHDOG_INTERVAL):
        if watchdog is not None and not watchdog > 0:
            raise ValueError("watchdog must be None or an interval > 0 seconds, not %r" % (watchdog,))
        self._seg = segment
        self._clients = _weakref.WeakSet()
        self._watchdog_interval = watchdog
        self._watchdog = None
        self._dead_letters = None
        _open_queues.add(self)

    # ---- identity
    name = property(lambda self: self._seg.name)
    capacity = property(lambda self: self._seg.capacity)
    message_size = property(lambda self: self._seg.message_size)
    queue_id = property(lambda self: self._seg.queue_id)
    closed = property(lambda self: self._seg.closed)
    config = property(lambda self: self._seg.config,
                      doc="Delivery rules fixed at creation: max_deliveries, ttl, ack_timeout.")

    @property
    def dead_letters(self):
        """The dead-letter queue ``<name>.dlq`` (a Queue; consume it like any
        other: its messages carry ``m.death``).  None for a dead-letter queue
        itself, or when it was removed."""
        if self._dead_letters is None and self._seg.dlq is not None:
            self._dead_letters = Queue(self._seg.dlq, watchdog=None)
        return self._dead_letters

    @property
    def path(self):
        return _os.path.join(self._seg.directory, "ackring." + self._seg.name)

    def __repr__(self):
        state = "closed" if self.closed else "capacity=%d message_size=%d" % (self.capacity, self.message_size)
        return "<ackring.Queue %r %s>" % (self.name, state)

    def __reduce__(self):
        return (_reopen, (self._seg.name, self._seg.directory, self._watchdog_interval))

    @property
    def watchdog(self):
        """This process's watchdog thread for the queue, or None."""
        return self._watchdog

    def _start_watchdog(self):
        if self._watchdog_interval is not None and (self._watchdog is None or not self._watchdog.is_alive()):
            self._watchdog = _Watchdog(self._seg, self._watchdog_interval)
            self._watchdog.start()

    # ---- clients
    def producer(self):
        """A new Producer (one process-table entry until it is closed)."""
        p = Producer(self._seg)
        self._clients.add(p)
        self._start_watchdog()
        return p

    def consumer(self, prefetch=None, ack_timeout=None):
        """A new Consumer; closing it requeues whatever it still holds unsettled.

        ``prefetch``: at most this many unsettled messages at a time (get()
        past it raises PrefetchExceeded at once).  ``ack_timeout``: seconds a
        delivery may stay unsettled before it is taken back and redelivered
        (default: the queue's ack_timeout)."""
        c = Consumer(self._seg, prefetch, ack_timeout)
        self._clients.add(c)
        self._start_watchdog()
        return c

    # ---- inspection and repair
    def stats(self):
        """Counters and a snapshot of the ring: depth (ready), in_flight
        (delivered, unsettled), published, acked, nacked, redelivered,
        producers, consumers, capacity, message_size and more."""
        return self._seg.stats()

    def reclaim(self):
        """Repair what dead processes left (their deliveries are redelivered,
        their half-written slots discarded); returns the number of slots."""
        return self._seg.reclaim()

    def check(self):
        """Verify the whole segment (header, every slot word, counters, process
        table); returns a list of problems in plain words, empty when sound.
        Exact on a quiet queue; under traffic a finding can be transient."""
        return _check_segment(self._seg)

    def run_watchdog(self, interval=DEFAULT_WATCHDOG_INTERVAL, stop=None, on_repair=None):
        """Run reclaim passes every ``interval`` seconds in this thread until
        ``stop`` (a threading.Event) is set or the queue is closed.  This is
        what ``ackring watchdog NAME`` runs."""
        import threading
        stop = stop or threading.Event()
        while not self._seg.closed and not stop.wait(interval):
            n = self._seg.reclaim()
            if n and on_repair is not None:
                on_repair(n)

    def close(self):
        """Close every producer and consumer of this handle, then the handle.
        Idempotent.  The mapping is released when the last message view goes."""
        if self._seg.closed:
            return
        if self._watchdog is not None:
            self._watchdog.stop()
        for c in list(self._clients):
            c.close()
        # Ours first: it gives back our entry in the dead-letter queue, which
        # needs that queue still open.
        self._seg.close()
        if self._dead_letters is not None:
            self._dead_letters.close()
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
    # Release process-table entries (and requeue unsettled deliveries) at exit.
    for q in list(_open_queues):
        try:
            q.close()
        except Exception:
            pass


def _opened_new(segment, watchdog):
    return Queue(segment, watchdog)


def _reopen(name, directory, watchdog=DEFAULT_WATCHDOG_INTERVAL):
    return _opened(Segment.open(directory, name), watchdog)


def _opened(segment, watchdog):
    if not segment.is_dlq:
        try:
            dlq = Segment.open(segment.directory, segment.name + DLQ_SUFFIX)
        except QueueNotFound:
            pass  # removed by hand: dead letters are dropped, and counted (stats "dropped")
        else:
            if dlq.clients():
                dlq.reclaim()  # free its dead entries before we take one there
            segment.attach_dlq(dlq)
    q = Queue(segment, watchdog)
    # Opening a queue whose processes have all died recovers it.
    if segment.clients():
        segment.reclaim()
    return q


def _check_capacity(capacity, what="capacity"):
    capacity = _int_arg(capacity, what)
    if capacity < 2 or capacity > _MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError("%s must be a power of two from 2 to %d, not %d" % (what, _MAX_CAPACITY, capacity))
    return capacity


def create(name, capacity=1024, message_size=4096, *, exist_ok=False, mode=0o600, max_clients=256,
           max_deliveries=DEFAULT_MAX_DELIVERIES, ttl=None, ack_timeout=None, dead_letter_capacity=None,
           watchdog=DEFAULT_WATCHDOG_INTERVAL):
    """Create queue `name` with `capacity` slots (a power of two, >= 2) of up to
    `message_size` bytes each, and its dead-letter queue `name.dlq`.

    max_deliveries: a message is dead-lettered (reason "delivery_limit")
    instead of being delivered more often than this (None: unlimited).
    ttl: seconds a message may wait undelivered (reason "expired").
    ack_timeout: seconds a delivery may stay unsettled before it is taken
    back and redelivered (None: no lease).  dead_letter_capacity: slots of
    the dead-letter queue (default: capacity).

    FileExistsError if it exists, unless exist_ok=True, which opens it
    (IncompatibleQueue if its geometry differs)."""
    _check_name(name, creating=True)
    capacity = _check_capacity(capacity)
    dlq_capacity = capacity if dead_letter_capacity is None else _check_capacity(
        dead_letter_capacity, "dead_letter_capacity")
    message_size = _int_arg(message_size, "message_size")
    max_clients = _int_arg(max_clients, "max_clients")
    mode = _int_arg(mode, "mode")
    if max_deliveries is not None:
        max_deliveries = _int_arg(max_deliveries, "max_deliveries")
        if not 1 <= max_deliveries <= 0xFFFF:
            raise ValueError("max_deliveries must be None or from 1 to 65535, not %d" % max_deliveries)
    if not 1 <= message_size <= _MAX_MESSAGE_SIZE:
        raise ValueError("message_size must be from 1 to %d bytes, not %d" % (_MAX_MESSAGE_SIZE, message_size))
    if not 1 <= max_clients <= 4095:
        raise ValueError("max_clients must be from 1 to 4095, not %d" % max_clients)
    if not 0 <= mode <= 0o7777:
        raise ValueError("mode must be a permission mode like 0o600, not %o" % mode)
    directory = _directory()
    # The dead-letter queue first: a crash between the two leaves a spare DLQ
    # (reused by the next create), never a queue without one.
    dlq_name = name + DLQ_SUFFIX
    try:
        dlq = Segment.create(directory, dlq_name, dlq_capacity, message_size + _DEATH_SIZE, max_clients,
                             mode, 0, None, None, True)
        made_dlq = True
    except FileExistsError:
        dlq = Segment.open(directory, dlq_name)
        made_dlq = False
        if not dlq.is_dlq or dlq.message_size != message_size + _DEATH_SIZE:
            dlq.close()
            raise IncompatibleQueue("%r exists and is not the dead-letter queue this queue needs" % dlq_name)
    try:
        seg = Segment.create(directory, name, capacity, message_size, max_clients, mode,
                             max_deliveries or 0, ttl, ack_timeout, False)
    except FileExistsError:
        dlq.close()
        if not exist_ok:
            raise FileExistsError("queue %r exists (pass exist_ok=True to open it)" % name) from None
    except BaseException:
        dlq.close()
        if made_dlq:
            Segment.unlink(directory, dlq_name)
        raise
    else:
        seg.attach_dlq(dlq)
        return _opened_new(seg, watchdog)
    q = open(name, watchdog=watchdog)
    if q.capacity != capacity or q.message_size != message_size:
        q.close()
        raise IncompatibleQueue(
            "queue %r exists with capacity=%d message_size=%d, not capacity=%d message_size=%d"
            % (name, q.capacity, q.message_size, capacity, message_size))
    return q


def open(name, *, watchdog=DEFAULT_WATCHDOG_INTERVAL):  # noqa: A001 - as os.open / shelve.open
    """Open an existing queue.  QueueNotFound if there is none; IncompatibleQueue
    if the file is not an ackring segment of this layout version.  Whatever
    dead processes left in it is reclaimed on the way."""
    _check_name(name)
    return _opened(Segment.open(_directory(), name), watchdog)


def unlink(name, missing_ok=False):
    """Remove queue `name` and its dead-letter queue.  Processes that have
    them open keep their mappings."""
    _check_name(name)
    directory = _directory()
    try:
        Segment.unlink(directory, name)
    except QueueNotFound:
        if not missing_ok:
            raise
    finally:
        if not name.endswith(DLQ_SUFFIX):
            try:
                Segment.unlink(directory, name + DLQ_SUFFIX)
            except QueueNotFound:
                pass
