# cython: language_level=3, freethreading_compatible=False
"""Cython backend: a thin binding of ext/ackring.c.

Hot calls (put, get, ack) are one C call each with the GIL held; the GIL is
dropped only for blocking waits, which return every AR_WAIT_SLICE_NS so that
signals (Ctrl-C) are checked and a reclaim pass can run.  Exceptions come from
ackring._errors; nothing here defines its own.
"""
cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcpy
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo,
                             PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE)
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_CheckExact)
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.unicode cimport PyUnicode_Check
from libc.errno cimport errno

import os as _os

from ackring import _errors as E
from ackring import _liveness
from ackring._errors import Receipt
from ackring._status import Status as _Status

cdef extern from "ackring.h" nogil:
    enum:
        AR_OK, AR_EMPTY, AR_FULL, AR_AGAIN, AR_TOOBIG, AR_STALE, AR_CORRUPT, AR_INCOMPATIBLE
        AR_TABLE_FULL, AR_EXISTS, AR_NOTFOUND, AR_INVAL, AR_ERRNO
    enum:
        AR_ROLE_PRODUCER, AR_ROLE_CONSUMER, AR_ROLE_OBSERVER
    enum:
        AR_S_FREE, AR_S_WRITING, AR_S_READY, AR_S_DELIVERED
    enum:
        AR_OUT_ACKED, AR_OUT_DROPPED, AR_OUT_DEAD, AR_OUT_DISCARDED, AR_OUT_NONE
    enum:
        AR_DL_REJECTED, AR_DL_DELIVERY_LIMIT, AR_DL_EXPIRED, AR_DL_LEASE_EXPIRED
    ctypedef struct ar_config:
        uint32_t max_deliveries
        uint32_t is_dlq
        uint64_t default_ttl_ns
        uint64_t ack_timeout_ns
    ctypedef struct ar_queue:
        pass
    ctypedef struct ar_delivery:
        uint64_t pos
        uint64_t word
        const unsigned char *data
        uint32_t len
        uint32_t delivery_count
        uint64_t publish_ns
        uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns
        uint32_t dead_reason, dead_delivery_count
    ctypedef struct ar_stats:
        uint64_t depth, in_flight, published, acked, nacked, redelivered, discarded, dropped
        uint64_t rejected, dl_delivery_limit, dl_expired, dl_lease_expired, lease_expired, dlq_dropped
        uint32_t producers, consumers, capacity, message_size, max_clients
        uint64_t head, tail, requeued_hint
    ctypedef struct ar_client_info:
        uint32_t index, role, pid, state
        uint64_t start_time
        uint64_t word
        uint32_t mine
    uint64_t AR_NO_DEADLINE
    uint32_t AR_W_OWNER(uint64_t w)
    uint64_t AR_WAIT_SLICE_NS

    int ar_create(const char *dir, const char *name, uint32_t capacity, uint32_t message_size,
                  uint32_t max_clients, int mode, const ar_config *cfg, ar_queue **out)
    void ar_get_config(const ar_queue *q, ar_config *cfg)
    void ar_attach_dlq(ar_queue *q, ar_queue *dlq, uint32_t dlq_entry)
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
    int ar_entry_ok(const ar_queue *q, uint32_t entry)
    void ar_wake_all(ar_queue *q)
    int ar_get_client(const ar_queue *q, uint32_t index, ar_client_info *out)
    int ar_reclaim_entry(ar_queue *q, uint32_t reclaimer, uint32_t index, uint64_t verdict_word,
                         uint64_t start_time, uint32_t *repaired)
    int ar_put(ar_queue *q, uint32_t entry, const void *data, size_t len, uint64_t deadline_ns,
               uint64_t ttl_ns, uint64_t *id)
    int ar_get(ar_queue *q, uint32_t entry, ar_delivery *d, uint64_t deadline_ns, uint64_t lease_ns)
    int ar_extend(ar_queue *q, uint32_t entry, const ar_delivery *d, uint64_t lease_ns)
    int ar_expire_leases(ar_queue *q, uint32_t entry, uint32_t *n)
    int ar_wait_settled(ar_queue *q, uint32_t entry, uint64_t id, uint64_t deadline_ns, uint32_t *outcome)
    int ar_ack(ar_queue *q, uint32_t entry, const ar_delivery *d)
    int ar_nack(ar_queue *q, uint32_t entry, const ar_delivery *d, int requeue)
    int ar_stats_read(const ar_queue *q, ar_stats *st)
    uint64_t ar_now_ns()
    ctypedef struct ar_iovec:
        const void *data
        size_t len
    int ar_put_many(ar_queue *q, uint32_t entry, const ar_iovec *msgs, size_t n, uint64_t deadline_ns,
                    uint64_t ttl_ns, uint64_t *ids, size_t *done)
    int ar_get_many(ar_queue *q, uint32_t entry, ar_delivery *ds, size_t n, uint64_t deadline_ns,
                    uint64_t lease_ns, size_t *got)
    int ar_ack_many(ar_queue *q, uint32_t entry, const ar_delivery *ds, size_t n, int *rcs)
    int ar_reserve(ar_queue *q, uint32_t entry, uint64_t deadline_ns, uint64_t *pos, unsigned char **buf)
    int ar_commit(ar_queue *q, uint32_t entry, uint64_t pos, size_t len, uint64_t ttl_ns)
    int ar_abort(ar_queue *q, uint32_t entry, uint64_t pos)
    ctypedef struct ar_header_raw:
        uint64_t magic, queue_id, total_size, head, tail, requeued, reclaim_lock
        uint32_t version, header_size, capacity, message_size, slot_size, max_clients
        uint32_t consumers_waiting, producers_waiting, leases_seen
    ctypedef struct ar_slot_raw:
        uint64_t word, id
        uint32_t len
    int ar_inspect_header(const ar_queue *q, ar_header_raw *out)
    int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *out)
    int ar_inspect_client_waiting(const ar_queue *q, uint32_t index, uint32_t *waiting)
    int ar_set_test_hook(const char *point)

