"""Delivery semantics that hold on both backends, run over each: the
shared-memory ring (``ackring.create``) and a RabbitMQ broker
(``ackring.connect(url).create``).  Only the public API is used.

Where the broker legitimately differs (it keeps no delivery count in x-death,
it decides "full" on ready messages), the test says so next to the
assertion; everything else must be the same.  The amqp half is skipped
without a broker (see tests/_backends.py), and fails instead with
ACKRING_REQUIRE_AMQP=1.  Multi-process tests run real processes (the
``procs`` fixture reaps them) and count every message; every wait is bounded.
"""

import multiprocessing
import os
import pickle
import signal
import time
from collections import Counter

import pytest

import ackring
import _backends as B
from _backends import drain, take, wait_past, wait_until

MP = multiprocessing.get_context("fork")


@pytest.fixture(params=["shm", "amqp"])
def backend(request):
    return request.param


@pytest.fixture
def make_backend_queue(backend):
    """Factory: make_backend_queue(capacity=8, message_size=256, **create_kw)."""
    maker = B.Maker(backend)
    try:
        yield maker
    finally:
        maker.cleanup()


@pytest.fixture
def backend_queue(make_backend_queue):
    """A small queue on the backend under test: capacity 8, message_size 256."""
    q = make_backend_queue()
    yield q
    q.close()


def recv(conn, timeout=30):
    assert conn.poll(timeout), "no report from the child within %s s" % timeout
    status, value = conn.recv()
    if status == "error":
        raise AssertionError("child failed:\n%s" % value)
    return value


def dead_letters(q, timeout=5.0, expect=None):
    """The DLQ's messages, acked: [(body, death)].  With ``expect``, waits
    (bounded) until that many arrived: on a broker, dead-lettering runs
    after the settle that caused it returned."""
    out = []
    with q.dead_letters.consumer() as dc:
        deadline = time.monotonic() + timeout
        while True:
            wait = 0.0 if expect is None or len(out) >= expect else max(0.0, deadline - time.monotonic())
            try:
                m = dc.get(timeout=wait)
            except ackring.Empty:
                return out
            out.append((m.body, m.death))
            m.ack()


# ------------------------------------------------------------- put, get, ack


def test_put_get_ack_in_order(backend_queue):
    q = backend_queue
    with q.producer() as p, q.consumer() as c:
        ids = [p.put(b"m%d" % i) for i in range(3)]
        ids += p.put_many([b"m3", b"m4"])
        assert len(set(ids)) == 5
        got = [c.get(timeout=5) for _ in range(5)]
        assert [m.id for m in got] == ids
        assert [m.body for m in got] == [b"m%d" % i for i in range(5)]
        assert all(m.delivery_count == 1 and not m.redelivered for m in got)
        assert all(m.death is None for m in got)
        assert all(abs(m.publish_time_ns / 1e9 - time.time()) < 60 for m in got)
        for m in got:
            m.ack()
            assert m.settled
    with q.consumer() as c:            # acked ones never come back
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)


def test_bytes_like_bodies(backend_queue):
    q = backend_queue
    with q.producer() as p, q.consumer() as c:
        p.put(bytearray(b"ba"))
        p.put(memoryview(b"xmvx")[1:3])
        p.put(b"")
        assert [m.body for m in take(c, 3)] == [b"ba", b"mv", b""]


def test_get_many_waits_for_the_first_only(backend_queue):
    q = backend_queue
    with q.producer() as p, q.consumer() as c:
        with pytest.raises(ackring.Empty):
            c.get_many(4, timeout=0.1)
        p.put_many([b"a", b"b", b"c"])
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            ms = c.get_many(4, timeout=5)
            assert 1 <= len(ms) <= 4
            got += ms
        assert [m.body for m in got] == [b"a", b"b", b"c"]
        c.ack_many(got)


def test_nack_redelivers_with_same_id_and_key(backend_queue):
    q = backend_queue
    with q.producer() as p, q.consumer(prefetch=1) as c:
        mid = p.put(b"again")
        m = c.get(timeout=5)
        key = m.key
        hash(key)
        assert (m.id, m.delivery_count, m.redelivered) == (mid, 1, False)
        m.nack()
        m = c.get(timeout=5)
        assert (m.id, m.body, m.delivery_count, m.redelivered) == (mid, b"again", 2, True)
        assert m.key == key
        m.ack()
        other = p.put(b"other")
        m2 = c.get(timeout=5)
        assert m2.id == other and m2.key != key
        m2.ack()


