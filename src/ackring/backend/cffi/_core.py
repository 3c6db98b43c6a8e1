"""cffi backend: a thin binding of ext/ackring.c, in plain Python (the PyPy path).

A method-by-method port of ackring/backend/cython/_core.pyx over the same C
core, compiled by cffi into ``_ackring_cffi`` (see _build.py).  Same classes,
methods, properties, semantics and exceptions (from ackring._errors).

Differences that come with the binding, not with the behaviour:

* cffi drops the GIL around every C call, the hot ones included; the Cython
  backend drops it only for blocking waits and large copies.
* Blocking calls wait one slice (AR_WAIT_SLICE_NS) at a time in C and come
  back to Python between slices, where pending signals (Ctrl-C) run, then the
  same reclaim pass as in the Cython backend.
* Buffer protocol.  A class written in Python can export a buffer only
  through ``__buffer__`` (PEP 688: CPython >= 3.12, and PyPy).  There
  ``memoryview(m)`` and ``memoryview(r)`` work as with the Cython backend; on
  CPython <= 3.11 they raise TypeError, and ``m.view()`` / ``r.view()`` give
  the same views on every version.  ``with p.reserve(n) as buf`` works
  everywhere.
"""
import operator as _operator
import os as _os
import sys as _sys

from ackring import _errors as E
from ackring import _liveness
from ackring._errors import Receipt
from ackring._status import _NAMES as _STATUS_NAMES, Status as _Status

from ._ackring_cffi import ffi, lib

AR_OK = lib.AR_OK
AR_EMPTY = lib.AR_EMPTY
AR_FULL = lib.AR_FULL
AR_AGAIN = lib.AR_AGAIN
AR_TOOBIG = lib.AR_TOOBIG
AR_STALE = lib.AR_STALE
AR_CORRUPT = lib.AR_CORRUPT
AR_INCOMPATIBLE = lib.AR_INCOMPATIBLE
AR_TABLE_FULL = lib.AR_TABLE_FULL
AR_EXISTS = lib.AR_EXISTS
AR_NOTFOUND = lib.AR_NOTFOUND
AR_INVAL = lib.AR_INVAL
AR_ERRNO = lib.AR_ERRNO
AR_ROLE_PRODUCER = lib.AR_ROLE_PRODUCER
AR_ROLE_CONSUMER = lib.AR_ROLE_CONSUMER
AR_ROLE_OBSERVER = lib.AR_ROLE_OBSERVER
AR_NO_DEADLINE = lib.AR_NO_DEADLINE

# A blocked call runs a reclaim pass once it has waited this long, then again
# at the same interval: a dead process cannot stall a live one for longer.
RECLAIM_AFTER_NS = 100000000

# Pre-resolved C functions and types: attribute lookups on `lib` and type
# parsing in ffi.new() are a large part of a call's cost here.
_now_ns = lib.ar_now_ns
_ar_put = lib.ar_put
_ar_get = lib.ar_get
_ar_ack = lib.ar_ack
_ar_nack = lib.ar_nack
_ffi_new = ffi.new
# For out-parameters the C side fills before we read them (as the Cython
# backend's uninitialised stack variables): zeroing them first costs more
# than the call.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)
_ffi_buffer = ffi.buffer
_from_buffer = ffi.from_buffer
_T_DELIVERY = ffi.typeof("ar_delivery *")
_T_DELIVERIES = ffi.typeof("ar_delivery[]")
_T_U64 = ffi.typeof("uint64_t *")
_T_U64S = ffi.typeof("uint64_t[]")
_T_U32 = ffi.typeof("uint32_t *")
_T_IOVECS = ffi.typeof("ar_iovec[]")
_T_INTS = ffi.typeof("int[]")

# Python >= 3.12 (PEP 688) and PyPy take __buffer__ from a Python class.
HAS_BUFFER_PROTOCOL = _sys.version_info >= (3, 12) or _sys.implementation.name == "pypy"

# ---------------------------------------------------------------- fork safety
# After fork() the child must never act under its parent's process-table
# entries.  Every handle remembers the fork generation it registered under and
# registers anew when it differs.
_fork_gen = 0


def _after_fork_in_child():
    global _fork_gen
    _fork_gen += 1
    _liveness.forget_self()


_os.register_at_fork(after_in_child=_after_fork_in_child)


_STATUS = _Status({name: getattr(lib, name) for name in _STATUS_NAMES})
_error = _STATUS.error
_OUTCOMES = _STATUS.outcomes
REASONS = _STATUS.reasons


def _double(x):
    """A C double from x, as Cython converts it: numbers only (no strings)."""
    if type(x) is float:
        return x
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError("must be real number, not %s" % type(x).__name__)
    return float(x)


def _index(x, bits, signed=False):
    """An int for a C integer argument, with Cython's TypeError/OverflowError."""
    if type(x) is not int:
        x = _operator.index(x)   # TypeError for floats, strings, None
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= x <= hi:
        raise OverflowError("value %d out of range for a C %sint%d" % (x, "" if signed else "u", bits))
    return x


def _check_str(value, what):
    if not isinstance(value, str):
        raise TypeError("Argument '%s' has incorrect type (expected str, got %s)" % (what, type(value).__name__))
    return value


def _duration_ns(seconds, what):
    """None -> 0 (not set); a positive number of seconds -> nanoseconds."""
    if seconds is None:
        return 0
    t = _double(seconds)   # TypeError for non-numbers
    if not (t > 0) or t > 1e9:
        raise ValueError("%s must be None or a number of seconds > 0, not %r" % (what, seconds))
    return int(t * 1e9) or 1




