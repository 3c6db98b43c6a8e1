"""Delivery semantics: dead-letter queue, reject, delivery limit, TTL,
prefetch, ack leases and extend, receipts (wait_acked), ack_many, message keys.

Multi-process tests use real processes (the ``procs`` fixture reaps them) and
count every message; waits are for conditions, bounded.  The only waits on
the clock are where the clock *is* the condition (a TTL running out, a lease
running out while its holder sleeps)."""

import multiprocessing
import os
import time
from collections import Counter

import pytest

import ackring
import _ar_workers as W

SIZE = 64
MP = multiprocessing.get_context("fork")


# ---------------------------------------------------------------- helpers

def recv(conn, timeout=20):
    """One report from a child's pipe; a child-side exception fails the test."""
    assert conn.poll(timeout), "no report from the child within %s s" % timeout
    item = conn.recv()
    if item[0] == "error":
        raise AssertionError("child failed:\n%s" % item[1])
    return item


def drain(c, settle="ack"):
    """Every message ready now, settled with `settle`; returns them."""
    return W.drain(c, 0, settle=settle)


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.005)


def wait_past(t_monotonic):
    """Wait until CLOCK_MONOTONIC passes t (the condition a TTL is defined by)."""
    while time.monotonic() <= t_monotonic:
        time.sleep(max(0.001, min(0.02, t_monotonic - time.monotonic())))


def dead_letters(q):
    """Every dead letter ready in q's DLQ, acked: [(body, death), ...]."""
    with q.dead_letters.consumer() as dc:
        return [(m.body, m.death) for m in drain(dc)]


# ---------------------------------------------------------------- dead-letter queue

def test_create_makes_dlq_and_unlink_removes_both(make_queue, qname):
    q = make_queue(capacity=8, message_size=100, dead_letter_capacity=2)
    main_path, dlq_path = W.segment_path(qname), W.segment_path(qname + ".dlq")
    assert os.path.exists(main_path) and os.path.exists(dlq_path)
    dq = q.dead_letters
    assert isinstance(dq, ackring.Queue)
    assert dq.name == qname + ".dlq"
    assert dq.capacity == 2
    assert dq.config["is_dead_letter_queue"] and not q.config["is_dead_letter_queue"]
    assert dq.dead_letters is None  # a DLQ has no DLQ of its own
    # the DLQ holds any message of the main queue plus its death record
    big = b"z" * 100
    with q.producer() as p, q.consumer() as c:
        p.put(big)
        c.get(timeout=1).reject()
    [(body, death)] = dead_letters(q)
    assert (body, death["reason"]) == (big, "rejected")
    q.close()
    ackring.unlink(qname)
    assert not os.path.exists(main_path) and not os.path.exists(dlq_path)
    for name in (qname, qname + ".dlq"):
        with pytest.raises(ackring.QueueNotFound):
            ackring.open(name)


def test_dlq_names(make_queue, qname):
    with pytest.raises(ValueError):
        ackring.create(qname + ".dlq")
    assert not os.path.exists(W.segment_path(qname + ".dlq.dlq"))
    q = make_queue()
    d = ackring.open(qname + ".dlq")  # a DLQ can be opened directly
    try:
        assert d.queue_id == q.dead_letters.queue_id
        assert d.dead_letters is None
        assert d.config["is_dead_letter_queue"]
    finally:
        d.close()
    assert q.dead_letters.queue_id != q.queue_id


