"""Recovery from processes killed inside the critical windows.

Each hook test forks a child that sets a test hook (ackring.backend.set_test_hook)
and starts an operation: the child SIGSTOPs itself at the named point, the
parent SIGKILLs it exactly there, reaps it, and checks the repair: what
q.reclaim() returns, q.check() before and after, and that every confirmed
message is delivered exactly once (or redelivered, for deliveries the dead
process held) and that nothing stalls.

The parent's queue handles run with watchdog=None so that the repair happens
in the reclaim() call the test makes (and its count can be asserted), except in
the watchdog tests.
"""

import multiprocessing
import os
import signal
import struct
import time

import psutil
import pytest

import ackring
import _ar_workers as W
from ackring import _liveness

FORK = multiprocessing.get_context("fork")


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.005)  # poll interval of a bounded condition loop


stop_child_at = W.stop_child_at
kill_and_reap = W.kill_and_reap


def drain(c, timeout=0.2):
    """Everything deliverable now, acked: [(id, body, delivery_count)]."""
    return W.drain(c, timeout, lambda m: (m.id, m.body, m.delivery_count))


def quiet(q):
    s = q.stats()
    return s["depth"], s["in_flight"]


# ------------------------------------------------------------ producer side

@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["put", "put_many", "reserve"])
@pytest.mark.parametrize("point", ["put_claimed", "put_writing"])
def test_producer_killed_in_put_window_is_discarded(procs, make_queue, point, action):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    before = p.put(b"before", timeout=1)
    child, _ = stop_child_at(procs, q.name, point, action)
    # stopped, not dead: nothing is reclaimed from a live process
    assert q.reclaim() == 0
    kill_and_reap(child)
    found = q.check()
    assert any("dead client" in f or "process is gone" in f for f in found), found
    assert q.reclaim() == 1          # the one claimed slot (put_many stops at its first)
    assert q.check() == []
    assert q.reclaim() == 0          # idempotent
    after = p.put(b"after", timeout=1)
    c = q.consumer()
    got = drain(c)
    assert got == [(before, b"before", 1), (after, b"after", 1)]
    assert quiet(q) == (0, 0)
    s = q.stats()
    assert s["producers"] == 1 and s["discarded"] >= 1, s
    # the ring keeps flowing for more than a lap past the discarded position
    for i in range(20):
        mid = p.put(b"x%d" % i, timeout=1)
        m = c.get(timeout=1)
        assert (m.id, m.body, m.redelivered) == (mid, b"x%d" % i, False)
        m.ack()
    assert q.check() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["put_claimed", "put_writing"])