def _deadline(timeout):
    """None -> no deadline; 0 -> do not wait; else an absolute CLOCK_MONOTONIC time."""
    if timeout is None:
        return AR_NO_DEADLINE
    t = _double(timeout)   # TypeError for non-numbers
    if not (t >= 0):
        raise ValueError("timeout must be None or a number >= 0, not %r" % (timeout,))
    if t == 0:
        return 0
    if t > 1e9:
        return AR_NO_DEADLINE
    return _now_ns() + int(t * 1e9) + 1


def _kept(ptr, owner):
    """ptr (into the mapping) as a cdata that keeps `owner` alive: a buffer made
    from it keeps its message or reservation, hence the segment's mapping, as
    the buffer of a Cython object keeps that object.  owner._hold does nothing."""
    return ffi.gc(ptr, owner._hold)


def _readonly(value):
    return property(lambda self: getattr(self, value))


class Segment:
    """One mapping of a queue's segment in this process.

    The mapping lives as long as this object: producers, consumers, messages
    and memoryviews of messages keep it alive, so closing a queue never unmaps
    memory a live view points into.  ``close()`` only forbids further use."""

    __slots__ = ("_q", "_name", "_directory", "_closed", "_observer", "_observer_gen", "_has_observer",
                 "_last_reclaim_ns", "_dlq", "_dlq_entry", "_dlq_gen", "_message_size", "__weakref__")

    name = _readonly("_name")
    directory = _readonly("_directory")
    closed = _readonly("_closed")
    dlq = _readonly("_dlq")   # the dead-letter queue's segment, once attached

    def __init__(self, *args, **kwargs):
        raise TypeError("segments come from Segment.create() and Segment.open()")

    @classmethod
    def _wrap(cls, out, name, directory):
        s = object.__new__(cls)
        # ar_close (munmap) runs when the last reference goes: see the class docstring.
        s._q = ffi.gc(out[0], lib.ar_close)
        s._name, s._directory, s._closed = name, directory, False
        s._observer = 0
        s._observer_gen = 0
        s._has_observer = False
        s._last_reclaim_ns = 0
        s._dlq = None
        s._dlq_entry = 0
        s._dlq_gen = 0
        # Geometry is validated at open and process-local in C (never re-read
        # from shared memory), so a copy here is exact.
        s._message_size = lib.ar_message_size(s._q)
        return s

    @staticmethod
    def create(directory, name, capacity, message_size, max_clients, mode, max_deliveries=0, ttl=None,
               ack_timeout=None, is_dlq=False):
        _check_str(directory, "directory")
        _check_str(name, "name")
        d, n = _os.fsencode(directory), name.encode("ascii")
        capacity = _index(capacity, 32)
        message_size = _index(message_size, 32)
        max_clients = _index(max_clients, 32)
        mode = _index(mode, 32, signed=True)
        cfg = ffi.new("ar_config *")
        cfg.max_deliveries = _index(max_deliveries, 32)
        cfg.is_dlq = bool(is_dlq)
        cfg.default_ttl_ns = _duration_ns(ttl, "ttl")
        cfg.ack_timeout_ns = _duration_ns(ack_timeout, "ack_timeout")
        out = ffi.new("ar_queue **")
        rc = lib.ar_create(d, n, capacity, message_size, max_clients, mode, cfg, out)
        if rc != AR_OK:
            raise _error(rc, name if rc != AR_NOTFOUND else directory, ffi.errno)
        return Segment._wrap(out, name, directory)

    @staticmethod
    def open(directory, name):
        _check_str(directory, "directory")
        _check_str(name, "name")
        d, n = _os.fsencode(directory), name.encode("ascii")
        out = ffi.new("ar_queue **")
        rc = lib.ar_open(d, n, out)
        if rc != AR_OK:
            raise _error(rc, name, ffi.errno)
        return Segment._wrap(out, name, directory)

    @staticmethod
    def unlink(directory, name):
        _check_str(directory, "directory")
        _check_str(name, "name")
        d, n = _os.fsencode(directory), name.encode("ascii")
        rc = lib.ar_unlink(d, n)
        if rc != AR_OK:
            raise _error(rc, name, ffi.errno)

    @staticmethod
    def valid_name(name):
        _check_str(name, "name")
        if "\0" in name:  # C would stop reading at the NUL
            return False
        try:
            n = name.encode("ascii")
        except UnicodeEncodeError:
            return False
        return lib.ar_check_name(n) == AR_OK

    def _check(self):
        if self._closed:
            raise E.QueueClosed("queue %r is closed" % (self._name,))

    def close(self):
        # The mapping itself goes with the last reference (see class docstring).
        if not self._closed:
            if self._has_observer and self._observer_gen == _fork_gen:
                lib.ar_unregister(self._q, self._observer)
            if self._dlq is not None:
                if self._dlq_gen == _fork_gen and not self._dlq._closed:
                    lib.ar_unregister(self._dlq._q, self._dlq_entry)
                lib.ar_attach_dlq(self._q, ffi.NULL, 0)
        self._closed = True

    @property
    def config(self):
        """The delivery rules fixed at creation."""
        c = ffi.new("ar_config *")
        lib.ar_get_config(self._q, c)
        return {"max_deliveries": c.max_deliveries or None,
                "ttl": c.default_ttl_ns / 1e9 if c.default_ttl_ns else None,
                "ack_timeout": c.ack_timeout_ns / 1e9 if c.ack_timeout_ns else None,
                "is_dead_letter_queue": bool(c.is_dlq)}

    @property
    def is_dlq(self):
        c = ffi.new("ar_config *")
        lib.ar_get_config(self._q, c)
        return bool(c.is_dlq)

    def attach_dlq(self, dlq):
        """Dead letters of this queue made by this process go to `dlq`."""
        if not isinstance(dlq, Segment):
            raise TypeError("Argument 'dlq' has incorrect type (expected Segment, got %s)" % type(dlq).__name__)
        self._check()
        dlq._check()
        self._dlq = dlq
        self._dlq_entry = dlq._register(AR_ROLE_OBSERVER)
        self._dlq_gen = _fork_gen
        lib.ar_attach_dlq(self._q, dlq._q, self._dlq_entry)

    def _refresh(self):
        """Make sure our entry in the dead-letter queue is ours: after fork,
        or after a reclaim took it from under us, take a new one."""
        dlq = self._dlq
        if dlq is not None and not dlq._closed and (
                self._dlq_gen != _fork_gen or not lib.ar_entry_ok(dlq._q, self._dlq_entry)):
            self._dlq_entry = dlq._register(AR_ROLE_OBSERVER)
            self._dlq_gen = _fork_gen
            lib.ar_attach_dlq(self._q, dlq._q, self._dlq_entry)

    capacity = property(lambda self: lib.ar_capacity(self._q))
    message_size = _readonly("_message_size")
    max_clients = property(lambda self: lib.ar_max_clients(self._q))
    queue_id = property(lambda self: lib.ar_queue_id(self._q))
    created_ns = property(lambda self: lib.ar_created_ns(self._q))

    def _entry_word(self, entry):
        ci = ffi.new("ar_client_info *")
        lib.ar_get_client(self._q, entry, ci)
        return ci.word

    def _register(self, role):
        self._check()
        self._refresh()  # a client made in a forked child: our DLQ entry must be ours too
        pid, start = _liveness.self_identity()
        entry = _ffi_new(_T_U32)
        rc = lib.ar_register(self._q, role, pid, start, entry)
        if rc != AR_OK:
            raise _error(rc, self._name)
        return entry[0]

    def stats(self):
        self._check()
        st = ffi.new("ar_stats *")
        lib.ar_stats_read(self._q, st)
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
        self._check()
        ci = ffi.new("ar_client_info *")
        q = self._q
        out = []
        for i in range(lib.ar_max_clients(q)):
            lib.ar_get_client(q, i, ci)
            if ci.state != 0:
                out.append((ci.index, ci.state, ci.role, ci.pid, ci.start_time, ci.word, bool(ci.mine)))
        return out

    def _leases_in_use(self):
        h = ffi.new("ar_header_raw *")
        lib.ar_inspect_header(self._q, h)
        return h.leases_seen != 0

    def raw_header(self):
        """A snapshot of the shared header, for check()."""
        self._check()
        h = ffi.new("ar_header_raw *")
        lib.ar_inspect_header(self._q, h)
        return {
            "magic": h.magic, "version": h.version, "header_size": h.header_size,
            "capacity": h.capacity, "message_size": h.message_size, "slot_size": h.slot_size,
            "max_clients": h.max_clients, "queue_id": h.queue_id, "total_size": h.total_size,
            "head": h.head, "tail": h.tail, "requeued": h.requeued, "reclaim_lock": h.reclaim_lock,
            "consumers_waiting": h.consumers_waiting, "producers_waiting": h.producers_waiting,
        }

    def raw_slots(self):
        """(word, id, len) of every slot, for check()."""
        self._check()
        r = ffi.new("ar_slot_raw *")
        q = self._q
        out = []
        for i in range(lib.ar_capacity(q)):
            lib.ar_inspect_slot(q, i, r)
            out.append((r.word, r.id, r.len))
        return out

    def client_waiting(self, index):
        index = _index(index, 32)
        self._check()
        w = _ffi_new(_T_U32)
        if lib.ar_inspect_client_waiting(self._q, index, w) != AR_OK:
            raise IndexError(index)
        return w[0]

    def reclaim(self):
        """Repair what dead processes left behind, and take back deliveries
        whose ack lease ran out; returns the number of slots repaired."""
        total = 0
        self._check()
        self._refresh()
        dead = _liveness.dead_entries(self.clients())
        if self._dlq is not None and not self._dlq._closed:
            total += self._dlq.reclaim()
        if not dead and not self._leases_in_use():
            return total
        repaired = _ffi_new(_T_U32)
        me = lib.ar_max_clients(self._q)   # "no entry of our own"
        if (not self._has_observer or self._observer_gen != _fork_gen
                or not lib.ar_entry_ok(self._q, self._observer)):
            self._has_observer = False
            try:
                self._observer = self._register(AR_ROLE_OBSERVER)
                self._observer_gen = _fork_gen
                self._has_observer = True
            except E.TooManyClients:
                pass  # a full table: reclaim anyway, under no entry (leases wait)
        if self._has_observer and self._observer_gen == _fork_gen:
            me = self._observer
            lib.ar_expire_leases(self._q, me, repaired)
            total += repaired[0]
        # Twice at most: an entry whose pass found the lock held by a dead
        # reclaimer is retried once the others (the dead holder among them)
        # are done.
        for _ in range(2):
            again = []
            for index, word, start in dead:
                rc = lib.ar_reclaim_entry(self._q, me, index, word, start, repaired)
                if rc == AR_OK:
                    total += repaired[0]
                elif rc == AR_AGAIN:
                    again.append((index, word, start))
                elif rc != AR_STALE:
                    raise _error(rc, self._name)
            if not again or len(again) == len(dead):
                break
            dead = again
        return total

    def _blocked(self, since):
        """Called between wait slices of a blocked call.  Pending signals have
        run already: the interpreter runs them between bytecodes."""
        self._check()
        now = _now_ns()
        if now - since >= RECLAIM_AFTER_NS and now - self._last_reclaim_ns >= RECLAIM_AFTER_NS:
            self._last_reclaim_ns = now
            self.reclaim()


