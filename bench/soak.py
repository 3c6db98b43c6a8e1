"""Soak: the torture test of tests/test_torture.py, run for N minutes.

    python bench/soak.py --minutes 30            # against the installed ackring
    python bench/soak.py --minutes 1 --json

Producer and consumer processes move 64-byte messages through a small queue
while this process SIGKILLs random ones at random moments and starts
replacements; afterwards the queue is drained and every message accounted for
(the engine, and what it checks, is tests/_torture.py - one copy, shared with
the test suite).  Prints a summary: confirmed, delivered, acked, redelivered
(duplicates by redelivery, which are allowed), duplicate first deliveries and
deliveries after ack (never allowed), kills, lost (must be 0), q.check().
Exit status 0 when the verdict is OK, 1 otherwise.
"""
import argparse
import json
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import _torture  # noqa: E402  (tests/_torture.py)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of chaos (default 30)")
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--capacity", type=int, default=16, help="queue capacity (small: the ring laps often)")
    ap.add_argument("--kill-min", type=float, default=0.05, help="shortest pause between kills, s")
    ap.add_argument("--kill-max", type=float, default=0.5, help="longest pause between kills, s")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rate-bound", type=float, default=400e3,
                    help="messages/s the ledger is sized for (chaos ends early if exceeded)")
    ap.add_argument("--hold", action="store_true",
                    help="one more consumer holds a message unsettled for the whole run")
    ap.add_argument("--lease", type=float, default=None, help="consumers' ack lease in seconds")
    ap.add_argument("--stops", action="store_true", help="also SIGSTOP workers for 10-100 ms")
    ap.add_argument("--durability", choices=("memory", "os", "sync"), default="memory",
                    help="os/sync: a file queue in --dir (a real filesystem)")
    ap.add_argument("--dir", default=None, help="directory for the queue (default a fresh one in /dev/shm)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    # SIGTERM ends the run through the engine's cleanup, which kills the workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    seconds = a.minutes * 60
    want = int(a.rate_bound * max(seconds, 10))
    ledger = 1 << 24
    while ledger < want and ledger < (1 << 30):
        ledger <<= 1
    log = (lambda s: print(s, file=sys.stderr, flush=True))
    log("soak: %.1f min, %d producers, %d consumers, capacity %d, ledger for %d messages"
        % (a.minutes, a.producers, a.consumers, a.capacity, ledger))
    r = _torture.run(seconds, producers=a.producers, consumers=a.consumers, capacity=a.capacity,
                     kill_interval=(a.kill_min, a.kill_max), seed=a.seed, ledger_size=ledger, log=log,
                     hold=a.hold, lease=a.lease, stops=a.stops, durability=a.durability, qdir=a.dir)
    if a.json:
        print(json.dumps(dict(r, ok=r.ok), default=str, indent=1))
    else:
        print("seed                   %s" % r["seed"])
        print(r.summary())
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