def test_consumer_blocked_behind_dead_writer_is_not_stuck(procs, make_queue, point):
    """No explicit reclaim: a consumer blocked behind the dead writer's slot
    gets the next message through its own reclaim pass (after ~100 ms)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    child, _ = stop_child_at(procs, q.name, point, "put")
    after = p.put(b"after", timeout=1)
    kill_and_reap(child)
    c = q.consumer()
    m = c.get(timeout=5)
    assert (m.id, m.body, m.delivery_count) == (after, b"after", 1)
    m.ack()
    assert quiet(q) == (0, 0)
    assert q.check() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["put_claimed", "put_writing"])
def test_ring_laps_past_discarded_slot_before_a_consumer_does(procs, make_queue, point):
    """The producer side may lap the discarded position before any consumer
    has stepped over it (the discarded slot is FREE, hence claimable by the
    next lap).  Consumers must still step over the old position and deliver
    every confirmed message.  The consumer runs in a child so that a wedged
    get cannot hang the test process."""
    cap = 4
    q = make_queue(capacity=cap, message_size=64, watchdog=None)
    p = q.producer()
    child, _ = stop_child_at(procs, q.name, point, "put")
    kill_and_reap(child)
    assert q.reclaim() == 1
    ids = [p.put(b"m%d" % i, timeout=0) for i in range(cap)]   # fills every slot, one lapped
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    procs(W.blocked_consumer_report, q.name, cap, 2.0, child_conn, method="fork")
    assert parent_conn.poll(8), ("consumer wedged: get() neither delivered nor timed out; "
                                  "check() says %r" % (q.check(),))
    msg = parent_conn.recv()
    assert msg == ("got", [(i, b"m%d" % k, 1) for k, i in enumerate(ids)]), msg
    assert quiet(q) == (0, 0)
    assert q.check() == []


@pytest.mark.timeout(60)
def test_aborted_reservation_lapped_before_consumer(procs, make_queue):
    """Same as above without any crash: an aborted reservation's slot is
    reused by the next lap before a consumer has passed it."""
    cap = 4
    q = make_queue(capacity=cap, message_size=64, watchdog=None)
    p = q.producer()
    p.reserve(8).abort()
    ids = [p.put(b"m%d" % i, timeout=0) for i in range(cap)]
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    procs(W.blocked_consumer_report, q.name, cap, 2.0, child_conn, method="fork")
    assert parent_conn.poll(8), ("consumer wedged: get() neither delivered nor timed out; "
                                  "check() says %r" % (q.check(),))
    assert parent_conn.recv() == ("got", [(i, b"m%d" % k, 1) for k, i in enumerate(ids)])


# ------------------------------------------------------------ consumer side

@pytest.mark.timeout(60)
@pytest.mark.parametrize("explicit", [True, False], ids=["reclaim", "blocked-get"])
def test_consumer_killed_after_get_claimed(procs, make_queue, explicit):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    a = p.put(b"A", timeout=1)
    b = p.put(b"B", timeout=1)
    child, _ = stop_child_at(procs, q.name, "get_claimed", "get")
    kill_and_reap(child)
    if explicit:
        assert any("redeliver" in f for f in q.check()), q.check()
        assert q.reclaim() == 1
        assert q.check() == []
    c = q.consumer()
    if explicit:
        # requeued messages go ahead of never-delivered ones
        assert drain(c) == [(a, b"A", 2), (b, b"B", 1)]
    else:
        # B is ready at once; A comes back through the reclaim pass the
        # blocked get runs after ~100 ms
        got = []
        for _ in range(2):
            m = c.get(timeout=5)
            got.append((m.id, m.body, m.delivery_count))
            m.ack()
        assert got == [(b, b"B", 1), (a, b"A", 2)]
        assert drain(c) == []
    assert quiet(q) == (0, 0)
    assert q.check() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["ack", "ack_many"])
def test_consumer_killed_before_settle_cas(procs, make_queue, action):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"m0", b"m1", b"m2"], timeout=1)
    child, held = stop_child_at(procs, q.name, "ack_before", action)
    assert held == [(i, 1) for i in ids]
    kill_and_reap(child)
    assert q.reclaim() == 3
    assert q.check() == []
    c = q.consumer()
    got = drain(c)
    assert got == [(i, b"m%d" % k, 2) for k, i in enumerate(ids)]
    assert quiet(q) == (0, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["ack", "ack_many"])
def test_consumer_killed_after_settle_cas_is_not_redelivered(procs, make_queue, action):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"m0", b"m1", b"m2"], timeout=1)
    child, _ = stop_child_at(procs, q.name, "ack_after", action)
    kill_and_reap(child)
    settled = 3 if action == "ack_many" else 1
    assert q.reclaim() == 3 - settled
    assert q.check() == []
    c = q.consumer()
    got = drain(c)
    assert got == [(i, b"m%d" % k, 2) for k, i in enumerate(ids)][settled:]
    assert quiet(q) == (0, 0)
    assert q.reclaim() == 0


@pytest.mark.timeout(60)
def test_consumer_killed_in_nack_after_hint(procs, make_queue):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"m0", b"m1", b"m2"], timeout=1)
    child, _ = stop_child_at(procs, q.name, "nack_hint", "nack")
    kill_and_reap(child)
    assert q.reclaim() == 3
    assert q.check() == []
    c = q.consumer()
    got = drain(c)
    assert sorted(got) == [(i, b"m%d" % k, 2) for k, i in enumerate(ids)]
    assert quiet(q) == (0, 0)
    assert q.check() == []


@pytest.mark.timeout(60)
def test_requeue_hint_returns_to_zero_after_nack_hint_kill(procs, make_queue):
    """The requeue hint is an upper bound; one raised by a process killed
    before its CAS must not stay raised forever (while it is non-zero every
    get scans the whole ring for requeued slots)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    p.put(b"m0", timeout=1)
    child, _ = stop_child_at(procs, q.name, "nack_hint", "nack")
    kill_and_reap(child)
    q.reclaim()
    c = q.consumer()
    assert [x[1] for x in drain(c)] == [b"m0"]
    for i in range(20):                      # more traffic, more than a lap
        p.put(b"x", timeout=1)
        c.get(timeout=1).ack()
    assert q._seg.raw_header()["requeued"] == 0


