"""Child-process bodies for tests/test_review.py (issue 12, the review of the
v1 core at 533bc66).

Only the public API common to v1 and v2 is used by ``nack_close``, and it is
also a script, so the same race can be run against an older build:

    ACKRING_BACKEND=cffi python tests/_review_workers.py nack_close NAME MODE SECONDS MAX_SWAPS [NACKERS]

(the queue NAME must exist, in $ACKRING_DIR; it prints one JSON line).
"""
import json
import os
import sys
import threading
import time
import traceback

import ackring


# ------------------------------------------------------------ finding 2

def nack_close(name, mode, seconds, max_swaps, nackers=2):
    """Threads get + nack(requeue) whatever they can while another thread
    replaces the consumer (mode "consumer": a new consumer, then close the
    old one) or the whole queue handle (mode "queue": open again, then close
    the old handle with its consumer).  Runs until max_swaps swaps or
    `seconds`, whichever comes first; returns the counts."""
    def fresh():
        h = ackring.open(name, watchdog=None)
        return h, h.consumer()

    base = ackring.open(name, watchdog=None)
    cur = [fresh() if mode == "queue" else (base, base.consumer())]
    stop = threading.Event()
    mu = threading.Lock()
    counts = {"gets": 0, "nacks": 0, "nack_closed": 0, "nack_stale": 0, "get_closed": 0, "swaps": 0,
              "errors": []}

    def bump(k):
        with mu:
            counts[k] += 1

    def nacker():
        try:
            while not stop.is_set():
                c = cur[0][1]
                try:
                    m = c.get(timeout=0)
                except ackring.Empty:
                    continue
                except ackring.QueueClosed:
                    bump("get_closed")
                    continue
                bump("gets")
                try:
                    m.nack()
                    bump("nacks")
                except ackring.QueueClosed:
                    bump("nack_closed")
                except ackring.StaleDelivery:
                    bump("nack_stale")
        except BaseException:
            counts["errors"].append(traceback.format_exc())

    def closer():
        try:
            while not stop.is_set() and counts["swaps"] < max_swaps:
                old = cur[0]
                cur[0] = fresh() if mode == "queue" else (base, base.consumer())
                if mode == "queue":
                    old[0].close()
                else:
                    old[1].close()
                counts["swaps"] += 1
        except BaseException:
            counts["errors"].append(traceback.format_exc())
        stop.set()

    threads = [threading.Thread(target=nacker, daemon=True) for _ in range(nackers)]
    threads.append(threading.Thread(target=closer, daemon=True))
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    counts["hung_threads"] = sum(t.is_alive() for t in threads)
    cur[0][1].close()
    if mode == "queue":
        cur[0][0].close()
    base.close()
    return counts


def nack_close_paused(name, mode):
    """Finding 2, deterministic (cffi): a thread's nack parked inside its
    window (hook "pause:nack_ready": the slot READY again, its index not yet
    on the requeue ring) while this thread closes the consumer (mode
    "consumer") or the whole queue handle ("queue"); then the nack goes on.
    Returns what happened, and the consumer's entry as seen during the pause."""
    from ackring.backend import set_test_hook, test_hook_paused
    out = {}
    watch = ackring.open(name, watchdog=None)       # a second handle, to look
    q = ackring.open(name, watchdog=None)
    c = q.consumer()
    m = c.get(timeout=5)
    out["got"] = [m.id, m.delivery_count]
    mine = {e["index"] for e in watch._seg.entries() if e["pid"] == os.getpid()}

    def nack():
        try:
            m.nack()
            out["nack"] = "ok"
        except Exception as e:
            out["nack"] = type(e).__name__

    set_test_hook("pause:nack_ready")
    t = threading.Thread(target=nack, daemon=True)
    t.start()
    t_end = time.monotonic() + 10
    while not test_hook_paused():
        if time.monotonic() > t_end or not t.is_alive():
            out["parked"] = False
            test_hook_paused(release=True)
            t.join(10)
            return out
        time.sleep(0.001)  # poll interval of a bounded condition loop
    out["parked"] = True
    t0 = time.monotonic()
    if mode == "queue":
        q.close()
    else:
        c.close()
    out["close_s"] = time.monotonic() - t0
    # the nack is still a call in progress: its entry must not be released yet
    out["entries_during"] = sorted((e["index"], e["state"], e["role"]) for e in watch._seg.entries()
                                   if e["index"] in mine or e["pid"] == os.getpid())
    out["still_parked"] = test_hook_paused(release=True)
    t.join(10)
    out["nack_alive"] = t.is_alive()
    set_test_hook(None)
    q.close()
    out["entries_after"] = sorted((e["index"], e["state"], e["role"]) for e in watch._seg.entries()
                                  if e["pid"] == os.getpid())
    watch.close()
    return out


# ------------------------------------------------------------ finding 3

def futex_side(qname, role, n, start, conn):
    """One side of a 1P1C run: wait for `start`, move n messages, send back
    (futex waits, futex wakes, messages, in order?)."""
    from ackring.backend import futex_counts
    try:
        q = ackring.open(qname, watchdog=None)
        cl = q.producer() if role == "producer" else q.consumer()
        start.wait(30)
        w0, k0 = futex_counts()
        in_order = True
        if role == "producer":
            for i in range(n):
                cl.put(b"%08d" % i + b"." * 56, timeout=30)
        else:
            for i in range(n):
                m = cl.get(timeout=30)
                in_order = in_order and m.body[:8] == b"%08d" % i
                m.ack()
        w1, k1 = futex_counts()
        conn.send((role, w1 - w0, k1 - k0, n, in_order))
        cl.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    os._exit(0)


# ------------------------------------------------------------ finding 5

def scribbled_op(qname, op, conn):
    """Open the (scribbled) queue and do one operation; send back what
    happened: ("ok", detail), ("raised", exception name) or the open's error."""
    try:
        try:
            q = ackring.open(qname, watchdog=None)
        except ackring.IncompatibleQueue as e:        # CorruptedQueue is one
            conn.send(("open-raised", type(e).__name__))
            os._exit(0)
        t0 = time.monotonic()
        try:
            if op.startswith("put"):
                p = q.producer()
                r = p.put(b"after-scribble", timeout=0 if op == "put0" else 0.3)
            else:
                c = q.consumer()
                m = c.get(timeout=0 if op == "get0" else 0.3)
                r = m.id
                m.ack()
            out = ("ok", r)
        except (ackring.CorruptedQueue, ackring.Empty, ackring.Full) as e:
            out = ("raised", type(e).__name__)
        conn.send(out + (time.monotonic() - t0,))
    except BaseException:
        conn.send(("error", traceback.format_exc(), 0.0))
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "nack_close_paused":
        print(json.dumps(nack_close_paused(sys.argv[2], sys.argv[3])), flush=True)
    elif sys.argv[1] == "nack_close":
        name, mode, seconds, max_swaps = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
        nackers = int(sys.argv[6]) if len(sys.argv) > 6 else 2
        print(json.dumps(nack_close(name, mode, seconds, max_swaps, nackers)), flush=True)
    else:
        sys.exit("unknown worker %r" % sys.argv[1])