def test_nacked_message_comes_back_before_new_ones(backend_queue):
    # prefetch=1: nothing of the new ones is prefetched while we hold the
    # first, so this holds on a broker too (see README "Scaling out").
    q = backend_queue
    with q.producer() as p, q.consumer(prefetch=1) as c:
        first = p.put(b"first")
        p.put_many([b"second", b"third"])
        m = c.get(timeout=5)
        assert m.id == first
        m.nack()
        assert [m.body for m in take(c, 3)] == [b"first", b"second", b"third"]


def test_message_context_manager(backend_queue):
    q = backend_queue
    with q.producer() as p, q.consumer(prefetch=1) as c:
        mid = p.put(b"ctx")
        with pytest.raises(RuntimeError):
            with c.get(timeout=5) as m:
                raise RuntimeError("handler failed")
        assert m.settled                       # nacked (requeued) on the way out
        with c.get(timeout=5) as m:
            assert (m.id, m.delivery_count) == (mid, 2)
        assert m.settled                       # acked
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)


def test_iteration_ends_when_the_consumer_closes(backend_queue):
    q = backend_queue
    with q.producer() as p:
        p.put_many([b"i%d" % i for i in range(5)])
    c = q.consumer()
    seen = []
    for m in c:
        seen.append(m.body)
        m.ack()
        if len(seen) == 3:
            c.close()
    assert seen == [b"i0", b"i1", b"i2"]
    with q.consumer() as c2:                   # the other two are still there
        assert [m.body for m in take(c2, 2)] == [b"i3", b"i4"]


def test_closing_a_consumer_requeues_what_it_holds(backend_queue):
    q = backend_queue
    with q.producer() as p:
        ids = p.put_many([b"h0", b"h1"])
    c = q.consumer()
    held = [c.get(timeout=5), c.get(timeout=5)]
    assert c.outstanding == 2
    c.close()
    assert c.outstanding == 0
    with pytest.raises(ackring.QueueClosed):
        held[0].ack()
    with q.consumer() as c2:
        again = take(c2, 2)
    assert sorted(m.id for m in again) == sorted(ids)
    assert all(m.redelivered and m.delivery_count == 2 for m in again)


# ---------------------------------------------------------------- dead letters


def test_reject_and_nack_without_requeue_dead_letter(backend_queue, backend):
    q = backend_queue
    with q.producer() as p, q.consumer(prefetch=1) as c:
        ids = [p.put(b"first"), p.put(b"second")]
        m = c.get(timeout=5)
        t_pub = m.publish_time_ns / 1e9
        m.reject()
        c.get(timeout=5).nack(requeue=False)
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)                 # neither comes back
    got = dead_letters(q, expect=2)
    assert [b for b, _ in got] == [b"first", b"second"]
    for (_, death), mid in zip(got, ids):
        assert death["reason"] == "rejected"
        assert death["id"] == mid
        # shm: the queue's queue_id; amqp: the queue's name (x-death "queue")
        assert death["queue_id"] == (q.queue_id if backend == "shm" else q.name)
        # the broker keeps no delivery count in x-death
        assert death["delivery_count"] == (1 if backend == "shm" else None)
        assert abs(death["first_publish_time"] - time.time()) < 60
        assert death["time"] >= death["first_publish_time"] - 1   # x-death time has 1 s resolution
    assert got[0][1]["first_publish_time"] == pytest.approx(t_pub, abs=1e-6)


def test_dead_letter_rejected_on_the_dlq_is_dropped(backend_queue):
    q = backend_queue
    assert q.dead_letters.dead_letters is None   # a DLQ has no DLQ of its own
    with q.producer() as p, q.consumer() as c:
        p.put(b"twice dead")
        c.get(timeout=5).reject()
    with q.dead_letters.consumer() as dc:
        m = dc.get(timeout=5)
        assert m.death["reason"] == "rejected"
        m.reject()
        with pytest.raises(ackring.Empty):
            dc.get(timeout=0.3)
    with q.dead_letters.consumer() as dc:      # not held anywhere either
        with pytest.raises(ackring.Empty):
            dc.get(timeout=0.3)