# ------------------------------------------------------------ process table

@pytest.mark.timeout(60)
def test_killed_while_claiming_table_entry(procs, make_queue):
    max_clients = 3
    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=max_clients)
    child, _ = stop_child_at(procs, q.name, "register_claimed", "register")
    rows = [r for r in q._seg.clients() if r[3] == child.pid]
    assert len(rows) == 1 and rows[0][1] == 1, q._seg.clients()   # CLAIMING, under the child's pid
    assert q.stats()["producers"] == 0
    kill_and_reap(child)
    assert any("claiming" in f for f in q.check()), q.check()
    assert q.reclaim() == 0
    assert [r for r in q._seg.clients() if r[3] == child.pid] == []
    assert q.check() == []
    name = q.name
    q.close()                       # gives back the observer entry reclaim() took
    q2 = ackring.open(name, watchdog=None)
    try:
        ps = [q2.producer() for _ in range(max_clients)]
        assert q2.stats()["producers"] == max_clients
        with pytest.raises(ackring.TooManyClients):
            q2.consumer()
        for x in ps:
            x.close()
        assert q2.stats()["producers"] == 0
    finally:
        q2.close()


@pytest.mark.timeout(60)
def test_killed_producer_entry_is_freed(procs, make_queue):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    release = FORK.Event()
    child = procs(W.register_and_hang, q.name, "producer", child_conn, release, method="fork")
    assert parent_conn.poll(20)
    tag, pid, closed = parent_conn.recv()
    assert (tag, closed) == ("registered", False)
    assert q.stats()["producers"] == 1
    kill_and_reap(child)
    assert q.reclaim() == 0
    assert q.stats()["producers"] == 0
    assert [r for r in q._seg.clients() if r[3] == pid] == []
    assert q.check() == []


@pytest.mark.timeout(60)
def test_table_full_of_dead_processes_is_recovered(procs, make_queue):
    """The process table full, the dead holding entries: reclaim must still
    free them (it cannot take an observer entry of its own first)."""
    max_clients = 3
    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=max_clients)
    p = q.producer()
    ids = p.put_many([b"f0", b"f1"], timeout=0)
    holders = [_hold(procs, q, 1)[0] for _ in range(2)]
    assert q.stats()["producers"] + q.stats()["consumers"] == max_clients
    with pytest.raises(ackring.TooManyClients):
        q.consumer()
    for ch in holders:
        kill_and_reap(ch)
    assert q.reclaim() == 2
    assert q.check() == []
    c = q.consumer()
    assert sorted(drain(c)) == [(ids[0], b"f0", 2), (ids[1], b"f1", 2)]
    assert q.stats()["consumers"] == 1


# ------------------------------------------------------------ reclaim lock

def _locks(q):
    """The reclaim-lock words of the queue's segment and, if it has one, of
    its dead-letter segment (a reclaim pass takes both in turn)."""
    segs = [q._seg] + [d for d in [getattr(q._seg, "dlq", None)] if d is not None]
    return [sg.raw_header()["reclaim_lock"] for sg in segs]