# A blocked call runs a reclaim pass once it has waited this long, then again
# at the same interval: a dead process cannot stall a live one for longer.
cdef uint64_t RECLAIM_AFTER_NS = 100000000

# Copies at least this long run with the GIL released: below it, dropping and
# retaking the GIL costs more than other threads gain.
cdef Py_ssize_t NOGIL_COPY_BYTES = 65536

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


_STATUS = _Status({
    "AR_EMPTY": AR_EMPTY, "AR_FULL": AR_FULL, "AR_TOOBIG": AR_TOOBIG, "AR_STALE": AR_STALE,
    "AR_CORRUPT": AR_CORRUPT, "AR_INCOMPATIBLE": AR_INCOMPATIBLE, "AR_TABLE_FULL": AR_TABLE_FULL,
    "AR_EXISTS": AR_EXISTS, "AR_NOTFOUND": AR_NOTFOUND, "AR_INVAL": AR_INVAL, "AR_ERRNO": AR_ERRNO,
    "AR_OUT_ACKED": AR_OUT_ACKED, "AR_OUT_DROPPED": AR_OUT_DROPPED, "AR_OUT_DEAD": AR_OUT_DEAD,
    "AR_OUT_DISCARDED": AR_OUT_DISCARDED, "AR_OUT_NONE": AR_OUT_NONE,
    "AR_DL_REJECTED": AR_DL_REJECTED, "AR_DL_DELIVERY_LIMIT": AR_DL_DELIVERY_LIMIT,
    "AR_DL_EXPIRED": AR_DL_EXPIRED, "AR_DL_LEASE_EXPIRED": AR_DL_LEASE_EXPIRED})
_error = _STATUS.error
_OUTCOMES = _STATUS.outcomes
REASONS = _STATUS.reasons


cdef bytes _copy_out(const unsigned char *data, uint32_t n):
    """A bytes copy of a payload; large ones are copied without the GIL."""
    cdef bytes b
    cdef char *dst
    if n < NOGIL_COPY_BYTES:
        return PyBytes_FromStringAndSize(<const char *>data, n)
    b = PyBytes_FromStringAndSize(NULL, n)
    dst = PyBytes_AS_STRING(b)
    with nogil:
        memcpy(dst, data, n)
    return b


