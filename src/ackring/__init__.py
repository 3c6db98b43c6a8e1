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
    QueueClosed,
    QueueNotFound,
    StaleDelivery,
    TooManyClients,
)
from ._check import check_segment as _check_segment
from ._watchdog import Watchdog as _Watchdog
from .backend import Consumer, Message, Producer, Reservation, Segment
from .backend import name as backend

__version__ = "0.1.0"

__all__ = [
    "create", "open", "unlink", "Queue", "Producer", "Consumer", "Message", "Reservation",
    "Error", "Empty", "Full", "QueueNotFound", "MessageTooLarge", "IncompatibleQueue",
    "CorruptedQueue", "StaleDelivery", "AlreadySettled", "QueueClosed", "TooManyClients",
]

DEFAULT_DIR = "/dev/shm"
#: Seconds between the watchdog's reclaim passes (see Queue.watchdog).
DEFAULT_WATCHDOG_INTERVAL = 0.1
_MAX_MESSAGE_SIZE = 1 << 30
_MAX_CAPACITY = 1 << 24


def _directory():
    """Where segments live: /dev/shm, or $ACKRING_DIR (tests point it at a private directory)."""
    return _os.environ.get("ACKRING_DIR") or DEFAULT_DIR


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError("queue name must be a str, not %s" % type(name).__name__)
    if not Segment.valid_name(name):
        raise ValueError(
            "bad queue name %r: use 1 to 200 characters from [A-Za-z0-9._-], not starting with '.'"
            % (name,))


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
        _open_queues.add(self)

    # ---- identity
    name = property(lambda self: self._seg.name)
    capacity = property(lambda self: self._seg.capacity)
    message_size = property(lambda self: self._seg.message_size)
    queue_id = property(lambda self: self._seg.queue_id)
    closed = property(lambda self: self._seg.closed)

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

    def consumer(self):
        """A new Consumer; closing it requeues whatever it still holds unsettled."""
        c = Consumer(self._seg)
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
        self._seg.close()
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


def _reopen(name, directory, watchdog=DEFAULT_WATCHDOG_INTERVAL):
    return _opened(Segment.open(directory, name), watchdog)


def _opened(segment, watchdog):
    q = Queue(segment, watchdog)
    # Opening a queue whose processes have all died recovers it.
    if segment.clients():
        segment.reclaim()
    return q


def create(name, capacity=1024, message_size=4096, *, exist_ok=False, mode=0o600, max_clients=256,
           watchdog=DEFAULT_WATCHDOG_INTERVAL):
    """Create queue `name` with `capacity` slots (a power of two, >= 2) of up to
    `message_size` bytes each.  FileExistsError if it exists, unless
    exist_ok=True, which opens it (IncompatibleQueue if its geometry differs)."""
    _check_name(name)
    capacity = _int_arg(capacity, "capacity")
    message_size = _int_arg(message_size, "message_size")
    max_clients = _int_arg(max_clients, "max_clients")
    mode = _int_arg(mode, "mode")
    if capacity < 2 or capacity > _MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError("capacity must be a power of two from 2 to %d, not %d" % (_MAX_CAPACITY, capacity))
    if not 1 <= message_size <= _MAX_MESSAGE_SIZE:
        raise ValueError("message_size must be from 1 to %d bytes, not %d" % (_MAX_MESSAGE_SIZE, message_size))
    if not 1 <= max_clients <= 4095:
        raise ValueError("max_clients must be from 1 to 4095, not %d" % max_clients)
    if not 0 <= mode <= 0o7777:
        raise ValueError("mode must be a permission mode like 0o600, not %o" % mode)
    directory = _directory()
    try:
        return Queue(Segment.create(directory, name, capacity, message_size, max_clients, mode), watchdog)
    except FileExistsError:
        if not exist_ok:
            raise FileExistsError("queue %r exists (pass exist_ok=True to open it)" % name) from None
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
    """Remove queue `name`.  Processes that have it open keep their mapping."""
    _check_name(name)
    try:
        Segment.unlink(_directory(), name)
    except QueueNotFound:
        if not missing_ok:
            raise
