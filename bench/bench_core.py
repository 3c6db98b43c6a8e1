"""Micro-benchmarks of ackring's hot calls, in one process (pytest-benchmark).

Run from the repo root, against the installed package::

    pip install '.[bench]'        # or just: pip install . pytest-benchmark
    python -m pytest bench/ --benchmark-only

These time the cost of the calls themselves (no second process, no waiting);
cross-process throughput and latency are what ``ackring bench`` measures.
They bound what the cross-process numbers can reach: a producer process
cannot put faster than ``test_put_256x64b`` / 256 allows, a consumer cannot
take faster than ``test_get_ack_256x64b`` / 256.  Every benchmark gets a
fresh queue with a unique name, unlinked afterwards; segments go to
``$ACKRING_DIR`` when it is set (the library reads it), else /dev/shm.

APIs that not every ackring version has (``Consumer.ack_many``,
``Producer.reserve``) are skipped when missing.
"""

import os
import secrets

import pytest

ackring = pytest.importorskip("ackring")
pytest.importorskip("pytest_benchmark")

SIZE = 64
BIG = 64 * 1024
BATCH = 64
ROUND = 256  # messages per round in the put-only / get-only benchmarks


def _make(size, capacity=1024):
    name = "bench-core-%d-%s" % (os.getpid(), secrets.token_hex(4))
    q = ackring.create(name, capacity=capacity, message_size=size)
    return name, q


@pytest.fixture
def queue():
    name, q = _make(SIZE)
    try:
        yield q
    finally:
        q.close()
        ackring.unlink(name, missing_ok=True)


@pytest.fixture
def big_queue():
    name, q = _make(BIG, capacity=64)
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


@pytest.fixture
def big_pair(big_queue):
    with big_queue.producer() as p, big_queue.consumer() as c:
        yield p, c
        assert big_queue.stats()["depth"] == 0


def _drain(c):
    get = c.get
    while True:
        try:
            get(timeout=0).ack()
        except ackring.Empty:
            return


# ------------------------------------------------------------------ per message, 64 B


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


def test_put_256x64b(benchmark, pair):
    """Producer side alone: 256 puts into an empty queue per round (divide by 256)."""
    p, c = pair
    put = p.put
    payload = b"x" * SIZE

    def puts():
        for _ in range(ROUND):
            put(payload, timeout=0)

    benchmark.pedantic(puts, setup=lambda: _drain(c), rounds=2000, warmup_rounds=10)
    _drain(c)


def test_get_ack_256x64b(benchmark, pair):
    """Consumer side alone: 256 get + ack per round (divide by 256)."""
    p, c = pair
    get = c.get
    batch = [b"x" * SIZE] * ROUND

    def gets():
        for _ in range(ROUND):
            get(timeout=0).ack()

    def fill():
        p.put_many(batch, timeout=0)

    benchmark.pedantic(gets, setup=fill, rounds=2000, warmup_rounds=10)


def test_reserve_get_ack_64b(benchmark, pair):
    """Zero-copy send: reserve + write in place + commit, then get + ack."""
    p, c = pair
    if not hasattr(p, "reserve"):
        pytest.skip("this ackring has no Producer.reserve()")
    reserve, get = p.reserve, c.get
    payload = b"x" * SIZE

    def roundtrip():
        with reserve(SIZE, timeout=0) as buf:
            buf[:SIZE] = payload
        get(timeout=0).ack()

    benchmark(roundtrip)


# --------------------------------------------------------------------------- batches


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


def test_put_many_get_many_ack_many_64x64b(benchmark, pair):
    """A batch of 64 messages of 64 B: put_many, get_many, ack_many (one call each)."""
    p, c = pair
    if not hasattr(c, "ack_many"):
        pytest.skip("this ackring has no Consumer.ack_many()")
    put_many, get_many, ack_many = p.put_many, c.get_many, c.ack_many
    batch = [b"y" * SIZE] * BATCH

    def roundtrip():
        put_many(batch, timeout=0)
        got = get_many(BATCH, timeout=0)
        ack_many(got)
        return len(got)

    assert benchmark(roundtrip) == BATCH


# --------------------------------------------------------------------------- 64 KiB


def test_put_get_ack_64kib(benchmark, big_pair):
    """64 KiB: put (copy in), get (copy out), ack."""
    p, c = big_pair
    put, get = p.put, c.get
    payload = b"z" * BIG

    def roundtrip():
        put(payload, timeout=0)
        get(timeout=0).ack()

    benchmark(roundtrip)


def test_put_get_ack_64kib_zero_copy(benchmark, big_pair):
    """64 KiB: put (copy in), get(copy=False) + memoryview, ack: one copy per message."""
    p, c = big_pair
    put, get = p.put, c.get
    payload = b"z" * BIG

    def roundtrip():
        put(payload, timeout=0)
        m = get(timeout=0, copy=False)
        with memoryview(m) as view:
            view[-1]
        m.ack()

    benchmark(roundtrip)


def test_stats(benchmark, queue):
    """Reading the counters (q.stats())."""
    benchmark(queue.stats)
