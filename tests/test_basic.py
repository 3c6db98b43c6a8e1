"""Single-process semantics of ackring queues, producers, consumers and messages."""

import os
import pickle
import queue
import time
from array import array

import pytest

import ackring
from _ar_workers import as_view, segment_path
from _ar_workers import drain as _drain

STAT_KEYS = {"depth", "in_flight", "published", "acked", "nacked", "redelivered",
             "producers", "consumers", "capacity", "message_size"}


def drain(c, timeout=0.05):
    """Get-and-ack everything currently deliverable; return the bodies."""
    return _drain(c, timeout, lambda m: m.body)


# ------------------------------------------------------------ segment life

def test_create_open_unlink(qname, ackring_dir):
    q = ackring.create(qname, capacity=16, message_size=128)
    try:
        assert q.name == qname
        assert q.capacity == 16
        assert q.message_size == 128
        assert isinstance(q.queue_id, int)
        assert q.path == os.path.join(ackring_dir, "ackring." + qname)
        assert os.path.exists(q.path)
        assert q.closed is False

        q2 = ackring.open(qname)
        try:
            assert q2.name == qname
            assert q2.queue_id == q.queue_id
            assert q2.capacity == 16
            assert q2.message_size == 128
            # the two handles see the same ring
            mid = q.producer().put(b"shared")
            m = q2.consumer().get(timeout=1)
            assert (m.id, m.body) == (mid, b"shared")
            m.ack()
        finally:
            q2.close()
    finally:
        q.close()

    ackring.unlink(qname)
    assert not os.path.exists(os.path.join(ackring_dir, "ackring." + qname))
    with pytest.raises(ackring.QueueNotFound):
        ackring.open(qname)


def test_create_existing_raises_file_exists(q, qname):
    with pytest.raises(FileExistsError):
        ackring.create(qname, capacity=8, message_size=256)


def test_create_exist_ok_opens_existing(q, qname):
    q.producer().put(b"already here")
    q2 = ackring.create(qname, capacity=8, message_size=256, exist_ok=True)
    try:
        assert q2.queue_id == q.queue_id
        assert q2.capacity == q.capacity
        assert q2.message_size == q.message_size
        m = q2.consumer().get(timeout=1)
        assert m.body == b"already here"
        m.ack()
    finally:
        q2.close()


def test_create_exist_ok_on_missing_creates(qname):
    q = ackring.create(qname, capacity=4, message_size=32, exist_ok=True)
    try:
        assert os.path.exists(q.path)
        assert (q.capacity, q.message_size) == (4, 32)
    finally:
        q.close()
        ackring.unlink(qname)


def test_recreate_after_unlink(qname):
    q = ackring.create(qname, capacity=4, message_size=32)
    q.producer().put(b"old")
    q.close()
    ackring.unlink(qname)
    q = ackring.create(qname, capacity=8, message_size=64)
    try:
        assert (q.capacity, q.message_size) == (8, 64)
        assert q.stats()["depth"] == 0
        with pytest.raises(ackring.Empty):
            q.consumer().get(timeout=0)
    finally:
        q.close()
        ackring.unlink(qname)


def test_valid_name_characters(make_queue):
    for name in ["a.b_c-D9", "x" * 200, "0", "A-"]:
        q = make_queue(capacity=2, message_size=8, name=name)
        assert q.name == name
        assert os.path.exists(segment_path(name))


def test_pickle_queue_in_process(q):
    q.producer().put(b"via pickle")
    q2 = pickle.loads(pickle.dumps(q))
    try:
        assert q2.name == q.name
        assert q2.queue_id == q.queue_id
        m = q2.consumer().get(timeout=1)
        assert m.body == b"via pickle"
        m.ack()
    finally:
        q2.close()


# ------------------------------------------------------------ put / get / ack

def test_put_returns_increasing_int_ids(q):
    p = q.producer()
    ids = [p.put(b"m%d" % i) for i in range(5)]
    assert all(type(i) is int for i in ids)
    assert all(a < b for a, b in zip(ids, ids[1:]))


def test_get_returns_message(q):
    p = q.producer()
    c = q.consumer()
    mid = p.put(b"hello world")
    m = c.get(timeout=1)
    assert m.id == mid
    assert m.body == b"hello world"
    assert type(m.body) is bytes
    assert len(m) == len(b"hello world")
    assert m.delivery_count == 1
    assert m.redelivered is False
    assert m.settled is False
    m.ack()
    assert m.settled is True