def test_reject_and_nack_no_requeue_dead_letter_with_original_record(q):
    with q.producer() as p, q.consumer() as c:
        ids = [p.put(b"first"), p.put(b"second")]
        m1 = c.get(timeout=1)
        assert m1.death is None                 # only dead letters carry a death record
        m1.nack()                               # one redelivery first
        m1 = c.get(timeout=1)
        assert (m1.id, m1.delivery_count) == (ids[0], 2)
        t1 = m1.publish_time_ns
        m1.reject()
        m2 = c.get(timeout=1)
        t2 = m2.publish_time_ns
        m2.nack(requeue=False)
        assert [p.wait_acked(i, timeout=5) for i in ids] == [
            ackring.Receipt(i, "dead_lettered", "rejected") for i in ids]
        with pytest.raises(ackring.Empty):
            c.get(timeout=0)                    # neither comes back
    got = dead_letters(q)
    assert [b for b, _ in got] == [b"first", b"second"]
    for (body, death), mid, tpub, count in zip(got, ids, (t1, t2), (2, 1)):
        assert death["reason"] == "rejected"
        assert death["id"] == mid
        assert death["queue_id"] == q.queue_id
        assert death["delivery_count"] == count
        assert death["first_publish_time"] == pytest.approx(tpub / 1e9, abs=1e-6)
        assert abs(death["first_publish_time"] - time.time()) < 60
        assert death["time"] >= death["first_publish_time"]
    st = q.stats()
    assert {"rejected", "dead_lettered", "dead_lettered_total", "expired", "lease_expired",
            "dropped", "dlq_dropped"} <= set(st)
    assert st["rejected"] == 2
    assert st["dead_lettered"] == {"rejected": 2, "delivery_limit": 0, "expired": 0, "lease_expired": 0}
    assert st["dead_lettered_total"] == 2
    # nacked counts requeues only (one here); rejects are counted as rejected
    assert st["nacked"] == 1 and st["acked"] == 0 and st["dropped"] == 0
    assert st["depth"] == 0 and st["in_flight"] == 0


def test_dead_letter_of_a_dead_letter_is_dropped(q):
    with q.producer() as p, q.consumer() as c:
        p.put(b"twice dead")
        c.get(timeout=1).reject()
    with q.dead_letters.consumer() as dc:
        m = dc.get(timeout=1)
        assert m.death["reason"] == "rejected"
        m.reject()                              # a DLQ has no DLQ: dropped
        with pytest.raises(ackring.Empty):
            dc.get(timeout=0)
    assert q.dead_letters.stats()["dropped"] == 1


def test_dead_letter_capacity(make_queue, qname):
    for bad in (3, 1, 0):
        with pytest.raises(ValueError):
            ackring.create(qname, capacity=8, dead_letter_capacity=bad)
    assert not os.path.exists(W.segment_path(qname + ".dlq"))
    assert make_queue(capacity=8).dead_letters.capacity == 8      # default: the main capacity
    assert make_queue(capacity=8, name=qname + "b", dead_letter_capacity=64).dead_letters.capacity == 64


def test_dlq_removed_by_hand_drops_and_counts(make_queue, qname):
    make_queue().close()
    ackring.unlink(qname + ".dlq")
    q = ackring.open(qname)
    try:
        assert q.dead_letters is None
        with q.producer() as p, q.consumer() as c:
            mid = p.put(b"nowhere to go")
            c.get(timeout=1).reject()
            assert p.wait_acked(mid, timeout=1) == ackring.Receipt(mid, "dropped", None)
        st = q.stats()
        assert st["dropped"] == 1 and st["dead_lettered_total"] == 0 and st["depth"] == 0
    finally:
        q.close()


def test_full_dlq_drops_oldest_then_new_when_all_held(make_queue):
    q = make_queue(capacity=8, message_size=32, dead_letter_capacity=4)
    bodies = [b"d%d" % i for i in range(6)]
    with q.producer() as p, q.consumer() as c:
        ids = []
        for b in bodies:
            ids.append(p.put(b))
            c.get(timeout=1).reject()           # never blocks on the full DLQ
        assert q.stats()["dlq_dropped"] == 2
        assert q.dead_letters.stats()["dropped"] == 2
        # every one was dead-lettered (the two oldest were dropped from the DLQ later)
        assert {p.wait_acked(i, timeout=1).outcome for i in ids} == {"dead_lettered"}

        dc = q.dead_letters.consumer()
        held = [dc.get(timeout=1) for _ in range(4)]
        assert [m.body for m in held] == bodies[2:]   # the two oldest went
        assert [m.death["id"] for m in held] == ids[2:]
        # every dead letter is held: the new one is the one dropped
        new_id = p.put(b"new")
        c.get(timeout=1).reject()
        assert p.wait_acked(new_id, timeout=1) == ackring.Receipt(new_id, "dropped", None)
        st = q.stats()
        assert st["dlq_dropped"] == 3
        assert st["dropped"] == 1
        assert st["dead_lettered"]["rejected"] == 6
        dc.ack_many(held)                       # the held ones are intact
        with pytest.raises(ackring.Empty):
            dc.get(timeout=0)
        dc.close()
        # room again: the next dead letter is kept
        p.put(b"after")
        c.get(timeout=1).reject()
    assert [b for b, _ in dead_letters(q)] == [b"after"]
    assert q.stats()["dlq_dropped"] == 3


