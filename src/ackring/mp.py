"""A drop-in for ``multiprocessing.Queue`` / ``JoinableQueue`` over ackring,
and pickled objects on the normal API.

    import ackring.mp

    q = ackring.mp.Queue()                    # maxsize=0: 1024 slots of 16 KiB
    q.put({"job": 1})
    q.get(timeout=1)                          # {'job': 1}

    p = multiprocessing.get_context("spawn").Process(target=worker, args=(q,))

Objects travel pickled with protocol 5.  Buffers that support out-of-band
pickling (numpy arrays, ``bytearray``, ``pickle.PickleBuffer``) are written
straight from the object into the queue slot (``Producer.reserve``), next to
the pickle stream, without an intermediate copy; on the way out they are
copied from the slot into ``bytearray`` objects before the message is acked,
so an unpickled object never points into shared memory (a numpy array comes
back writable and owns its memory).  ``bytes`` and everything else are
pickled in band.

Slot layout (``put_obj`` / ``load_obj``), all integers little-endian::

    [pickle stream][pad to 8][n x u64 buffer lengths][pad to 64][buffer 0]
    [pad to 64][buffer 1]...[trailer: b"ARo5", u32 n, u64 stream length]

With no out-of-band buffer it is just ``[pickle stream][trailer]``.
"""

import os
import pickle
import secrets
import struct
import threading
import weakref

import ackring
from ._errors import Empty, Full, MessageTooLarge, QueueClosed, QueueNotFound

__all__ = ["Queue", "JoinableQueue", "put_obj", "load_obj", "encoded_size",
           "DEFAULT_CAPACITY", "DEFAULT_MESSAGE_SIZE"]

#: Slots of a Queue made with maxsize=0 (multiprocessing's "unbounded").
DEFAULT_CAPACITY = 1024
#: Bytes per slot unless message_size= is given: the largest pickled object.
DEFAULT_MESSAGE_SIZE = 16 << 10
#: A JoinableQueue tracks up to this many times its capacity of unfinished tasks.
TASKS_FACTOR = 4

_MAGIC = b"ARo5"
_TRAILER = struct.Struct("<4sIQ")
_TRAILER_SIZE = _TRAILER.size  # 16
_ALIGN = 64
_SMALL = 64 << 10  # in-band objects up to this size are put() as one bytes object
_MAX_CAPACITY = 1 << 24


def _up(n, a):
    return (n + a - 1) & -a


_fork_gen = 0  # bumped in forked children: per-process clients are made anew there


def _after_fork_in_child():
    global _fork_gen
    _fork_gen += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
_dumps = pickle.dumps
_loads = pickle.loads
_pack_trailer = _TRAILER.pack


# ------------------------------------------------------------------ the codec


class _Encoded:
    __slots__ = ("stream", "bufs", "raws", "lens", "size")

    def __init__(self, obj, stream=None, bufs=None):
        if stream is None:
            bufs = []
            stream = _dumps(obj, protocol=5, buffer_callback=bufs.append)
        self.bufs = bufs
        self.stream = stream
        if not bufs:
            self.raws = None
            self.lens = ()
            self.size = len(self.stream) + _TRAILER_SIZE
            return
        raws = []
        for b in bufs:
            try:
                raws.append(b.raw())
            except BufferError:  # not contiguous: flatten it (one copy)
                raws.append(memoryview(memoryview(b).tobytes()))
        self.raws = raws
        self.lens = [r.nbytes for r in raws]
        self.size = _layout(len(self.stream), self.lens)[2]

    def release(self):
        for r in self.raws or ():
            r.release()
        for b in self.bufs:
            b.release()


def _layout(stream_len, lens):
    """(table offset, [buffer offsets], total size) for out-of-band buffers."""
    table = _up(stream_len, 8)
    pos = table + 8 * len(lens)
    offs = []
    for n in lens:
        pos = _up(pos, _ALIGN)
        offs.append(pos)
        pos += n
    return table, offs, _up(pos, 8) + _TRAILER_SIZE


def encoded_size(obj):
    """Bytes ``obj`` takes in a slot (what message_size must be at least)."""
    e = _Encoded(obj)
    e.release()
    return e.size


def _too_large(size, limit, name):
    return MessageTooLarge(
        "the pickled object takes %d bytes, more than message_size %s%s: create the queue with "
        "message_size=%d (or more)" % (size, "%d" % limit if limit is not None else "",
                                        " of queue %r" % name if name else "", size))


