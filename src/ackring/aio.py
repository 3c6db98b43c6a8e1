"""asyncio front end for ackring producers and consumers.

    import ackring, ackring.aio

    q = ackring.open("jobs")
    async with ackring.aio.AsyncConsumer(q.consumer()) as c:
        async for m in c:               # ends when the consumer or queue is closed
            await handle(m.body)
            m.ack()

    ap = ackring.aio.AsyncProducer(q.producer())
    mid = await ap.aput(b"hello", timeout=5)
    receipt = await ap.await_acked(mid, timeout=30)

How it waits (no polling in the event loop)
-------------------------------------------
Every call first makes one non-blocking attempt in the event loop's thread
(``get(timeout=0)``, ``put(timeout=0)``, ``wait_acked(timeout=0)``): a message
that is already there costs no thread hop.  Only a call that has to wait is
handed to a small per-process pool of daemon waiter threads, which make the
ordinary blocking C call (it sleeps on the queue's futex with the GIL
released) and hand the result back with ``loop.call_soon_threadsafe``.

The waiter thread makes that call in slices of :data:`CANCEL_SLICE` seconds
(0.05 s by default, the core's own wait slice) and looks at a cancel flag
between slices.  A message arriving wakes the thread at once, so the slice
costs no latency; it bounds how long a **cancelled** waiter lingers: at
most one slice (plus scheduling) after the cancel.  An idle waiting
consumer therefore makes one short C call per slice (20 a second).

Cancellation
------------
A cancelled call's waiter thread lingers for at most one slice after the
cancel (:data:`CANCEL_SLICE`, 0.05 s by default) and holds the client's
turn meanwhile, so a client never has two waiter threads.

- ``aget`` / ``aget_many`` / ``async for``: a cancelled call takes nothing
  if no message arrives while its thread lingers.  If one arrives (or
  arrived just as the task was cancelled), the next ``aget`` of the same
  kind on the same consumer that starts within that slice adopts the
  waiter and receives it as a first delivery, as if nothing had happened
  (so ``asyncio.wait_for(c.aget(), t)`` in a loop loses nothing and
  redelivers nothing).  Otherwise, at the end of the slice, the message is
  **given back** with ``m.nack(requeue=True)``: it is delivered again, ahead
  of new messages, to this or any other consumer; that redelivery has
  ``redelivered`` true and a ``delivery_count`` one higher, and it counts
  toward the queue's ``max_deliveries``.  Prefer ``aget(timeout=...)`` to
  ``wait_for``: a timeout is not a cancel.
- ``aput``: while waiting for a free slot the thread reserves one and
  commits only if the call was not cancelled meanwhile (else it aborts the
  reservation): a cancelled ``aput`` stores nothing, unless the message was
  stored before the cancel arrived (it then stays stored, as any finished
  put).  The next ``aput`` on that producer starts once the lingering
  waiter is gone.
- ``aput_many``: a cancel stops between slices; messages stored before it
  stay stored.
- ``await_acked``: a cancel just stops waiting.

Threads and fairness
--------------------
One consumer (or producer) object has at most one waiter thread at a time:
concurrent ``aget`` calls on the same consumer queue up in call order (the
same for ``aput`` on one producer, which keeps its messages in call order).
``await_acked`` calls run concurrently.  The pool starts threads on demand,
up to :data:`MAX_THREADS` (64; see :func:`configure`), and lets idle ones
exit after 30 s.  Beyond that many concurrent waits, waiting calls share the
threads slice by slice, so none starves (each then notices its message up to
a slice late).  The pool is per process and is rebuilt in a forked child.

A wrapper may be used from one event loop at a time per call; different
loops (in different threads) may share a consumer, as the blocking API
allows.
"""

import asyncio
import collections
import math
import os
import threading
import time
import weakref

from ._errors import Empty, Full, QueueClosed

__all__ = ["AsyncConsumer", "AsyncProducer", "aget", "aget_many", "aput", "aput_many",
           "await_acked", "aiter", "configure", "CANCEL_SLICE", "MAX_THREADS"]