class _Client:
    __slots__ = ("_segment", "_entry", "_word", "_gen", "_role", "_closed", "_busy", "_close_pending",
                 "__weakref__")

    # _busy: calls in progress (and open reservations).  close() waits for
    # them: no slot of theirs is taken away under them.  (cffi drops the GIL
    # around every C call, so any call can overlap a close on another thread.)
    def _busy_enter(self):
        self._busy = getattr(self, "_busy", 0) + 1

    def _busy_leave(self):
        self._busy -= 1
        if self._busy == 0 and getattr(self, "_close_pending", False):
            self._close_pending = False
            self._release_entry()

    def _release_entry(self):
        # only our own registration: after a reclaim took it from under us,
        # the index may be another client's now
        seg = self._segment
        if self._gen == _fork_gen and seg._entry_word(self._entry) == self._word:
            lib.ar_unregister(seg._q, self._entry)

    def _take_entry(self):
        self._entry = self._segment._register(self._role)
        self._word = self._segment._entry_word(self._entry)
        self._gen = _fork_gen

    def _owns_entry(self):
        seg = self._segment
        return seg._entry_word(self._entry) == self._word and lib.ar_entry_ok(seg._q, self._entry)

    segment = _readonly("_segment")
    closed = _readonly("_closed")

    def _check(self):
        if self._closed or self._segment._closed:
            raise E.QueueClosed("%s of queue %r is closed" % (type(self).__name__, self._segment._name))
        if self._gen != _fork_gen:  # we are a forked child: take an entry of our own
            self._take_entry()
            self._segment._refresh()

    def _reattach(self):
        """If our entry was reclaimed from under us (a live process judged
        dead), take a new one; True if so.  What the old entry held was
        already requeued or discarded by that reclaim."""
        self._check()
        if self._owns_entry():
            return False
        self._take_entry()
        return True

    def close(self):
        """Release the process-table entry; a consumer's unsettled deliveries
        are requeued.  If other threads are inside a call on this client (or
        a reservation of it is open), the entry is released when the last of
        them returns: until then no slot of theirs is taken away under them."""
        if not self._closed:
            self._closed = True
            if self._gen == _fork_gen:
                if getattr(self, "_busy", 0):
                    self._close_pending = True
                else:
                    self._release_entry()
                lib.ar_wake_all(self._segment._q)  # our other threads asleep in a call see the close

    def __del__(self):
        # Dropped without close(): give the entry back (a consumer's
        # unsettled deliveries are requeued) so the table does not fill up.
        # Messages keep their consumer alive, so none is outstanding here.
        try:
            seg = self._segment
            if not self._closed and self._gen == _fork_gen and not seg._closed \
                    and seg._entry_word(self._entry) == self._word:
                lib.ar_unregister(seg._q, self._entry)
        except Exception:
            pass  # interpreter shutdown, or a half-built client

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _check_segment_arg(segment):
    if not isinstance(segment, Segment):
        raise TypeError("Argument 'segment' has incorrect type (expected Segment, got %s)"
                        % type(segment).__name__)