@pytest.mark.timeout(60)
def test_reclaimer_killed_holding_the_reclaim_lock(procs, make_queue):
    """A reclaimer killed while holding the reclaim lock must not block later
    reclaims: another process breaks the lock and finishes the repair."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"h0", b"h1"], timeout=1)
    # a consumer dies holding both messages
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    release = FORK.Event()
    holder = procs(W.hold_and_hang, q.name, 2, child_conn, release, method="fork")
    assert parent_conn.poll(20)
    assert parent_conn.recv()[:2] == ("held", ids)
    kill_and_reap(holder)
    # the reclaimer (ackring.open's reclaim pass) stops holding the lock
    reclaimer, _ = stop_child_at(procs, q.name, "reclaim_locked", "open_reclaim")
    assert reclaimer.pid in [lock >> 32 for lock in _locks(q)]
    kill_and_reap(reclaimer)
    assert q.reclaim() == 2
    assert _locks(q) == [0] * len(_locks(q))
    assert q.check() == []
    c = q.consumer()
    assert drain(c) == [(ids[0], b"h0", 2), (ids[1], b"h1", 2)]
    assert quiet(q) == (0, 0)


@pytest.mark.timeout(60)
def test_blocked_consumer_recovers_after_reclaimer_killed_with_lock(procs, make_queue):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    mid = p.put(b"h", timeout=1)
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    release = FORK.Event()
    holder = procs(W.hold_and_hang, q.name, 1, child_conn, release, method="fork")
    assert parent_conn.poll(20) and parent_conn.recv()[0] == "held"
    kill_and_reap(holder)
    reclaimer, _ = stop_child_at(procs, q.name, "reclaim_locked", "open_reclaim")
    kill_and_reap(reclaimer)
    c = q.consumer()
    try:
        m = c.get(timeout=5)
    except ackring.Empty:
        raise AssertionError("message held by a dead consumer never came back; locks %r, check %r"
                             % (_locks(q), q.check()))
    assert (m.id, m.delivery_count) == (mid, 2)
    m.ack()


# ------------------------------------------------------------ watchdog

def _hold(procs, q, n):
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    release = FORK.Event()
    holder = procs(W.hold_and_hang, q.name, n, child_conn, release, method="fork")
    assert parent_conn.poll(20)
    tag, held, pid = parent_conn.recv()
    assert tag == "held" and len(held) == n
    return holder, held


def _poll_get(c, n, timeout):
    """Non-blocking gets (no blocked-call reclaim) until n messages or the deadline."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            m = c.get(timeout=0)
        except ackring.Empty:
            time.sleep(0.002)  # poll interval of a bounded condition loop
            continue
        got.append((m.id, m.redelivered, m.delivery_count))
        m.ack()
    return got


@pytest.mark.timeout(60)
def test_watchdog_redelivers_what_a_killed_consumer_held(procs, make_queue):
    q = make_queue(capacity=16, message_size=64)          # default watchdog, 0.1 s
    p = q.producer()
    ids = p.put_many([b"w%d" % i for i in range(5)], timeout=1)
    c = q.consumer()
    assert q.watchdog is not None and q.watchdog.is_alive()
    assert q.watchdog.interval == ackring.DEFAULT_WATCHDOG_INTERVAL == 0.1
    holder, held = _hold(procs, q, 3)
    assert held == ids[:3]
    kill_and_reap(holder)
    got = _poll_get(c, 5, 5.0)      # bounded: 5 s, far above the 0.1 s interval
    assert sorted(got) == sorted([(i, True, 2) for i in ids[:3]] + [(i, False, 1) for i in ids[3:]])
    assert q.watchdog.passes > 0
    assert q.watchdog.repaired >= 3
    assert q.watchdog.error is None
    assert quiet(q) == (0, 0)
    assert q.check() == []


@pytest.mark.timeout(60)
def test_no_watchdog_means_no_background_reclaim(procs, make_queue):
    q = make_queue(capacity=16, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"w%d" % i for i in range(4)], timeout=1)
    c = q.consumer()
    assert q.watchdog is None
    holder, held = _hold(procs, q, 2)
    kill_and_reap(holder)
    # non-blocking gets never reclaim: only the two undelivered ones come
    got = _poll_get(c, 4, 0.5)
    assert got == [(ids[2], False, 1), (ids[3], False, 1)]
    assert q.stats()["in_flight"] == 2
    assert q.reclaim() == 2
    assert sorted(_poll_get(c, 2, 2.0)) == [(ids[0], True, 2), (ids[1], True, 2)]