#: Seconds a waiter thread blocks in one C call before it looks at the cancel flag.
CANCEL_SLICE = 0.05
#: Most waiter threads the process-wide pool runs at once.
MAX_THREADS = 64
#: Seconds an idle waiter thread stays around for the next wait.
IDLE_EXIT = 30.0

_AGAIN = object()
_monotonic = time.monotonic


def configure(max_threads=None, cancel_slice=None):
    """Change the pool's thread limit and/or the cancel slice (seconds, > 0).
    Affects calls started afterwards."""
    global MAX_THREADS, CANCEL_SLICE
    if max_threads is not None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError("max_threads must be an int >= 1, not %r" % (max_threads,))
        MAX_THREADS = max_threads
        pool = _pool
        if pool is not None:
            pool.max_threads = max_threads
    if cancel_slice is not None:
        s = float(cancel_slice)
        if not s > 0 or math.isinf(s):
            raise ValueError("cancel_slice must be a finite number of seconds > 0, not %r" % (cancel_slice,))
        CANCEL_SLICE = s


def _deadline(timeout):
    """None for no limit, else the absolute monotonic deadline."""
    if timeout is None:
        return None
    if isinstance(timeout, bool):
        raise TypeError("timeout must be None or a number of seconds, not bool")
    try:
        t = float(timeout)
    except (TypeError, ValueError):
        raise TypeError("timeout must be None or a number of seconds, not %s"
                        % type(timeout).__name__) from None
    if not t >= 0:  # negative or NaN
        raise ValueError("timeout must be None or a number of seconds >= 0, not %r" % (timeout,))
    return _monotonic() + t


def _slice(deadline):
    """Timeout for the next blocking slice, or None when the deadline passed."""
    if deadline is None:
        return CANCEL_SLICE
    left = deadline - _monotonic()
    if left <= 0:
        return None
    return min(CANCEL_SLICE, left)


# --------------------------------------------------------------------- the pool


class _Pool:
    """Daemon worker threads running _Call.step() until it is done.  A call
    that needs another slice while others wait for a thread goes to the back
    of the line, so no call holds a thread for longer than a slice then."""

    def __init__(self, max_threads):
        self.max_threads = max_threads
        self._cv = threading.Condition(threading.Lock())
        self._jobs = collections.deque()
        self._idle = 0
        self._threads = 0
        self._serial = 0

    def submit(self, job):
        with self._cv:
            self._jobs.append(job)
            if self._idle >= len(self._jobs):
                self._cv.notify()
                return
            if self._threads >= self.max_threads:
                return  # every thread busy: it runs when one takes its turn
            self._threads += 1
            self._serial += 1
            name = "ackring-aio-%d" % self._serial
        t = threading.Thread(target=self._work, name=name, daemon=True)
        try:
            t.start()
        except BaseException:
            with self._cv:
                self._threads -= 1
            raise

    def _work(self):
        cv = self._cv
        jobs = self._jobs
        while True:
            with cv:
                while not jobs:
                    self._idle += 1
                    woke = cv.wait(IDLE_EXIT)
                    self._idle -= 1
                    if not woke and not jobs:
                        self._threads -= 1
                        return
                job = jobs.popleft()
            while job.step():
                if len(jobs) > self._idle:  # unlocked peek; re-checked below
                    with cv:
                        if len(jobs) > self._idle:
                            jobs.append(job)
                            job = jobs.popleft()


_pool = None
_pool_lock = threading.Lock()


def _get_pool():
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = _Pool(MAX_THREADS)
            pool = _pool
    return pool


# ------------------------------------------------------------------------ calls


