# cython: language_level=3, freethreading_compatible=False
"""Cython backend: a thin binding of the C core in ext/ (the CPython path).

It marshals arguments and maps status codes, nothing more: calls in progress,
close, fork, prefetch and batch checks live in ext/client.c; what status codes
and records mean lives in ackring._status, shared with the cffi backend.

Hot calls (put, get, ack) are one C call each with the GIL held; the GIL is
dropped for blocking waits (which return every AR_WAIT_SLICE_NS so signals
run), large copies, and every call on a queue with durability="sync" (whose
confirm waits for the disk).
"""
cimport cython
from libc.stdint cimport uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcpy
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo,
                             PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBUF_READ)
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_CheckExact)
from cpython.exc cimport PyErr_CheckSignals
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.unicode cimport PyUnicode_Check
from cpython cimport array as carray
from libc.errno cimport errno

import array as _array
import os as _os

from ackring import _errors as E
from ackring import _status as S

cdef extern from "ackring.h" nogil:
    enum:
        AR_OK, AR_EMPTY, AR_FULL, AR_AGAIN, AR_TOOBIG, AR_STALE, AR_CORRUPT, AR_INCOMPATIBLE
        AR_TABLE_FULL, AR_EXISTS, AR_NOTFOUND, AR_INVAL, AR_ERRNO, AR_CLOSED, AR_PREFETCH
        AR_SETTLED, AR_FORKED, AR_DENIED, AR_CLIENT_CLOSED, AR_WRONG_CLIENT
    enum:
        AR_ROLE_PRODUCER, AR_ROLE_CONSUMER, AR_ROLE_OBSERVER
    enum:
        AR_OUT_ACKED, AR_OUT_DROPPED, AR_OUT_DEAD, AR_OUT_PURGED, AR_OUT_DISCARDED, AR_OUT_NONE
    enum:
        AR_DL_REJECTED, AR_DL_DELIVERY_LIMIT, AR_DL_EXPIRED, AR_DL_LEASE_EXPIRED
    enum:
        AR_DUR_MEMORY, AR_DUR_OS, AR_DUR_SYNC
    enum:
        AR_ACK, AR_REQUEUE, AR_REJECT
    uint32_t AR_D_SETTLED
    uint64_t AR_NO_DEADLINE
    uint32_t AR_DEATH_SIZE

    ctypedef struct ar_queue:
        pass
    ctypedef struct ar_client:
        pass
    ctypedef struct ar_config:
        uint32_t max_deliveries, is_dlq
        uint64_t default_ttl_ns, ack_timeout_ns
        uint32_t durability, checksum
    ctypedef struct ar_create_args:
        const char *path
        uint32_t capacity, message_size, max_clients, dlq_capacity
        int mode
        ar_config cfg
    ctypedef struct ar_recovery:
        uint32_t entries, requeued, discarded, repushed, leases, rebuilt, torn, busy
    ctypedef struct ar_delivery:
        ar_client *client
        uint64_t id, word
        const unsigned char *data
        uint32_t len, delivery_count, index, flags
        uint64_t publish_ns
        uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns
        uint32_t dead_reason, dead_delivery_count
    ctypedef struct ar_reservation:
        ar_client *client
        uint64_t id, word
        unsigned char *buf
        uint32_t index, done
    ctypedef struct ar_iovec:
        const void *data
        size_t len
    ctypedef struct ar_stats:
        uint64_t depth, in_flight, writing
        uint64_t published, acked, nacked, redelivered, discarded, dropped, rejected
        uint64_t dl_delivery_limit, dl_expired, dl_lease_expired, lease_expired, dlq_dropped
        uint64_t recovered, stale, purged, reclaimed_entries
        uint32_t producers, consumers, observers, capacity, message_size, max_clients
        uint32_t shutdown, durability
        uint64_t free_ring, ready_ring, requeue_ring
        uint64_t oldest_publish_ns, oldest_id
        uint32_t oldest_state, oldest_pid
        uint64_t syncs, synced_seq, pub_seq
    ctypedef struct ar_entry_info:
        uint32_t index, state, role, pid, seq, mine, alive
        uint64_t word, start_time, reg_ns, take_mark, push_mark
    ctypedef struct ar_header_raw:
        uint64_t magic, queue_id, peer_id, total_size
        uint32_t version, header_size, capacity, message_size, slot_size, max_clients, flags, mode
        uint32_t shutdown, leases_seen, durability
        uint64_t head[3]
        uint64_t tail[3]
        uint32_t not_empty, not_full
        uint64_t synced_seq, pub_seq
        uint32_t hint_lag
    ctypedef struct ar_slot_raw:
        uint64_t word, lease, use, publish_ns, pub_seq
        uint32_t len, crc, crc_ok
    ctypedef struct ar_peek_item:
        uint64_t id, word, publish_ns
        const unsigned char *data
        uint32_t len, delivery_count, index, requeued
        uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns
        uint32_t dead_reason, dead_delivery_count

    int ar_check_name(const char *name)
    int ar_create_pair(const ar_create_args *a, ar_queue **main, ar_queue **dlq)
    int ar_open(const char *path, const uint32_t *trust, size_t ntrust, ar_queue **out)
    int ar_attach_dlq(ar_queue *q, ar_queue *dlq)
    int ar_unlink(const char *path, const uint32_t *trust, size_t ntrust)
    void ar_close(ar_queue *q)
    int ar_shutdown(ar_queue *q)
    int ar_is_shutdown(const ar_queue *q)
    void ar_get_config(const ar_queue *q, ar_config *cfg)
    uint32_t ar_capacity(const ar_queue *q)
    uint32_t ar_message_size(const ar_queue *q)
    uint32_t ar_max_clients(const ar_queue *q)
    uint64_t ar_queue_id(const ar_queue *q)
    uint64_t ar_created_ns(const ar_queue *q)
    uint32_t ar_file_mode(const ar_queue *q)
    int ar_sync(ar_queue *q)
    int ar_reclaim(ar_queue *q, ar_recovery *rec)
    void ar_last_open(const ar_queue *q, ar_recovery *rec)
    int ar_entry_info_get(const ar_queue *q, uint32_t index, ar_entry_info *out)
    int ar_client_new(ar_queue *q, uint32_t role, uint32_t prefetch, uint64_t lease_ns, ar_client **out)
    int ar_client_close(ar_client *c)
    void ar_client_free(ar_client *c)
    int ar_client_closed(const ar_client *c)
    uint32_t ar_client_outstanding(const ar_client *c)
    uint32_t ar_client_prefetch(const ar_client *c)
    int ar_put(ar_client *c, const void *data, size_t len, uint64_t deadline, uint64_t ttl_ns, uint64_t *id)
    int ar_put_many(ar_client *c, const ar_iovec *msgs, size_t n, uint64_t deadline, uint64_t ttl_ns,
                    uint64_t *ids, size_t *done)
    int ar_reserve(ar_client *c, uint64_t deadline, ar_reservation *r)
    int ar_commit(ar_reservation *r, size_t len, uint64_t ttl_ns, uint64_t *id)
    int ar_abort(ar_reservation *r)
    int ar_get(ar_client *c, ar_delivery *d, uint64_t deadline)
    int ar_get_many(ar_client *c, ar_delivery *ds, size_t n, uint64_t deadline, size_t *got)
    int ar_intact(ar_delivery *d, int drop)
    int ar_settle(ar_delivery *d, int how)
    int ar_settle_many(ar_client *c, ar_delivery **ds, size_t n, int how, int *rcs, size_t *bad)
    int ar_extend(ar_delivery *d, uint64_t lease_ns)
    int ar_wait_settled(ar_client *c, uint64_t id, uint64_t deadline, uint32_t *outcome)
    int ar_stats_read(const ar_queue *q, ar_stats *st)
    int ar_inspect_header(const ar_queue *q, ar_header_raw *out)
    int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *out)
    int ar_inspect_cell(const ar_queue *q, uint32_t ring, uint32_t index, uint64_t *cell)
    int ar_peek(const ar_queue *q, ar_peek_item *items, size_t n, size_t *got)
    int ar_peek_still(const ar_queue *q, const ar_peek_item *item)
    int ar_purge(ar_client *c, uint64_t *n)
    int ar_set_test_hook(const char *point)
    int ar_test_hook_paused(int release)
    int ar_set_sync_snapshots(const char *dir)
    void ar_futex_counts(uint64_t *waits, uint64_t *wakes)
    uint64_t ar_ring_probes(int enable)
    uint64_t ar_now_ns()