def _segment_geometry(producer):
    seg = getattr(producer, "segment", None)
    return getattr(seg, "message_size", None), getattr(seg, "name", None)


def _store(producer, e, timeout, ttl, limit=None, name=None):
    size = e.size
    if limit is not None and size > limit:
        raise _too_large(size, limit, name)
    try:
        if e.raws is None and size <= _SMALL:
            return producer.put(e.stream + _TRAILER.pack(_MAGIC, 0, len(e.stream)), timeout=timeout, ttl=ttl)
        r = producer.reserve(size, timeout=timeout, ttl=ttl)
    except MessageTooLarge:
        raise _too_large(size, *_segment_geometry(producer)) from None
    try:
        v = r.view()
        try:
            stream = e.stream
            n = len(stream)
            v[:n] = stream
            if e.raws:
                table, offs, _ = _layout(n, e.lens)
                v[table:table + 8 * len(e.lens)] = struct.pack("<%dQ" % len(e.lens), *e.lens)
                for off, raw, length in zip(offs, e.raws, e.lens):
                    v[off:off + length] = raw
            v[size - _TRAILER_SIZE:size] = _TRAILER.pack(_MAGIC, len(e.lens), n)
        finally:
            v.release()
    except BaseException:
        r.abort()
        raise
    return r.commit(size)


def put_obj(producer, obj, timeout=None, ttl=None):
    """Pickle ``obj`` (protocol 5, out-of-band buffers straight into the slot)
    and put it with ``producer``; returns the message id.  ``timeout`` and
    ``ttl`` as for ``put``.  MessageTooLarge names the message_size needed."""
    e = _Encoded(obj)
    try:
        return _store(producer, e, timeout, ttl)
    finally:
        e.release()


def _bad(why):
    return ValueError("not a message written by put_obj / ackring.mp (%s)" % why)


def _decode(v, total):
    """The object in the buffer v (a bytes object or a view into a slot).
    Out-of-band buffers are copied out; nothing returned refers to v."""
    if total < _TRAILER_SIZE:
        raise _bad("%d bytes" % total)
    magic, nbuf, stream_len = _TRAILER.unpack_from(v, total - _TRAILER_SIZE)
    if magic != _MAGIC:
        raise _bad("no trailer")
    if not nbuf:
        if stream_len + _TRAILER_SIZE != total:
            raise _bad("bad stream length")
        return pickle.loads(v)  # the unpickler stops at STOP: the trailer is ignored
    table = _up(stream_len, 8)
    if table + 8 * nbuf > total:
        raise _bad("bad buffer table")
    lens = struct.unpack_from("<%dQ" % nbuf, v, table)
    _, offs, size = _layout(stream_len, lens)
    if size != total:
        raise _bad("bad buffer lengths")
    mv = v if isinstance(v, memoryview) else memoryview(v)
    bufs = []
    try:
        for off, n in zip(offs, lens):
            with mv[off:off + n] as part:
                bufs.append(bytearray(part))
        with mv[:stream_len] as stream:
            return pickle.loads(stream, buffers=bufs)
    finally:
        if mv is not v:
            mv.release()


def load_obj(message):
    """The object in a message written by ``put_obj`` (or an ackring.mp
    queue).  Does not settle the message.  The object never refers to the
    slot: out-of-band buffers are copied into bytearrays, so acking right
    after is safe.  ValueError if the message is not in that format."""
    n = len(message)
    if message.settled or n <= 4096:
        body = message.body  # settled: only a body read before works
        if n >= _TRAILER_SIZE and body[-16:-12] == _MAGIC and body[-12:-8] == b"\0\0\0\0" \
                and int.from_bytes(body[-8:], "little") + _TRAILER_SIZE == n:
            return _loads(body)  # no out-of-band buffer (the usual small object)
        return _decode(body, n)
    with message.view() as v:
        return _decode(v, n)


# ------------------------------------------------------------------- Queue


def _check_timeout(block, timeout):
    if not block:
        return 0
    if timeout is None:
        return None
    if isinstance(timeout, bool):
        raise TypeError("timeout must be None or a number of seconds, not bool")
    t = float(timeout)
    if not t >= 0:
        raise ValueError("'timeout' must be a non-negative number")
    return t