class _Call:
    """One blocking wait handed to the pool.  ``lock`` makes the hand-over
    exactly-once: either the coroutine takes the result, or whoever saw the
    cancel first undoes it (gives a message back, aborts a reservation).

    ``turn`` (the client's _Turn, or None) is released by the coroutine when
    it took the result, else by the thread when it stops: so a client never
    has two waiter threads, not even while a cancelled one lingers."""

    __slots__ = ("loop", "fut", "lock", "cancelled", "stopped", "done", "value", "exc", "turn", "key",
                 "cancel_t", "adopted")

    def __init__(self, key=None):
        self.lock = threading.Lock()
        self.cancelled = False
        self.stopped = False   # the thread gave up on a cancelled call: it posts nothing
        self.done = False
        self.value = None
        self.exc = None
        self.turn = None
        self.key = key         # calls with equal keys can adopt each other's waits
        self.cancel_t = 0.0    # when the coroutine was cancelled
        self.adopted = None    # Event: set when a parked result was adopted

    # subclasses: attempt() -> value or _AGAIN (may raise); commit(value) -> result,
    # run under the lock once the call is known not to be cancelled; undo(value)

    def commit(self, value):
        return value

    def undo(self, value):
        pass

    def _undo_done(self, value):
        self.undo(value)

    def step(self):
        """Run one slice in a pool thread; True if another slice is wanted."""
        with self.lock:
            if self.cancelled:
                self.stopped = True
        if self.stopped:
            self._stop()
            return False
        try:
            value = self.attempt()
        except BaseException as e:
            self._finish(None, e)
            return False
        if value is _AGAIN:
            return True
        self._finish(value, None)
        return False

    def _stop(self):
        turn = self.turn
        if turn is not None:
            if turn.lingering is self:
                turn.lingering = None
            turn.release()

    def _finish(self, value, exc):
        parked = False
        while True:
            with self.lock:
                if not self.cancelled:
                    if exc is None:
                        try:
                            value = self.commit(value)
                        except BaseException as e:
                            value, exc = None, e
                    self.done = True
                    self.value = value
                    self.exc = exc
                    loop = self.loop
                    break
                # Cancelled.  A message taken in the lingering slice waits out
                # the rest of that slice for an adopter (the next aget of the
                # same kind on this client) before it is given back.
                left = self.cancel_t + CANCEL_SLICE - _monotonic()
                if exc is not None or self.key is None or parked or left <= 0:
                    self.stopped = True
                    break
                if self.adopted is None:
                    self.adopted = threading.Event()
                ev = self.adopted
                ev.clear()  # set by adopt() after it un-cancels us
            ev.wait(left)
            parked = True
        if self.stopped:
            if exc is None:
                self.undo(value)
            self._stop()
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            # The loop is closed: nobody will ever take the result.
            with self.lock:
                if self.cancelled:
                    return  # the coroutine side saw it, undid it and released the turn
                self.cancelled = True
            if exc is None:
                self._undo_done(value)
            self._stop()

    def _wake(self):
        fut = self.fut
        if not fut.done():
            fut.set_result(None)

    def adopt(self, turn, key, deadline, timeout):
        """Take over a cancelled call whose thread still waits (same kind of
        call on the same client): True if this coroutine now owns it."""
        if self.key != key or key is None:
            return False
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self.lock:
            if not self.cancelled or self.stopped or self.done:
                return False
            self.loop, self.fut = loop, fut
            self.deadline, self.timeout = deadline, timeout
            self.cancelled = False
            if turn.lingering is self:
                turn.lingering = None
            ev = self.adopted
        if ev is not None:
            ev.set()
        return True


async def _run(call, turn):
    """Submit call (the caller holds ``turn``, or turn is None) and await it."""
    loop = asyncio.get_running_loop()
    call.loop = loop
    call.fut = loop.create_future()
    call.turn = turn
    try:
        _get_pool().submit(call)
    except BaseException:
        if turn is not None:
            turn.release()
        raise
    return await _await(call)


async def _await(call):
    turn = call.turn
    try:
        await call.fut
    except BaseException:
        with call.lock:
            call.cancelled = True
            call.cancel_t = _monotonic()
            done = call.done
            if not done and turn is not None:
                turn.lingering = call  # the next call of the same kind may adopt it
        if done:
            if call.exc is None:
                call._undo_done(call.value)
            if turn is not None:
                turn.release()
        raise
    if turn is not None:
        turn.release()
    exc = call.exc
    if exc is not None:
        call.exc = None
        try:
            raise exc
        finally:
            exc = None
    return call.value


def _nack_quietly(m):
    try:
        m.nack(requeue=True)
    except Exception:
        pass  # consumer closed (closing requeued it) or the delivery was taken back


