"""Recovery from processes killed inside every critical window of core v2.

Each hook test forks a child that sets a test hook (ackring.backend.set_test_hook)
and starts an operation: the child SIGSTOPs itself at the named point, the
parent SIGKILLs it exactly there, reaps it, and checks the repair: what
q.reclaim() reports (q.last_recovery), q.check() before and after, and that
every confirmed message is delivered (again, for deliveries the dead process
held), that no index of the three rings is lost (the full capacity can be
used again) and that nothing stalls.

The windows (docs/design.md 6.3): alloc_popped (a free index popped, its slot
not claimed), put_writing (a slot WRITING), publish_ready (READY, not yet on
the ready ring), get_popped (a ready index popped, its slot not taken),
get_taken (DELIVERED, its take marker still set), ack_freed (FREE, not yet on
the free ring), nack_ready (READY again, not yet on the requeue ring),
dlq_dying / dlq_copied (dead-lettering), register_locked (an entry's lock
held, the entry not yet ACTIVE), reclaim_locked (a reclaimer holding the
locks), lease_taken and extend_read (leases), run_pushed / run_taken (in a
batch's ring run, the hint not yet moved over it).

The parent's queue handles run with watchdog=None so that the repair happens
in the reclaim() call the test makes, except in the watchdog tests.
"""

import ctypes
import mmap
import multiprocessing
import os
import signal
import struct
import threading
import time

import psutil
import pytest

import ackring
import _ar_workers as W

FORK = multiprocessing.get_context("fork")

stop_child_at = W.stop_child_at
kill_and_reap = W.kill_and_reap


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.005)  # poll interval of a bounded condition loop


def _wait_past(t):
    """Wait until CLOCK_MONOTONIC passes t (the condition is the time itself)."""
    while time.monotonic() < t:
        time.sleep(max(0.0, t - time.monotonic()))


def drain(c, timeout=0.2):
    """Everything deliverable now, acked: [(id, body, delivery_count)]."""
    return W.drain(c, timeout, lambda m: (m.id, m.body, m.delivery_count))


def quiet(q):
    s = q.stats()
    return s["depth"], s["in_flight"]


def full_capacity_still_usable(q, p, c):
    """No ring index was lost: capacity puts go through at once, and come out."""
    ids = [p.put(b"cap%d" % i, timeout=0) for i in range(q.capacity)]
    with pytest.raises(ackring.Full):
        p.put(b"one too many", timeout=0)
    assert [x[0] for x in drain(c)] == ids
    assert q.check() == []


# ------------------------------------------------------------ producer side

@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["put", "put_many", "reserve"])
@pytest.mark.parametrize("point, what", [("alloc_popped", "repushed"), ("put_writing", "discarded")])
def test_producer_killed_before_publish_loses_nothing_confirmed(procs, make_queue, point, what, action):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    before = p.put(b"before", timeout=1)
    child, _ = stop_child_at(procs, q.name, point, action)
    # stopped, not dead: nothing is reclaimed from a live process
    assert q.reclaim() == 0
    kill_and_reap(child)
    found = q.check()
    assert any("process is gone" in f for f in found), found
    # put_many writes its whole chunk (both victims, WRITING) before it
    # publishes the first: both are discarded
    n = 2 if (action, point) == ("put_many", "put_writing") else 1
    assert q.reclaim() == n
    assert q.last_recovery["entries"] == 1 and q.last_recovery[what] == n, q.last_recovery
    assert q.check() == []
    assert q.reclaim() == 0          # idempotent
    after = p.put(b"after", timeout=1)
    c = q.consumer()
    assert drain(c) == [(before, b"before", 1), (after, b"after", 1)]
    assert quiet(q) == (0, 0)
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["put", "reserve"])
def test_producer_killed_between_ready_and_push_is_delivered(procs, make_queue, action):
    """READY but not yet on the ready ring: the reclaimer finishes the push
    (the message was written whole; its put had not returned, so this is the
    at-least-once side of an unconfirmed message, never a torn one)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    before = p.put(b"before", timeout=1)
    child, _ = stop_child_at(procs, q.name, "publish_ready", action)
    c = q.consumer()
    assert drain(c, 0.05) == [(before, b"before", 1)]   # the stopped one is invisible, blocks nothing
    kill_and_reap(child)
    assert any("not in the ready ring" in f for f in q.check()), q.check()
    assert q.reclaim() == 1 and q.last_recovery["repushed"] == 1, q.last_recovery
    assert q.check() == []
    assert [(b, n) for _, b, n in drain(c)] == [(b"victim", 1)]
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
def test_stopped_producer_does_not_stall_consumers(procs, make_queue):
    """A SIGSTOPped producer inside its write holds one slot and nothing else:
    other producers' messages keep flowing (the security issue's chaos stall)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    child, _ = stop_child_at(procs, q.name, "put_writing", "put")
    p, c = q.producer(), q.consumer()
    for i in range(50):                       # many laps of the 8 slots, one of them held
        mid = p.put(b"m%d" % i, timeout=1)
        m = c.get(timeout=1)
        assert (m.id, m.body) == (mid, b"m%d" % i)
        m.ack()
    assert q.stats()["writing"] == 1
    os.kill(child.pid, signal.SIGCONT)        # it finishes its put: delivered too
    m = c.get(timeout=5)
    assert m.body == b"victim"
    m.ack()


