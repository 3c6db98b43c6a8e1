"""Turn ``ackring bench --json`` output into the Markdown tables of BENCHMARKS.md.

    python bench/json_to_md.py out.json [more.json ...]

Not collected by pytest (the bench/ pattern is bench_*.py).
"""

import json
import sys


def _fmt_size(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return "%d %s" % (n // div, unit)
    return "%d B" % n


def _n(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def tables(out):
    lines = []
    thr = out["results"]["throughput"]
    if thr:
        mpmc = any(r["mode"] == "mpmc" for r in thr)
        head = ["mode", "size", "peer", "messages/run", "msg/s (median)", "MB/s", "min..max msg/s", "ackring/peer"]
        if mpmc:
            head.append("mpmc/spsc")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|")
        for r in thr:
            runs = r["runs_msg_per_s"]
            row = [r["mode"], _fmt_size(r["size"]), r["peer"], "{:,}".format(r["messages"]), _n(r["msg_per_s"]),
                   _n(r["mb_per_s"], "{:,.1f}"), "%s..%s" % (_n(min(runs)), _n(max(runs))),
                   _n(r.get("ackring_over_peer"), "{:.2f}x")]
            if mpmc:
                row.append(_n(r.get("mpmc_over_spsc"), "{:.2f}"))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lat = out["results"]["latency"]
    if lat:
        lines.append("| size | peer | rounds/run | p50 us | p99 us | p99.9 us | p50 runs (us) | peer/ackring p50 |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in lat:
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                _fmt_size(r["size"]), r["peer"], "{:,}".format(r["rounds"]), _n(r["p50_us"], "{:.1f}"),
                _n(r["p99_us"], "{:.1f}"), _n(r["p999_us"], "{:.1f}"),
                " ".join("%.1f" % x for x in r["runs_p50_us"]), _n(r.get("peer_p50_over_ackring"), "{:.2f}x")))
        lines.append("")
    return "\n".join(lines)


def targets(out):
    lines = ["| target | measured (median) | status |", "|---|---:|---|"]
    for t in out["targets"]:
        if t["measured"] is None:
            continue
        u = t["unit"]
        got = ("{:,.0f} msg/s".format(t["measured"]) if u == "msg/s" else "%.2fx" % t["measured"] if u == "x"
               else "%.2f %s" % (t["measured"], u))
        lines.append("| %s | %s | %s |" % (t["target"], got, t["detail"]))
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            out = json.load(f)
        m = out["machine"]
        load = out.get("load") or {}
        others = load.get("others_cpu_pct")
        print("<!-- %s: load average %s at start, %s at end%s -->" % (
            path, m.get("loadavg_at_start"), m.get("loadavg_at_end"),
            "" if others is None else "; other processes used %.0f%% of the CPU time" % others))
        print(tables(out))
        print(targets(out))
        for note in out["notes"]:
            print("- note: %s" % note)
        print()
