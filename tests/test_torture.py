"""Torture: producers and consumers SIGKILLed at random moments and replaced,
then the queue drained and every message accounted for.

The engine (and the exact accounting rules) is tests/_torture.py, shared with
bench/soak.py.  The default run is ~25 s of chaos; the slow variant runs for
$ACKRING_TORTURE_SECONDS (default 1800):

    ACKRING_TORTURE_SECONDS=1800 python -m pytest -m slow tests/test_torture.py
"""

import os

import pytest

import _torture

DEFAULT_SECONDS = 25.0
SLOW_SECONDS = float(os.environ.get("ACKRING_TORTURE_SECONDS", "1800"))


def _check(r, seconds):
    summary = r.summary()
    assert r.ok, "torture failed (seed %s):\n%s" % (r["seed"], summary)
    # the run did what it is for: traffic, kills of both kinds, redeliveries
    assert r["confirmed"] > 1000, summary
    assert r["producer_kills"] > 0 and r["consumer_kills"] > 0, summary
    assert r["delivered"] >= r["confirmed"], summary
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["after_ack"] == 0, summary
    assert r["seconds"] >= seconds, summary


@pytest.mark.timeout(int(DEFAULT_SECONDS) + 150)
def test_torture_random_kills(ackring_dir):
    r = _torture.run(DEFAULT_SECONDS, producers=2, consumers=2, capacity=16, qdir=ackring_dir)
    _check(r, DEFAULT_SECONDS)


@pytest.mark.timeout(160)
def test_torture_one_message_held_for_the_whole_run_and_stops(ackring_dir):
    """Core v2's point: one consumer holds a message from start to end (the
    strict ring of v1 stalled every producer after one lap), and workers are
    also SIGSTOPped now and then (the security issue's stalls)."""
    r = _torture.run(10.0, producers=2, consumers=2, capacity=8, qdir=ackring_dir, hold=True, stops=True)
    _check(r, 10.0)
    assert r["stops"] > 0, r.summary()
    assert r["stalls_over_2s"] == 0, r.summary()


@pytest.mark.timeout(160)
def test_torture_with_ack_leases(ackring_dir):
    """Kills and stops under 0.05 s ack leases: slow deliveries are taken
    back, and no message is ever delivered again after its ack returned.
    (Issue 13 item 9: about one run in three failed here until a get
    checked its copy against a lease that ran out before it was made;
    tests/test_recovery.py has the deterministic form.)"""
    r = _torture.run(10.0, producers=2, consumers=2, capacity=16, qdir=ackring_dir, lease=0.05, stops=True)
    _check(r, 10.0)


@pytest.mark.slow
@pytest.mark.timeout(int(SLOW_SECONDS) + 300)
def test_torture_long(ackring_dir):
    ledger = 1 << 24
    while ledger < 400_000 * SLOW_SECONDS and ledger < (1 << 30):
        ledger <<= 1
    r = _torture.run(SLOW_SECONDS, producers=2, consumers=2, capacity=16, qdir=ackring_dir,
                     ledger_size=ledger, log=print)
    print(r.summary())
    _check(r, SLOW_SECONDS)