class Producer(_Client):
    __slots__ = ()

    def __init__(self, segment):
        _check_segment_arg(segment)
        self._closed = False
        self._busy = 0
        self._close_pending = False
        self._segment = segment
        self._role = AR_ROLE_PRODUCER
        self._take_entry()

    def _put(self, data, deadline, ttl_ns):
        seg = self._segment
        if type(data) is bytes:
            ptr = data         # passed to C as a pointer to the bytes' own storage
            n = len(data)
        else:
            if isinstance(data, str):
                raise TypeError("put() takes bytes-like data, not str (encode it first)")
            ptr = _from_buffer(data)   # zero-copy; TypeError/BufferError as PyObject_GetBuffer
            n = len(ptr)
        if n > seg._message_size:
            raise E.MessageTooLarge("message of %d bytes exceeds message_size %d of queue %r"
                                    % (n, seg._message_size, seg._name))
        mid = _ffi_new(_T_U64)
        rc = _ar_put(seg._q, self._entry, ptr, n, 0, ttl_ns, mid)
        if rc == AR_FULL and deadline != 0:
            since = _now_ns()
            while True:
                # ptr (the bytes, or the cdata holding the exported buffer) stays
                # alive across the call, so the C side may read it without the GIL.
                rc = _ar_put(seg._q, self._entry, ptr, n, deadline, ttl_ns, mid)
                if rc != AR_AGAIN:
                    break
                seg._blocked(since)
                self._check()
        if rc == AR_STALE and self._reattach():
            # our claim was discarded by a reclaim that judged us dead:
            # nothing was stored, so storing it now is not a duplicate
            return self._put(data, deadline, ttl_ns)
        if rc != AR_OK:
            raise _error(rc, "put to queue %r" % (seg._name,))
        return mid[0]

    def _put_impl(self, data, timeout=None, ttl=None):
        """Store one message; returns its id once it is visible to consumers
        (the publisher confirm).  Waits while the queue is full, up to
        ``timeout`` seconds (None: no limit), then raises ackring.Full.
        ``ttl``: seconds after which it expires undelivered (the lower of
        this and the queue's ttl wins)."""
        seg = self._segment
        if self._closed or seg._closed or self._gen != _fork_gen:
            self._check()
        deadline = AR_NO_DEADLINE if timeout is None else _deadline(timeout)
        ttl_ns = 0 if ttl is None else _duration_ns(ttl, "ttl")
        if type(data) is bytes and len(data) <= seg._message_size:
            # Fast path: one non-blocking attempt.  Anything but success goes
            # the general way, which starts with the same attempt again
            # (a failed attempt stores nothing).
            mid = _new_uncleared(_T_U64)
            if _ar_put(seg._q, self._entry, data, len(data), 0, ttl_ns, mid) == AR_OK:
                return mid[0]
        return self._put(data, deadline, ttl_ns)

    def _wait_acked_impl(self, message_id, timeout=None):
        """Wait until message ``message_id`` is settled and say how: a Receipt
        (id, outcome, reason) with outcome "acked", "dead_lettered" (reason
        "rejected", "delivery_limit", "expired" or "lease_expired"), "dropped",
        or "settled" when its slot was reused before we looked (settled, how
        no longer recorded).  Raises TimeoutError at the timeout.  Waits on
        the queue's futex, not by polling."""
        message_id = _index(message_id, 64)
        self._check()
        seg = self._segment
        deadline = _deadline(timeout)
        outcome = _ffi_new(_T_U32)
        rc = lib.ar_wait_settled(seg._q, self._entry, message_id, 0, outcome)
        if rc == AR_EMPTY and deadline != 0:
            since = _now_ns()
            while True:
                rc = lib.ar_wait_settled(seg._q, self._entry, message_id, deadline, outcome)
                if rc != AR_AGAIN:
                    break
                seg._blocked(since)
                self._check()
        if rc == AR_EMPTY:
            raise TimeoutError("message %d was not settled within %r s" % (message_id, timeout))
        if rc == AR_INVAL:
            raise ValueError("no message %d was ever published to queue %r" % (message_id, seg._name))
        if rc != AR_OK:
            raise _error(rc, "wait_acked(%d)" % message_id)
        how, reason = _OUTCOMES.get(outcome[0], ("settled", None))
        return Receipt(message_id, how, reason)

    def _put_many_impl(self, messages, timeout=None, ttl=None):
        """Store several messages in order, in one C call; returns their ids.
        Every item is type- and size-checked before the first is written.
        ``timeout`` bounds the whole call; on Full, the exception's ``ids``
        lists the messages that were stored (confirmed) before it."""
        ttl_ns = _duration_ns(ttl, "ttl")
        self._check()
        seg = self._segment
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        deadline = _deadline(timeout)
        n = len(items)
        if n == 0:
            return []
        limit = seg._message_size
        vec = _ffi_new(_T_IOVECS, n)
        ids = _ffi_new(_T_U64S, n)
        keep = []   # the bytes / exported buffers the iovecs point into
        for i in range(n):
            m = items[i]
            if type(m) is not bytes and isinstance(m, str):
                raise TypeError("put_many() takes bytes-like items, not str (item %d)" % i)
            p = _from_buffer(m)   # zero-copy, bytes included
            keep.append(p)
            v = vec[i]
            v.data = p
            v.len = length = len(p)
            if length > limit:
                raise E.MessageTooLarge("item %d: a message of %d bytes exceeds message_size %d"
                                        % (i, length, limit))
        done = ffi.new("size_t *")
        rc = lib.ar_put_many(seg._q, self._entry, vec, n, 0, ttl_ns, ids, done)
        if rc == AR_FULL and deadline != 0:
            since = _now_ns()
            while True:
                rc = lib.ar_put_many(seg._q, self._entry, vec, n, deadline, ttl_ns, ids, done)
                if rc != AR_AGAIN:
                    break
                seg._blocked(since)
                self._check()
        while rc == AR_STALE and self._reattach():
            # our claim was discarded by a reclaim that judged us dead: that
            # message was not stored; go on from it under a new entry
            rc = lib.ar_put_many(seg._q, self._entry, vec, n, deadline, ttl_ns, ids, done)
        stored = list(ids[0:done[0]])
        if rc == AR_FULL:
            raise E.Full("put_many to queue %r: %d of %d stored before the timeout"
                         % (seg._name, done[0], n), ids=stored)
        if rc != AR_OK:
            raise _error(rc, "put_many to queue %r" % (seg._name,))
        return stored

    def _reserve_impl(self, size=-1, timeout=None, ttl=None):
        """Zero-copy send: claim a slot and write the message in place.

            with p.reserve(n) as buf:   # writable memoryview of n bytes
                buf[:] = ...
            # committed (published) here; aborted if the block raised

        ``size`` defaults to message_size.  Keep reservations short:
        consumers wait behind an open one."""
        size = _index(size, 64, signed=True)
        self._check()
        seg = self._segment
        if size < 0:
            size = seg._message_size
        if size > seg._message_size:
            raise E.MessageTooLarge("reserve(%d) exceeds message_size %d of queue %r"
                                    % (size, seg._message_size, seg._name))
        deadline = _deadline(timeout)
        pos = _ffi_new(_T_U64)
        buf = ffi.new("unsigned char **")
        rc = lib.ar_reserve(seg._q, self._entry, 0, pos, buf)
        if rc == AR_FULL and deadline != 0:
            since = _now_ns()
            while True:
                rc = lib.ar_reserve(seg._q, self._entry, deadline, pos, buf)
                if rc != AR_AGAIN:
                    break
                seg._blocked(since)
                self._check()
        if rc == AR_STALE and self._reattach():
            return self._reserve_impl(size, timeout, ttl)
        if rc != AR_OK:
            raise _error(rc, "reserve in queue %r" % (seg._name,))
        r = object.__new__(Reservation)
        r._producer, r._pos, r._buf, r._size, r._gen = self, pos[0], buf[0], size, self._gen
        r._done = False
        r._view = None
        r._ttl_ns = _duration_ns(ttl, "ttl")
        return r


