"""ackring.mp: the multiprocessing.Queue / JoinableQueue drop-in, and put_obj / load_obj."""

import multiprocessing
import os
import pickle
import queue
import subprocess
import sys
import threading
import time

import pytest

import ackring
import ackring.mp as amp
from _aio_workers import jq_take, jq_worker, mp_drain, mp_echo, mp_put_range

FORK = multiprocessing.get_context("fork")
METHODS = ["fork", "spawn"]


@pytest.fixture
def made():
    """Queues made by a test, closed (and so removed) at teardown."""
    qs = []

    def _make(cls=amp.Queue, *args, **kw):
        q = cls(*args, **kw)
        qs.append(q)
        return q

    yield _make
    for q in qs:
        q.close()


def recv(conn, timeout=60):
    assert conn.poll(timeout), "no report from the child within %s s" % timeout
    msg = conn.recv()
    assert msg[0] != "error", "child failed:\n%s" % (msg[1],)
    return msg


def segment_files(q):
    return [q.queue.path, q.queue.path + ".dlq"]


# ------------------------------------------------------------- the contract


def test_put_get_round_trip(made):
    q = made()
    items = [None, 1, 2.5, "text", b"bytes", bytearray(b"ba"), [1, [2, 3]], {"k": (1, 2)},
             {"nested": {"set": {1, 2}}}, 10 ** 40, "é" * 3000]
    for x in items:
        q.put(x)
    assert [q.get(timeout=1) for _ in items] == items


def test_fifo_and_counts(made):
    q = made()
    for i in range(100):
        q.put_nowait(i)
    assert q.qsize() == 100
    assert [q.get_nowait() for _ in range(100)] == list(range(100))
    assert q.qsize() == 0 and q.empty()
    st = q.queue.stats()
    assert (st["published"], st["acked"], st["depth"], st["in_flight"]) == (100, 100, 0, 0)


def test_get_nonblocking_and_timeout(made):
    q = made()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False, 10)            # block=False ignores the timeout
    assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 2


def test_get_blocks_until_a_put_from_another_thread(made):
    q = made()

    def later():
        deadline = time.monotonic() + 10
        while q.queue.stats()["consumers"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)   # poll: until the main thread's get has its consumer
        q.put("late")

    t = threading.Thread(target=later)
    t.start()
    assert q.get(timeout=10) == "late"
    t.join(10)


def test_maxsize_rounds_up_to_a_power_of_two(made):
    for maxsize, cap in [(1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024)]:
        q = made(amp.Queue, maxsize)
        assert (q.maxsize, q.capacity) == (maxsize, cap)
    assert made(amp.Queue).capacity == amp.DEFAULT_CAPACITY
    assert made(amp.Queue, 0).message_size == amp.DEFAULT_MESSAGE_SIZE