# Copies at least this long run with the GIL released.
cdef Py_ssize_t NOGIL_COPY_BYTES = 65536

_STATUS = S.Status({
    "AR_OK": AR_OK, "AR_EMPTY": AR_EMPTY, "AR_FULL": AR_FULL, "AR_AGAIN": AR_AGAIN,
    "AR_TOOBIG": AR_TOOBIG, "AR_STALE": AR_STALE, "AR_CORRUPT": AR_CORRUPT,
    "AR_INCOMPATIBLE": AR_INCOMPATIBLE, "AR_TABLE_FULL": AR_TABLE_FULL, "AR_EXISTS": AR_EXISTS,
    "AR_NOTFOUND": AR_NOTFOUND, "AR_INVAL": AR_INVAL, "AR_ERRNO": AR_ERRNO, "AR_CLOSED": AR_CLOSED,
    "AR_PREFETCH": AR_PREFETCH, "AR_SETTLED": AR_SETTLED, "AR_FORKED": AR_FORKED,
    "AR_DENIED": AR_DENIED, "AR_CLIENT_CLOSED": AR_CLIENT_CLOSED, "AR_WRONG_CLIENT": AR_WRONG_CLIENT,
    "AR_OUT_ACKED": AR_OUT_ACKED, "AR_OUT_DROPPED": AR_OUT_DROPPED, "AR_OUT_DEAD": AR_OUT_DEAD,
    "AR_OUT_PURGED": AR_OUT_PURGED, "AR_OUT_DISCARDED": AR_OUT_DISCARDED, "AR_OUT_NONE": AR_OUT_NONE,
    "AR_DL_REJECTED": AR_DL_REJECTED, "AR_DL_DELIVERY_LIMIT": AR_DL_DELIVERY_LIMIT,
    "AR_DL_EXPIRED": AR_DL_EXPIRED, "AR_DL_LEASE_EXPIRED": AR_DL_LEASE_EXPIRED})
_error = _STATUS.error


cdef bytes _copy_out(const unsigned char *data, uint32_t n):
    cdef bytes b
    cdef char *dst
    if n < NOGIL_COPY_BYTES:
        return PyBytes_FromStringAndSize(<const char *>data, n)
    b = PyBytes_FromStringAndSize(NULL, n)
    dst = PyBytes_AS_STRING(b)
    with nogil:
        memcpy(dst, data, n)
    return b


cdef uint64_t _wait(object timeout) except? 1:
    """A timeout checked and made a wait: None -> AR_NO_DEADLINE (no limit);
    0 -> do not wait; else nanoseconds (+1).  No clock read: a call reads the
    clock (_until) only once its first, non-blocking attempt found it has to
    wait, so a put or get that need not wait costs no clock_gettime."""
    cdef double t
    cdef long long secs
    cdef int overflow = 0
    if timeout is None:
        return AR_NO_DEADLINE
    if PyLong_CheckExact(timeout):
        # an int read without making a float object of it (what t = timeout
        # does for an int: 3-4% of a per-message get in perf); one beyond
        # long long stands for +-2e9 s, which the bounds below take as such
        secs = PyLong_AsLongLongAndOverflow(timeout, &overflow)
        t = <double>secs if overflow == 0 else overflow * 2e9
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise S.bad_timeout(timeout)
    else:
        t = timeout
    if not (t >= 0):
        raise S.bad_timeout(timeout)
    if t == 0:
        return 0
    if t > 1e9:
        return AR_NO_DEADLINE
    return <uint64_t>(t * 1e9) + 1


cdef inline uint64_t _until(uint64_t wait) noexcept nogil:
    """The deadline (absolute CLOCK_MONOTONIC) of a _wait() that starts now."""
    if wait == 0 or wait == AR_NO_DEADLINE:
        return wait
    return ar_now_ns() + wait


cdef inline uint64_t _ttl(object ttl) except? 1:
    if ttl is None:
        return 0
    return S.check_duration(ttl, "ttl")