def test_delivery_limit(make_backend_queue, backend):
    q = make_backend_queue(max_deliveries=3)
    with q.producer() as p, q.consumer(prefetch=1) as c:
        mid = p.put(b"poison")
        good = p.put(b"good")
        for k in range(1, 4):
            m = c.get(timeout=5)
            assert (m.id, m.delivery_count) == (mid, k)
            m.nack()
        m = c.get(timeout=5)                   # the 4th delivery never happens
        assert m.id == good
        m.ack()
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)
    [(body, death)] = dead_letters(q, expect=1)
    assert (body, death["reason"], death["id"]) == (b"poison", "delivery_limit", mid)
    assert death["delivery_count"] == (3 if backend == "shm" else None)


def test_delivery_limit_none_is_unlimited(make_backend_queue):
    q = make_backend_queue(max_deliveries=None)
    with q.producer() as p, q.consumer(prefetch=1) as c:
        mid = p.put(b"again")
        for _ in range(25):                    # past the default of 20
            c.get(timeout=5).nack()
        m = c.get(timeout=5)
        assert (m.id, m.delivery_count) == (mid, 26)
        m.ack()
    assert dead_letters(q) == []


# ---------------------------------------------------------------- TTL


def test_expired_messages_are_never_delivered(make_backend_queue):
    q = make_backend_queue()
    with q.producer() as p, q.consumer() as c:     # subscribed before the puts
        t0 = time.monotonic()
        short = [p.put(b"stale-1", ttl=0.05), p.put(b"stale-2", ttl=0.05)]
        live = p.put(b"live")
        short += p.put_many([b"stale-3"], ttl=0.05)
        wait_past(t0 + 0.1)
        m = c.get(timeout=5)
        assert (m.id, m.body) == (live, b"live")
        m.ack()
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)
    dead = dead_letters(q, expect=3)
    assert sorted(d["id"] for _, d in dead) == sorted(short)
    assert {d["reason"] for _, d in dead} == {"expired"}


@pytest.mark.parametrize("queue_ttl, msg_ttl, expires", [
    (0.1, 60, True),      # the queue's lower ttl wins
    (60, 0.1, True),      # the message's lower ttl wins
    (0.1, None, True),    # the queue default applies
    (60, None, False),
])
def test_lower_ttl_wins(make_backend_queue, queue_ttl, msg_ttl, expires):
    q = make_backend_queue(ttl=queue_ttl)
    assert q.config["ttl"] == queue_ttl
    with q.producer() as p:
        t0 = time.monotonic()
        ids = [p.put(b"one", ttl=msg_ttl), *p.put_many([b"two"], ttl=msg_ttl)]
    wait_past(t0 + 0.15)
    with q.consumer() as c:
        got = [m.body for m in drain(c, 0.3)]
    if expires:
        assert got == []
        assert sorted(d["id"] for _, d in dead_letters(q, expect=2)) == sorted(ids)
    else:
        assert got == [b"one", b"two"]
        assert dead_letters(q) == []


def test_requeued_message_can_expire(backend_queue):
    q = backend_queue
    with q.producer() as p, q.consumer() as c:
        t0 = time.monotonic()
        mid = p.put(b"slow", ttl=0.1)
        m = c.get(timeout=5)                   # delivered in time ...
        wait_past(t0 + 0.15)
        m.nack()                               # ... given back after its ttl ran out
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)
    [(_, d)] = dead_letters(q, expect=1)
    assert (d["id"], d["reason"]) == (mid, "expired")


def test_bad_ttl(backend_queue):
    with backend_queue.producer() as p:
        for bad in (0, -1):
            with pytest.raises(ValueError):
                p.put(b"x", ttl=bad)
        with pytest.raises(TypeError):
            p.put(b"x", ttl="1")


# ---------------------------------------------------------------- prefetch


def test_prefetch_accounting(backend_queue):
    q = backend_queue
    with q.producer() as p:
        p.put_many([b"m%d" % i for i in range(8)])
    c = q.consumer(prefetch=3)
    assert c.prefetch == 3 and c.outstanding == 0
    a, b, d = c.get(timeout=5), c.get(timeout=5), c.get(timeout=5)
    assert c.outstanding == 3
    t0 = time.monotonic()
    with pytest.raises(ackring.PrefetchExceeded):
        c.get()                                # no timeout, yet it raises at once
    with pytest.raises(ackring.PrefetchExceeded):
        c.get_many(4, timeout=None)
    assert time.monotonic() - t0 < 1
    a.ack()
    b.nack()
    d.reject()
    assert c.outstanding == 0
    ms = []
    deadline = time.monotonic() + 10
    while len(ms) < 3 and time.monotonic() < deadline:
        ms += c.get_many(10, timeout=5)        # never more than the allowance
        assert len(ms) <= 3
    assert len(ms) == 3 and c.outstanding == 3
    c.ack_many(ms[:2])
    assert c.outstanding == 1
    c.close()                                  # requeues the last one, resets the count
    assert c.outstanding == 0
    with pytest.raises(ValueError):
        q.consumer(prefetch=0)


