# cython: language_level=3, freethreading_compatible=False
"""Cython backend: a thin binding of ext/ackring.c.

Hot calls (put, get, ack) are one C call each with the GIL held; the GIL is
dropped only for blocking waits, which return every AR_WAIT_SLICE_NS so that
signals (Ctrl-C) are checked and a reclaim pass can run.  Exceptions come from
ackring._errors; nothing here defines its own.
"""
from libc.stdint cimport uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcpy
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo,
                             PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE)
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_CheckExact)
from cpython.exc cimport PyErr_CheckSignals
from cpython.unicode cimport PyUnicode_Check
from libc.errno cimport errno

import errno as _errno
import os as _os

from ackring import _errors as E
from ackring import _liveness

cdef extern from "ackring.h" nogil:
    enum:
        AR_OK, AR_EMPTY, AR_FULL, AR_AGAIN, AR_TOOBIG, AR_STALE, AR_CORRUPT, AR_INCOMPATIBLE
        AR_TABLE_FULL, AR_EXISTS, AR_NOTFOUND, AR_INVAL, AR_ERRNO
    enum:
        AR_ROLE_PRODUCER, AR_ROLE_CONSUMER, AR_ROLE_OBSERVER
    enum:
        AR_S_FREE, AR_S_WRITING, AR_S_READY, AR_S_DELIVERED
    ctypedef struct ar_queue:
        pass
    ctypedef struct ar_delivery:
        uint64_t pos
        uint64_t word
        const unsigned char *data
        uint32_t len
        uint32_t delivery_count
        uint64_t publish_ns
    ctypedef struct ar_stats:
        uint64_t depth, in_flight, published, acked, nacked, redelivered, discarded
        uint32_t producers, consumers, capacity, message_size, max_clients
        uint64_t head, tail, requeued_hint
    ctypedef struct ar_client_info:
        uint32_t index, role, pid, state
        uint64_t start_time
    uint64_t AR_NO_DEADLINE
    uint64_t AR_WAIT_SLICE_NS

    int ar_create(const char *dir, const char *name, uint32_t capacity, uint32_t message_size,
                  uint32_t max_clients, int mode, ar_queue **out)
    int ar_open(const char *dir, const char *name, ar_queue **out)
    int ar_unlink(const char *dir, const char *name)
    void ar_close(ar_queue *q)
    int ar_check_name(const char *name)
    uint32_t ar_capacity(const ar_queue *q)
    uint32_t ar_message_size(const ar_queue *q)
    uint32_t ar_max_clients(const ar_queue *q)
    uint64_t ar_queue_id(const ar_queue *q)
    uint64_t ar_created_ns(const ar_queue *q)
    int ar_register(ar_queue *q, uint32_t role, uint32_t pid, uint64_t start_time, uint32_t *entry)
    int ar_unregister(ar_queue *q, uint32_t entry)
    int ar_get_client(const ar_queue *q, uint32_t index, ar_client_info *out)
    int ar_reclaim_entry(ar_queue *q, uint32_t reclaimer, uint32_t index, uint32_t pid,
                         uint64_t start_time, uint32_t *repaired)
    int ar_put(ar_queue *q, uint32_t entry, const void *data, size_t len, uint64_t deadline_ns,
               uint64_t *id)
    int ar_get(ar_queue *q, uint32_t entry, ar_delivery *d, uint64_t deadline_ns)
    int ar_ack(ar_queue *q, uint32_t entry, const ar_delivery *d)
    int ar_nack(ar_queue *q, uint32_t entry, const ar_delivery *d, int requeue)
    int ar_stats_read(const ar_queue *q, ar_stats *st)
    uint64_t ar_now_ns()

# A blocked call runs a reclaim pass once it has waited this long, then again
# at the same interval: a dead process cannot stall a live one for longer.
cdef uint64_t RECLAIM_AFTER_NS = 100000000

# ---------------------------------------------------------------- fork safety
# After fork() the child must never act under its parent's process-table
# entries.  Every handle remembers the fork generation it registered under and
# registers anew when it differs.
cdef unsigned long _fork_gen = 0

def _after_fork_in_child():
    global _fork_gen
    _fork_gen += 1
    _liveness.forget_self()

