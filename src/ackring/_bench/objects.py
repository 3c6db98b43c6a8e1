"""``ackring bench --mode objects`` and ``--mode asyncio``.

objects: Python objects through queues, SPSC (one producer process, one
consumer process), every object unpickled by the consumer:

- ``ackring.mp`` -- ackring.mp.Queue put / get (protocol 5, out-of-band
  buffers written into the slot; get acks once unpickled);
- ``mp.Queue``    -- multiprocessing.Queue put / get;
- ``faster-fifo`` -- faster_fifo.Queue put / get (when installed);

with two payloads: ``dict10`` (a dict of 10 fields) and ``ndarray1M`` (a
1 MiB float64 numpy array; needs numpy).  Throughput = objects / (time from
both processes at the start gate to the consumer holding the last object).

asyncio: 64 B ackring messages consumed three ways in the consumer process:

- ``blocking``             -- a plain ``c.get()`` + ``m.ack()`` loop (no event loop);
- ``thread->asyncio.Queue`` -- the usual bridge: a thread blocks in
  ``c.get()`` and hands each message to the loop with
  ``loop.call_soon_threadsafe(aq.put_nowait, m)``; a coroutine acks it;
- ``ackring.aio``          -- ``async for m in AsyncConsumer(c): m.ack()``;

as throughput (a blocking producer process floods the queue) and as
ping-pong round-trip latency (a blocking ping process; the echo process
receives the three ways above and answers with ``p.put`` / ``aput``).
"""

from __future__ import annotations

import argparse
import json
import queue as _queue
import statistics
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import BenchError, fmt_size, machine_info, now_ns, payload
from .peers import _token

MODES = ("objects", "asyncio")
OBJ_PEERS = ("ackring.mp", "mp.Queue", "faster-fifo")
PAYLOADS = ("dict10", "ndarray1M")
AIO_VARIANTS = ("blocking", "thread->asyncio.Queue", "ackring.aio")
ARRAY_ITEMS = 1 << 17  # float64: 1 MiB


# ------------------------------------------------------------------ payloads


def make_payload(kind: str) -> Any:
    if kind == "dict10":
        return {"id": 123456, "user": "user-000042", "score": 3.14159, "active": True,
                "tags": ["alpha", "beta"], "ts": 1700000000.25, "name": "x" * 20,
                "count": 42, "ratio": 0.5, "meta": None}
    if kind == "ndarray1M":
        import numpy as np

        return np.arange(ARRAY_ITEMS, dtype=np.float64)
    raise ValueError(kind)


def payload_bytes(kind: str) -> int:
    return ARRAY_ITEMS * 8 if kind == "ndarray1M" else 0


def _same(kind: str, x: Any) -> bool:
    if kind == "ndarray1M":
        import numpy as np

        return isinstance(x, np.ndarray) and np.array_equal(x, make_payload(kind))
    return x == make_payload(kind)


def _importable(mod: str) -> Optional[str]:
    try:
        __import__(mod)
    except Exception as e:
        return "%s: %s" % (mod, e)
    return None


# --------------------------------------------------------------- processes


def _child(idx: int, fn: Callable[..., dict], args: tuple, barrier: Any, results: Any, timeout: float) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = fn(*args, gate=lambda: barrier.wait(timeout))
        results.put((idx, None, out))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        try:
            barrier.abort()
        except Exception:
            pass
        msg = str(e) if isinstance(e, BenchError) else "".join(
            traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
        results.put((idx, msg, None))


def _run(ctx: Any, jobs: Sequence[Tuple[Callable[..., dict], tuple]], timeout: float, what: str) -> List[dict]:
    """Run each (fn, args) in a child process; fn(*args, gate=...) returns a dict."""
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(i, fn, args, barrier, results, timeout), daemon=True,
                         name="ackring-bench-%s-%d" % (what.replace(" ", "-"), i))
             for i, (fn, args) in enumerate(jobs)]
    try:
        for p in procs:
            p.start()
        got: Dict[int, dict] = {}
        deadline = time.monotonic() + 60 + 4 * timeout
        while len(got) < len(jobs):
            try:
                idx, err, out = results.get(timeout=0.2)
            except _queue.Empty:
                if time.monotonic() > deadline:
                    raise BenchError("%s: run did not finish in time" % what) from None
                dead = [p for i, p in enumerate(procs) if i not in got and p.exitcode not in (None, 0)]
                if dead:
                    raise BenchError("%s: %s died (exit code %s)" % (what, dead[0].name, dead[0].exitcode))
                continue
            if err is not None:
                raise BenchError("%s: %s" % (what, err))
            got[idx] = out
        for p in procs:
            p.join(30)
        return [got[i] for i in range(len(jobs))]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        results.close()


