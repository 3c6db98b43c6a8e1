"""The transports ``ackring bench`` measures.

Every peer runs the same three kinds of job (``harness`` owns the processes):

- SPSC throughput: one producer puts ``n`` messages, one consumer takes
  exactly ``n`` (then checks nothing is left over);
- MPMC throughput: P producers split ``n``; when all are done they set a
  shared event; a consumer whose ``get`` comes back empty after a short wait
  (POLL_SLICE) posts its count to a shared array, and stops once the event is
  set and the counts add up to ``n``.  Its end time is the start of the first
  empty wait after its last message.  (End markers in the queue would be
  exact for a single FIFO, but not for pyzmq, which keeps one pipe per
  consumer.)
- latency: a driver puts a message on "ping" and waits for the echo on
  "pong", timing each round trip with ``time.perf_counter_ns``; the echo
  process gets, puts the reply, then acks (where there are acks).

ackring has hand-written loops (it is what is being measured, so its loops
must be as tight as they can be: methods bound to locals, nothing allocated
per message beyond what the API returns).  The other peers plug a small
``Ends`` (put / get / poll / nowait callables bound in the child) into
shared generic loops.

Peers are registered in ``PEERS``; a peer whose module is missing is skipped
with a note, and a peer's ``setup`` raises ``Skip`` for a configuration it
cannot run (e.g. posix_ipc above the kernel's message-size limit).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import queue as _queue
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from .common import BenchError, Clock, Params, Skip, now_ns, payload

# How long an MPMC consumer blocks before it looks at the stop event.
POLL_SLICE = 0.02
_POLL_SLICE_NS = int(POLL_SLICE * 1e9)

SPSC, MPMC, LATENCY = "spsc", "mpmc", "latency"
ALL_MODES = frozenset((SPSC, MPMC, LATENCY))


def _token() -> str:
    return "%d-%s" % (os.getpid(), secrets.token_hex(4))


def _short(i: int, n: int, what: str = "messages") -> BenchError:
    return BenchError("consumer got only %d of %d %s before a get timed out" % (i, n, what))


def _put_timeout(i: int, n: int, timeout: float) -> BenchError:
    return BenchError("producer put only %d of %d messages: the next put timed out after %gs" % (i, n, timeout))


class _McEnd:
    """End-of-run bookkeeping of an MPMC consumer, called after each burst of
    gets that ended in an empty wait: publishes this consumer's count, notes
    when it last made progress, and says when the run is over (producers
    done and the consumers' counts add up) or has hung (no progress for
    params.timeout)."""

    def __init__(self, params: Params, clock: Clock, idx: int) -> None:
        self.n, self.timeout, self.clock, self.idx = params.messages, params.timeout, clock, idx
        self.seen = -1  # count at the previous empty wait
        self.t_last: Optional[int] = None
        self.give_up = time.monotonic() + params.timeout

    def over(self, count: int) -> bool:
        now = time.monotonic()
        counts = self.clock.counts
        if count != self.seen:
            self.seen = count
            self.t_last = now_ns() - _POLL_SLICE_NS
            self.give_up = now + self.timeout
            counts[self.idx] = count
        if self.clock.stop_event.is_set() and sum(counts) >= self.n:
            return True
        if now > self.give_up:
            raise _short(sum(counts), self.n) from None
        return False

    def stop(self) -> None:
        self.clock.stop(max(self.t_last, self.clock.t_start or 0))



def _check_body(body: Any, size: int, where: str) -> None:
    if bytes(body) != payload(size):
        raise BenchError("%s arrived with a wrong payload (%d bytes, expected %d)" % (where, len(body), size))


# =========================================================================== ackring


def _ackring_setup(params: Params) -> Tuple[Any, Callable[[], None]]:
    import ackring

    base = "bench-" + _token()
    names = [base + "-ping", base + "-pong"] if params.mode == LATENCY else [base]
    created: List[str] = []

    def cleanup() -> None:
        for n in created:
            ackring.unlink(n, missing_ok=True)

    try:
        for n in names:
            q = ackring.create(n, capacity=params.capacity, message_size=max(params.size, 1))
            created.append(n)
            # The children open the queue by name; the parent keeps no handle.
            q.close()
    except BaseException:
        cleanup()
        raise
    return names, cleanup


def _ackring_verify(names: List[str], params: Params) -> Optional[str]:
    """After a throughput run: the segment's own counters must agree."""
    import ackring

    with ackring.open(names[0]) as q:
        st = q.stats()
    expect = params.messages
    problems = []
    if st.get("published") != expect:
        problems.append("published %s, expected %d" % (st.get("published"), expect))
    if st.get("acked") != expect:
        problems.append("acked %s, expected %d" % (st.get("acked"), expect))
    if st.get("depth") or st.get("in_flight"):
        problems.append("depth %s / in_flight %s left over" % (st.get("depth"), st.get("in_flight")))
    return "; ".join(problems) or None