def test_bytes_like_inputs(q):
    p = q.producer()
    c = q.consumer()
    inputs = [b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview"),
              array("i", [1, 2, 3]), memoryview(b"0123456789")[2:6]]
    for data in inputs:
        p.put(data)
    for data in inputs:
        m = c.get(timeout=1)
        assert m.body == bytes(data)
        m.ack()


def test_ack_updates_stats(q):
    p = q.producer()
    c = q.consumer()
    for b in (b"a", b"b", b"c"):
        p.put(b)
    s = q.stats()
    assert (s["depth"], s["in_flight"], s["published"], s["acked"]) == (3, 0, 3, 0)

    m = c.get(timeout=1)
    s = q.stats()
    assert s["in_flight"] == 1
    assert s["depth"] == 2
    assert s["acked"] == 0

    m.ack()
    s = q.stats()
    assert (s["depth"], s["in_flight"], s["acked"]) == (2, 0, 1)

    assert drain(c) == [b"b", b"c"]
    s = q.stats()
    assert (s["depth"], s["in_flight"], s["published"], s["acked"]) == (0, 0, 3, 3)


def test_nack_requeue_redelivers_ahead_of_undelivered(q):
    p = q.producer()
    c = q.consumer()
    ids = [p.put(b) for b in (b"a", b"b", b"c")]
    m = c.get(timeout=1)
    assert m.body == b"a"
    m.nack(requeue=True)
    assert m.settled is True

    again = c.get(timeout=1)
    assert again.body == b"a"
    assert again.id == ids[0]
    assert again.redelivered is True
    assert again.delivery_count == 2
    again.ack()

    b = c.get(timeout=1)
    assert (b.body, b.redelivered, b.delivery_count) == (b"b", False, 1)
    b.ack()
    cc = c.get(timeout=1)
    assert (cc.body, cc.redelivered) == (b"c", False)
    cc.ack()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)
    s = q.stats()
    assert s["nacked"] == 1
    assert s["redelivered"] == 1
    assert s["acked"] == 3


def test_nack_default_is_requeue(q):
    q.producer().put(b"x")
    c = q.consumer()
    c.get(timeout=1).nack()
    m = c.get(timeout=1)
    assert (m.body, m.redelivered, m.delivery_count) == (b"x", True, 2)
    m.ack()


def test_delivery_count_keeps_rising(q):
    q.producer().put(b"again and again")
    c = q.consumer()
    for expected in range(1, 6):
        m = c.get(timeout=1)
        assert m.delivery_count == expected
        assert m.redelivered is (expected > 1)
        m.nack(requeue=True)
    m = c.get(timeout=1)
    assert m.delivery_count == 6
    m.ack()


def test_nack_requeue_false_drops(q):
    p = q.producer()
    c = q.consumer()
    p.put(b"drop me")
    p.put(b"keep me")
    m = c.get(timeout=1)
    assert m.body == b"drop me"
    m.nack(requeue=False)
    assert m.settled is True
    s = q.stats()
    assert (s["depth"], s["in_flight"]) == (1, 0)
    assert (s["nacked"], s["rejected"]) == (0, 1)   # nacked counts requeues only
    nxt = c.get(timeout=1)
    assert (nxt.body, nxt.redelivered) == (b"keep me", False)
    nxt.ack()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)


def test_context_manager_acks_on_normal_exit(q):
    q.producer().put(b"cm")
    c = q.consumer()
    with c.get(timeout=1) as m:
        assert m.body == b"cm"
        assert m.settled is False
    assert m.settled is True
    s = q.stats()
    assert (s["acked"], s["depth"], s["in_flight"]) == (1, 0, 0)
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)


def test_context_manager_requeues_on_exception(q):
    q.producer().put(b"cm-fail")
    c = q.consumer()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with c.get(timeout=1) as m:
            raise Boom()
    assert m.settled is True
    assert q.stats()["acked"] == 0
    again = c.get(timeout=1)
    assert (again.body, again.redelivered, again.delivery_count) == (b"cm-fail", True, 2)
    again.ack()


def test_context_manager_after_manual_settle(q):
    """Settling inside the with-block is allowed; the exit does not settle twice."""
    q.producer().put(b"manual")
    c = q.consumer()
    with c.get(timeout=1) as m:
        m.nack(requeue=True)
    again = c.get(timeout=1)
    assert (again.body, again.delivery_count) == (b"manual", 2)
    again.ack()