class Reservation:
    """A claimed slot being written in place (see Producer.reserve)."""

    __slots__ = ("_producer", "_pos", "_buf", "_size", "_gen", "_ttl_ns", "_done", "_view")

    done = _readonly("_done")

    def __init__(self):
        raise TypeError("reservations come from Producer.reserve()")

    @property
    def id(self):
        """The message id it will have (its ring position)."""
        return self._pos

    def __len__(self):
        return self._size

    def view(self):
        """A writable memoryview of the reserved payload area, valid until
        commit/abort (what ``memoryview(r)`` gives where Python classes can
        export buffers)."""
        if self._done:
            raise E.AlreadySettled("reservation %d was committed or aborted" % self._pos)
        return memoryview(_ffi_buffer(_kept(self._buf, self), self._size))

    def __buffer__(self, flags):
        return self.view()

    def _hold(self, _ptr):
        pass  # see _kept()

    def _finish(self, commit, length):
        p = self._producer
        if self._done:
            raise E.AlreadySettled("reservation %d was already committed or aborted" % self._pos)
        if self._gen != _fork_gen:
            raise E.StaleDelivery("reservation %d belongs to the parent process" % self._pos)
        if p._closed or p._segment._closed:
            self._done = True
            lib.ar_abort(p._segment._q, p._entry, self._pos)
            p._busy_leave()
            raise E.QueueClosed("the producer of reservation %d is closed (the slot was discarded)" % self._pos)
        if commit and not 0 <= length <= self._size:
            raise ValueError("commit length must be from 0 to %d, not %d" % (self._size, length))
        if self._view is not None:
            try:
                self._view.release()  # the in-place view dies with the reservation
            except BufferError:
                pass  # the caller still holds exports of it; they point at a slot no longer ours
            self._view = None
        q = p._segment._q
        if commit:
            rc = lib.ar_commit(q, p._entry, self._pos, length, self._ttl_ns)
        else:
            rc = lib.ar_abort(q, p._entry, self._pos)
        self._done = True
        p._busy_leave()
        if rc != AR_OK:
            raise _error(rc, "%s reservation %d" % ("commit" if commit else "abort", self._pos))

    def commit(self, length=None):
        """Publish the first ``length`` bytes (default: the reserved size); returns the id."""
        self._finish(True, self._size if length is None else _index(length, 64, signed=True))
        return self._pos

    def abort(self):
        """Give the slot back unpublished."""
        self._finish(False, 0)

    def __del__(self):
        # Dropped without commit or abort: abort, or consumers would wait
        # behind the slot for the rest of the producer's life.
        try:
            p = self._producer
            if not self._done and self._gen == _fork_gen:
                self._done = True
                lib.ar_abort(p._segment._q, p._entry, self._pos)
                p._busy_leave()
        except Exception:
            pass  # interpreter shutdown, or a half-built reservation

    def __enter__(self):
        self._view = self.view()
        return self._view

    def __exit__(self, exc_type, exc, tb):
        if not self._done:
            if exc_type is None:
                self.commit()
            else:
                self.abort()
        return False