def test_full_and_put_timeouts(made):
    q = made(amp.Queue, 3)          # capacity 4
    assert not q.full()
    for i in range(4):
        q.put(i, block=False)       # a 4th fits: full() and qsize() tell the rounded capacity
    assert q.full() and q.qsize() == 4 and not q.empty()
    with pytest.raises(queue.Full):
        q.put_nowait("no room")
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("no room", timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 2
    assert q.get() == 0
    assert not q.full() and q.qsize() == 3
    q.put(4, timeout=1)
    assert [q.get_nowait() for _ in range(4)] == [1, 2, 3, 4]


def test_put_blocks_until_a_get_from_another_thread(made):
    q = made(amp.Queue, 2)
    q.put(1)
    q.put(2)
    got = []

    def later():
        deadline = time.monotonic() + 10
        while q.queue.stats()["producers"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)   # poll: until the main thread's put has its producer
        got.append(q.get(timeout=10))

    t = threading.Thread(target=later)
    t.start()
    q.put(3, timeout=10)
    t.join(10)
    assert got == [1]
    assert [q.get_nowait(), q.get_nowait()] == [2, 3]


def test_bad_arguments(made):
    with pytest.raises(TypeError):
        amp.Queue("10")
    with pytest.raises(TypeError):
        amp.Queue(4, message_size=1.5)
    with pytest.raises(ValueError):
        amp.Queue(1 << 25)
    with pytest.raises(ValueError):
        amp.Queue(4, name="bad name")
    q = made()
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises((TypeError, pickle.PicklingError)):   # PyPy: PicklingError
        q.put(threading.Lock())  # cannot be pickled: raised by put itself
    assert q.qsize() == 0


def test_too_large_names_the_message_size_to_set(made):
    q = made(amp.Queue, 4, message_size=1024)
    big = b"x" * 5000
    with pytest.raises(ackring.MessageTooLarge) as e:
        q.put(big)
    need = amp.encoded_size(big)
    assert "message_size=%d" % need in str(e.value)
    assert isinstance(e.value, ValueError)
    q2 = made(amp.Queue, 4, message_size=need)   # exactly that is enough
    q2.put(big)
    assert q2.get(timeout=1) == big


def test_close(made, ackring_dir):
    q = amp.Queue(4)
    files = segment_files(q)
    assert all(os.path.exists(f) for f in files)
    q.put(1)
    with pytest.raises(ValueError):
        q.join_thread()          # only after close(), as with multiprocessing
    q.close()
    q.close()                    # idempotent
    assert not any(os.path.exists(f) for f in files)
    for call in (lambda: q.put(1), q.get, q.get_nowait, lambda: q.put_nowait(1), q.qsize, q.empty,
                 q.full, lambda: pickle.dumps(q)):
        with pytest.raises(ackring.QueueClosed) as e:
            call()
        assert isinstance(e.value, ValueError) and "closed" in str(e.value)
    q.join_thread()
    q.cancel_join_thread()
    assert "closed" in repr(q)


def test_collected_queue_removes_its_segment():
    q = amp.Queue(4)
    files = segment_files(q)
    del q
    import gc
    gc.collect()
    assert not any(os.path.exists(f) for f in files)


def test_creator_exit_removes_the_segment(ackring_dir):
    """A process that exits without close(): atexit removes what it created."""
    code = ("import ackring.mp, sys; q = ackring.mp.Queue(4); q.put('left'); "
            "print(q.queue.path, flush=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, ACKRING_DIR=ackring_dir))
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert path.startswith(ackring_dir)
    assert not os.path.exists(path) and not os.path.exists(path + ".dlq")
    assert os.listdir(ackring_dir) == []


def test_a_queue_made_in_a_child_is_removed_when_the_child_ends(procs, ackring_dir):
    ctx = multiprocessing.get_context("spawn")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_make_and_report, args=(w,), daemon=True)
    procs.started.append(p)
    p.start()
    path = recv(r)[1]
    p.join(30)
    assert p.exitcode == 0
    assert not os.path.exists(path)


def _make_and_report(conn):
    q = amp.Queue(2)  # not closed: the multiprocessing child's exit removes it
    q.put("x")
    conn.send(("made", q.queue.path))


# --------------------------------------------------------------- processes


@pytest.mark.parametrize("method", METHODS)
def test_children_see_the_same_queue(made, procs, method):
    q = made(amp.Queue, 16)
    out = made(amp.Queue, 256)       # room for every echo: the parent reads them after its puts
    n = 200
    q.put("warm")                    # the parent has its producer and consumer before the fork
    assert q.get(timeout=1) == "warm"
    r, w = FORK.Pipe(duplex=False)
    procs(mp_echo, q, out, n, w, method=method)
    for i in range(n):
        q.put({"i": i, "payload": "p" * (i % 50)}, timeout=30)
    echoes = [out.get(timeout=30) for _ in range(n)]
    assert recv(r)[1] == n
    pids = {pid for _, pid, _ in echoes}
    assert len(pids) == 1 and os.getpid() not in pids
    assert [obj for _, _, obj in echoes] == [{"i": i, "payload": "p" * (i % 50)} for i in range(n)]
    procs.join_all(30)
    assert q.qsize() == 0 and out.qsize() == 0


@pytest.mark.parametrize("method", METHODS)
def test_several_children_produce_and_consume(made, procs, method):
    """Two producing children, two consuming children: every object arrives once."""
    q = made(amp.Queue, 8)
    out = made(amp.Queue, 8)
    per = 300
    conns = []
    for k in range(2):
        r, w = FORK.Pipe(duplex=False)
        procs(mp_put_range, q, k * per, per, w, method=method)
        conns.append(r)
    for k in range(2):
        r, w = FORK.Pipe(duplex=False)
        procs(mp_drain, q, out, 3.0, w, method=method)
        conns.append(r)
    drained = [out.get(timeout=60) for _ in range(2)]
    counts = [recv(c)[1] for c in conns]
    assert counts[:2] == [per, per]
    got = [obj for _, _, objs in drained for obj in objs]
    assert sorted(got) == [("item", i) for i in range(2 * per)]
    assert sum(counts[2:]) == 2 * per
    procs.join_all(30)
    # the children's close() did not remove the parent's segment
    assert all(os.path.exists(f) for f in segment_files(q))


def test_child_started_after_close_gets_a_clear_error(made, ackring_dir):
    q = amp.Queue(4)
    blob = pickle.dumps(q)
    q.close()
    with pytest.raises(ackring.QueueNotFound) as e:
        pickle.loads(blob)
    assert "gone" in str(e.value) and q.name in str(e.value)


def test_pickled_copy_in_this_process_never_removes_the_segment(made):
    q = made(amp.Queue, 4)
    copy = pickle.loads(pickle.dumps(q))
    copy.put("via copy")
    copy.close()
    assert all(os.path.exists(f) for f in segment_files(q))
    assert q.get(timeout=1) == "via copy"


def test_threads_share_one_queue(made):
    q = made(amp.Queue, 8)
    n, k = 500, 4
    got = []
    lock = threading.Lock()

    def produce(base):
        for i in range(n):
            q.put(base + i, timeout=30)

    def consume():
        while True:
            try:
                x = q.get(timeout=1)
            except queue.Empty:
                return
            with lock:
                got.append(x)

    ts = [threading.Thread(target=produce, args=(j * n,)) for j in range(k)]
    ts += [threading.Thread(target=consume) for _ in range(k)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert sorted(got) == list(range(n * k))


# ---------------------------------------------------------- out of band: numpy


def test_numpy_arrays_round_trip(made):
    np = pytest.importorskip("numpy")
    q = made(amp.Queue, 4, message_size=1 << 21)
    arrays = [np.arange(10.0), np.arange(24, dtype=np.int16).reshape(2, 3, 4),
              np.asfortranarray(np.arange(12).reshape(3, 4)), np.arange(100)[::3],
              np.zeros(0), np.array(["a", "bc"]), np.random.default_rng(1).random(1 << 17),
              {"nested": [np.ones(5, dtype=np.uint8)]}]
    for a in arrays:
        q.put(a, timeout=5)
        b = q.get(timeout=5)
        if isinstance(a, dict):
            assert np.array_equal(a["nested"][0], b["nested"][0])
            continue
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
        assert b.flags.writeable


def test_numpy_out_of_band_size_and_no_view_into_the_slot(made):
    """The array travels out of band (slot size ~ its bytes), and what get
    returns owns its memory: later messages reusing the slot do not change it."""
    np = pytest.importorskip("numpy")
    a = np.arange(1 << 17, dtype=np.float64)           # 1 MiB
    assert amp.encoded_size(a) < a.nbytes + 512         # not pickled in band
    q = made(amp.Queue, 2, message_size=amp.encoded_size(a))
    q.put(a)
    first = q.get(timeout=1)
    for i in range(6):                                   # every slot reused three times
        q.put(np.full(1 << 17, -1.0 - i))
        assert q.get(timeout=1)[0] == -1.0 - i
    assert np.array_equal(first, a)
    owner = first
    while isinstance(owner, (np.ndarray, memoryview)):
        owner = owner.base if isinstance(owner, np.ndarray) else owner.obj
    assert isinstance(owner, bytearray)                  # its memory is a private copy
    first[0] = 42.0                                      # writable, and ours
    assert first[0] == 42.0


def test_pickle_buffers_go_out_of_band(made):
    q = made(amp.Queue, 4)
    data = bytearray(range(256)) * 40
    assert amp.encoded_size(data) < len(data) + 256
    q.put(data)
    q.put(pickle.PickleBuffer(b"read-only bytes"))
    assert q.get(timeout=1) == data
    ro = q.get(timeout=1)
    assert bytes(ro) == b"read-only bytes" and ro.readonly


def test_numpy_in_spawn_child(made, procs):
    np = pytest.importorskip("numpy")
    q = made(amp.Queue, 4, message_size=1 << 20)
    out = made(amp.Queue, 4, message_size=1 << 20)
    r, w = FORK.Pipe(duplex=False)
    procs(mp_echo, q, out, 3, w, method="spawn")
    arrays = [np.arange(1000, dtype=np.int32) * k for k in range(3)]
    for a in arrays:
        q.put(a, timeout=30)
    back = [out.get(timeout=60)[2] for _ in range(3)]
    assert recv(r)[1] == 3
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
    procs.join_all(30)


# -------------------------------------------------------------- JoinableQueue


@pytest.mark.parametrize("method", METHODS)
def test_joinable_worker_pool(made, procs, method):
    """join() returns only after every task_done: each worker puts its result
    before task_done, so every result is there when join returns."""
    jq = made(amp.JoinableQueue, 16)
    results = made(amp.Queue, 1024)
    n, workers = 300, 3
    conns = []
    for _ in range(workers):
        r, w = FORK.Pipe(duplex=False)
        procs(jq_worker, jq, results, None, 60, w, method=method)
        conns.append(r)
    for i in range(n):
        jq.put(i, timeout=30)
    joiner = threading.Thread(target=jq.join, daemon=True)
    joiner.start()
    joiner.join(60)
    assert not joiner.is_alive(), "join() did not return"
    assert results.qsize() == n       # every result was put before its task_done
    got = sorted(results.get_nowait() for _ in range(n))
    assert got == [(i, i * i) for i in range(n)]
    for _ in range(workers):
        jq.put(None)
    jq.join()
    assert sum(recv(c)[1] for c in conns) == n
    procs.join_all(30)
    with pytest.raises(ValueError):
        jq.task_done()


def test_join_waits_for_the_last_task_done(made, procs):
    jq = made(amp.JoinableQueue, 8)
    results = made(amp.Queue, 64)
    gate = FORK.Event()
    r, w = FORK.Pipe(duplex=False)
    procs(jq_worker, jq, results, gate, 60, w, method="fork")
    for i in range(5):
        jq.put(i)
    assert results.get(timeout=30) == (0, 0)   # the worker holds task 0 (not done), 1-4 wait
    joiner = threading.Thread(target=jq.join, daemon=True)
    joiner.start()
    joiner.join(0.3)
    assert joiner.is_alive(), "join() returned with five tasks unfinished"
    gate.set()
    joiner.join(30)
    assert not joiner.is_alive()
    assert sorted(results.get_nowait() for _ in range(4)) == [(i, i * i) for i in range(1, 5)]
    jq.put(None)
    jq.join()
    assert recv(r)[1] == 5
    procs.join_all(30)


def test_task_done_in_another_process_than_get(made, procs):
    jq = made(amp.JoinableQueue, 8)
    r, w = FORK.Pipe(duplex=False)
    procs(jq_take, jq, 3, 30, w, method="spawn")
    for i in range(3):
        jq.put(i)
    assert recv(r)[1] == [0, 1, 2]
    procs.join_all(30)
    joiner = threading.Thread(target=jq.join, daemon=True)
    joiner.start()
    joiner.join(0.2)
    assert joiner.is_alive()
    for _ in range(3):
        jq.task_done()
    joiner.join(10)
    assert not joiner.is_alive()
    with pytest.raises(ValueError, match="too many"):
        jq.task_done()


def test_joinable_join_when_nothing_was_put(made):
    jq = made(amp.JoinableQueue)
    jq.join()
    jq.put("a")
    assert jq.get(timeout=1) == "a"
    jq.task_done()
    jq.join()


def test_joinable_failed_put_leaves_no_unfinished_task(made):
    jq = made(amp.JoinableQueue, 2, message_size=64)
    with pytest.raises(ackring.MessageTooLarge):
        jq.put(b"x" * 1000)
    with pytest.raises((TypeError, pickle.PicklingError)):
        jq.put(threading.Lock())
    jq.put(1)
    jq.put(2)
    with pytest.raises(queue.Full):
        jq.put(3, timeout=0.1)        # its token was taken back
    assert [jq.get(timeout=1), jq.get(timeout=1)] == [1, 2]
    jq.task_done()
    jq.task_done()
    jq.join()
    with pytest.raises(ValueError):
        jq.task_done()


def test_joinable_close_removes_both_segments(made):
    jq = amp.JoinableQueue(4)
    files = segment_files(jq) + [jq.queue.path + ".tasks", jq.queue.path + ".tasks.dlq"]
    assert all(os.path.exists(f) for f in files)
    jq.close()
    assert not any(os.path.exists(f) for f in files)


# ---------------------------------------------------- put_obj / load_obj


def test_put_obj_load_obj_on_the_normal_api(q):
    p = q.producer()
    c = q.consumer()
    obj = {"a": [1, 2, 3], "b": bytearray(b"oob")}
    mid = amp.put_obj(p, obj)
    m = c.get(timeout=1, copy=False)
    assert m.id == mid
    assert amp.load_obj(m) == obj
    assert not m.settled              # load_obj does not settle
    m.ack()
    assert p.wait_acked(mid, timeout=1).outcome == "acked"
    amp.put_obj(p, ("copied", 1))
    m = c.get(timeout=1)
    m.ack()
    assert amp.load_obj(m) == ("copied", 1)   # a copied body is still readable after settling


def test_load_obj_rejects_other_messages(q):
    p = q.producer()
    c = q.consumer()
    for body in (b"plain bytes, no trailer", b"", b"ARo5" * 3):
        p.put(body)
        m = c.get(timeout=1)
        with pytest.raises(ValueError, match="not a message written by put_obj"):
            amp.load_obj(m)
        m.ack()


def test_put_obj_too_large(q):
    with pytest.raises(ackring.MessageTooLarge, match="message_size=%d" % amp.encoded_size(b"y" * 300)):
        amp.put_obj(q.producer(), b"y" * 300)
    assert q.stats()["published"] == 0


class _Boom:
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild")


def test_unpickling_error_dead_letters_the_message(made):
    q = made(amp.Queue, 4)
    q.put(_Boom())
    q.put("next")
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        q.get(timeout=1)
    assert q.get(timeout=1) == "next"
    st = q.queue.stats()
    assert (st["rejected"], st["depth"], st["in_flight"]) == (1, 0, 0)
    with q.queue.dead_letters.consumer() as dc:
        m = dc.get(timeout=1)
        assert m.death["reason"] == "rejected"
        m.ack()
