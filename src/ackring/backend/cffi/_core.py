"""cffi backend: a thin binding of the C core in ext/, in plain Python (the PyPy path).

Same classes, methods and exceptions as ackring/backend/cython/_core.pyx; like
it, it only marshals arguments and maps status codes (ext/client.c does the
rest; ackring._status says what codes and records mean).

Differences that come with the binding, not with the behaviour:

* cffi drops the GIL around every C call.  The C core counts calls in
  progress and serialises what threads sharing a client do, so this is safe.
* Buffer protocol.  A Python class can export a buffer only through
  ``__buffer__`` (PEP 688: CPython >= 3.12, and PyPy); on CPython <= 3.11
  ``memoryview(m)`` raises TypeError, and ``m.view()`` / ``r.view()`` give the
  same views on every version.
"""
import os as _os
import sys as _sys
from array import array as _array

from ackring import _errors as E
from ackring import _status as S

from ._ackring_cffi import ffi, lib

_STATUS = S.Status({name: getattr(lib, name) for name in S._NAMES})
_error = _STATUS.error

AR_OK = lib.AR_OK
AR_EMPTY = lib.AR_EMPTY
AR_FULL = lib.AR_FULL
AR_AGAIN = lib.AR_AGAIN
AR_INVAL = lib.AR_INVAL
AR_SETTLED = lib.AR_SETTLED
AR_FORKED = lib.AR_FORKED
AR_STALE = lib.AR_STALE
AR_CLIENT_CLOSED = lib.AR_CLIENT_CLOSED
AR_WRONG_CLIENT = lib.AR_WRONG_CLIENT
AR_NOTFOUND = lib.AR_NOTFOUND
AR_NO_DEADLINE = lib.AR_NO_DEADLINE
AR_D_SETTLED = lib.AR_D_SETTLED
AR_ACK, AR_REQUEUE, AR_REJECT = lib.AR_ACK, lib.AR_REQUEUE, lib.AR_REJECT
NOGIL_COPY_BYTES = 65536

# Pre-resolved C functions and types: attribute lookups on `lib` and type
# parsing in ffi.new() are a large part of a call's cost here.
_now_ns = lib.ar_now_ns
_ar_put = lib.ar_put
_ar_get = lib.ar_get
_ar_settle = lib.ar_settle
_ar_intact = lib.ar_intact
_new = ffi.new
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)
_buffer = ffi.buffer
_from_buffer = ffi.from_buffer
_T_DELIVERY = ffi.typeof("ar_delivery *")
_T_DELIVERIES = ffi.typeof("ar_delivery[]")
_T_DPTRS = ffi.typeof("ar_delivery *[]")
_T_U64 = ffi.typeof("uint64_t *")
_T_U64S = ffi.typeof("uint64_t[]")
_T_U32 = ffi.typeof("uint32_t *")
_T_SIZE = ffi.typeof("size_t *")
_T_IOVECS = ffi.typeof("ar_iovec[]")
_T_INTS = ffi.typeof("int[]")
HAS_BUFFER_PROTOCOL = _sys.version_info >= (3, 12) or _sys.implementation.name == "pypy"


def _wait(timeout):
    """A timeout checked and made a wait, without reading the clock (see the
    Cython backend): AR_NO_DEADLINE, 0 (do not wait) or nanoseconds + 1."""
    if timeout is None:
        return AR_NO_DEADLINE
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise S.bad_timeout(timeout)
    if not timeout >= 0:
        raise S.bad_timeout(timeout)
    if timeout == 0:
        return 0
    if timeout > 1e9:
        return AR_NO_DEADLINE
    return int(timeout * 1e9) + 1


def _until(wait):
    """The deadline of a _wait() that starts now (read once a call must wait)."""
    if wait == 0 or wait == AR_NO_DEADLINE:
        return wait
    return _now_ns() + wait


def _ttl(ttl):
    return 0 if ttl is None else S.check_duration(ttl, "ttl")


def _trust(trust_uids):
    uids = [int(u) for u in trust_uids]
    if len(uids) > 64:
        raise ValueError("at most 64 trust_uids")
    return ffi.new("uint32_t[]", uids or [0]), len(uids)


def _readonly(attr):
    return property(lambda self: getattr(self, attr))