class Consumer(_Client):
    __slots__ = ("_prefetch", "_outstanding", "_lease_ns")

    prefetch = _readonly("_prefetch")           # 0: unlimited
    outstanding = _readonly("_outstanding")     # delivered to us, not yet settled

    def __init__(self, segment, prefetch=None, ack_timeout=None):
        _check_segment_arg(segment)
        if prefetch is not None and (isinstance(prefetch, bool) or int(prefetch) < 1):
            raise ValueError("prefetch must be None or an int >= 1, not %r" % (prefetch,))
        self._closed = False
        self._busy = 0
        self._close_pending = False
        self._outstanding = 0
        self._prefetch = 0 if prefetch is None else int(prefetch)
        self._lease_ns = _duration_ns(ack_timeout, "ack_timeout")
        self._segment = segment
        self._role = AR_ROLE_CONSUMER
        self._take_entry()

    def close(self):
        """Release the process-table entry; unsettled deliveries are requeued."""
        _Client.close(self)
        self._outstanding = 0

    def _allowance(self, n):
        """How many of n more messages prefetch allows; raises at once if none."""
        if self._prefetch == 0:
            return n
        if self._outstanding >= self._prefetch:
            raise E.PrefetchExceeded(
                "consumer holds %d unsettled message(s), its prefetch limit: settle one first"
                % self._outstanding)
        return min(n, self._prefetch - self._outstanding)

    def _get(self, d, deadline, rc=None):
        """Into d, or raise; rc: the status of a non-blocking attempt already made."""
        seg = self._segment
        if rc is None:
            rc = _ar_get(seg._q, self._entry, d, 0, self._lease_ns)
        if rc == AR_EMPTY and deadline != 0:
            since = _now_ns()
            while True:
                rc = _ar_get(seg._q, self._entry, d, deadline, self._lease_ns)
                if rc != AR_AGAIN:
                    break
                seg._blocked(since)
                self._check()
        if rc == AR_STALE:  # our entry was closed or reclaimed while we waited
            if self._reattach():
                return self._get(d, deadline)
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (seg._name,))
        if self._closed:
            # closed by another thread while we waited, and the index already
            # reused by a new client of this process: give the message back
            lib.ar_nack(seg._q, (d.word >> 4) & 0xFFF, d, 1)
            self._check()

    def _message(self, d, copy, owner=None):
        m = _new_message(Message)
        m._consumer = self
        m._d = d
        m._owner = owner
        m._gen = self._gen
        m._settled = False
        self._outstanding += 1
        m._body = _ffi_buffer(d.data, d.len)[:] if copy else None
        return m

    def _get_impl(self, timeout=None, copy=True):
        """Receive one message (it stays in the queue until settled).  Waits
        up to ``timeout`` seconds (None: no limit), then raises ackring.Empty.
        With copy=False the body is not copied now: read it through
        ``memoryview(m)`` (``m.view()``) or ``m.body`` before settling."""
        seg = self._segment
        if self._closed or seg._closed or self._gen != _fork_gen:
            self._check()
        if self._prefetch:
            self._allowance(1)
        deadline = AR_NO_DEADLINE if timeout is None else _deadline(timeout)
        d = _new_uncleared(_T_DELIVERY)
        rc = _ar_get(seg._q, self._entry, d, 0, self._lease_ns)
        if rc != AR_OK:
            self._get(d, deadline, rc)   # the general way: waits, reattaches or raises
        elif self._closed:
            # closed by another thread during the C call (cffi drops the GIL
            # around it): give the message back
            lib.ar_nack(seg._q, (d.word >> 4) & 0xFFF, d, 1)
            self._check()
        # as _message(d, copy), inlined
        m = _new_message(Message)
        m._consumer = self
        m._d = d
        m._owner = None
        m._gen = self._gen
        m._settled = False
        self._outstanding += 1
        m._body = _ffi_buffer(d.data, d.len)[:] if copy else None
        return m

    def _get_many_impl(self, n, timeout=None, copy=True):
        """Up to n messages in one C call: waits (up to ``timeout``) for the
        first, then takes whatever else is ready without waiting."""
        n = _index(n, 64, signed=True)
        if n < 1:
            raise ValueError("get_many() needs n >= 1")
        self._check()
        seg = self._segment
        n = self._allowance(n)
        deadline = _deadline(timeout)
        ds = _new_uncleared(_T_DELIVERIES, n)
        got = ffi.new("size_t *")
        rc = lib.ar_get_many(seg._q, self._entry, ds, n, 0, self._lease_ns, got)
        if rc == AR_EMPTY and deadline != 0:
            since = _now_ns()
            while True:
                rc = lib.ar_get_many(seg._q, self._entry, ds, n, deadline, self._lease_ns, got)
                if rc != AR_AGAIN:
                    break
                seg._blocked(since)
                self._check()
        # Each message points into ds and keeps it alive.
        g = got[0]
        if self._closed:
            # closed by another thread meanwhile: give back what we took
            for i in range(g):
                lib.ar_nack(seg._q, (ds[i].word >> 4) & 0xFFF, ds + i, 1)
            self._check()
        out = [self._message(ds + i, copy, ds) for i in range(g)]
        if rc == AR_STALE and self._reattach():
            if g:
                return out  # keep what we hold; the next call uses the new entry
            return self.get_many(n, timeout, copy)
        if rc != AR_OK:
            raise _error(rc, "get from queue %r" % (seg._name,))
        return out

    def ack_many(self, messages):
        """Ack a batch in one C call (RabbitMQ's multiple=True).  Every item
        must be an unsettled message of this consumer, else nothing is acked.
        Deliveries found stale are skipped and reported by StaleDelivery
        (its ``ids``) after the rest are acked."""
        self._check()
        items = messages if isinstance(messages, (list, tuple)) else list(messages)
        n = len(items)
        for m in items:
            if not isinstance(m, Message):
                raise TypeError("ack_many() takes Message objects, not %s" % type(m).__name__)
            if m._consumer is not self:
                raise ValueError("message %d was delivered to another consumer" % m._d.pos)
            if m._settled:
                raise E.AlreadySettled("message %d was already settled" % m._d.pos)
            if m._gen != _fork_gen:
                raise E.StaleDelivery("message %d was delivered to the parent process before fork" % m._d.pos)
        # Duplicates: the last repeat found is the one reported.
        dup = -1
        seen = set()
        for m in items:
            if id(m) in seen:
                dup = m._d.pos
            seen.add(id(m))
        if dup >= 0:
            raise E.AlreadySettled("ack_many() got message %d twice" % dup)
        if n == 0:
            return
        ds = _ffi_new(_T_DELIVERIES, n)
        rcs = _ffi_new(_T_INTS, n)
        for i in range(n):
            ds[i] = items[i]._d[0]
        lib.ar_ack_many(self._segment._q, self._entry, ds, n, rcs)
        stale = []
        for i in range(n):
            m = items[i]
            m._settled = True
            self._outstanding -= 1
            if rcs[i] != AR_OK:
                stale.append(m._d.pos)
        if stale:
            exc = E.StaleDelivery("%d of %d deliveries were no longer current: %r" % (len(stale), n, stale))
            exc.ids = stale
            raise exc

    def __iter__(self):
        return self

    def __next__(self):
        if self._closed or self._segment._closed:
            raise StopIteration
        try:
            return self.get()
        except E.QueueClosed:
            raise StopIteration