# ---------------------------------------------------------------- ack_many and misuse


def test_ack_many(backend_queue):
    q = backend_queue
    with q.producer() as p:
        ids = p.put_many([b"b%d" % i for i in range(6)])
    c = q.consumer(prefetch=6)
    ms = []
    deadline = time.monotonic() + 10
    while len(ms) < 6 and time.monotonic() < deadline:
        ms += c.get_many(6 - len(ms), timeout=5)
    assert [m.id for m in ms] == ids
    c.ack_many(ms[:4])
    assert all(m.settled for m in ms[:4]) and c.outstanding == 2
    with pytest.raises(ackring.AlreadySettled):
        c.ack_many([ms[4], ms[0]])
    with pytest.raises(ackring.AlreadySettled):
        c.ack_many([ms[4], ms[4]])
    assert not ms[4].settled and c.outstanding == 2   # nothing acked by a refused batch
    with pytest.raises(TypeError):
        c.ack_many([b"not a message"])
    c.ack_many(m for m in ms[4:])              # any iterable
    c.ack_many([])
    assert c.outstanding == 0
    c.close()
    with q.consumer() as c2:                   # every one acked: nothing was requeued
        with pytest.raises(ackring.Empty):
            c2.get(timeout=0.3)


def test_ack_many_refuses_another_consumers_message(backend_queue):
    q = backend_queue
    with q.producer() as p:
        p.put_many([b"x", b"y"])
    with q.consumer(prefetch=1) as c1, q.consumer(prefetch=1) as c2:
        m1 = c1.get(timeout=5)
        m2 = c2.get(timeout=5)
        with pytest.raises(ValueError):
            c1.ack_many([m1, m2])
        assert not m1.settled
        c1.ack_many([m1])
        c2.ack_many([m2])


def test_double_settle_and_use_after_close(backend_queue):
    q = backend_queue
    p = q.producer()
    c = q.consumer()
    p.put(b"once")
    m = c.get(timeout=5)
    m.ack()
    for settle in (m.ack, m.nack, m.reject):
        with pytest.raises(ackring.AlreadySettled):
            settle()
    p.close()
    p.close()                                  # idempotent
    with pytest.raises(ackring.QueueClosed):
        p.put(b"late")
    c.close()
    with pytest.raises(ackring.QueueClosed):
        c.get(timeout=0)
    assert p.closed and c.closed
    q.close()
    q.close()
    assert q.closed
    with pytest.raises(ackring.QueueClosed):
        q.producer()
    with pytest.raises(ackring.QueueClosed):
        q.consumer()


def test_bad_input(make_backend_queue, backend):
    q = make_backend_queue(message_size=16)
    api = make_backend_queue.api
    with q.producer() as p:
        for bad in ("text", 123, None):
            with pytest.raises(TypeError):
                p.put(bad)
        with pytest.raises(ackring.MessageTooLarge):
            p.put(b"x" * 17)
        with pytest.raises(ackring.MessageTooLarge):
            p.put_many([b"ok", b"x" * 17])     # checked before anything is stored
        with pytest.raises(ValueError):
            p.put(b"x", timeout=-1)
    with q.consumer() as c:
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.2)                 # nothing of the refused ones was stored
        with pytest.raises(ValueError):
            c.get(timeout=-1)
        with pytest.raises(ValueError):
            c.get_many(0)
    for name in ("", ".hidden", "a/b", "x" * 201):
        with pytest.raises(ValueError):
            api.create(name)
    with pytest.raises(ValueError):
        api.create(q.name + "b.dlq")           # the dead-letter queues' names
    with pytest.raises(FileExistsError):
        api.create(q.name, message_size=16)
    again = api.create(q.name, capacity=8, message_size=16, exist_ok=True)
    again.close()
    missing = B.unique_name()
    with pytest.raises(ackring.QueueNotFound):
        api.open(missing)
    with pytest.raises(ackring.QueueNotFound):
        api.unlink(missing)
    api.unlink(missing, missing_ok=True)
    with pytest.raises(ValueError):
        api.create(B.unique_name(), max_deliveries=0)


