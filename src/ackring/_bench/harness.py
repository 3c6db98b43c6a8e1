"""Child processes for one run: start gate, deadlines, verification, cleanup."""

from __future__ import annotations

import queue as _queue
import signal
import threading
import time
import traceback
from typing import Any, Dict, List, Sequence, Tuple

from .common import BenchError, Clock, Params
from .peers import LATENCY, MPMC, PEERS, Peer


def _child(peer_name: str, role: str, idx: int, handle: Any, params: Params,
           barrier: Any, pbarrier: Any, stop_ev: Any, counts: Any, results: Any) -> None:
    # Ctrl-C goes to the whole process group; the parent handles it and
    # terminates the children, so they must not die with tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    clock = Clock(barrier, pbarrier, stop_ev, counts, params.timeout)
    try:
        data = PEERS[peer_name].roles[role](handle, params, clock, idx, role) or {}
        data["start"] = clock.t_start
        data["stop"] = clock.t_stop
        results.put((role, idx, None, data))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
        for b in (barrier, pbarrier):
            try:
                if b is not None:
                    b.abort()
            except Exception:
                pass
        if isinstance(e, BenchError):
            msg = str(e)
        elif isinstance(e, threading.BrokenBarrierError):
            msg = "start gate broken (another process of the run failed)"
        else:
            msg = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
        results.put((role, idx, msg, None))


def _stop(procs: Sequence[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _roles(params: Params) -> List[Tuple[str, int]]:
    if params.mode == LATENCY:
        return [("echo", 0), ("ping", 0)]
    return [("consumer", i) for i in range(params.consumers)] + [("producer", i) for i in range(params.producers)]


def run_job(ctx: Any, peer: Peer, params: Params) -> Dict[str, Any]:
    """Run one configuration once; returns the children's reports by (role, idx).

    Raises Skip (from the peer's setup) or BenchError."""
    roles = _roles(params)
    # Backstop only: a hung put/get fails in the child after params.timeout.
    deadline = time.monotonic() + 60 + 2 * params.timeout + (params.messages + params.warmup) * 500e-6
    started: Dict[Tuple[str, int], Any] = {}
    handle, cleanup = peer.setup(params, ctx)
    try:
        barrier = ctx.Barrier(len(roles))
        pbarrier = ctx.Barrier(params.producers) if params.mode == MPMC and params.producers > 1 else None
        stop_ev = ctx.Event() if params.mode == MPMC else None
        counts = ctx.Array("q", params.consumers, lock=False) if params.mode == MPMC else None
        results = ctx.Queue()
        try:
            for role, idx in roles:
                p = ctx.Process(
                    target=_child,
                    args=(peer.name, role, idx, handle, params, barrier, pbarrier, stop_ev, counts, results),
                    name="ackring-bench-%s-%s%d" % (peer.name, role, idx),
                    daemon=True,
                )
                p.start()
                started[(role, idx)] = p
            got: Dict[Tuple[str, int], Dict[str, Any]] = {}
            silent_since: Dict[Tuple[str, int], float] = {}
            errors: List[str] = []
            while len(got) < len(roles):
                try:
                    role, idx, err, data = results.get(timeout=0.2)
                except _queue.Empty:
                    if errors:
                        break
                    now = time.monotonic()
                    if now > deadline:
                        raise BenchError("%s %s: run did not finish in time" % (peer.name, params.mode)) from None
                    for key, p in started.items():
                        if key in got or p.exitcode is None:
                            continue
                        if p.exitcode != 0:
                            raise BenchError("%s %s%d died (exit code %s)" % (peer.name, key[0], key[1], p.exitcode))
                        if now - silent_since.setdefault(key, now) > 5:
                            raise BenchError("%s %s%d exited without a report" % (peer.name, key[0], key[1]))
                    continue
                if err is not None:
                    errors.append("%s %s %s%d failed: %s" % (peer.name, params.mode, role, idx, err))
                    continue
                got[(role, idx)] = data
            if errors:
                # Prefer the root cause to "start gate broken" in the others.
                errors.sort(key=lambda e: "start gate broken" in e)
                raise BenchError(errors[0])
            for p in started.values():
                p.join(timeout=30)
                if p.is_alive():
                    raise BenchError("%s did not exit after its run" % p.name)
            if peer.verify is not None and params.mode != LATENCY:
                problem = peer.verify(handle, params)
                if problem:
                    raise BenchError("%s %s: queue counters disagree: %s" % (peer.name, params.mode, problem))
        finally:
            _stop(list(started.values()))
            results.close()
    finally:
        cleanup()
    return got


def throughput(peer: Peer, params: Params, got: Dict[Tuple[str, int], Dict[str, Any]]) -> Dict[str, Any]:
    cons = [d for (r, _), d in got.items() if r == "consumer"]
    prods = [d for (r, _), d in got.items() if r == "producer"]
    count = sum(d["count"] for d in cons)
    if count != params.messages:
        raise BenchError("%s %s: consumers received %d messages, expected exactly %d"
                         % (peer.name, params.mode, count, params.messages))
    t0 = min(d["start"] for d in cons + prods)
    t1 = max(d["stop"] for d in cons)
    elapsed = (t1 - t0) / 1e9
    if elapsed <= 0:
        raise BenchError("%s: non-positive elapsed time" % peer.name)
    rate = params.messages / elapsed
    return {
        "messages": params.messages,
        "elapsed_s": elapsed,
        "msg_per_s": rate,
        "mb_per_s": rate * params.size / 1e6,
        "api": "%s -> %s" % (prods[0].get("api", "?"), cons[0].get("api", "?")),
    }


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return float(sorted_values[k])


def latency(peer: Peer, params: Params, got: Dict[Tuple[str, int], Dict[str, Any]]) -> Dict[str, Any]:
    ping = got[("ping", 0)]
    s = sorted(ping["samples"])
    if len(s) != params.messages:
        raise BenchError("%s latency: %d samples, expected %d" % (peer.name, len(s), params.messages))
    return {
        "rounds": len(s),
        "elapsed_s": sum(s) / 1e9,
        "p50_us": percentile(s, 50) / 1e3,
        "p99_us": percentile(s, 99) / 1e3,
        "p999_us": percentile(s, 99.9) / 1e3,
        "min_us": s[0] / 1e3,
        "max_us": s[-1] / 1e3,
        "mean_us": sum(s) / len(s) / 1e3,
        "api": ping.get("api", "?"),
    }