class _GetCall(_Call):
    __slots__ = ("consumer", "deadline", "copy", "timeout")

    def __init__(self, consumer, deadline, copy, timeout):
        _Call.__init__(self, ("get", bool(copy)))
        self.consumer, self.deadline, self.copy, self.timeout = consumer, deadline, copy, timeout

    def attempt(self):
        s = _slice(self.deadline)
        if s is None:
            raise Empty("no message within %r s" % (self.timeout,))
        try:
            return self.consumer.get(timeout=s, copy=self.copy)
        except Empty:
            if self.deadline is not None and _monotonic() >= self.deadline:
                raise Empty("no message within %r s" % (self.timeout,)) from None
            return _AGAIN

    def undo(self, m):
        _nack_quietly(m)


class _GetManyCall(_GetCall):
    __slots__ = ("n",)

    def __init__(self, consumer, n, deadline, copy, timeout):
        _GetCall.__init__(self, consumer, deadline, copy, timeout)
        self.n = n
        self.key = ("get_many", n, bool(copy))

    def attempt(self):
        s = _slice(self.deadline)
        if s is None:
            raise Empty("no message within %r s" % (self.timeout,))
        try:
            return self.consumer.get_many(self.n, timeout=s, copy=self.copy)
        except Empty:
            if self.deadline is not None and _monotonic() >= self.deadline:
                raise Empty("no message within %r s" % (self.timeout,)) from None
            return _AGAIN

    def undo(self, ms):
        for m in ms:
            _nack_quietly(m)


class _PutCall(_Call):
    """Waits for a free slot with reserve(), writes the message into it and
    commits only if not cancelled meanwhile (else aborts: nothing stored)."""

    __slots__ = ("producer", "data", "deadline", "ttl", "timeout")

    def __init__(self, producer, data, deadline, ttl, timeout):
        _Call.__init__(self)
        self.producer, self.data, self.deadline, self.ttl, self.timeout = producer, data, deadline, ttl, timeout

    def attempt(self):
        s = _slice(self.deadline)
        if s is None:
            raise Full("no free slot within %r s" % (self.timeout,))
        n = len(self.data)
        try:
            r = self.producer.reserve(n, timeout=s, ttl=self.ttl)
        except Full:
            if self.deadline is not None and _monotonic() >= self.deadline:
                raise Full("no free slot within %r s" % (self.timeout,)) from None
            return _AGAIN
        try:
            if n:
                v = r.view()
                try:
                    v[:n] = self.data
                finally:
                    v.release()
        except BaseException:
            r.abort()
            raise
        return r

    def commit(self, r):
        return r.commit(len(self.data))

    def undo(self, r):
        try:
            r.abort()
        except Exception:
            pass

    def _undo_done(self, value):
        pass  # committed: a stored message cannot be taken back


class _PutManyCall(_Call):
    __slots__ = ("producer", "items", "ids", "deadline", "ttl", "timeout")

    def __init__(self, producer, items, ids, deadline, ttl, timeout):
        _Call.__init__(self)
        self.producer, self.items, self.ids = producer, items, ids
        self.deadline, self.ttl, self.timeout = deadline, ttl, timeout

    def attempt(self):
        s = _slice(self.deadline)
        if s is None:
            raise Full("put_many: %d of %d stored within %r s"
                       % (len(self.ids), len(self.ids) + len(self.items), self.timeout), ids=self.ids)
        try:
            self.ids.extend(self.producer.put_many(self.items, timeout=s, ttl=self.ttl))
            return self.ids
        except Full as e:
            self.ids.extend(e.ids)
            self.items = self.items[len(e.ids):]
            if self.deadline is not None and _monotonic() >= self.deadline:
                raise Full("put_many: %d of %d stored within %r s"
                           % (len(self.ids), len(self.ids) + len(self.items), self.timeout),
                           ids=self.ids) from None
            return _AGAIN