cdef class Segment:
    """One mapping of a queue's file in this process.  The mapping lives as
    long as this object or any client of it (and so any message, reservation
    or memoryview of one): closing a queue never unmaps memory a view points
    into."""
    cdef ar_queue *q
    cdef readonly str path
    cdef readonly str name
    cdef readonly bint closed
    cdef readonly Segment dlq
    cdef object __weakref__

    def __cinit__(self):
        self.q = NULL
        self.closed = True

    def __dealloc__(self):
        if self.q != NULL:
            ar_close(self.q)
            self.q = NULL

    @staticmethod
    cdef Segment _wrap(ar_queue *q, str path, str name):
        cdef Segment s = Segment.__new__(Segment)
        s.q, s.path, s.name, s.closed = q, path, name, False
        return s

    @staticmethod
    def create_pair(str path, str name, uint32_t capacity, uint32_t message_size, uint32_t max_clients,
                    uint32_t dlq_capacity, int mode, uint32_t max_deliveries, ttl, ack_timeout,
                    uint32_t durability, bint checksum):
        cdef ar_create_args a
        cdef ar_queue *m = NULL
        cdef ar_queue *d = NULL
        cdef bytes p = _os.fsencode(path)
        cdef int rc
        a.path = p
        a.capacity, a.message_size, a.max_clients, a.dlq_capacity = capacity, message_size, max_clients, dlq_capacity
        a.mode = mode
        a.cfg.max_deliveries = max_deliveries
        a.cfg.is_dlq = 0
        a.cfg.default_ttl_ns = S.check_duration(ttl, "ttl")
        a.cfg.ack_timeout_ns = S.check_duration(ack_timeout, "ack_timeout")
        a.cfg.durability = durability
        a.cfg.checksum = checksum
        with nogil:
            rc = ar_create_pair(&a, &m, &d)
        if rc != AR_OK:
            raise _error(rc, name if rc != AR_NOTFOUND else "directory of %r" % path, errno)
        main = Segment._wrap(m, path, name)
        dlq = Segment._wrap(d, path + ".dlq", name + ".dlq")
        main.attach_dlq(dlq)
        return main, dlq

    @staticmethod
    def open(str path, str name, trust_uids=()):
        cdef ar_queue *q = NULL
        cdef bytes p = _os.fsencode(path)
        cdef const char *cp = p
        cdef uint32_t trust[64]
        cdef size_t n = 0
        cdef int rc
        for uid in trust_uids:
            if n == 64:
                raise ValueError("at most 64 trust_uids")
            trust[n] = uid
            n += 1
        with nogil:
            rc = ar_open(cp, trust, n, &q)
        if rc != AR_OK:
            raise _error(rc, name, errno)
        return Segment._wrap(q, path, name)

    @staticmethod
    def unlink(str path, str name, trust_uids=()):
        cdef bytes p = _os.fsencode(path)
        cdef uint32_t trust[64]
        cdef size_t n = 0
        for uid in trust_uids:
            if n == 64:
                raise ValueError("at most 64 trust_uids")
            trust[n] = uid
            n += 1
        cdef int rc = ar_unlink(p, trust, n)
        if rc != AR_OK:
            raise _error(rc, name, errno)

    @staticmethod
    def valid_name(str name):
        if "\0" in name:
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
        if not self.closed:
            self.closed = True
            ar_close(self.q)   # our reference; clients keep the mapping alive
            self.q = NULL

    def attach_dlq(self, Segment dlq):
        self.check()
        dlq.check()
        cdef int rc = ar_attach_dlq(self.q, dlq.q)
        if rc != AR_OK:
            raise _error(rc, "%r is not the dead-letter queue of %r" % (dlq.name, self.name))
        self.dlq = dlq

    property config:
        def __get__(self):
            cdef ar_config c
            self.check()
            ar_get_config(self.q, &c)
            return {"max_deliveries": c.max_deliveries or None,
                    "ttl": c.default_ttl_ns / 1e9 if c.default_ttl_ns else None,
                    "ack_timeout": c.ack_timeout_ns / 1e9 if c.ack_timeout_ns else None,
                    "is_dead_letter_queue": bool(c.is_dlq),
                    "durability": S.DURABILITY[c.durability], "checksum": bool(c.checksum)}
    property is_dlq:
        def __get__(self):
            cdef ar_config c
            self.check()
            ar_get_config(self.q, &c)
            return bool(c.is_dlq)
    property capacity:
        def __get__(self): self.check(); return ar_capacity(self.q)
    property message_size:
        def __get__(self): self.check(); return ar_message_size(self.q)
    property max_clients:
        def __get__(self): self.check(); return ar_max_clients(self.q)
    property queue_id:
        def __get__(self): self.check(); return ar_queue_id(self.q)
    property created_ns:
        def __get__(self): self.check(); return ar_created_ns(self.q)
    property file_mode:
        def __get__(self): self.check(); return ar_file_mode(self.q)
    property is_shutdown:
        def __get__(self): self.check(); return bool(ar_is_shutdown(self.q))

    def shutdown(self):
        self.check()
        cdef int rc = ar_shutdown(self.q)
        if rc != AR_OK:
            raise _error(rc, "shutdown of queue %r" % (self.name,))

    def sync(self):
        self.check()
        cdef int rc
        with nogil:
            rc = ar_sync(self.q)
        if rc != AR_OK:
            raise _error(rc, "sync of queue %r" % (self.name,), errno)

    def stats(self):
        cdef ar_stats st
        cdef int rc
        self.check()
        rc = ar_stats_read(self.q, &st)
        if rc != AR_OK:     # a segment the SIGBUS guard found truncated
            raise _error(rc, "stats of queue %r" % (self.name,))
        return S.stats_dict((
            st.depth, st.in_flight, st.writing, st.published, st.acked, st.nacked, st.redelivered,
            st.discarded, st.dropped, st.rejected, st.dl_delivery_limit, st.dl_expired,
            st.dl_lease_expired, st.lease_expired, st.dlq_dropped, st.recovered, st.stale, st.purged,
            st.reclaimed_entries, st.producers, st.consumers, st.observers, st.capacity,
            st.message_size, st.max_clients, st.shutdown, st.durability, st.free_ring, st.ready_ring,
            st.requeue_ring, st.oldest_publish_ns, st.oldest_id, st.oldest_state, st.oldest_pid,
            st.syncs, st.synced_seq, st.pub_seq))

    def reclaim(self):
        """One reclaim pass (dead entries, half-done ring operations, expired
        leases, this queue and its DLQ); returns what it repaired, as a dict."""
        cdef ar_recovery r
        cdef int rc
        self.check()
        with nogil:
            rc = ar_reclaim(self.q, &r)
        if rc != AR_OK:
            raise _error(rc, "reclaim of queue %r" % (self.name,))
        return S.recovery_dict((r.entries, r.requeued, r.discarded, r.repushed, r.leases, r.rebuilt,
                                r.torn, r.busy))

    def last_open(self):
        cdef ar_recovery r
        self.check()
        ar_last_open(self.q, &r)
        return S.recovery_dict((r.entries, r.requeued, r.discarded, r.repushed, r.leases, r.rebuilt,
                                r.torn, r.busy))

    def entries(self):
        """Every non-free process-table entry, as dicts (see _status.ENTRY_FIELDS)."""
        cdef ar_entry_info ei
        cdef uint32_t i
        self.check()
        out = []
        for i in range(ar_max_clients(self.q)):
            ar_entry_info_get(self.q, i, &ei)
            if ei.state != 0:
                out.append(S.entry_dict((ei.index, ei.state, ei.role, ei.pid, ei.seq, ei.mine, ei.alive,
                                         ei.word, ei.start_time, ei.reg_ns, ei.take_mark, ei.push_mark)))
        return out

    def raw_header(self):
        cdef ar_header_raw h
        self.check()
        ar_inspect_header(self.q, &h)
        return {"magic": h.magic, "version": h.version, "header_size": h.header_size,
                "capacity": h.capacity, "message_size": h.message_size, "slot_size": h.slot_size,
                "max_clients": h.max_clients, "flags": h.flags, "mode": h.mode, "queue_id": h.queue_id,
                "peer_id": h.peer_id, "total_size": h.total_size, "shutdown": h.shutdown,
                "leases_seen": h.leases_seen, "durability": h.durability,
                "head": [h.head[0], h.head[1], h.head[2]], "tail": [h.tail[0], h.tail[1], h.tail[2]],
                "not_empty": h.not_empty, "not_full": h.not_full, "synced_seq": h.synced_seq,
                "pub_seq": h.pub_seq, "hint_lag": h.hint_lag}

    def raw_slots(self):
        """(word, lease, use, len, crc_ok, publish_ns, pub_seq) of every slot."""
        cdef ar_slot_raw r
        cdef uint32_t i
        self.check()
        out = []
        for i in range(ar_capacity(self.q)):
            ar_inspect_slot(self.q, i, &r)
            out.append((r.word, r.lease, r.use, r.len, r.crc_ok, r.publish_ns, r.pub_seq))
        return out

    def raw_cells(self, uint32_t ring):
        cdef uint64_t c
        cdef uint32_t i
        self.check()
        if ring > 2:
            raise ValueError("ring must be 0 (free), 1 (ready) or 2 (requeue)")
        out = []
        for i in range(ar_capacity(self.q)):
            ar_inspect_cell(self.q, ring, i, &c)
            out.append(c)
        return out

    def peek(self, Py_ssize_t n):
        """Up to n ready messages in delivery order, without taking them:
        (id, body, delivery_count, publish_ns, requeued, death) tuples (death:
        a dict on a dead-letter queue, else None)."""
        cdef ar_peek_item *items
        cdef size_t got = 0, i
        cdef int rc
        self.check()
        if n < 1:
            return []
        n = min(n, <Py_ssize_t>ar_capacity(self.q) * 2)
        items = <ar_peek_item *>PyMem_Malloc(n * sizeof(ar_peek_item))
        if items == NULL:
            raise MemoryError()
        try:
            rc = ar_peek(self.q, items, n, &got)
            if rc != AR_OK:
                raise _error(rc, "peek into queue %r" % (self.name,))
            out = []
            for i in range(got):
                body = PyBytes_FromStringAndSize(<const char *>items[i].data, items[i].len)
                if ar_peek_still(self.q, &items[i]):   # not taken while we copied
                    out.append((items[i].id, body, items[i].delivery_count, items[i].publish_ns,
                                bool(items[i].requeued),
                                _STATUS.death(items[i].dead_reason, items[i].dead_original_id,
                                              items[i].dead_queue_id, items[i].dead_delivery_count,
                                              items[i].dead_publish_ns, items[i].dead_ns)))
            return out
        finally:
            PyMem_Free(items)


