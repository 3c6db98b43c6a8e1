"""``ackring bench --mode durable``: file-backed queues against local
durable peers, measured in one run.

Cells: durability "os" and "sync" × 64 B and 4 KiB × 1 and 4 producer
processes.  Each producer puts its share one message at a time (every put
waits for its confirm: under "sync", for the fdatasync that covers it); the
queue is sized to hold the whole run, then drained and every message counted.
Reported: msg/s (messages / wall time from all producers ready to the last
confirm), syncs/s and messages per sync (the group-commit factor, from the
queue's ``syncs`` counter), p50/p99 confirm latency, and the ratio of "os"
to the same run on a /dev/shm ("memory") queue.

Peers, in the same run: a plain sqlite3 table in WAL mode (stdlib; one
INSERT + COMMIT per message, synchronous=FULL, one connection per producer
process), persist-queue's SQLiteAckQueue when installed (one process:
its maintainers do not support several; 4 producers are 4 threads with
multithreading=True), and RabbitMQ persistent messages with publisher
confirms when $ACKRING_AMQP_URL is set (skipped with a note otherwise).

The files go to $ACKRING_BENCH_DIR, or a temporary directory under the
current one (a real filesystem: fdatasync on tmpfs costs nothing).

    python -m ackring._bench.durable --messages 20000 --repeat 3
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from .common import machine_info
from .harness import percentile

SIZES = (64, 4096)
PRODUCERS = (1, 4)
DURABILITIES = ("os", "sync")
BATCH = 64  # the put_many row: one confirm (one shared sync) per 64 messages


# ------------------------------------------------------------------ workers

def _ackring_producer(path: str, n: int, size: int, tag: int, barrier: Any, out: Any, timed: bool,
                      batch: int = 1) -> None:
    import ackring
    q = ackring.open(path=path, watchdog=None)
    body = bytes([tag]) * size
    lat: List[float] = []
    with q.producer() as p:
        barrier.wait(60)
        t0 = time.perf_counter()
        if batch > 1:
            for i in range(0, n, batch):
                a = time.perf_counter()
                p.put_many([body] * min(batch, n - i))
                lat.append(time.perf_counter() - a)
        elif timed:
            for _ in range(n):
                a = time.perf_counter()
                p.put(body)
                lat.append(time.perf_counter() - a)
        else:
            for _ in range(n):
                p.put(body)
        t1 = time.perf_counter()
    q.close()
    out.put((t0, t1, lat[:: max(1, len(lat) // 5000)]))


def _sqlite_producer(path: str, n: int, size: int, tag: int, barrier: Any, out: Any, timed: bool) -> None:
    import sqlite3
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    body = bytes([tag]) * size
    lat: List[float] = []
    barrier.wait(60)
    t0 = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO q(body) VALUES (?)", (body,))
        db.execute("COMMIT")
        if timed:
            lat.append(time.perf_counter() - a)
    t1 = time.perf_counter()
    db.close()
    out.put((t0, t1, lat[:: max(1, len(lat) // 5000)]))


def _procs(target: Any, path: str, n: int, size: int, k: int, timeout: float, batch: int = 1) -> Dict[str, Any]:
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(k)
    out = ctx.Queue()
    share = [n // k + (1 if i < n % k else 0) for i in range(k)]
    ps = [ctx.Process(target=target, args=(path, share[i], size, i + 1, barrier, out, True) + ((batch,) if batch > 1 else ()),
                      daemon=True)
          for i in range(k)]
    for p in ps:
        p.start()
    try:
        rows = [out.get(timeout=timeout) for _ in ps]
        for p in ps:
            p.join(timeout)
            if p.exitcode != 0:
                raise RuntimeError("a producer failed (exit %s)" % p.exitcode)
    finally:
        for p in ps:
            if p.is_alive():
                p.kill()
                p.join()
    t0 = min(r[0] for r in rows)
    t1 = max(r[1] for r in rows)
    lat = [x for r in rows for x in r[2]]
    return {"seconds": t1 - t0, "lat": lat}


def _ackring_cell(d: str, durability: str, size: int, k: int, n: int, timeout: float,
                  batch: int = 1) -> Dict[str, Any]:
    import ackring
    cap = 2
    while cap < n:
        cap <<= 1
    kw: Dict[str, Any] = {"durability": durability}
    if durability == "memory":
        name = "bench-%d" % os.getpid()
        q = ackring.create(name, capacity=cap, message_size=size)
    else:
        q = ackring.create(path=os.path.join(d, "q-%s-%d-%d-%d" % (durability, size, k, batch)), capacity=cap,
                           message_size=size, **kw)
    try:
        s0 = q.stats().get("syncs", 0)
        r = _procs(_ackring_producer, q.path, n, size, k, timeout, batch)
        syncs = q.stats().get("syncs", 0) - s0
        got = 0
        with q.consumer() as c:
            while True:
                try:
                    ms = c.get_many(1024, timeout=0)
                except ackring.Empty:
                    break
                got += len(ms)
                c.ack_many(ms)
        if got != n:
            raise RuntimeError("ackring %s: %d messages put, %d drained" % (durability, n, got))
    finally:
        path = q.path
        q.close()
        ackring.unlink(path=path, missing_ok=True)
    r["syncs"] = syncs
    return r


def _sqlite_cell(d: str, size: int, k: int, n: int, timeout: float) -> Dict[str, Any]:
    import sqlite3
    path = os.path.join(d, "wal-%d-%d.db" % (size, k))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE q(id INTEGER PRIMARY KEY, body BLOB)")
    db.close()
    r = _procs(_sqlite_producer, path, n, size, k, timeout)
    db = sqlite3.connect(path)
    got = db.execute("SELECT count(*) FROM q").fetchone()[0]
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    if got != n:
        raise RuntimeError("sqlite3: %d inserted, %d stored" % (n, got))
    return r


def _persist_cell(d: str, size: int, k: int, n: int, timeout: float) -> Dict[str, Any]:
    import persistqueue
    path = tempfile.mkdtemp(dir=d, prefix="pq-")
    q = persistqueue.SQLiteAckQueue(path, auto_commit=True, multithreading=k > 1)
    body = b"x" * size
    share = [n // k + (1 if i < n % k else 0) for i in range(k)]
    lats: List[List[float]] = [[] for _ in range(k)]
    errs: List[BaseException] = []
    go = threading.Barrier(k)

    def run(i: int) -> None:
        try:
            go.wait(60)
            for _ in range(share[i]):
                a = time.perf_counter()
                q.put(body)
                lats[i].append(time.perf_counter() - a)
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    t0 = time.perf_counter()
    if k == 1:
        run(0)  # without multithreading=True the connection is this thread's
    else:
        ts = [threading.Thread(target=run, args=(i,)) for i in range(k)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout)
    t1 = time.perf_counter()
    if errs:
        raise errs[0]
    got = q.qsize()
    shutil.rmtree(path, ignore_errors=True)
    if got != n:
        raise RuntimeError("persist-queue: %d put, %d stored" % (n, got))
    return {"seconds": t1 - t0, "lat": [x for lt in lats for x in lt]}


def _amqp_cell(size: int, k: int, n: int, timeout: float) -> Dict[str, Any]:
    import pika
    url = os.environ["ACKRING_AMQP_URL"]
    qname = "ackring-durable-bench-%d" % os.getpid()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(qname, durable=True)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    body = b"x" * size
    lat: List[float] = []
    t0 = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        ch.basic_publish("", qname, body, props, mandatory=True)
        lat.append(time.perf_counter() - a)
    t1 = time.perf_counter()
    got = ch.queue_declare(qname, durable=True, passive=True).method.message_count
    ch.queue_delete(qname)
    conn.close()
    if got != n:
        raise RuntimeError("rabbitmq: %d confirmed, %d in the queue" % (n, got))
    return {"seconds": t1 - t0, "lat": lat, "note": "1 connection (producers=1 only)"}


# ------------------------------------------------------------------ driver

def run(messages: int = 20000, repeat: int = 3, directory: Optional[str] = None, timeout: float = 300.0,
        sizes=SIZES, producers=PRODUCERS, progress=None) -> Dict[str, Any]:
    notes: List[str] = []
    base = directory or os.environ.get("ACKRING_BENCH_DIR") or os.getcwd()
    d = tempfile.mkdtemp(dir=base, prefix="ackring-durable-bench-")
    try:
        fs = os.popen("stat -f -c %%T %s" % d).read().strip()
        if fs in ("tmpfs", "ramfs"):
            notes.append("%s is %s: fdatasync costs nothing there, the \"sync\" figures mean little" % (d, fs))
        peers: List[str] = ["ackring:os", "ackring:sync", "ackring:sync:put_many%d" % BATCH, "ackring:memory",
                            "sqlite3-wal"]
        try:
            import persistqueue  # noqa: F401
            peers.append("persist-queue")
        except ImportError:
            notes.append("persist-queue not installed: SQLiteAckQueue not measured (pip install 'ackring[bench]')")
        if os.environ.get("ACKRING_AMQP_URL"):
            peers.append("rabbitmq")
        else:
            notes.append("RabbitMQ persistent+confirms not measured: set ACKRING_AMQP_URL to a broker")
        runs: Dict[tuple, List[Dict[str, Any]]] = {}
        for rep in range(repeat):
            for size in sizes:
                for k in producers:
                    for peer in peers:
                        if peer == "rabbitmq" and k > 1:
                            continue
                        if progress:
                            progress("durable %s %dB %dp %d/%d" % (peer, size, k, rep + 1, repeat))
                        # SQLite peers are ~100x slower: fewer messages, same per-message cost
                        n = messages if peer.startswith("ackring") else max(200, messages // 20)
                        try:
                            if peer.startswith("ackring:"):
                                parts = peer.split(":")
                                b = int(parts[2][8:]) if len(parts) > 2 else 1
                                r = _ackring_cell(d, parts[1], size, k, n, timeout, b)
                            elif peer == "sqlite3-wal":
                                r = _sqlite_cell(d, size, k, n, timeout)
                            elif peer == "persist-queue":
                                r = _persist_cell(d, size, k, n, timeout)
                            else:
                                r = _amqp_cell(size, k, n, timeout)
                        except Exception as e:  # a peer's failure is a note, ackring's an error
                            if peer.startswith("ackring"):
                                raise
                            notes.append("%s %dB %dp: %s" % (peer, size, k, e))
                            continue
                        r["messages"] = n
                        runs.setdefault((peer, size, k), []).append(r)
        rows = []
        for (peer, size, k), rs in runs.items():
            rate = statistics.median(r["messages"] / r["seconds"] for r in rs)
            lat = sorted(x for r in rs for x in r["lat"])
            row: Dict[str, Any] = {"peer": peer, "size": size, "producers": k, "msg_per_s": rate,
                                   "runs_msg_per_s": [r["messages"] / r["seconds"] for r in rs],
                                   "p50_confirm_us": percentile(lat, 50) * 1e6 if lat else 0,
                                   "p99_confirm_us": percentile(lat, 99) * 1e6 if lat else 0}
            if "syncs" in rs[0]:
                row["syncs_per_s"] = statistics.median(r["syncs"] / r["seconds"] for r in rs)
                synced = [r["messages"] / r["syncs"] for r in rs if r["syncs"]]
                row["msgs_per_sync"] = statistics.median(synced) if synced else None
            rows.append(row)
        by = {(r["peer"], r["size"], r["producers"]): r for r in rows}
        for r in rows:
            key = (r["size"], r["producers"])
            if r["peer"] == "ackring:os" and ("ackring:memory",) + key in by:
                r["over_shm"] = r["msg_per_s"] / by[("ackring:memory",) + key]["msg_per_s"]
            if r["peer"].startswith("ackring:sync"):
                for peer in ("persist-queue", "sqlite3-wal"):
                    other = by.get((peer,) + key)
                    if other:
                        r["over_" + peer] = r["msg_per_s"] / other["msg_per_s"]
        return {"machine": machine_info("fork"), "dir": d, "filesystem": fs, "notes": notes,
                "params": {"messages": messages, "repeat": repeat, "sizes": list(sizes),
                           "producers": list(producers)},
                "results": {"durable": rows}}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def print_table(out: Dict[str, Any], file: Any = None) -> None:
    file = file or sys.stdout
    w = lambda s="": print(s, file=file)  # noqa: E731
    m = out["machine"]
    w("ackring bench --mode durable: median of %d repeat(s); %s on %s" % (out["params"]["repeat"], out["dir"],
                                                                         out["filesystem"]))
    w("cpu: %s (%s cores); kernel %s; load average %s" % (m.get("cpu_model"), m.get("cpu_count"), m.get("kernel"),
                                                         m.get("loadavg_at_start")))
    hdr = ("peer", "size", "prod", "msg/s", "syncs/s", "msg/sync", "p50 us", "p99 us", "ratio")
    rows = []
    for r in out["results"]["durable"]:
        ratio = ", ".join("%s %.2fx" % (k[5:], v) for k, v in r.items() if k.startswith("over_"))
        rows.append((r["peer"], str(r["size"]), str(r["producers"]), "{:,.0f}".format(r["msg_per_s"]),
                     "{:,.0f}".format(r["syncs_per_s"]) if r.get("syncs_per_s") else "",
                     "%.1f" % r["msgs_per_sync"] if r.get("msgs_per_sync") else "",
                     "%.0f" % r["p50_confirm_us"], "%.0f" % r["p99_confirm_us"], ratio))
    widths = [max(len(x[i]) for x in rows + [hdr]) for i in range(len(hdr))]
    for row in [hdr] + rows:
        w("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
    for n in out["notes"]:
        w("note: " + n)


def run_bench(args: argparse.Namespace) -> int:
    """Entry for ``ackring bench --mode durable`` (uses --messages, --repeat, --timeout, --json)."""
    out = run(messages=args.messages, repeat=args.repeat, directory=getattr(args, "dir", None),
              timeout=getattr(args, "timeout", None) or 300.0)
    if getattr(args, "json", False):
        print(json.dumps(out, indent=2, default=str))
    else:
        print_table(out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ackring._bench.durable", description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", "-n", type=int, default=20000)
    ap.add_argument("--repeat", "-r", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the files go (a real filesystem; default: cwd)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    out = run(messages=a.messages, repeat=a.repeat, directory=a.dir, timeout=a.timeout,
              progress=None)
    if a.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_table(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
