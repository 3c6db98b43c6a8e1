"""Queue-level shutdown across processes (core v2).

q.shutdown() writes a flag into the segment header and wakes every waiter in
every process: puts raise QueueClosed at once; gets (and ``for m in c``) end
once the ready messages are drained.  ackring.unlink() does the same for
processes still attached.  In v1, q.close() in the parent did not end a
child's ``for m in c``, and a child of an unlinked queue waited for ever.
"""
import multiprocessing
import os
import re
import subprocess
import sys

import pytest

import ackring

FORK = multiprocessing.get_context("fork")
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _iterating_worker(qname, conn):
    q = ackring.open(qname, watchdog=None)
    got = []
    with q.consumer(prefetch=2) as c:
        conn.send("ready")
        for m in c:                    # must end after shutdown + drain
            got.append(m.body)
            m.ack()
    conn.send(got)
    q.close()


@pytest.mark.timeout(60)
def test_shutdown_ends_every_childs_loop_after_the_drain(make_queue, procs):
    q = make_queue(capacity=64, message_size=32, watchdog=None)
    conns = []
    for _ in range(3):
        a, b = FORK.Pipe()
        procs(_iterating_worker, q.name, b, method="fork")
        conns.append(a)
    for a in conns:
        assert a.poll(10) and a.recv() == "ready"
    p = q.producer()
    sent = [b"job %d" % i for i in range(200)]
    for body in sent:
        p.put(body, timeout=10)
    q.shutdown()
    assert q.is_shutdown and q.stats()["shutdown"]
    with pytest.raises(ackring.QueueClosed):
        p.put(b"too late", timeout=0)            # puts raise at once
    got = []
    for a in conns:
        assert a.poll(20), "a worker's `for m in c` did not end after shutdown"
        got += a.recv()
    assert sorted(got) == sorted(sent)           # every message once, none lost
    procs.join_all(10)
    st = q.stats()
    assert (st["depth"], st["in_flight"], st["acked"]) == (0, 0, 200)


def _blocked(qname, what, conn):
    q = ackring.open(qname, watchdog=None)
    try:
        if what == "get":
            c = q.consumer()
            conn.send("blocking")
            c.get(timeout=30)
            conn.send("returned")
        elif what == "iterate":
            c = q.consumer()
            conn.send("blocking")
            n = sum(1 for _ in c)
            conn.send(("ended", n))
        else:
            p = q.producer()
            conn.send("blocking")
            p.put(b"x", timeout=30)                # the queue is full
            conn.send("returned")
    except ackring.QueueClosed as e:
        conn.send(("QueueClosed", str(e)))
    except Exception as e:                        # reported, so the test names it
        conn.send((type(e).__name__, str(e)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["get", "iterate", "put"])
def test_shutdown_wakes_a_waiter_in_another_process(make_queue, procs, what):
    q = make_queue(capacity=2, message_size=16, watchdog=None)
    if what == "put":
        q.producer().put_many([b"a", b"b"], timeout=0)
    a, b = FORK.Pipe()
    procs(_blocked, q.name, what, b, method="fork")
    assert a.poll(10) and a.recv() == "blocking"
    assert not a.poll(0.2)                        # it really waits (30 s timeout)
    q.shutdown()
    assert a.poll(10), "the waiter was not woken by shutdown"
    r = a.recv()
    if what == "iterate":
        assert r == ("ended", 0)
    else:
        assert r[0] == "QueueClosed", r
        assert "shut down" in r[1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["get", "iterate", "put"])
def test_unlink_wakes_processes_still_attached(make_queue, procs, what):
    q = make_queue(capacity=2, message_size=16, watchdog=None)
    if what == "put":
        q.producer().put_many([b"a", b"b"], timeout=0)
    a, b = FORK.Pipe()
    procs(_blocked, q.name, what, b, method="fork")
    assert a.poll(10) and a.recv() == "blocking"
    ackring.unlink(q.name)
    assert a.poll(10), "a process attached to an unlinked queue kept waiting"
    r = a.recv()
    assert r == ("ended", 0) if what == "iterate" else r[0] == "QueueClosed", r
    with pytest.raises(ackring.QueueNotFound):
        ackring.open(q.name)


@pytest.mark.timeout(30)
def test_shutdown_is_seen_by_later_opens_and_ready_messages_still_drain(make_queue):
    q = make_queue(capacity=8, message_size=16, watchdog=None)
    q.producer().put_many([b"1", b"2"], timeout=0)
    q.shutdown()
    q.shutdown()                                  # idempotent
    with ackring.open(q.name, watchdog=None) as q2:
        assert q2.is_shutdown
        with pytest.raises(ackring.QueueClosed):
            q2.producer().put(b"3", timeout=0)
        c = q2.consumer()
        assert [m.body for m in c] == [b"1", b"2"]  # drained, then the loop ends
        with pytest.raises(ackring.QueueClosed):
            c.get(timeout=5)                      # raises at once, not after 5 s


def _readme_block(heading):
    text = open(README, encoding="utf-8").read()
    i = text.index(heading)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, i)
    return m.group(1)


@pytest.mark.timeout(60)
def test_readme_worker_pool_example_runs_as_written(ackring_dir, tmp_path):
    """The README's worker-pool example: 4 processes, 1,000 jobs, shutdown."""
    code = _readme_block("### Shutting down a worker pool")
    script = tmp_path / "pool.py"
    script.write_text(code)
    env = dict(os.environ, ACKRING_DIR=ackring_dir)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=50, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["handled", "1000", "jobs", "in", "4", "workers"], out.stdout
    assert not [f for f in os.listdir(ackring_dir) if f.startswith("ackring.")]