def _reserve_fn(p: Any, size: int, timeout: float) -> Optional[Callable[[], Any]]:
    """A zero-arg callable returning p.reserve(size[, timeout]) if the producer
    has reserve(), else None."""
    reserve = getattr(p, "reserve", None)
    if reserve is None:
        return None
    try:
        import inspect

        sig = inspect.signature(reserve)
        if "timeout" in sig.parameters:
            return functools.partial(reserve, size, timeout=timeout)
    except (TypeError, ValueError):  # C method without a signature: try the keyword
        return functools.partial(reserve, size, timeout=timeout)
    return functools.partial(reserve, size)


def _ackring_produce(names: List[str], params: Params, clock: Clock, idx: int) -> dict:
    import ackring

    n = params.share(idx)
    size = params.size
    data = payload(size)
    timeout = params.timeout
    api = "put"
    with ackring.open(names[0]) as q, q.producer() as p:
        clock.sync()
        reserve = _reserve_fn(p, size, timeout) if params.zero_copy else None
        if params.batch > 1:
            # put_batch: the ids come back as one array, no Python int per message
            put_vec = getattr(p, "put_batch", p.put_many)   # put_many: an ackring without put_batch
            api = "%s(%d)" % (put_vec.__name__, params.batch)
            chunk = [data] * params.batch
            full, rest = divmod(n, params.batch)
            tail = chunk[:rest]
            clock.start()
            for _ in range(full):
                put_vec(chunk, timeout=timeout)
            if rest:
                put_vec(tail, timeout=timeout)
        elif reserve is not None:
            api = "reserve"
            clock.start()
            for _ in range(n):
                with reserve() as buf:
                    buf[:size] = data
        else:
            put = p.put
            clock.start()
            for _ in range(n):
                put(data, timeout=timeout)
        if params.mode == MPMC:
            clock.producers_done()
    return {"api": api}


def _ackring_consume(names: List[str], params: Params, clock: Clock, idx: int) -> dict:
    import ackring

    with ackring.open(names[0]) as q, q.consumer() as c:
        clock.sync()
        if params.mode == MPMC:
            count, api = _ackring_consume_until_counted(c, params, clock, idx)
        else:
            count, api = _ackring_consume_exact(c, params, clock)
        # Anything still there is a miscount.
        extra = 0
        get = c.get
        while True:
            try:
                m = get(timeout=0)
            except _queue.Empty:
                break
            if len(m):
                extra += 1
            m.ack()
    return {"count": count + extra, "api": api}