def test_get_many(q):
    p = q.producer()
    c = q.consumer()
    for i in range(5):
        p.put(b"gm%d" % i)
    first = c.get_many(3, timeout=1)
    assert [m.body for m in first] == [b"gm0", b"gm1", b"gm2"]
    rest = c.get_many(10, timeout=1)
    assert 1 <= len(rest) <= 2
    while len(rest) < 2:
        rest += c.get_many(10, timeout=1)
    assert [m.body for m in rest] == [b"gm3", b"gm4"]
    for m in first + rest:
        m.ack()
    t0 = time.monotonic()
    with pytest.raises(ackring.Empty):
        c.get_many(4, timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    with pytest.raises(ackring.Empty):
        c.get_many(4, timeout=0)


def test_put_many(q):
    p = q.producer()
    c = q.consumer()
    bodies = [b"pm%d" % i for i in range(6)]
    ids = p.put_many(bodies)
    assert isinstance(ids, list)
    assert len(ids) == 6
    assert all(type(i) is int for i in ids)
    assert all(a < b for a, b in zip(ids, ids[1:]))
    got = []
    for _ in range(6):
        m = c.get(timeout=1)
        got.append((m.id, m.body))
        m.ack()
    assert got == list(zip(ids, bodies))


def test_put_many_accepts_generator(q):
    p = q.producer()
    ids = p.put_many(b"g%d" % i for i in range(3))
    assert len(ids) == 3
    c = q.consumer()
    assert drain(c) == [b"g0", b"g1", b"g2"]


def test_iteration_yields_messages(q):
    p = q.producer()
    c = q.consumer()
    for i in range(4):
        p.put(b"it%d" % i)
    got = []
    for m in c:
        got.append(m.body)
        m.ack()
        if len(got) == 3:
            break
    assert got == [b"it0", b"it1", b"it2"]
    m = c.get(timeout=1)
    assert m.body == b"it3"
    m.ack()


def test_iteration_ends_when_consumer_closed(q):
    p = q.producer()
    c = q.consumer()
    for i in range(3):
        p.put(b"ic%d" % i)
    got = []
    for m in c:
        got.append(m.body)
        m.ack()
        if len(got) == 2:
            c.close()
    assert got == [b"ic0", b"ic1"]
    c2 = q.consumer()
    m = c2.get(timeout=1)
    assert (m.body, m.redelivered) == (b"ic2", False)
    m.ack()


def test_memoryview_readonly_and_settle(q):
    q.producer().put(b"zero-copy payload")
    c = q.consumer()
    m = c.get(timeout=1)
    with as_view(m) as mv:
        assert mv.readonly
        assert bytes(mv) == b"zero-copy payload"
        assert mv == m.body
        assert mv.nbytes == len(m)
        with pytest.raises(TypeError):
            mv[0] = 0
    m.ack()
    with pytest.raises(ackring.AlreadySettled):
        as_view(m)


def test_memoryview_after_nack_raises(q):
    q.producer().put(b"x")
    m = q.consumer().get(timeout=1)
    m.nack(requeue=False)
    with pytest.raises(ackring.AlreadySettled):
        as_view(m)


def test_get_copy_false(q):
    q.producer().put(b"no copy please")
    c = q.consumer()
    m = c.get(timeout=1, copy=False)
    assert m.body == b"no copy please"
    assert len(m) == 14
    with as_view(m) as mv:
        assert bytes(mv) == b"no copy please"
    m.ack()
    assert q.stats()["acked"] == 1


def test_zero_length_message(q):
    mid = q.producer().put(b"")
    m = q.consumer().get(timeout=1)
    assert m.id == mid
    assert m.body == b""
    assert len(m) == 0
    m.ack()


# ------------------------------------------------------------------- stats

def test_stats_keys_and_values(make_queue):
    q = make_queue(capacity=16, message_size=100)
    s = q.stats()
    assert STAT_KEYS <= set(s)
    assert all(isinstance(s[k], int) for k in STAT_KEYS)
    assert s["capacity"] == 16
    assert s["message_size"] == 100
    for k in ("depth", "in_flight", "published", "acked", "nacked", "redelivered",
              "producers", "consumers"):
        assert s[k] == 0, k

    p = q.producer()
    c = q.consumer()
    s = q.stats()
    assert (s["producers"], s["consumers"]) == (1, 1)
    p2 = q.producer()
    assert q.stats()["producers"] == 2
    p2.close()
    assert q.stats()["producers"] == 1

    p.put(b"1")
    p.put(b"2")
    m = c.get(timeout=1)
    m.nack()
    m = c.get(timeout=1)
    assert m.redelivered
    s = q.stats()
    assert (s["published"], s["depth"], s["in_flight"], s["nacked"], s["redelivered"]) == (
        2, 1, 1, 1, 1)
    m.ack()
    c.close()
    p.close()
    s = q.stats()
    assert (s["producers"], s["consumers"], s["acked"], s["depth"]) == (0, 0, 1, 1)


# ---------------------------------------------------------------- closing

def test_queue_close_then_everything_raises(q):
    p = q.producer()
    c = q.consumer()
    p.put(b"one")
    m = c.get(timeout=1)
    q.close()
    assert q.closed is True
    q.close()  # idempotent
    assert q.closed is True
    for call in (q.producer, q.consumer, q.stats, q.reclaim,
                 lambda: p.put(b"x"), lambda: p.put_many([b"x"]),
                 lambda: c.get(timeout=0), lambda: c.get_many(1, timeout=0),
                 m.ack, m.nack):
        with pytest.raises(ackring.QueueClosed):
            call()
    assert issubclass(ackring.QueueClosed, ValueError)


def test_queue_context_manager_closes(qname):
    with ackring.create(qname, capacity=4, message_size=16) as q:
        q.producer().put(b"x")
        assert q.closed is False
    assert q.closed is True
    with pytest.raises(ackring.QueueClosed):
        q.stats()
    # closing the handle does not destroy the queue
    with ackring.open(qname) as q2:
        m = q2.consumer().get(timeout=1)
        assert m.body == b"x"
        m.ack()
    ackring.unlink(qname)


def test_producer_close(q):
    p = q.producer()
    assert p.closed is False
    p.put(b"before")
    p.close()
    assert p.closed is True
    p.close()  # idempotent
    with pytest.raises(ackring.QueueClosed):
        p.put(b"after")
    with pytest.raises(ackring.QueueClosed):
        p.put_many([b"after"])
    # the message put before closing is still there; the queue itself is fine
    c = q.consumer()
    assert drain(c) == [b"before"]


def test_producer_context_manager(q):
    with q.producer() as p:
        p.put(b"ctx")
    assert p.closed is True
    with pytest.raises(ackring.QueueClosed):
        p.put(b"x")
    assert drain(q.consumer()) == [b"ctx"]


def test_consumer_close(q):
    q.producer().put(b"x")
    c = q.consumer()
    c.close()
    assert c.closed is True
    c.close()
    with pytest.raises(ackring.QueueClosed):
        c.get(timeout=0)
    with pytest.raises(ackring.QueueClosed):
        c.get_many(1, timeout=0)
    assert drain(q.consumer()) == [b"x"]


def test_consumer_close_requeues_unsettled(q):
    p = q.producer()
    ids = [p.put(b"u%d" % i) for i in range(3)]
    c1 = q.consumer()
    m0 = c1.get(timeout=1)
    m1 = c1.get(timeout=1)
    m0.ack()
    assert q.stats()["in_flight"] == 1
    c1.close()
    s = q.stats()
    assert s["in_flight"] == 0
    assert s["depth"] == 2

    with pytest.raises(ackring.QueueClosed):
        m1.ack()

    c2 = q.consumer()
    again = c2.get(timeout=1)
    assert (again.id, again.body) == (ids[1], b"u1")
    assert again.redelivered is True
    assert again.delivery_count == 2
    again.ack()
    fresh = c2.get(timeout=1)
    assert (fresh.body, fresh.redelivered) == (b"u2", False)
    fresh.ack()


def test_consumer_context_manager_requeues(q):
    q.producer().put(b"held")
    with q.consumer() as c:
        m = c.get(timeout=1)
        assert m.body == b"held"
    assert c.closed is True
    m2 = q.consumer().get(timeout=1)
    assert (m2.body, m2.redelivered) == (b"held", True)
    m2.ack()


# ----------------------------------------------------- capacity / blocking

def test_full_queue_backpressure(make_queue):
    q = make_queue(capacity=4, message_size=16)
    p = q.producer()
    c = q.consumer()
    ids = [p.put(b"f%d" % i, timeout=0) for i in range(4)]
    assert q.stats()["depth"] == 4

    with pytest.raises(ackring.Full):
        p.put(b"overflow", timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ackring.Full):
        p.put(b"overflow", timeout=0.05)
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 5.0
    with pytest.raises(ackring.Full):
        p.put_many([b"overflow"], timeout=0)
    assert q.stats()["depth"] == 4
    assert q.stats()["published"] == 4

    m = c.get(timeout=1)
    assert m.id == ids[0]
    m.ack()
    new_id = p.put(b"fits now", timeout=0)
    assert new_id > ids[-1]
    assert drain(c) == [b"f1", b"f2", b"f3", b"fits now"]


def test_full_of_unacked_deliveries_blocks_put(make_queue):
    q = make_queue(capacity=4, message_size=16)
    p = q.producer()
    c = q.consumer()
    for i in range(4):
        p.put(b"d%d" % i)
    held = [c.get(timeout=1) for _ in range(4)]
    s = q.stats()
    assert (s["depth"], s["in_flight"]) == (0, 4)
    with pytest.raises(ackring.Full):
        p.put(b"no room", timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ackring.Full):
        p.put(b"no room", timeout=0.05)
    assert time.monotonic() - t0 >= 0.04

    held[0].ack()  # frees the slot at the ring tail
    p.put(b"room", timeout=0)
    for m in held[1:]:
        m.ack()
    assert drain(c) == [b"room"]


def test_get_empty_timeouts(q):
    c = q.consumer()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0.05)
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 5.0
    # the caught exception is a stdlib queue.Empty too
    try:
        c.get(timeout=0)
    except queue.Empty:
        pass
    else:
        pytest.fail("get on an empty queue returned")