def _capacity_for(maxsize):
    if maxsize <= 0:
        return DEFAULT_CAPACITY
    cap = 1 << max(1, (maxsize - 1).bit_length())
    if cap > _MAX_CAPACITY:
        raise ValueError("maxsize must be at most %d, not %d" % (_MAX_CAPACITY, maxsize))
    return cap


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int, not %s" % (what, type(value).__name__))
    return value


def _paths(q):
    """The segment files of q and its dead-letter queue."""
    out = [q.path]
    dlq = q.dead_letters
    if dlq is not None:
        out.append(dlq.path)
    return out


def _cleanup(queues, paths, owner_pid):
    """Close this process's handles; the creating process also removes the
    segments.  Never in a child (fork copies this finalizer)."""
    for q in queues:
        try:
            q.close()
        except Exception:
            pass
    if os.getpid() == owner_pid:
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass


def _open_by_name(reduced):
    """Unpickle an ackring.Queue from its (callable, args) reduction, with a
    clear error when the segment was removed meanwhile."""
    fn, args = reduced[0], reduced[1]
    try:
        return fn(*args)
    except QueueNotFound:
        raise QueueNotFound(
            "ackring.mp queue %r is gone: the process that created it closed it or exited before this "
            "process opened it (start children before closing the queue in its creator)" % (args[0],)) from None


