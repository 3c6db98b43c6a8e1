"""ackring.aio: awaitable gets, puts and receipts over real processes."""

import asyncio
import multiprocessing
import random
import threading
import time

import pytest

import ackring
import ackring.aio as aio
from _aio_workers import async_child, gated_consumer, inherited_async_consumer, paced_producer, taking_consumer

FORK = multiprocessing.get_context("fork")


def run(coro, timeout=60):
    """asyncio.run with a bound on the whole test body."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def recv(conn, timeout=30):
    assert conn.poll(timeout), "no report from the child within %s s" % timeout
    msg = conn.recv()
    assert msg[0] != "error", "child failed:\n%s" % (msg[1],)
    return msg


async def until(pred, timeout=5.0, what="condition"):
    """Poll pred() on the event loop until it is true (bounded)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        await asyncio.sleep(0.002)


@pytest.fixture
def slice_(request):
    """Set aio's cancel slice for one test; restored afterwards."""
    old = aio.CANCEL_SLICE
    yield lambda s: aio.configure(cancel_slice=s)
    aio.configure(cancel_slice=old)


class Entered:
    """A consumer seen through a proxy that notes when a blocking get() starts
    (only the waiter thread makes one).  A test that cancels after
    ``entered`` is set knows the waiter thread is past its cancel check and
    inside the call, so a message put now is taken by it: the turn being held
    says only that the call was handed to the pool."""

    def __init__(self, consumer):
        self._c = consumer
        self.entered = threading.Event()

    def get(self, timeout=None, copy=True):
        if timeout != 0:
            self.entered.set()
        return self._c.get(timeout=timeout, copy=copy)

    def __getattr__(self, name):
        return getattr(self._c, name)


def turn_free(client):
    # The per-client turn is held while a (possibly cancelled) waiter thread
    # runs: free means no waiter thread is left for this client.
    return not aio._turn(client)._held


# ------------------------------------------------------------------ consuming


def test_async_for_counts_every_message_from_a_child(make_queue, procs):
    q = make_queue(capacity=8, message_size=64)   # small: both sides wait on each other
    n = 3000
    r, w = FORK.Pipe(duplex=False)
    procs(paced_producer, q.name, n, 0, w)

    async def main():
        got = []
        async with aio.AsyncConsumer(q.consumer()) as c:
            async for m in c:
                got.append((m.body, m.delivery_count))
                m.ack()
                if len(got) == n:
                    break
        return got

    got = run(main())
    ids = recv(r)[1]
    assert len(ids) == n
    assert sorted(b for b, _ in got) == sorted(b"m-%d" % i for i in range(n))
    assert [b for b, _ in got] == [b"m-%d" % i for i in range(n)]    # one producer, one consumer: FIFO
    assert all(dc == 1 for _, dc in got)
    st = q.stats()
    assert (st["published"], st["acked"], st["depth"], st["in_flight"]) == (n, n, 0, 0)
    procs.join_all(10)


def test_aget_waits_without_blocking_the_loop(q):
    c = q.consumer()
    p = q.producer()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())

        async def put_later():
            await until(lambda: ticks >= 10, what="ten ticks")
            p.put(b"late")

        putter = asyncio.ensure_future(put_later())
        t0 = time.monotonic()
        m = await aio.aget(c, timeout=10)
        waited = time.monotonic() - t0
        m.ack()
        await putter
        t.cancel()
        return m.body, ticks, waited

    body, ticks, waited = run(main())
    assert body == b"late"
    assert ticks >= 10          # the loop kept running while aget waited
    assert waited < 10


def test_aget_timeout_raises_empty(q):
    c = aio.AsyncConsumer(q.consumer())

    async def main():
        t0 = time.monotonic()
        with pytest.raises(ackring.Empty):
            await c.aget(timeout=0.2)
        waited = time.monotonic() - t0
        t1 = time.monotonic()
        with pytest.raises(ackring.Empty):
            await c.aget(timeout=0)
        at_once = time.monotonic() - t1
        with pytest.raises(ackring.Empty):
            await c.aget_many(4, timeout=0.05)
        return waited, at_once

    waited, at_once = run(main())
    assert 0.2 <= waited < 2.0
    assert at_once < 0.1
    assert isinstance(ackring.Empty(), __import__("queue").Empty)