def test_exception_types_are_stdlib_compatible():
    assert issubclass(ackring.Empty, queue.Empty)
    assert issubclass(ackring.Full, queue.Full)
    assert issubclass(ackring.QueueNotFound, FileNotFoundError)
    assert issubclass(ackring.MessageTooLarge, ValueError)
    assert issubclass(ackring.IncompatibleQueue, ValueError)
    assert issubclass(ackring.QueueClosed, ValueError)


def test_full_is_queue_full(make_queue):
    q = make_queue(capacity=2, message_size=8)
    p = q.producer()
    p.put(b"1")
    p.put(b"2")
    try:
        p.put(b"3", timeout=0)
    except queue.Full:
        pass
    else:
        pytest.fail("put on a full queue returned")


def test_many_consumers_and_producers_in_one_process(q):
    producers = [q.producer() for _ in range(3)]
    consumers = [q.consumer() for _ in range(3)]
    sent = []
    for i in range(30):
        b = b"x%d" % i
        producers[i % 3].put(b, timeout=1)
        sent.append(b)
        m = consumers[(i * 7) % 3].get(timeout=1)
        assert m.body == b
        m.ack()
    s = q.stats()
    assert (s["producers"], s["consumers"], s["published"], s["acked"]) == (3, 3, 30, 30)


@pytest.mark.timeout(30)
def test_close_while_another_thread_is_blocked_in_get(make_queue):
    """A consumer closed from another thread while one of its threads waits in
    get(): the waiter ends with QueueClosed, and a message put after the close
    is not pinned by it, even when a new consumer of this process takes the
    same process-table index at once."""
    import threading

    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p = q.producer()
    for rnd in range(20):
        c1 = q.consumer()
        started, outcome = threading.Event(), []

        def waiter():
            started.set()
            try:
                m = c1.get(timeout=10)
                outcome.append(("got", m.id))
            except ackring.QueueClosed:
                outcome.append(("closed",))

        t = threading.Thread(target=waiter)
        t.start()
        assert started.wait(5)
        c1.close()
        c2 = q.consumer()          # may reuse c1's index
        mid = p.put(b"r%d" % rnd)
        t.join(10)
        assert not t.is_alive()
        assert outcome == [("closed",)], outcome
        m = c2.get(timeout=5)      # the message reaches the live consumer
        assert m.id == mid
        m.ack()
        c2.close()
    s = q.stats()
    assert (s["depth"], s["in_flight"]) == (0, 0), s
    assert q.check() == []
