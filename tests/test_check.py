"""q.check(): empty on every sound state, and a plain-words finding for each
kind of damage - dead owners (found by their released OFD locks) and words
scribbled over in the segment file (written here through a second mapping of
the file, at the offsets of layout version 2 (tests/_layout.py), then
restored)."""

import multiprocessing
import threading
import time

import pytest

import ackring
import _ar_workers as W
from _layout import (E_WORD, S_LEN, S_USE, S_WORD, U32, U64, Raw, slot_word)

FORK = multiprocessing.get_context("fork")


def state_of(w):
    return w & 7


@pytest.fixture
def prepared(make_queue):
    """capacity 8, message_size 32, max_clients 8; 1000 messages through, then
    3 published and the first delivered to a live consumer: one slot
    DELIVERED, two READY, five FREE in the free ring."""
    q = make_queue(capacity=8, message_size=32, watchdog=None, max_clients=8)
    p, c = q.producer(), q.consumer()
    for _ in range(1000):
        p.put(b"warm", timeout=0)
        c.get(timeout=1).ack()
    p.put_many([b"m0", b"m1", b"m2"], timeout=0)
    held = c.get(timeout=1)
    raw = Raw(q)
    words = [raw.get(U64, raw.slot(i)) for i in range(8)]
    raw.delivered = [i for i, w in enumerate(words) if state_of(w) == 3]
    raw.ready = [i for i, w in enumerate(words) if state_of(w) == 2]
    raw.free = [i for i, w in enumerate(words) if state_of(w) == 0]
    assert (len(raw.delivered), len(raw.ready), len(raw.free)) == (1, 2, 5)
    assert q.check() == []
    yield q, p, c, held, raw
    raw.close()


def _full_free_cell(raw):
    """Offset of a cell of the free ring that holds an entry."""
    for j in range(raw.cap):
        c = raw.get(U64, raw.cell(0, j))
        if ((c >> 24) - 1) % raw.cap == j:
            return raw.cell(0, j)
    raise AssertionError("no full cell in the free ring")


# ------------------------------------------------------------------ sound states

@pytest.mark.timeout(30)
def test_check_is_empty_on_sound_states(make_queue):
    q = make_queue(capacity=4, message_size=32, watchdog=None)
    assert q.check() == []
    p, c = q.producer(), q.consumer()
    assert q.check() == []
    for i in range(11):                       # several laps
        p.put(b"%d" % i, timeout=0)
        c.get(timeout=1).ack()
        assert q.check() == []
    p.put_many([b"a", b"b", b"c"], timeout=0)
    m = c.get(timeout=1)                      # one in flight
    assert q.check() == []
    m.nack()                                  # requeued behind head
    assert q.check() == []
    r = p.reserve(4)                          # an open reservation (WRITING, live owner)
    assert q.check() == []
    r.abort()
    assert q.check() == []
    while True:
        try:
            c.get(timeout=0).ack()
        except ackring.Empty:
            break
    assert q.check() == []
    p.put_many([b"x"] * 4, timeout=0)         # full
    assert q.check() == []


@pytest.mark.timeout(60)
def test_check_under_traffic_returns_strings_and_settles_to_empty(procs, make_queue):
    q = make_queue(capacity=16, message_size=64, watchdog=None)
    n = 20_000
    result_q = FORK.Queue()
    procs(W.batch_consumer, q.name, n, 8, 48, True, result_q, method="fork")
    procs(W.batch_producer, q.name, n, 8, 48, "put_many", result_q, method="fork")
    calls = 0
    deadline = time.monotonic() + 60
    while q.stats()["acked"] < n and time.monotonic() < deadline:
        found = q.check()
        assert isinstance(found, list) and all(isinstance(f, str) for f in found)
        calls += 1
    assert calls > 0
    W.collect(result_q, 2, procs, 30)
    procs.join_all(20)
    assert q.check() == []


# ------------------------------------------------------------------ dead owners