cdef uint64_t _duration_ns(object seconds, str what) except? 0:
    """None -> 0 (not set); a positive number of seconds -> nanoseconds."""
    cdef double t
    if seconds is None:
        return 0
    t = seconds   # TypeError for non-numbers
    if not (t > 0) or t > 1e9:
        raise ValueError("%s must be None or a number of seconds > 0, not %r" % (what, seconds))
    return <uint64_t>(t * 1e9) or 1




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
    cdef readonly Segment dlq        # the dead-letter queue's segment, once attached
    cdef uint32_t dlq_entry          # our (observer) entry in it
    cdef unsigned long dlq_gen
    cdef object __weakref__

    def __cinit__(self):
        self.q = NULL
        self.closed = True

    def __dealloc__(self):
        if self.q != NULL:
            ar_close(self.q)
            self.q = NULL

    @staticmethod
    def create(str directory, str name, uint32_t capacity, uint32_t message_size,
               uint32_t max_clients, int mode, uint32_t max_deliveries=0, ttl=None,
               ack_timeout=None, bint is_dlq=False):
        cdef Segment s = Segment.__new__(Segment)
        cdef bytes d = _os.fsencode(directory), n = name.encode("ascii")
        cdef int rc
        cdef ar_config cfg
        cfg.max_deliveries = max_deliveries
        cfg.is_dlq = is_dlq
        cfg.default_ttl_ns = _duration_ns(ttl, "ttl")
        cfg.ack_timeout_ns = _duration_ns(ack_timeout, "ack_timeout")
        rc = ar_create(d, n, capacity, message_size, max_clients, mode, &cfg, &s.q)
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
        if not self.closed:
            if self.has_observer and self.observer_gen == _fork_gen:
                ar_unregister(self.q, self.observer)
            if self.dlq is not None:
                if self.dlq_gen == _fork_gen and not self.dlq.closed:
                    ar_unregister(self.dlq.q, self.dlq_entry)
                ar_attach_dlq(self.q, NULL, 0)
        self.closed = True

    property config:
        """The delivery rules fixed at creation."""
        def __get__(self):
            cdef ar_config c
            ar_get_config(self.q, &c)
            return {"max_deliveries": c.max_deliveries or None,
                    "ttl": c.default_ttl_ns / 1e9 if c.default_ttl_ns else None,
                    "ack_timeout": c.ack_timeout_ns / 1e9 if c.ack_timeout_ns else None,
                    "is_dead_letter_queue": bool(c.is_dlq)}

    property is_dlq:
        def __get__(self):
            cdef ar_config c
            ar_get_config(self.q, &c)
            return bool(c.is_dlq)

    def attach_dlq(self, Segment dlq):
        """Dead letters of this queue made by this process go to `dlq`."""
        self.check()
        dlq.check()
        self.dlq = dlq
        self.dlq_entry = dlq.register(AR_ROLE_OBSERVER)
        self.dlq_gen = _fork_gen
        ar_attach_dlq(self.q, dlq.q, self.dlq_entry)

    cdef int refresh(self) except -1:
        """Make sure our entry in the dead-letter queue is ours: after fork,
        or after a reclaim took it from under us, take a new one."""
        if self.dlq is not None and not self.dlq.closed and (
                self.dlq_gen != _fork_gen or not ar_entry_ok(self.dlq.q, self.dlq_entry)):
            self.dlq_entry = self.dlq.register(AR_ROLE_OBSERVER)
            self.dlq_gen = _fork_gen
            ar_attach_dlq(self.q, self.dlq.q, self.dlq_entry)
        return 0

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

    cdef uint64_t entry_word(self, uint32_t entry):
        cdef ar_client_info ci
        ar_get_client(self.q, entry, &ci)
        return ci.word

    cdef uint32_t register(self, uint32_t role) except? 0xFFFFFFFF:
        cdef uint32_t entry = 0
        cdef int rc
        self.check()
        self.refresh()  # a client made in a forked child: our DLQ entry must be ours too
        pid, start = _liveness.self_identity()
        rc = ar_register(self.q, role, pid, start, &entry)
        if rc != AR_OK:
            raise _error(rc, self.name)
        return entry

    def stats(self):
        cdef ar_stats st
        self.check()
        ar_stats_read(self.q, &st)
        dead = {"rejected": st.rejected, "delivery_limit": st.dl_delivery_limit,
                "expired": st.dl_expired, "lease_expired": st.dl_lease_expired}
        return {
            "depth": st.depth, "in_flight": st.in_flight, "published": st.published,
            "acked": st.acked, "nacked": st.nacked, "redelivered": st.redelivered,
            "rejected": st.rejected, "dead_lettered": dead,
            "dead_lettered_total": sum(dead.values()), "expired": st.dl_expired,
            "lease_expired": st.lease_expired, "dropped": st.dropped,
            "dlq_dropped": st.dlq_dropped, "discarded": st.discarded,
            "producers": st.producers, "consumers": st.consumers,
            "capacity": st.capacity, "message_size": st.message_size,
            "max_clients": st.max_clients, "head": st.head, "tail": st.tail,
        }

    def clients(self):
        """Every non-free process-table entry as (index, state, role, pid,
        start_time, word, mine): word is the whole entry word a reclaim
        verdict names; mine is True for this handle's own live entries."""
        cdef ar_client_info ci
        cdef uint32_t i
        self.check()
        out = []
        for i in range(ar_max_clients(self.q)):
            ar_get_client(self.q, i, &ci)
            if ci.state != 0:
                out.append((ci.index, ci.state, ci.role, ci.pid, ci.start_time, ci.word, bool(ci.mine)))
        return out

    cdef bint leases_in_use(self):
        cdef ar_header_raw h
        ar_inspect_header(self.q, &h)
        return h.leases_seen != 0

    def raw_header(self):
        """A snapshot of the shared header, for check()."""
        cdef ar_header_raw h
        self.check()
        ar_inspect_header(self.q, &h)
        return {
            "magic": h.magic, "version": h.version, "header_size": h.header_size,
            "capacity": h.capacity, "message_size": h.message_size, "slot_size": h.slot_size,
            "max_clients": h.max_clients, "queue_id": h.queue_id, "total_size": h.total_size,
            "head": h.head, "tail": h.tail, "requeued": h.requeued, "reclaim_lock": h.reclaim_lock,
            "consumers_waiting": h.consumers_waiting, "producers_waiting": h.producers_waiting,
        }

    def raw_slots(self):
        """(word, id, len) of every slot, for check()."""
        cdef ar_slot_raw r
        cdef uint32_t i
        self.check()
        out = []
        for i in range(ar_capacity(self.q)):
            ar_inspect_slot(self.q, i, &r)
            out.append((r.word, r.id, r.len))
        return out

    def client_waiting(self, uint32_t index):
        cdef uint32_t w = 0
        self.check()
        if ar_inspect_client_waiting(self.q, index, &w) != AR_OK:
            raise IndexError(index)
        return w

    def reclaim(self):
        """Repair what dead processes left behind, and take back deliveries
        whose ack lease ran out; returns the number of slots repaired."""
        cdef uint32_t repaired = 0, total = 0
        cdef int rc
        self.check()
        self.refresh()
        dead = _liveness.dead_entries(self.clients())
        if self.dlq is not None and not self.dlq.closed:
            total += self.dlq.reclaim()
        if not dead and not self.leases_in_use():
            return total
        cdef uint32_t me = ar_max_clients(self.q)   # "no entry of our own"
        if not self.has_observer or self.observer_gen != _fork_gen or not ar_entry_ok(self.q, self.observer):
            self.has_observer = False
            try:
                self.observer = self.register(AR_ROLE_OBSERVER)
                self.observer_gen = _fork_gen
                self.has_observer = True
            except E.TooManyClients:
                pass  # a full table: reclaim anyway, under no entry (leases wait)
        if self.has_observer and self.observer_gen == _fork_gen:
            me = self.observer
            ar_expire_leases(self.q, me, &repaired)
            total += repaired
        # Twice at most: an entry whose pass found the lock held by a dead
        # reclaimer is retried once the others (the dead holder among them)
        # are done.
        for _ in range(2):
            again = []
            for index, word, start in dead:
                rc = ar_reclaim_entry(self.q, me, index, word, start, &repaired)
                if rc == AR_OK:
                    total += repaired
                elif rc == AR_AGAIN:
                    again.append((index, word, start))
                elif rc != AR_STALE:
                    raise _error(rc, self.name)
            if not again or len(again) == len(dead):
                break
            dead = again
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
    cdef uint64_t word      # the entry word of our registration: tells it from a later one
    cdef unsigned long gen
    cdef uint32_t role
    cdef readonly bint closed
    cdef int busy            # calls in progress (and open reservations): close waits for them
    cdef bint close_pending
    cdef object __weakref__

    cdef int take_entry(self) except -1:
        self.entry = self.segment.register(self.role)
        self.word = self.segment.entry_word(self.entry)
        self.gen = _fork_gen
        return 0

    cdef inline bint owns_entry(self):
        return self.segment.entry_word(self.entry) == self.word and ar_entry_ok(self.segment.q, self.entry)

    cdef inline void busy_enter(self):
        self.busy += 1

    cdef int busy_leave(self) except -1:
        self.busy -= 1
        if self.busy == 0 and self.close_pending:
            self.close_pending = False
            self.release_entry()
        return 0

    cdef int release_entry(self) except -1:
        # only our own registration: after a reclaim took it from under us,
        # the index may be another client's now
        if self.gen == _fork_gen and self.segment.entry_word(self.entry) == self.word:
            ar_unregister(self.segment.q, self.entry)
        return 0

    def __dealloc__(self):
        # Dropped without close(): give the entry back (a consumer's
        # unsettled deliveries are requeued) so the table does not fill up.
        # Messages keep their consumer alive, so none is outstanding here.
        seg = self.segment
        if seg is not None and not self.closed and self.gen == _fork_gen and not seg.closed:
            if (<Segment>seg).entry_word(self.entry) == self.word:
                ar_unregister((<Segment>seg).q, self.entry)

    cdef inline int check(self) except -1:
        if self.closed or self.segment.closed:
            raise E.QueueClosed("%s of queue %r is closed" % (type(self).__name__, self.segment.name))
        if self.gen != _fork_gen:  # we are a forked child: take an entry of our own
            self.take_entry()
            self.segment.refresh()
        return 0

    cdef bint reattach(self) except -1:
        """If our entry was reclaimed from under us (a live process judged
        dead), take a new one; True if so.  What the old entry held was
        already requeued or discarded by that reclaim."""
        self.check()
        if self.owns_entry():
            return False
        self.take_entry()
        return True

    def close(self):
        """Release the process-table entry; a consumer's unsettled deliveries
        are requeued.  If other threads are inside a call on this client (or
        a reservation of it is open), the entry is released when the last of
        them returns: until then no slot of theirs is taken away under them."""
        if not self.closed:
            self.closed = True
            if self.gen == _fork_gen:
                if self.busy:
                    self.close_pending = True
                else:
                    self.release_entry()
                ar_wake_all(self.segment.q)  # our other threads asleep in a call see the close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


