"""Futex system calls per message, idle and under a CPU hog (issue 12, finding 3).

One producer process and one consumer process (64-byte messages, every one
acked) move --messages messages through a queue of --capacity slots, first on
an idle machine, then with one busy-loop process per core (started and killed
here).  Reported per case: msg/s and futex calls per message, as medians of
--repeats runs, and the hog/idle throughput ratio.

Futex calls are counted two ways:

* ``ackring.backend.futex_counts()`` in each child (the core's own test
  counter of the FUTEX_WAIT / FUTEX_WAKE calls it made, next to each system
  call; no overhead).  Builds older than the counter have none: "-".
* with --perf, each child runs under ``perf stat -e
  syscalls:sys_enter_futex`` (a kernel tracepoint count: little overhead,
  the same runs give the throughput); with --strace, under ``strace -f -c
  -e trace=futex`` in extra runs (strace stops the process at every system
  call, which changes how often it sleeps: a distorted count, and no
  throughput).  Both count every futex call of the process, the
  interpreter's own included (a few dozen at start-up).

Only the public API common to every version is used (create/open, put with a
timeout, get, ack), so the same script measures an older build: run it with
that build's interpreter (``/work/venvs/old/bin/python bench/futex_hog.py
--perf``).

    python bench/futex_hog.py                         # 200,000 messages, 5 repeats
    python bench/futex_hog.py --perf --json
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)


# ------------------------------------------------------------------ children

def child(role, name, n):
    import ackring

    try:
        from ackring.backend import futex_counts
    except ImportError:           # a build without the counter
        futex_counts = None
    q = ackring.open(name, watchdog=None)
    body = b"x" * 64
    if role == "producer":
        cl = q.producer()
    else:
        cl = q.consumer()
    before = futex_counts() if futex_counts else None
    print("ready", flush=True)
    sys.stdin.readline()          # "go"
    t0 = time.perf_counter()
    if role == "producer":
        for _ in range(n):
            cl.put(body, timeout=60)
    else:
        for _ in range(n):
            cl.get(timeout=60).ack()
    elapsed = time.perf_counter() - t0
    after = futex_counts() if futex_counts else None
    out = {"role": role, "elapsed": elapsed}
    if before is not None:
        out["waits"], out["wakes"] = after[0] - before[0], after[1] - before[1]
    print(json.dumps(out), flush=True)
    cl.close()
    q.close()


# ------------------------------------------------------------------ parent

def _hogs(k):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def _kill(ps):
    for p in ps:
        if p.poll() is None:
            p.kill()
    for p in ps:
        p.wait()


def _strace_calls(path):
    """futex calls from a `strace -c` summary file (0 if none were made)."""
    with open(path) as f:
        for line in f:
            cols = line.split()
            if cols and cols[-1] == "futex":
                # % time, seconds, usecs/call, calls, [errors], syscall
                nums = [c for c in cols[:-1] if re.fullmatch(r"[0-9.]+", c)]
                return int(nums[3])
    return 0


def _perf_calls(path):
    """The sys_enter_futex count from a `perf stat -x,` file."""
    with open(path) as f:
        for line in f:
            cols = line.strip().split(",")
            if len(cols) > 2 and "sys_enter_futex" in cols[2]:
                return int(cols[0])
    raise RuntimeError("no futex count in %s" % path)


def one_run(n, capacity, hog, strace, tmp, perf=False):
    import ackring

    name = "futexhog-%d-%d" % (os.getpid(), time.monotonic_ns() % 10**9)
    q = ackring.create(name, capacity=capacity, message_size=64, watchdog=None)
    kids, hogs, files = [], [], []
    try:
        for role in ("consumer", "producer"):
            cmd = [sys.executable, HERE, "--child", role, "--name", name, "--messages", str(n)]
            if strace:
                out = os.path.join(tmp, "%s-%s.strace" % (name, role))
                files.append(out)
                cmd = ["strace", "-f", "-qq", "-c", "-e", "trace=futex", "-o", out] + cmd
            elif perf:
                out = os.path.join(tmp, "%s-%s.perf" % (name, role))
                files.append(out)
                cmd = ["perf", "stat", "-x,", "-e", "syscalls:sys_enter_futex", "-o", out, "--"] + cmd
            kids.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for k in kids:
            line = k.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError("child did not start: %r" % line)
        if hog:
            hogs = _hogs(os.cpu_count() or 1)
            time.sleep(0.2)       # let the hogs reach the run queue before the clock starts
        for k in kids:
            k.stdin.write("go\n")
            k.stdin.flush()
        res = {}
        for k in kids:
            r = json.loads(k.stdout.readline())
            res[r["role"]] = r
        for k in kids:
            k.stdin.close()
            if k.wait(60) != 0:
                raise RuntimeError("child exited with %r" % k.returncode)
    finally:
        _kill(hogs)
        _kill(kids)
        q.close()
        ackring.unlink(name, missing_ok=True)
    out = {"msg_s": n / res["consumer"]["elapsed"]}
    if "waits" in res["consumer"]:
        calls = sum(res[r]["waits"] + res[r]["wakes"] for r in res)
        out["futex_per_msg"] = calls / n
        out["waits"] = {r: res[r]["waits"] for r in res}
        out["wakes"] = {r: res[r]["wakes"] for r in res}
    if strace:
        out["strace_per_msg"] = sum(_strace_calls(f) for f in files) / n
    elif perf:
        out["perf_per_msg"] = sum(_perf_calls(f) for f in files) / n
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--capacity", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--strace", action="store_true", help="also count with strace -c (extra runs)")
    ap.add_argument("--perf", action="store_true", help="count with perf stat (syscalls:sys_enter_futex)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.name, a.messages)

    import ackring

    report = {"backend": str(ackring.backend), "nproc": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "messages": a.messages, "capacity": a.capacity, "repeats": a.repeats,
              "spin_us": os.environ.get("ACKRING_SPIN_US", "default"), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case, hog in (("idle", False), ("hog", True)):
            runs = [one_run(a.messages, a.capacity, hog, False, tmp, a.perf) for _ in range(a.repeats)]
            c = {"msg_s": statistics.median(r["msg_s"] for r in runs), "runs": runs}
            for k in ("futex_per_msg", "perf_per_msg"):
                if k in runs[0]:
                    c[k] = statistics.median(r[k] for r in runs)
            if a.strace:
                sruns = [one_run(a.messages, a.capacity, hog, True, tmp) for _ in range(a.repeats)]
                c["strace_per_msg"] = statistics.median(r["strace_per_msg"] for r in sruns)
                c["strace_runs"] = sruns
            report["cases"][case] = c
    report["loadavg_end"] = os.getloadavg()
    report["hog_idle_ratio"] = report["cases"]["hog"]["msg_s"] / report["cases"]["idle"]["msg_s"]
    if a.json:
        print(json.dumps(report, indent=1))
        return
    print("backend %s, nproc %d, load %.2f -> %.2f, %d messages x %d repeats, capacity %d, ACKRING_SPIN_US %s"
          % (report["backend"], report["nproc"], report["loadavg_start"][0], report["loadavg_end"][0],
             a.messages, a.repeats, a.capacity, report["spin_us"]))
    cols = (("futex_per_msg", "counter futex/msg"), ("perf_per_msg", "perf futex/msg"),
            ("strace_per_msg", "strace futex/msg"))
    print("%-5s %12s" % ("case", "msg/s") + "".join(" %18s" % t for _k, t in cols))
    for case, c in report["cases"].items():
        print("%-5s %12.0f" % (case, c["msg_s"]) +
              "".join(" %18s" % ("%.4f" % c[k] if k in c else "-") for k, _t in cols))
    print("hog/idle throughput ratio: %.2f" % report["hog_idle_ratio"])


if __name__ == "__main__":
    main()
