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


# ------------------------------------------------------------------ machine load
#
# The one place that decides when a figure is too disturbed to be judged
# against a target.  The thresholds are printed with every table and put in
# the JSON ("load" -> "thresholds").

SPREAD_MAX_PCT = 25.0
"""A figure whose repeats span more than this, (max - min) / median, is not judged."""
OTHERS_CPU_MAX_PCT = 20.0
"""... nor one during whose repeats other processes (this benchmark's own
taken out) used more than this share of the machine's CPU time (/proc/stat)."""
LOADAVG_PER_CPU_MAX = 0.5
"""Without /proc/stat: the 1-minute load average at the start, per usable CPU."""

NOT_JUDGED = "not judged"
LOADED = "not judged (machine loaded)"

THRESHOLDS = {
    "spread_max_pct": SPREAD_MAX_PCT,
    "others_cpu_max_pct": OTHERS_CPU_MAX_PCT,
    "loadavg_per_cpu_max": LOADAVG_PER_CPU_MAX,
}


def thresholds_text() -> str:
    return ("a figure is marked loaded, and a target resting on it %s, when its repeats spread more than "
            "%.0f%% ((max - min) / median) or other processes used more than %.0f%% of the machine's CPU time "
            "during its repeats (this benchmark's processes not counted; without /proc/stat: load average "
            "at start above %.2f per CPU); ratios paired per repeat are judged on their own spread only"
            % (LOADED, SPREAD_MAX_PCT, OTHERS_CPU_MAX_PCT, LOADAVG_PER_CPU_MAX))


def _loadavg_list(text: Optional[str]) -> Optional[List[float]]:
    try:
        return [float(x) for x in (text or "").split()][:3] or None
    except ValueError:
        return None


def _others_pct(rs: Sequence[Dict[str, Any]]) -> Optional[float]:
    """Others' share of the machine's CPU time over these runs, in %."""
    rs = [r for r in rs if r.get("cpu_total_s")]
    if not rs:
        return None
    return 100.0 * sum(r["cpu_others_s"] for r in rs) / sum(r["cpu_total_s"] for r in rs)