cdef class Producer(_Client):
    def __init__(self, Segment segment):
        self.segment = segment
        self.role = AR_ROLE_PRODUCER
        self.take_entry()

    cdef uint64_t _put(self, object data, uint64_t deadline, uint64_t ttl_n) except? 0xFFFFFFFFFFFFFFFF:
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
            if n >= NOGIL_COPY_BYTES:
                with nogil:
                    rc = ar_put(self.segment.q, self.entry, ptr, n, 0, ttl_n, &mid)
            else:
                rc = ar_put(self.segment.q, self.entry, ptr, n, 0, ttl_n, &mid)
            if rc == AR_FULL and deadline != 0:
                since = ar_now_ns()
                while True:
                    # The buffer stays exported (or the bytes immutable) while
                    # the GIL is dropped, so ptr stays valid.
                    with nogil:
                        rc = ar_put(self.segment.q, self.entry, ptr, n, deadline, ttl_n, &mid)
                    if rc != AR_AGAIN:
                        break
                    self.segment.blocked(since)
                    self.check()
            if rc == AR_STALE and self.reattach():
                # our claim was discarded by a reclaim that judged us dead:
                # nothing was stored, so storing it now is not a duplicate
                return self._put(data, deadline, ttl_n)
        finally:
            if release:
                PyBuffer_Release(&view)
        if rc != AR_OK:
            raise _error(rc, "put to queue %r" % (self.segment.name,))
        return mid

    def put(self, data, timeout=None, ttl=None):
        """Store one message; returns its id once it is visible to consumers
        (the publisher confirm).  Waits while the queue is full, up to
        ``timeout`` seconds (None: no limit), then raises ackring.Full.
        ``ttl``: seconds after which it expires undelivered (the lower of
        this and the queue's ttl wins)."""
        self.check()
        self.busy_enter()
        try:
            return self._put(data, _deadline(timeout), _duration_ns(ttl, "ttl"))
        finally:
            self.busy_leave()

    def wait_acked(self, uint64_t message_id, timeout=None):
        """Wait until message ``message_id`` is settled and say how: a Receipt
        (id, outcome, reason) with outcome "acked", "dead_lettered" (reason
        "rejected", "delivery_limit", "expired" or "lease_expired"), "dropped",
        or "settled" when its slot was reused before we looked (settled, how
        no longer recorded).  Raises TimeoutError at the timeout.  Waits on
        the queue's futex, not by polling."""
        self.check()
        self.busy_enter()
        try:
            return self._wait_acked(message_id, timeout)
        finally:
            self.busy_leave()

    def _wait_acked(self, uint64_t message_id, timeout=None):
        cdef uint64_t deadline, since
        cdef uint32_t outcome = 0
        cdef int rc
        self.check()
        deadline = _deadline(timeout)
        rc = ar_wait_settled(self.segment.q, self.entry, message_id, 0, &outcome)
        if rc == AR_EMPTY and deadline != 0:
            since = ar_now_ns()
            while True:
                with nogil:
                    rc = ar_wait_settled(self.segment.q, self.entry, message_id, deadline, &outcome)
                if rc != AR_AGAIN:
                    break
                self.segment.blocked(since)
                self.check()
        if rc == AR_EMPTY:
            raise TimeoutError("message %d was not settled within %r s" % (message_id, timeout))
        if rc == AR_INVAL:
            raise ValueError("no message %d was ever published to queue %r" % (message_id, self.segment.name))
        if rc != AR_OK:
            raise _error(rc, "wait_acked(%d)" % message_id)
        how, reason = _OUTCOMES.get(outcome, ("settled", None))
        return Receipt(message_id, how, reason)

    def put_many(self, messages, timeout=None, ttl=None):
        """Store several messages in order, in one C call; returns their ids.
        Every item is type- and size-checked before the first is written.
        ``timeout`` bounds the whole call; on Full, the exception's ``ids``
        lists the messages that were stored (confirmed) before it."""
        self.check()
        self.busy_enter()
        try:
            return self._put_many(messages, timeout, ttl)
        finally:
            self.busy_leave()

    def _put_many(self, messages, timeout=None, ttl=None):
        cdef Py_ssize_t n, i, nviews = 0
        cdef ar_iovec *vec = NULL
        cdef uint64_t *ids = NULL
        cdef Py_buffer *views = NULL
        cdef size_t done = 0
        cdef uint64_t deadline, since
        cdef uint32_t limit
        cdef int rc
        cdef uint64_t ttl_ns = _duration_ns(ttl, "ttl")
        self.check()
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        deadline = _deadline(timeout)
        n = len(items)
        if n == 0:
            return []
        limit = ar_message_size(self.segment.q)
        vec = <ar_iovec *>PyMem_Malloc(n * sizeof(ar_iovec))
        ids = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        views = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        try:
            if vec == NULL or ids == NULL or views == NULL:
                raise MemoryError()
            for i in range(n):
                m = items[i]
                if PyBytes_CheckExact(m):
                    vec[i].data = PyBytes_AS_STRING(m)
                    vec[i].len = PyBytes_GET_SIZE(m)
                elif PyUnicode_Check(m):
                    raise TypeError("put_many() takes bytes-like items, not str (item %d)" % i)
                else:
                    PyObject_GetBuffer(m, &views[nviews], PyBUF_C_CONTIGUOUS)
                    vec[i].data = views[nviews].buf
                    vec[i].len = views[nviews].len
                    nviews += 1
                if vec[i].len > limit:
                    raise E.MessageTooLarge("item %d: a message of %d bytes exceeds message_size %d"
                                            % (i, vec[i].len, limit))
            rc = ar_put_many(self.segment.q, self.entry, vec, n, 0, ttl_ns, ids, &done)
            if rc == AR_FULL and deadline != 0:
                since = ar_now_ns()
                while True:
                    with nogil:
                        rc = ar_put_many(self.segment.q, self.entry, vec, n, deadline, ttl_ns, ids, &done)
                    if rc != AR_AGAIN:
                        break
                    self.segment.blocked(since)
                    self.check()
            while rc == AR_STALE and self.reattach():
                # our claim was discarded by a reclaim that judged us dead:
                # that message was not stored; go on from it under a new entry
                rc = ar_put_many(self.segment.q, self.entry, vec, n, deadline, ttl_ns, ids, &done)
            stored = [ids[i] for i in range(done)]
            if rc == AR_FULL:
                raise E.Full("put_many to queue %r: %d of %d stored before the timeout"
                             % (self.segment.name, done, n), ids=stored)
            if rc != AR_OK:
                raise _error(rc, "put_many to queue %r" % (self.segment.name,))
            return stored
        finally:
            for i in range(nviews):
                PyBuffer_Release(&views[i])
            PyMem_Free(vec)
            PyMem_Free(ids)
            PyMem_Free(views)

    def reserve(self, Py_ssize_t size=-1, timeout=None, ttl=None):
        """Zero-copy send: claim a slot and write the message in place.

            with p.reserve(n) as buf:   # writable memoryview of n bytes
                buf[:] = ...
            # committed (published) here; aborted if the block raised

        ``size`` defaults to message_size.  Keep reservations short:
        consumers wait behind an open one.

        An open reservation counts as a call in progress: closing the
        producer waits for it to be committed or aborted."""
        self.check()
        self.busy_enter()
        try:
            return self._reserve(size, timeout, ttl)
        except BaseException:
            self.busy_leave()
            raise

    def _reserve(self, Py_ssize_t size=-1, timeout=None, ttl=None):
        cdef uint64_t deadline, pos = 0, since
        cdef unsigned char *buf = NULL
        cdef int rc
        cdef Reservation r
        self.check()
        if size < 0:
            size = ar_message_size(self.segment.q)
        if <size_t>size > ar_message_size(self.segment.q):
            raise E.MessageTooLarge("reserve(%d) exceeds message_size %d of queue %r"
                                    % (size, ar_message_size(self.segment.q), self.segment.name))
        deadline = _deadline(timeout)
        rc = ar_reserve(self.segment.q, self.entry, 0, &pos, &buf)
        if rc == AR_FULL and deadline != 0:
            since = ar_now_ns()
            while True:
                with nogil:
                    rc = ar_reserve(self.segment.q, self.entry, deadline, &pos, &buf)
                if rc != AR_AGAIN:
                    break
                self.segment.blocked(since)
                self.check()
        if rc == AR_STALE and self.reattach():
            return self._reserve(size, timeout, ttl)
        if rc != AR_OK:
            raise _error(rc, "reserve in queue %r" % (self.segment.name,))
        r = Reservation.__new__(Reservation)
        r.producer, r.pos, r.buf, r.size, r.gen = self, pos, buf, size, self.gen
        r.ttl_ns = _duration_ns(ttl, "ttl")
        return r