_os.register_at_fork(after_in_child=_after_fork_in_child)


cdef object _error(int rc, str what, int err=0):
    if rc == AR_EMPTY:
        return E.Empty(what)
    if rc == AR_FULL:
        return E.Full(what)
    if rc == AR_TOOBIG:
        return E.MessageTooLarge(what)
    if rc == AR_STALE:
        return E.StaleDelivery(what)
    if rc == AR_CORRUPT:
        return E.CorruptedQueue(what + ": a slot failed its bounds check (corrupted segment)")
    if rc == AR_INCOMPATIBLE:
        return E.IncompatibleQueue(what + ": not an ackring segment of layout version 1, or truncated")
    if rc == AR_TABLE_FULL:
        return E.TooManyClients(what + ": the process table is full (raise max_clients at create)")
    if rc == AR_NOTFOUND:
        return E.QueueNotFound(_errno.ENOENT, "no such queue", what)
    if rc == AR_EXISTS:
        return FileExistsError(_errno.EEXIST, "queue exists", what)
    if rc == AR_INVAL:
        return ValueError(what)
    if rc == AR_ERRNO:
        e = err or _errno.EIO
        return OSError(e, _os.strerror(e), what)
    return E.Error("%s: unexpected status %d" % (what, rc))


cdef uint64_t _deadline(object timeout) except? 1:
    """None -> no deadline; 0 -> do not wait; else an absolute CLOCK_MONOTONIC time."""
    cdef double t
    if timeout is None:
        return AR_NO_DEADLINE
    t = timeout   # TypeError for non-numbers
    if not (t >= 0):
        raise ValueError("timeout must be None or a number >= 0, not %r" % (timeout,))
    if t == 0:
        return 0
    if t > 1e9:
        return AR_NO_DEADLINE
    return ar_now_ns() + <uint64_t>(t * 1e9) + 1


