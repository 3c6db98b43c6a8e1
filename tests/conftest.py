"""Shared fixtures for the ackring test suite.

Isolation: every test runs with ACKRING_DIR pointing at a fresh directory under
/dev/shm (so segments never touch the real /dev/shm/ackring.* namespace) and
gets a unique queue name.  Child processes inherit ACKRING_DIR through
os.environ (fork copies it, spawn/forkserver children are started with it).

Child processes: tests start them through the ``procs`` fixture, which makes
them daemons and terminates/kills any that are still alive when the test ends,
so no test can leave a process behind or hang on one.
"""

import multiprocessing
import os
import shutil
import sys
import tempfile
import uuid

import pytest

# Worker functions for child processes live in tests/_ar_workers.py; make sure
# that module is importable in spawn/forkserver children whatever pytest's
# import mode is (children receive the parent's sys.path).
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

SHM = "/dev/shm"


@pytest.fixture(autouse=True)
def ackring_dir(monkeypatch):
    """A fresh segment directory for each test, removed afterwards."""
    base = SHM if os.path.isdir(SHM) else None
    d = tempfile.mkdtemp(dir=base, prefix="ackring-test-")
    monkeypatch.setenv("ACKRING_DIR", d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def qname():
    """A queue name no other test uses."""
    return "t-" + uuid.uuid4().hex[:16]


@pytest.fixture
def make_queue(qname):
    """Factory: make_queue(capacity=8, message_size=256, name=None, **kw).

    Every queue it creates is closed and unlinked at teardown.
    """
    import ackring

    made = []

    def _make(capacity=8, message_size=256, name=None, **kw):
        name = qname if name is None else name
        q = ackring.create(name, capacity=capacity, message_size=message_size, **kw)
        made.append(q)
        return q

    yield _make
    for q in made:
        try:
            q.close()
        except Exception:
            pass
        try:
            ackring.unlink(q.name, missing_ok=True)
        except Exception:
            pass


@pytest.fixture
def q(make_queue):
    """A small queue: capacity 8, message_size 256."""
    return make_queue()


class _Procs:
    def __init__(self):
        self.started = []

    def start(self, target, *args, method="fork"):
        ctx = multiprocessing.get_context(method)
        p = ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.started.append(p)
        return p

    __call__ = start

    def join_all(self, timeout):
        """Join every started process; fail if any is still alive after timeout."""
        import time

        deadline = time.monotonic() + timeout
        for p in self.started:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in self.started if p.is_alive()]
        assert not alive, "child processes still alive: %r" % alive

    def reap(self):
        for p in self.started:
            if p.is_alive():
                p.terminate()
        for p in self.started:
            p.join(3)
            if p.is_alive():
                p.kill()
                p.join(3)


@pytest.fixture
def procs():
    """Start child processes with procs(target, *args, method=...).

    Daemonic; any child still alive at teardown is terminated, then killed.
    """
    pr = _Procs()
    try:
        yield pr
    finally:
        pr.reap()