def _ackring_consume_exact(c: Any, params: Params, clock: Clock) -> Tuple[int, str]:
    n = params.messages
    size = params.size
    timeout = params.timeout
    copy = not params.zero_copy
    get = c.get
    got = 0
    if params.batch > 1 and copy and hasattr(c, "get_batch"):
        # One Batch object per batch, no Python object per message, one ack.
        batch = params.batch
        get_batch = c.get_batch
        api = "get_batch(%d)+Batch.ack" % batch
        clock.start()
        try:
            while got < n:
                b = get_batch(min(batch, n - got), timeout=timeout)
                k = len(b)
                got += k
                if got >= n:
                    _check_body(b[k - 1], size, "the last message")
                b.ack()
        except _queue.Empty:
            raise _short(got, n) from None
        clock.stop()
        return got, api
    if params.batch > 1:
        batch = params.batch
        get_many = c.get_many
        ack_many = getattr(c, "ack_many", None)
        api = "get_many(%d)+%s%s" % (batch, "ack_many" if ack_many else "ack", "" if copy else "+memoryview")
        clock.start()
        try:
            while got < n:
                ms = get_many(min(batch, n - got), timeout=timeout, copy=copy)
                got += len(ms)
                if got >= n:
                    _check_body(memoryview(ms[-1]) if not copy else ms[-1].body, size, "the last message")
                if not copy:
                    for m in ms:
                        with memoryview(m) as v:
                            v[-1]
                if ack_many is not None:
                    ack_many(ms)
                else:
                    for m in ms:
                        m.ack()
        except _queue.Empty:
            raise _short(got, n) from None
        clock.stop()
        return got, api
    if copy:
        api = "get+ack"
        clock.start()
        try:
            for got in range(n - 1):
                get(timeout=timeout).ack()
            got = n - 1
            last = get(timeout=timeout)
        except _queue.Empty:
            raise _short(got, n) from None
        body = last.body
        last.ack()
        clock.stop()
        _check_body(body, size, "the last message")
        return n, api
    api = "get(copy=False)+memoryview+ack"
    clock.start()
    try:
        for got in range(n - 1):
            m = get(timeout=timeout, copy=False)
            with memoryview(m) as v:
                v[-1]
            m.ack()
        got = n - 1
        last = get(timeout=timeout, copy=False)
    except _queue.Empty:
        raise _short(got, n) from None
    with memoryview(last) as v:
        v[-1]
        ok = v == payload(size)
    last.ack()
    clock.stop()
    if not ok:
        raise BenchError("the last message arrived with a wrong payload")
    return n, api


def _ackring_consume_until_counted(c: Any, params: Params, clock: Clock, idx: int) -> Tuple[int, str]:
    """MPMC: take and ack until the producers are done and the consumers'
    counts add up (see the module docstring)."""
    copy = not params.zero_copy
    get = c.get
    count = 0
    end = _McEnd(params, clock, idx)
    get_batch = getattr(c, "get_batch", None) if copy else None
    if params.batch > 1:
        batch = params.batch
        if get_batch is not None:
            api = "get_batch(%d)+Batch.ack" % batch
        else:
            get_many = c.get_many
            ack_many = getattr(c, "ack_many", None)
            api = "get_many(%d)+%s%s" % (batch, "ack_many" if ack_many else "ack", "" if copy else "+memoryview")
    else:
        batch = 0
        api = "get+ack" if copy else "get(copy=False)+memoryview+ack"
    clock.start()
    while True:
        try:
            if batch and get_batch is not None:
                while True:
                    b = get_batch(batch, timeout=POLL_SLICE)
                    count += len(b)
                    b.ack()
            elif batch:
                while True:
                    ms = get_many(batch, timeout=POLL_SLICE, copy=copy)
                    if not copy:
                        for m in ms:
                            with memoryview(m) as v:
                                v[-1]
                    count += len(ms)
                    if ack_many is not None:
                        ack_many(ms)
                    else:
                        for m in ms:
                            m.ack()
            elif copy:
                while True:
                    get(timeout=POLL_SLICE).ack()
                    count += 1
            else:
                while True:
                    m = get(timeout=POLL_SLICE, copy=False)
                    with memoryview(m) as v:
                        v[-1]
                    m.ack()
                    count += 1
        except _queue.Empty:
            pass
        if end.over(count):
            break
    end.stop()
    return count, api


def _spin_get(c: Any, copy: bool) -> Callable[..., Any]:
    """get() that busy-polls with timeout=0 (the --spin latency variant)."""
    raw = c.get
    Empty = _queue.Empty

    def get(timeout: Any = None, copy: bool = copy) -> Any:
        while True:
            try:
                return raw(timeout=0, copy=copy)
            except Empty:
                pass

    return get