def machine_load(info: Dict[str, Any], runs: Dict[Any, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """The machine's load for the whole run: load averages, others' CPU share, the thresholds."""
    cpus = info.get("cpus_usable") or info.get("cpu_count") or 1
    start = _loadavg_list(info.get("loadavg_at_start"))
    end = _loadavg_list(info.get("loadavg_at_end"))
    per_cpu = start[0] / cpus if start else None
    others = _others_pct([r for rs in runs.values() for r in rs])
    reasons = []
    if others is not None and others > OTHERS_CPU_MAX_PCT:
        reasons.append("other processes used %.0f%% of the CPU time > %.0f%%" % (others, OTHERS_CPU_MAX_PCT))
    if per_cpu is not None and per_cpu > LOADAVG_PER_CPU_MAX:
        reasons.append("load average %.2f at start on %d CPU(s) = %.2f per CPU > %.2f"
                       % (start[0], cpus, per_cpu, LOADAVG_PER_CPU_MAX))
    return {
        "cpus": cpus,
        "loadavg_at_start": start,
        "loadavg_at_end": end,      # 1-min average includes this benchmark's own processes
        "loadavg1_per_cpu_at_start": per_cpu,
        "others_cpu_pct": others,   # over every run; None without /proc/stat
        "loaded": bool(reasons),
        "reasons": reasons,
        "thresholds": dict(THRESHOLDS),
    }


def spread_pct(xs: Sequence[float]) -> Optional[float]:
    """(max - min) / median in %, or None for fewer than two runs."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if len(xs) < 2:
        return None
    med = statistics.median(xs)
    return (max(xs) - min(xs)) / med * 100 if med > 0 else None


def loaded_reasons(spread: Optional[float], others: Optional[float],
                   load: Optional[Dict[str, Any]] = None, what: str = "runs") -> List[str]:
    """Why a figure is not judged: [] when it may be."""
    out = []
    if spread is not None and spread > SPREAD_MAX_PCT:
        out.append("%s spread %.0f%% > %.0f%%" % (what, spread, SPREAD_MAX_PCT))
    if others is not None:
        if others > OTHERS_CPU_MAX_PCT:
            out.append("others used %.0f%% CPU > %.0f%%" % (others, OTHERS_CPU_MAX_PCT))
    elif load and load.get("loadavg1_per_cpu_at_start") is not None \
            and load["loadavg1_per_cpu_at_start"] > LOADAVG_PER_CPU_MAX:
        out.append("load average %.2f per CPU > %.2f" % (load["loadavg1_per_cpu_at_start"], LOADAVG_PER_CPU_MAX))
    return out


def summarize(runs: Dict[Key, List[Dict[str, Any]]], peer_order: Sequence[str],
              load: Optional[Dict[str, Any]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Per (mode, size, peer): medians over repeats, their spread and the load
    during them; ratios against ackring (also paired per repeat)."""
    thr: List[Dict[str, Any]] = []
    lat: List[Dict[str, Any]] = []
    order = {p: i for i, p in enumerate(peer_order)}
    mode_order = {"spsc": 0, "mpmc": 1, "latency": 2}
    for (mode, size, peer) in sorted(runs, key=lambda k: (mode_order.get(k[0], 9), k[1], order.get(k[2], 99))):
        rs = runs[(mode, size, peer)]
        if not rs:
            continue
        others = _others_pct(rs)
        if mode == "latency":
            row = {
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
            }
            row["p50_spread_pct"] = spread_pct(row["runs_p50_us"])
            row["p99_spread_pct"] = spread_pct(row["runs_p99_us"])
            row["others_cpu_pct"] = others
            row["runs_others_cpu_pct"] = [_others_pct([r]) for r in rs]
            row["loaded_reasons"] = loaded_reasons(row["p50_spread_pct"], others, load)
            row["p99_loaded_reasons"] = loaded_reasons(row["p99_spread_pct"], others, load)
            row["loaded"] = bool(row["loaded_reasons"])
            lat.append(row)
        else:
            rates = [r["msg_per_s"] for r in rs]
            med = _median(rates)
            row = {
                "mode": mode, "size": size, "peer": peer,
                "messages": rs[-1]["messages"],
                "repeats": len(rs),
                "msg_per_s": med,
                "mb_per_s": med * size / 1e6,
                "runs_msg_per_s": rates,
                "api": rs[0]["api"],
                "min_msg_per_s": min(rates),
                "max_msg_per_s": max(rates),
                "spread_pct": spread_pct(rates),
                "others_cpu_pct": others,
                "runs_others_cpu_pct": [_others_pct([r]) for r in rs],
            }
            row["loaded_reasons"] = loaded_reasons(row["spread_pct"], others, load)
            row["loaded"] = bool(row["loaded_reasons"])
            thr.append(row)
    by = {(r["mode"], r["size"], r["peer"]): r for r in thr}
    for r in thr:
        ref = by.get((r["mode"], r["size"], "ackring"))
        r["ackring_over_peer"] = ref["msg_per_s"] / r["msg_per_s"] if ref and r["msg_per_s"] > 0 else None
        # Paired per repeat (same moment on the machine): median of the ratios too.
        if ref and len(ref["runs_msg_per_s"]) == len(r["runs_msg_per_s"]):
            paired = [a / b for a, b in zip(ref["runs_msg_per_s"], r["runs_msg_per_s"]) if b > 0]
            r["ackring_over_peer_paired"] = _median(paired)
            r["runs_ackring_over_peer"] = paired
            r["ratio_spread_pct"] = spread_pct(paired)
        spsc = by.get(("spsc", r["size"], r["peer"]))
        if r["mode"] == "mpmc" and spsc:
            r["mpmc_over_spsc"] = r["msg_per_s"] / spsc["msg_per_s"]
    lby = {(r["size"], r["peer"]): r for r in lat}
    for r in lat:
        ref = lby.get((r["size"], "ackring"))
        r["peer_p50_over_ackring"] = r["p50_us"] / ref["p50_us"] if ref and ref["p50_us"] > 0 else None
        if ref and len(ref["runs_p50_us"]) == len(r["runs_p50_us"]):
            paired = [b / a for a, b in zip(ref["runs_p50_us"], r["runs_p50_us"]) if a > 0]
            r["peer_p50_over_ackring_paired"] = _median(paired)
            r["runs_peer_p50_over_ackring"] = paired
            r["ratio_spread_pct"] = spread_pct(paired)
    return {"throughput": thr, "latency": lat}


# ------------------------------------------------------------------------- targets


def targets(summary: Dict[str, List[Dict[str, Any]]], batch: int, zero_copy: bool) -> List[Dict[str, Any]]:
    thr = {(r["mode"], r["size"], r["peer"]): r for r in summary["throughput"]}
    lat = {(r["size"], r["peer"]): r for r in summary["latency"]}
    out: List[Dict[str, Any]] = []

    def add(name: str, target: float, unit: str, higher: bool, got: Optional[float], why_not: str = "",
            bound: str = "", reasons: Sequence[str] = ()) -> None:
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
            row["judged"] = not reasons
            if reasons:
                # Too disturbed to call: say what it would have been, and why not.
                row["status_as_measured"] = row["status"]
                row["status"] = NOT_JUDGED
                row["loaded_reasons"] = list(reasons)
                row["detail"] = "%s: %s; as measured %s" % (LOADED, "; ".join(reasons), row["detail"])
        if bound:
            row["bound"] = bound
        out.append(row)

    def why(*rows: Optional[Dict[str, Any]], key: str = "loaded_reasons") -> List[str]:
        got: List[str] = []
        for r in rows:
            for x in (r or {}).get(key) or ():
                if x not in got:
                    got.append(x)
        return got

    # The goals of core v2 (issue 8, item 9) where they are stricter than
    # v0.1's; the rest are v0.1's (issue 2).
    a64 = thr.get(("spsc", 64, "ackring"))
    per_msg = batch <= 1
    add("SPSC 64 B, per-message API >= 2,000,000 msg/s", 2e6, "msg/s", True,
        a64["msg_per_s"] if a64 and per_msg else None,
        "needs --mode spsc --sizes 64 without --batch", reasons=why(a64))
    add("SPSC 64 B, batch API >= 15,000,000 msg/s", 15e6, "msg/s", True,
        a64["msg_per_s"] if a64 and not per_msg else None,
        "needs --mode spsc --sizes 64 --batch N", reasons=why(a64))
    # pyzmq has no batch API of its own (libzmq batches inside): a --batch
    # run sets ackring's batch path against pyzmq's send / recv.
    goals = (("pyzmq", 3.0, "per-message"), ("mp.Queue", 40.0, "per-message")) if per_msg else \
        (("pyzmq", 10.0, "batch"),)
    for peer, goal, path in goals:
        r = thr.get(("spsc", 64, peer))
        add("SPSC 64 B %s, ackring/%s >= %gx" % (path, peer, goal), goal, "x", True,
            # the median of the per-repeat ratios (as in the ratios table), else the ratio of medians
            (r.get("ackring_over_peer_paired") or r["ackring_over_peer"]) if r and r.get("ackring_over_peer")
            else None,
            "needs --mode spsc --sizes 64 with ackring and %s" % peer,
            # a ratio paired per repeat holds under load; only its own spread counts
            reasons=loaded_reasons(r.get("ratio_spread_pct") if r else None, None, what="paired ratios"))
    a4k = thr.get(("spsc", 4096, "ackring"))
    add("SPSC 4 KiB >= 1,000,000 msg/s", 1e6, "msg/s", True, a4k["msg_per_s"] if a4k else None,
        "needs --mode spsc --sizes 4096", reasons=why(a4k))
    a64k = thr.get(("spsc", 65536, "ackring"))
    add("SPSC 64 KiB, zero-copy receive >= 5 GB/s", 5.0, "GB/s", True,
        a64k["mb_per_s"] / 1e3 if a64k and zero_copy else None,
        "needs --mode spsc --sizes 65536 --zero-copy", reasons=why(a64k))
    l64 = lat.get((64, "ackring"))
    add("ping-pong 64 B p50 <= 2 us", 2.0, "us", False, l64["p50_us"] if l64 else None,
        "needs --mode latency --sizes 64", reasons=why(l64))
    add("ping-pong 64 B p99 <= 20 us", 20.0, "us", False, l64["p99_us"] if l64 else None,
        "needs --mode latency --sizes 64", reasons=why(l64, key="p99_loaded_reasons"))
    sizes = sorted({s for (m, s, p) in thr if m == "mpmc" and p == "ackring" and ("spsc", s, "ackring") in thr})
    if not sizes:
        add("MPMC 2x2 >= 0.6 x SPSC", 0.6, "x", True, None, "needs --mode spsc,mpmc")
    for s in sizes:
        add("MPMC 2x2 >= 0.6 x SPSC (%s)" % fmt_size(s), 0.6, "x", True,
            thr[("mpmc", s, "ackring")]["mpmc_over_spsc"],
            reasons=why(thr[("mpmc", s, "ackring")], thr[("spsc", s, "ackring")]))
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


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else "%.0f%%" % x


def _mark(r: Dict[str, Any], key: str = "loaded_reasons") -> str:
    return "loaded" if r.get(key) else ""


def _load_line(load: Dict[str, Any]) -> str:
    la = load.get("loadavg_at_start")
    parts = []
    if la:
        parts.append("load average %s at start on %d CPU(s) (%.2f per CPU)"
                     % (" ".join("%.2f" % x for x in la), load["cpus"], load["loadavg1_per_cpu_at_start"]))
    if load.get("others_cpu_pct") is not None:
        parts.append("other processes used %.0f%% of the CPU time during the runs (this benchmark's not counted)"
                     % load["others_cpu_pct"])
    verdict = ("LOADED: %s" % "; ".join(load["reasons"])) if load.get("loaded") else "not loaded"
    return "machine load: %s -> %s" % ("; ".join(parts) or "unknown", verdict)


def print_table(out: Dict[str, Any], file: Any) -> None:
    """Ratios against the peers first (they hold when absolute figures do
    not), then the absolute figures with their spread and the load during
    them, then the targets."""
    info, params = out["machine"], out["params"]
    load = out.get("load") or {}
    w = lambda s="": print(s, file=file)  # noqa: E731
    w("ackring bench: median of %d repeat(s); start method %s; batch %s; zero-copy %s"
      % (params["repeat"], info["start_method"], params["batch"] or "off", "on" if params["zero_copy"] else "off"))
    w("cpu: %s (%s cores, %d usable); kernel %s; %s; ackring %s"
      % (info["cpu_model"], info["cpu_count"], info["cpus_usable"], info["kernel"], info["python"],
         info["ackring_version"]))
    if load:
        w(_load_line(load))
    thr = out["results"]["throughput"]
    lat = out["results"]["latency"]
    rrows = []
    for r in thr:
        if r["peer"] == "ackring" or r.get("ackring_over_peer") is None:
            continue
        runs = r.get("runs_ackring_over_peer") or []
        rrows.append((r["mode"], fmt_size(r["size"]), "ackring/%s msg/s" % r["peer"],
                      _num(r.get("ackring_over_peer_paired", r["ackring_over_peer"]), "{:.2f}x"),
                      "%.2fx..%.2fx" % (min(runs), max(runs)) if len(runs) > 1 else "",
                      _pct(r.get("ratio_spread_pct")), "wide" if loaded_reasons(r.get("ratio_spread_pct"), None)
                      else ""))
    for r in lat:
        if r["peer"] == "ackring" or r.get("peer_p50_over_ackring") is None:
            continue
        runs = r.get("runs_peer_p50_over_ackring") or []
        rrows.append(("latency", fmt_size(r["size"]), "%s/ackring p50" % r["peer"],
                      _num(r.get("peer_p50_over_ackring_paired", r["peer_p50_over_ackring"]), "{:.2f}x"),
                      "%.2fx..%.2fx" % (min(runs), max(runs)) if len(runs) > 1 else "",
                      _pct(r.get("ratio_spread_pct")), "wide" if loaded_reasons(r.get("ratio_spread_pct"), None)
                      else ""))
    if rrows:
        w()
        w("Ratios against the peers (> 1 favours ackring; median of the per-repeat ratios, ackring and the peer "
          "measured one after the other in each repeat: they hold better than the absolute figures below)")
        for line in _table(("mode", "size", "ratio", "median", "runs (min..max)", "spread", ""), rrows, left=3):
            w(line)
    if thr:
        w()
        w("Throughput (spsc: 1 producer + 1 consumer process; mpmc: 2 + 2; every ackring message acked)")
        rows = []
        has_mpmc = any(r["mode"] == "mpmc" for r in thr)
        for r in thr:
            runs = r["runs_msg_per_s"]
            row = [
                r["mode"], fmt_size(r["size"]), r["peer"], "{:,}".format(r["messages"]),
                _num(r["msg_per_s"]), _num(r["mb_per_s"], "{:,.1f}"),
                _num(min(runs)) + ".." + _num(max(runs)) if len(runs) > 1 else "",
                _pct(r.get("spread_pct")), _pct(r.get("others_cpu_pct")),
            ]
            if has_mpmc:
                row.append(_num(r.get("mpmc_over_spsc"), "{:.2f}"))
            row.append(_mark(r))
            rows.append(row)
        head = ["mode", "size", "peer", "messages", "msg/s", "MB/s", "runs (min..max msg/s)", "spread",
                "others' CPU"] + (["mpmc/spsc"] if has_mpmc else []) + [""]
        for line in _table(head, rows, left=3):
            w(line)
    if lat:
        w()
        w("Round-trip latency (ping-pong between two processes, blocking waits; perf_counter_ns per round trip)")
        rows = []
        for r in lat:
            runs = r["runs_p50_us"]
            rows.append((
                fmt_size(r["size"]), r["peer"], "{:,}".format(r["rounds"]),
                _num(r["p50_us"], "{:,.1f}"), _num(r["p99_us"], "{:,.1f}"), _num(r["p999_us"], "{:,.1f}"),
                "%.1f..%.1f" % (min(runs), max(runs)) if len(runs) > 1 else "",
                _pct(r.get("p50_spread_pct")), _pct(r.get("p99_spread_pct")), _pct(r.get("others_cpu_pct")),
                _mark(r),
            ))
        for line in _table(("size", "peer", "rounds", "p50 us", "p99 us", "p99.9 us", "p50 runs (min..max)",
                            "p50 spread", "p99 spread", "others' CPU", ""), rows, left=2):
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
    if load:
        w("load: %s" % thresholds_text())
        if load.get("loadavg_at_end"):
            w("load: load average %s at end (the 1-minute figure includes this benchmark's own processes)"
              % " ".join("%.2f" % x for x in load["loadavg_at_end"]))
    apis: Dict[str, set] = {}
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