cdef class Segment:
    """One mapping of a queue's segment in this process.

    The mapping lives as long as this object: producers, consumers, messages
    and memoryviews of messages keep it alive, so closing a queue never unmaps
    memory a live view points into.  ``close()`` only forbids further use."""
    cdef ar_queue *q
    cdef readonly str name
    cdef readonly str directory
    cdef readonly bint closed
    cdef uint32_t observer          # process-table entry used to hold the reclaim lock
    cdef unsigned long observer_gen
    cdef bint has_observer
    cdef uint64_t last_reclaim_ns

    def __cinit__(self):
        self.q = NULL
        self.closed = True

    def __dealloc__(self):
        if self.q != NULL:
            ar_close(self.q)
            self.q = NULL

    @staticmethod
    def create(str directory, str name, uint32_t capacity, uint32_t message_size,
               uint32_t max_clients, int mode):
        cdef Segment s = Segment.__new__(Segment)
        cdef bytes d = _os.fsencode(directory), n = name.encode("ascii")
        cdef int rc
        rc = ar_create(d, n, capacity, message_size, max_clients, mode, &s.q)
        if rc != AR_OK:
            raise _error(rc, name if rc != AR_NOTFOUND else directory, errno)
        s.name, s.directory, s.closed = name, directory, False
        return s

    @staticmethod
    def open(str directory, str name):
        cdef Segment s = Segment.__new__(Segment)
        cdef bytes d = _os.fsencode(directory), n = name.encode("ascii")
        cdef int rc = ar_open(d, n, &s.q)
        if rc != AR_OK:
            raise _error(rc, name, errno)
        s.name, s.directory, s.closed = name, directory, False
        return s

    @staticmethod
    def unlink(str directory, str name):
        cdef bytes d = _os.fsencode(directory), n = name.encode("ascii")
        cdef int rc = ar_unlink(d, n)
        if rc != AR_OK:
            raise _error(rc, name, errno)

    @staticmethod
    def valid_name(str name):
        if "\0" in name:  # C would stop reading at the NUL
            return False
        try:
            n = name.encode("ascii")
        except UnicodeEncodeError:
            return False
        return ar_check_name(n) == AR_OK

    cdef inline int check(self) except -1:
        if self.closed:
            raise E.QueueClosed("queue %r is closed" % (self.name,))
        return 0

    def close(self):
        # The mapping itself goes with the last reference (see class docstring).
        if not self.closed and self.has_observer and self.observer_gen == _fork_gen:
            ar_unregister(self.q, self.observer)
        self.closed = True

    property capacity:
        def __get__(self): return ar_capacity(self.q)
    property message_size:
        def __get__(self): return ar_message_size(self.q)
    property max_clients:
        def __get__(self): return ar_max_clients(self.q)
    property queue_id:
        def __get__(self): return ar_queue_id(self.q)
    property created_ns:
        def __get__(self): return ar_created_ns(self.q)

    cdef uint32_t register(self, uint32_t role) except? 0xFFFFFFFF:
        cdef uint32_t entry = 0
        cdef int rc
        self.check()
        pid, start = _liveness.self_identity()
        rc = ar_register(self.q, role, pid, start, &entry)
        if rc != AR_OK:
            raise _error(rc, self.name)
        return entry

    def stats(self):
        cdef ar_stats st
        self.check()
        ar_stats_read(self.q, &st)
        return {
            "depth": st.depth, "in_flight": st.in_flight, "published": st.published,
            "acked": st.acked, "nacked": st.nacked, "redelivered": st.redelivered,
            "discarded": st.discarded, "producers": st.producers, "consumers": st.consumers,
            "capacity": st.capacity, "message_size": st.message_size,
            "max_clients": st.max_clients, "head": st.head, "tail": st.tail,
        }

    def clients(self):
        """Every non-free process-table entry as (index, state, role, pid, start_time)."""
        cdef ar_client_info ci
        cdef uint32_t i
        self.check()
        out = []
        for i in range(ar_max_clients(self.q)):
            ar_get_client(self.q, i, &ci)
            if ci.state != 0:
                out.append((ci.index, ci.state, ci.role, ci.pid, ci.start_time))
        return out

    def reclaim(self):
        """Repair what dead processes left behind; returns the number of slots repaired."""
        cdef uint32_t repaired = 0, total = 0
        cdef int rc
        self.check()
        dead = _liveness.dead_entries(self.clients())
        if not dead:
            return 0
        if not self.has_observer or self.observer_gen != _fork_gen:
            self.observer = self.register(AR_ROLE_OBSERVER)
            self.observer_gen = _fork_gen
            self.has_observer = True
        for index, pid, start in dead:
            rc = ar_reclaim_entry(self.q, self.observer, index, pid, start, &repaired)
            if rc == AR_OK:
                total += repaired
            elif rc not in (AR_AGAIN, AR_STALE):
                raise _error(rc, self.name)
        return total

    cdef int blocked(self, uint64_t since) except -1:
        """Called between wait slices of a blocked call, with the GIL."""
        cdef uint64_t now
        PyErr_CheckSignals()
        self.check()
        now = ar_now_ns()
        if now - since >= RECLAIM_AFTER_NS and now - self.last_reclaim_ns >= RECLAIM_AFTER_NS:
            self.last_reclaim_ns = now
            self.reclaim()
        return 0


cdef class _Client:
    cdef readonly Segment segment
    cdef uint32_t entry
    cdef unsigned long gen
    cdef uint32_t role
    cdef readonly bint closed
    cdef object __weakref__

    cdef inline int check(self) except -1:
        if self.closed or self.segment.closed:
            raise E.QueueClosed("%s of queue %r is closed" % (type(self).__name__, self.segment.name))
        if self.gen != _fork_gen:  # we are a forked child: take an entry of our own
            self.entry = self.segment.register(self.role)
            self.gen = _fork_gen
        return 0

    def close(self):
        """Release the process-table entry; a consumer's unsettled deliveries are requeued."""
        if not self.closed:
            self.closed = True
            if self.gen == _fork_gen and not self.segment.closed:
                ar_unregister(self.segment.q, self.entry)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