# ------------------------------------------------------------ consumer side

@pytest.mark.timeout(60)
@pytest.mark.parametrize("explicit", [True, False], ids=["reclaim", "blocked-get"])
def test_consumer_killed_after_popping_the_index(procs, make_queue, explicit):
    """The ready index popped, the slot still READY: the reclaimer pushes the
    index back; it was never delivered, so delivery_count stays 1."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    a = p.put(b"A", timeout=1)
    b = p.put(b"B", timeout=1)
    child, _ = stop_child_at(procs, q.name, "get_popped", "get")
    kill_and_reap(child)
    c = q.consumer()
    if explicit:
        assert q.reclaim() == 1 and q.last_recovery["repushed"] == 1
        assert q.check() == []
        assert drain(c) == [(b, b"B", 1), (a, b"A", 1)]
    else:
        # B at once; A through the reclaim pass a blocked get runs after ~100 ms
        got = []
        for _ in range(2):
            m = c.get(timeout=5)
            got.append((m.id, m.body, m.delivery_count))
            m.ack()
        assert got == [(b, b"B", 1), (a, b"A", 1)]
    assert quiet(q) == (0, 0)
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
def test_consumer_killed_after_taking_is_redelivered(procs, make_queue):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    a = p.put(b"A", timeout=1)
    b = p.put(b"B", timeout=1)
    child, _ = stop_child_at(procs, q.name, "get_taken", "get")
    kill_and_reap(child)
    assert any("redeliver" in f for f in q.check()), q.check()
    assert q.reclaim() == 1 and q.last_recovery["requeued"] == 1
    assert q.check() == []
    c = q.consumer()
    # requeued messages go ahead of never-delivered ones
    assert drain(c) == [(a, b"A", 2), (b, b"B", 1)]
    assert q.stats()["recovered"] == 1
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["ack", "ack_many"])
def test_consumer_killed_between_ack_and_free_push(procs, make_queue, action):
    """The ack's CAS done, the index not yet on the free ring: the message
    stays acked (never redelivered), and the index goes back to the free ring."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"m0", b"m1", b"m2"], timeout=1)
    child, held = stop_child_at(procs, q.name, "ack_freed", action)
    assert held == [(i, 1) for i in ids]
    kill_and_reap(child)
    assert q.reclaim() == 3                       # one index repushed, two deliveries requeued
    assert (q.last_recovery["repushed"], q.last_recovery["requeued"]) == (1, 2), q.last_recovery
    assert q.check() == []
    c = q.consumer()
    assert drain(c) == [(i, b"m%d" % k, 2) for k, i in enumerate(ids)][1:]
    assert p.wait_acked(ids[0], timeout=1).outcome == "acked"
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
def test_consumer_killed_between_nack_and_requeue_push(procs, make_queue):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"m0", b"m1", b"m2"], timeout=1)
    child, _ = stop_child_at(procs, q.name, "nack_ready", "nack")
    kill_and_reap(child)
    assert q.reclaim() == 3
    assert (q.last_recovery["repushed"], q.last_recovery["requeued"]) == (1, 2), q.last_recovery
    assert q.check() == []
    c = q.consumer()
    assert sorted(drain(c)) == [(i, b"m%d" % k, 2) for k, i in enumerate(ids)]
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point, copies", [("dlq_dying", 0), ("dlq_copied", 1)])
def test_consumer_killed_while_dead_lettering(procs, make_queue, point, copies):
    """Killed between the DYING fence and the DLQ copy: redelivered, no dead
    letter.  Killed after the copy: redelivered, and the dead letter stays
    (the documented duplicate of at-least-once dead-lettering)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"d0", b"d1", b"d2"], timeout=1)
    child, _ = stop_child_at(procs, q.name, point, "reject")
    kill_and_reap(child)
    assert q.reclaim() >= 3
    assert q.check() == [] and q.dead_letters.check() == []
    c = q.consumer()
    assert sorted(drain(c)) == [(i, b"d%d" % k, 2) for k, i in enumerate(ids)]
    with q.dead_letters.consumer() as dc:
        dead = W.drain(dc, 0.1, lambda m: (m.body, m.death["id"]))
    assert dead == [(b"d0", ids[0])] * copies


# ------------------------------------------------------------ batch ring runs
#
# put_many, get_many and settle_many push (take) runs of ring cells and move
# the ring's tail (head) hint once at the end (docs/design.md 3.5): a process
# that dies in the middle leaves the hint behind cells it already did.

FREE, READY, REQUEUE = 0, 1, 2


def raw_hints(q):
    h = q._seg.raw_header()
    return h["head"], h["tail"]


def rings_account_for_every_slot(q):
    """Hints exact again: the three rings' counts plus the slots out of them
    (in flight, being written) are the capacity."""
    s = q.stats()
    assert s["free_ring"] + s["ready_ring"] + s["requeue_ring"] + s["in_flight"] + s["writing"] == q.capacity, s


@pytest.mark.timeout(60)
def test_producer_killed_in_a_put_many_run(procs, make_queue):
    """Killed after its second ready push of a put_many: both messages are on
    the ring (delivered: the put never returned, at-least-once), the ready
    ring's tail still points at the first; the other three were written but
    not published (WRITING: discarded); nothing stalls, reclaim moves the
    hints."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    before = p.put(b"before", timeout=1)
    child, _ = stop_child_at(procs, q.name, "run_pushed", "put_many5")
    kill_and_reap(child)
    head, tail = raw_hints(q)
    assert (head[READY], tail[READY]) == (0, 1)      # two cells pushed past the tail hint
    # five free takes: a run of run_max = 4 (capacity 8), its hint moved to
    # 5, then a new run whose one take is past the hint
    assert (head[FREE], tail[FREE], q._seg.raw_header()["hint_lag"]) == (5, 8, 4)
    found = q.check()
    assert any("process is gone" in f for f in found), found
    assert not any("ring" in f and "cell" in f for f in found), found   # a lagging hint is no finding
    assert q.reclaim() == 3, q.last_recovery
    assert (q.last_recovery["entries"], q.last_recovery["discarded"]) == (1, 3), q.last_recovery
    head, tail = raw_hints(q)
    assert (head[READY], tail[READY], head[FREE], tail[FREE]) == (0, 3, 6, 11)
    assert q.check() == []
    rings_account_for_every_slot(q)
    c = q.consumer()
    assert [b for _, b, _ in drain(c)] == [b"before", b"victim-1", b"victim-2"]
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
def test_stopped_producer_in_a_run_does_not_stall_others(procs, make_queue):
    """Stopped (alive) in its run: other producers push past it (they help
    the tail hint over its cells), and when it resumes its put_many ends."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    child, _, conn = stop_child_at(procs, q.name, "run_pushed", "put_many5", with_conn=True)
    p, c = q.producer(), q.consumer()
    bodies = []
    for i in range(40):                        # five laps of the free ring past the stopped run
        p.put(b"m%d" % i, timeout=1)
        ms = c.get_many(8, timeout=1)
        bodies += [m.body for m in ms]
        c.ack_many(ms)
    assert q.check() == []                     # the stopped one is alive; its hint lag is no finding
    # the hook stays set: the child stops again at each later push of its run
    deadline = time.monotonic() + 20
    while not conn.poll(0.01):
        assert time.monotonic() < deadline, "the stopped put_many never returned"
        if psutil.Process(child.pid).status() == psutil.STATUS_STOPPED:
            os.kill(child.pid, signal.SIGCONT)
    assert conn.recv()[0] == "returned"
    child.join(10)
    bodies += [b for _, b, _ in drain(c)]
    assert sorted(bodies) == sorted([b"m%d" % i for i in range(40)] + [b"victim-%d" % i for i in range(1, 6)])
    assert q.check() == []
    rings_account_for_every_slot(q)


@pytest.mark.timeout(60)
def test_consumer_killed_in_a_get_many_run(procs, make_queue):
    """Killed at the third take of a get_many (the second of its run), the
    popped slot still READY: the two it took are redelivered, the popped one
    goes back to the ready ring, and the head hint catches up."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"A", b"B", b"C", b"D", b"E"], timeout=1)
    child, _ = stop_child_at(procs, q.name, "run_taken", "get_many")
    kill_and_reap(child)
    head, tail = raw_hints(q)
    assert (head[READY], tail[READY]) == (1, 5)      # the run's two pops are past the head hint
    assert q.reclaim() == 3, q.last_recovery
    assert (q.last_recovery["requeued"], q.last_recovery["repushed"]) == (2, 1), q.last_recovery
    head, tail = raw_hints(q)
    assert (head[READY], tail[READY]) == (3, 6)
    assert q.check() == []
    rings_account_for_every_slot(q)
    c = q.consumer()
    got = drain(c)
    assert sorted(got) == sorted([(ids[0], b"A", 2), (ids[1], b"B", 2), (ids[2], b"C", 1),
                                  (ids[3], b"D", 1), (ids[4], b"E", 1)]), got
    assert [b for _, b, _ in got[:2]] == [b"A", b"B"]   # redelivered ones first
    assert q.stats()["recovered"] == 2
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
def test_consumer_killed_in_an_ack_many_run(procs, make_queue):
    """Killed after the second free push of an ack_many: those two stay acked
    (never redelivered), the third is redelivered, the free ring's tail hint
    catches up and no index is lost."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"m0", b"m1", b"m2"], timeout=1)
    child, _ = stop_child_at(procs, q.name, "run_pushed", "ack_many")
    kill_and_reap(child)
    assert raw_hints(q)[1][FREE] == 8                 # two frees pushed past the tail hint
    assert q.reclaim() == 1 and q.last_recovery["requeued"] == 1, q.last_recovery
    assert raw_hints(q)[1][FREE] == 10
    assert q.check() == []
    rings_account_for_every_slot(q)
    c = q.consumer()
    assert drain(c) == [(ids[2], b"m2", 2)]
    assert [p.wait_acked(i, timeout=1).outcome for i in ids[:2]] == ["acked", "acked"]
    full_capacity_still_usable(q, p, c)


# ------------------------------------------------------------ process table

@pytest.mark.timeout(60)
def test_killed_while_registering(procs, make_queue):
    max_clients = 3
    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=max_clients)
    child, _ = stop_child_at(procs, q.name, "register_locked", "register")
    assert q.stats()["producers"] == 0
    kill_and_reap(child)
    assert q.reclaim() == 0
    assert q.check() == []
    name = q.name
    q.close()
    q2 = ackring.open(name, watchdog=None)
    try:
        ps = [q2.producer() for _ in range(max_clients)]       # the entry it locked is usable
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
    child = procs(W.register_and_hang, q.name, "producer", child_conn, FORK.Event(), method="fork")
    assert parent_conn.poll(20)
    tag, pid, closed = parent_conn.recv()
    assert (tag, closed) == ("registered", False)
    assert q.stats()["producers"] == 1
    kill_and_reap(child)
    assert q.reclaim() == 0 and q.last_recovery["entries"] == 1
    assert q.stats()["producers"] == 0 and q.stats()["reclaimed_entries"] == 1
    assert [e for e in q._seg.entries() if e["pid"] == pid] == []
    assert q.check() == []


@pytest.mark.timeout(60)
def test_table_full_of_dead_processes_is_recovered(procs, make_queue):
    """The table full, the dead holding entries: a registration reclaims them
    first instead of failing (and the pass needs no entry of its own)."""
    max_clients = 3
    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=max_clients)
    p = q.producer()
    ids = p.put_many([b"f0", b"f1"], timeout=0)
    # Deterministic (issue 13 item 10): no holder runs a watchdog, and this
    # handle has none, so the one reclaim pass is the registration's below.
    # (A holder's watchdog could reclaim the first holder before the second
    # was killed, or be killed in the middle of that pass: then the counts
    # depended on the timing.)
    holders = [_hold(procs, q, 1, watchdog=None)[0] for _ in range(2)]
    st = q.stats()
    assert st["producers"] + st["consumers"] == max_clients and st["reclaimed_entries"] == 0
    for ch in holders:
        kill_and_reap(ch)
    assert sum(not e["alive"] for e in q._seg.entries()) == 2
    c = q.consumer()                         # would be TooManyClients without the reclaim
    assert q.stats()["reclaimed_entries"] == 2   # both dead entries, by that one pass
    assert sorted(drain(c)) == [(ids[0], b"f0", 2), (ids[1], b"f1", 2)]
    assert q.stats()["consumers"] == 1 and q.stats()["recovered"] == 2
    assert q.reclaim() == 0 and q.stats()["reclaimed_entries"] == 2   # nothing left to repair
    assert q.check() == []


def _entry_word_offset(index):
    return 1536 + 256 * index            # layout v2: header 1536 bytes, entries of 256 (design.md 2)


@pytest.mark.timeout(60)
def test_liveness_ignores_pids(procs, make_queue):
    """A dead entry is reclaimed even if the pid it names now belongs to a
    live process (pid reuse), and a live one is kept whatever pid it names:
    liveness is the entry's OFD lock, which dies with its owner."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    mid = p.put(b"reused", timeout=1)
    holder, held = _hold(procs, q, 1)
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    live = procs(W.register_and_hang, q.name, "producer", child_conn, FORK.Event(), method="fork")
    assert parent_conn.poll(20) and parent_conn.recv()[0] == "registered"
    holder_entry = [e for e in q._seg.entries() if e["pid"] == holder.pid][0]["index"]
    kill_and_reap(holder)
    # write a live process's pid into the dead entry (what pid reuse looks like)
    with open(q.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        off = _entry_word_offset(holder_entry)
        word = struct.unpack_from("<Q", mm, off)[0]
        struct.pack_into("<Q", mm, off, (word & 0xFFFFFFFF) | (live.pid << 32))
    assert q.reclaim() == 1 and q.last_recovery["requeued"] == 1
    m = q.consumer().get(timeout=1)
    assert (m.id, m.delivery_count) == (mid, 2)
    m.ack()
    assert q.stats()["producers"] == 2          # the live one (and ours) untouched


@pytest.mark.timeout(60)
def test_process_whose_main_thread_exited_stays_alive(procs, make_queue):
    """A process whose main thread has exited while another thread runs shows
    as a zombie to psutil; it is alive, and its deliveries stay its own."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    mid = q.producer().put(b"mine", timeout=1)
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    child = procs(_main_thread_exits, q.name, child_conn, method="fork")
    assert parent_conn.poll(20) and parent_conn.recv() == ("held", mid)
    _wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 10,
              "the main thread to exit")
    assert q.reclaim() == 0
    assert q.stats()["in_flight"] == 1 and q.check() == []
    kill_and_reap(child)
    assert q.reclaim() == 1
    m = q.consumer().get(timeout=1)
    assert (m.id, m.delivery_count) == (mid, 2)


def _main_thread_exits(qname, conn):
    q = ackring.open(qname, watchdog=None)
    c = q.consumer()
    m = c.get(timeout=10)
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    conn.send(("held", m.id))
    ctypes.CDLL(None).pthread_exit(None)     # the main thread goes; the sleeper keeps the process


# ------------------------------------------------------------ reclaimers

@pytest.mark.timeout(60)
def test_reclaimer_killed_in_the_middle_of_a_repair(procs, make_queue):
    """A reclaimer killed holding the reclaim lock and a dead entry's lock:
    the kernel drops both; the next pass repeats the (idempotent) repair."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    p = q.producer()
    ids = p.put_many([b"h0", b"h1"], timeout=1)
    holder, held = _hold(procs, q, 2)
    assert held == ids
    kill_and_reap(holder)
    reclaimer, _ = stop_child_at(procs, q.name, "reclaim_locked", "open_reclaim")
    assert q.reclaim() == 0               # the reclaim lock is held by a live (stopped) process
    kill_and_reap(reclaimer)
    assert q.reclaim() == 2
    assert q.check() == []
    c = q.consumer()
    assert drain(c) == [(ids[0], b"h0", 2), (ids[1], b"h1", 2)]
    full_capacity_still_usable(q, p, c)


@pytest.mark.timeout(60)
def test_blocked_consumer_recovers_after_reclaimer_killed(procs, make_queue):
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    mid = q.producer().put(b"h", timeout=1)
    holder, _ = _hold(procs, q, 1)
    kill_and_reap(holder)
    reclaimer, _ = stop_child_at(procs, q.name, "reclaim_locked", "open_reclaim")
    kill_and_reap(reclaimer)
    m = q.consumer().get(timeout=5)
    assert (m.id, m.delivery_count) == (mid, 2)
    m.ack()


# ------------------------------------------------------------ leases

@pytest.mark.timeout(60)
def test_stale_extend_cannot_touch_the_next_delivery(procs, make_queue):
    """The core review's bug 1: an extender paused between reading the lease
    and writing it must not overwrite the lease of whoever holds the message
    by the time it resumes.  Its extend fails, and the new holder's lease is
    untouched (it is neither wiped nor made due)."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    mid = q.producer().put(b"leased", timeout=1)
    child, got, conn = stop_child_at(procs, q.name, "extend_read", "extend", with_conn=True)
    assert got == mid
    # its 0.3 s lease runs out: a reclaim pass takes the delivery back
    _wait_for(lambda: q.reclaim() == 1, 10, "the lease scan to take the delivery back")
    assert q.last_recovery["leases"] == 1
    c = q.consumer(ack_timeout=0.5)
    m = c.get(timeout=1)
    assert (m.id, m.delivery_count) == (mid, 2)
    lease_before = q._seg.raw_slots()[mid & 7][1]
    os.kill(child.pid, signal.SIGCONT)
    assert conn.poll(10) and conn.recv() == ("raised", "StaleDelivery")
    assert q._seg.raw_slots()[mid & 7][1] == lease_before
    assert q.reclaim() == 0                  # not taken back under its live holder
    m.ack()


@pytest.mark.timeout(60)
def test_lease_scanner_killed_after_taking_the_lease(procs, make_queue):
    """A scanner killed between taking a lease and taking the delivery back:
    the next scan finishes the job; the holder's late ack is refused."""
    q = make_queue(capacity=8, message_size=64, watchdog=None)
    mid = q.producer().put(b"x", timeout=1)
    c = q.consumer(ack_timeout=0.2)
    m = c.get(timeout=1)
    _wait_past(time.monotonic() + 0.25)      # the lease is past due
    scanner, _ = stop_child_at(procs, q.name, "lease_taken", "open_reclaim")
    kill_and_reap(scanner)
    with pytest.raises(ackring.StaleDelivery):
        m.extend(10)                          # the taken lease cannot be extended
    assert q.reclaim() == 1 and q.last_recovery["leases"] == 1
    with pytest.raises(ackring.StaleDelivery):
        m.ack()
    m2 = q.consumer().get(timeout=1)
    assert (m2.id, m2.delivery_count) == (mid, 2)
    m2.ack()


def _continue_until_reported(child, conn, timeout=20):
    """SIGCONT a hook child (again each time it stops at its hook anew)
    until it reports; returns its report."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.02):
        assert time.monotonic() < deadline, "hook child never reported"
        try:
            if psutil.Process(child.pid).status() == psutil.STATUS_STOPPED:
                os.kill(child.pid, signal.SIGCONT)
        except psutil.NoSuchProcess:
            assert conn.poll(1), "hook child died without a report (exit %r)" % child.exitcode
    return conn.recv()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["leased_get", "leased_get_many", "leased_get_lazy", "leased_get_view"])
def test_lease_that_runs_out_before_the_copy_never_shows_another_body(procs, make_queue, action):
    """Issue 13 item 9, the duplicate after ack: a consumer stopped between
    the take and the copy of the body, past its lease.  Meanwhile the scan
    takes the message back, another consumer gets and acks it, and a
    producer reuses its slot.  The stopped get must not hand out the new
    occupant's bytes under the old delivery (that was the "delivered again
    after ack" of the chaos run): get/get_many look again, a lazy body
    raises StaleDelivery, and a view read then checked with extend() (the
    README's rule for views under a lease) raises StaleDelivery.  Every
    body the child reports is the one its id was published with."""
    q = make_queue(capacity=2, message_size=64, watchdog=None)
    p = q.producer()
    bodies = {}
    first = p.put(b"first", timeout=1)
    bodies[first] = b"first"
    child, _info, conn = stop_child_at(procs, q.name, "get_leased", action, with_conn=True)
    _wait_for(lambda: q.reclaim() == 1, 10, "the lease scan to take the delivery back")
    c = q.consumer()
    m = c.get(timeout=1)
    assert (m.id, m.body, m.delivery_count) == (first, b"first", 2)
    m.ack()
    # publish until the first message's slot holds another message
    k = 0
    while True:
        mid = p.put(b"reuse-%d" % k, timeout=1)
        bodies[mid] = b"reuse-%d" % k
        if mid % 2 == first % 2:
            break
        k += 1
        assert k < 4, "the slot was never reused"
    tag, info = _continue_until_reported(child, conn)
    assert tag == "returned", info
    if action in ("leased_get_lazy", "leased_get_view"):
        assert info == "StaleDelivery"
    else:
        assert info, info
        for mid, body, count in info:
            assert bodies.get(mid) == body, (mid, body, bodies)
            assert mid != first
    child.join(10)


# ------------------------------------------------------------ watchdog

def _hold(procs, q, n, watchdog=ackring.DEFAULT_WATCHDOG_INTERVAL):
    parent_conn, child_conn = FORK.Pipe(duplex=False)
    holder = procs(W.hold_and_hang, q.name, n, child_conn, FORK.Event(), watchdog, method="fork")
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
    # the pass that repaired it may still be finishing its bookkeeping (seen
    # on PyPy): wait for the counters, bounded
    deadline = time.monotonic() + 5
    while not (q.watchdog.passes > 0 and q.watchdog.repaired >= 3) and time.monotonic() < deadline:
        time.sleep(0.01)
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
        assert not q3.watchdog.is_alive()    # close() joins it before its entries go
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
        r = q2.open_recovery
        assert (r["entries"], r["requeued"]) == (3, 3), r
        s = q2.stats()
        assert (s["depth"], s["in_flight"], s["producers"], s["consumers"]) == (6, 0, 0, 0), s
        assert q2.check() == []
        c = q2.consumer()
        got = drain(c)
        assert sorted(got) == sorted((i, b"o%d" % k, 2 if k < 3 else 1) for k, i in enumerate(ids))
    finally:
        q2.close()


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
    q.close()
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


@pytest.mark.timeout(60)
def test_fork_child_that_execs_does_not_keep_its_entries_alive(make_queue):
    """A fork child registers a producer, then execs another program without
    closing its descriptors (os.fork + os.execv, as system()/popen() do).  Its
    entry's liveness lock is on the child's own open file description, which
    must be close-on-exec: the exec'd program does not hold it, so the entry
    is reclaimed while that program still runs.  (The fork handler once used
    dup2, which cleared FD_CLOEXEC, and such entries looked alive for ever.)"""
    q = make_queue(watchdog=None)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # child
        try:
            os.close(r)
            p = q.producer()                           # registers under the child's own lock
            p.put(b"from the child", timeout=1)
            os.write(w, b"1")
            os.execv("/bin/sleep", ["sleep", "30"])   # no close(): descriptors are inherited
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
        deadline = time.monotonic() + 10
        reclaimed = 0
        while q.stats()["producers"] and time.monotonic() < deadline:
            reclaimed += q.reclaim()                   # a bounded condition loop
            time.sleep(0.01)
        assert q.stats()["producers"] == 0, "the exec'd program kept the child's entry alive"
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # sleep still runs
        assert q.stats()["reclaimed_entries"] >= 1
        m = q.consumer().get(timeout=1)                # its confirmed message is still there
        assert m.body == b"from the child"
        m.ack()
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
