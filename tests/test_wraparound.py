"""Many laps around tiny rings: ids keep increasing and bodies stay intact."""

import multiprocessing

import pytest

import ackring
import _ar_workers as W
from array import array

N = 12_000


def test_wrap_put_get_ack_one_at_a_time(make_queue):
    q = make_queue(capacity=4, message_size=32)
    p = q.producer()
    c = q.consumer()
    prev = -1
    for seq in range(N):
        body = W.body_for(1, seq, 16 + seq % 17)  # varying lengths, up to 32
        mid = p.put(body, timeout=1)
        assert mid > prev
        m = c.get(timeout=1)
        assert m.id == mid
        assert m.body == body
        assert m.delivery_count == 1
        m.ack()
        prev = mid
    s = q.stats()
    assert (s["published"], s["acked"], s["depth"], s["in_flight"]) == (N, N, 0, 0)


def test_wrap_ids_are_consecutive_positions(make_queue):
    q = make_queue(capacity=4, message_size=8)
    p = q.producer()
    c = q.consumer()
    ids = []
    for i in range(40):
        ids.append(p.put(b"%d" % i, timeout=1))
        c.get(timeout=1).ack()
    assert ids == list(range(ids[0], ids[0] + 40))


def test_wrap_fill_and_drain(make_queue):
    cap = 8
    q = make_queue(capacity=cap, message_size=24)
    p = q.producer()
    c = q.consumer()
    prev = -1
    seq = 0
    for lap in range(N // cap):
        bodies = [W.body_for(2, seq + i, 24) for i in range(cap)]
        ids = p.put_many(bodies, timeout=1)
        assert len(ids) == cap
        with pytest.raises(ackring.Full):
            p.put(b"x", timeout=0)
        got = []
        while len(got) < cap:
            got.extend(c.get_many(cap - len(got), timeout=1))
        assert [m.id for m in got] == ids
        assert [m.body for m in got] == bodies
        assert ids[0] > prev and all(a < b for a, b in zip(ids, ids[1:]))
        prev = ids[-1]
        for m in got:
            m.ack()
        seq += cap
    s = q.stats()
    assert (s["published"], s["acked"], s["depth"]) == (seq, seq, 0)


def test_wrap_half_full_sliding(make_queue):
    """Keep the ring half full while it laps, acking out of order inside a window."""
    q = make_queue(capacity=8, message_size=16)
    p = q.producer()
    c = q.consumer()
    sent = []
    for i in range(4):
        sent.append((p.put(W.body_for(3, i, 16), timeout=1), W.body_for(3, i, 16)))
    nxt = 4
    received = []
    while len(received) < N:
        a = c.get(timeout=1)
        b = c.get(timeout=1)
        received.extend([(a.id, a.body), (b.id, b.body)])
        b.ack()  # newer first
        a.ack()
        for _ in range(2):
            body = W.body_for(3, nxt, 16)
            sent.append((p.put(body, timeout=1), body))
            nxt += 1
    assert received == sent[:len(received)]      # FIFO, whatever order the acks came in
    ids = [i for i, _ in sent]
    # ids are unique over the queue's life; with acks out of order they are
    # not increasing (an id names a slot and its use, design.md 3.4)
    assert len(set(ids)) == len(ids)


def test_wrap_with_nacks(make_queue):
    q = make_queue(capacity=4, message_size=16)
    p = q.producer()
    c = q.consumer()
    redeliveries = 0
    for seq in range(3000):
        body = W.body_for(4, seq, 16)
        mid = p.put(body, timeout=1)
        m = c.get(timeout=1)
        assert (m.id, m.body, m.delivery_count) == (mid, body, 1)
        if seq % 3 == 0:
            m.nack(requeue=True)
            m = c.get(timeout=1)
            assert (m.id, m.body, m.redelivered, m.delivery_count) == (mid, body, True, 2)
            redeliveries += 1
        if seq % 5 == 0:
            m.nack(requeue=False)
        else:
            m.ack()
    s = q.stats()
    assert s["redelivered"] == redeliveries
    assert (s["depth"], s["in_flight"], s["published"]) == (0, 0, 3000)
    assert s["acked"] == 3000 - len(range(0, 3000, 5))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_wrap_across_processes(procs, make_queue, method):
    n = 20_000 if method == "fork" else 10_000
    size = 40
    q = make_queue(capacity=8, message_size=size)
    ctx = multiprocessing.get_context(method)
    result_q = ctx.Queue()
    procs(W.wrap_producer, q.name, n, size, result_q, method=method)
    c = q.consumer()
    ids = array("Q")
    bad = 0
    for seq in range(n):
        try:
            m = c.get(timeout=20)
        except ackring.Empty:
            W.collect(result_q, 1, procs, 5)  # surfaces a child's traceback, if any
            raise
        if m.body != W.body_for(7, seq, size):
            bad += 1
        ids.append(m.id)
        m.ack()
    (res,) = W.collect(result_q, 1, procs, 30)
    procs.join_all(10)
    assert bad == 0
    assert ids.tolist() == array("Q", res[2]).tolist()
    assert all(a < b for a, b in zip(ids, ids[1:]))
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)
    s = q.stats()
    assert (s["published"], s["acked"], s["depth"], s["in_flight"]) == (n, n, 0, 0)