cdef class _Client:
    cdef ar_client *c
    cdef readonly Segment segment
    cdef readonly str queue_name
    cdef uint64_t queue_id
    cdef uint32_t message_size
    cdef bint sync            # durability "sync": calls drop the GIL (the confirm waits for the disk)
    cdef object __weakref__

    def __dealloc__(self):
        if self.c != NULL:
            ar_client_free(self.c)   # closes (unsettled deliveries requeued) if not closed
            self.c = NULL

    cdef int _open(self, Segment segment, uint32_t role, uint32_t prefetch, uint64_t lease_ns) except -1:
        cdef ar_config cfg
        segment.check()
        cdef int rc = ar_client_new(segment.q, role, prefetch, lease_ns, &self.c)
        if rc != AR_OK:
            raise _error(rc, segment.name)
        self.segment = segment
        self.queue_name = segment.name
        self.queue_id = ar_queue_id(segment.q)
        self.message_size = ar_message_size(segment.q)
        ar_get_config(segment.q, &cfg)
        self.sync = cfg.durability == AR_DUR_SYNC
        return 0

    property closed:
        def __get__(self): return bool(ar_client_closed(self.c))

    def close(self):
        """Release the process-table entry; a consumer's unsettled deliveries
        are requeued.  With calls in progress on other threads (or an open
        reservation), the entry goes when the last of them returns."""
        ar_client_close(self.c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __reduce__(self):
        S.no_pickle(self)

    cdef int blocked(self) except -1:
        PyErr_CheckSignals()
        return 0


cdef carray.array _U64_ARRAY = _array.array("Q")


cdef carray.array _id_array(const uint64_t *ids, size_t n):
    """n message ids as one array('Q'): one object and one copy."""
    cdef carray.array a = carray.clone(_U64_ARRAY, <Py_ssize_t>n, False)
    if n:
        memcpy(a.data.as_voidptr, ids, n * sizeof(uint64_t))
    return a


cdef class Producer(_Client):
    def __init__(self, Segment segment):
        self._open(segment, AR_ROLE_PRODUCER, 0, 0)

    def put_obj(self, obj, timeout=None, ttl=None):
        """Pickle ``obj`` (protocol 5; out-of-band buffers such as numpy arrays
        go straight into the slot) and put it; read it back with ``m.obj``.
        Returns the message id once stored, as put()."""
        return S.put_obj(self, obj, timeout, ttl)

    def put(self, data, timeout=None, ttl=None):
        """Store one message; returns its id once consumers can get it (the
        publisher confirm; under durability="sync", once it is on disk)."""
        cdef Py_buffer view
        cdef const char *ptr
        cdef Py_ssize_t n
        cdef uint64_t mid = 0
        cdef uint64_t wait = _wait(timeout), deadline, ttl_ns = _ttl(ttl)
        cdef int rc
        cdef bint release = False
        if PyBytes_CheckExact(data):
            ptr = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            if PyUnicode_Check(data) or data is None or isinstance(data, int):
                raise TypeError("put() takes bytes-like data, not %s" % type(data).__name__
                                + (" (encode it first)" if PyUnicode_Check(data) else ""))
            PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS)
            ptr = <const char *>view.buf
            n = view.len
            release = True
        try:
            if <size_t>n > self.message_size:
                raise E.MessageTooLarge("message of %d bytes exceeds message_size %d of queue %r"
                                        % (n, self.message_size, self.queue_name))
            if n >= NOGIL_COPY_BYTES or self.sync:
                with nogil:
                    rc = ar_put(self.c, ptr, n, 0, ttl_ns, &mid)
            else:
                rc = ar_put(self.c, ptr, n, 0, ttl_ns, &mid)
            if rc == AR_FULL and wait != 0:
                deadline = _until(wait)
                while True:
                    with nogil:
                        rc = ar_put(self.c, ptr, n, deadline, ttl_ns, &mid)
                    if rc != AR_AGAIN:
                        break
                    self.blocked()
        finally:
            if release:
                PyBuffer_Release(&view)
        if rc != AR_OK:
            raise _error(rc, "put to queue %r" % (self.queue_name,), errno)
        return mid

    def put_many(self, messages, timeout=None, ttl=None):
        """Store several messages in order, in one C call (one sync under
        durability="sync"); returns their ids.  Every item is checked before
        the first is written.  On Full, the exception's ``ids`` lists the
        messages stored before it."""
        return self._put_vec(messages, timeout, ttl, False)

    def put_batch(self, messages, timeout=None, ttl=None):
        """put_many that returns the ids as one ``array('Q')``: no Python int
        per message (``Full.ids`` is still a list)."""
        return self._put_vec(messages, timeout, ttl, True)

    cdef object _put_vec(self, messages, timeout, ttl, bint as_array):
        cdef Py_ssize_t n, i, nviews = 0
        cdef str what = "put_batch" if as_array else "put_many"   # for the errors
        cdef ar_iovec *vec = NULL
        cdef uint64_t *ids = NULL
        cdef Py_buffer *views = NULL
        cdef size_t done = 0
        cdef uint64_t wait = _wait(timeout), deadline, ttl_ns = _ttl(ttl)
        cdef int rc
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        n = len(items)
        if n == 0:
            if ar_client_closed(self.c):
                raise _error(AR_CLIENT_CLOSED, "%s to queue %r" % (what, self.queue_name,))
            return _id_array(NULL, 0) if as_array else []
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
                elif PyUnicode_Check(m) or m is None or isinstance(m, int):
                    raise TypeError("%s() takes bytes-like items, not %s (item %d)" % (what, type(m).__name__, i))
                else:
                    PyObject_GetBuffer(m, &views[nviews], PyBUF_C_CONTIGUOUS)
                    vec[i].data = views[nviews].buf
                    vec[i].len = views[nviews].len
                    nviews += 1
                if vec[i].len > self.message_size:
                    raise E.MessageTooLarge("item %d: a message of %d bytes exceeds message_size %d of queue %r"
                                            % (i, vec[i].len, self.message_size, self.queue_name))
            if self.sync:
                with nogil:
                    rc = ar_put_many(self.c, vec, n, 0, ttl_ns, ids, &done)
            else:
                rc = ar_put_many(self.c, vec, n, 0, ttl_ns, ids, &done)
            if rc == AR_FULL and wait != 0:
                deadline = _until(wait)
                while True:
                    with nogil:
                        rc = ar_put_many(self.c, vec, n, deadline, ttl_ns, ids, &done)
                    if rc != AR_AGAIN:
                        break
                    self.blocked()
            stored = _id_array(ids, done) if as_array else [ids[i] for i in range(done)]
            if rc == AR_FULL:
                raise E.Full("%s to queue %r: %d of %d stored before the timeout"
                             % (what, self.queue_name, done, n), ids=stored)
            if rc != AR_OK:
                raise _error(rc, "%s to queue %r" % (what, self.queue_name,), errno)
            return stored
        finally:
            for i in range(nviews):
                PyBuffer_Release(&views[i])
            PyMem_Free(vec)
            PyMem_Free(ids)
            PyMem_Free(views)

    def wait_acked(self, message_id, timeout=None):
        """Wait until message ``message_id`` is settled and say how: a Receipt
        (id, outcome, reason).  TimeoutError at the timeout.  Waits on the
        queue's futex, not by polling."""
        cdef uint64_t wait = _wait(timeout), deadline, mid
        cdef uint32_t outcome = 0
        cdef int rc
        if isinstance(message_id, bool) or not isinstance(message_id, int):
            raise TypeError("message_id must be an int, not %s" % type(message_id).__name__)
        if message_id < 0 or message_id >= 1 << 64:
            raise ValueError("no message %d was ever published to queue %r" % (message_id, self.queue_name))
        mid = message_id
        rc = ar_wait_settled(self.c, mid, 0, &outcome)
        if rc == AR_EMPTY and wait != 0:
            deadline = _until(wait)
            while True:
                with nogil:
                    rc = ar_wait_settled(self.c, mid, deadline, &outcome)
                if rc != AR_AGAIN:
                    break
                self.blocked()
        if rc == AR_EMPTY:
            raise TimeoutError("message %d was not settled within %r s" % (mid, timeout))
        if rc == AR_INVAL:
            raise ValueError("no message %d was ever published to queue %r" % (mid, self.queue_name))
        if rc != AR_OK:
            raise _error(rc, "wait_acked(%d)" % mid)
        return _STATUS.receipt(mid, outcome)

    def reserve(self, Py_ssize_t size=-1, timeout=None, ttl=None):
        """Zero-copy send: claim a slot and write the message in place.

            with p.reserve(n) as buf:   # writable memoryview of n bytes
                buf[:] = ...
            # committed here; aborted if the block raised

        ``size`` defaults to message_size.  An open reservation counts as a
        call in progress: close() waits for it."""
        cdef uint64_t wait = _wait(timeout), deadline
        cdef uint64_t ttl_ns = _ttl(ttl)
        cdef Reservation r = Reservation.__new__(Reservation)
        cdef int rc
        if size < 0:
            size = self.message_size
        if <size_t>size > self.message_size:
            raise E.MessageTooLarge("reserve(%d) exceeds message_size %d of queue %r"
                                    % (size, self.message_size, self.queue_name))
        rc = ar_reserve(self.c, 0, &r.r)
        if rc == AR_FULL and wait != 0:
            deadline = _until(wait)
            while True:
                with nogil:
                    rc = ar_reserve(self.c, deadline, &r.r)
                if rc != AR_AGAIN:
                    break
                self.blocked()
        if rc != AR_OK:
            raise _error(rc, "reserve in queue %r" % (self.queue_name,))
        r.producer, r.size, r.ttl_ns = self, size, ttl_ns
        return r