# ------------------------------------------------------------- objects mode


def _obj_setup(peer: str, kind: str, capacity: int, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    if peer == "ackring.mp":
        from .. import mp as amp

        size = max(1024, amp.encoded_size(make_payload(kind)))
        q = amp.Queue(capacity, message_size=size, name="bench-obj-" + _token())
        return q, q.close
    if peer == "mp.Queue":
        q = ctx.Queue(maxsize=capacity)

        def cleanup() -> None:
            q.close()
            q.join_thread()

        return q, cleanup
    if peer == "faster-fifo":
        import faster_fifo

        per = max(1024, payload_bytes(kind) + 4096)
        q = faster_fifo.Queue(max_size_bytes=capacity * per)
        return q, q.close
    raise ValueError(peer)


def _obj_ends(peer: str, q: Any, timeout: float) -> Tuple[Callable[[Any], Any], Callable[[], Any]]:
    if peer == "ackring.mp":
        q._producer(), q._consumer()  # register now, not inside the timed loop
        return (lambda x: q.put(x, True, timeout)), (lambda: q.get(True, timeout))
    return (lambda x: q.put(x, block=True, timeout=timeout)), (lambda: q.get(block=True, timeout=timeout))


def _obj_producer(peer: str, q: Any, kind: str, n: int, timeout: float, gate: Callable[[], Any]) -> dict:
    obj = make_payload(kind)
    put, _ = _obj_ends(peer, q, timeout)
    gate()
    t0 = now_ns()
    for _ in range(n):
        put(obj)
    return {"start": t0}


def _obj_consumer(peer: str, q: Any, kind: str, n: int, timeout: float, gate: Callable[[], Any]) -> dict:
    _, get = _obj_ends(peer, q, timeout)
    gate()
    t0 = now_ns()
    try:
        for i in range(n - 1):
            get()
        i = n - 1
        last = get()
    except _queue.Empty:
        raise BenchError("consumer got only %d of %d objects before a get timed out" % (i, n)) from None
    t1 = now_ns()
    if not _same(kind, last):
        raise BenchError("the last object arrived different from what was sent")
    try:
        if peer == "ackring.mp":
            q.get(True, 0.05)
        else:
            q.get(block=True, timeout=0.05)
    except _queue.Empty:
        pass
    else:
        raise BenchError("more objects arrived than were sent")
    return {"start": t0, "stop": t1}


def _objects(args: argparse.Namespace, ctx: Any, peers: List[str], notes: List[str],
             progress: Callable[[str], None]) -> List[Dict[str, Any]]:
    kinds = [k for k in PAYLOADS if k != "ndarray1M" or not _importable("numpy")]
    if "ndarray1M" not in kinds:
        notes.append("ndarray1M not measured: numpy is not installed")
    runs: Dict[Tuple[str, str], List[float]] = {}
    counts: Dict[Tuple[str, str], int] = {}
    for kind in kinds:
        nbytes = payload_bytes(kind)
        if nbytes:
            n = max(100, min(args.messages, args.max_bytes // nbytes))
            capacity = max(8, min(args.capacity, args.ring_bytes // nbytes))
        else:
            n = max(1000, args.messages // 2)
            capacity = args.capacity
        for peer in peers:
            counts[(kind, peer)] = n
            runs[(kind, peer)] = []
        counts[(kind, "_capacity")] = capacity
    for rep in range(args.repeat):
        for kind in kinds:
            capacity = counts[(kind, "_capacity")]
            for peer in peers:
                n = counts[(kind, peer)]
                progress("objects %s %s %d/%d" % (kind, peer, rep + 1, args.repeat))
                q, cleanup = _obj_setup(peer, kind, capacity, ctx)
                try:
                    prod, cons = _run(ctx, [(_obj_producer, (peer, q, kind, n, args.timeout)),
                                            (_obj_consumer, (peer, q, kind, n, args.timeout))],
                                      args.timeout, "objects %s %s" % (kind, peer))
                finally:
                    cleanup()
                elapsed = (cons["stop"] - min(prod["start"], cons["start"])) / 1e9
                runs[(kind, peer)].append(n / elapsed)
    rows = []
    for kind in kinds:
        ref = runs.get((kind, "ackring.mp"))
        for peer in peers:
            rates = runs[(kind, peer)]
            med = statistics.median(rates)
            row = {"payload": kind, "peer": peer, "objects": counts[(kind, peer)],
                   "capacity": counts[(kind, "_capacity")], "repeats": len(rates),
                   "obj_per_s": med, "mb_per_s": med * payload_bytes(kind) / 1e6 if payload_bytes(kind) else None,
                   "runs_obj_per_s": rates}
            if ref and peer != "ackring.mp":
                row["ackring_mp_over_peer"] = statistics.median(ref) / med
                row["ackring_mp_over_peer_paired"] = statistics.median([a / b for a, b in zip(ref, rates)])
            rows.append(row)
    return rows


# -------------------------------------------------------------- asyncio mode


def _aio_producer(name: str, n: int, timeout: float, gate: Callable[[], Any]) -> dict:
    import ackring

    data = payload(64)
    with ackring.open(name) as q, q.producer() as p:
        put = p.put
        gate()
        t0 = now_ns()
        for _ in range(n):
            put(data, timeout=timeout)
    return {"start": t0}


def _aio_consumer(name: str, n: int, timeout: float, variant: str, gate: Callable[[], Any]) -> dict:
    import asyncio

    import ackring

    with ackring.open(name) as q, q.consumer() as c:
        if variant == "blocking":
            get = c.get
            gate()
            t0 = now_ns()
            for _ in range(n):
                get(timeout=timeout).ack()
            t1 = now_ns()
        elif variant == "thread->asyncio.Queue":
            async def bridge() -> Tuple[int, int]:
                loop = asyncio.get_running_loop()
                aq: asyncio.Queue = asyncio.Queue()

                def reader() -> None:
                    get, hand = c.get, loop.call_soon_threadsafe
                    try:
                        for _ in range(n):
                            hand(aq.put_nowait, get(timeout=timeout))
                    except Exception as e:  # noqa: BLE001 - the coroutine reports it
                        hand(aq.put_nowait, e)

                gate()
                t0 = now_ns()
                th = threading.Thread(target=reader, daemon=True)
                th.start()
                for _ in range(n):
                    m = await asyncio.wait_for(aq.get(), timeout)
                    if isinstance(m, Exception):
                        raise m
                    m.ack()
                t1 = now_ns()
                th.join(timeout)
                return t0, t1

            t0, t1 = asyncio.run(bridge())
        else:
            from .. import aio

            async def native() -> Tuple[int, int]:
                ac = aio.AsyncConsumer(c)
                got = 0
                gate()
                t0 = now_ns()
                while got < n:
                    (await ac.aget(timeout=timeout)).ack()
                    got += 1
                return t0, now_ns()

            t0, t1 = asyncio.run(native())
        try:
            c.get(timeout=0.05).ack()
        except ackring.Empty:
            pass
        else:
            raise BenchError("more messages arrived than were sent")
    return {"start": t0, "stop": t1}


def _aio_ping(names: List[str], rounds: int, warmup: int, timeout: float, gate: Callable[[], Any]) -> dict:
    import ackring

    data = payload(64)
    pc = time.perf_counter_ns
    samples = [0] * rounds
    with ackring.open(names[0]) as qa, ackring.open(names[1]) as qb, qa.producer() as p, qb.consumer() as c:
        put, get = p.put, c.get
        gate()
        try:
            for _ in range(warmup):
                put(data)
                get(timeout=timeout).ack()
            for i in range(rounds):
                t0 = pc()
                put(data)
                m = get(timeout=timeout)
                samples[i] = pc() - t0
                m.ack()
        except ackring.Empty:
            raise BenchError("an echo did not come back within %gs" % timeout) from None
    return {"samples": samples}


def _aio_echo(names: List[str], total: int, timeout: float, variant: str, gate: Callable[[], Any]) -> dict:
    import asyncio

    import ackring

    with ackring.open(names[0]) as qa, ackring.open(names[1]) as qb, qa.consumer() as c, qb.producer() as p:
        if variant == "blocking":
            get, put = c.get, p.put
            gate()
            for _ in range(total):
                m = get(timeout=timeout)
                put(m.body)
                m.ack()
        elif variant == "thread->asyncio.Queue":
            async def bridge() -> None:
                loop = asyncio.get_running_loop()
                aq: asyncio.Queue = asyncio.Queue()

                def reader() -> None:
                    get, hand = c.get, loop.call_soon_threadsafe
                    try:
                        for _ in range(total):
                            hand(aq.put_nowait, get(timeout=timeout))
                    except Exception as e:  # noqa: BLE001
                        hand(aq.put_nowait, e)

                gate()
                th = threading.Thread(target=reader, daemon=True)
                th.start()
                for _ in range(total):
                    m = await asyncio.wait_for(aq.get(), timeout)
                    if isinstance(m, Exception):
                        raise m
                    p.put(m.body, timeout=0)
                    m.ack()
                th.join(timeout)

            asyncio.run(bridge())
        else:
            from .. import aio

            async def native() -> None:
                ac, ap = aio.AsyncConsumer(c), aio.AsyncProducer(p)
                gate()
                for _ in range(total):
                    m = await ac.aget(timeout=timeout)
                    await ap.aput(m.body, timeout=timeout)
                    m.ack()

            asyncio.run(native())
    return {}


def _pct(s: Sequence[int], q: float) -> float:
    from .harness import percentile

    return percentile(s, q) / 1e3


def _asyncio(args: argparse.Namespace, ctx: Any, notes: List[str],
             progress: Callable[[str], None]) -> Dict[str, List[Dict[str, Any]]]:
    import ackring

    n = args.messages
    thr: Dict[str, List[float]] = {v: [] for v in AIO_VARIANTS}
    lat: Dict[str, List[Dict[str, float]]] = {v: [] for v in AIO_VARIANTS}
    for rep in range(args.repeat):
        for v in AIO_VARIANTS:
            progress("asyncio throughput %s %d/%d" % (v, rep + 1, args.repeat))
            name = "bench-aio-" + _token()
            ackring.create(name, capacity=args.capacity, message_size=64).close()
            try:
                prod, cons = _run(ctx, [(_aio_producer, (name, n, args.timeout)),
                                        (_aio_consumer, (name, n, args.timeout, v))],
                                  args.timeout, "asyncio %s" % v)
            finally:
                ackring.unlink(name, missing_ok=True)
            thr[v].append(n / ((cons["stop"] - min(prod["start"], cons["start"])) / 1e9))
        for v in AIO_VARIANTS:
            progress("asyncio latency %s %d/%d" % (v, rep + 1, args.repeat))
            base = "bench-aio-" + _token()
            names = [base + "-ping", base + "-pong"]
            for nm in names:
                ackring.create(nm, capacity=64, message_size=64).close()
            try:
                ping, _ = _run(ctx, [(_aio_ping, (names, args.rounds, args.warmup, args.timeout)),
                                     (_aio_echo, (names, args.rounds + args.warmup, args.timeout, v))],
                               args.timeout, "asyncio latency %s" % v)
            finally:
                for nm in names:
                    ackring.unlink(nm, missing_ok=True)
            s = sorted(ping["samples"])
            lat[v].append({"p50_us": _pct(s, 50), "p99_us": _pct(s, 99), "p999_us": _pct(s, 99.9)})
    ref = statistics.median(thr["blocking"])
    trows = []
    for v in AIO_VARIANTS:
        med = statistics.median(thr[v])
        trows.append({"variant": v, "messages": n, "size": 64, "repeats": len(thr[v]), "msg_per_s": med,
                      "runs_msg_per_s": thr[v], "over_blocking": med / ref,
                      "over_blocking_paired": statistics.median([a / b for a, b in zip(thr[v], thr["blocking"])])})
    lrows = []
    ref50 = statistics.median([r["p50_us"] for r in lat["blocking"]])
    for v in AIO_VARIANTS:
        rs = lat[v]
        row = {"variant": v, "rounds": args.rounds, "size": 64, "repeats": len(rs)}
        for k in ("p50_us", "p99_us", "p999_us"):
            row[k] = statistics.median([r[k] for r in rs])
            row["runs_" + k] = [r[k] for r in rs]
        row["p50_over_blocking"] = row["p50_us"] / ref50
        lrows.append(row)
    return {"throughput": trows, "latency": lrows}


# -------------------------------------------------------------------- entry


def run_bench(args: argparse.Namespace, modes: List[str]) -> int:
    import multiprocessing

    notes: List[str] = []
    methods = multiprocessing.get_all_start_methods()
    method = args.start_method or ("fork" if "fork" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    info = machine_info(method)
    names: List[str] = []
    for item in (args.peers or []) + (args.peer or []):
        names.extend(x.strip() for x in item.split(",") if x.strip())
    peers: List[str] = []
    if "objects" in modes:
        unknown = [x for x in names if x not in OBJ_PEERS and x != "all"]
        if unknown:
            print("ackring bench: error: unknown peer(s) for --mode objects: %s (choose from %s)"
                  % (", ".join(unknown), ", ".join(OBJ_PEERS)), file=sys.stderr)
            return 2
        wanted = set(OBJ_PEERS) if not names or "all" in names else set(names) | {"ackring.mp"}
        for p in OBJ_PEERS:
            if p not in wanted:
                continue
            why = _importable("faster_fifo") if p == "faster-fifo" else None
            if why:
                notes.append("%s skipped: %s (pip install 'ackring[bench]')" % (p, why))
                continue
            peers.append(p)
    quiet = args.no_progress or not sys.stderr.isatty()

    def progress(text: str) -> None:
        if not quiet:
            print("\r\033[K" + text, end="", file=sys.stderr, flush=True)

    out: Dict[str, Any] = {"machine": info, "statistic": "median over repeats", "notes": notes,
                           "params": {"modes": modes, "repeat": args.repeat, "messages": args.messages,
                                      "rounds": args.rounds, "warmup": args.warmup, "capacity": args.capacity,
                                      "max_bytes": args.max_bytes, "ring_bytes": args.ring_bytes,
                                      "timeout": args.timeout},
                           "results": {}}
    try:
        if "objects" in modes:
            out["results"]["objects"] = _objects(args, ctx, peers, notes, progress)
        if "asyncio" in modes:
            out["results"]["asyncio"] = _asyncio(args, ctx, notes, progress)
    except BenchError as e:
        progress("")
        print("ackring bench: error: %s" % e, file=sys.stderr)
        return 1
    finally:
        if not quiet:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    info["loadavg_at_end"] = machine_info(method)["loadavg_at_start"]
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_table(out, sys.stdout)
    return 0


def print_table(out: Dict[str, Any], file: Any) -> None:
    from .report import _num, _table

    info, params = out["machine"], out["params"]
    w = lambda s="": print(s, file=file)  # noqa: E731
    w("ackring bench: median of %d repeat(s); start method %s" % (params["repeat"], info["start_method"]))
    w("cpu: %s (%s cores, %d usable); kernel %s; %s; ackring %s; load average %s at start, %s at end"
      % (info["cpu_model"], info["cpu_count"], info["cpus_usable"], info["kernel"], info["python"],
         info["ackring_version"], info.get("loadavg_at_start"), info.get("loadavg_at_end")))
    res = out["results"]
    if "objects" in res:
        w()
        w("Objects (1 producer + 1 consumer process; put / get of Python objects, pickled)")
        rows = []
        for r in res["objects"]:
            runs = r["runs_obj_per_s"]
            rows.append((r["payload"], r["peer"], "{:,}".format(r["objects"]), _num(r["obj_per_s"]),
                         _num(r["mb_per_s"], "{:,.0f}"),
                         _num(min(runs)) + ".." + _num(max(runs)) if len(runs) > 1 else "",
                         _num(r.get("ackring_mp_over_peer"), "{:.2f}x")))
        for line in _table(("payload", "peer", "objects", "obj/s", "MB/s", "runs (min..max obj/s)",
                            "ackring.mp/peer"), rows, left=2):
            w(line)
    if "asyncio" in res:
        a = res["asyncio"]
        w()
        w("asyncio consumer vs blocking (64 B ackring messages, every one acked)")
        rows = []
        for r in a["throughput"]:
            runs = r["runs_msg_per_s"]
            rows.append((r["variant"], "{:,}".format(r["messages"]), _num(r["msg_per_s"]),
                         _num(min(runs)) + ".." + _num(max(runs)) if len(runs) > 1 else "",
                         _num(r["over_blocking"], "{:.2f}x")))
        for line in _table(("consumer", "messages", "msg/s", "runs (min..max)", "vs blocking"), rows):
            w(line)
        w()
        rows = []
        for r in a["latency"]:
            rows.append((r["variant"], "{:,}".format(r["rounds"]), _num(r["p50_us"], "{:,.1f}"),
                         _num(r["p99_us"], "{:,.1f}"), _num(r["p999_us"], "{:,.1f}"),
                         _num(r["p50_over_blocking"], "{:.2f}x")))
        for line in _table(("echo side", "rounds", "p50 us", "p99 us", "p99.9 us", "p50 vs blocking"), rows):
            w(line)
    w()
    if "objects" in res:
        w("  ackring.mp: ackring.mp.Queue put / get (protocol 5, out-of-band buffers into the slot; acked on get)")
        w("  mp.Queue: multiprocessing.Queue put / get; faster-fifo: faster_fifo.Queue put / get")
        w("  dict10: a dict of 10 fields; ndarray1M: numpy float64 array of %s" % fmt_size(ARRAY_ITEMS * 8))
    if "asyncio" in res:
        w("  asyncio latency: a blocking ping process; the echo process receives as named and replies "
          "(p.put, or await aput for ackring.aio)")
    for note in out["notes"]:
        w("note: %s" % note)