class _AckedCall(_Call):
    __slots__ = ("producer", "message_id", "deadline", "timeout")

    def __init__(self, producer, message_id, deadline, timeout):
        _Call.__init__(self)
        self.producer, self.message_id, self.deadline, self.timeout = producer, message_id, deadline, timeout

    def attempt(self):
        s = _slice(self.deadline)
        if s is None:
            raise TimeoutError("message %d was not settled within %r s" % (self.message_id, self.timeout))
        try:
            return self.producer.wait_acked(self.message_id, timeout=s)
        except TimeoutError:
            if self.deadline is not None and _monotonic() >= self.deadline:
                raise TimeoutError("message %d was not settled within %r s"
                                   % (self.message_id, self.timeout)) from None
            return _AGAIN


# ------------------------------------------------ one waiter per client object


class _TurnWaiter:
    __slots__ = ("loop", "fut", "granted")

    def __init__(self, loop):
        self.loop = loop
        self.fut = loop.create_future()
        self.granted = False


def _wake_waiter(fut):
    if not fut.done():
        fut.set_result(None)


class _Turn:
    """A FIFO mutex for coroutines, usable from any event loop and thread:
    one outstanding waiter thread per consumer (or producer) object."""

    __slots__ = ("_mutex", "_held", "_queue", "lingering", "_gen", "__weakref__")

    def __init__(self):
        self._reset()

    def _reset(self):
        self._mutex = threading.Lock()
        self._held = False
        self._queue = collections.deque()
        self.lingering = None  # a cancelled _Call whose thread still waits (it holds the turn)
        self._gen = _fork_gen

    def _forked(self):
        # Copied into a forked child (an AsyncConsumer keeps its turn): the
        # parent's waiters and their threads are not here.
        if self._gen != _fork_gen:
            self._reset()

    def adopt(self, key, deadline, timeout):
        """The lingering cancelled call of this kind, taken over; else None.
        Only when nobody is in line (adopting must not jump the queue)."""
        self._forked()
        call = self.lingering
        if call is None or self._queue:
            return None
        return call if call.adopt(self, key, deadline, timeout) else None

    def try_acquire(self):
        """Take the turn if nobody holds it or waits for it (no suspension)."""
        if self._gen != _fork_gen:
            self._reset()
        with self._mutex:
            if not self._held and not self._queue:
                self._held = True
                return True
        return False

    async def acquire(self, deadline):
        """True once held; False if the deadline passed first."""
        self._forked()
        with self._mutex:
            if not self._held and not self._queue:
                self._held = True
                return True
            w = _TurnWaiter(asyncio.get_running_loop())
            self._queue.append(w)
        try:
            if deadline is None:
                await w.fut
            else:
                left = deadline - _monotonic()
                if left > 0:
                    await asyncio.wait((w.fut,), timeout=left)
        except BaseException:
            if self._leave(w):
                self.release()
            raise
        return self._leave(w)

    def _leave(self, w):
        """True if w was granted the turn; else w leaves the line."""
        with self._mutex:
            if w.granted:
                return True
            try:
                self._queue.remove(w)
            except ValueError:
                pass
            return False

    def release(self):
        while True:
            with self._mutex:
                if not self._queue:
                    self._held = False
                    return
                w = self._queue.popleft()
                w.granted = True
            try:
                w.loop.call_soon_threadsafe(_wake_waiter, w.fut)
                return
            except RuntimeError:
                continue  # its loop is closed: the turn goes to the next in line


_turns = weakref.WeakKeyDictionary()
_turns_lock = threading.Lock()
_fork_gen = 0


def _turn(client):
    t = _turns.get(client)
    if t is None:
        with _turns_lock:
            t = _turns.get(client)
            if t is None:
                t = _turns[client] = _Turn()
    return t


def _after_fork_in_child():
    # Threads do not survive fork; locks held by them at the fork would never be released.
    global _pool, _pool_lock, _turns, _turns_lock, _fork_gen
    _fork_gen += 1
    _pool = None
    _pool_lock = threading.Lock()
    _turns = weakref.WeakKeyDictionary()
    _turns_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------- functions


async def aget(consumer, timeout=None, copy=True):
    """``await aget(c)``: c.get() without blocking the event loop.  Raises
    ackring.Empty after ``timeout`` seconds (None: no limit).  A cancelled
    aget gives back any message it took (see the module docs)."""
    return await _aget(consumer, _turn(consumer), timeout, copy, False)


