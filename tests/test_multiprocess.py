"""Real processes: MPMC delivery accounting, FIFO, fork/spawn/forkserver hand-over,
blocking calls released from another process, SIGINT, crash recovery."""

import multiprocessing
import os
import signal
import time
from array import array

import pytest

import ackring
import _ar_workers as W

SIZE = 64


def _unpack(b):
    return array("Q", b)


def _run_mpmc(procs, qname, method, n_producers, per_producer, n_consumers, batch,
              capacity=1024, timeout=90):
    ctx = multiprocessing.get_context(method)
    q = ackring.create(qname, capacity=capacity, message_size=SIZE)
    try:
        result_q = ctx.Queue()
        producers_done = ctx.Event()
        started = ctx.Semaphore(0)
        for ci in range(n_consumers):
            # consumers get the parent's Queue object: inherited by fork, pickled by spawn
            procs(W.consumer_worker, q, ci, started, producers_done, result_q, batch, SIZE,
                  timeout - 10, method=method)
        # every consumer is registered and about to get before any message exists
        for _ in range(n_consumers):
            if not started.acquire(timeout=30):
                W.collect(result_q, n_producers + n_consumers, procs, 1)  # child's traceback
                pytest.fail("a consumer did not start")
        for pi in range(n_producers):
            procs(W.producer_worker, qname, pi, per_producer, SIZE, result_q, method=method)

        def on_item(item, out):
            if sum(1 for r in out if r[0] == "producer") == n_producers:
                producers_done.set()

        results = W.collect(result_q, n_producers + n_consumers, procs, timeout, on_item)
        procs.join_all(15)
        assert all(p.exitcode == 0 for p in procs.started), [p.exitcode for p in procs.started]
        stats = q.stats()
    finally:
        q.close()
        ackring.unlink(qname, missing_ok=True)
    prod = {r[1]: _unpack(r[2]) for r in results if r[0] == "producer"}
    cons = {r[1]: r[2:] for r in results if r[0] == "consumer"}
    assert sorted(prod) == list(range(n_producers))
    assert sorted(cons) == list(range(n_consumers))
    return prod, cons, stats


def _check_exactly_once(prod, cons, stats, n_producers, per_producer):
    total = n_producers * per_producer
    # producer side: put ids unique overall (an id names a slot and its use,
    # so with acks out of order ids are not increasing: design.md 3.4)
    all_put_ids = set()
    for pi, ids in prod.items():
        assert len(ids) == per_producer
        assert len(set(ids)) == len(ids), "producer %d got an id twice" % pi
        all_put_ids.update(ids)
    assert len(all_put_ids) == total

    seen_keys = []
    seen_ids = []
    for ci, (keys_b, ids_b, bad_sample, n_bad, n_redelivered, timed_out) in cons.items():
        assert not timed_out, "consumer %d hit its deadline" % ci
        assert n_bad == 0, "consumer %d saw %d corrupt bodies, e.g. %r" % (ci, n_bad, bad_sample)
        assert n_redelivered == 0, "consumer %d saw %d redeliveries" % (ci, n_redelivered)
        keys, ids = _unpack(keys_b), _unpack(ids_b)
        assert len(keys) == len(ids)
        seen_keys.extend(keys)
        seen_ids.extend(ids)

    expected = {W.key(pi, seq) for pi in range(n_producers) for seq in range(per_producer)}
    assert len(seen_keys) == total, "acked %d messages, expected %d" % (len(seen_keys), total)
    assert len(set(seen_keys)) == total, "duplicate deliveries"
    assert set(seen_keys) == expected, "missing: %d" % len(expected - set(seen_keys))
    # the id a consumer saw is the id the producer's put returned for that message
    put_id_of = {W.key(pi, seq): ids[seq] for pi, ids in prod.items() for seq in range(len(ids))}
    assert all(put_id_of[k] == i for k, i in zip(seen_keys, seen_ids))

    assert stats["published"] == total
    assert stats["acked"] == total
    assert stats["depth"] == 0
    assert stats["in_flight"] == 0
    assert stats["redelivered"] == 0


@pytest.mark.timeout(150)
@pytest.mark.parametrize("method,per_producer", [("fork", 50_000), ("spawn", 25_000)])
def test_mpmc_exactly_once(procs, qname, method, per_producer):
    prod, cons, stats = _run_mpmc(procs, qname, method, n_producers=2,
                                  per_producer=per_producer, n_consumers=2, batch=32)
    _check_exactly_once(prod, cons, stats, 2, per_producer)
    # both consumers took part (each got something) -- real concurrency happened
    assert all(len(_unpack(c[0])) > 0 for c in cons.values())


