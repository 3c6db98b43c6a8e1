"""The fast paths: put_many / get_many / ack_many, zero-copy send through
reserve(), zero-copy receive through get(copy=False) - in one process for the
contracts, and across processes for correctness under load."""

import multiprocessing
import pickle
import threading
import time
from array import array

import pytest

import ackring
import _ar_workers as W

FORK = multiprocessing.get_context("fork")


def drain(c, timeout=0.1):
    """Get-and-ack everything currently deliverable: [(id, body)]."""
    return W.drain(c, timeout, lambda m: (m.id, m.body))


# ------------------------------------------------------------------ put_many

def test_put_many_returns_ids_in_order(make_queue):
    q = make_queue(capacity=16, message_size=32, watchdog=None)
    p, c = q.producer(), q.consumer()
    items = [b"a", bytearray(b"bb"), memoryview(b"ccc"), array("B", [1, 2]), b""]
    ids = p.put_many(items, timeout=1)
    assert ids == list(range(ids[0], ids[0] + 5))
    assert drain(c) == list(zip(ids, [b"a", b"bb", b"ccc", b"\x01\x02", b""]))
    assert p.put_many([], timeout=0) == []
    assert p.put_many(iter([b"g1", b"g2"]), timeout=1) == [ids[-1] + 1, ids[-1] + 2]
    assert q.stats()["published"] == 7