def _kept(ptr, owner):
    """ptr (into the mapping) as a cdata that keeps `owner` alive, so a
    memoryview made from it keeps its message/reservation (hence the mapping)
    alive, as a buffer exported by a Cython object does."""
    return ffi.gc(ptr, owner._hold)


def _errno():
    return ffi.errno


class Segment:
    """One mapping of a queue's file in this process (see the Cython backend)."""

    __slots__ = ("_q", "_path", "_name", "_closed", "_dlq", "__weakref__")

    path = _readonly("_path")
    name = _readonly("_name")
    closed = _readonly("_closed")
    dlq = _readonly("_dlq")

    def __init__(self, *a, **kw):
        raise TypeError("segments come from Segment.create_pair() and Segment.open()")

    @classmethod
    def _wrap(cls, q, path, name):
        s = object.__new__(cls)
        s._q, s._path, s._name, s._closed, s._dlq = q, path, name, False, None
        return s

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @staticmethod
    def create_pair(path, name, capacity, message_size, max_clients, dlq_capacity, mode, max_deliveries,
                    ttl, ack_timeout, durability, checksum):
        a = _new("ar_create_args *")
        p = _os.fsencode(path)
        pp = ffi.new("char[]", p)
        a.path = pp
        a.capacity, a.message_size, a.max_clients, a.dlq_capacity = capacity, message_size, max_clients, dlq_capacity
        a.mode = mode
        a.cfg.max_deliveries = max_deliveries
        a.cfg.default_ttl_ns = S.check_duration(ttl, "ttl")
        a.cfg.ack_timeout_ns = S.check_duration(ack_timeout, "ack_timeout")
        a.cfg.durability = durability
        a.cfg.checksum = bool(checksum)
        m = _new("ar_queue **")
        d = _new("ar_queue **")
        rc = lib.ar_create_pair(a, m, d)
        if rc != AR_OK:
            raise _error(rc, name if rc != AR_NOTFOUND else "directory of %r" % path, _errno())
        main = Segment._wrap(m[0], path, name)
        dlq = Segment._wrap(d[0], path + ".dlq", name + ".dlq")
        main.attach_dlq(dlq)
        return main, dlq

    @staticmethod
    def open(path, name, trust_uids=()):
        t, n = _trust(trust_uids)
        out = _new("ar_queue **")
        rc = lib.ar_open(_os.fsencode(path), t, n, out)
        if rc != AR_OK:
            raise _error(rc, name, _errno())
        return Segment._wrap(out[0], path, name)

    @staticmethod
    def unlink(path, name, trust_uids=()):
        t, n = _trust(trust_uids)
        rc = lib.ar_unlink(_os.fsencode(path), t, n)
        if rc != AR_OK:
            raise _error(rc, name, _errno())

    @staticmethod
    def valid_name(name):
        if "\0" in name:
            return False
        try:
            n = name.encode("ascii")
        except UnicodeEncodeError:
            return False
        return lib.ar_check_name(n) == AR_OK

    def _check(self):
        if self._closed:
            raise E.QueueClosed("queue %r is closed" % (self._name,))
        return self._q

    def close(self):
        if not self._closed:
            self._closed = True
            q, self._q = self._q, None
            lib.ar_close(q)

    def attach_dlq(self, dlq):
        q = self._check()
        rc = lib.ar_attach_dlq(q, dlq._check())
        if rc != AR_OK:
            raise _error(rc, "%r is not the dead-letter queue of %r" % (dlq._name, self._name))
        self._dlq = dlq

    def _config(self):
        c = _new("ar_config *")
        lib.ar_get_config(self._check(), c)
        return c

    @property
    def config(self):
        c = self._config()
        return {"max_deliveries": c.max_deliveries or None,
                "ttl": c.default_ttl_ns / 1e9 if c.default_ttl_ns else None,
                "ack_timeout": c.ack_timeout_ns / 1e9 if c.ack_timeout_ns else None,
                "is_dead_letter_queue": bool(c.is_dlq),
                "durability": S.DURABILITY[c.durability], "checksum": bool(c.checksum)}

    is_dlq = property(lambda self: bool(self._config().is_dlq))
    capacity = property(lambda self: lib.ar_capacity(self._check()))
    message_size = property(lambda self: lib.ar_message_size(self._check()))
    max_clients = property(lambda self: lib.ar_max_clients(self._check()))
    queue_id = property(lambda self: lib.ar_queue_id(self._check()))
    created_ns = property(lambda self: lib.ar_created_ns(self._check()))
    file_mode = property(lambda self: lib.ar_file_mode(self._check()))
    is_shutdown = property(lambda self: bool(lib.ar_is_shutdown(self._check())))

    def shutdown(self):
        rc = lib.ar_shutdown(self._check())
        if rc != AR_OK:
            raise _error(rc, "shutdown of queue %r" % (self._name,))

    def sync(self):
        rc = lib.ar_sync(self._check())
        if rc != AR_OK:
            raise _error(rc, "sync of queue %r" % (self._name,), _errno())

    def stats(self):
        st = _new("ar_stats *")
        rc = lib.ar_stats_read(self._check(), st)
        if rc != AR_OK:     # a segment the SIGBUS guard found truncated
            raise _error(rc, "stats of queue %r" % (self._name,))
        return S.stats_dict(tuple(getattr(st, f) for f in S.STATS_FIELDS))

    def reclaim(self):
        r = _new("ar_recovery *")
        rc = lib.ar_reclaim(self._check(), r)
        if rc != AR_OK:
            raise _error(rc, "reclaim of queue %r" % (self._name,))
        return S.recovery_dict(tuple(getattr(r, f) for f in S.RECOVERY_FIELDS))

    def last_open(self):
        r = _new("ar_recovery *")
        lib.ar_last_open(self._check(), r)
        return S.recovery_dict(tuple(getattr(r, f) for f in S.RECOVERY_FIELDS))

    def entries(self):
        q = self._check()
        ei = _new("ar_entry_info *")
        out = []
        for i in range(lib.ar_max_clients(q)):
            lib.ar_entry_info_get(q, i, ei)
            if ei.state != 0:
                out.append(S.entry_dict(tuple(getattr(ei, f) for f in S.ENTRY_FIELDS)))
        return out

    def raw_header(self):
        h = _new("ar_header_raw *")
        lib.ar_inspect_header(self._check(), h)
        d = {k: getattr(h, k) for k in (
            "magic", "version", "header_size", "capacity", "message_size", "slot_size", "max_clients",
            "flags", "mode", "queue_id", "peer_id", "total_size", "shutdown", "leases_seen", "durability",
            "not_empty", "not_full", "synced_seq", "pub_seq", "hint_lag")}
        d["head"] = list(h.head)
        d["tail"] = list(h.tail)
        return d

    def raw_slots(self):
        q = self._check()
        r = _new("ar_slot_raw *")
        out = []
        for i in range(lib.ar_capacity(q)):
            lib.ar_inspect_slot(q, i, r)
            out.append((r.word, r.lease, r.use, r.len, r.crc_ok, r.publish_ns, r.pub_seq))
        return out

    def raw_cells(self, ring):
        q = self._check()
        if ring not in (0, 1, 2):
            raise ValueError("ring must be 0 (free), 1 (ready) or 2 (requeue)")
        c = _new("uint64_t *")
        out = []
        for i in range(lib.ar_capacity(q)):
            lib.ar_inspect_cell(q, ring, i, c)
            out.append(c[0])
        return out

    def peek(self, n):
        q = self._check()
        if n < 1:
            return []
        n = min(n, lib.ar_capacity(q) * 2)
        items = _new("ar_peek_item[]", n)
        got = _new(_T_SIZE)
        rc = lib.ar_peek(q, items, n, got)
        if rc != AR_OK:
            raise _error(rc, "peek into queue %r" % (self._name,))
        out = []
        for i in range(got[0]):
            it = items[i]
            body = bytes(_buffer(it.data, it.len))
            if lib.ar_peek_still(q, ffi.addressof(items, i)):
                out.append((it.id, body, it.delivery_count, it.publish_ns, bool(it.requeued),
                            _STATUS.death(it.dead_reason, it.dead_original_id, it.dead_queue_id,
                                          it.dead_delivery_count, it.dead_publish_ns, it.dead_ns)))
        return out