async def _aget(consumer, turn, timeout, copy, stop):
    """aget; with stop, QueueClosed becomes StopAsyncIteration (__anext__)."""
    deadline = None if timeout is None else _deadline(timeout)
    try:
        if turn.lingering is None and turn.try_acquire():
            # fast path: a message that is there costs one non-blocking get
            try:
                m = consumer.get(timeout=0, copy=copy)
            except Empty:
                if timeout is not None and deadline <= _monotonic():
                    turn.release()
                    raise
            except BaseException:
                turn.release()
                raise
            else:
                turn.release()
                return m
            return await _run(_GetCall(consumer, deadline, copy, timeout), turn)
        call = turn.adopt(("get", bool(copy)), deadline, timeout)
        if call is not None:
            return await _await(call)
        if not await turn.acquire(deadline):
            raise Empty("no message within %r s (another aget on this consumer was waiting)" % (timeout,))
        try:
            return _released(turn, consumer.get(timeout=0, copy=copy))
        except Empty:
            if timeout is not None and deadline <= _monotonic():
                turn.release()
                raise
        except BaseException:
            turn.release()
            raise
        return await _run(_GetCall(consumer, deadline, copy, timeout), turn)
    except QueueClosed:
        if stop:
            raise StopAsyncIteration from None
        raise


def _released(turn, value):
    turn.release()
    return value