def test_aget_many_takes_a_batch(q):
    p = q.producer()
    c = q.consumer()
    p.put_many([b"a", b"b", b"c"])

    async def main():
        first = await aio.aget_many(c, 8, timeout=1)
        later = asyncio.ensure_future(aio.aget_many(c, 8, timeout=10))
        await until(lambda: not turn_free(c), what="the waiter")
        p.put_many([b"d", b"e"])
        second = await later
        c.ack_many(first + second)
        return [m.body for m in first], [m.body for m in second]

    first, second = run(main())
    assert first == [b"a", b"b", b"c"]
    assert second[0] == b"d" and set(second) <= {b"d", b"e"}
    assert q.stats()["acked"] == 3 + len(second)


def test_async_for_ends_when_the_consumer_is_closed(q):
    p = q.producer()
    c = q.consumer()
    p.put_many([b"1", b"2"])

    async def main():
        seen = []

        async def close_after_two():
            await until(lambda: len(seen) == 2, what="two messages")
            c.close()

        closer = asyncio.ensure_future(close_after_two())
        async for m in aio.aiter(c):
            seen.append(m.body)
            m.ack()
        await closer
        return seen

    assert run(main(), timeout=20) == [b"1", b"2"]
    assert c.closed


def test_concurrent_agets_share_one_waiter_thread_in_call_order(q):
    """Five agets on one consumer: at most one blocking get at a time, and
    the messages go to the calls in the order they were made."""
    inner = q.consumer()
    p = q.producer()
    lock = threading.Lock()
    active = [0, 0]   # now, max

    class Counting:   # a Consumer stand-in that counts concurrent gets
        def get(self, timeout=None, copy=True):
            with lock:
                active[0] += 1
                active[1] = max(active[1], active[0])
            try:
                return inner.get(timeout=timeout, copy=copy)
            finally:
                with lock:
                    active[0] -= 1

        def get_many(self, n, timeout=None, copy=True):
            raise AssertionError("not used")

    counting = Counting()
    c = aio.AsyncConsumer(counting)

    async def main():
        tasks = []
        for i in range(5):
            tasks.append(asyncio.ensure_future(c.aget(timeout=20)))
            await asyncio.sleep(0)   # let it start: the calls are made in this order
        await until(lambda: not turn_free(counting), what="the first waiter")
        for i in range(5):
            p.put(b"%d" % i)
        ms = await asyncio.gather(*tasks)
        for m in ms:
            m.ack()
        return [m.body for m in ms]

    assert run(main()) == [b"0", b"1", b"2", b"3", b"4"]
    assert active[1] == 1


# ------------------------------------------------------------------ producing


def test_aput_waits_for_a_consumer_in_a_child(make_queue, procs):
    q = make_queue(capacity=4, message_size=64)
    p = aio.AsyncProducer(q.producer())
    n = 200
    gate = FORK.Event()
    r, w = FORK.Pipe(duplex=False)
    procs(gated_consumer, q.name, n, gate, 30, "ack", w)

    async def main():
        ids = [await p.aput(b"x-%d" % i) for i in range(4)]
        t0 = time.monotonic()
        with pytest.raises(ackring.Full):
            await p.aput(b"no room", timeout=0.15)
        waited = time.monotonic() - t0
        gate.set()
        for i in range(4, n):
            ids.append(await p.aput(b"x-%d" % i, timeout=30))
        return ids, waited

    ids, waited = run(main())
    got = recv(r)[1]
    assert 0.15 <= waited < 2
    assert [b for _, b, _ in got] == [b"x-%d" % i for i in range(n)]
    assert [i for i, _, _ in got] == ids
    st = q.stats()
    assert (st["published"], st["acked"]) == (n, n)
    procs.join_all(10)


def test_aput_many_across_a_full_queue(make_queue, procs):
    q = make_queue(capacity=4, message_size=64)
    p = aio.AsyncProducer(q.producer())
    n = 50
    r, w = FORK.Pipe(duplex=False)
    procs(taking_consumer, q.name, n, 30, "ack", w)

    async def main():
        return await p.aput_many([b"b-%d" % i for i in range(n)], timeout=30)

    ids = run(main())
    got = recv(r)[1]
    assert len(ids) == n and ids == sorted(ids)
    assert [b for _, b, _ in got] == [b"b-%d" % i for i in range(n)]
    procs.join_all(10)


def test_aput_many_timeout_reports_what_was_stored(q):
    p = q.producer()

    async def main():
        with pytest.raises(ackring.Full) as e:
            await aio.aput_many(p, [b"%d" % i for i in range(12)], timeout=0.1)
        return e.value.ids

    ids = run(main())
    assert len(ids) == q.capacity
    assert q.stats()["published"] == q.capacity


