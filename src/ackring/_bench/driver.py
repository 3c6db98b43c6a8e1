"""``ackring bench``: plan the runs, run them, report."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from typing import Any, Dict, List, Tuple

from . import harness, report
from .common import BenchError, CpuSample, Params, Skip, fmt_size, machine_info, usable_cpus
from .peers import LATENCY, MPMC, PEERS, SPSC, Peer
from .progress import Progress

MIN_MESSAGES = 200  # a run never moves fewer messages than this (byte bound permitting)
MIN_ROUNDS = 1000  # latency: enough samples for a p99.9


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def capacity_for(size: int, args: argparse.Namespace) -> int:
    """The ring depth for this size: --capacity, lowered for big messages so a
    segment stays under --ring-bytes (a 1024 x 1 MiB ring would be 1 GiB)."""
    return max(8, min(args.capacity, _pow2_floor(args.ring_bytes // max(size, 1))))


def plan_count(peer: Peer, mode: str, size: int, args: argparse.Namespace) -> int:
    if mode == LATENCY:
        n = args.rounds
        return max(min(n, MIN_ROUNDS), min(n, args.max_bytes // 4 // size))
    n = args.messages
    if peer.slow:
        n = max(min(n, 10_000), n // 4)
    return max(min(n, MIN_MESSAGES), min(n, args.max_bytes // size))


def _select_peers(args: argparse.Namespace, notes: List[str]) -> List[Peer]:
    names: List[str] = []
    for item in (args.peers or []) + (args.peer or []):
        names.extend(x.strip() for x in item.split(",") if x.strip())
    explicit = bool(names)
    if not names:
        # everything importable; optional peers skipped with a note; opt-in ones only by name
        names = [n for n in PEERS if not PEERS[n].opt_in]
    if "all" in names:
        names = list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit("ackring bench: error: unknown peer(s) %s (choose from %s)"
                         % (", ".join(unknown), ", ".join(PEERS)))
    if "ackring" not in names:
        names.insert(0, "ackring")
    if "mp.Queue" not in names and not explicit:
        names.append("mp.Queue")
    peers = []
    for name in PEERS:  # report order
        if name not in names:
            continue
        why = PEERS[name].importable()
        if why:
            notes.append("%s skipped: %s (pip install 'ackring[bench]')" % (name, why))
            continue
        peers.append(PEERS[name])
    return peers


def run_bench(args: argparse.Namespace) -> int:
    notes: List[str] = []
    modes = list(dict.fromkeys(args.mode))
    from . import objects

    if "durable" in modes:
        # `ackring bench --mode durable`: file-backed queues vs sqlite peers
        if len(modes) != 1:
            print("ackring bench: error: run --mode durable on its own", file=sys.stderr)
            return 2
        from . import durable
        return durable.run_bench(args)
    special = [m for m in modes if m in objects.MODES]
    if special:
        if len(special) != len(modes):
            print("ackring bench: error: run --mode %s on its own (not with spsc/mpmc/latency)"
                  % ",".join(objects.MODES), file=sys.stderr)
            return 2
        return objects.run_bench(args, special)
    sizes = list(dict.fromkeys(args.sizes))
    lat_sizes = list(dict.fromkeys(args.latency_sizes or sizes[:1]))
    peers = _select_peers(args, notes)
    if not peers or peers[0].name != "ackring":
        print("ackring bench: error: ackring itself cannot be imported (%s)" % "; ".join(notes), file=sys.stderr)
        return 1
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except Exception as e:
            print("ackring bench: error: --plot needs matplotlib (pip install matplotlib, or 'ackring[bench]'): %s"
                  % e, file=sys.stderr)
            return 2

    methods = multiprocessing.get_all_start_methods()
    method = args.start_method or ("fork" if "fork" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    cpus = usable_cpus()
    if cpus < 2:
        notes.append("only %d usable CPU: the processes share it, expect low numbers" % cpus)

    info = machine_info(method)
    # Plan: every (mode, size, peer), interleaved per repeat so that the peers
    # of one configuration are measured close together in time.
    plan: List[Tuple[str, int, Peer]] = []
    for mode in modes:
        for size in (lat_sizes if mode == LATENCY else sizes):
            for peer in peers:
                if mode not in peer.modes:
                    if ("%s has no %s mode: not measured" % (peer.name, mode)) not in notes:
                        notes.append("%s has no %s mode: not measured" % (peer.name, mode))
                    continue
                plan.append((mode, size, peer))
    counts: Dict[Tuple[str, int, str], int] = {(m, s, p.name): plan_count(p, m, s, args) for m, s, p in plan}
    runs: Dict[Tuple[str, int, str], List[Dict[str, Any]]] = {(m, s, p.name): [] for m, s, p in plan}
    skipped: Dict[Tuple[str, int, str], str] = {}
    peer_failures: List[str] = []
    progress = Progress(len(plan) * args.repeat, enabled=not args.no_progress)
    try:
        for rep in range(args.repeat):
            for mode, size, peer in plan:
                key = (mode, size, peer.name)
                label = "%s %s %s %d/%d" % (mode, fmt_size(size), peer.name, rep + 1, args.repeat)
                if key in skipped:
                    progress.advance(text=label, result="skipped")
                    continue
                params = Params(
                    mode=mode,
                    messages=counts[key],
                    size=size,
                    capacity=capacity_for(size, args),
                    timeout=args.timeout,
                    producers=2 if mode == MPMC else 1,
                    consumers=2 if mode == MPMC else 1,
                    batch=args.batch if args.batch > 1 else 0,
                    zero_copy=args.zero_copy,
                    warmup=args.warmup if mode == LATENCY else 0,
                    spin=args.spin and mode == LATENCY and peer.name == "ackring",
                )
                progress.describe(label)
                try:
                    # CPU time the rest of the machine used during this run
                    # (ours and our reaped children's taken out): the load.
                    before = CpuSample.take()
                    got = harness.run_job(ctx, peer, params)
                    busy = CpuSample.others_busy(before, CpuSample.take())
                    if mode == LATENCY:
                        r = harness.latency(peer, params, got)
                        shown = "p50 %.1f us" % r["p50_us"]
                    else:
                        r = harness.throughput(peer, params, got)
                        shown = "{:,.0f} msg/s".format(r["msg_per_s"])
                except Skip as e:
                    skipped[key] = str(e)
                    notes.append("%s %s %s skipped: %s" % (peer.name, mode, fmt_size(size), e))
                    progress.advance(text=label, result="skipped")
                    continue
                except BenchError as e:
                    if peer.name == "ackring":
                        raise
                    # A peer that misbehaves is reported, not fatal: ackring's
                    # figures (and the other peers') still stand.
                    skipped[key] = str(e)
                    runs[key].clear()
                    peer_failures.append(str(e))
                    notes.append("FAILED, left out: %s" % e)
                    progress.note("ackring bench: %s failed, left out: %s" % (label, e))
                    progress.advance(text=label, result="failed")
                    continue
                if busy is not None:
                    r["cpu_others_s"], r["cpu_total_s"] = busy
                runs[key].append(r)
                progress.advance(text=label, result=shown)
                # --duration: later repeats move fewer messages if this one ran long.
                if args.duration and r["elapsed_s"] > args.duration:
                    floor = MIN_ROUNDS if mode == LATENCY else MIN_MESSAGES
                    counts[key] = max(floor, min(counts[key], int(counts[key] * args.duration / r["elapsed_s"])))
    except BenchError as e:
        progress.close()
        print("ackring bench: error: %s" % e, file=sys.stderr)
        return 1
    finally:
        progress.close()

    small = sorted({(m, s, n) for (m, s, n), rs in runs.items() if rs and m != LATENCY
                    and rs[0]["messages"] < args.messages})
    if small:
        notes.append("to bound each run (--max-bytes %s, slow peers N/4, --duration) some runs moved fewer than "
                     "%d messages: see the messages column; msg/s is per message, so ratios stay comparable"
                     % (fmt_size(args.max_bytes), args.messages))
    if args.spin:
        notes.append("--spin: ackring's latency run busy-polls get(timeout=0) in both processes (a lower bound "
                     "without futex sleeps); the other peers block as usual")
    caps = sorted({(s, capacity_for(s, args)) for s in sizes if capacity_for(s, args) != args.capacity})
    for s, c in caps:
        notes.append("%s messages: queue depth %d instead of %d (segments capped at --ring-bytes %s)"
                     % (fmt_size(s), c, args.capacity, fmt_size(args.ring_bytes)))
    if any(p.name == "posix_ipc" for p in peers):
        from .peers import _mq_limits

        mm, ms = _mq_limits()
        notes.append("posix_ipc queue depth is at most fs.mqueue.msg_max=%d and messages at most "
                     "fs.mqueue.msgsize_max=%d B on this machine" % (mm, ms))
    if args.batch > 1:
        nob = [p.name for p in peers if not p.batch_api]
        if nob:
            notes.append("--batch %d: %s have no batch API and ran per message" % (args.batch, ", ".join(nob)))
    if args.zero_copy:
        import ackring

        if not hasattr(ackring.Producer, "reserve"):
            notes.append("--zero-copy: this ackring has no Producer.reserve(); the producer used put()")
        noz = [p.name for p in peers if not p.zero_copy_api]
        if noz:
            notes.append("--zero-copy: %s have no zero-copy receive and copied as usual" % ", ".join(noz))
    if args.batch > 1:
        import ackring

        if not hasattr(ackring.Consumer, "ack_many"):
            notes.append("--batch: this ackring has no Consumer.ack_many(); each message of a batch was acked")

    info["loadavg_at_end"] = machine_info(method)["loadavg_at_start"]
    load = report.machine_load(info, runs)
    summary = report.summarize(runs, [p.name for p in peers], load)
    tgs = report.targets(summary, args.batch, args.zero_copy)
    load["targets_not_judged"] = sum(1 for t in tgs if t["status"] == report.NOT_JUDGED)
    out = {
        "machine": info,
        "params": {
            "modes": modes,
            "sizes": sizes,
            "latency_sizes": lat_sizes,
            "spin": args.spin,
            "messages": args.messages,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "capacity": args.capacity,
            "max_bytes": args.max_bytes,
            "ring_bytes": args.ring_bytes,
            "duration": args.duration,
            "batch": args.batch if args.batch > 1 else 0,
            "zero_copy": args.zero_copy,
            "producers": 2 if MPMC in modes else 1,
            "consumers": 2 if MPMC in modes else 1,
            "timeout": args.timeout,
        },
        "statistic": "median over repeats",
        "peers": {p.name: p.description for p in peers},
        "results": summary,
        "targets": tgs,
        "load": load,
        "notes": notes,
        "peer_failures": peer_failures,
    }
    if args.plot:
        try:
            report.plot(out, args.plot)
            notes.append("plot written to %s" % args.plot)
        except Exception as e:
            print("ackring bench: error: could not write the plot: %s" % e, file=sys.stderr)
            return 1
    if args.json:
        report.print_json(out, sys.stdout)
    else:
        report.print_table(out, sys.stdout)
    return 0


# ------------------------------------------------------------------------ self-check


def self_check(args: argparse.Namespace) -> int:
    """Small runs of every mode and variant, and proof that a miscount fails."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context(args.start_method or ("fork" if "fork" in methods else "spawn"))
    notes: List[str] = []
    peers = _select_peers(args, notes)
    for n in notes:
        print("self-check: %s" % n, file=sys.stderr)
    failures = 0
    checks = 0

    def one(peer: Peer, params: Params, expect_fail: bool = False) -> None:
        nonlocal failures, checks
        checks += 1
        label = "%s %s %s batch=%s zero_copy=%s" % (peer.name, params.mode, fmt_size(params.size), params.batch,
                                                    params.zero_copy)
        try:
            got = harness.run_job(ctx, peer, params)
            if params.mode == LATENCY:
                harness.latency(peer, params, got)
            else:
                harness.throughput(peer, params, got)
        except Skip as e:
            print("self-check: skip %s: %s" % (label, e), file=sys.stderr)
            return
        except BenchError as e:
            if expect_fail:
                print("self-check: ok   %s fails as it must: %s" % (label, e), file=sys.stderr)
                return
            failures += 1
            print("self-check: FAIL %s: %s" % (label, e), file=sys.stderr)
            return
        if expect_fail:
            failures += 1
            print("self-check: FAIL %s: a wrong count was not detected" % label, file=sys.stderr)
        else:
            print("self-check: ok   %s" % label, file=sys.stderr)

    base = Params(mode=SPSC, messages=3000, size=64, capacity=64, timeout=10.0, warmup=50)
    for peer in peers:
        for mode in (SPSC, MPMC, LATENCY):
            if mode not in peer.modes:
                continue
            for size in (64, 4096):
                n = 500 if mode == LATENCY else base.messages
                p = base.with_(mode=mode, size=size, messages=n,
                               producers=2 if mode == MPMC else 1, consumers=2 if mode == MPMC else 1)
                one(peer, p)
                if peer.batch_api and mode != LATENCY:
                    one(peer, p.with_(batch=16, messages=n + 7))
                if peer.zero_copy_api:
                    one(peer, p.with_(zero_copy=True))
    # The harness must notice a consumer that expects more than was sent.  A
    # consumer waiting for a message that never comes fails after --timeout.
    ack = PEERS["ackring"]
    one(ack, base.with_(messages=1000, timeout=1.0), expect_fail=False)
    short = _ShortParams(mode=SPSC, messages=1000, size=64, capacity=64, timeout=1.0)
    one(ack, short, expect_fail=True)
    print("self-check: %d checks, %d failure(s)" % (checks, failures), file=sys.stderr)
    return 1 if failures else 0


class _ShortParams(Params):
    """Params whose producers send one message fewer than the consumers expect."""

    def share(self, idx: int) -> int:  # type: ignore[override]
        return Params.share(self, idx) - 1
