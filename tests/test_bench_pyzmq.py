"""The pyzmq peer of `ackring bench` delivers every message.

A PUSH that closes while its PULL is at RCVHWM (the PULL's I/O thread has
stopped reading) loses what is still in the kernel's socket buffer: libzmq
drops the connection on the hang-up without reading it, whatever the PUSH's
linger.  The bench's producer used to close as soon as it had sent its last
message, so on a loaded machine a consumer that had fallen behind got a few
hundred messages short and timed out.  Here the consumer is made to fall
behind on purpose (it sleeps before its first get, so the producer sends
everything and finishes meanwhile), and it must still get exactly n.
"""

import dataclasses
import multiprocessing
import time

import pytest

zmq = pytest.importorskip("zmq")

from ackring._bench import harness, peers  # noqa: E402
from ackring._bench.common import BenchError, Params  # noqa: E402

# More than the PULL's RCVHWM (1000): the rest waits in the kernel's buffer
# and the PUSH's pipe, and few enough that the producer finishes sending
# while the consumer sleeps.
N = 1500


def _lagging_open(handle, params, role, idx, clock):
    ends = peers._zmq_open(handle, params, role, idx, clock)
    if role == "consumer":
        get, first = ends.get, [True]

        def lagging_get():
            if first[0]:
                first[0] = False
                time.sleep(1.0)
            return get()

        ends.get = lagging_get
    return ends


@pytest.fixture
def fork_ctx():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method (the test peer is patched in the parent)")
    return multiprocessing.get_context("fork")


def test_spsc_consumer_behind_gets_every_message(fork_ctx, monkeypatch):
    peer = dataclasses.replace(peers.PEERS["pyzmq"], roles=peers._generic(_lagging_open))
    monkeypatch.setitem(peers.PEERS, "pyzmq", peer)
    params = Params(mode=peers.SPSC, messages=N, size=64, capacity=1024, timeout=3.0)
    t0 = time.monotonic()
    got = harness.run_job(fork_ctx, peer, params)
    assert got[("consumer", 0)]["count"] == N
    assert time.monotonic() - t0 < 8


def test_send_timeout_is_an_error():
    """A send that times out (no PULL at all here) fails the producer, with the count that went out."""
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDTIMEO, 50)
        s.bind("inproc://bench-no-consumer")
        ends = peers.Ends(put=s.send, full=(zmq.Again,))

        class _Clock:
            def start(self):
                pass

        params = Params(mode=peers.SPSC, messages=10, size=64, capacity=1024, timeout=0.05)
        with pytest.raises(BenchError, match=r"producer put only 0 of 10 messages"):
            peers._generic_produce(ends, params, _Clock(), 0)
    finally:
        ctx.destroy(0)