async def aget_many(consumer, n, timeout=None, copy=True):
    """``await aget_many(c, n)``: c.get_many(n): waits for the first message
    only, then takes what is ready (up to n).  Empty after ``timeout``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an int, not %s" % type(n).__name__)
    if n < 1:
        raise ValueError("aget_many() needs n >= 1")
    deadline = _deadline(timeout)
    turn = _turn(consumer)
    call = turn.adopt(("get_many", n, bool(copy)), deadline, timeout)
    if call is not None:
        return await _await(call)
    if not await turn.acquire(deadline):
        raise Empty("no message within %r s (another aget on this consumer was waiting)" % (timeout,))
    try:
        return _released(turn, consumer.get_many(n, timeout=0, copy=copy))
    except Empty:
        if timeout is not None and deadline <= _monotonic():
            turn.release()
            raise
    except BaseException:
        turn.release()
        raise
    return await _run(_GetManyCall(consumer, n, deadline, copy, timeout), turn)


async def aiter(consumer, copy=True):  # noqa: A001 - ackring.aio.aiter(c), like the builtin for a Consumer
    """``async for m in aiter(c)``: every message until the consumer or its
    queue is closed (as ``for m in c``)."""
    turn = _turn(consumer)
    while True:
        try:
            m = await _aget(consumer, turn, None, copy, False)
        except QueueClosed:
            return
        yield m


async def aput(producer, data, timeout=None, ttl=None):
    """``await aput(p, data)``: p.put() without blocking the event loop;
    returns the message id.  Raises ackring.Full after ``timeout`` seconds.
    A cancelled aput stores nothing unless it had already stored it."""
    deadline = _deadline(timeout)
    turn = _turn(producer)
    if not await turn.acquire(deadline):
        raise Full("no free slot within %r s (another aput on this producer was waiting)" % (timeout,))
    try:
        try:
            return _released(turn, producer.put(data, timeout=0, ttl=ttl))
        except Full:
            if timeout is not None and deadline <= _monotonic():
                raise
        # put() accepted the data's type and size; the thread writes it as flat bytes
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
    except BaseException:
        turn.release()
        raise
    return await _run(_PutCall(producer, mv, deadline, ttl, timeout), turn)


async def aput_many(producer, messages, timeout=None, ttl=None):
    """``await aput_many(p, msgs)``: p.put_many(); returns the ids.  On
    ackring.Full (after ``timeout``) its ``ids`` lists what was stored."""
    deadline = _deadline(timeout)
    items = messages if isinstance(messages, list) else list(messages)
    turn = _turn(producer)
    if not await turn.acquire(deadline):
        raise Full("no free slot within %r s (another aput on this producer was waiting)" % (timeout,), ids=[])
    try:
        return _released(turn, producer.put_many(items, timeout=0, ttl=ttl))
    except Full as e:
        if timeout is not None and deadline <= _monotonic():
            turn.release()
            raise
        ids = list(e.ids)
    except BaseException:
        turn.release()
        raise
    return await _run(_PutManyCall(producer, items[len(ids):], ids, deadline, ttl, timeout), turn)


async def await_acked(producer, message_id, timeout=None):
    """``await await_acked(p, mid)``: p.wait_acked(); the Receipt once the
    message is settled.  TimeoutError after ``timeout`` seconds; ValueError
    for an id never published."""
    deadline = _deadline(timeout)
    try:
        return producer.wait_acked(message_id, timeout=0)
    except TimeoutError:
        if timeout is not None and deadline <= _monotonic():
            raise
    return await _run(_AckedCall(producer, message_id, deadline, timeout), None)


# --------------------------------------------------------------------- wrappers


class AsyncConsumer:
    """``AsyncConsumer(q.consumer())``: the consumer with awaitable gets.

    ``await c.aget(timeout=...)``, ``await c.aget_many(n)``, ``async for m in c``
    (ends when the consumer or queue is closed), ``async with`` (closes the
    consumer on exit).  Messages are settled as usual (``m.ack()``: it never
    blocks).  ``close``, ``ack_many``, ``closed``, ``outstanding`` and
    ``prefetch`` pass through; ``.consumer`` is the wrapped Consumer."""

    __slots__ = ("consumer", "_turn")

    def __init__(self, consumer):
        if not (hasattr(consumer, "get") and hasattr(consumer, "get_many")):
            raise TypeError("AsyncConsumer wraps an ackring Consumer (q.consumer()), not %s"
                            % type(consumer).__name__)
        self.consumer = consumer
        self._turn = _turn(consumer)

    def aget(self, timeout=None, copy=True):
        return _aget(self.consumer, self._turn, timeout, copy, False)

    def aget_many(self, n, timeout=None, copy=True):
        return aget_many(self.consumer, n, timeout, copy)

    def ack_many(self, messages):
        return self.consumer.ack_many(messages)

    def close(self):
        """Close the consumer (waits in progress end with QueueClosed, or end
        an ``async for``); its unsettled messages are requeued."""
        self.consumer.close()

    closed = property(lambda self: self.consumer.closed)
    outstanding = property(lambda self: self.consumer.outstanding)
    prefetch = property(lambda self: self.consumer.prefetch)

    def __aiter__(self):
        return self

    def __anext__(self):
        return _aget(self.consumer, self._turn, None, True, True)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.consumer.close()
        return False

    def __repr__(self):
        return "<ackring.aio.AsyncConsumer %r>" % (self.consumer,)


class AsyncProducer:
    """``AsyncProducer(q.producer())``: ``await p.aput(data)``,
    ``await p.aput_many(msgs)``, ``await p.await_acked(mid)``; ``put``,
    ``close`` and ``closed`` pass through; ``async with`` closes it."""

    __slots__ = ("producer",)

    def __init__(self, producer):
        if not (hasattr(producer, "put") and hasattr(producer, "wait_acked")):
            raise TypeError("AsyncProducer wraps an ackring Producer (q.producer()), not %s"
                            % type(producer).__name__)
        self.producer = producer

    def aput(self, data, timeout=None, ttl=None):
        return aput(self.producer, data, timeout, ttl)

    def aput_many(self, messages, timeout=None, ttl=None):
        return aput_many(self.producer, messages, timeout, ttl)

    def await_acked(self, message_id, timeout=None):
        return await_acked(self.producer, message_id, timeout)

    def put(self, data, timeout=0, ttl=None):
        """The plain put; by default non-blocking (timeout=0), for use in the loop."""
        return self.producer.put(data, timeout=timeout, ttl=ttl)

    def close(self):
        self.producer.close()

    closed = property(lambda self: self.producer.closed)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.producer.close()
        return False

    def __repr__(self):
        return "<ackring.aio.AsyncProducer %r>" % (self.producer,)