def test_full_dlq_with_oldest_held_loses_at_most_one(make_queue):
    # The ring is strict: with the oldest dead letter held, dropping younger
    # ones cannot make room, so none of them may be sacrificed for nothing.
    q = make_queue(capacity=8, message_size=32, dead_letter_capacity=4)
    with q.producer() as p, q.consumer() as c:
        for i in range(4):
            p.put(b"d%d" % i)
            c.get(timeout=1).reject()
        with q.dead_letters.consumer() as dc:
            oldest = dc.get(timeout=1)          # held by a DLQ consumer
            p.put(b"new")
            c.get(timeout=1).reject()
            rest = [m.body for m in drain(dc)]
            oldest.ack()
    # one dead letter had to go (d1, or the new one); not four
    assert q.stats()["dlq_dropped"] == 1, (q.stats()["dlq_dropped"], rest)
    assert rest in ([b"d2", b"d3", b"new"], [b"d1", b"d2", b"d3"])


def test_open_close_with_dead_letters_does_not_leak_dlq_entries(make_queue, qname):
    # Closing a queue whose dead_letters was used gives back its DLQ entry too.
    make_queue(max_clients=4)
    for _ in range(12):
        q2 = ackring.open(qname)
        assert q2.dead_letters is not None
        q2.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_open_attaches_dlq_in_another_process(make_queue, qname, procs, method):
    q = make_queue(capacity=8, message_size=SIZE)
    with q.producer() as p:
        ids = [p.put(b"x%d" % i) for i in range(4)]
        parent, child = multiprocessing.Pipe()
        procs(W.rejecting_child, qname, 4, child, 20, method=method)
        _, out, dlq_name = recv(parent, 30)
        assert dlq_name == qname + ".dlq"
        assert [o[0] for o in out] == ids
        assert [p.wait_acked(i, timeout=5).reason for i in ids] == ["rejected"] * 4
    procs.join_all(10)
    assert [pr.exitcode for pr in procs.started] == [0]
    got = dead_letters(q)
    assert [b for b, _ in got] == [b"x%d" % i for i in range(4)]
    for (body, death), (mid, _, tpub) in zip(got, out):
        assert (death["reason"], death["id"], death["queue_id"]) == ("rejected", mid, q.queue_id)
        assert death["first_publish_time"] == pytest.approx(tpub / 1e9, abs=1e-6)
    assert q.stats()["dead_lettered"]["rejected"] == 4