class Queue:
    """``multiprocessing.Queue`` over an ackring queue.

    ``maxsize``: 0 (or less) means "large": DEFAULT_CAPACITY (1024) slots;
    otherwise the capacity is maxsize rounded up to a power of two (the ring
    needs one; ``capacity`` says what it is, ``full()`` and ``put`` use it).
    ``message_size``: the largest pickled object in bytes (default 16 KiB;
    MessageTooLarge names the size needed).  The segment takes
    ``capacity * (message_size + 64)`` bytes of /dev/shm, reserved at creation.
    ``name``: the queue's name (default a unique ``mpq-<pid>-<random>``).

    Pickles (for any start method: fork, spawn, forkserver); the child opens
    the same queue by name.  The creating process removes the segment at
    ``close()``, when the object is collected, or at exit; processes that
    have it open keep using it, but it can no longer be opened, so start
    the children (spawn children open it while they start up) before that.

    Differences from multiprocessing.Queue: ``put`` pickles and stores in the
    caller (no feeder thread), so a pickling error or ``MessageTooLarge`` is
    raised by ``put`` itself and the object is in the queue when put returns;
    ``get`` acks the message once it is unpickled (a get that dies before
    that leaves the message to be redelivered to another process; after
    get returns it is gone, as with multiprocessing); an object that fails
    to unpickle is dead-lettered (to the ``<name>.dlq`` ackring queue) and
    its error raised."""

    _tasks_q = None

    def __init__(self, maxsize=0, message_size=None, name=None):
        maxsize = _int(maxsize, "maxsize")
        capacity = _capacity_for(maxsize)
        message_size = DEFAULT_MESSAGE_SIZE if message_size is None else _int(message_size, "message_size")
        if name is None:
            name = "mpq-%d-%s" % (os.getpid(), secrets.token_hex(6))
        q = ackring.create(name, capacity=capacity, message_size=message_size, dead_letter_capacity=2)
        self._init(q, maxsize, os.getpid())

    def _init(self, q, maxsize, owner_pid):
        self._q = q
        self._name = q.name
        self._small = min(_SMALL, q.message_size)
        self._maxsize = maxsize
        self._owner = owner_pid
        self._closed = False
        self._after_fork()
        qs = self._queues()
        paths = [p for q in qs for p in _paths(q)] if owner_pid is not None else []
        # Runs once: on close(), when collected, at interpreter exit (atexit),
        # and at the exit of a multiprocessing child (which skips atexit).
        self._finalizer = weakref.finalize(self, _cleanup, qs, paths, owner_pid)
        from multiprocessing import util
        util.Finalize(self, self._finalizer, exitpriority=10)

    def _queues(self):
        return [self._q]

    def _after_fork(self):
        self._gen = _fork_gen
        self._lock = threading.Lock()
        self._prod = None
        self._cons = None

    # ---- per-process clients (made on first use; rebuilt after a fork)
    def _producer(self):
        if self._gen != _fork_gen:
            self._after_fork()
        p = self._prod
        if p is None:
            self._check_open()
            with self._lock:
                if self._prod is None:
                    self._prod = self._q.producer()
                p = self._prod
        return p

    def _consumer(self):
        if self._gen != _fork_gen:
            self._after_fork()
        c = self._cons
        if c is None:
            self._check_open()
            with self._lock:
                if self._cons is None:
                    self._cons = self._q.consumer()
                c = self._cons
        return c

    def _check_open(self):
        if self._closed or self._q.closed:
            raise QueueClosed("Queue %r is closed" % (self,))

    # ---- identity
    name = property(lambda self: self._q.name, doc="The ackring queue's name.")
    capacity = property(lambda self: self._q.capacity,
                        doc="Slots: maxsize rounded up to a power of two (DEFAULT_CAPACITY for maxsize=0).")
    maxsize = property(lambda self: self._maxsize, doc="maxsize as given.")
    message_size = property(lambda self: self._q.message_size)
    queue = property(lambda self: self._q, doc="The underlying ackring.Queue.")

    def __repr__(self):
        return "<ackring.mp.%s %r%s>" % (type(self).__name__, self._name,
                                         " closed" if self._closed or self._q.closed
                                         else " capacity=%d" % self._q.capacity)

    def __reduce__(self):
        self._check_open()
        return (_rebuild, (type(self), self._maxsize) + tuple(q.__reduce__()[:2] for q in self._queues()))

    # ---- the multiprocessing.Queue API
    def put(self, obj, block=True, timeout=None):
        """Put obj; with block (default) wait up to timeout seconds (None: no
        limit) for a free slot, then raise queue.Full (ackring.Full)."""
        if self._closed:
            self._check_open()
        t = None if block and timeout is None else _check_timeout(block, timeout)
        p = self._prod if self._gen == _fork_gen else None
        if p is None:
            p = self._producer()
        bufs = []
        stream = _dumps(obj, 5, buffer_callback=bufs.append)
        n = len(stream)
        if not bufs and n + _TRAILER_SIZE <= self._small:
            p.put(stream + _pack_trailer(_MAGIC, 0, n), timeout=t)
            return
        e = _Encoded(obj, stream, bufs)
        try:
            _store(p, e, t, None, self._q.message_size, self._q.name)
        finally:
            e.release()

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get(self, block=True, timeout=None):
        """Remove and return an object; with block (default) wait up to
        timeout seconds (None: no limit), then raise queue.Empty (ackring.Empty)."""
        if self._closed:
            self._check_open()
        t = None if block and timeout is None else _check_timeout(block, timeout)
        c = self._cons if self._gen == _fork_gen else None
        if c is None:
            c = self._consumer()
        m = c.get(timeout=t, copy=False)
        try:
            obj = load_obj(m)
        except Exception:
            m.reject()  # dead-letter it (reason "rejected") and report
            raise
        except BaseException:
            m.nack()    # KeyboardInterrupt and the like: give it back
            raise
        m.ack()
        return obj

    def get_nowait(self):
        return self.get(False)

    def qsize(self):
        """Messages put and not yet got: ready + being taken right now
        (stats "depth" + "in_flight").  Approximate under traffic."""
        self._check_open()
        st = self._q.stats()
        return st["depth"] + st["in_flight"]

    def empty(self):
        """True if no message is ready to get (stats "depth" == 0)."""
        self._check_open()
        return self._q.stats()["depth"] == 0

    def full(self):
        """True if every slot is taken (qsize() >= capacity, the rounded maxsize)."""
        return self.qsize() >= self._q.capacity

    def close(self):
        """No more use from this process.  In the creating process, also
        removes the segment (processes that have it open keep it).  Idempotent."""
        self._closed = True
        self._finalizer()

    def join_thread(self):
        """There is no feeder thread: every put has stored its object when it
        returns, so this returns at once.  As with multiprocessing, only
        after close()."""
        if not self._closed:
            raise ValueError("join_thread() is only allowed after close() (as with multiprocessing.Queue)")

    def cancel_join_thread(self):
        """Nothing to cancel: no object is ever buffered in this process."""