def test_full_queue(make_backend_queue, backend):
    q = make_backend_queue(capacity=4)
    with q.producer() as p:
        stored = []
        with pytest.raises(ackring.Full):
            for i in range(8):
                stored.append(p.put(b"f%d" % i, timeout=0))
        # shm counts every unsettled message against capacity; the broker
        # (x-max-length) counts ready ones, and its quorum queues admit one more
        assert len(stored) in ((4,) if backend == "shm" else (4, 5))
        t0 = time.monotonic()
        with pytest.raises(ackring.Full) as ei:
            p.put_many([b"late-1", b"late-2"], timeout=0.2)
        assert ei.value.ids == []
        assert 0.19 <= time.monotonic() - t0 < 10
        with q.consumer() as c:
            c.get(timeout=5).ack()
            p.put(b"room again", timeout=10)   # a put waiting for room gets it
            rest = [b"f%d" % i for i in range(1, len(stored))] + [b"room again"]
            assert [m.body for m in take(c, len(rest))] == rest


def test_stats_depth_and_consumers(backend_queue):
    q = backend_queue
    with q.producer() as p:
        p.put_many([b"s0", b"s1", b"s2"])
    wait_until(lambda: q.stats()["depth"] == 3, 10, "depth 3")
    with q.consumer() as c:
        wait_until(lambda: q.stats()["consumers"] == 1, 10, "one consumer")
        take(c, 3)
    wait_until(lambda: q.stats()["depth"] == 0 and q.stats()["consumers"] == 0, 10, "an empty queue")


# ---------------------------------------------------------------- processes


def test_queue_pickles_and_a_spawned_child_reconnects(backend_queue, procs):
    q = backend_queue
    clone = pickle.loads(pickle.dumps(q))
    assert clone.name == q.name
    clone.close()
    parent, child = multiprocessing.Pipe()
    procs(B.produce, q, "spawned", 5, child, method="spawn")
    ids = recv(parent, 60)
    procs.join_all(30)
    assert [pr.exitcode for pr in procs.started] == [0]
    with q.consumer() as c:
        got = take(c, 5)
    assert [m.id for m in got] == ids
    assert [m.body for m in got] == [b"spawned:%d" % i for i in range(5)]


@pytest.mark.timeout(90)
def test_many_producers_and_consumers_every_message_once(make_backend_queue, procs):
    q = make_backend_queue(capacity=256, message_size=64)
    n_prod, n_cons, per = 2, 2, 150
    stop = MP.Event()
    acked = MP.Value("q", 0)
    cons_conns, prod_conns = [], []
    for _ in range(n_cons):
        a, b = MP.Pipe()
        procs(B.consume_until, q, stop, b, 60, acked, n_prod * per)
        cons_conns.append(a)
    for i in range(n_prod):
        a, b = MP.Pipe()
        procs(B.produce, q, "p%d" % i, per, b)
        prod_conns.append(a)
    ids = {i: recv(a, 60) for i, a in enumerate(prod_conns)}
    stop.set()
    got = [x for a in cons_conns for x in recv(a, 60)]
    procs.join_all(30)
    assert all(pr.exitcode == 0 for pr in procs.started)
    expected = {mid: b"p%d:%d" % (i, k) for i, mids in ids.items() for k, mid in enumerate(mids)}
    assert len(expected) == n_prod * per       # ids are unique across producers
    seen = Counter(mid for mid, _, _ in got)
    assert set(seen) == set(expected) and set(seen.values()) == {1}
    assert all(body == expected[mid] and count == 1 for mid, body, count in got)
    with q.consumer() as c:
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.3)


@pytest.mark.timeout(60)
def test_killed_consumer_messages_are_redelivered(backend_queue, procs):
    q = backend_queue
    # The producer stays open: on shm its process's watchdog does the reclaiming.
    with q.producer() as p:
        ids = p.put_many([b"k%d" % i for i in range(4)])
        parent, child = multiprocessing.Pipe()
        victim = procs(B.hold_then_hang, q, 3, child, 30)
        held = recv(parent, 30)
        assert held == ids[:3]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL
        with q.consumer() as c:
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 4 and time.monotonic() < deadline:
                try:
                    got.append(c.get(timeout=1))
                except ackring.Empty:
                    pass
            assert sorted(m.id for m in got) == sorted(ids)
            by_id = {m.id: m for m in got}
            for mid in held:
                assert by_id[mid].redelivered and by_id[mid].delivery_count == 2
            assert not by_id[ids[3]].redelivered and by_id[ids[3]].delivery_count == 1
            c.ack_many(got)
