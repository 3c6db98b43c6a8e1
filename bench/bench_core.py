"""Micro-benchmarks of ackring's hot calls, in one process (pytest-benchmark).

Run from the repo root, against the installed package::

    pip install '.[bench]'        # or just: pip install . pytest-benchmark
    python -m pytest bench/ --benchmark-only

These time the cost of the calls themselves (no second process, no waiting);
cross-process throughput is what ``ackring bench`` measures.  Every benchmark
gets a fresh queue with a unique name, unlinked afterwards; segments go to
``$ACKRING_DIR`` when it is set (the library reads it), else /dev/shm.
"""

import os
import secrets

import pytest

ackring = pytest.importorskip("ackring")
pytest.importorskip("pytest_benchmark")

SIZE = 64
BATCH = 64


@pytest.fixture
def queue():
    name = "bench-core-%d-%s" % (os.getpid(), secrets.token_hex(4))
    q = ackring.create(name, capacity=1024, message_size=SIZE)
    try:
        yield q
    finally:
        q.close()
        ackring.unlink(name, missing_ok=True)


@pytest.fixture
def pair(queue):
    with queue.producer() as p, queue.consumer() as c:
        yield p, c
        assert queue.stats()["depth"] == 0


def test_put_get_ack_64b(benchmark, pair):
    """One message round trip: put, get (copying the body), ack."""
    p, c = pair
    put, get = p.put, c.get
    payload = b"x" * SIZE

    def roundtrip():
        put(payload, timeout=0)
        get(timeout=0).ack()

    benchmark(roundtrip)


def test_put_get_ack_64b_zero_copy(benchmark, pair):
    """Round trip reading the payload through a memoryview instead of a copy."""
    p, c = pair
    put, get = p.put, c.get
    payload = b"x" * SIZE

    def roundtrip():
        put(payload, timeout=0)
        m = get(timeout=0, copy=False)
        with memoryview(m) as view:
            view[0]
        m.ack()

    benchmark(roundtrip)


def test_put_many_get_many_64x64b(benchmark, pair):
    """A batch of 64 messages of 64 B: put_many, get_many, ack each."""
    p, c = pair
    put_many, get_many = p.put_many, c.get_many
    batch = [b"y" * SIZE] * BATCH

    def roundtrip():
        put_many(batch, timeout=0)
        got = get_many(BATCH, timeout=0)
        for m in got:
            m.ack()
        return len(got)

    assert benchmark(roundtrip) == BATCH


def test_stats(benchmark, queue):
    """Reading the counters (q.stats())."""
    benchmark(queue.stats)