def _rebuild(cls, maxsize, *names):
    queues = [_open_by_name(args) for args in names]
    self = cls.__new__(cls)
    if cls is JoinableQueue or issubclass(cls, JoinableQueue):
        self._tasks_q = queues[1]
    Queue._init(self, queues[0], maxsize, None)
    return self


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: ``task_done()`` and ``join()`` across
    processes.

    The unfinished-task count lives in a second, tiny ackring queue
    ``<name>.tasks`` (1-byte slots, TASKS_FACTOR x capacity of them): ``put``
    stores a token there before it stores the object, ``task_done`` takes
    and acks one token (ValueError when there is none: "called too many
    times"), and ``join`` waits, with ``wait_acked`` on the queue's futex,
    until every token published so far is settled and none is left.  Any
    process can call ``task_done`` or ``join`` (as with multiprocessing),
    including spawn children, which open both queues by name.  Tokens are
    never redelivered to tasks: a worker that dies after ``get`` and before
    ``task_done`` leaves its task unfinished, so ``join`` waits, as with
    multiprocessing.  At most TASKS_FACTOR x capacity tasks can be unfinished
    at once: a put past that waits for a task_done as if the queue were full.
    """

    def __init__(self, maxsize=0, message_size=None, name=None):
        maxsize = _int(maxsize, "maxsize")
        capacity = _capacity_for(maxsize)
        message_size = DEFAULT_MESSAGE_SIZE if message_size is None else _int(message_size, "message_size")
        if name is None:
            name = "mpq-%d-%s" % (os.getpid(), secrets.token_hex(6))
        tasks = ackring.create(name + ".tasks", capacity=min(_MAX_CAPACITY, max(1024, TASKS_FACTOR * capacity)),
                               message_size=1, dead_letter_capacity=2, max_deliveries=None)
        try:
            q = ackring.create(name, capacity=capacity, message_size=message_size, dead_letter_capacity=2)
        except BaseException:
            tasks.close()
            ackring.unlink(name + ".tasks", missing_ok=True)
            raise
        self._tasks_q = tasks
        self._init(q, maxsize, os.getpid())

    def _queues(self):
        return [self._q, self._tasks_q]

    def _after_fork(self):
        Queue._after_fork(self)
        self._tprod = None
        self._tcons = None

    def _tasks_producer(self):
        if self._gen != _fork_gen:
            self._after_fork()
        p = self._tprod
        if p is None:
            self._check_open()
            with self._lock:
                if self._tprod is None:
                    self._tprod = self._tasks_q.producer()
                p = self._tprod
        return p

    def _tasks_consumer(self):
        if self._gen != _fork_gen:
            self._after_fork()
        c = self._tcons
        if c is None:
            self._check_open()
            with self._lock:
                if self._tcons is None:
                    self._tcons = self._tasks_q.consumer()
                c = self._tcons
        return c

    def put(self, obj, block=True, timeout=None):
        self._check_open()
        t = _check_timeout(block, timeout)
        e = _Encoded(obj)  # a pickling error leaves no token behind
        try:
            limit = self._q.message_size
            if e.size > limit:
                raise _too_large(e.size, limit, self._q.name)
            tp = self._tasks_producer()
            start = _now()
            try:
                tp.put(b"", timeout=t)
            except Full:
                raise Full("put: %d unfinished tasks (the limit) for %r s" % (self._tasks_q.capacity, t)) from None
            try:
                left = None if t is None else max(0.0, t - (_now() - start))
                _store(self._producer(), e, left, None, limit, self._q.name)
            except BaseException:
                self._untoken()
                raise
        finally:
            e.release()

    def _untoken(self):
        try:
            self._tasks_consumer().get(timeout=0).ack()
        except Exception:
            pass

    def task_done(self):
        """Mark one task as done (from any process)."""
        self._check_open()
        try:
            m = self._tasks_consumer().get(timeout=0)
        except Empty:
            raise ValueError("task_done() called too many times") from None
        m.ack()

    def join(self):
        """Block until every task put so far was marked done with task_done()."""
        self._check_open()
        tp = self._tasks_producer()
        tq = self._tasks_q
        while True:
            st = tq.stats()
            oldest = st["oldest_unsettled"]
            if st["depth"] + st["in_flight"] == 0 or oldest is None:
                return
            # One futex wait per outstanding token, oldest first (task_done
            # takes tokens in order, so this is usually the next one to go).
            try:
                tp.wait_acked(oldest["id"])
            except ValueError:
                pass                 # reused meanwhile: settled


def _now():
    import time
    return time.monotonic()