cdef class Reservation:
    """A claimed slot being written in place (see Producer.reserve)."""
    cdef ar_reservation r
    cdef Producer producer
    cdef Py_ssize_t size
    cdef uint64_t ttl_ns
    cdef object _view

    def __init__(self):
        raise TypeError("reservations come from Producer.reserve()")

    def __dealloc__(self):
        # Dropped without commit or abort: abort (the C side refuses a
        # reservation of the parent process after fork).
        if self.producer is not None and not self.r.done:
            ar_abort(&self.r)

    property id:
        def __get__(self): return self.r.id
    property done:
        def __get__(self): return bool(self.r.done)

    def __len__(self):
        return self.size

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self.r.done:
            raise E.AlreadySettled("reservation %d was committed or aborted" % self.r.id)
        PyBuffer_FillInfo(buffer, self, <void *>self.r.buf, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def view(self):
        """memoryview(r), writable: spelled so that code runs on both backends."""
        return memoryview(self)

    def __reduce__(self):
        S.no_pickle(self)

    cdef int _finish(self, bint commit, Py_ssize_t length) except -1:
        cdef int rc
        cdef uint64_t mid = 0
        if self.r.done:
            raise E.AlreadySettled("reservation %d was already committed or aborted" % self.r.id)
        if commit and not 0 <= length <= self.size:
            raise ValueError("commit length must be from 0 to %d, not %d" % (self.size, length))
        if self._view is not None:
            try:
                self._view.release()   # the in-place view dies with the reservation
            except BufferError:
                pass                   # the caller still holds slices; they point at a slot no longer ours
            self._view = None
        if commit:
            if self.producer.sync:
                with nogil:
                    rc = ar_commit(&self.r, length, self.ttl_ns, &mid)
            else:
                rc = ar_commit(&self.r, length, self.ttl_ns, &mid)
        else:
            rc = ar_abort(&self.r)
        if rc == AR_CLIENT_CLOSED:
            raise E.QueueClosed("the producer of reservation %d is closed (the slot was discarded)" % self.r.id)
        if rc != AR_OK:
            raise _error(rc, "%s reservation %d" % ("commit" if commit else "abort", self.r.id))
        return 0

    def commit(self, length=None):
        """Publish the first ``length`` bytes (default: the reserved size); returns the id."""
        self._finish(True, self.size if length is None else length)
        return self.r.id

    def abort(self):
        """Give the slot back unpublished."""
        self._finish(False, 0)

    def __enter__(self):
        self._view = memoryview(self)
        return self._view

    def __exit__(self, exc_type, exc, tb):
        if not self.r.done:
            if exc_type is None:
                self.commit()
            else:
                self.abort()
        return False


cdef class Consumer(_Client):
    def __init__(self, Segment segment, prefetch=None, ack_timeout=None):
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1):
            raise ValueError("prefetch must be None or an int >= 1, not %r" % (prefetch,))
        self._open(segment, AR_ROLE_CONSUMER, prefetch or 0, S.check_duration(ack_timeout, "ack_timeout"))

    property prefetch:
        def __get__(self): return ar_client_prefetch(self.c)
    property outstanding:
        def __get__(self): return ar_client_outstanding(self.c)

    cdef int _get(self, ar_delivery *d, uint64_t wait, uint64_t *deadline) except -1:
        """One get; *deadline is 0 until the call first has to wait, then the
        deadline taken then (kept by get()'s retries: one deadline a call)."""
        cdef int rc
        if self.sync:
            with nogil:
                rc = ar_get(self.c, d, 0)
        else:
            rc = ar_get(self.c, d, 0)
        if rc == AR_EMPTY and wait != 0:
            if deadline[0] == 0:
                deadline[0] = _until(wait)
            while True:
                with nogil:
                    rc = ar_get(self.c, d, deadline[0])
                if rc != AR_AGAIN:
                    break
                self.blocked()
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (self.queue_name,))
        return 0

    def get(self, timeout=None, bint copy=True):
        """Receive one message (it stays in the queue until settled).  Waits
        up to ``timeout`` seconds (None: no limit), then raises ackring.Empty.
        With copy=False read the body through ``m.view()`` before settling."""
        cdef Message m = Message.__new__(Message)
        cdef uint64_t wait = _wait(timeout), deadline = 0
        while True:
            self._get(&m.d, wait, &deadline)
            if not copy:
                break
            m._body = _copy_out(m.d.data, m.d.len)
            # its lease ran out before the copy was made: not ours, look again
            if ar_intact(&m.d, 1) == AR_OK:
                break
        m.consumer = self
        return m

    def get_many(self, Py_ssize_t n, timeout=None, bint copy=True):
        """Up to n messages in one C call: waits (up to ``timeout``) for the
        first, then takes whatever else is ready."""
        cdef ar_delivery *ds
        cdef size_t got = 0, i
        cdef uint64_t wait = _wait(timeout), deadline = 0   # taken once, at the first wait
        cdef int rc
        cdef Message m
        if n < 1:
            raise ValueError("get_many() needs n >= 1")
        ds = <ar_delivery *>PyMem_Malloc(n * sizeof(ar_delivery))
        if ds == NULL:
            raise MemoryError()
        try:
            while True:
                rc = ar_get_many(self.c, ds, n, 0, &got)
                if rc == AR_EMPTY and wait != 0:
                    if deadline == 0:
                        deadline = _until(wait)
                    while True:
                        with nogil:
                            rc = ar_get_many(self.c, ds, n, deadline, &got)
                        if rc != AR_AGAIN:
                            break
                        self.blocked()
                if rc != AR_OK:
                    raise _error(rc, "get from queue %r" % (self.queue_name,))
                out = []
                for i in range(got):
                    m = Message.__new__(Message)
                    m.d = ds[i]
                    if copy:
                        m._body = _copy_out(ds[i].data, ds[i].len)
                        # its lease ran out before the copy was made: dropped
                        if ar_intact(&m.d, 1) != AR_OK:
                            continue
                    m.consumer = self
                    out.append(m)
                if out:
                    return out
        finally:
            PyMem_Free(ds)

    def get_batch(self, Py_ssize_t n, timeout=None):
        """Up to n messages as one Batch object (no Python object per
        message): ``len(b)``, ``b[i]`` (bytes), ``b.view(i)``, ``b.ids``,
        ``b.join()``, and one ``b.ack()`` for the whole batch."""
        cdef Batch b = Batch.__new__(Batch)
        cdef uint64_t wait = _wait(timeout), deadline
        cdef int rc
        cdef size_t got = 0
        if n < 1:
            raise ValueError("get_batch() needs n >= 1")
        b.ds = <ar_delivery *>PyMem_Malloc(n * sizeof(ar_delivery))
        if b.ds == NULL:
            raise MemoryError()
        b.consumer = self
        rc = ar_get_many(self.c, b.ds, n, 0, &got)
        if rc == AR_EMPTY and wait != 0:
            deadline = _until(wait)
            while True:
                with nogil:
                    rc = ar_get_many(self.c, b.ds, n, deadline, &got)
                if rc != AR_AGAIN:
                    break
                self.blocked()
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (self.queue_name,))
        b.n = got
        return b

    cdef int _settle_ptrs(self, ar_delivery **ptrs, Py_ssize_t n, int how, ids_of) except -1:
        cdef int *rcs = <int *>PyMem_Malloc((n or 1) * sizeof(int))
        cdef size_t bad = 0
        cdef int rc
        cdef Py_ssize_t i
        if rcs == NULL:
            raise MemoryError()
        try:
            rc = ar_settle_many(self.c, ptrs, n, how, rcs, &bad)
            if rc == AR_SETTLED:
                raise E.AlreadySettled("message %d was already settled, or given twice" % ptrs[bad].id)
            if rc == AR_WRONG_CLIENT:
                raise ValueError("message %d was delivered to another consumer" % ptrs[bad].id)
            if rc == AR_FORKED:
                raise E.StaleDelivery("message %d was delivered to the parent process before fork" % ptrs[bad].id)
            if rc != AR_OK:
                raise _error(rc, "settle %d messages" % n)
            stale = [ptrs[i].id for i in range(n) if rcs[i] != AR_OK]
            if stale:
                exc = E.StaleDelivery("%d of %d deliveries were no longer current: %r" % (len(stale), n, stale))
                exc.ids = stale
                raise exc
        finally:
            PyMem_Free(rcs)
        return 0

    def ack_many(self, messages):
        """Ack a batch in one C call (RabbitMQ's multiple=True).  Every item
        must be an unsettled message of this consumer, else nothing is acked.
        Deliveries found stale are reported by StaleDelivery (``ids``) after
        the rest are acked."""
        cdef Py_ssize_t n, i
        cdef ar_delivery **ptrs
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        n = len(items)
        for i in range(n):
            if not isinstance(items[i], Message):
                raise TypeError("ack_many() takes Message objects, not %s" % type(items[i]).__name__)
        ptrs = <ar_delivery **>PyMem_Malloc((n or 1) * sizeof(ar_delivery *))
        if ptrs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                ptrs[i] = &(<Message>items[i]).d
            self._settle_ptrs(ptrs, n, AR_ACK, None)
        finally:
            PyMem_Free(ptrs)

    def purge(self):
        """Drop every message that is ready now (held ones stay); returns how many."""
        cdef uint64_t n = 0
        cdef int rc
        with nogil:
            rc = ar_purge(self.c, &n)
        if rc != AR_OK:
            raise _error(rc, "purge of queue %r" % (self.queue_name,))
        return n

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.get()
        except E.QueueClosed:
            raise StopIteration