class _Client:
    __slots__ = ("_c", "_segment", "_queue_name", "_queue_id", "_message_size", "__weakref__")

    segment = _readonly("_segment")
    queue_name = _readonly("_queue_name")

    def _open(self, segment, role, prefetch, lease_ns):
        if not isinstance(segment, Segment):
            raise TypeError("expected a Segment, not %s" % type(segment).__name__)
        q = segment._check()
        out = _new("ar_client **")
        rc = lib.ar_client_new(q, role, prefetch, lease_ns, out)
        if rc != AR_OK:
            raise _error(rc, segment._name)
        # ar_client_free closes (requeueing what a consumer holds) when the
        # object goes: on PyPy at the next collection.
        self._c = ffi.gc(out[0], lib.ar_client_free)
        self._segment = segment
        self._queue_name = segment._name
        self._queue_id = lib.ar_queue_id(q)
        self._message_size = lib.ar_message_size(q)

    @property
    def closed(self):
        return bool(lib.ar_client_closed(self._c))

    def close(self):
        """Release the process-table entry (see the Cython backend)."""
        lib.ar_client_close(self._c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __reduce__(self):
        S.no_pickle(self)


def _bytes_like(data, what):
    if isinstance(data, bytes):
        return data, len(data)
    if isinstance(data, (str, int)) or data is None:
        raise TypeError("%s takes bytes-like data, not %s%s" % (
            what, type(data).__name__, " (encode it first)" if isinstance(data, str) else ""))
    buf = _from_buffer(data, require_writable=False)
    return buf, len(buf)


class Producer(_Client):
    __slots__ = ()

    def __init__(self, segment):
        self._open(segment, lib.AR_ROLE_PRODUCER, 0, 0)

    def put_obj(self, obj, timeout=None, ttl=None):
        """Pickle ``obj`` (protocol 5) and put it (see the Cython backend)."""
        return S.put_obj(self, obj, timeout, ttl)

    def put(self, data, timeout=None, ttl=None):
        """Store one message; returns its id once consumers can get it."""
        wait = _wait(timeout)
        ttl_ns = _ttl(ttl)
        ptr, n = _bytes_like(data, "put()")
        if n > self._message_size:
            raise E.MessageTooLarge("message of %d bytes exceeds message_size %d of queue %r"
                                    % (n, self._message_size, self._queue_name))
        mid = _new_uncleared(_T_U64)
        rc = _ar_put(self._c, ptr, n, 0, ttl_ns, mid)
        if rc == AR_FULL and wait != 0:
            deadline = _until(wait)
            while True:
                rc = _ar_put(self._c, ptr, n, deadline, ttl_ns, mid)
                if rc != AR_AGAIN:
                    break
        if rc != AR_OK:
            raise _error(rc, "put to queue %r" % (self._queue_name,), _errno())
        return mid[0]

    def put_many(self, messages, timeout=None, ttl=None):
        """Store several messages in order, in one C call; returns their ids."""
        return self._put_vec(messages, timeout, ttl, False)

    def put_batch(self, messages, timeout=None, ttl=None):
        """put_many that returns the ids as one array('Q') (see the Cython backend)."""
        return self._put_vec(messages, timeout, ttl, True)

    def _put_vec(self, messages, timeout, ttl, as_array):
        what = "put_batch" if as_array else "put_many"   # for the errors
        wait = _wait(timeout)
        ttl_ns = _ttl(ttl)
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        n = len(items)
        if n == 0:
            if lib.ar_client_closed(self._c):
                raise _error(AR_CLIENT_CLOSED, "%s to queue %r" % (what, self._queue_name,))
            return _array("Q") if as_array else []
        vec = _new(_T_IOVECS, n)
        keep = []
        for i, m in enumerate(items):
            if isinstance(m, (str, int)) or m is None:
                raise TypeError("%s() takes bytes-like items, not %s (item %d)" % (what, type(m).__name__, i))
            buf = _from_buffer(m, require_writable=False)
            keep.append(buf)
            if len(buf) > self._message_size:
                raise E.MessageTooLarge("item %d: a message of %d bytes exceeds message_size %d of queue %r"
                                        % (i, len(buf), self._message_size, self._queue_name))
            vec[i].data = buf
            vec[i].len = len(buf)
        ids = _new(_T_U64S, n)
        done = _new(_T_SIZE)
        rc = lib.ar_put_many(self._c, vec, n, 0, ttl_ns, ids, done)
        if rc == AR_FULL and wait != 0:
            deadline = _until(wait)
            while True:
                rc = lib.ar_put_many(self._c, vec, n, deadline, ttl_ns, ids, done)
                if rc != AR_AGAIN:
                    break
        if as_array:
            stored = _array("Q")
            stored.frombytes(ffi.buffer(ids, 8 * done[0]))
        else:
            stored = list(ids[0:done[0]])
        if rc == AR_FULL:
            raise E.Full("%s to queue %r: %d of %d stored before the timeout"
                         % (what, self._queue_name, done[0], n), ids=stored)
        if rc != AR_OK:
            raise _error(rc, "%s to queue %r" % (what, self._queue_name,), _errno())
        return stored

    def wait_acked(self, message_id, timeout=None):
        """Wait until message ``message_id`` is settled and say how (a Receipt)."""
        wait = _wait(timeout)
        if isinstance(message_id, bool) or not isinstance(message_id, int):
            raise TypeError("message_id must be an int, not %s" % type(message_id).__name__)
        if not 0 <= message_id < 1 << 64:
            raise ValueError("no message %d was ever published to queue %r" % (message_id, self._queue_name))
        outcome = _new(_T_U32)
        rc = lib.ar_wait_settled(self._c, message_id, 0, outcome)
        if rc == AR_EMPTY and wait != 0:
            deadline = _until(wait)
            while True:
                rc = lib.ar_wait_settled(self._c, message_id, deadline, outcome)
                if rc != AR_AGAIN:
                    break
        if rc == AR_EMPTY:
            raise TimeoutError("message %d was not settled within %r s" % (message_id, timeout))
        if rc == AR_INVAL:
            raise ValueError("no message %d was ever published to queue %r" % (message_id, self._queue_name))
        if rc != AR_OK:
            raise _error(rc, "wait_acked(%d)" % message_id)
        return _STATUS.receipt(message_id, outcome[0])

    def reserve(self, size=-1, timeout=None, ttl=None):
        """Zero-copy send: claim a slot and write the message in place."""
        wait = _wait(timeout)
        ttl_ns = _ttl(ttl)
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError("size must be an int")
        if size < 0:
            size = self._message_size
        if size > self._message_size:
            raise E.MessageTooLarge("reserve(%d) exceeds message_size %d of queue %r"
                                    % (size, self._message_size, self._queue_name))
        r = object.__new__(Reservation)
        r._r = _new("ar_reservation *")
        r._producer, r._size, r._ttl_ns, r._view = self, size, ttl_ns, None
        rc = lib.ar_reserve(self._c, 0, r._r)
        if rc == AR_FULL and wait != 0:
            deadline = _until(wait)
            while True:
                rc = lib.ar_reserve(self._c, deadline, r._r)
                if rc != AR_AGAIN:
                    break
        if rc != AR_OK:
            r._producer = None
            raise _error(rc, "reserve in queue %r" % (self._queue_name,))
        return r


class Reservation:
    """A claimed slot being written in place (see Producer.reserve)."""

    __slots__ = ("_r", "_producer", "_size", "_ttl_ns", "_view")

    def __init__(self):
        raise TypeError("reservations come from Producer.reserve()")

    id = property(lambda self: self._r.id)
    done = property(lambda self: bool(self._r.done))

    def __len__(self):
        return self._size

    def _hold(self, _ptr):
        pass  # see _kept()

    def view(self):
        """A writable memoryview of the reserved payload, valid until commit/abort."""
        if self._r.done:
            raise E.AlreadySettled("reservation %d was committed or aborted" % self._r.id)
        return memoryview(_buffer(_kept(self._r.buf, self), self._size))

    def __buffer__(self, flags):
        return self.view()

    def __reduce__(self):
        S.no_pickle(self)

    def _finish(self, commit, length):
        if self._r.done:
            raise E.AlreadySettled("reservation %d was already committed or aborted" % self._r.id)
        if commit and not 0 <= length <= self._size:
            raise ValueError("commit length must be from 0 to %d, not %d" % (self._size, length))
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                pass
            self._view = None
        if commit:
            rc = lib.ar_commit(self._r, length, self._ttl_ns, ffi.NULL)
        else:
            rc = lib.ar_abort(self._r)
        if rc == AR_CLIENT_CLOSED:
            raise E.QueueClosed("the producer of reservation %d is closed (the slot was discarded)" % self._r.id)
        if rc != AR_OK:
            raise _error(rc, "%s reservation %d" % ("commit" if commit else "abort", self._r.id))

    def commit(self, length=None):
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise TypeError("length must be an int")
        self._finish(True, self._size if length is None else length)
        return self._r.id

    def abort(self):
        self._finish(False, 0)

    def __del__(self):
        try:
            if self._producer is not None and not self._r.done:
                lib.ar_abort(self._r)
        except Exception:
            pass  # interpreter shutdown, or a half-built reservation

    def __enter__(self):
        self._view = self.view()
        return self._view

    def __exit__(self, exc_type, exc, tb):
        if not self._r.done:
            if exc_type is None:
                self.commit()
            else:
                self.abort()
        return False


def _settle_ptrs(consumer, ptrs, n, how):
    rcs = _new(_T_INTS, n or 1)
    bad = _new(_T_SIZE)
    rc = lib.ar_settle_many(consumer._c, ptrs, n, how, rcs, bad)
    if rc == AR_SETTLED:
        raise E.AlreadySettled("message %d was already settled, or given twice" % ptrs[bad[0]].id)
    if rc == AR_WRONG_CLIENT:
        raise ValueError("message %d was delivered to another consumer" % ptrs[bad[0]].id)
    if rc == AR_FORKED:
        raise E.StaleDelivery("message %d was delivered to the parent process before fork" % ptrs[bad[0]].id)
    if rc != AR_OK:
        raise _error(rc, "settle %d messages" % n)
    stale = [ptrs[i].id for i in range(n) if rcs[i] != AR_OK]
    if stale:
        exc = E.StaleDelivery("%d of %d deliveries were no longer current: %r" % (len(stale), n, stale))
        exc.ids = stale
        raise exc


class Consumer(_Client):
    __slots__ = ()

    def __init__(self, segment, prefetch=None, ack_timeout=None):
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1):
            raise ValueError("prefetch must be None or an int >= 1, not %r" % (prefetch,))
        self._open(segment, lib.AR_ROLE_CONSUMER, prefetch or 0, S.check_duration(ack_timeout, "ack_timeout"))

    prefetch = property(lambda self: lib.ar_client_prefetch(self._c))
    outstanding = property(lambda self: lib.ar_client_outstanding(self._c))

    def _get(self, d, wait, deadline):
        """One get; deadline: 0 until the call first waited, else the one it
        took then.  Returns the deadline (get()'s retries keep it)."""
        rc = _ar_get(self._c, d, 0)
        if rc == AR_EMPTY and wait != 0:
            deadline = deadline or _until(wait)
            while True:
                rc = _ar_get(self._c, d, deadline)
                if rc != AR_AGAIN:
                    break
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (self._queue_name,))
        return deadline

    def get(self, timeout=None, copy=True):
        """Receive one message (see the Cython backend)."""
        d = _new_uncleared(_T_DELIVERY)
        wait = _wait(timeout)
        deadline = 0
        while True:
            deadline = self._get(d, wait, deadline)
            if not copy:
                body = None
                break
            body = bytes(_buffer(d.data, d.len))
            # its lease ran out before the copy was made: not ours, look again
            if _ar_intact(d, 1) == AR_OK:
                break
        m = object.__new__(Message)
        m._d, m._consumer, m._keep = d, self, None
        m._body = body
        return m

    def _take(self, n, wait, deadline=0):
        """get_many's C call: (deliveries, how many, the deadline as in _get)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError("n must be an int")
        if n < 1:
            raise ValueError("get_many() needs n >= 1")
        ds = _new(_T_DELIVERIES, n)
        got = _new(_T_SIZE)
        rc = lib.ar_get_many(self._c, ds, n, 0, got)
        if rc == AR_EMPTY and wait != 0:
            deadline = deadline or _until(wait)
            while True:
                rc = lib.ar_get_many(self._c, ds, n, deadline, got)
                if rc != AR_AGAIN:
                    break
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (self._queue_name,))
        return ds, got[0], deadline

    def get_many(self, n, timeout=None, copy=True):
        wait = _wait(timeout)
        deadline = 0   # taken once, at the first wait
        while True:
            ds, got, deadline = self._take(n, wait, deadline)
            out = []
            for i in range(got):
                d = ffi.addressof(ds, i)
                body = None
                if copy:
                    body = bytes(_buffer(d.data, d.len))
                    # its lease ran out before the copy was made: dropped
                    if _ar_intact(d, 1) != AR_OK:
                        continue
                m = object.__new__(Message)
                m._d, m._consumer, m._keep, m._body = d, self, ds, body
                out.append(m)
            if out:
                return out

    def get_batch(self, n, timeout=None):
        ds, got, _ = self._take(n, _wait(timeout))
        b = object.__new__(Batch)
        b._ds, b._n, b._consumer = ds, got, self
        return b

    def ack_many(self, messages):
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        for m in items:
            if not isinstance(m, Message):
                raise TypeError("ack_many() takes Message objects, not %s" % type(m).__name__)
        _settle_ptrs(self, _new(_T_DPTRS, [m._d for m in items] or [ffi.NULL]), len(items), AR_ACK)

    def purge(self):
        n = _new(_T_U64)
        rc = lib.ar_purge(self._c, n)
        if rc != AR_OK:
            raise _error(rc, "purge of queue %r" % (self._queue_name,))
        return n[0]

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.get()
        except E.QueueClosed:
            raise StopIteration


class Message:
    """One delivery (see the Cython backend)."""

    __slots__ = ("_d", "_consumer", "_keep", "_body")

    def __init__(self):
        raise TypeError("messages come from Consumer.get()")

    id = property(lambda self: self._d.id)
    delivery_count = property(lambda self: self._d.delivery_count)
    redelivered = property(lambda self: self._d.delivery_count > 1)
    publish_time_ns = property(lambda self: self._d.publish_ns)
    settled = property(lambda self: bool(self._d.flags & AR_D_SETTLED))
    key = property(lambda self: (self._consumer._queue_id, self._d.id))

    @property
    def death(self):
        d = self._d
        return _STATUS.death(d.dead_reason, d.dead_original_id, d.dead_queue_id, d.dead_delivery_count,
                             d.dead_publish_ns, d.dead_ns)

    @property
    def body(self):
        if self._body is None:
            if self._d.flags & AR_D_SETTLED:
                raise E.AlreadySettled("message %d was settled before its body was read; "
                                       "use get(copy=True)" % self._d.id)
            body = bytes(_buffer(self._d.data, self._d.len))
            if _ar_intact(self._d, 0) != AR_OK:
                raise S.taken_back(self._d.id)
            self._body = body
        return self._body

    obj = property(lambda self: S.load_obj(self), doc="The object a put_obj stored (see the Cython backend).")

    def __len__(self):
        return self._d.len

    def __repr__(self):
        return "<ackring.Message id=%d len=%d delivery_count=%d%s>" % (
            self._d.id, self._d.len, self._d.delivery_count, " settled" if self.settled else "")

    def _hold(self, _ptr):
        pass

    def view(self):
        if self._d.flags & AR_D_SETTLED:
            raise E.AlreadySettled("message %d is settled; its slot may hold another message" % self._d.id)
        return memoryview(_buffer(_kept(self._d.data, self), self._d.len)).toreadonly()

    def __buffer__(self, flags):
        if flags & 1:  # PyBUF_WRITABLE
            raise BufferError("a message's payload is read-only")
        return self.view()

    def __reduce__(self):
        S.no_pickle(self)

    def _settle(self, how):
        rc = _ar_settle(self._d, how)
        if rc == AR_OK:
            return
        if rc == AR_SETTLED:
            raise E.AlreadySettled("message %d was already settled" % self._d.id)
        if rc == AR_CLIENT_CLOSED:
            raise E.QueueClosed("the consumer of message %d is closed (its deliveries were requeued)" % self._d.id)
        if rc == AR_FORKED:
            raise E.StaleDelivery("message %d was delivered to the parent process before fork" % self._d.id)
        raise _error(rc, "settle message %d" % self._d.id)

    def ack(self):
        self._settle(AR_ACK)

    def nack(self, requeue=True):
        self._settle(AR_REQUEUE if requeue else AR_REJECT)

    def reject(self):
        self._settle(AR_REJECT)

    def extend(self, seconds):
        ns = S.check_duration(seconds, "seconds")
        if ns == 0:
            raise ValueError("extend() needs a number of seconds > 0")
        rc = lib.ar_extend(self._d, ns)
        if rc == AR_STALE:
            raise E.StaleDelivery("message %d: its lease ran out and it was taken back" % self._d.id)
        if rc == AR_SETTLED:
            raise E.AlreadySettled("message %d was already settled" % self._d.id)
        if rc == AR_CLIENT_CLOSED:
            raise E.QueueClosed("the consumer of message %d is closed" % self._d.id)
        if rc != AR_OK:
            raise _error(rc, "extend message %d" % self._d.id)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False


class Batch:
    """Messages of one get_batch() (see the Cython backend)."""

    __slots__ = ("_ds", "_n", "_consumer")

    def __init__(self):
        raise TypeError("batches come from Consumer.get_batch()")

    def __len__(self):
        return self._n

    def _index(self, i):
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("batch index out of range")
        d = self._ds + i   # a pointer: _ar_intact takes one (self._ds[i] would be a struct copy)
        if d.flags & AR_D_SETTLED:
            raise E.AlreadySettled("the batch was settled; its slots may hold other messages")
        return d

    def __getitem__(self, i):
        d = self._index(i)
        body = bytes(_buffer(d.data, d.len))
        if _ar_intact(d, 0) != AR_OK:
            raise S.taken_back(d.id, True)
        return body

    def _hold(self, _ptr):
        pass

    def view(self, i):
        d = self._index(i)
        return memoryview(_buffer(_kept(d.data, self), d.len)).toreadonly()

    def __iter__(self):
        for i in range(self._n):
            yield self[i]

    ids = property(lambda self: [self._ds[i].id for i in range(self._n)])
    delivery_counts = property(lambda self: [self._ds[i].delivery_count for i in range(self._n)])
    nbytes = property(lambda self: sum(self._ds[i].len for i in range(self._n)))
    settled = property(lambda self: self._n > 0 and bool(self._ds[0].flags & AR_D_SETTLED))

    def join(self, sep=b""):
        return sep.join(self[i] for i in range(self._n))

    def _settle(self, how):
        _settle_ptrs(self._consumer, _new(_T_DPTRS, [ffi.addressof(self._ds, i) for i in range(self._n)]
                                          or [ffi.NULL]), self._n, how)

    def ack(self):
        self._settle(AR_ACK)

    def nack(self, requeue=True):
        self._settle(AR_REQUEUE if requeue else AR_REJECT)

    def reject(self):
        self._settle(AR_REJECT)

    def __reduce__(self):
        S.no_pickle(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._n and not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False


def set_test_hook(point):
    """Test-only: SIGSTOP this process at a named point inside a critical window."""
    if lib.ar_set_test_hook((point or "").encode("ascii")) != AR_OK:
        raise ValueError("unknown test hook point %r" % (point,))


def set_sync_snapshots(directory):
    """Test-only: before each fdatasync of a file queue, copy the file to directory/snap-<n>."""
    if lib.ar_set_sync_snapshots(_os.fsencode(directory or "")) != AR_OK:
        raise ValueError("bad snapshot directory %r" % (directory,))


def test_hook_paused(release=False):
    """Test-only: is a thread parked at a "pause:<point>" test hook?
    release=True lets it go on (ar_test_hook_paused)."""
    return bool(lib.ar_test_hook_paused(1 if release else 0))


def futex_counts():
    """Test-only: (waits, wakes), the FUTEX_WAIT and FUTEX_WAKE system calls
    this process has made in ackring's waits and wakes (ar_futex_counts)."""
    waits, wakes = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    lib.ar_futex_counts(waits, wakes)
    return int(waits[0]), int(wakes[0])


def ring_probes(enable=None):
    """Test-only: the ring cells this process's gets have looked at, counted
    while enabled (ar_ring_probes).  enable=True/False turns counting on/off."""
    return int(lib.ar_ring_probes(-1 if enable is None else (1 if enable else 0)))
