"""Medians, ratios, the targets, and the three outputs (table, JSON, plot)."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import fmt_size

Key = Tuple[str, int, str]  # (mode, size, peer)


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(runs: Dict[Key, List[Dict[str, Any]]], peer_order: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    """Per (mode, size, peer): medians over repeats; ratios against ackring."""
    thr: List[Dict[str, Any]] = []
    lat: List[Dict[str, Any]] = []
    order = {p: i for i, p in enumerate(peer_order)}
    mode_order = {"spsc": 0, "mpmc": 1, "latency": 2}
    for (mode, size, peer) in sorted(runs, key=lambda k: (mode_order.get(k[0], 9), k[1], order.get(k[2], 99))):
        rs = runs[(mode, size, peer)]
        if not rs:
            continue
        if mode == "latency":
            lat.append({
                "mode": mode, "size": size, "peer": peer,
                "rounds": rs[0]["rounds"],
                "repeats": len(rs),
                "p50_us": _median([r["p50_us"] for r in rs]),
                "p99_us": _median([r["p99_us"] for r in rs]),
                "p999_us": _median([r["p999_us"] for r in rs]),
                "mean_us": _median([r["mean_us"] for r in rs]),
                "runs_p50_us": [r["p50_us"] for r in rs],
                "runs_p99_us": [r["p99_us"] for r in rs],
                "runs_p999_us": [r["p999_us"] for r in rs],
                "api": rs[0]["api"],
            })
        else:
            rates = [r["msg_per_s"] for r in rs]
            med = _median(rates)
            thr.append({
                "mode": mode, "size": size, "peer": peer,
                "messages": rs[-1]["messages"],
                "repeats": len(rs),
                "msg_per_s": med,
                "mb_per_s": med * size / 1e6,
                "runs_msg_per_s": rates,
                "api": rs[0]["api"],
            })
    by = {(r["mode"], r["size"], r["peer"]): r for r in thr}
    for r in thr:
        ref = by.get((r["mode"], r["size"], "ackring"))
        r["ackring_over_peer"] = ref["msg_per_s"] / r["msg_per_s"] if ref and r["msg_per_s"] > 0 else None
        # Paired per repeat (same moment on the machine): median of the ratios too.
        if ref and len(ref["runs_msg_per_s"]) == len(r["runs_msg_per_s"]):
            r["ackring_over_peer_paired"] = _median([a / b for a, b in zip(ref["runs_msg_per_s"], r["runs_msg_per_s"]) if b > 0])
        spsc = by.get(("spsc", r["size"], r["peer"]))
        if r["mode"] == "mpmc" and spsc:
            r["mpmc_over_spsc"] = r["msg_per_s"] / spsc["msg_per_s"]
    lby = {(r["size"], r["peer"]): r for r in lat}
    for r in lat:
        ref = lby.get((r["size"], "ackring"))
        r["peer_p50_over_ackring"] = r["p50_us"] / ref["p50_us"] if ref and ref["p50_us"] > 0 else None
    return {"throughput": thr, "latency": lat}


# ------------------------------------------------------------------------- targets


def targets(summary: Dict[str, List[Dict[str, Any]]], batch: int, zero_copy: bool) -> List[Dict[str, Any]]:
    thr = {(r["mode"], r["size"], r["peer"]): r for r in summary["throughput"]}
    lat = {(r["size"], r["peer"]): r for r in summary["latency"]}
    out: List[Dict[str, Any]] = []

    def add(name: str, target: float, unit: str, higher: bool, got: Optional[float], why_not: str = "",
            bound: str = "") -> None:
        row: Dict[str, Any] = {"target": name, "goal": target, "unit": unit, "measured": got}
        if got is None or (isinstance(got, float) and math.isnan(got)):
            row["status"] = "not measured"
            row["detail"] = why_not
        else:
            met = got >= target if higher else got <= target
            off = (got - target) / target * 100 if higher else (target - got) / target * 100
            row["status"] = "met" if met else "missed"
            row["margin_pct"] = off
            row["detail"] = ("met (%+.0f%%)" % off) if met else ("missed by %.0f%%" % -off)
        if bound:
            row["bound"] = bound
        out.append(row)

    a64 = thr.get(("spsc", 64, "ackring"))
    per_msg = batch <= 1
    add("SPSC 64 B, per-message API >= 2,000,000 msg/s", 2e6, "msg/s", True,
        a64["msg_per_s"] if a64 and per_msg else None,
        "needs --mode spsc --sizes 64 without --batch")
    add("SPSC 64 B, batch API >= 5,000,000 msg/s", 5e6, "msg/s", True,
        a64["msg_per_s"] if a64 and not per_msg else None,
        "needs --mode spsc --sizes 64 --batch N")
    for peer, goal in (("pyzmq", 2.0), ("mp.Queue", 20.0)):
        r = thr.get(("spsc", 64, peer))
        add("SPSC 64 B, ackring/%s >= %gx" % (peer, goal), goal, "x", True,
            r["ackring_over_peer"] if r and r.get("ackring_over_peer") else None,
            "needs --mode spsc --sizes 64 with ackring and %s" % peer)
    a4k = thr.get(("spsc", 4096, "ackring"))
    add("SPSC 4 KiB >= 1,000,000 msg/s", 1e6, "msg/s", True, a4k["msg_per_s"] if a4k else None,
        "needs --mode spsc --sizes 4096")
    a64k = thr.get(("spsc", 65536, "ackring"))
    add("SPSC 64 KiB, zero-copy receive >= 5 GB/s", 5.0, "GB/s", True,
        a64k["mb_per_s"] / 1e3 if a64k and zero_copy else None,
        "needs --mode spsc --sizes 65536 --zero-copy")
    l64 = lat.get((64, "ackring"))
    add("ping-pong 64 B p50 <= 5 us", 5.0, "us", False, l64["p50_us"] if l64 else None,
        "needs --mode latency --sizes 64")
    add("ping-pong 64 B p99 <= 20 us", 20.0, "us", False, l64["p99_us"] if l64 else None,
        "needs --mode latency --sizes 64")
    sizes = sorted({s for (m, s, p) in thr if m == "mpmc" and p == "ackring" and ("spsc", s, "ackring") in thr})
    if not sizes:
        add("MPMC 2x2 >= 0.5 x SPSC", 0.5, "x", True, None, "needs --mode spsc,mpmc")
    for s in sizes:
        add("MPMC 2x2 >= 0.5 x SPSC (%s)" % fmt_size(s), 0.5, "x", True,
            thr[("mpmc", s, "ackring")]["mpmc_over_spsc"])
    return out


# --------------------------------------------------------------------------- table


def _num(x: Optional[float], fmt: str = "{:,.0f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> List[str]:
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for j, r in enumerate(table):
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def print_table(out: Dict[str, Any], file: Any) -> None:
    info, params = out["machine"], out["params"]
    w = lambda s="": print(s, file=file)  # noqa: E731
    w("ackring bench: median of %d repeat(s); start method %s; batch %s; zero-copy %s"
      % (params["repeat"], info["start_method"], params["batch"] or "off", "on" if params["zero_copy"] else "off"))
    w("cpu: %s (%s cores, %d usable); kernel %s; %s; ackring %s; load average %s at start, %s at end"
      % (info["cpu_model"], info["cpu_count"], info["cpus_usable"], info["kernel"], info["python"],
         info["ackring_version"], info.get("loadavg_at_start"), info.get("loadavg_at_end")))
    thr = out["results"]["throughput"]
    if thr:
        w()
        w("Throughput (spsc: 1 producer + 1 consumer process; mpmc: 2 + 2; every ackring message acked)")
        rows = []
        has_mpmc = any(r["mode"] == "mpmc" for r in thr)
        for r in thr:
            runs = r["runs_msg_per_s"]
            rows.append((
                r["mode"], fmt_size(r["size"]), r["peer"], "{:,}".format(r["messages"]),
                _num(r["msg_per_s"]), _num(r["mb_per_s"], "{:,.1f}"),
                _num(min(runs)) + ".." + _num(max(runs)) if len(runs) > 1 else "",
                _num(r.get("ackring_over_peer"), "{:.2f}x"),
                _num(r.get("mpmc_over_spsc"), "{:.2f}"),
            )[: 9 if has_mpmc else 8])
        for line in _table(("mode", "size", "peer", "messages", "msg/s", "MB/s", "runs (min..max msg/s)",
                            "ackring/peer", "mpmc/spsc")[: 9 if has_mpmc else 8], rows, left=3):
            w(line)
    lat = out["results"]["latency"]
    if lat:
        w()
        w("Round-trip latency (ping-pong between two processes, blocking waits; perf_counter_ns per round trip)")
        rows = []
        for r in lat:
            rows.append((
                fmt_size(r["size"]), r["peer"], "{:,}".format(r["rounds"]),
                _num(r["p50_us"], "{:,.1f}"), _num(r["p99_us"], "{:,.1f}"), _num(r["p999_us"], "{:,.1f}"),
                _num(r.get("peer_p50_over_ackring"), "{:.2f}x"),
            ))
        for line in _table(("size", "peer", "rounds", "p50 us", "p99 us", "p99.9 us", "peer/ackring p50"),
                           rows, left=2):
            w(line)
    tg = out.get("targets") or []
    if tg:
        w()
        w("Targets (ackring)")
        rows = []
        for t in tg:
            unit = t["unit"]
            if t["measured"] is None:
                got = "-"
            elif unit == "msg/s":
                got = "{:,.0f} msg/s".format(t["measured"])
            elif unit == "x":
                got = "%.2fx" % t["measured"]
            else:
                got = "%.2f %s" % (t["measured"], unit)
            rows.append((t["target"], got, t["detail"]))
        for line in _table(("target", "measured (median)", "status"), rows, left=3):
            w(line)
    w()
    apis = {}
    for r in thr + lat:
        apis.setdefault(r["peer"], set()).add(r["api"])
    for peer, desc in out["peers"].items():
        w("  %s: %s [%s]" % (peer, desc, "; ".join(sorted(apis.get(peer, ())))))
    for note in out["notes"]:
        w("note: %s" % note)


def print_json(out: Dict[str, Any], file: Any) -> None:
    print(json.dumps(out, indent=2, default=str), file=file)


# ---------------------------------------------------------------------------- plot


def plot(out: Dict[str, Any], path: str) -> None:
    """Throughput against message size (msg/s and MB/s, log-log), one line per peer and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = out["results"]["throughput"]
    if not thr:
        raise ValueError("nothing to plot: no throughput results (use --mode spsc and/or mpmc)")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=72)
    series: Dict[Tuple[str, str], List[Tuple[int, float, float]]] = {}
    for r in thr:
        series.setdefault((r["peer"], r["mode"]), []).append((r["size"], r["msg_per_s"], r["mb_per_s"]))
    colors: Dict[str, Any] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3", "C4", "C5"])
    for (peer, mode), pts in series.items():
        pts.sort()
        color = colors.setdefault(peer, cycle[len(colors) % len(cycle)])
        style = "-" if mode == "spsc" else "--"
        label = "%s (%s)" % (peer, mode)
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], style, marker="o", color=color, label=label, lw=1.5, ms=4)
        ax2.plot(xs, [p[2] for p in pts], style, marker="o", color=color, label=label, lw=1.5, ms=4)
    for ax, ylabel in ((ax1, "messages/s"), (ax2, "MB/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    p = out["params"]
    fig.suptitle("ackring bench: throughput vs message size (median of %d, %s, batch %s, zero-copy %s)"
                 % (p["repeat"], out["machine"]["cpu_model"], p["batch"] or "off", "on" if p["zero_copy"] else "off"),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