def _ackring_ping(names: List[str], params: Params, clock: Clock, idx: int) -> dict:
    import ackring

    data = payload(params.size)
    timeout = params.timeout
    copy = not params.zero_copy
    rounds = params.messages
    samples = [0] * rounds
    pc = time.perf_counter_ns
    with ackring.open(names[0]) as qa, ackring.open(names[1]) as qb, qa.producer() as p, qb.consumer() as c:
        put, get = p.put, (_spin_get(c, copy) if params.spin else c.get)
        clock.sync()
        clock.start()
        try:
            for _ in range(params.warmup):
                put(data, timeout=timeout)
                get(timeout=timeout, copy=copy).ack()
            put(data, timeout=timeout)
            m = get(timeout=timeout, copy=copy)
            _check_body(memoryview(m) if not copy else m.body, params.size, "the echo")
            m.ack()
            if copy:
                for i in range(rounds):
                    t0 = pc()
                    put(data, timeout=timeout)
                    get(timeout=timeout).ack()
                    samples[i] = pc() - t0
            else:
                for i in range(rounds):
                    t0 = pc()
                    put(data, timeout=timeout)
                    m = get(timeout=timeout, copy=False)
                    with memoryview(m) as v:
                        v[-1]
                    m.ack()
                    samples[i] = pc() - t0
        except _queue.Empty:
            raise BenchError("an echo did not come back within %gs" % timeout) from None
        clock.stop()
    api = "put / get+ack" if copy else "put / get(copy=False)+ack"
    return {"samples": samples, "api": api + (" (spinning get(timeout=0))" if params.spin else "")}


def _ackring_echo(names: List[str], params: Params, clock: Clock, idx: int) -> dict:
    import ackring

    timeout = params.timeout
    total = params.warmup + 1 + params.messages
    with ackring.open(names[0]) as qa, ackring.open(names[1]) as qb, qa.consumer() as c, qb.producer() as p:
        put, get = p.put, (_spin_get(c, not params.zero_copy) if params.spin else c.get)
        clock.sync()
        clock.start()
        try:
            if params.zero_copy:
                # The reply is written straight from the request's slot.
                for _ in range(total):
                    m = get(timeout=timeout, copy=False)
                    put(m, timeout=timeout)
                    m.ack()
            else:
                for _ in range(total):
                    m = get(timeout=timeout)
                    put(m.body, timeout=timeout)
                    m.ack()
        except _queue.Empty:
            raise BenchError("echo: a ping did not arrive within %gs" % timeout) from None
    return {}


# ====================================================================== generic peers