def test_put_batch_returns_the_ids_as_one_array(make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    p, c = q.producer(), q.consumer()
    ids = p.put_batch([b"a", bytearray(b"bb"), memoryview(b"ccc")], timeout=1)
    assert isinstance(ids, array) and ids.typecode == "Q"
    assert list(ids) == list(range(ids[0], ids[0] + 3))
    assert p.put_batch(iter([b"d"]), timeout=0).tolist() == [ids[-1] + 1]
    empty = p.put_batch([], timeout=0)
    assert isinstance(empty, array) and len(empty) == 0
    assert drain(c) == list(zip(list(ids) + [ids[-1] + 1], [b"a", b"bb", b"ccc", b"d"]))
    with pytest.raises(TypeError, match=r"put_batch\(\) takes bytes-like items"):
        p.put_batch([b"ok", "text"], timeout=0)
    with pytest.raises(ackring.MessageTooLarge):
        p.put_batch([b"ok", b"x" * 33], timeout=0)
    assert q.stats()["published"] == 4            # a bad item anywhere: nothing written
    more = p.put_batch([b"f%d" % i for i in range(8)], timeout=0)   # 8 free slots
    with pytest.raises(ackring.Full, match="put_batch to queue") as ei:
        p.put_batch([b"late0", b"late1"], timeout=0)
    assert ei.value.ids == []
    assert len(more) == 8 and len(set(more)) == 8
    p.close()
    with pytest.raises(ackring.QueueClosed):
        p.put_batch([b"after close"], timeout=0)


@pytest.mark.parametrize("bad, exc", [
    ("text", TypeError), (5, TypeError), (None, TypeError), (b"x" * 33, ackring.MessageTooLarge)])
@pytest.mark.parametrize("where", [0, 2])
def test_put_many_checks_every_item_before_writing(make_queue, bad, exc, where):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    p = q.producer()
    items = [b"ok0", b"ok1", b"ok2"]
    items.insert(where, bad)
    with pytest.raises(exc):
        p.put_many(items, timeout=0)
    s = q.stats()
    # nothing was claimed: every slot is still in the free ring
    assert (s["published"], s["depth"], s["writing"], s["free_ring"]) == (0, 0, 0, 8), s
    assert q.check() == []
    assert p.put(b"later", timeout=0) == 0       # nothing was claimed either


@pytest.mark.parametrize("timeout", [0, 0.05])
def test_put_many_full_reports_what_was_stored(make_queue, timeout):
    q = make_queue(capacity=4, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    first = p.put(b"first", timeout=0)
    with pytest.raises(ackring.Full) as ei:
        p.put_many([b"m%d" % i for i in range(6)], timeout=timeout)
    assert ei.value.ids == [first + 1, first + 2, first + 3]
    assert q.stats()["depth"] == 4
    assert drain(c) == [(first, b"first")] + [(first + 1 + i, b"m%d" % i) for i in range(3)]
    assert q.check() == []


@pytest.mark.timeout(30)
def test_put_many_waits_for_room(make_queue):
    q = make_queue(capacity=4, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    p.put_many([b"x"] * 4, timeout=0)
    got = []

    def consume():
        for _ in range(8):
            m = c.get(timeout=5)
            got.append(m.body)
            m.ack()
    t = threading.Thread(target=consume)
    t.start()
    ids = p.put_many([b"y%d" % i for i in range(4)], timeout=10)
    t.join(10)
    assert not t.is_alive()
    assert len(ids) == 4
    assert got == [b"x"] * 4 + [b"y%d" % i for i in range(4)]


# ------------------------------------------------------------------ get_many

@pytest.mark.timeout(30)
def test_get_many_takes_what_is_ready(make_queue):
    q = make_queue(capacity=16, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    with pytest.raises(ValueError):
        c.get_many(0)
    with pytest.raises(ackring.Empty):
        c.get_many(4, timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ackring.Empty):
        c.get_many(4, timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    ids = p.put_many([b"a", b"b", b"c"], timeout=0)
    ms = c.get_many(10, timeout=1)
    assert [(m.id, m.body, m.delivery_count) for m in ms] == list(zip(ids, [b"a", b"b", b"c"], [1] * 3))
    assert q.stats()["in_flight"] == 3
    c.ack_many(ms)
    p.put_many([b"d", b"e", b"f"], timeout=0)
    assert [m.body for m in c.get_many(2, timeout=0)] == [b"d", b"e"]


@pytest.mark.timeout(30)
def test_get_many_waits_for_the_first(make_queue):
    q = make_queue(capacity=16, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    started = threading.Event()

    def later():
        started.wait(5)
        time.sleep(0.1)  # the put must come while get_many is already waiting
        p.put(b"late", timeout=1)
    t = threading.Thread(target=later)
    t.start()
    t0 = time.monotonic()
    started.set()
    ms = c.get_many(8, timeout=5)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert [m.body for m in ms] == [b"late"]
    assert elapsed >= 0.09          # it waited for the put, it did not return Empty
    ms[0].ack()


# ------------------------------------------------------------------ ack_many

def _three(q):
    p, c = q.producer(), q.consumer()
    p.put_many([b"0", b"1", b"2"], timeout=0)
    return p, c, c.get_many(3, timeout=1)


def test_ack_many_acks_all(make_queue):
    q = make_queue(watchdog=None)
    _p, c, ms = _three(q)
    c.ack_many(tuple(ms))
    assert all(m.settled for m in ms)
    s = q.stats()
    assert (s["in_flight"], s["acked"]) == (0, 3)
    c.ack_many([])
    with pytest.raises(ackring.AlreadySettled):
        ms[0].ack()


@pytest.mark.parametrize("case", ["type", "other-consumer", "settled", "duplicate"])
def test_ack_many_validates_before_acking(make_queue, case):
    q = make_queue(watchdog=None)
    p, c, ms = _three(q)
    batch = list(ms)
    if case == "type":
        batch.append(b"not a message")
        exc = TypeError
    elif case == "other-consumer":
        c2 = q.consumer()
        p.put(b"3", timeout=0)
        other = c2.get(timeout=1)
        batch.insert(1, other)
        exc = ValueError
    elif case == "settled":
        p.put(b"3", timeout=0)
        done = c.get(timeout=1)
        done.ack()
        batch.append(done)
        exc = ackring.AlreadySettled
    else:
        batch.append(ms[0])
        exc = ackring.AlreadySettled
    with pytest.raises(exc):
        c.ack_many(batch)
    # nothing was acked
    assert not any(m.settled for m in ms)
    assert q.stats()["in_flight"] == (4 if case == "other-consumer" else 3)
    c.ack_many(ms)
    assert q.stats()["acked"] == (4 if case == "settled" else 3)


@pytest.mark.timeout(60)
def test_ack_many_skips_and_reports_stale_deliveries(procs, make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"s0", b"s1", b"s2"], timeout=0)
    parent_conn, child_conn = FORK.Pipe(duplex=True)
    child = procs(W.stale_ack_many_child, q.name, child_conn, method="fork")
    assert parent_conn.poll(20)
    assert parent_conn.recv() == ("held", ids)
    deadline = time.monotonic() + 10          # their 0.2 s leases run out: taken back
    taken = 0
    while taken < 3 and time.monotonic() < deadline:
        taken += q.reclaim()
        time.sleep(0.05)
    assert taken == 3
    parent_conn.send("go")
    assert parent_conn.poll(20)
    res = parent_conn.recv()
    assert res[0] == "stale", res
    assert res[1] == [ids[0]]                 # only the old delivery is reported ...
    assert res[2] == [True, True, True]       # ... and every item counts as settled
    assert sorted(res[3]) == ids
    child.join(10)
    assert child.exitcode == 0
    s = q.stats()
    assert (s["depth"], s["in_flight"]) == (0, 0), s


# ------------------------------------------------------------------ get_batch

def test_get_batch_reads_and_acks_as_one(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    ids = p.put_many([b"a", b"bb", b"ccc"], timeout=0)
    b = c.get_batch(8, timeout=1)                 # takes what is there, up to 8
    assert len(b) == 3 and not b.settled
    assert (b.ids, b.delivery_counts, b.nbytes) == (ids, [1, 1, 1], 6)
    assert (b[0], b[-1], list(b)) == (b"a", b"ccc", [b"a", b"bb", b"ccc"])
    v = b.view(1)
    assert v.readonly and bytes(v) == b"bb"
    del v
    assert (b.join(), b.join(b"|")) == (b"abbccc", b"a|bb|ccc")
    for bad in (3, -4):
        with pytest.raises(IndexError):
            b[bad]
    s = q.stats()
    assert (s["in_flight"], s["depth"]) == (3, 0)
    b.ack()
    assert b.settled
    s = q.stats()
    assert (s["in_flight"], s["acked"]) == (0, 3)
    with pytest.raises(ackring.AlreadySettled):    # its slots may hold other messages now
        b[0]
    with pytest.raises(ackring.AlreadySettled):
        b.view(0)
    with pytest.raises(ackring.AlreadySettled):
        b.ack()
    assert q.stats()["acked"] == 3
    assert q.check() == []


def test_get_batch_limits_and_bad_arguments(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    for n in (0, -1):
        with pytest.raises(ValueError):
            c.get_batch(n, timeout=0)
    with pytest.raises(TypeError):
        c.get_batch("4", timeout=0)
    with pytest.raises(ackring.Empty):
        c.get_batch(4, timeout=0.02)
    p.put_many([b"%d" % i for i in range(5)], timeout=0)
    first = c.get_batch(2, timeout=0)
    rest = c.get_batch(64, timeout=0)
    assert (list(first), list(rest)) == ([b"0", b"1"], [b"2", b"3", b"4"])
    with pytest.raises(TypeError):
        type(first)()                              # only get_batch makes them
    with pytest.raises(TypeError):
        pickle.dumps(first)
    first.ack()
    rest.ack()
    # a prefetch limit caps a batch as it caps get_many
    c2 = q.consumer(prefetch=2)
    p.put_many([b"x", b"y", b"z"], timeout=0)
    b = c2.get_batch(8, timeout=1)
    assert list(b) == [b"x", b"y"]
    b.ack()
    assert list(c2.get_batch(8, timeout=1)) == [b"z"]


def test_get_batch_nack_reject_and_context(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None, max_deliveries=None)
    p, c = q.producer(), q.consumer()
    ids = p.put_many([b"a", b"b"], timeout=0)
    c.get_batch(8, timeout=1).nack()               # requeued, in order, delivery 2
    b = c.get_batch(8, timeout=1)
    assert (b.ids, list(b), b.delivery_counts) == (ids, [b"a", b"b"], [2, 2])
    with pytest.raises(RuntimeError):
        with b:                                    # an exception in the block: nacked
            raise RuntimeError("worker failed")
    assert b.settled
    with c.get_batch(8, timeout=1) as b:           # a clean exit: acked
        assert b.delivery_counts == [3, 3]
    s = q.stats()
    assert (s["acked"], s["nacked"], s["in_flight"], s["depth"]) == (2, 4, 0, 0), s
    p.put(b"bad", timeout=0)
    c.get_batch(8, timeout=1).reject()             # to the dead-letter queue
    assert q.stats()["dead_lettered"]["rejected"] == 1
    dead = q.dead_letters.consumer().get(timeout=1)
    assert (dead.body, dead.death["reason"]) == (b"bad", "rejected")
    dead.ack()


@pytest.mark.parametrize("call", ["get_batch", "get_many"])
def test_a_batch_takes_the_requeued_first_then_the_new(make_queue, call):
    # A batch looks at the requeue ring until it is empty, then takes the
    # rest from the ready ring: requeued messages first, each ring in order.
    q = make_queue(capacity=16, message_size=16, watchdog=None, max_deliveries=None)
    p, c = q.producer(), q.consumer()
    ids = p.put_many([b"a", b"b", b"c", b"d", b"e"], timeout=0)
    first, second = c.get(timeout=1), c.get(timeout=1)
    second.nack()                                  # requeued first: b, then a
    first.nack()
    got = getattr(c, call)(16, timeout=1)
    if call == "get_batch":
        bodies, got_ids, counts = list(got), got.ids, got.delivery_counts
        got.ack()
    else:
        bodies = [m.body for m in got]
        got_ids, counts = [m.id for m in got], [m.delivery_count for m in got]
        c.ack_many(got)
    assert bodies == [b"b", b"a", b"c", b"d", b"e"]
    assert got_ids == [ids[1], ids[0]] + ids[2:]
    assert counts == [2, 2, 1, 1, 1]
    s = q.stats()
    assert (s["acked"], s["nacked"], s["in_flight"], s["depth"]) == (5, 2, 0, 0), s


def test_get_batch_of_a_closed_consumer_is_given_back(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    ids = p.put_many([b"a", b"b", b"c"], timeout=0)
    b = c.get_batch(8, timeout=1)
    assert b[0] == b"a"
    c.close()                                      # gives every delivery back
    with pytest.raises(ackring.QueueClosed):
        b.ack()
    with pytest.raises(ackring.StaleDelivery):     # the slot is no longer this delivery's
        b[1]
    b2 = q.consumer().get_batch(8, timeout=1)
    assert (b2.ids, list(b2), b2.delivery_counts) == (ids, [b"a", b"b", b"c"], [2, 2, 2])
    b2.ack()
    s = q.stats()
    assert (s["acked"], s["in_flight"], s["depth"]) == (3, 0, 0), s


# ------------------------------------------------------------------ reserve

def test_reserve_context_commits(make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    p, c = q.producer(), q.consumer()
    r = p.reserve(5)
    assert len(r) == 5
    with r as buf:
        assert isinstance(buf, memoryview) and not buf.readonly and len(buf) == 5
        buf[:] = b"hello"
    assert r.done
    m = c.get(timeout=1)
    assert (m.id, m.body) == (r.id, b"hello")
    m.ack()
    with p.reserve() as buf:                  # default: message_size bytes
        assert len(buf) == 32
        buf[:] = b"z" * 32
    assert c.get(timeout=1).body == b"z" * 32


def test_reserve_context_aborts_on_exception(make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    p, c = q.producer(), q.consumer()
    with pytest.raises(RuntimeError):
        with p.reserve(4) as buf:
            buf[:] = b"oops"
            raise RuntimeError("no")
    with pytest.raises(ackring.Empty):
        c.get(timeout=0.05)
    mid = p.put(b"next", timeout=0)           # consumers step over the aborted slot
    m = c.get(timeout=1)
    assert (m.id, m.body) == (mid, b"next")
    m.ack()
    assert q.stats()["discarded"] == 1
    assert q.check() == []


def test_reserve_commit_prefix_and_settled_state(make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    p, c = q.producer(), q.consumer()
    r = p.reserve(10)
    W.as_view(r)[:3] = b"abc"
    assert r.commit(3) == r.id
    with pytest.raises(ackring.AlreadySettled):
        W.as_view(r)
    with pytest.raises(ackring.AlreadySettled):
        r.commit(3)
    with pytest.raises(ackring.AlreadySettled):
        r.abort()
    m = c.get(timeout=1)
    assert (m.id, m.body) == (r.id, b"abc")
    m.ack()
    r2 = p.reserve(10)
    with pytest.raises(ValueError):
        r2.commit(11)
    r2.abort()
    with pytest.raises(ackring.AlreadySettled):
        W.as_view(r2)
    with pytest.raises(ackring.AlreadySettled):
        r2.commit()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)
    assert q.check() == []


def test_reserve_limits(make_queue):
    q = make_queue(capacity=2, message_size=16, watchdog=None)
    p = q.producer()
    with pytest.raises(ackring.MessageTooLarge):
        p.reserve(17)
    p.put_many([b"a", b"b"], timeout=0)
    with pytest.raises(ackring.Full):
        p.reserve(4, timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ackring.Full):
        p.reserve(4, timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    s = q.stats()
    assert (s["published"], s["writing"], s["free_ring"]) == (2, 0, 0)   # the failed reserves claimed nothing


@pytest.mark.timeout(30)
def test_aborted_reservation_does_not_stall_waiting_consumer(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    r = p.reserve(4)                          # a consumer now waits behind it
    out = []
    t = threading.Thread(target=lambda: out.append(c.get(timeout=5)))
    t.start()
    mid = p.put(b"behind", timeout=0)
    r.abort()
    t.join(10)
    assert not t.is_alive()
    assert [(m.id, m.body) for m in out] == [(mid, b"behind")]
    out[0].ack()


def test_producer_closed_with_open_reservation_discards_it(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    r = p.reserve(4)
    W.as_view(r)[:] = b"lost"
    p.close()
    with pytest.raises(ackring.QueueClosed):
        r.commit()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0.05)
    p2 = q.producer()
    mid = p2.put(b"fresh", timeout=0)
    m = c.get(timeout=1)
    assert (m.id, m.body) == (mid, b"fresh")
    m.ack()
    s = q.stats()
    assert (s["depth"], s["in_flight"], s["discarded"]) == (0, 0, 1), s
    assert q.check() == []


# ------------------------------------------------------------------ zero-copy receive

def test_get_without_copy(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    p.put(b"zero-copy", timeout=0)
    m = c.get(timeout=1, copy=False)
    v = W.as_view(m)
    assert v.readonly and bytes(v) == b"zero-copy" and len(m) == 9
    with pytest.raises(TypeError):
        v[0:1] = b"x"                            # read-only
    assert m.body == b"zero-copy"
    v.release()
    m.ack()
    with pytest.raises(ackring.AlreadySettled):
        W.as_view(m)
    p.put(b"unread", timeout=0)
    m2 = c.get(timeout=1, copy=False)
    m2.ack()
    with pytest.raises(ackring.AlreadySettled):
        m2.body                                  # never copied, slot no longer ours
    p.put_many([b"g1", b"g2"], timeout=0)
    ms = c.get_many(2, timeout=1, copy=False)
    assert [bytes(W.as_view(m)) for m in ms] == [b"g1", b"g2"]
    c.ack_many(ms)


# ------------------------------------------------------------------ across processes

@pytest.mark.timeout(120)
@pytest.mark.parametrize("how, n, copy", [("put_many", 100_000, True), ("reserve", 30_000, False),
                                          ("put_many", 100_000, "get_batch")])
def test_batch_producer_and_consumer_processes(procs, make_queue, how, n, copy):
    size = 48
    q = make_queue(capacity=256, message_size=size, watchdog=None)
    result_q = FORK.Queue()
    procs(W.batch_consumer, q.name, n, 64, size, copy, result_q, method="fork")
    procs(W.batch_producer, q.name, n, 64, size, how, result_q, method="fork")
    results = W.collect(result_q, 2, procs, 90)
    prod = next(r for r in results if r[0] == "producer")
    cons = next(r for r in results if r[0] == "consumer")
    pids = array("Q", prod[2])
    seqs, cids, bad = array("Q", cons[1]), array("Q", cons[2]), cons[3]
    assert bad == 0
    assert len(pids) == n and list(pids) == sorted(pids) and len(set(pids)) == n
    assert len(cids) == n and set(cids) == set(pids)        # every id exactly once
    assert sorted(seqs) == list(range(n))                   # every body exactly once
    assert list(seqs) == list(range(n))                     # one producer, one consumer: FIFO
    procs.join_all(20)
    s = q.stats()
    assert (s["depth"], s["in_flight"], s["published"], s["acked"]) == (0, 0, n, n), s
    assert q.check() == []


def test_dropped_reservation_does_not_stall_consumers(make_queue):
    """A reservation garbage-collected without commit/abort can never be
    committed: it must not leave consumers waiting behind its slot for the
    rest of the producer's life."""
    import gc

    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    r = p.reserve(4)
    del r
    gc.collect()
    mid = p.put(b"after", timeout=0)
    m = c.get(timeout=1)
    assert (m.id, m.body) == (mid, b"after")
    m.ack()
    assert q.check() == []


def test_close_waits_for_an_open_reservation(make_queue):
    """Closing a producer with a reservation open keeps its entry (and the
    slot) until the reservation ends, so nothing is taken away from under a
    writer that still holds a view of the slot."""
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    p, c = q.producer(), q.consumer()
    r = p.reserve(4)
    view = W.as_view(r)
    p.close()
    assert q.stats()["producers"] == 1          # still held for the reservation
    view[:] = b"late"                           # writes into a slot that is still ours
    with pytest.raises(ackring.QueueClosed):
        r.commit()                              # ... but a closed producer publishes nothing
    s = q.stats()
    assert (s["producers"], s["depth"], s["discarded"]) == (0, 0, 1), s
    with pytest.raises(ackring.Empty):
        c.get(timeout=0.05)
    assert q.check() == []
