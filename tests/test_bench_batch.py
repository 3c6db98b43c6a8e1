"""`ackring bench --batch N` runs ackring through its batch calls (put_batch
and get_batch + Batch.ack) and counts every message, a partial last batch
included."""

import multiprocessing

import pytest

from ackring._bench import harness, peers
from ackring._bench.common import Params


@pytest.mark.parametrize("n", [64 * 40, 64 * 40 + 7])
def test_batch_run_moves_every_message(n):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    ctx = multiprocessing.get_context("fork")
    peer = peers.PEERS["ackring"]
    params = Params(mode=peers.SPSC, messages=n, size=64, capacity=256, timeout=10.0, batch=64)
    got = harness.run_job(ctx, peer, params)
    assert got[("consumer", 0)]["count"] == n
    assert got[("producer", 0)]["api"] == "put_batch(64)"
    assert got[("consumer", 0)]["api"] == "get_batch(64)+Batch.ack"