@pytest.mark.timeout(60)
def test_check_names_dead_consumer_and_its_deliveries(procs, make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    q.producer().put_many([b"a", b"b"], timeout=0)
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    holder = procs(W.hold_and_hang, q.name, 2, child_conn, FORK.Event(), method="fork")
    assert parent_conn.poll(20)
    _tag, _ids, pid = parent_conn.recv()
    assert q.check() == []                    # alive: nothing to report
    W.kill_and_reap(holder)
    found = q.check()
    assert len(found) == 3, found
    assert any("pid %d" % pid in f and "process is gone" in f for f in found), found
    assert sum("DELIVERED by dead pid %d" % pid in f and "redeliver" in f for f in found) == 2, found
    assert q.reclaim() == 2
    assert q.check() == []


@pytest.mark.timeout(60)
def test_check_names_dead_writer(procs, make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    child, _ = W.stop_child_at(procs, q.name, "put_writing", "reserve")
    W.kill_and_reap(child)
    found = q.check()
    assert any("WRITING by dead pid" in f and "discard" in f for f in found), found
    assert q.reclaim() == 1
    assert q.check() == []


@pytest.mark.timeout(60)
def test_dead_sleeper_costs_no_lost_wakeup(procs, make_queue):
    """A consumer killed while asleep in get() leaves the eventcount's
    "may sleep" bit set: the next wake makes one system call for nobody, and a
    wakeup still reaches the next sleeper."""
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    ready = FORK.Event()
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    child = procs(W.blocked_get_child, q.name, ready, child_conn, method="fork")
    assert ready.wait(20)
    deadline = time.monotonic() + 10
    while not q._seg.raw_header()["not_empty"] & 1:
        assert time.monotonic() < deadline, "the child never went to sleep"
        time.sleep(0.005)  # poll interval of a bounded condition loop
    W.kill_and_reap(child)
    assert any("process is gone" in f for f in q.check())
    q.reclaim()
    assert q.check() == []
    c = q.consumer()
    out = []
    t = threading.Thread(target=lambda: out.append(c.get(timeout=5).body))
    t.start()
    q.producer().put(b"wake", timeout=0)
    t.join(10)
    assert out == [b"wake"]


# ------------------------------------------------------------------ scribbles

SCRIBBLES = {
    # name: (struct, offset function, new value function, words expected in a finding)
    "unknown-slot-state": (U64, lambda r: r.slot(r.ready[0]), lambda old, r: (old & ~7) | 7, "unknown state"),
    "owner-beyond-table": (U64, lambda r: r.slot(r.delivered[0]),
                           lambda old, r: (old & ~(0xFFF << 3)) | (4000 << 3), "beyond the table"),
    "owner-entry-free": (U64, lambda r: r.slot(r.delivered[0]),
                         lambda old, r: (old & ~(0xFFF << 3)) | (6 << 3), "which is free"),
    "length": (U32, lambda r: r.slot(r.ready[0], S_LEN), lambda old, r: 33, "exceeds message_size"),
    "use-count": (U64, lambda r: r.slot(r.ready[0], S_USE), lambda old, r: old + 5, "use count"),
    "ready-outside-ready-ring": (U64, lambda r: r.slot(r.free[0]),
                                 lambda old, r: slot_word(2, 0xFFF, 0, old >> 32), "not in the ready ring"),
    "free-not-in-free-ring": (U64, lambda r: r.slot(r.ready[0]),
                              lambda old, r: slot_word(0, 0, 0, old >> 32), "not in the free ring"),
    "index-twice": (U64, _full_free_cell,
                    lambda old, r: (old & ~0xFFFFFF) | [v for v in r.free if v != old & 0xFFFFFF][0],
                    "ring places"),
    "cell-index-beyond": (U64, _full_free_cell, lambda old, r: (old & ~0xFFFFFF) | 200, "beyond capacity"),
    "cell-sequence": (U64, _full_free_cell, lambda old, r: old + (3 << 24), "belongs to no position"),
    "head-ahead-of-tail": (U64, lambda r: r.head(1), lambda old, r: old + 12, "ahead of tail"),   # beyond the hints' lag (hint_lag)
    "tail-too-far": (U64, lambda r: r.tail(0), lambda old, r: old + 20, "more than capacity"),
    "magic": (U64, lambda r: 0, lambda old, r: 0x1234, "magic"),
    "entry-state": (U64, lambda r: r.entry(0, E_WORD), lambda old, r: (old & ~0xFF) | 9, "unknown state"),
}


@pytest.mark.parametrize("kind", sorted(SCRIBBLES))
def test_check_reports_scribbled_words(prepared, kind):
    q, _p, _c, _held, raw = prepared
    st, off_fn, new_fn, words = SCRIBBLES[kind]
    off = off_fn(raw)
    old = raw.get(st, off)
    raw.put(st, off, new_fn(old, raw))
    try:
        found = q.check()
        assert any(words in f for f in found), (kind, found)
    finally:
        raw.put(st, off, old)
    assert q.check() == []


def test_corrupt_length_is_refused_not_trusted(prepared):
    """I4: a length from shared memory is bounds-checked before use; the bad
    message is discarded (an error is raised once) and the queue goes on."""
    q, _p, c, held, raw = prepared
    bad, good = raw.ready
    raw.put(U32, raw.slot(bad, S_LEN), 1 << 20)
    got = []
    for _ in range(2):
        try:
            m = c.get(timeout=0)
        except ackring.CorruptedQueue:
            got.append("corrupt")
        else:
            got.append(m.body)
            m.ack()
    assert got.count("corrupt") == 1 and len(set(got) & {b"m1", b"m2"}) == 1, got
    assert isinstance(ackring.CorruptedQueue("x"), ackring.IncompatibleQueue)
    assert q.stats()["discarded"] == 1
    held.ack()
    assert q.check() == []


def test_check_reports_full_cells_behind_head(make_queue):
    """Found while testing the core review's finding 5: a ready-ring head
    scribbled forward to tail strands the READY messages in the cells it
    skipped (get says Empty, no reclaim repairs them: nobody died).  check()
    names each such cell; restoring head brings them back."""
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    ids = q.producer().put_many([b"a", b"b", b"c"], timeout=0)
    raw = Raw(q)
    try:
        off = raw.head(1)
        old = raw.get(U64, off)
        raw.put(U64, off, old + 3)             # head == tail: the ring looks empty
        c = q.consumer()
        with pytest.raises(ackring.Empty):
            c.get(timeout=0)
        found = q.check()
        assert sum("behind head" in f for f in found) == 3, found
        raw.put(U64, off, old)
        assert q.check() == []
        assert [m.id for m in c.get_many(3, timeout=0)] == ids
    finally:
        raw.close()