def test_await_acked_across_processes(make_queue, procs):
    q = make_queue(capacity=16, message_size=64)
    p = aio.AsyncProducer(q.producer())
    gate = FORK.Event()
    r1, w1 = FORK.Pipe(duplex=False)
    r2, w2 = FORK.Pipe(duplex=False)

    async def main():
        acked_ids = [await p.aput(b"ok-%d" % i) for i in range(5)]
        waits = [asyncio.ensure_future(p.await_acked(i, timeout=30)) for i in acked_ids]
        with pytest.raises(TimeoutError):
            await p.await_acked(acked_ids[0], timeout=0.1)
        assert not any(w.done() for w in waits)
        procs(gated_consumer, q.name, 5, gate, 30, "ack", w1)
        gate.set()
        receipts = await asyncio.gather(*waits)
        # a message another process dead-letters
        mid = await p.aput(b"bad")
        waiting = asyncio.ensure_future(p.await_acked(mid, timeout=30))
        procs(taking_consumer, q.name, 1, 30, "reject", w2)
        dead = await waiting
        with pytest.raises(ValueError):
            await p.await_acked(10 ** 9, timeout=1)
        return acked_ids, receipts, mid, dead

    acked_ids, receipts, mid, dead = run(main())
    assert [(x.id, x.outcome) for x in receipts] == [(i, "acked") for i in acked_ids]
    assert (dead.id, dead.outcome, dead.reason) == (mid, "dead_lettered", "rejected")
    assert len(recv(r1)[1]) == 5 and len(recv(r2)[1]) == 1
    procs.join_all(10)


# --------------------------------------------------------------- cancellation


def test_cancelled_aget_takes_nothing_when_nothing_comes(q, slice_):
    slice_(0.2)
    c = q.consumer()
    p = q.producer()

    async def main():
        t = asyncio.ensure_future(aio.aget(c))
        await until(lambda: not turn_free(c), what="the waiter")
        t0 = time.monotonic()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await until(lambda: turn_free(c), timeout=5, what="the cancelled waiter to go")
        return time.monotonic() - t0

    lingered = run(main())
    assert lingered < 0.2 + 1.0     # one slice (plus scheduling on a busy machine)
    assert c.outstanding == 0
    mid = p.put(b"after")
    m = q.consumer().get(timeout=1)
    assert (m.id, m.body, m.delivery_count) == (mid, b"after", 1)
    m.ack()


def test_cancelled_aget_gives_back_what_it_took(make_queue, procs, slice_):
    """The message arrives while the cancelled waiter lingers and no aget
    follows: it is nacked, and another process gets it (delivery_count 2)."""
    # The waiter's blocking call gets a 60 s slice, so the put below lands
    # inside it however slow the machine; the slice is then cut to 0.05 s, so
    # the taken message is given back at once instead of after 60 s.
    slice_(60.0)
    q = make_queue(capacity=8, message_size=64)
    c = Entered(q.consumer())
    p = q.producer()
    gate = FORK.Event()
    r, w = FORK.Pipe(duplex=False)
    procs(gated_consumer, q.name, 1, gate, 30, "ack", w)

    async def main():
        t = asyncio.ensure_future(aio.aget(c))
        await until(c.entered.is_set, what="the waiter inside its call")
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        slice_(0.05)   # read when the message is taken: no adopter is awaited
        mid = p.put(b"taken by the lingering waiter")   # inside the waiter's 60 s call
        await until(lambda: turn_free(c), timeout=5, what="the give-back")
        gate.set()   # only now may the other process look: it must find the given-back message
        return mid

    mid = run(main())
    got = recv(r)[1]
    assert got == [(mid, b"taken by the lingering waiter", 2)]
    st = q.stats()
    assert (st["acked"], st["nacked"], st["depth"], st["in_flight"]) == (1, 1, 0, 0)
    assert c.outstanding == 0
    procs.join_all(10)


def test_next_aget_adopts_a_cancelled_waiter(q, slice_):
    """Cancel, message, aget again within the slice: a first delivery, no nack.
    The slice is 60 s so that the next aget comes inside it however slow the
    machine (the adopter takes over at once; nothing waits the slice out)."""
    slice_(60.0)
    c = Entered(q.consumer())
    p = q.producer()

    async def main():
        out = []
        for i in range(5):
            c.entered.clear()
            t = asyncio.ensure_future(aio.aget(c))
            await until(c.entered.is_set, what="the waiter inside its call")
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            mid = p.put(b"m%d" % i)
            m = await aio.aget(c, timeout=5)
            out.append((m.id == mid, m.body, m.delivery_count))
            m.ack()
        return out

    assert run(main()) == [(True, b"m%d" % i, 1) for i in range(5)]
    assert q.stats()["nacked"] == 0