@pytest.mark.timeout(60)
def test_watchdog_none_via_open_and_pickling(make_queue):
    q = make_queue(watchdog=None)
    q2 = ackring.open(q.name, watchdog=None)
    try:
        q2.consumer()
        assert q2.watchdog is None
    finally:
        q2.close()
    q3 = ackring.open(q.name)
    try:
        q3.producer()
        assert q3.watchdog is not None and q3.watchdog.is_alive()
        q3.close()
        _wait_for(lambda: not q3.watchdog.is_alive(), 5, "the watchdog to end with its queue")
    finally:
        q3.close()
    with pytest.raises(ValueError):
        ackring.open(q.name, watchdog=0)


@pytest.mark.timeout(60)
def test_open_recovers_a_queue_whose_processes_all_died(procs, make_queue):
    q = make_queue(capacity=16, message_size=64, watchdog=None)
    name = q.name
    p = q.producer()
    ids = p.put_many([b"o%d" % i for i in range(6)], timeout=1)
    p.close()
    q.close()
    holders = []
    for n in (2, 1):
        qq = ackring.open(name, watchdog=None)
        holder, held = _hold(procs, qq, n)
        qq.close()
        holders.append(holder)
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    prod = procs(W.register_and_hang, name, "producer", child_conn, FORK.Event(), method="fork")
    assert parent_conn.poll(20) and parent_conn.recv()[0] == "registered"
    for ch in holders + [prod]:
        kill_and_reap(ch)
    q2 = ackring.open(name, watchdog=None)      # runs a reclaim pass
    try:
        s = q2.stats()
        assert (s["depth"], s["in_flight"], s["producers"], s["consumers"]) == (6, 0, 0, 0), s
        assert q2.check() == []
        c = q2.consumer()
        got = drain(c)
        assert sorted(got) == sorted((i, b"o%d" % k, 2 if k < 3 else 1) for k, i in enumerate(ids))
    finally:
        q2.close()


# ------------------------------------------------------------ pid reuse

def _bits(t):
    return struct.unpack("<Q", struct.pack("<d", t))[0]


def _dead_pids(q):
    """pids of the entries dead_entries() returns (its rows start with the index)."""
    pid_of = {r[0]: r[3] for r in q._seg.clients()}
    return [pid_of[d[0]] for d in _liveness.dead_entries(q._seg.clients())]


def _row(shape, index, state, role, pid, start):
    """A crafted Segment.clients() row (index, state, role, pid, start_time, ...)
    of the same length as the library's rows; extra fields (the entry word, a
    "mine" flag) are filled in as the library would for another process."""
    row = (index, state, role, pid, start)
    if len(shape) >= 6:
        row += ((pid << 32) | (role << 8) | state,)
    if len(shape) >= 7:
        row += (False,)
    return row + tuple(shape[len(row):])


def _identity_in_table(procs, q):
    """(child process, pid, start) of a live child as the library records it
    in the process table (whatever the start-time representation is)."""
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    child = procs(W.register_and_hang, q.name, "producer", child_conn, FORK.Event(), method="fork")
    assert parent_conn.poll(20)
    _tag, pid, _closed = parent_conn.recv()
    rows = [r for r in q._seg.clients() if r[3] == pid and r[2] == 1]
    assert len(rows) == 1, q._seg.clients()
    return child, pid, rows[0][4], rows[0]


def test_is_alive_compares_start_time():
    pid, start = _liveness.self_identity()
    assert pid == os.getpid() and start != 0
    assert _liveness.is_alive(pid, start) is True
    assert _liveness.is_alive(pid, start + 1000) is False      # same pid, another process start
    assert _liveness.is_alive(pid, _bits(1.0)) is False
    assert _liveness.is_alive(pid, 0) is True                   # CLAIMING: no start time yet


def test_is_alive_dead_pid():
    child = FORK.Process(target=os._exit, args=(0,), daemon=True)
    child.start()
    pid = child.pid
    # a zombie (exited, not reaped) is dead
    _wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10, "the child to exit")
    assert _liveness.is_alive(pid, 0) is False
    child.join(10)
    assert _liveness.is_alive(pid, 0) is False