@dataclass
class Ends:
    """One child's side of a non-ackring peer, bound to locals by the loops.

    put(data)      blocking put (bounded by params.timeout where the peer can)
    get()          blocking get, raises one of ``empty`` after params.timeout
                   (put raises one of ``full`` where it has a timeout)
    poll()         get that gives up after POLL_SLICE (MPMC consumers)
    nowait()       non-blocking get (leftover check)
    body(x)        bytes of a received item (for verification only)
    put_many(list) / get_many() -> list: batch API, when the peer has one
    """

    put: Optional[Callable[[Any], Any]] = None
    get: Optional[Callable[[], Any]] = None
    poll: Optional[Callable[[], Any]] = None
    nowait: Optional[Callable[[], Any]] = None
    empty: Tuple[type, ...] = (_queue.Empty,)
    full: Tuple[type, ...] = (_queue.Full,)  # what a put that timed out raises
    body: Callable[[Any], Any] = bytes
    put_many: Optional[Callable[[List[bytes]], Any]] = None
    get_many: Optional[Callable[[], List[Any]]] = None
    closers: List[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        for f in reversed(self.closers):
            try:
                f()
            except Exception:
                pass


def _generic_produce(ends: Ends, params: Params, clock: Clock, idx: int) -> dict:
    n = params.share(idx)
    data = payload(params.size)
    if params.batch > 1 and ends.put_many is not None:
        api = "put_many(%d)" % params.batch
        put_many = ends.put_many
        chunk = [data] * params.batch
        full, rest = divmod(n, params.batch)
        tail = chunk[:rest]
        clock.start()
        i = 0
        try:
            for i in range(full):
                put_many(chunk)
            i = full
            if rest:
                put_many(tail)
        except ends.full:
            raise _put_timeout(i * params.batch, n, params.timeout) from None
    else:
        api = "put"
        put = ends.put
        clock.start()
        i = 0
        try:
            for i in range(n):
                put(data)
        except ends.full:
            raise _put_timeout(i, n, params.timeout) from None
    if params.mode == MPMC:
        clock.producers_done()
    return {"api": api}


def _generic_consume(ends: Ends, params: Params, clock: Clock, idx: int) -> dict:
    n = params.messages
    empty = ends.empty
    got = 0
    batched = params.batch > 1 and ends.get_many is not None
    api = "get_many(%d)" % params.batch if batched else "get"
    if params.mode == MPMC:
        poll = ends.poll
        end = _McEnd(params, clock, idx)
        clock.start()
        while True:
            try:
                while True:
                    poll()
                    got += 1
            except empty:
                pass
            if end.over(got):
                break
        end.stop()
    elif batched:
        get_many = ends.get_many
        last = None
        clock.start()
        try:
            while got < n:
                xs = get_many()
                got += len(xs)
                last = xs[-1]
        except empty:
            raise _short(got, n) from None
        clock.stop()
        _check_body(ends.body(last), params.size, "the last message")
    else:
        get = ends.get
        clock.start()
        try:
            for got in range(n - 1):
                get()
            got = n - 1
            last = get()
        except empty:
            raise _short(got, n) from None
        clock.stop()
        _check_body(ends.body(last), params.size, "the last message")
        got = n
    # Anything still there is a miscount.
    nowait = ends.nowait
    while True:
        try:
            x = nowait()
        except empty:
            break
        if isinstance(x, list):
            got += sum(1 for y in x if len(y))
        elif len(x):
            got += 1
    return {"count": got, "api": api}


def _generic_ping(ends: Ends, params: Params, clock: Clock, idx: int) -> dict:
    data = payload(params.size)
    put, get = ends.put, ends.get
    rounds = params.messages
    samples = [0] * rounds
    pc = time.perf_counter_ns
    clock.start()
    try:
        for _ in range(params.warmup):
            put(data)
            get()
        put(data)
        _check_body(ends.body(get()), params.size, "the echo")
        for i in range(rounds):
            t0 = pc()
            put(data)
            get()
            samples[i] = pc() - t0
    except ends.empty:
        raise BenchError("an echo did not come back within %gs" % params.timeout) from None
    clock.stop()
    return {"samples": samples, "api": "put / get"}


def _generic_echo(ends: Ends, params: Params, clock: Clock, idx: int) -> dict:
    put, get = ends.put, ends.get
    clock.start()
    try:
        for _ in range(params.warmup + 1 + params.messages):
            put(get())
    except ends.empty:
        raise BenchError("echo: a ping did not arrive within %gs" % params.timeout) from None
    return {}


def _generic_role(opener: Callable[..., Ends], job: Callable[[Ends, Params, Clock, int], dict]) -> Callable:
    """Turn ``opener(handle, params, role, idx, clock) -> Ends`` into a role function.
    The opener must call ``clock.sync()`` exactly once."""

    def run(handle: Any, params: Params, clock: Clock, idx: int, role: str) -> dict:
        ends = opener(handle, params, role, idx, clock)
        try:
            return job(ends, params, clock, idx)
        finally:
            ends.close()

    return run


# ----------------------------------------------------------------- multiprocessing.Queue


def _mpq_setup(params: Params, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    qs = [ctx.Queue(maxsize=params.capacity) for _ in range(2 if params.mode == LATENCY else 1)]

    def cleanup() -> None:
        for q in qs:
            q.close()
            q.join_thread()

    return qs, cleanup


def _mpq_open(qs: List[Any], params: Params, role: str, idx: int, clock: Clock) -> Ends:
    t = params.timeout
    src, dst = qs[0], qs[0]
    if role == "ping":
        src, dst = qs[1], qs[0]
    elif role == "echo":
        src, dst = qs[0], qs[1]
    clock.sync()
    return Ends(
        put=functools.partial(dst.put, block=True, timeout=t),
        get=functools.partial(src.get, True, t),
        poll=functools.partial(src.get, True, POLL_SLICE),
        nowait=functools.partial(src.get, True, 0.05),
    )


# ------------------------------------------------------------------ multiprocessing.Pipe


def _pipe_setup(params: Params, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    if params.mode == LATENCY:
        a, b = ctx.Pipe(duplex=True)
        conns = (a, b)
    else:
        r, w = ctx.Pipe(duplex=False)
        conns = (r, w)

    def cleanup() -> None:
        for c in conns:
            c.close()

    return conns, cleanup


class _PipeTimeout(Exception):
    pass


def _pipe_open(conns: Tuple[Any, Any], params: Params, role: str, idx: int, clock: Clock) -> Ends:
    if params.mode == LATENCY:
        mine = conns[0] if role == "ping" else conns[1]
        rx = tx = mine
    else:
        rx, tx = conns
    # recv_bytes has no timeout: hangs are caught by the parent's deadline.
    recv, poll = rx.recv_bytes, rx.poll

    def nowait() -> bytes:
        if not poll(0.05):
            raise _PipeTimeout
        return recv()

    clock.sync()
    return Ends(put=tx.send_bytes, get=recv, poll=recv, nowait=nowait, empty=(_PipeTimeout,))


# ------------------------------------------------------------------------- faster-fifo


def _ff_setup(params: Params, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    import faster_fifo

    # Same depth as the others where memory allows; a message is pickled bytes.
    per = params.size + 64
    nbytes = max(min(params.capacity * per, 256 << 20), 4 * per + 4096)
    qs = [faster_fifo.Queue(max_size_bytes=nbytes) for _ in range(2 if params.mode == LATENCY else 1)]

    def cleanup() -> None:
        for q in qs:
            q.close()

    return qs, cleanup


def _ff_open(qs: List[Any], params: Params, role: str, idx: int, clock: Clock) -> Ends:
    t = params.timeout
    src, dst = qs[0], qs[0]
    if role == "ping":
        src, dst = qs[1], qs[0]
    elif role == "echo":
        src, dst = qs[0], qs[1]
    batch = max(params.batch, 1)
    clock.sync()
    return Ends(
        put=functools.partial(dst.put, block=True, timeout=t),
        get=functools.partial(src.get, block=True, timeout=t),
        poll=functools.partial(src.get, block=True, timeout=POLL_SLICE),
        nowait=functools.partial(src.get, block=True, timeout=0.05),
        put_many=functools.partial(dst.put_many, block=True, timeout=t),
        get_many=functools.partial(src.get_many, block=True, timeout=t, max_messages_to_get=batch),
    )


# ------------------------------------------------------------------------------ pyzmq


def _zmq_setup(params: Params, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    d = tempfile.mkdtemp(prefix="ackring-bench-zmq-")
    # Every producer and consumer meets here at its close: producers keep
    # their sockets open until all consumers are done (see _zmq_open).
    done = ctx.Barrier(params.producers + params.consumers)
    return (d, done), functools.partial(shutil.rmtree, d, True)


def _zmq_open(handle: Tuple[str, Any], params: Params, role: str, idx: int, clock: Clock) -> Ends:
    import zmq

    d, done = handle
    zctx = zmq.Context()
    ms = int(params.timeout * 1000)
    # Always copy: recv(copy=False) stalled intermittently (a few hundred
    # messages never delivered until the timeout) with pyzmq 27.3 / 64 B
    # messages in testing, so pyzmq has no --zero-copy variant here.
    copy = True
    # Producers linger on close so queued messages still go out; nothing else must.
    linger = ms if role in ("producer", "ping", "echo") else 0
    ends = Ends(empty=(zmq.Again,), full=(zmq.Again,), closers=[functools.partial(zctx.destroy, linger)])
    # A PUSH must not close before its consumers hold every message, linger or
    # not.  Linger only gets the messages into the kernel's socket buffer; when
    # a PULL is at its RCVHWM (its I/O thread has stopped reading) and the peer
    # hangs up, libzmq (4.3.5, stream_engine_base in_event on EPOLLHUP with
    # input stopped) drops the connection without reading what is still in
    # that buffer: a few hundred 64 B messages lost at the end of a run, the
    # consumer then times out.  So every consumer, once finished (it then
    # holds everything, or has failed), and every producer, before it closes,
    # wait at the ``done`` barrier (bounded: a broken or timed-out barrier
    # raises, which Ends.close swallows like any closer's error, and the
    # close goes on).  Closers run last first: the wait, then the destroy.
    # Latency mode (PAIR) does not use it.
    meet = functools.partial(done.wait, params.timeout)
    if role == "consumer" and params.mode != LATENCY:
        ends.closers.append(meet)
    try:
        if params.mode == LATENCY:
            # One PAIR socket each way of the round trip: the driver binds.
            s = zctx.socket(zmq.PAIR)
            s.setsockopt(zmq.SNDTIMEO, ms)
            s.setsockopt(zmq.RCVTIMEO, ms)
            if role == "ping":
                s.bind("ipc://%s/lat" % d)
                clock.sync()
            else:
                clock.sync()
                s.connect("ipc://%s/lat" % d)
            time.sleep(0.1)
            ends.put = s.send
            ends.get = functools.partial(s.recv, copy=copy)
        elif role == "producer":
            # Each PUSH binds its own endpoint; every PULL connects to all of them.
            s = zctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDTIMEO, ms)
            s.bind("ipc://%s/p%d" % (d, idx))
            clock.sync()
            time.sleep(0.1)  # let the consumers' connects complete (round-robin needs them all)
            ends.put = s.send
            ends.closers.append(meet)
        else:
            s = zctx.socket(zmq.PULL)
            # MPMC consumers wait in slices (see POLL_SLICE) so they can look at
            # the stop event; zmq_poll + recv is avoided (it stalled with
            # several producers in testing).
            s.setsockopt(zmq.RCVTIMEO, int(POLL_SLICE * 1000) if params.mode == MPMC else ms)
            clock.sync()
            for i in range(params.producers):
                s.connect("ipc://%s/p%d" % (d, i))
            recv = s.recv
            ends.get = ends.poll = functools.partial(recv, copy=copy)
            ends.nowait = functools.partial(recv, zmq.NOBLOCK)
        if not copy:
            ends.body = lambda f: f.bytes if hasattr(f, "bytes") else bytes(f)
    except BaseException:
        ends.close()
        raise
    return ends


# -------------------------------------------------------------------------- posix_ipc


def _mq_limits() -> Tuple[int, int]:
    out = []
    for f, default in (("msg_max", 10), ("msgsize_max", 8192)):
        try:
            with open("/proc/sys/fs/mqueue/" + f) as fh:
                out.append(int(fh.read()))
        except (OSError, ValueError):
            out.append(default)
    return out[0], out[1]


def _mq_setup(params: Params, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    import posix_ipc

    base = "/ackring-bench-" + _token()
    names = [base + "-ping", base + "-pong"] if params.mode == LATENCY else [base]
    msg_max, size_max = _mq_limits()
    made: List[Any] = []

    def cleanup() -> None:
        for q in made:
            try:
                q.unlink()
            except Exception:
                pass
            try:
                q.close()
            except Exception:
                pass

    try:
        for n in names:
            q = None
            for depth in dict.fromkeys((params.capacity, min(params.capacity, msg_max))):
                try:
                    q = posix_ipc.MessageQueue(n, posix_ipc.O_CREX, max_messages=depth,
                                               max_message_size=max(params.size, 1))
                    break
                except (ValueError, OSError, posix_ipc.Error):
                    continue
            if q is None:
                raise Skip("posix_ipc cannot make a queue of %d-byte messages here (fs.mqueue.msgsize_max=%d, "
                           "msg_max=%d)" % (params.size, size_max, msg_max))
            made.append(q)
    except BaseException:
        cleanup()
        raise
    return names, cleanup


def _mq_open(names: List[str], params: Params, role: str, idx: int, clock: Clock) -> Ends:
    import posix_ipc

    t = params.timeout
    src_n, dst_n = names[0], names[0]
    if role == "ping":
        src_n, dst_n = names[1], names[0]
    elif role == "echo":
        src_n, dst_n = names[0], names[1]
    src = posix_ipc.MessageQueue(src_n)
    dst = src if dst_n == src_n else posix_ipc.MessageQueue(dst_n)
    recv = src.receive
    clock.sync()
    return Ends(
        put=functools.partial(dst.send, timeout=t),
        get=lambda: recv(t)[0],
        poll=lambda: recv(POLL_SLICE)[0],
        nowait=lambda: recv(0)[0],
        empty=(posix_ipc.BusyError,),
        closers=[src.close] + ([dst.close] if dst is not src else []),
    )


# ============================================================================ registry


@dataclass(frozen=True)
class Peer:
    """One transport the bench can measure.

    setup(params, ctx) -> (handle, cleanup)   in the parent; handle is inherited (fork)
    roles[role](handle, params, clock, idx, role) -> dict   in a child; roles are
        "producer", "consumer" (throughput) and "ping", "echo" (latency)
    verify(handle, params) -> problem or None   in the parent after a throughput run
    """

    name: str
    description: str
    setup: Callable[[Params, Any], Tuple[Any, Callable[[], None]]]
    roles: Dict[str, Callable[..., dict]]
    requires: Tuple[str, ...] = ()
    modes: FrozenSet[str] = ALL_MODES
    slow: bool = False  # runs fewer messages than asked (see harness.plan_messages)
    batch_api: bool = False
    zero_copy_api: bool = False
    verify: Optional[Callable[[Any, Params], Optional[str]]] = None
    note: str = ""
    opt_in: bool = False  # runs only when named (--peers), never by default

    def missing(self) -> Optional[str]:
        for mod in self.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    return mod
            except (ImportError, ValueError):
                return mod
        return None

    def importable(self) -> Optional[str]:
        """None if the peer's modules import, else why not."""
        missing = self.missing()
        if missing:
            return "module %r is not installed" % missing
        for mod in self.requires:
            try:
                __import__(mod)
            except Exception as e:  # a broken install is a skip, not an error
                return "import %s failed: %s" % (mod, e)
        return None


def _ackring_role(fn: Callable) -> Callable:
    def run(handle: Any, params: Params, clock: Clock, idx: int, role: str) -> dict:
        return fn(handle, params, clock, idx)

    return run


def _generic(opener: Callable) -> Dict[str, Callable]:
    return {
        "producer": _generic_role(opener, _generic_produce),
        "consumer": _generic_role(opener, _generic_consume),
        "ping": _generic_role(opener, _generic_ping),
        "echo": _generic_role(opener, _generic_echo),
    }


PEERS: Dict[str, Peer] = {
    "ackring": Peer(
        "ackring",
        "ackring put / get + ack (every message acked)",
        lambda params, ctx: _ackring_setup(params),
        {
            "producer": _ackring_role(_ackring_produce),
            "consumer": _ackring_role(_ackring_consume),
            "ping": _ackring_role(_ackring_ping),
            "echo": _ackring_role(_ackring_echo),
        },
        requires=("ackring",),
        batch_api=True,
        zero_copy_api=True,
        verify=_ackring_verify,
    ),
    "mp.Queue": Peer(
        "mp.Queue",
        "multiprocessing.Queue(maxsize=capacity) put / get",
        _mpq_setup,
        _generic(_mpq_open),
        slow=True,
    ),
    "mp.Pipe": Peer(
        "mp.Pipe",
        "multiprocessing.Pipe send_bytes / recv_bytes (point to point: no MPMC)",
        _pipe_setup,
        _generic(_pipe_open),
        modes=frozenset((SPSC, LATENCY)),
        slow=True,
    ),
    "faster-fifo": Peer(
        "faster-fifo",
        "faster_fifo.Queue put / get (pickled), put_many / get_many with --batch",
        _ff_setup,
        _generic(_ff_open),
        requires=("faster_fifo",),
        batch_api=True,
        slow=True,
    ),
    "pyzmq": Peer(
        "pyzmq",
        "pyzmq ipc:// PUSH/PULL send / recv (latency: PAIR)",
        _zmq_setup,
        _generic(_zmq_open),
        requires=("zmq",),
    ),
    "posix_ipc": Peer(
        "posix_ipc",
        "posix_ipc.MessageQueue send / receive (depth capped by fs.mqueue.msg_max)",
        _mq_setup,
        _generic(_mq_open),
        requires=("posix_ipc",),
        slow=True,
    ),
}

# The broker peer (ackring.connect) lives in its own module.
from .amqp_peer import register as _register_amqp  # noqa: E402

_register_amqp(PEERS)