def test_wait_for_loop_loses_nothing(make_queue, procs):
    """The usual asyncio.wait_for(aget(), t) loop against a paced producer."""
    q = make_queue(capacity=16, message_size=64, max_deliveries=None)
    n = 200
    r, w = FORK.Pipe(duplex=False)
    procs(paced_producer, q.name, n, 0.005, w)   # slower than the wait_for below: it times out
    c = q.consumer()

    async def main():
        got, timeouts = [], 0
        while len(got) < n:
            try:
                m = await asyncio.wait_for(aio.aget(c), 0.002)
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            got.append((m.body, m.delivery_count))
            m.ack()
        return got, timeouts

    got, timeouts = run(main())
    recv(r)
    assert sorted(b for b, _ in got) == sorted(b"m-%d" % i for i in range(n))
    assert timeouts > 0
    st = q.stats()
    assert (st["acked"], st["depth"], st["in_flight"], st["dead_lettered_total"]) == (n, 0, 0, 0)
    procs.join_all(10)


def test_cancel_storm_every_message_acked_exactly_once(make_queue, procs):
    """Cancels at random moments (some followed at once by another aget, some
    by a pause longer than the cancel slice) while a child produces: every
    message is delivered and acked exactly once, none is stuck."""
    q = make_queue(capacity=16, message_size=64, max_deliveries=None)
    n = 300
    r, w = FORK.Pipe(duplex=False)
    procs(paced_producer, q.name, n, 0.004, w)   # slower than the loop: most agets wait
    c = aio.AsyncConsumer(q.consumer())
    rng = random.Random(11)

    async def main():
        acked = []
        cancels = 0
        deadline = time.monotonic() + 60
        while len(acked) < n:
            assert time.monotonic() < deadline, "only %d of %d acked" % (len(acked), n)
            t = asyncio.ensure_future(c.aget(timeout=10))
            await asyncio.sleep(rng.choice([0, 0, 0, 0.0005, 0.002]))   # when the cancel lands
            t.cancel()
            try:
                m = await t
            except asyncio.CancelledError:
                cancels += 1
                if rng.random() < 0.2:
                    await asyncio.sleep(aio.CANCEL_SLICE * 1.5)   # no adopter this time
                continue
            acked.append((m.body, m.delivery_count))   # the cancel came too late: it is ours
            m.ack()
        return acked, cancels

    acked, cancels = run(main(), timeout=90)
    print("cancels %d, redelivered %d, nacked %d" % (cancels, sum(1 for _, dc in acked if dc > 1),
                                                      q.stats()["nacked"]))
    recv(r)
    bodies = [b for b, _ in acked]
    assert len(bodies) == len(set(bodies)) == n
    assert set(bodies) == {b"m-%d" % i for i in range(n)}
    assert cancels >= 30
    st = q.stats()
    assert (st["published"], st["acked"], st["depth"], st["in_flight"]) == (n, n, 0, 0)
    assert st["dead_lettered_total"] == 0
    # every give-back shows up as a redelivery, and only those
    assert sum(1 for _, dc in acked if dc > 1) <= st["nacked"]
    procs.join_all(10)


def test_cancelled_aput_stores_nothing(q, slice_):
    slice_(0.2)
    p = q.producer()
    for i in range(q.capacity):
        p.put(b"fill-%d" % i)

    async def main():
        t = asyncio.ensure_future(aio.aput(p, b"never"))
        await until(lambda: not turn_free(p), what="the waiter")
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await until(lambda: turn_free(p), timeout=5, what="the cancelled waiter to go")

    run(main())
    c = q.consumer()
    bodies = [m.body for m in c.get_many(64, timeout=1)]
    assert bodies == [b"fill-%d" % i for i in range(q.capacity)]
    assert q.stats()["published"] == q.capacity


