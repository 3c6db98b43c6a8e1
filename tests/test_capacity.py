"""Core v2: storage apart from delivery order.

`capacity` is the number of unsettled messages (ready + delivered), nothing
else: while fewer are unsettled, put() never waits, whatever is held and for
how long.  A nacked or reclaimed message goes back to the delivery order at
once.  (The strict ring of v1 tied a message's storage to its ring position:
one held message stalled every producer after one lap.)
"""
import multiprocessing
import os
import time

import pytest

import ackring

FORK = multiprocessing.get_context("fork")


def _holder(qname, conn, release):
    q = ackring.open(qname, watchdog=None)
    c = q.consumer()
    m = c.get(timeout=10)
    conn.send(("held", m.id, os.getpid()))
    release.wait(60)
    m.ack()
    conn.send(("acked", m.id))
    c.close()
    q.close()


def _drainer(qname, conn):
    """Lock-step with the producer: on ("drain", k) take and ack k messages,
    then report their bodies; the acks have returned, so k slots are free."""
    q = ackring.open(qname, watchdog=None)
    c = q.consumer()
    while True:
        cmd, k = conn.recv()
        if cmd == "stop":
            break
        got = []
        for _ in range(k):
            m = c.get(timeout=20)
            got.append(m.body)
            m.ack()
        conn.send(got)
    c.close()
    q.close()


@pytest.mark.timeout(60)
def test_one_held_message_does_not_stall_producers(make_queue, procs):
    """The newcomer's scenario: capacity 8, a worker in another process holds
    message 0 while another drains the rest.  Every put below has timeout=0
    and must go through: 7 slots stay usable lap after lap (v1's strict ring
    raised Full here after one lap, the held message pinning its position)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    first = p.put(b"slow job", timeout=0)
    hconn, hchild = FORK.Pipe()
    release = FORK.Event()
    procs(_holder, q.name, hchild, release, method="fork")
    assert hconn.poll(10)
    tag, held_id, holder_pid = hconn.recv()
    assert (tag, held_id) == ("held", first)
    dconn, dchild = FORK.Pipe()
    procs(_drainer, q.name, dchild, method="fork")
    sent, got = [], []
    for lap in range(100):                    # 700 messages, ~88 laps of the slot pool
        for i in range(7):
            body = b"job %d.%d" % (lap, i)
            p.put(body, timeout=0)            # never Full: 1 held + at most 7 ready
            sent.append(body)
        with pytest.raises(ackring.Full):     # and the 9th unsettled does not fit
            p.put(b"over capacity", timeout=0)
        st = q.stats()
        assert (st["unsettled"], st["in_flight"], st["depth"]) == (8, 1, 7), st
        # stats() name the blocker: the held message, its age and its holder
        assert st["oldest_unsettled"]["id"] == first
        assert st["oldest_unsettled"]["holder_pid"] == holder_pid
        dconn.send(("drain", 7))
        assert dconn.poll(20)
        got += dconn.recv()
    dconn.send(("stop", 0))
    assert got == sent                        # FIFO, one producer, one consumer
    assert q.stats()["in_flight"] == 1        # the held one, all along
    release.set()
    assert hconn.poll(10) and hconn.recv() == ("acked", first)
    assert q.stats()["unsettled"] == 0


@pytest.mark.timeout(30)
def test_put_waits_only_when_capacity_messages_are_unsettled(make_queue):
    q = make_queue(capacity=4, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    ids = [p.put(b"m%d" % i, timeout=0) for i in range(4)]
    with pytest.raises(ackring.Full):
        p.put(b"no room", timeout=0)
    held = [c.get(timeout=1) for _ in range(3)]     # three held, one ready: still 4 unsettled
    with pytest.raises(ackring.Full):
        p.put(b"no room", timeout=0)
    st = q.stats()
    assert (st["depth"], st["in_flight"], st["unsettled"]) == (1, 3, 4)
    # stats() explain the wait: the oldest unsettled message, its age and holder
    old = st["oldest_unsettled"]
    assert old["id"] == ids[0] and old["state"] == "delivered" and old["holder_pid"] == os.getpid()
    assert old["age"] >= 0
    held[1].ack()                                    # settle one in the middle, not the oldest
    p.put(b"fits", timeout=0)
    assert [m.id for m in held] == ids[:3]
    held[0].ack()
    held[2].ack()
    assert [c.get(timeout=1).body for _ in range(2)] == [b"m3", b"fits"]


@pytest.mark.timeout(30)
def test_nacked_message_comes_back_at_once(make_queue):
    """A nack puts the message back in the delivery order right away, ahead
    of never-delivered ones (no waiting for a ring to wrap)."""
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    ids = p.put_many([b"a", b"b", b"c", b"d"], timeout=0)
    a, b = c.get(timeout=0), c.get(timeout=0)
    b.nack()
    m = c.get(timeout=0)
    assert (m.id, m.body, m.delivery_count) == (ids[1], b"b", 2)
    assert c.get(timeout=0).body == b"c"
    a.ack()
    m.ack()


@pytest.mark.timeout(30)
def test_capacity_one_lap_is_not_special(make_queue):
    """Out-of-order acks across many laps: every message once, FIFO."""
    q = make_queue(capacity=4, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    got = []
    nxt = 0
    held = []
    for _ in range(200):
        while len(held) + q.stats()["depth"] < 4:
            p.put(b"%d" % nxt, timeout=0)
            nxt += 1
        held.append(c.get(timeout=0))
        if len(held) == 3:
            for m in (held[1], held[2], held[0]):   # newest first, oldest last
                got.append(int(m.body))
                m.ack()
            held = []
    for m in held:
        got.append(int(m.body))
        m.ack()
    got += [int(m.body) for m in iter(lambda: _get_or_none(c), None)]
    assert sorted(got) == list(range(nxt))


def _get_or_none(c):
    try:
        m = c.get(timeout=0)
    except ackring.Empty:
        return None
    m.ack()
    return m
