"""q.check(): empty on every sound state, and a plain-words finding for each
kind of damage - dead owners (found by liveness) and words scribbled over in
the segment file (written here through a second mapping of the file, at the
offsets of layout version 1, then restored)."""

import mmap
import multiprocessing
import os
import struct
import threading
import time

import pytest

import ackring
import _ar_workers as W

FORK = multiprocessing.get_context("fork")

U64, U32 = struct.Struct("<Q"), struct.Struct("<I")
OWNER_SHIFT, NO_OWNER = 4, 0xFFF


def set_owner(w, owner):
    return (w & ~(0xFFF << OWNER_SHIFT)) | (owner << OWNER_SHIFT)


def set_state(w, state):
    return (w & ~0xF) | state


class Raw:
    """A second mapping of a queue's segment file, for scribbling.

    Offsets are derived from the segment itself rather than hard-coded (the
    layout may grow): the slots are the last capacity*slot_size bytes, the
    process-table entries fill the space between header and slots, and head
    and tail are found in the header by their (distinctive) values.  Every
    derived offset is verified against what the library reports."""

    def __init__(self, q):
        self.f = open(q.path, "r+b")
        self.m = mmap.mmap(self.f.fileno(), 0)
        h = q._seg.raw_header()
        cap, max_clients = h["capacity"], h["max_clients"]
        self.slot_size = h["slot_size"]
        self.slots = h["total_size"] - cap * self.slot_size
        self.header_size = h["header_size"]
        self.entry_size = (self.slots - self.header_size) // max_clients
        # slot header: word, id, len at 0, 8, 16
        for i, (w, mid, ln) in enumerate(q._seg.raw_slots()):
            assert (self.get(U64, self.slot(i)), self.get(U64, self.slot(i, 8)),
                    self.get(U32, self.slot(i, 16))) == (w, mid, ln), "slot layout changed"
        # process-table entry: its word first (rows carry it from field 5 on,
        # else it is pid << 32 | role << 8 | state)
        for row in q._seg.clients():
            index, state, role, pid = row[:4]
            want = row[5] if len(row) > 5 else (pid << 32) | (role << 8) | state
            assert self.get(U64, self.entry(index)) == want, "entry layout changed"
        self.head = self._find(h["head"])
        self.tail = self._find(h["tail"])
        assert self.get(U64, 0) == h["magic"]

    def _find(self, value):
        offs = [o for o in range(0, self.header_size, 8) if self.get(U64, o) == value]
        assert len(offs) == 1, "cannot locate header word %d: %r" % (value, offs)
        return offs[0]

    def get(self, st, off):
        return st.unpack_from(self.m, off)[0]

    def put(self, st, off, v):
        old = self.get(st, off)
        st.pack_into(self.m, off, v)
        return old

    def slot(self, i, field=0):
        return self.slots + i * self.slot_size + field

    def entry(self, index):
        return self.header_size + index * self.entry_size

    def close(self):
        self.m.close()
        self.f.close()


@pytest.fixture
def prepared(make_queue):
    """capacity 8, message_size 32, max_clients 8; 1000 messages through, then
    3 published and the first delivered to a live consumer: slot 0 DELIVERED,
    slots 1, 2 READY, head 1001, tail 1003 (distinctive values)."""
    q = make_queue(capacity=8, message_size=32, watchdog=None, max_clients=8)
    p, c = q.producer(), q.consumer()
    for _ in range(1000):
        p.put(b"warm", timeout=0)
        c.get(timeout=1).ack()
    p.put_many([b"m0", b"m1", b"m2"], timeout=0)
    held = c.get(timeout=1)
    h = q._seg.raw_header()
    assert (h["head"], h["tail"]) == (1001, 1003)
    raw = Raw(q)
    assert q.check() == []
    yield q, p, c, held, raw
    raw.close()


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
    assert sum("DELIVERED by dead client" in f and "redeliver" in f for f in found) == 2, found
    assert q.reclaim() == 2
    assert q.check() == []


