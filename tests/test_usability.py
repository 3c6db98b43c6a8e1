"""Things a user hit (issue 11): objects on the normal API (put_obj / m.obj),
clients dropped without close() on every interpreter, clear errors for
pickling clients, bad timeouts, a missing directory and a full filesystem."""

import gc
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

import pytest

import ackring


def test_put_obj_and_m_obj(q):
    p, c = q.producer(), q.consumer()
    obj = {"user": 42, "tags": ["a", "b"], "blob": b"\x00" * 10}
    mid = p.put_obj(obj)
    p.put_obj(("two", 2), ttl=60, timeout=1)
    with c.get(timeout=1) as m:
        assert m.id == mid and m.obj == obj
        assert m.obj is not m.obj                      # unpickled anew each time
    with c.get(timeout=1, copy=False) as m:          # zero-copy delivery: read from the slot
        assert m.obj == ("two", 2)
    assert p.wait_acked(mid, timeout=1).outcome == "acked"
    # one codec: ackring.mp.load_obj reads what put_obj wrote, and the reverse
    import ackring.mp as amp

    amp.put_obj(p, [1, 2])
    p.put_obj(bytearray(b"out of band"))
    assert c.get(timeout=1).obj == [1, 2]
    m = c.get(timeout=1)
    assert amp.load_obj(m) == bytearray(b"out of band")
    m.ack()
    p.put(b"plain bytes")
    m = c.get(timeout=1)
    with pytest.raises(ValueError, match="not a message written by put_obj"):
        m.obj
    m.ack()
    with pytest.raises(ackring.MessageTooLarge, match="message_size="):
        p.put_obj(b"y" * 1000)


def test_put_obj_numpy_out_of_band(make_queue):
    np = pytest.importorskip("numpy")
    q = make_queue(message_size=1 << 16)
    a = np.arange(4096, dtype=np.float64).reshape(64, 64)
    q.producer().put_obj(a)
    with q.consumer().get(timeout=1) as m:
        b = m.obj
    assert (a == b).all() and b.flags.writeable


def test_clients_dropped_without_close_are_freed_without_refcounting(make_queue):
    """1000 producers made and dropped without close(), each kept alive only
    by a reference cycle (what every object is on PyPy: freed at a
    collection, not when the last reference goes), with the automatic
    collector off: none may end in TooManyClients.  The table (16 entries)
    fills; the next producer() collects, the clients' finalizers free their
    entries, and it succeeds."""
    q = make_queue(capacity=8, message_size=64, watchdog=None, max_clients=16)
    c = q.consumer()
    was = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        peak = 0
        for i in range(1000):
            p = q.producer()
            cycle = [p]
            cycle.append(cycle)                        # refcounting alone never frees p
            p.put(b"%d" % i, timeout=1)
            c.get(timeout=1).ack()
            peak = max(peak, q.stats()["producers"])
            del p, cycle
        assert peak == 15                              # the table did fill: the cycles held them
    finally:
        if was:
            gc.enable()
    gc.collect()
    st = q.stats()
    assert (st["producers"], st["published"], st["acked"]) == (0, 1000, 1000)


@pytest.mark.parametrize("kind", ["producer", "consumer", "message", "reservation"])
def test_pickling_clients_says_what_to_do(q, kind):
    p = q.producer()
    p.put(b"x")
    obj = {"producer": lambda: p, "consumer": q.consumer,
           "message": lambda: q.consumer().get(timeout=1), "reservation": p.reserve}[kind]()
    hint = {"producer": "pickle the Queue and open a producer in the child",
            "consumer": "pickle the Queue and open a consumer in the child",
            "message": "pass m.body", "reservation": "commit it first"}[kind]
    with pytest.raises(TypeError, match="cannot be pickled; " + hint):
        pickle.dumps(obj)


def test_bad_timeouts_name_the_argument(q):
    p, c = q.producer(), q.consumer()
    with pytest.raises(TypeError, match="timeout"):
        c.get(timeout="x")
    with pytest.raises(TypeError, match="timeout"):
        p.put(b"x", timeout="x")
    mid = p.put(b"x")
    with pytest.raises(ValueError, match="timeout"):
        p.wait_acked(mid, timeout=-1)
    with pytest.raises(ValueError, match="no message -1"):
        p.wait_acked(-1)


def test_missing_ackring_dir_is_named(monkeypatch, tmp_path):
    missing = str(tmp_path / "nope")
    monkeypatch.setenv("ACKRING_DIR", missing)
    with pytest.raises(FileNotFoundError, match="queue directory %r does not exist \\(ACKRING_DIR\\)" % missing):
        ackring.create("q1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ackring.list_queues()


def test_enospc_on_create_names_the_queue():
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    d = tempfile.mkdtemp(prefix="ackring-tiny-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", d], capture_output=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount tmpfs here: %s" % r.stderr.decode().strip())
    try:
        with pytest.raises(OSError) as ei:
            ackring.create("bigq", capacity=1024, message_size=4096, dir=d)
        assert ei.value.errno == 28 and "bigq" in str(ei.value)
        assert os.listdir(d) == []                     # no half-made file or temp name left
        with ackring.create("smallq", capacity=2, message_size=64, dir=d) as q:   # room for a small one
            assert q.capacity == 2
        ackring.unlink("smallq", dir=d)
    finally:
        subprocess.run(["umount", d], capture_output=True)
        os.rmdir(d)


def _readme_python_block(heading):
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n%s\n" % heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(60)
def test_readme_with_block_example_runs_as_written(ackring_dir):
    """README "`with m:`": the block's exception nacks the message and then
    propagates; the message comes back with delivery_count 2.  Run on the
    backend under test (ACKRING_BACKEND is inherited)."""
    code = _readme_python_block("### `with m:`")
    assert "raise KeyError" in code and "except KeyError" in code
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=45,
                       env=dict(os.environ, ACKRING_DIR=ackring_dir))
    assert r.returncode == 0, r.stderr
    assert os.listdir(ackring_dir) == []           # it removed its queue


def test_with_block_nacks_then_propagates(q):
    p, c = q.producer(), q.consumer()
    p.put(b"a")
    with pytest.raises(ZeroDivisionError):
        with c.get(timeout=1) as m:
            1 / 0
    assert m.settled
    m = c.get(timeout=1)
    assert m.body == b"a" and m.delivery_count == 2 and q.stats()["nacked"] == 1
    # settled inside the block: the exit leaves it alone, the exception still propagates
    with pytest.raises(ZeroDivisionError):
        with m:
            m.reject()
            1 / 0
    assert q.stats()["rejected"] == 1 and q.stats()["nacked"] == 1


def test_reservation_view_on_every_backend(q):
    """README "Fast paths": r.view() / m.view() work on both backends;
    memoryview(r) only where the object exports a buffer itself."""
    p, c = q.producer(), q.consumer()
    r = p.reserve()
    r.view()[:3] = b"abc"
    r.commit(3)
    m = c.get(timeout=1, copy=False)
    assert bytes(m.view()) == b"abc"
    exports = ackring.backend == "cython" or sys.version_info >= (3, 12) or sys.implementation.name == "pypy"
    if exports:
        assert bytes(memoryview(m)) == b"abc"
    else:
        with pytest.raises(TypeError):
            memoryview(m)
    m.ack()
    r = p.reserve(16)
    with r as buf:
        buf[:5] = b"hello"
        r.commit(5)
    assert c.get(timeout=1).body == b"hello"