@pytest.mark.timeout(150)
@pytest.mark.parametrize("method,per_producer", [("fork", 50_000), ("spawn", 20_000)])
def test_per_producer_fifo_single_consumer(procs, qname, method, per_producer):
    prod, cons, stats = _run_mpmc(procs, qname, method, n_producers=2,
                                  per_producer=per_producer, n_consumers=1, batch=1,
                                  capacity=256)
    _check_exactly_once(prod, cons, stats, 2, per_producer)
    keys = _unpack(cons[0][0])
    last = {0: -1, 1: -1}
    for k in keys:
        pi, seq = k >> 40, k & ((1 << 40) - 1)
        assert seq > last[pi], "producer %d: seq %d delivered after %d" % (pi, seq, last[pi])
        last[pi] = seq
    assert last == {0: per_producer - 1, 1: per_producer - 1}


@pytest.mark.timeout(60)
def test_mpmc_small_capacity_contention(procs, qname):
    """Capacity 4 with 2+2 processes: constant full/empty transitions and wrap-around."""
    prod, cons, stats = _run_mpmc(procs, qname, "fork", n_producers=2, per_producer=5_000,
                                  n_consumers=2, batch=4, capacity=4, timeout=50)
    _check_exactly_once(prod, cons, stats, 2, 5_000)


@pytest.mark.timeout(60)
def test_queue_pickled_to_forkserver_child(procs, qname):
    import multiprocessing.forkserver as fs

    # The forkserver is a long-lived child; (re)start it inside this test so it
    # carries this test's ACKRING_DIR, and stop it afterwards.
    stop = getattr(fs._forkserver, "_stop", lambda: None)
    stop()
    try:
        ctx = multiprocessing.get_context("forkserver")
        q = ackring.create(qname, capacity=64, message_size=32)
        result_q = ctx.Queue()
        n = 500
        procs(W.pickled_queue_producer, q, n, result_q, method="forkserver")
        c = q.consumer()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            try:
                m = c.get(timeout=0.2)
            except ackring.Empty:
                assert procs.started[0].exitcode in (None, 0), "child died"
                continue
            got.append((m.id, m.body))
            m.ack()
        (res,) = W.collect(result_q, 1, procs, 30)
        _, child_name, child_qid, child_ids = res
        assert child_name == qname
        assert child_qid == q.queue_id
        assert [b for _, b in got] == [b"fs-%d" % i for i in range(n)]
        assert [i for i, _ in got] == child_ids
        procs.join_all(10)
        assert procs.started[0].exitcode == 0
        q.close()
    finally:
        stop()


@pytest.mark.timeout(60)
def test_parent_producer_used_in_forked_child(procs, make_queue):
    q = make_queue(capacity=128, message_size=32)  # room for every message: nobody consumes yet
    ctx = multiprocessing.get_context("fork")
    p = q.producer()
    first = p.put(b"parent-before")
    result_q = ctx.Queue()
    n = 100
    procs(W.inherited_producer_child, p, n, result_q, method="fork")
    (res,) = W.collect(result_q, 1, procs, 30)
    child_ids = res[1]
    procs.join_all(10)
    assert procs.started[0].exitcode == 0
    # the child's close() must not have closed the parent's producer
    assert p.closed is False
    last = p.put(b"parent-after", timeout=1)
    assert q.stats()["producers"] == 1

    c = q.consumer()
    got = []
    while True:
        try:
            m = c.get(timeout=0.2)
        except ackring.Empty:
            break
        got.append((m.id, m.body))
        m.ack()
    assert got[0] == (first, b"parent-before")
    assert got[-1] == (last, b"parent-after")
    assert got[1:-1] == [(i, b"child-%d" % k) for k, i in enumerate(child_ids)]
    assert len(got) == n + 2


@pytest.mark.timeout(60)
def test_parent_queue_used_in_forked_child_consumer(procs, q):
    ctx = multiprocessing.get_context("fork")
    result_q = ctx.Queue()
    n = 50
    procs(W.inherited_queue_consumer, q, n, result_q, method="fork")
    p = q.producer()
    ids = [p.put(b"to-child-%d" % i, timeout=10) for i in range(n)]
    (res,) = W.collect(result_q, 1, procs, 30)
    assert res[1] == [(i, b"to-child-%d" % k) for k, i in enumerate(ids)]
    procs.join_all(10)
    s = q.stats()
    assert (s["acked"], s["depth"], s["in_flight"], s["consumers"]) == (n, 0, 0, 0)
    # the child's q.close() unmapped only its own copy: the parent's handle still works
    mid = p.put(b"parent still works", timeout=1)
    m = q.consumer().get(timeout=1)
    assert (m.id, m.body) == (mid, b"parent still works")
    m.ack()


# ---------------------------------------------------------------- blocking

@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_blocked_get_released_by_put(procs, q, method):
    ctx = multiprocessing.get_context(method)
    ready = ctx.Event()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    procs(W.blocked_get_child, q.name, ready, child_conn, method=method)
    assert ready.wait(20), "child never got ready"
    # nothing to get: the child must still be blocked
    assert not parent_conn.poll(0.3)
    q.producer().put(b"wake up")
    assert parent_conn.poll(10), "blocked get was not released by the put"
    msg = parent_conn.recv()
    assert msg[0] == "got", msg
    assert msg[1] == b"wake up"
    assert msg[2] >= 0.25  # it really was blocked while we waited
    procs.join_all(10)
    assert procs.started[0].exitcode == 0
    s = q.stats()
    assert (s["acked"], s["depth"]) == (1, 0)