@pytest.mark.timeout(60)
def test_check_names_dead_writer(procs, make_queue):
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    child, _ = W.stop_child_at(procs, q.name, "put_writing", "reserve")
    W.kill_and_reap(child)
    found = q.check()
    assert any("WRITING by dead client" in f and "discard" in f for f in found), found
    assert q.reclaim() == 1
    assert q.check() == []


@pytest.mark.timeout(60)
def test_check_and_reclaim_of_dead_sleeper(procs, make_queue):
    """A consumer killed while asleep in get() stays counted in the waiters
    word; check() says so through its dead entry, reclaim takes it out."""
    q = make_queue(capacity=8, message_size=32, watchdog=None)
    ready = FORK.Event()
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    child = procs(W.blocked_get_child, q.name, ready, child_conn, method="fork")
    assert ready.wait(20)
    deadline = time.monotonic() + 10
    while q._seg.raw_header()["consumers_waiting"] == 0:
        assert time.monotonic() < deadline, "the child never went to sleep"
        time.sleep(0.005)  # poll interval of a bounded condition loop
    W.kill_and_reap(child)
    found = q.check()
    assert any("process is gone" in f for f in found), found
    q.reclaim()
    assert q._seg.raw_header()["consumers_waiting"] == 0
    assert q.check() == []
    # and a wakeup still reaches the next sleeper
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
    "unknown-slot-state": (U64, lambda r: r.slot(1), lambda old: set_state(old, 7), "unknown state"),
    "wrong-lap": (U64, lambda r: r.slot(1), lambda old: old + (5 << 32), "on lap"),
    "owner-beyond-table": (U64, lambda r: r.slot(0), lambda old: set_owner(old, 4000), "beyond the table"),
    "owner-entry-free": (U64, lambda r: r.slot(0), lambda old: set_owner(old, 6), "whose entry is free"),
    "ready-with-owner": (U64, lambda r: r.slot(1), lambda old: set_owner(old, 1), "names owner"),
    "length": (U32, lambda r: r.slot(1, 16), lambda old: 33, "exceeds message_size"),
    "id": (U64, lambda r: r.slot(2, 8), lambda old: 99, "does not match its position"),
    # slot 0 (behind head) READY while the requeue hint is 0
    "requeue-hint": (U64, lambda r: r.slot(0), lambda old: set_owner(set_state(old, 2), NO_OWNER),
                     "requeue hint"),
    "head-ahead-of-tail": (U64, lambda r: r.head, lambda old: old + 6, "ahead of tail"),
    "tail-too-far": (U64, lambda r: r.tail, lambda old: old + 20, "more than capacity"),
    "magic": (U64, lambda r: 0, lambda old: 0x1234, "magic"),
    "client-state": (U64, lambda r: r.entry(0), lambda old: (old & ~0xFF) | 9, "unknown state"),
}


@pytest.mark.parametrize("kind", sorted(SCRIBBLES))
def test_check_reports_scribbled_words(prepared, kind):
    q, _p, _c, _held, raw = prepared
    st, off_fn, new_fn, words = SCRIBBLES[kind]
    off = off_fn(raw)
    old = raw.get(st, off)
    raw.put(st, off, new_fn(old))
    try:
        found = q.check()
        assert any(words in f for f in found), (kind, found)
    finally:
        raw.put(st, off, old)
    assert q.check() == []


def test_corrupt_length_is_refused_not_trusted(prepared):
    """I4: a length from shared memory is bounds-checked before use."""
    q, _p, c, held, raw = prepared
    raw.put(U32, raw.slot(1, 16), 1 << 20)
    with pytest.raises(ackring.CorruptedQueue):
        c.get(timeout=0)
    assert isinstance(ackring.CorruptedQueue("x"), ackring.IncompatibleQueue)