cdef class Producer(_Client):
    def __init__(self, Segment segment):
        self.segment = segment
        self.role = AR_ROLE_PRODUCER
        self.entry = segment.register(AR_ROLE_PRODUCER)
        self.gen = _fork_gen

    cdef uint64_t _put(self, object data, uint64_t deadline) except? 0xFFFFFFFFFFFFFFFF:
        cdef Py_buffer view
        cdef const char *ptr
        cdef Py_ssize_t n
        cdef uint64_t mid = 0, since
        cdef int rc
        cdef bint release = False
        if PyBytes_CheckExact(data):
            ptr = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            if PyUnicode_Check(data):
                raise TypeError("put() takes bytes-like data, not str (encode it first)")
            PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS)
            ptr = <const char *>view.buf
            n = view.len
            release = True
        try:
            if <size_t>n > ar_message_size(self.segment.q):
                raise E.MessageTooLarge("message of %d bytes exceeds message_size %d of queue %r"
                                        % (n, ar_message_size(self.segment.q), self.segment.name))
            rc = ar_put(self.segment.q, self.entry, ptr, n, 0, &mid)
            if rc == AR_FULL and deadline != 0:
                since = ar_now_ns()
                while True:
                    # The buffer stays exported (or the bytes immutable) while
                    # the GIL is dropped, so ptr stays valid.
                    with nogil:
                        rc = ar_put(self.segment.q, self.entry, ptr, n, deadline, &mid)
                    if rc != AR_AGAIN:
                        break
                    self.segment.blocked(since)
                    self.check()
        finally:
            if release:
                PyBuffer_Release(&view)
        if rc != AR_OK:
            raise _error(rc, "put to queue %r" % (self.segment.name,))
        return mid

    def put(self, data, timeout=None):
        """Store one message; returns its id once it is visible to consumers
        (the publisher confirm).  Waits while the queue is full, up to
        ``timeout`` seconds (None: no limit), then raises ackring.Full."""
        self.check()
        return self._put(data, _deadline(timeout))

    def put_many(self, messages, timeout=None):
        """Store several messages in order; returns their ids.  Every item is
        type- and size-checked before the first is written.  ``timeout``
        bounds the whole call; on Full, the exception's ``ids`` lists what was
        stored."""
        cdef uint64_t deadline
        cdef uint32_t limit
        self.check()
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        limit = ar_message_size(self.segment.q)
        for m in items:
            if PyBytes_CheckExact(m):
                if <size_t>PyBytes_GET_SIZE(m) > limit:
                    raise E.MessageTooLarge("a message of %d bytes exceeds message_size %d"
                                            % (PyBytes_GET_SIZE(m), limit))
            elif PyUnicode_Check(m):
                raise TypeError("put_many() takes bytes-like items, not str")
            else:
                with memoryview(m) as mv:
                    if not mv.c_contiguous:
                        raise BufferError("put_many() items must be C-contiguous")
                    if <size_t>mv.nbytes > limit:
                        raise E.MessageTooLarge("a message of %d bytes exceeds message_size %d"
                                                % (mv.nbytes, limit))
        deadline = _deadline(timeout)
        ids = []
        for m in items:
            try:
                ids.append(self._put(m, deadline))
            except E.Full as exc:
                raise E.Full(str(exc), ids=ids) from None
        return ids