cdef class Reservation:
    """A claimed slot being written in place (see Producer.reserve)."""
    cdef Producer producer
    cdef uint64_t pos
    cdef unsigned char *buf
    cdef Py_ssize_t size
    cdef unsigned long gen
    cdef uint64_t ttl_ns
    cdef readonly bint done
    cdef object _view

    def __init__(self):
        raise TypeError("reservations come from Producer.reserve()")

    def __dealloc__(self):
        # Dropped without commit or abort: abort, or consumers would wait
        # behind the slot for the rest of the producer's life.
        p = self.producer
        if p is not None and not self.done and self.gen == _fork_gen and (<Producer>p).segment is not None:
            self.done = True
            ar_abort((<Producer>p).segment.q, (<Producer>p).entry, self.pos)
            (<Producer>p).busy_leave()

    property id:
        """The message id it will have (its ring position)."""
        def __get__(self): return self.pos

    def __len__(self):
        return self.size

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self.done:
            raise E.AlreadySettled("reservation %d was committed or aborted" % self.pos)
        PyBuffer_FillInfo(buffer, self, <void *>self.buf, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def view(self):
        """memoryview(r), writable: spelled so that code runs on both backends."""
        return memoryview(self)

    cdef int _finish(self, bint commit, Py_ssize_t length) except -1:
        cdef int rc
        cdef Producer p = self.producer
        if self.done:
            raise E.AlreadySettled("reservation %d was already committed or aborted" % self.pos)
        if self.gen != _fork_gen:
            raise E.StaleDelivery("reservation %d belongs to the parent process" % self.pos)
        if p.closed or p.segment.closed:
            self.done = True
            ar_abort(p.segment.q, p.entry, self.pos)
            p.busy_leave()
            raise E.QueueClosed("the producer of reservation %d is closed (the slot was discarded)" % self.pos)
        if commit and not 0 <= length <= self.size:
            raise ValueError("commit length must be from 0 to %d, not %d" % (self.size, length))
        if self._view is not None:
            try:
                self._view.release()  # the in-place view dies with the reservation
            except BufferError:
                pass  # the caller still holds slices of it; they point at a slot no longer ours
            self._view = None
        rc = ar_commit(p.segment.q, p.entry, self.pos, length, self.ttl_ns) if commit else ar_abort(p.segment.q, p.entry, self.pos)
        self.done = True
        p.busy_leave()
        if rc != AR_OK:
            raise _error(rc, "%s reservation %d" % ("commit" if commit else "abort", self.pos))
        return 0

    def commit(self, length=None):
        """Publish the first ``length`` bytes (default: the reserved size); returns the id."""
        self._finish(True, self.size if length is None else length)
        return self.pos

    def abort(self):
        """Give the slot back unpublished."""
        self._finish(False, 0)

    def __enter__(self):
        self._view = memoryview(self)
        return self._view

    def __exit__(self, exc_type, exc, tb):
        if not self.done:
            if exc_type is None:
                self.commit()
            else:
                self.abort()
        return False


cdef class Consumer(_Client):
    cdef readonly Py_ssize_t prefetch       # 0: unlimited
    cdef readonly Py_ssize_t outstanding    # delivered to us, not yet settled
    cdef uint64_t lease_ns                  # 0: the queue's ack_timeout

    def __init__(self, Segment segment, prefetch=None, ack_timeout=None):
        if prefetch is not None and (isinstance(prefetch, bool) or int(prefetch) < 1):
            raise ValueError("prefetch must be None or an int >= 1, not %r" % (prefetch,))
        self.prefetch = 0 if prefetch is None else int(prefetch)
        self.lease_ns = _duration_ns(ack_timeout, "ack_timeout")
        self.segment = segment
        self.role = AR_ROLE_CONSUMER
        self.take_entry()

    def close(self):
        """Release the process-table entry; unsettled deliveries are requeued."""
        _Client.close(self)
        self.outstanding = 0

    cdef inline int allowance(self, Py_ssize_t n) except -1:
        """How many of n more messages prefetch allows; raises at once if none."""
        if self.prefetch == 0:
            return n
        if self.outstanding >= self.prefetch:
            raise E.PrefetchExceeded(
                "consumer holds %d unsettled message(s), its prefetch limit: settle one first"
                % self.outstanding)
        return min(n, self.prefetch - self.outstanding)

    cdef int _get(self, ar_delivery *d, uint64_t deadline) except -1:
        cdef int rc = ar_get(self.segment.q, self.entry, d, 0, self.lease_ns)
        cdef uint64_t since
        if rc == AR_EMPTY and deadline != 0:
            since = ar_now_ns()
            while True:
                with nogil:
                    rc = ar_get(self.segment.q, self.entry, d, deadline, self.lease_ns)
                if rc != AR_AGAIN:
                    break
                self.segment.blocked(since)
                self.check()
        if rc == AR_STALE:  # our entry was closed or reclaimed while we waited
            if self.reattach():
                return self._get(d, deadline)
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (self.segment.name,))
        if self.closed:
            # closed by another thread while we waited, and the index already
            # reused by a new client of this process: give the message back
            ar_nack(self.segment.q, AR_W_OWNER(d.word), d, 1)
            self.check()
        return 0

    cdef Message _message(self, ar_delivery *d, bint copy):
        cdef Message m = Message.__new__(Message)
        m.consumer = self
        m.d = d[0]
        m.gen = self.gen
        self.outstanding += 1
        if copy:
            m._body = _copy_out(d.data, d.len)
        return m

    def get(self, timeout=None, bint copy=True):
        """Receive one message (it stays in the queue until settled).  Waits
        up to ``timeout`` seconds (None: no limit), then raises ackring.Empty.
        With copy=False the body is not copied now: read it through
        ``memoryview(m)`` or ``m.body`` before settling."""
        cdef ar_delivery d
        self.check()
        self.allowance(1)
        self.busy_enter()
        try:
            self._get(&d, _deadline(timeout))
        finally:
            self.busy_leave()
        return self._message(&d, copy)

    def get_many(self, Py_ssize_t n, timeout=None, bint copy=True):
        """Up to n messages in one C call: waits (up to ``timeout``) for the
        first, then takes whatever else is ready without waiting."""
        self.check()
        self.busy_enter()
        try:
            return self._get_many(n, timeout, copy)
        finally:
            self.busy_leave()

    def _get_many(self, Py_ssize_t n, timeout=None, bint copy=True):
        cdef ar_delivery *ds
        cdef size_t got = 0, i
        cdef uint64_t deadline, since
        cdef int rc
        if n < 1:
            raise ValueError("get_many() needs n >= 1")
        self.check()
        n = self.allowance(n)
        deadline = _deadline(timeout)
        ds = <ar_delivery *>PyMem_Malloc(n * sizeof(ar_delivery))
        if ds == NULL:
            raise MemoryError()
        try:
            rc = ar_get_many(self.segment.q, self.entry, ds, n, 0, self.lease_ns, &got)
            if rc == AR_EMPTY and deadline != 0:
                since = ar_now_ns()
                while True:
                    with nogil:
                        rc = ar_get_many(self.segment.q, self.entry, ds, n, deadline, self.lease_ns, &got)
                    if rc != AR_AGAIN:
                        break
                    self.segment.blocked(since)
                    self.check()
            if self.closed:
                # closed by another thread while we waited: give back what we took
                for i in range(got):
                    ar_nack(self.segment.q, AR_W_OWNER(ds[i].word), &ds[i], 1)
                self.check()
            out = [self._message(&ds[i], copy) for i in range(got)]
            if rc == AR_STALE and self.reattach():
                if got:
                    return out  # keep what we hold; the next call uses the new entry
                return self._get_many(n, timeout, copy)
            if rc != AR_OK:
                raise _error(rc, "get from queue %r" % (self.segment.name,))
            return out
        finally:
            PyMem_Free(ds)

    def ack_many(self, messages):
        """Ack a batch in one C call (RabbitMQ's multiple=True).  Every item
        must be an unsettled message of this consumer, else nothing is acked.
        Deliveries found stale are skipped and reported by StaleDelivery
        (its ``ids``) after the rest are acked."""
        cdef Py_ssize_t n, i
        cdef ar_delivery *ds
        cdef int *rcs
        cdef Message m
        cdef int64_t dup
        self.check()
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        n = len(items)
        dup = -1
        for i in range(n):
            if not isinstance(items[i], Message):
                raise TypeError("ack_many() takes Message objects, not %s" % type(items[i]).__name__)
            m = items[i]
            if m.consumer is not self:
                raise ValueError("message %d was delivered to another consumer" % m.d.pos)
            if m.settled:
                raise E.AlreadySettled("message %d was already settled" % m.d.pos)
            if m.gen != _fork_gen:
                raise E.StaleDelivery("message %d was delivered to the parent process before fork" % m.d.pos)
        # Duplicates: mark each message once; a mark already set is a repeat.
        for i in range(n):
            m = items[i]
            if m.marked:
                dup = m.d.pos
            m.marked = True
        for i in range(n):
            (<Message>items[i]).marked = False
        if dup >= 0:
            raise E.AlreadySettled("ack_many() got message %d twice" % dup)
        if n == 0:
            return
        ds = <ar_delivery *>PyMem_Malloc(n * sizeof(ar_delivery))
        rcs = <int *>PyMem_Malloc(n * sizeof(int))
        try:
            if ds == NULL or rcs == NULL:
                raise MemoryError()
            for i in range(n):
                ds[i] = (<Message>items[i]).d
            ar_ack_many(self.segment.q, self.entry, ds, n, rcs)
            stale = []
            for i in range(n):
                m = items[i]
                m.settled = True
                self.outstanding -= 1
                if rcs[i] != AR_OK:
                    stale.append(m.d.pos)
            if stale:
                exc = E.StaleDelivery("%d of %d deliveries were no longer current: %r" % (len(stale), n, stale))
                exc.ids = stale
                raise exc
        finally:
            PyMem_Free(ds)
            PyMem_Free(rcs)

    def __iter__(self):
        return self

    def __next__(self):
        if self.closed or self.segment.closed:
            raise StopIteration
        try:
            return self.get()
        except E.QueueClosed:
            raise StopIteration


