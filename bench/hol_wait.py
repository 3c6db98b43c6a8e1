"""Producer wait with one message held (the head-of-line scenario of issue 8).

A worker process takes the first message and holds it for --hold seconds
before acking it; a second worker drains and acks everything else; the
producer (this process) puts --messages messages and times every put().
Reported: msg/s and put() wait p50 / p99 / max, with the held message and,
in the same run, without it (the ratio is the cost of the held message).

v1 tied storage to ring position, so after one lap of the ring every put
waited for the held message (max wait ~= --hold).  v2 keeps storage apart
from order: a put waits only while `capacity` messages are unsettled.

    python bench/hol_wait.py                      # capacity 8, 200,000 messages
    python bench/hol_wait.py --json

Only the public API common to every version is used, so the same script
measures an older build (run it with that build's interpreter).
"""
import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import ackring


def _holder(name, hold, ready):
    q = ackring.open(name)
    c = q.consumer()
    m = c.get(timeout=30)
    ready.set()
    time.sleep(hold)          # the "long job": what is measured is the others' wait
    m.ack()
    c.close()
    q.close()


def _drainer(name, n, done):
    q = ackring.open(name)
    c = q.consumer()
    for _ in range(n):
        c.get(timeout=60).ack()
    done.set()
    c.close()
    q.close()


def run(capacity, n, hold, held):
    name = "hol-%d-%d" % (os.getpid(), int(held))
    q = ackring.create(name, capacity=capacity, message_size=64)
    ctx = mp.get_context("fork")
    procs = []
    try:
        p = q.producer()
        body = b"x" * 64
        if held:
            ready = ctx.Event()
            procs.append(ctx.Process(target=_holder, args=(name, hold, ready), daemon=True))
            procs[-1].start()
            p.put(body, timeout=10)
            if not ready.wait(30):
                raise RuntimeError("the holder did not take its message")
        done = ctx.Event()
        procs.append(ctx.Process(target=_drainer, args=(name, n, done), daemon=True))
        procs[-1].start()
        waits = []
        clock = time.perf_counter
        t0 = clock()
        for _ in range(n):
            a = clock()
            p.put(body, timeout=hold + 30)
            waits.append(clock() - a)
        if not done.wait(60):
            raise RuntimeError("the drainer did not finish")
        elapsed = clock() - t0
        p.close()
        waits.sort()
        return {"held": held, "messages": n, "msg_per_s": n / elapsed,
                "put_wait_p50_us": waits[len(waits) // 2] * 1e6,
                "put_wait_p99_us": waits[int(len(waits) * 0.99)] * 1e6,
                "put_wait_max_us": waits[-1] * 1e6}
    finally:
        for pr in procs:
            pr.join(hold + 60)
            if pr.is_alive():
                pr.kill()
        q.close()
        ackring.unlink(name, missing_ok=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=int, default=8)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--hold", type=float, default=2.0, help="seconds the first message is held")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("ACKRING_DIR", tempfile.mkdtemp(dir="/dev/shm", prefix="ackring-hol-"))
    rows = {True: [], False: []}
    for _ in range(a.repeat):
        for held in (False, True):
            rows[held].append(run(a.capacity, a.messages, a.hold, held))
    med = {h: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "held"}
           for h, rs in rows.items()}
    out = {"version": getattr(ackring, "__version__", "?"), "capacity": a.capacity,
           "hold_s": a.hold, "repeat": a.repeat, "median": {"held": med[True], "free": med[False]},
           "held_over_free_msg_per_s": med[True]["msg_per_s"] / med[False]["msg_per_s"]}
    if a.json:
        print(json.dumps(out))
        return 0
    print("capacity %d, one message held %.1f s, medians of %d, %s" % (a.capacity, a.hold, a.repeat, sys.executable))
    print("%-28s %12s %12s %12s %12s" % ("", "msg/s", "p50 us", "p99 us", "max us"))
    for h, label in ((False, "nothing held"), (True, "first message held")):
        m = med[h]
        print("%-28s %12.0f %12.1f %12.1f %12.0f" % (label, m["msg_per_s"], m["put_wait_p50_us"],
                                                       m["put_wait_p99_us"], m["put_wait_max_us"]))
    print("held / nothing held, msg/s: %.2fx" % out["held_over_free_msg_per_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
