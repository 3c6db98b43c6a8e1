"""Cost of checksum=True (CRC32C per message) on shm queues (issue 13 item 7).

One process, one producer and one consumer: put, get, ack, one message at a
time (so nothing but the call path is measured, no cross-process wake), for
each size, with checksum=False and checksum=True interleaved in every repeat
(the ratio compares runs made a fraction of a second apart).  Reported:
ns per message (put + get + ack) over --repeat runs of --messages
messages: the median and the minimum of each, in CPU time of this process
(time.process_time_ns: what a loaded machine's preemptions do not inflate)
and in wall time, and the ratio checksum/plain of the CPU-time medians.

    python bench/checksum_cost.py                       # 64 B and 4 KiB, 7 repeats
    python bench/checksum_cost.py --sizes 64,4096,65536 --json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import ackring


def one_run(directory, name, size, n, checksum):
    q = ackring.create(name, dir=directory, capacity=64, message_size=max(size, 64), checksum=checksum,
                       watchdog=None)
    try:
        body = os.urandom(size)
        with q.producer() as p, q.consumer() as c:
            for _ in range(min(n, 1000)):          # warm-up
                p.put(body)
                c.get(timeout=1).ack()
            t0, c0 = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(n):
                p.put(body)
                c.get(timeout=1).ack()
            c1, t1 = time.process_time_ns(), time.perf_counter_ns()
        return (c1 - c0) / n, (t1 - t0) / n
    finally:
        q.close()
        ackring.unlink(name, dir=directory, missing_ok=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,4096")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    directory = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None, prefix="ackring-crc-")
    rows = []
    try:
        for size in [int(s) for s in a.sizes.split(",")]:
            runs = {False: [], True: []}
            for r in range(a.repeat):
                order = (False, True) if r % 2 == 0 else (True, False)
                for cs in order:
                    runs[cs].append(one_run(directory, "crc%d" % r, size, a.messages, cs))
            row = {"size": size}
            for k, label in ((0, "cpu"), (1, "wall")):
                pl = [x[k] for x in runs[False]]
                cs_ = [x[k] for x in runs[True]]
                row[label] = {"plain_median_ns": round(statistics.median(pl), 1),
                              "checksum_median_ns": round(statistics.median(cs_), 1),
                              "plain_min_ns": round(min(pl), 1), "checksum_min_ns": round(min(cs_), 1)}
                row[label]["ratio_median"] = round(row[label]["checksum_median_ns"] / row[label]["plain_median_ns"], 3)
                row[label]["ratio_min"] = round(row[label]["checksum_min_ns"] / row[label]["plain_min_ns"], 3)
            rows.append(row)
    finally:
        os.rmdir(directory)
    info = {"backend": os.environ.get("ACKRING_BACKEND", "cython"), "python": sys.version.split()[0],
            "messages": a.messages, "repeat": a.repeat, "load": os.getloadavg()}
    if a.json:
        print(json.dumps({"info": info, "rows": rows}, indent=1))
        return
    print("backend %(backend)s, Python %(python)s, %(messages)d messages x %(repeat)d repeats, load %(load)s" % info)
    print("%6s %5s %13s %13s %7s %11s %11s %7s" % ("size", "clock", "plain median", "crc median", "ratio",
                                                    "plain min", "crc min", "ratio"))
    for r in rows:
        for label in ("cpu", "wall"):
            d = r[label]
            print("%6d %5s %13.1f %13.1f %7.3f %11.1f %11.1f %7.3f" % (
                r["size"], label, d["plain_median_ns"], d["checksum_median_ns"], d["ratio_median"],
                d["plain_min_ns"], d["checksum_min_ns"], d["ratio_min"]))
    print("(ns per message: put + get + ack)")

if __name__ == "__main__":
    main()