@pytest.mark.timeout(30)
def test_forked_child_dead_letters_under_its_own_entry(make_queue, qname):
    import signal
    from ackring.backend import set_test_hook

    q = make_queue(capacity=8, message_size=SIZE, watchdog=None)
    dq = q.dead_letters
    with q.producer() as p:
        p.put(b"short", ttl=0.01)
        wait_past(time.monotonic() + 0.02)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                c = q.consumer()
                set_test_hook("alloc_popped")   # SIGSTOP once a DLQ free index is popped
                try:
                    c.get(timeout=0)
                except ackring.Empty:
                    pass
            finally:
                os._exit(0)
        try:
            _, status = os.waitpid(pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        q.reclaim()
        p.put(b"later")
        with q.consumer() as c:
            drain(c, "reject")                  # "short" expires again, "later" is rejected
    # the half-written dead letter of the killed child must not wedge the DLQ
    with dq.consumer() as dc:
        assert [m.body for m in drain(dc)][-1:] == [b"later"]


# ---------------------------------------------------------------- delivery limit

@pytest.mark.timeout(60)
def test_poison_message_dead_lettered_after_max_deliveries_across_processes(make_queue, qname, procs):
    max_deliveries, n_producers, per_producer, n_consumers = 5, 2, 150, 2
    q = make_queue(capacity=512, message_size=SIZE, max_deliveries=max_deliveries)  # no lapping: receipts stay exact
    result_q, stop = MP.Queue(), MP.Event()
    poison = b"POISON".ljust(SIZE, b"!")
    for ci in range(n_consumers):
        procs(W.poison_consumer, qname, ci, poison, stop, result_q, 45)
    with q.producer() as p:
        poison_id = p.put(poison)               # first in line, while good ones keep coming
        for pi in range(n_producers):
            procs(W.producer_worker, qname, pi, per_producer, SIZE, result_q)
        prod = {}
        for item in W.collect(result_q, n_producers, procs, 40):
            assert item[0] == "producer"
            prod[item[1]] = list(W.array("Q", item[2]))
        with q.dead_letters.consumer() as dc:
            dead = dc.get(timeout=30)
            assert dead.body == poison
            death = dead.death
            dead.ack()
        assert p.wait_acked(poison_id, timeout=5) == ackring.Receipt(
            poison_id, "dead_lettered", "delivery_limit")
        total = n_producers * per_producer
        wait_until(lambda: q.stats()["acked"] == total, 30, "every good message acked")
        stop.set()
        cons = W.collect(result_q, n_consumers, procs, 30)
    procs.join_all(15)
    assert all(pr.exitcode == 0 for pr in procs.started)

    # every good message acked exactly once, with its own id, never redelivered
    acked = [a for r in cons for a in r[2]]
    assert len(acked) == total
    expected = {(pi, seq): mid for pi, ids in prod.items() for seq, mid in enumerate(ids)}
    seen = Counter()
    for mid, body, count in acked:
        pi, seq = W.decode(body)
        assert body == W.body_for(pi, seq, SIZE)
        assert expected[(pi, seq)] == mid
        assert count == 1
        seen[(pi, seq)] += 1
    assert set(seen) == set(expected) and set(seen.values()) == {1}
    # the poison: delivered exactly max_deliveries times (over both consumers), then dead
    poison_seen = sorted(pc for r in cons for pc in r[3])
    assert poison_seen == [(poison_id, k) for k in range(1, max_deliveries + 1)]
    assert death["reason"] == "delivery_limit"
    assert death["delivery_count"] == max_deliveries
    assert (death["id"], death["queue_id"]) == (poison_id, q.queue_id)
    st = q.stats()
    assert st["published"] == total + 1
    assert st["acked"] == total
    assert st["nacked"] == max_deliveries
    assert st["redelivered"] == max_deliveries - 1
    assert st["dead_lettered"]["delivery_limit"] == 1 and st["dead_lettered_total"] == 1
    assert st["depth"] == 0 and st["in_flight"] == 0
    assert q.dead_letters.stats()["depth"] == 0


def test_default_delivery_limit_is_20(q):
    assert q.config["max_deliveries"] == 20 == ackring.DEFAULT_MAX_DELIVERIES
    with q.producer() as p, q.consumer() as c:
        mid = p.put(b"flaky")
        for k in range(1, 21):
            m = c.get(timeout=1)
            assert (m.id, m.delivery_count) == (mid, k)
            m.nack()
        with pytest.raises(ackring.Empty):
            c.get(timeout=0)                    # the 21st delivery never happens
    [(body, death)] = dead_letters(q)
    assert (body, death["reason"], death["delivery_count"]) == (b"flaky", "delivery_limit", 20)


def test_delivery_limit_none_is_unlimited(make_queue):
    q = make_queue(max_deliveries=None)
    assert q.config["max_deliveries"] is None
    with q.producer() as p, q.consumer() as c:
        mid = p.put(b"again")
        for _ in range(30):
            c.get(timeout=1).nack()
        m = c.get(timeout=1)
        assert (m.id, m.delivery_count, m.body) == (mid, 31, b"again")
        m.ack()
        assert p.wait_acked(mid, timeout=1).outcome == "acked"
    assert dead_letters(q) == []
    assert q.stats()["dead_lettered_total"] == 0 and q.stats()["nacked"] == 30


def test_delivery_limit_bounds(qname):
    for bad in (0, 65536, -1):
        with pytest.raises(ValueError):
            ackring.create(qname, max_deliveries=bad)
    assert not os.path.exists(W.segment_path(qname))


# ---------------------------------------------------------------- TTL

@pytest.mark.timeout(60)
def test_ttl_expiry_with_several_producer_processes(make_queue, qname, procs):
    n_producers, per_producer, short_ttl = 3, 40, 0.2
    q = make_queue(capacity=128, message_size=SIZE)
    result_q = MP.Queue()
    for pi in range(n_producers):
        procs(W.ttl_producer, qname, pi, per_producer, short_ttl, SIZE, result_q)
    res = W.collect(result_q, n_producers, procs, 30)
    procs.join_all(10)
    wait_past(max(r[4] for r in res) + short_ttl)   # every short ttl has run out
    short = {mid: (r[1], seq) for r in res for mid, seq in r[2]}
    live = {mid: (r[1], seq) for r in res for mid, seq in r[3]}
    assert len(short) == len(live) == n_producers * per_producer // 2

    with q.consumer() as c:
        got = []
        while True:
            try:
                ms = c.get_many(16, timeout=0)
            except ackring.Empty:
                break
            for m in ms:
                got.append((m.id, m.body))
                m.ack()
    assert sorted(mid for mid, _ in got) == sorted(live)      # only the live ones, each once
    for mid, body in got:
        assert body == W.body_for(*live[mid], size=SIZE)
    dead = dead_letters(q)
    assert sorted(d["id"] for _, d in dead) == sorted(short)
    for body, d in dead:
        assert d["reason"] == "expired" and d["delivery_count"] == 0
        assert body == W.body_for(*short[d["id"]], size=SIZE)
    st = q.stats()
    assert st["expired"] == st["dead_lettered"]["expired"] == len(short)
    assert st["acked"] == len(live) and st["depth"] == 0 and st["in_flight"] == 0
    with q.producer() as p:
        some = next(iter(short))
        assert p.wait_acked(some, timeout=1) == ackring.Receipt(some, "dead_lettered", "expired")


@pytest.mark.parametrize("queue_ttl, msg_ttl, expires", [
    (0.1, 60, True),      # the queue's lower ttl wins
    (60, 0.1, True),      # the message's lower ttl wins
    (0.1, None, True),    # the queue default applies
    (60, None, False),
    (None, None, False),
])
def test_lower_ttl_wins(make_queue, queue_ttl, msg_ttl, expires):
    q = make_queue(ttl=queue_ttl)
    assert q.config["ttl"] == queue_ttl
    with q.producer() as p, q.consumer() as c:
        t0 = time.monotonic()
        ids = [p.put(b"one", ttl=msg_ttl), *p.put_many([b"two", b"three"], ttl=msg_ttl)]
        with p.reserve(4, ttl=msg_ttl) as buf:
            buf[:] = b"four"
        wait_past(t0 + 0.15)
        got = [m.body for m in drain(c)]
        if expires:
            assert got == []
            assert [d["id"] for _, d in dead_letters(q)] == ids + [ids[-1] + 1]
        else:
            assert got == [b"one", b"two", b"three", b"four"]
            assert dead_letters(q) == []


def test_get_skips_expired_for_the_next_live_message(q):
    with q.producer() as p, q.consumer() as c:
        t0 = time.monotonic()
        p.put(b"stale-1", ttl=0.05)
        p.put(b"stale-2", ttl=0.05)
        live = p.put(b"live")
        p.put(b"stale-3", ttl=0.05)
        wait_past(t0 + 0.06)
        m = c.get(timeout=0)
        assert (m.id, m.body) == (live, b"live")
        m.ack()
        with pytest.raises(ackring.Empty):
            c.get(timeout=0)                    # only an expired one was left
    assert [b for b, _ in dead_letters(q)] == [b"stale-1", b"stale-2", b"stale-3"]
    assert q.stats()["expired"] == 3


def test_requeued_message_can_expire(q):
    with q.producer() as p, q.consumer() as c:
        t0 = time.monotonic()
        mid = p.put(b"slow", ttl=0.1)
        m = c.get(timeout=1)                    # delivered in time ...
        m.nack()                                # ... given back ...
        wait_past(t0 + 0.11)
        with pytest.raises(ackring.Empty):      # ... and it expired meanwhile
            c.get(timeout=0)
        assert p.wait_acked(mid, timeout=1).reason == "expired"
    [(_, d)] = dead_letters(q)
    assert (d["reason"], d["delivery_count"]) == ("expired", 1)


def test_bad_ttl(q):
    with q.producer() as p:
        for bad in (0, -1, "1"):
            with pytest.raises((ValueError, TypeError)):
                p.put(b"x", ttl=bad)
    assert q.stats()["published"] == 0


# ---------------------------------------------------------------- prefetch

def test_prefetch_accounting(q):
    with q.producer() as p:
        p.put_many([b"m%d" % i for i in range(8)])
    c = q.consumer(prefetch=3)
    assert c.prefetch == 3 and c.outstanding == 0
    a, b, d = c.get(timeout=1), c.get(timeout=1), c.get(timeout=1)
    assert c.outstanding == 3
    t0 = time.monotonic()
    with pytest.raises(ackring.PrefetchExceeded):
        c.get()                                 # no timeout, yet it raises at once
    with pytest.raises(ackring.PrefetchExceeded):
        c.get_many(4, timeout=None)
    assert time.monotonic() - t0 < 1
    assert c.outstanding == 3
    a.ack()
    assert c.outstanding == 2
    b.nack()                                    # requeued
    assert c.outstanding == 1
    d.reject()
    assert c.outstanding == 0
    ms = c.get_many(10, timeout=1)
    assert len(ms) == 3 and c.outstanding == 3  # never more than the allowance
    assert ms[0].body == b"m1"                  # the nacked one first
    c.ack_many(ms[:2])
    assert c.outstanding == 1
    ms[2].nack(requeue=False)
    assert c.outstanding == 0
    ms = c.get_many(2, timeout=1)
    m = c.get(timeout=1)
    assert c.outstanding == 3
    c.close()                                   # requeues all three, resets the count
    assert c.outstanding == 0
    st = q.stats()
    assert st["depth"] == 3 and st["acked"] == 3 and st["dead_lettered"]["rejected"] == 2
    c2 = q.consumer(prefetch=1)
    m = c2.get(timeout=1)
    with pytest.raises(ackring.PrefetchExceeded):
        c2.get(timeout=0)
    m.ack()
    c2.get(timeout=1).ack()
    assert c2.outstanding == 0
    c2.close()
    with pytest.raises(ValueError):
        q.consumer(prefetch=0)


def test_prefetch_freed_by_stale_ack(make_queue):
    q = make_queue(ack_timeout=0.2)
    with q.producer() as p:
        mid = p.put(b"slow")
    c = q.consumer(prefetch=1)
    m = c.get(timeout=1)
    with q.consumer(ack_timeout=30) as other:
        m2 = other.get(timeout=10)              # once the lease has run out
        assert (m2.id, m2.delivery_count) == (mid, 2)
        with pytest.raises(ackring.StaleDelivery):
            m.ack()
        assert c.outstanding == 0               # a stale ack frees the allowance too
        m2.ack()
    with q.producer() as p:
        p.put(b"next")
    n = c.get(timeout=1)
    assert n.body == b"next"
    n.ack()
    c.close()


# ---------------------------------------------------------------- ack lease

@pytest.mark.timeout(60)
def test_lease_expiry_hands_message_to_another_process(make_queue, qname, procs):
    q = make_queue(capacity=8, message_size=SIZE, ack_timeout=0.3)
    assert q.config["ack_timeout"] == pytest.approx(0.3)
    with q.producer() as p:
        mid = p.put(b"job")
        a_conn, a_child = multiprocessing.Pipe()
        taken_back = MP.Event()
        procs(W.lease_sleeper, qname, a_child, taken_back, 20)
        assert recv(a_conn) == ("got", mid, 1, b"job")
        # A sits on it past its lease; B blocks in get() until the lease is taken back
        b_conn, b_child = multiprocessing.Pipe()
        procs(W.lease_taker, qname, b_child, 20)
        assert recv(b_conn) == ("got", mid, 2, True, b"job")
        taken_back.set()
        assert recv(a_conn) == ("late", ["extend:stale", "ack:stale"], 0)
        assert p.wait_acked(mid, timeout=5) == ackring.Receipt(mid, "acked", None)
    procs.join_all(10)
    assert [pr.exitcode for pr in procs.started] == [0, 0]
    st = q.stats()
    assert st["lease_expired"] == 1
    assert st["acked"] == 1 and st["redelivered"] == 1
    assert st["depth"] == 0 and st["in_flight"] == 0 and st["dead_lettered_total"] == 0


def test_extend_keeps_the_lease(make_queue):
    q = make_queue(ack_timeout=0.3)
    with q.producer() as p:
        kept_id, lost_id = p.put(b"kept"), p.put(b"lost")
    c = q.consumer()
    kept = c.get(timeout=1)
    kept.extend(30)                             # before the other's lease (same length) runs out
    lost = c.get(timeout=1)
    assert (kept.id, lost.id) == (kept_id, lost_id)
    with q.consumer(ack_timeout=30) as other:
        # the scan that takes `lost` back is past kept's original deadline too
        m = other.get(timeout=10)
        assert (m.id, m.delivery_count) == (lost_id, 2)
        with pytest.raises(ackring.Empty):
            other.get(timeout=0)                # `kept` was not taken back
        assert q.reclaim() == 0
        with pytest.raises(ackring.Empty):
            other.get(timeout=0)
        m.ack()
    kept.ack()                                  # still current
    with pytest.raises(ackring.StaleDelivery):
        lost.extend(5)                          # too late: already taken back
    with pytest.raises(ackring.StaleDelivery):
        lost.ack()
    st = q.stats()
    assert st["lease_expired"] == 1 and st["acked"] == 2
    c.close()


def test_extend_without_ack_timeout_starts_a_lease(make_queue):
    """No ack_timeout on the queue or the consumer: m.extend(s) starts a lease
    on that one delivery (documented in README "Ack lease and extend")."""
    q = make_queue(watchdog=None)
    assert q.config["ack_timeout"] is None
    with q.producer() as p:
        leased_id, free_id = p.put(b"leased"), p.put(b"no lease")
    c = q.consumer()
    leased, free = c.get(timeout=1), c.get(timeout=1)
    assert q.reclaim() == 0                     # no lease yet: nothing to take back
    leased.extend(0.05)
    other = q.consumer()
    m = other.get(timeout=10)                   # this get's own lease scan takes it back
    assert (m.id, m.delivery_count) == (leased_id, 2)
    with pytest.raises(ackring.StaleDelivery):
        leased.ack()
    assert q.reclaim() == 0                     # the other delivery never had a lease
    with pytest.raises(ackring.Empty):
        other.get(timeout=0)
    free.ack()                                  # held all along, still current
    m.ack()
    assert q.stats()["lease_expired"] == 1
    c.close()
    other.close()


def test_consumer_ack_timeout_overrides_queue(make_queue):
    q = make_queue()                            # no lease by default
    assert q.config["ack_timeout"] is None
    with q.producer() as p:
        mid = p.put(b"x")
    c = q.consumer(ack_timeout=0.1)
    m = c.get(timeout=1)
    with q.consumer() as other:
        m2 = other.get(timeout=10)
        assert (m2.id, m2.delivery_count) == (mid, 2)
        m2.ack()                                # no lease for `other`
    with pytest.raises(ackring.StaleDelivery):
        m.ack()
    assert q.stats()["lease_expired"] == 1
    c.close()


def test_lease_expiry_on_last_delivery_dead_letters(make_queue):
    q = make_queue(ack_timeout=0.1, max_deliveries=2)
    with q.producer() as p:
        mid = p.put(b"stuck")
        c = q.consumer()
        first = c.get(timeout=1)
        second = c.get(timeout=10)              # blocked get: its reclaim pass takes `first` back
        assert (second.id, second.delivery_count) == (mid, 2)
        assert p.wait_acked(mid, timeout=10) == ackring.Receipt(mid, "dead_lettered", "lease_expired")
        for m in (first, second):
            with pytest.raises(ackring.StaleDelivery):
                m.ack()
        c.close()
    [(body, death)] = dead_letters(q)
    assert (body, death["reason"], death["delivery_count"], death["id"]) == (
        b"stuck", "lease_expired", 2, mid)
    st = q.stats()
    assert st["lease_expired"] == 1 and st["dead_lettered"]["lease_expired"] == 1


# ---------------------------------------------------------------- receipts

@pytest.mark.timeout(60)
def test_wait_acked_across_processes(make_queue, qname, procs):
    q = make_queue(capacity=8, message_size=SIZE)
    with q.producer() as p:
        ids = [p.put(b"r%d" % i) for i in range(3)]
        conn, child = multiprocessing.Pipe()
        release = MP.Event()
        procs(W.receipt_settler, qname, child, release, 20)
        assert recv(conn) == ("held", ids)
        # the child settles each only once we are blocked here
        assert p.wait_acked(ids[0], timeout=20) == ackring.Receipt(ids[0], "acked", None)
        assert recv(conn) == ("acked", ids[0])
        conn.send("next")
        assert p.wait_acked(ids[1], timeout=20) == ackring.Receipt(ids[1], "dead_lettered", "rejected")
        assert recv(conn) == ("rejected", ids[1])
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            p.wait_acked(ids[2], timeout=0.2)   # still held
        assert 0.19 <= time.monotonic() - t0 < 5
        with pytest.raises(TimeoutError):
            p.wait_acked(ids[2], timeout=0)
        release.set()
        assert p.wait_acked(ids[2], timeout=20) == ackring.Receipt(ids[2], "acked", None)
        assert recv(conn) == ("acked", ids[2])
        with pytest.raises(ValueError):
            p.wait_acked(ids[2] + 1)            # never published
    procs.join_all(10)
    assert [pr.exitcode for pr in procs.started] == [0]
    assert [b for b, _ in dead_letters(q)] == [b"r1"]


def test_wait_acked_settled_when_slot_reused(make_queue):
    q = make_queue(capacity=2)
    with q.producer() as p, q.consumer() as c:
        first = p.put(b"a")
        c.get(timeout=1).ack()
        assert p.wait_acked(first, timeout=0) == ackring.Receipt(first, "acked", None)
        for _ in range(2):                      # laps the ring: the slot of `first` is reused
            p.put(b"b")
            c.get(timeout=1).ack()
        assert p.wait_acked(first, timeout=0) == ackring.Receipt(first, "settled", None)


# ---------------------------------------------------------------- ack_many

def test_ack_many(make_queue):
    q = make_queue(capacity=8)
    with q.producer() as p:
        ids = p.put_many([b"b%d" % i for i in range(6)])
    c = q.consumer(prefetch=6)
    ms = c.get_many(6, timeout=1)
    assert [m.id for m in ms] == ids
    c.ack_many(ms[:4])
    assert all(m.settled for m in ms[:4]) and c.outstanding == 2
    with pytest.raises(ackring.AlreadySettled):
        c.ack_many([ms[4], ms[0]])
    with pytest.raises(ackring.AlreadySettled):
        c.ack_many([ms[4], ms[4]])
    assert not ms[4].settled and c.outstanding == 2   # nothing acked by a refused batch
    c.ack_many(m for m in ms[4:])               # any iterable
    assert c.outstanding == 0
    c.ack_many([])
    with q.producer() as p:
        assert {p.wait_acked(i, timeout=0).outcome for i in ids} == {"acked"}
    st = q.stats()
    assert st["acked"] == 6 and st["in_flight"] == 0 and st["depth"] == 0
    c.close()


def test_ack_many_reports_stale_and_acks_the_rest(make_queue):
    q = make_queue(capacity=8)
    with q.producer() as p:
        ids = p.put_many([b"s%d" % i for i in range(3)])
    c = q.consumer(ack_timeout=0.1)
    ms = c.get_many(3, timeout=1)
    ms[1].extend(30)                            # this one keeps its lease
    with q.consumer() as other:
        back = [other.get(timeout=10), other.get(timeout=10)]
        assert sorted(m.id for m in back) == [ids[0], ids[2]]
        with pytest.raises(ackring.StaleDelivery) as ei:
            c.ack_many(ms)
        assert sorted(ei.value.ids) == [ids[0], ids[2]]
        assert c.outstanding == 0
        other.ack_many(back)
    with q.producer() as p:
        assert [p.wait_acked(i, timeout=0).outcome for i in ids] == ["acked"] * 3
    assert q.stats()["acked"] == 3
    c.close()


# ---------------------------------------------------------------- keys

def test_key_stable_across_redelivery_and_unique_across_recreation(make_queue, qname):
    keys = []
    qids = []
    for _ in range(2):
        q = make_queue(name=qname)
        qids.append(q.queue_id)
        with q.producer() as p, q.consumer() as c:
            mid = p.put(b"same")
            m = c.get(timeout=1)
            k = m.key
            assert k == (q.queue_id, m.id) == (q.queue_id, mid)
            m.nack()
            m = c.get(timeout=1)
            assert m.redelivered and m.key == k
            m.ack()
            later = p.put(b"later")
            m2 = c.get(timeout=1)
            assert m2.key == (q.queue_id, later) != k
            m2.ack()
            keys.append(k)
        q.close()
        ackring.unlink(qname)
    assert keys[0][1] == keys[1][1] == 0        # the id alone repeats after re-creation ...
    assert qids[0] != qids[1] and keys[0] != keys[1]   # ... the key does not
