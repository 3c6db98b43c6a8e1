"""`ackring bench` on a loaded machine (issue 11 item 7): the report prints
the load and each figure's spread, puts the ratios against the peers first,
and does not call a target met or missed from figures too disturbed to judge.

The report functions are fed synthetic runs (so the verdicts are exact);
one real `ackring bench` subprocess checks that the columns and JSON keys
exist.  No assertion depends on how fast anything ran."""

import io
import json
import subprocess
import sys

import pytest

from ackring._bench import report
from ackring._bench.common import CpuSample

INFO = {"cpu_model": "test cpu", "cpu_count": 2, "cpus_usable": 2, "kernel": "k", "python": "CPython",
        "ackring_version": "0", "start_method": "fork", "loadavg_at_start": "0.10 0.10 0.10",
        "loadavg_at_end": "0.20 0.10 0.10"}
PARAMS = {"repeat": 3, "batch": 0, "zero_copy": False}


def thr_run(rate, others=None, messages=20000):
    r = {"messages": messages, "elapsed_s": messages / rate, "msg_per_s": rate, "mb_per_s": rate * 64 / 1e6,
         "api": "put -> get"}
    if others is not None:       # % of the machine's CPU time used by other processes
        r["cpu_others_s"], r["cpu_total_s"] = others / 100.0, 1.0
    return r


def lat_run(p50, p99, others=None):
    r = {"rounds": 5000, "elapsed_s": 0.01, "p50_us": p50, "p99_us": p99, "p999_us": p99 * 2, "min_us": 0.5,
         "max_us": p99 * 3, "mean_us": p50, "api": "put / get"}
    if others is not None:
        r["cpu_others_s"], r["cpu_total_s"] = others / 100.0, 1.0
    return r


def build(runs, info=INFO):
    load = report.machine_load(info, runs)
    summary = report.summarize(runs, ["ackring", "mp.Queue", "pyzmq"], load)
    out = {"machine": info, "params": PARAMS, "results": summary, "targets": report.targets(summary, 0, False),
           "load": load, "peers": {"ackring": "a", "mp.Queue": "q", "pyzmq": "z"}, "notes": []}
    text = io.StringIO()
    report.print_table(out, text)
    return out, text.getvalue()


def by_target(out, prefix):
    (t,) = [t for t in out["targets"] if t["target"].startswith(prefix)]
    return t


def loaded_runs():
    # ackring 64 B: 1.0 M .. 3.0 M msg/s (spread 100%) while others used 60% of the CPU;
    # the peers slowed down in the same repeats, so the paired ratios stay close.
    return {
        ("spsc", 64, "ackring"): [thr_run(3.0e6, 60), thr_run(1.0e6, 60), thr_run(2.9e6, 60)],
        ("spsc", 64, "mp.Queue"): [thr_run(0.7e5, 60), thr_run(0.24e5, 60), thr_run(0.68e5, 60)],
        ("spsc", 64, "pyzmq"): [thr_run(1.0e6, 60), thr_run(0.33e6, 60), thr_run(0.96e6, 60)],
        ("spsc", 4096, "ackring"): [thr_run(0.5e6, 60), thr_run(0.9e6, 60), thr_run(0.6e6, 60)],
        ("latency", 64, "ackring"): [lat_run(1.0, 3.0, 60), lat_run(9.0, 40.0, 60), lat_run(1.1, 3.1, 60)],
        ("latency", 64, "mp.Queue"): [lat_run(30.0, 90.0, 60), lat_run(31.0, 95.0, 60), lat_run(30.5, 91.0, 60)],
    }


def quiet_runs():
    return {
        ("spsc", 64, "ackring"): [thr_run(3.0e6, 2), thr_run(2.9e6, 2), thr_run(3.1e6, 2)],
        ("spsc", 64, "mp.Queue"): [thr_run(1.0e5, 2), thr_run(1.01e5, 2), thr_run(0.99e5, 2)],
        ("spsc", 4096, "ackring"): [thr_run(0.80e6, 2), thr_run(0.82e6, 2), thr_run(0.81e6, 2)],
        ("latency", 64, "ackring"): [lat_run(1.0, 3.0, 2), lat_run(1.05, 3.1, 2), lat_run(1.1, 3.05, 2)],
    }


def test_spread_pct():
    assert report.spread_pct([90.0, 100.0, 110.0]) == pytest.approx(20.0)
    assert report.spread_pct([5.0]) is None          # one run: no spread to speak of
    assert report.spread_pct([]) is None


def test_cpu_sample_takes_our_own_time_out():
    a = CpuSample(busy=10.0, total=100.0, own=1.0)
    b = CpuSample(busy=11.0, total=102.0, own=1.3)
    assert CpuSample.others_busy(a, b) == pytest.approx((0.7, 2.0))
    # our own time is counted more precisely than /proc/stat's ticks: never below zero
    assert CpuSample.others_busy(a, CpuSample(busy=10.1, total=101.0, own=1.5)) == (0.0, pytest.approx(1.0))
    assert CpuSample.others_busy(None, b) is None
    assert CpuSample.others_busy(b, b) is None       # no time passed
    real = CpuSample.take()
    if real is not None:                             # Linux: /proc/stat is there
        assert real.total >= real.busy >= 0 and real.own >= 0