@cython.freelist(64)   # one per get on the per-message path: reuse the objects' memory
cdef class Message:
    """One delivery.  Settle it exactly once: ack(), nack(requeue=...) or reject()."""
    cdef ar_delivery d
    cdef Consumer consumer
    cdef object _body

    def __init__(self):
        raise TypeError("messages come from Consumer.get()")

    property id:
        """Unique over the queue's life, the same on every redelivery."""
        def __get__(self): return self.d.id
    property delivery_count:
        def __get__(self): return self.d.delivery_count
    property redelivered:
        def __get__(self): return self.d.delivery_count > 1
    property publish_time_ns:
        def __get__(self): return self.d.publish_ns
    property settled:
        def __get__(self): return bool(self.d.flags & AR_D_SETTLED)
    property key:
        """(queue_id, id): unique across re-creations of a queue of the same name."""
        def __get__(self): return (self.consumer.queue_id, self.d.id)
    property death:
        """On a dead-letter queue, why and how the message died (a dict); else None."""
        def __get__(self):
            return _STATUS.death(self.d.dead_reason, self.d.dead_original_id, self.d.dead_queue_id,
                                 self.d.dead_delivery_count, self.d.dead_publish_ns, self.d.dead_ns)
    property body:
        def __get__(self):
            if self._body is None:
                if self.d.flags & AR_D_SETTLED:
                    raise E.AlreadySettled("message %d was settled before its body was read; "
                                           "use get(copy=True)" % self.d.id)
                body = _copy_out(self.d.data, self.d.len)
                if ar_intact(&self.d, 0) != AR_OK:
                    raise S.taken_back(self.d.id)
                self._body = body
            return self._body

    property obj:
        """The object a ``put_obj`` stored (unpickled anew on each access; it
        never points into the slot, so acking after is safe).  ValueError if
        the message was not written by put_obj / ackring.mp."""
        def __get__(self): return S.load_obj(self)

    def __len__(self):
        return self.d.len

    def __repr__(self):
        return "<ackring.Message id=%d len=%d delivery_count=%d%s>" % (
            self.d.id, self.d.len, self.d.delivery_count, " settled" if self.d.flags & AR_D_SETTLED else "")

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self.d.flags & AR_D_SETTLED:
            raise E.AlreadySettled("message %d is settled; its slot may hold another message" % self.d.id)
        if flags & PyBUF_WRITABLE:
            raise BufferError("a message's payload is read-only")
        PyBuffer_FillInfo(buffer, self, <void *>self.d.data, self.d.len, 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def view(self):
        """memoryview(m): the read-only zero-copy view (valid until settled)."""
        return memoryview(self)

    def __reduce__(self):
        S.no_pickle(self)

    cdef int _settle(self, int how) except -1:
        cdef int rc = ar_settle(&self.d, how)
        if rc == AR_OK:
            return 0
        if rc == AR_SETTLED:
            raise E.AlreadySettled("message %d was already settled" % self.d.id)
        if rc == AR_CLIENT_CLOSED:
            raise E.QueueClosed("the consumer of message %d is closed (its deliveries were requeued)" % self.d.id)
        if rc == AR_FORKED:
            raise E.StaleDelivery("message %d was delivered to the parent process before fork" % self.d.id)
        raise _error(rc, "settle message %d" % self.d.id)

    def ack(self):
        """The message is done: it leaves the queue."""
        self._settle(AR_ACK)

    def nack(self, bint requeue=True):
        """Give it back (requeue=True: delivered again, ahead of new messages),
        or dead-letter it with reason "rejected" (requeue=False)."""
        self._settle(AR_REQUEUE if requeue else AR_REJECT)

    def reject(self):
        """Send the message to the dead-letter queue (reason "rejected")."""
        self._settle(AR_REJECT)

    def extend(self, seconds):
        """Set this delivery's ack lease to ``seconds`` from now (like SQS
        ChangeMessageVisibility).  On a queue without ack_timeout this starts
        a lease.  StaleDelivery if it was taken back."""
        cdef uint64_t ns = S.check_duration(seconds, "seconds")
        if ns == 0:
            raise ValueError("extend() needs a number of seconds > 0")
        cdef int rc = ar_extend(&self.d, ns)
        if rc == AR_STALE:
            raise E.StaleDelivery("message %d: its lease ran out and it was taken back" % self.d.id)
        if rc == AR_SETTLED:
            raise E.AlreadySettled("message %d was already settled" % self.d.id)
        if rc == AR_CLIENT_CLOSED:
            raise E.QueueClosed("the consumer of message %d is closed" % self.d.id)
        if rc != AR_OK:
            raise _error(rc, "extend message %d" % self.d.id)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # ack on normal exit; nack(requeue=True) if the block raised, and the
        # exception propagates
        if not self.d.flags & AR_D_SETTLED:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False


cdef class Batch:
    """Messages of one get_batch(): settled together, no object per message."""
    cdef ar_delivery *ds
    cdef size_t n
    cdef Consumer consumer

    def __init__(self):
        raise TypeError("batches come from Consumer.get_batch()")

    def __dealloc__(self):
        PyMem_Free(self.ds)

    def __len__(self):
        return self.n

    cdef inline Py_ssize_t _index(self, Py_ssize_t i) except -1:
        if i < 0:
            i += self.n
        if not 0 <= i < <Py_ssize_t>self.n:
            raise IndexError("batch index out of range")
        if self.ds[i].flags & AR_D_SETTLED:
            raise E.AlreadySettled("the batch was settled; its slots may hold other messages")
        return i

    cdef int _intact(self, size_t i) except -1:
        if ar_intact(&self.ds[i], 0) != AR_OK:
            raise S.taken_back(self.ds[i].id, True)
        return 0

    def __getitem__(self, Py_ssize_t i):
        i = self._index(i)
        body = _copy_out(self.ds[i].data, self.ds[i].len)
        self._intact(i)
        return body

    def view(self, Py_ssize_t i):
        """A read-only zero-copy view of message i (valid until settled)."""
        i = self._index(i)
        return PyMemoryView_FromMemory(<char *>self.ds[i].data, self.ds[i].len, PyBUF_READ)

    def __iter__(self):
        cdef size_t i
        for i in range(self.n):
            yield self[i]

    property ids:
        def __get__(self):
            cdef size_t i
            return [self.ds[i].id for i in range(self.n)]
    property delivery_counts:
        def __get__(self):
            cdef size_t i
            return [self.ds[i].delivery_count for i in range(self.n)]
    property nbytes:
        def __get__(self):
            cdef size_t i, t = 0
            for i in range(self.n):
                t += self.ds[i].len
            return t
    property settled:
        def __get__(self):
            return self.n > 0 and bool(self.ds[0].flags & AR_D_SETTLED)

    def join(self, bytes sep=b""):
        """Every body, concatenated (one copy for the whole batch)."""
        cdef size_t i, total = 0, off = 0, k = len(sep)
        cdef bytes out
        cdef char *dst
        for i in range(self.n):
            self._index(i)
            total += self.ds[i].len
        if self.n:
            total += k * (self.n - 1)
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = PyBytes_AS_STRING(out)
        for i in range(self.n):
            if i and k:
                memcpy(dst + off, <const char *>sep, k)
                off += k
            memcpy(dst + off, self.ds[i].data, self.ds[i].len)
            off += self.ds[i].len
        for i in range(self.n):
            self._intact(i)
        return out

    cdef int _settle(self, int how) except -1:
        cdef ar_delivery **ptrs = <ar_delivery **>PyMem_Malloc((self.n or 1) * sizeof(ar_delivery *))
        cdef size_t i
        if ptrs == NULL:
            raise MemoryError()
        try:
            for i in range(self.n):
                ptrs[i] = &self.ds[i]
            self.consumer._settle_ptrs(ptrs, self.n, how, None)
        finally:
            PyMem_Free(ptrs)
        return 0

    def ack(self):
        """Ack every message of the batch in one C call."""
        self._settle(AR_ACK)

    def nack(self, bint requeue=True):
        self._settle(AR_REQUEUE if requeue else AR_REJECT)

    def reject(self):
        self._settle(AR_REJECT)

    def __reduce__(self):
        S.no_pickle(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.n and not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False


def set_test_hook(point):
    """Test-only: SIGSTOP this process at a named point inside a critical
    window (ar_set_test_hook in ext/ackring.h).  None or "" turns it off."""
    cdef bytes b = (point or "").encode("ascii")
    if ar_set_test_hook(b) != AR_OK:
        raise ValueError("unknown test hook point %r" % (point,))


def set_sync_snapshots(directory):
    """Test-only: before each fdatasync of a file queue, copy the file to
    ``directory/snap-<n>`` (None turns it off)."""
    cdef bytes b = _os.fsencode(directory or "")
    if ar_set_sync_snapshots(b) != AR_OK:
        raise ValueError("bad snapshot directory %r" % (directory,))


def test_hook_paused(release=False):
    """Test-only: is a thread parked at a "pause:<point>" test hook?
    release=True lets it go on (ar_test_hook_paused)."""
    return bool(ar_test_hook_paused(1 if release else 0))


def futex_counts():
    """Test-only: (waits, wakes), the FUTEX_WAIT and FUTEX_WAKE system calls
    this process has made in ackring's waits and wakes (ar_futex_counts)."""
    cdef uint64_t waits = 0, wakes = 0
    ar_futex_counts(&waits, &wakes)
    return int(waits), int(wakes)


def ring_probes(enable=None):
    """Test-only: the ring cells this process's gets have looked at, counted
    while enabled (ar_ring_probes).  enable=True/False turns counting on/off."""
    return int(ar_ring_probes(-1 if enable is None else (1 if enable else 0)))