def test_cancelled_aput_aborts_its_reservation(q, slice_):
    """A slot frees up inside the cancelled waiter's slice: it reserves it,
    sees the cancel and aborts; the message is never published."""
    slice_(0.5)
    p = q.producer()
    c = q.consumer()
    for i in range(q.capacity):
        p.put(b"fill-%d" % i)

    async def main():
        t = asyncio.ensure_future(aio.aput(p, b"never"))
        await until(lambda: not turn_free(p), what="the waiter")
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        c.get(timeout=1).ack()             # frees a slot inside the 0.5 s slice
        await until(lambda: turn_free(p), timeout=5, what="the cancelled waiter to go")

    run(main())
    rest = [m.body for m in c.get_many(64, timeout=0.2)]
    assert b"never" not in rest and len(rest) == q.capacity - 1
    assert q.stats()["published"] == q.capacity


# ------------------------------------------------------- threads and processes


def test_more_waits_than_threads_all_finish(make_queue, procs, slice_):
    """Six consumers waiting at once on a pool of two threads: they take
    turns slice by slice, and none starves."""
    slice_(0.02)
    old = aio.MAX_THREADS
    aio.configure(max_threads=2)
    try:
        qs = [make_queue(capacity=4, message_size=16, name="mt-%d-%s" % (i, id(procs))) for i in range(6)]
        cs = [q.consumer() for q in qs]

        async def main():
            tasks = [asyncio.ensure_future(aio.aget(c, timeout=30)) for c in cs]
            await until(lambda: all(not turn_free(c) for c in cs), what="six waiters")
            for i, q in enumerate(qs):
                q.producer().put(b"q%d" % i)
            ms = await asyncio.gather(*tasks)
            for m in ms:
                m.ack()
            return [m.body for m in ms]

        assert run(main()) == [b"q%d" % i for i in range(6)]
    finally:
        aio.configure(max_threads=old)


def test_aio_in_a_forked_child(q, procs):
    """The parent's waiter threads do not survive fork: the child gets a pool of its own."""
    c = q.consumer()

    async def warm():
        # leave a waiter thread of the parent's pool alive across the fork
        with pytest.raises(ackring.Empty):
            await aio.aget(c, timeout=0.05)
    run(warm())
    r, w = FORK.Pipe(duplex=False)
    procs(async_child, q.name, 1, w)   # it puts one message and takes it back
    msg = recv(r)
    assert msg[1] == [b"from-child"] and msg[2] == "acked"
    procs.join_all(10)


def test_async_consumer_forked_while_its_parent_waits(q, procs):
    """At the fork the parent's aget holds the consumer's turn; the child's
    copy of the AsyncConsumer must not inherit that (its waiter thread is
    not in the child)."""
    ac = aio.AsyncConsumer(q.consumer())
    r, w = FORK.Pipe(duplex=False)

    async def main():
        t = asyncio.ensure_future(ac.aget())
        await until(lambda: not turn_free(ac.consumer), what="the waiter")
        procs(inherited_async_consumer, ac, w)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await until(lambda: turn_free(ac.consumer), what="the cancelled waiter to go")
        q.producer().put(b"for the child")

    run(main())
    assert recv(r) == ("got", b"for the child", 1)
    procs.join_all(10)


def test_consumer_closed_while_waiting(q):
    c = q.consumer()

    async def main():
        t = asyncio.ensure_future(aio.aget(c))
        await until(lambda: not turn_free(c), what="the waiter")
        c.close()
        with pytest.raises(ackring.QueueClosed):
            await asyncio.wait_for(t, 5)

    run(main())


# ----------------------------------------------------------------- bad input


def test_bad_arguments(q):
    c = q.consumer()
    p = q.producer()

    async def main():
        with pytest.raises(ValueError):
            await aio.aget(c, timeout=-1)
        with pytest.raises(TypeError):
            await aio.aget(c, timeout="soon")
        with pytest.raises(ValueError):
            await aio.aget_many(c, 0)
        with pytest.raises(TypeError):
            await aio.aput(p, "text")
        with pytest.raises(ackring.MessageTooLarge):
            await aio.aput(p, b"x" * (q.message_size + 1))
        c.close()
        with pytest.raises(ackring.QueueClosed):
            await aio.aget(c, timeout=1)
        p.close()
        with pytest.raises(ackring.QueueClosed):
            await aio.aput(p, b"x")
        with pytest.raises(ackring.QueueClosed):
            await aio.await_acked(p, 0, timeout=1)

    run(main())
    with pytest.raises(TypeError):
        aio.AsyncConsumer(object())
    with pytest.raises(TypeError):
        aio.AsyncProducer(q)
    with pytest.raises(ValueError):
        aio.configure(max_threads=0)
    with pytest.raises(ValueError):
        aio.configure(cancel_slice=0)