class Message:
    """One delivery.  Settle it exactly once: ack(), or nack(requeue=...)."""

    __slots__ = ("_consumer", "_d", "_owner", "_gen", "_body", "_settled")

    settled = _readonly("_settled")

    def __init__(self):
        raise TypeError("messages come from Consumer.get()")

    @property
    def id(self):
        """The message id: its ring position, unique for the queue's life and
        the same on every redelivery."""
        return self._d.pos

    @property
    def delivery_count(self):
        return self._d.delivery_count

    @property
    def redelivered(self):
        return self._d.delivery_count > 1

    @property
    def publish_time_ns(self):
        """CLOCK_REALTIME nanoseconds when the message was published."""
        return self._d.publish_ns

    @property
    def body(self):
        if self._body is None:
            d = self._d
            if self._settled:
                raise E.AlreadySettled("message %d was settled before its body was read; "
                                       "use get(copy=True)" % d.pos)
            self._body = _ffi_buffer(d.data, d.len)[:]
        return self._body

    def __len__(self):
        return self._d.len

    def __repr__(self):
        d = self._d
        return "<ackring.Message id=%d len=%d delivery_count=%d%s>" % (
            d.pos, d.len, d.delivery_count, " settled" if self._settled else "")

    def view(self):
        """A read-only, zero-copy memoryview of the payload in the segment,
        valid until the message is settled (what ``memoryview(m)`` gives where
        Python classes can export buffers).  AlreadySettled once settled."""
        d = self._d
        if self._settled:
            raise E.AlreadySettled("message %d is settled; its slot may hold another message" % d.pos)
        return memoryview(_ffi_buffer(_kept(d.data, self), d.len)).toreadonly()

    def __buffer__(self, flags):
        if self._settled:
            raise E.AlreadySettled("message %d is settled; its slot may hold another message" % self._d.pos)
        if flags & 1:   # PyBUF_WRITABLE
            raise BufferError("a message's payload is read-only")
        return self.view()

    def _hold(self, _ptr):
        pass  # see _kept()

    def _settle(self, how):
        # how: 0 ack, 1 nack+requeue, 2 nack drop
        d = self._d
        if self._settled:
            raise E.AlreadySettled("message %d was already settled" % d.pos)
        c = self._consumer
        seg = c._segment
        if c._closed or seg._closed:
            raise E.QueueClosed("the consumer of message %d is closed (its deliveries were requeued)"
                                % d.pos)
        if self._gen != _fork_gen:
            self._settled = True
            raise E.StaleDelivery("message %d was delivered to the parent process before fork" % d.pos)
        seg._refresh()
        if how == 0:
            rc = _ar_ack(seg._q, c._entry, d)
        else:
            rc = _ar_nack(seg._q, c._entry, d, how == 1)
        self._settled = True
        c._outstanding -= 1
        if rc != AR_OK:
            raise _settle_error(rc, d.pos)

    def ack(self):
        """The message is done: it leaves the queue."""
        c = self._consumer
        seg = c._segment
        if self._settled or c._closed or seg._closed or self._gen != _fork_gen:
            return self._settle(0)   # raises
        # as _settle(0), inlined
        if seg._dlq is not None:
            seg._refresh()
        rc = _ar_ack(seg._q, c._entry, self._d)
        self._settled = True
        c._outstanding -= 1
        if rc != AR_OK:
            raise _settle_error(rc, self._d.pos)

    def nack(self, requeue=True):
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
        ns = _duration_ns(seconds, "seconds")
        d = self._d
        if ns == 0:
            raise ValueError("extend() needs a number of seconds > 0")
        if self._settled:
            raise E.AlreadySettled("message %d was already settled" % d.pos)
        c = self._consumer
        if c._closed or c._segment._closed:
            raise E.QueueClosed("the consumer of message %d is closed" % d.pos)
        rc = lib.ar_extend(c._segment._q, c._entry, d, ns)
        if rc == AR_STALE:
            raise E.StaleDelivery("message %d: its lease ran out and it was taken back" % d.pos)
        if rc != AR_OK:
            raise _error(rc, "extend message %d" % d.pos)

    @property
    def key(self):
        """(queue_id, id): unique over the queue's whole life and across
        re-creations of a queue of the same name.  Key an idempotent consumer
        on it."""
        return (self._consumer._segment.queue_id, self._d.pos)

    @property
    def death(self):
        """On a dead-letter queue: why and how the message died, as a dict
        (reason, id, queue_id, delivery_count, first_publish_time, time);
        None on other queues."""
        d = self._d
        if d.dead_reason == 0:
            return None
        return {"reason": REASONS.get(d.dead_reason, "unknown(%d)" % d.dead_reason),
                "id": d.dead_original_id, "queue_id": d.dead_queue_id,
                "delivery_count": d.dead_delivery_count,
                "first_publish_time": d.dead_publish_ns / 1e9,
                "time": d.dead_ns / 1e9}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False


