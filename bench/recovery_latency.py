"""Recovery latency: SIGKILL a consumer holding k messages; how long until
another consumer, blocked in get(), receives them redelivered?

    python bench/recovery_latency.py                 # default settings (watchdog 0.1 s)
    python bench/recovery_latency.py -k 8 -r 50 --json
    python bench/recovery_latency.py --no-watchdog   # only the blocked get's own reclaim passes

Each round: the parent puts k messages; a victim process takes them (and
holds them); a waiter process is told to block in get(); after a random
0.15-0.35 s the parent SIGKILLs the victim and notes the time.  The waiter
notes when the first and the k-th redelivered message arrive (both clocks are
CLOCK_MONOTONIC, system-wide on Linux).  Prints median / p90 / max in ms of
"first" and "all k", over R rounds.
"""
import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time

import ackring


def _victim(name, k, watchdog, conn):
    q = ackring.open(name, watchdog=watchdog)
    c = q.consumer()
    held = [c.get(timeout=10) for _ in range(k)]
    conn.send([m.id for m in held])
    time.sleep(60)  # held until SIGKILLed (bounded: the parent kills us within a second)
    os._exit(1)


def _waiter(name, k, watchdog, conn):
    q = ackring.open(name, watchdog=watchdog)
    c = q.consumer()
    while True:
        if conn.recv() == "stop":
            break
        conn.send("blocking")
        try:
            m = c.get(timeout=30)
            t_first = time.monotonic()
            got = [m]
            while len(got) < k:
                got.append(c.get(timeout=30))
            t_all = time.monotonic()
        except ackring.Empty:
            conn.send(("timeout",))
            continue
        conn.send(("got", t_first, t_all, [m.id for m in got], all(m.redelivered for m in got)))
        for m in got:
            m.ack()
    c.close()
    q.close()
    os._exit(0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def run(k=4, rounds=20, watchdog=ackring.DEFAULT_WATCHDOG_INTERVAL, seed=None):
    rng = random.Random(seed)
    d = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None, prefix="ackring-lat-")
    old = os.environ.get("ACKRING_DIR")
    os.environ["ACKRING_DIR"] = d
    ctx = multiprocessing.get_context("fork")
    name = "latency-%d" % os.getpid()
    q = ackring.create(name, capacity=1024, message_size=64, watchdog=watchdog)
    p = q.producer()
    wconn, wchild = ctx.Pipe()
    waiter = ctx.Process(target=_waiter, args=(name, k, watchdog, wchild), daemon=True)
    waiter.start()
    first, every = [], []
    try:
        for _ in range(rounds):
            ids = p.put_many([b"r" * 64] * k, timeout=5)
            vconn, vchild = ctx.Pipe(duplex=False)
            victim = ctx.Process(target=_victim, args=(name, k, watchdog, vchild), daemon=True)
            victim.start()
            if not vconn.poll(10):
                raise RuntimeError("victim did not take its messages")
            held = vconn.recv()
            if held != ids:
                raise RuntimeError("victim holds %r, not %r" % (held, ids))
            wconn.send("go")
            if not wconn.poll(10) or wconn.recv() != "blocking":
                raise RuntimeError("waiter not ready")
            time.sleep(rng.uniform(0.15, 0.35))   # the waiter is blocked in get() by now
            t_kill = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
            if not wconn.poll(30):
                raise RuntimeError("no redelivery within 30 s")
            res = wconn.recv()
            if res[0] != "got":
                raise RuntimeError("waiter: %r" % (res,))
            _, t_first, t_all, got, redelivered = res
            if sorted(got) != ids or not redelivered:
                raise RuntimeError("waiter got %r (redelivered=%r), expected %r" % (got, redelivered, ids))
            first.append((t_first - t_kill) * 1e3)
            every.append((t_all - t_kill) * 1e3)
        wconn.send("stop")
        waiter.join(10)
    finally:
        if waiter.is_alive():
            waiter.kill()
            waiter.join(5)
        q.close()
        ackring.unlink(name, missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
        if old is None:
            os.environ.pop("ACKRING_DIR", None)
        else:
            os.environ["ACKRING_DIR"] = old

    def summary(xs):
        return {"median_ms": round(statistics.median(xs), 2), "p90_ms": round(pct(xs, 90), 2),
                "max_ms": round(max(xs), 2), "min_ms": round(min(xs), 2)}
    return {"k": k, "rounds": rounds, "watchdog_s": watchdog, "first": summary(first),
            "all": summary(every)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", type=int, default=4, help="messages the victim holds (default 4)")
    ap.add_argument("-r", "--rounds", type=int, default=20, help="repetitions (default 20)")
    ap.add_argument("--no-watchdog", action="store_true",
                    help="watchdog=None everywhere: only blocked calls reclaim")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(a.k, a.rounds, None if a.no_watchdog else ackring.DEFAULT_WATCHDOG_INTERVAL, a.seed)
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print("recovery latency, SIGKILL of a consumer holding %d -> redelivered to a blocked get "
              "(%d rounds, watchdog %s)" % (res["k"], res["rounds"], res["watchdog_s"]))
        for key in ("first", "all"):
            s = res[key]
            print("  %-5s median %7.2f ms   p90 %7.2f ms   max %7.2f ms   min %7.2f ms"
                  % (key, s["median_ms"], s["p90_ms"], s["max_ms"], s["min_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