@pytest.mark.timeout(60)
def test_dead_entries_treats_reused_pid_as_dead(procs, make_queue):
    """Crafted process-table rows (index, state, role, pid, start_time) around
    a live child's real identity: the same pid with another start time is a
    reused pid, hence dead."""
    q = make_queue(watchdog=None)
    child, pid, start, shape = _identity_in_table(procs, q)
    assert _liveness.is_alive(pid, start) is True
    assert _liveness.is_alive(pid, start + 1000) is False
    rows = [
        _row(shape, 0, 2, 1, pid, start),            # live, right start time
        _row(shape, 1, 2, 2, pid, start + 1000),     # live pid, other start time: reused pid
        _row(shape, 2, 1, 1, pid, 12345),            # CLAIMING: start time not written yet, live pid
        _row(shape, 3, 3, 2, pid, start),            # DEAD: always returned
        _row(shape, 4, 2, 1, os.getpid(), 1),        # our own pid: always live
    ]
    dead = _liveness.dead_entries(rows)
    assert [(d[0], d[-1]) for d in dead] == [(1, start + 1000), (3, start)]
    assert _liveness.dead_entries(q._seg.clients()) == []
    kill_and_reap(child)
    assert _dead_pids(q) == [pid]


@pytest.mark.timeout(60)
def test_entry_of_reused_pid_is_reclaimed(procs, make_queue):
    """Full flow: a live process whose pid is in an entry with another start
    time (what a reused pid looks like) is judged dead; what the entry held is
    redelivered, and the process's own later ack is stale."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    mid = p.put(b"reused", timeout=1)
    parent_conn, child_conn = FORK.Pipe(duplex=True)
    child = procs(W.crafted_identity_consumer, q.name, _bits(1234.5), child_conn, method="fork")
    assert parent_conn.poll(20)
    msg = parent_conn.recv()
    assert msg == ("held", child.pid, mid), msg
    assert _dead_pids(q) == [child.pid]
    assert child.is_alive()
    assert q.reclaim() == 1
    c = q.consumer()
    m = c.get(timeout=1)
    assert (m.id, m.body, m.delivery_count) == (mid, b"reused", 2)
    parent_conn.send("ack")
    assert parent_conn.poll(20)
    assert parent_conn.recv() == ("stale",)
    m.ack()
    child.join(10)
    assert child.exitcode == 0
    assert quiet(q) == (0, 0)
    assert q.check() == []


@pytest.mark.timeout(60)
def test_open_recovers_when_every_table_entry_is_dead(procs, make_queue):
    """max_clients processes opened the queue, took deliveries and died: a
    fresh ackring.open() must still get in and recover the queue."""
    max_clients = 2
    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=max_clients)
    name = q.name
    p = q.producer()
    ids = p.put_many([b"e0", b"e1"], timeout=0)
    p.close()
    q.close()                                  # no live handle left in this process
    holders = []
    for _ in range(max_clients):
        parent_conn, child_conn = FORK.Pipe(duplex=False)
        holders.append(procs(W.hold_and_hang, name, 1, child_conn, FORK.Event(), method="fork"))
        assert parent_conn.poll(20)
        msg = parent_conn.recv()
        assert msg[0] == "held", msg
    for ch in holders:
        kill_and_reap(ch)
    q2 = ackring.open(name, watchdog=None)
    try:
        s = q2.stats()
        assert (s["depth"], s["in_flight"], s["consumers"]) == (2, 0, 0), s
        assert q2.check() == []
        c = q2.consumer()
        assert sorted(drain(c)) == [(ids[0], b"e0", 2), (ids[1], b"e1", 2)]
    finally:
        q2.close()


def test_dropped_clients_give_back_their_entries(make_queue):
    """A producer or consumer garbage-collected without close() must not keep
    its process-table entry (nor its deliveries) for the life of the process."""
    import gc

    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=4)
    c = q.consumer()
    for i in range(10):                      # more than max_clients throw-away producers
        q.producer().put(b"t%d" % i, timeout=1)
        c.get(timeout=1).ack()
    gc.collect()
    assert q.stats()["producers"] == 0
    q.producer().put(b"held", timeout=1)
    c2 = q.consumer()
    m = c2.get(timeout=1)
    del c2, m
    gc.collect()
    s = q.stats()
    assert (s["consumers"], s["in_flight"], s["depth"]) == (1, 0, 1), s