_new_message = object.__new__


def _settle_error(rc, pos):
    if rc == AR_STALE:
        return E.StaleDelivery("message %d: this delivery is no longer current" % pos)
    return _error(rc, "settle message %d" % pos)


def set_test_hook(point):
    """Test-only: SIGSTOP this process at a named point inside a critical
    window (see ar_set_test_hook in ext/ackring.h).  None or "" turns it off."""
    b = (point or "").encode("ascii")
    if lib.ar_set_test_hook(b) != AR_OK:
        raise ValueError("unknown test hook point %r" % (point,))



def _wrap_busy(cls, name, keep_on_success=False):
    """Give cls.name (from cls._name_impl) the busy bracket of _Client."""
    impl = getattr(cls, "_%s_impl" % name)

    def method(self, *args, **kwargs):
        self._busy_enter()
        ok = False
        try:
            result = impl(self, *args, **kwargs)
            ok = True
            return result
        finally:
            if not (ok and keep_on_success):
                self._busy_leave()

    method.__name__ = name
    method.__qualname__ = "%s.%s" % (cls.__name__, name)
    method.__doc__ = impl.__doc__
    setattr(cls, name, method)


for _n in ("put", "wait_acked", "put_many"):
    _wrap_busy(Producer, _n)
# an open reservation stays "busy" until commit/abort/collection
_wrap_busy(Producer, "reserve", keep_on_success=True)
for _n in ("get", "get_many"):
    _wrap_busy(Consumer, _n)