def test_loaded_machine_targets_not_judged_and_ratios_first():
    out, text = build(loaded_runs())
    a64 = by_target(out, "SPSC 64 B, per-message API")
    assert a64["status"] == report.NOT_JUDGED and a64["judged"] is False
    assert a64["status_as_measured"] == "met"        # the median (2.9 M) is above 2 M, but not believable
    assert any("spread" in x for x in a64["loaded_reasons"])
    assert any("others used 60% CPU" in x for x in a64["loaded_reasons"])
    assert "not judged (machine loaded)" in a64["detail"]
    a4k = by_target(out, "SPSC 4 KiB")
    assert a4k["status"] == report.NOT_JUDGED and a4k["status_as_measured"] == "missed"
    assert by_target(out, "ping-pong 64 B p50")["status"] == report.NOT_JUDGED
    # the paired ratios spread little (3.0/1.0/2.9 against 0.7/0.24/0.68 x 1e5): they are judged
    q = by_target(out, "SPSC 64 B per-message, ackring/mp.Queue")
    assert q["status"] == "met" and q["judged"] is True
    qrow = [r for r in out["results"]["throughput"] if r["peer"] == "mp.Queue"][0]
    assert q["measured"] == qrow["ackring_over_peer_paired"]    # the figure the ratios table shows
    z = by_target(out, "SPSC 64 B per-message, ackring/pyzmq")
    assert z["status"] == "met" and z["judged"] is True
    assert out["load"]["loaded"] and out["load"]["others_cpu_pct"] == pytest.approx(60.0)
    assert out["load"]["thresholds"] == report.THRESHOLDS
    row = [r for r in out["results"]["throughput"] if r["peer"] == "ackring" and r["size"] == 64][0]
    assert row["spread_pct"] == pytest.approx((3.0 - 1.0) / 2.9 * 100)
    assert row["min_msg_per_s"] == 1.0e6 and row["max_msg_per_s"] == 3.0e6 and row["loaded"]

    assert text.count("not judged (machine loaded):") >= 3
    i_load = text.index("machine load:")
    i_ratio = text.index("Ratios against the peers")
    i_thr = text.index("Throughput (")
    i_lat = text.index("Round-trip latency")
    i_tg = text.index("Targets (ackring)")
    assert i_load < i_ratio < i_thr < i_lat < i_tg
    assert "LOADED" in text[i_load:i_ratio]
    assert "ackring/mp.Queue msg/s" in text[i_ratio:i_thr]
    assert "mp.Queue/ackring p50" in text[i_ratio:i_thr]
    # the thresholds are printed, with the values the verdicts used
    assert "%.0f%%" % report.SPREAD_MAX_PCT in text and "%.0f%%" % report.OTHERS_CPU_MAX_PCT in text
    header = [line for line in text[i_thr:].splitlines() if line.startswith("mode")][0]
    assert "spread" in header and "others' CPU" in header


def test_quiet_machine_targets_judged():
    out, text = build(quiet_runs())
    assert by_target(out, "SPSC 64 B, per-message API")["status"] == "met"
    assert by_target(out, "SPSC 4 KiB")["status"] == "missed"     # a real miss stays a miss
    assert by_target(out, "ping-pong 64 B p50")["status"] == "met"
    assert all(t.get("judged", True) for t in out["targets"])
    assert not out["load"]["loaded"] and out["load"]["reasons"] == []
    assert "(machine loaded):" not in text and "LOADED" not in text and "-> not loaded" in text
    assert all(not r["loaded"] for r in out["results"]["throughput"] + out["results"]["latency"])


def test_batch_run_has_the_batch_goals():
    """A --batch run is judged on the batch goals (issue 8 item 9): >= 15 M
    msg/s and >= 10x pyzmq, whose send / recv is its only path."""
    runs = {("spsc", 64, "ackring"): [thr_run(16e6, 2), thr_run(15.5e6, 2), thr_run(16.5e6, 2)],
            ("spsc", 64, "pyzmq"): [thr_run(1.7e6, 2), thr_run(1.6e6, 2), thr_run(1.75e6, 2)]}
    load = report.machine_load(INFO, runs)
    summary = report.summarize(runs, ["ackring", "pyzmq"], load)
    out = {t["target"]: t for t in report.targets(summary, 64, False)}
    assert out["SPSC 64 B, batch API >= 15,000,000 msg/s"]["status"] == "met"
    z = out["SPSC 64 B batch, ackring/pyzmq >= 10x"]
    assert z["status"] == "missed" and z["measured"] == pytest.approx(16e6 / 1.7e6, rel=0.02)
    assert out["SPSC 64 B, per-message API >= 2,000,000 msg/s"]["status"] == "not measured"
    assert not any("mp.Queue" in name for name in out)   # a per-message goal: not set for a batch run