cdef class Consumer(_Client):
    def __init__(self, Segment segment):
        self.segment = segment
        self.role = AR_ROLE_CONSUMER
        self.entry = segment.register(AR_ROLE_CONSUMER)
        self.gen = _fork_gen

    cdef int _get(self, ar_delivery *d, uint64_t deadline) except -1:
        cdef int rc = ar_get(self.segment.q, self.entry, d, 0)
        cdef uint64_t since
        if rc == AR_EMPTY and deadline != 0:
            since = ar_now_ns()
            while True:
                with nogil:
                    rc = ar_get(self.segment.q, self.entry, d, deadline)
                if rc != AR_AGAIN:
                    break
                self.segment.blocked(since)
                self.check()
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (self.segment.name,))
        return 0

    cdef Message _message(self, ar_delivery *d, bint copy):
        cdef Message m = Message.__new__(Message)
        m.consumer = self
        m.d = d[0]
        m.gen = self.gen
        if copy:
            m._body = PyBytes_FromStringAndSize(<const char *>d.data, d.len)
        return m

    def get(self, timeout=None, bint copy=True):
        """Receive one message (it stays in the queue until settled).  Waits
        up to ``timeout`` seconds (None: no limit), then raises ackring.Empty.
        With copy=False the body is not copied now: read it through
        ``memoryview(m)`` or ``m.body`` before settling."""
        cdef ar_delivery d
        self.check()
        self._get(&d, _deadline(timeout))
        return self._message(&d, copy)

    def get_many(self, Py_ssize_t n, timeout=None, bint copy=True):
        """Up to n messages: waits (up to ``timeout``) for the first, then takes
        whatever else is ready without waiting."""
        cdef ar_delivery d
        cdef int rc
        if n < 1:
            raise ValueError("get_many() needs n >= 1")
        self.check()
        self._get(&d, _deadline(timeout))
        out = [self._message(&d, copy)]
        while len(out) < n:
            rc = ar_get(self.segment.q, self.entry, &d, 0)
            if rc == AR_EMPTY:
                break
            if rc != AR_OK:
                raise _error(rc, "get from queue %r" % (self.segment.name,))
            out.append(self._message(&d, copy))
        return out

    def __iter__(self):
        return self

    def __next__(self):
        if self.closed or self.segment.closed:
            raise StopIteration
        try:
            return self.get()
        except E.QueueClosed:
            raise StopIteration


cdef class Message:
    """One delivery.  Settle it exactly once: ack(), or nack(requeue=...)."""
    cdef Consumer consumer
    cdef ar_delivery d
    cdef unsigned long gen
    cdef object _body
    cdef readonly bint settled

    def __init__(self):
        raise TypeError("messages come from Consumer.get()")

    property id:
        """The message id: its ring position, unique for the queue's life and
        the same on every redelivery."""
        def __get__(self): return self.d.pos
    property delivery_count:
        def __get__(self): return self.d.delivery_count
    property redelivered:
        def __get__(self): return self.d.delivery_count > 1
    property publish_time_ns:
        """CLOCK_REALTIME nanoseconds when the message was published."""
        def __get__(self): return self.d.publish_ns
    property body:
        def __get__(self):
            if self._body is None:
                if self.settled:
                    raise E.AlreadySettled("message %d was settled before its body was read; "
                                           "use get(copy=True)" % self.d.pos)
                self._body = PyBytes_FromStringAndSize(<const char *>self.d.data, self.d.len)
            return self._body

    def __len__(self):
        return self.d.len

    def __repr__(self):
        return "<ackring.Message id=%d len=%d delivery_count=%d%s>" % (
            self.d.pos, self.d.len, self.d.delivery_count, " settled" if self.settled else "")

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self.settled:
            raise E.AlreadySettled("message %d is settled; its slot may hold another message" % self.d.pos)
        if flags & PyBUF_WRITABLE:
            raise BufferError("a message's payload is read-only")
        PyBuffer_FillInfo(buffer, self, <void *>self.d.data, self.d.len, 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    cdef int _settle(self, int how) except -1:
        # how: 0 ack, 1 nack+requeue, 2 nack drop
        cdef int rc
        if self.settled:
            raise E.AlreadySettled("message %d was already settled" % self.d.pos)
        c = self.consumer
        if c.closed or c.segment.closed:
            raise E.QueueClosed("the consumer of message %d is closed (its deliveries were requeued)"
                                % self.d.pos)
        if self.gen != _fork_gen:
            self.settled = True
            raise E.StaleDelivery("message %d was delivered to the parent process before fork" % self.d.pos)
        if how == 0:
            rc = ar_ack(c.segment.q, c.entry, &self.d)
        else:
            rc = ar_nack(c.segment.q, c.entry, &self.d, how == 1)
        self.settled = True
        if rc == AR_STALE:
            raise E.StaleDelivery("message %d: this delivery is no longer current" % self.d.pos)
        if rc != AR_OK:
            raise _error(rc, "settle message %d" % self.d.pos)
        return 0

    def ack(self):
        """The message is done: it leaves the queue."""
        self._settle(0)

    def nack(self, bint requeue=True):
        """Give the message back: requeued ahead of never-delivered messages
        (requeue=True), or dropped (requeue=False)."""
        self._settle(1 if requeue else 2)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False