@cython.freelist(256)
cdef class Message:
    """One delivery.  Settle it exactly once: ack(), or nack(requeue=...)."""
    cdef Consumer consumer
    cdef ar_delivery d
    cdef unsigned long gen
    cdef object _body
    cdef readonly bint settled
    cdef bint marked   # scratch flag of ack_many's duplicate check

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
                self._body = _copy_out(self.d.data, self.d.len)
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

    def view(self):
        """memoryview(m): the read-only zero-copy view, spelled so that code
        runs on both backends (the cffi one cannot export a buffer on
        CPython <= 3.11)."""
        return memoryview(self)

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
        c.segment.refresh()
        if how == 0:
            rc = ar_ack(c.segment.q, c.entry, &self.d)
        else:
            rc = ar_nack(c.segment.q, c.entry, &self.d, how == 1)
        self.settled = True
        c.outstanding -= 1
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
        (requeue=True, delivery_count goes up on the next delivery), or
        dead-lettered with reason "rejected" (requeue=False)."""
        self._settle(1 if requeue else 2)

    def reject(self):
        """Send the message to the dead-letter queue (reason "rejected")."""
        self._settle(2)

    def extend(self, seconds):
        """Lengthen this delivery's ack lease to ``seconds`` from now (like
        SQS ChangeMessageVisibility).  StaleDelivery if it was taken back."""
        cdef uint64_t ns = _duration_ns(seconds, "seconds")
        cdef int rc
        if ns == 0:
            raise ValueError("extend() needs a number of seconds > 0")
        if self.settled:
            raise E.AlreadySettled("message %d was already settled" % self.d.pos)
        c = self.consumer
        if c.closed or c.segment.closed:
            raise E.QueueClosed("the consumer of message %d is closed" % self.d.pos)
        rc = ar_extend(c.segment.q, c.entry, &self.d, ns)
        if rc == AR_STALE:
            raise E.StaleDelivery("message %d: its lease ran out and it was taken back" % self.d.pos)
        if rc != AR_OK:
            raise _error(rc, "extend message %d" % self.d.pos)

    property key:
        """(queue_id, id): unique over the queue's whole life and across
        re-creations of a queue of the same name.  Key an idempotent consumer
        on it."""
        def __get__(self):
            return (self.consumer.segment.queue_id, self.d.pos)

    property death:
        """On a dead-letter queue: why and how the message died, as a dict
        (reason, id, queue_id, delivery_count, first_publish_time, time);
        None on other queues."""
        def __get__(self):
            if self.d.dead_reason == 0:
                return None
            return {"reason": REASONS.get(self.d.dead_reason, "unknown(%d)" % self.d.dead_reason),
                    "id": self.d.dead_original_id, "queue_id": self.d.dead_queue_id,
                    "delivery_count": self.d.dead_delivery_count,
                    "first_publish_time": self.d.dead_publish_ns / 1e9,
                    "time": self.d.dead_ns / 1e9}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False


def set_test_hook(point):
    """Test-only: SIGSTOP this process at a named point inside a critical
    window (see ar_set_test_hook in ext/ackring.h).  None or "" turns it off."""
    cdef bytes b = (point or "").encode("ascii")
    if ar_set_test_hook(b) != AR_OK:
        raise ValueError("unknown test hook point %r" % (point,))