@pytest.mark.timeout(30)
def test_blocked_put_released_by_ack(procs, make_queue):
    q = make_queue(capacity=2, message_size=16)
    p = q.producer()
    p.put(b"one")
    p.put(b"two")
    c = q.consumer()
    m1 = c.get(timeout=1)
    assert m1.body == b"one"

    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    procs(W.blocked_put_child, q.name, b"three", ready, child_conn, method="fork")
    assert ready.wait(20)
    assert not parent_conn.poll(0.3), "put on a full queue did not block"
    assert q.stats()["published"] == 2

    m1.ack()  # frees the tail slot
    assert parent_conn.poll(10), "blocked put was not released by the ack"
    msg = parent_conn.recv()
    assert msg[0] == "put", msg
    assert msg[2] >= 0.25
    procs.join_all(10)
    bodies = []
    for _ in range(2):
        m = c.get(timeout=1)
        bodies.append((m.id, m.body))
        m.ack()
    assert bodies[1] == (msg[1], b"three")
    assert bodies[0][1] == b"two"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("what", ["get", "put"])
def test_sigint_interrupts_blocking_call(procs, make_queue, what):
    q = make_queue(capacity=2, message_size=16)
    if what == "put":
        p = q.producer()
        p.put(b"a")
        p.put(b"b")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    child = procs(W.sigint_child, q.name, what, ready, child_conn, method="fork")
    assert ready.wait(20)
    assert not parent_conn.poll(0.3), "child was not blocked"
    os.kill(child.pid, signal.SIGINT)
    assert parent_conn.poll(5), "SIGINT did not end the blocking %s" % what
    msg = parent_conn.recv()
    assert msg[0] == "kbi", msg
    assert msg[1] >= 0.25
    child.join(5)
    assert child.exitcode == 0
    # the queue is intact and the interrupted call took/left nothing
    s = q.stats()
    assert s["in_flight"] == 0
    assert s["published"] == (2 if what == "put" else 0)
    c = q.consumer()
    if what == "get":
        q.producer().put(b"after")
        m = c.get(timeout=1)
        assert (m.body, m.delivery_count) == (b"after", 1)
        m.ack()
    else:
        assert [c.get(timeout=1).body for _ in range(2)] == [b"a", b"b"]


# ------------------------------------------------------------ crash safety

def _wait_reclaim(q, want, timeout=10):
    total = 0
    deadline = time.monotonic() + timeout
    while total < want and time.monotonic() < deadline:
        total += q.reclaim()
        if total < want:
            time.sleep(0.02)  # poll interval of a bounded condition loop
    return total


@pytest.mark.timeout(30)
def test_killed_consumer_deliveries_are_reclaimed(procs, make_queue):
    # watchdog=None: this test counts what its own reclaim() calls repair
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p = q.producer()
    ids = [p.put(b"k%d" % i) for i in range(4)]
    ctx = multiprocessing.get_context("fork")
    release = ctx.Event()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    child = procs(W.hold_and_hang, q.name, 2, child_conn, release, method="fork")
    assert parent_conn.poll(20)
    msg = parent_conn.recv()
    assert msg[0] == "held", msg
    assert msg[1] == ids[:2]
    s = q.stats()
    assert (s["in_flight"], s["consumers"]) == (2, 1)
    assert q.reclaim() == 0  # the holder is alive: nothing to repair

    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert _wait_reclaim(q, 2) >= 2
    s = q.stats()
    assert (s["in_flight"], s["consumers"], s["depth"]) == (0, 0, 4)

    c = q.consumer()
    got = []
    for _ in range(4):
        m = c.get(timeout=1)
        got.append((m.id, m.redelivered, m.delivery_count))
        m.ack()
    # the reclaimed deliveries come back first, marked redelivered
    assert got == [(ids[0], True, 2), (ids[1], True, 2), (ids[2], False, 1), (ids[3], False, 1)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("role", ["producer", "consumer"])
def test_killed_idle_client_entry_is_freed(procs, q, role):
    ctx = multiprocessing.get_context("fork")
    release = ctx.Event()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    child = procs(W.register_and_hang, q.name, role, child_conn, release, method="fork")
    assert parent_conn.poll(20)
    assert parent_conn.recv()[0] == "registered"
    assert q.stats()[role + "s"] == 1
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    deadline = time.monotonic() + 10
    while q.stats()[role + "s"] != 0 and time.monotonic() < deadline:
        q.reclaim()
        time.sleep(0.02)  # poll interval of a bounded condition loop
    assert q.stats()[role + "s"] == 0