def test_wide_paired_ratio_is_not_judged():
    runs = quiet_runs()
    runs[("spsc", 64, "mp.Queue")] = [thr_run(1.5e5, 2), thr_run(3.0e5, 2), thr_run(2.0e5, 2)]
    out, _ = build(runs)
    q = by_target(out, "SPSC 64 B per-message, ackring/mp.Queue")
    assert q["status"] == report.NOT_JUDGED and q["status_as_measured"] == "missed"
    assert q["loaded_reasons"] == ["paired ratios spread %.0f%% > %.0f%%"
                                   % (report.spread_pct([20.0, 10.0, 15.0]), report.SPREAD_MAX_PCT)]


def test_without_cpu_samples_the_load_average_decides():
    runs = {k: [{kk: vv for kk, vv in r.items() if not kk.startswith("cpu_")} for r in rs]
            for k, rs in quiet_runs().items()}
    busy = dict(INFO, loadavg_at_start="3.00 2.00 1.00")   # 1.5 per CPU
    out, text = build(runs, busy)
    assert out["load"]["others_cpu_pct"] is None
    assert out["load"]["loadavg1_per_cpu_at_start"] == pytest.approx(1.5)
    t = by_target(out, "SPSC 64 B, per-message API")
    assert t["status"] == report.NOT_JUDGED and "load average 1.50 per CPU" in t["detail"]
    out, _ = build(runs)                                  # 0.05 per CPU: judged
    assert by_target(out, "SPSC 64 B, per-message API")["status"] == "met"


def test_one_repeat_has_no_spread_and_is_judged_on_load_alone():
    runs = {k: rs[:1] for k, rs in quiet_runs().items()}
    out, text = build(runs)
    row = out["results"]["throughput"][0]
    assert row["spread_pct"] is None and not row["loaded"]
    assert by_target(out, "SPSC 64 B, per-message API")["status"] == "met"


# ------------------------------------------------------------------ real run


def _bench(*args):
    p = subprocess.run([sys.executable, "-m", "ackring", "bench", "--messages", "2000", "--repeat", "2",
                        "--rounds", "1000", "--warmup", "100", "--no-progress"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=240)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


@pytest.mark.timeout(300)
def test_real_bench_prints_load_spread_and_ratios_first():
    text = _bench()
    assert text.index("machine load:") < text.index("Ratios against the peers") < text.index("Throughput (") \
        < text.index("Targets (ackring)")
    thr_header = [line for line in text.splitlines() if line.startswith("mode  ")][-1]
    for col in ("msg/s", "runs (min..max msg/s)", "spread", "others' CPU"):
        assert col in thr_header
    lat_header = [line for line in text.splitlines() if line.startswith("size  ")][0]
    for col in ("p50 spread", "p99 spread", "others' CPU"):
        assert col in lat_header
    assert "load: a figure is marked loaded" in text
    assert "ackring/mp.Queue msg/s" in text


@pytest.mark.timeout(300)
def test_real_bench_json_keeps_old_keys_and_adds_load():
    out = json.loads(_bench("--json", "--peers", "mp.Queue"))
    assert {"machine", "params", "statistic", "peers", "results", "targets", "notes", "peer_failures",
            "load"} <= set(out)
    assert "loadavg_at_start" in out["machine"] and "loadavg_at_end" in out["machine"]
    load = out["load"]
    assert load["thresholds"] == report.THRESHOLDS and isinstance(load["loaded"], bool)
    assert load["cpus"] >= 1 and isinstance(load["targets_not_judged"], int)
    for r in out["results"]["throughput"]:
        for k in ("msg_per_s", "mb_per_s", "runs_msg_per_s", "messages", "repeats", "api", "ackring_over_peer"):
            assert k in r, k
        assert len(r["runs_msg_per_s"]) == 2
        assert r["min_msg_per_s"] <= r["msg_per_s"] <= r["max_msg_per_s"]
        assert r["spread_pct"] >= 0 and isinstance(r["loaded"], bool)
        assert "others_cpu_pct" in r
    mpq = [r for r in out["results"]["throughput"] if r["peer"] == "mp.Queue"]
    assert mpq and all(len(r["runs_ackring_over_peer"]) == 2 for r in mpq)
    for r in out["results"]["latency"]:
        for k in ("p50_us", "p99_us", "p999_us", "runs_p50_us", "p50_spread_pct", "p99_spread_pct"):
            assert k in r, k
    for t in out["targets"]:
        assert t["status"] in ("met", "missed", "not measured", report.NOT_JUDGED)
        if t["status"] == report.NOT_JUDGED:
            assert t["status_as_measured"] in ("met", "missed") and t["loaded_reasons"]
    assert load["targets_not_judged"] == sum(t["status"] == report.NOT_JUDGED for t in out["targets"])
