"""`ackring bench --mode objects,asyncio`: a small run end to end.  The
harness checks that each consumer got exactly what was sent (and nothing
more), so a run that returns 0 moved every object."""

import contextlib
import io
import json

import pytest

from ackring import cli


def bench(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["bench", "--repeat", "1", "--no-progress", "--json"] + list(argv))
    assert rc == 0
    return json.loads(out.getvalue())


def test_objects_mode():
    pytest.importorskip("numpy")
    res = bench("--mode", "objects", "--messages", "2000", "--max-bytes", "64M",
                "--peers", "ackring.mp,mp.Queue")["results"]["objects"]
    got = {(r["payload"], r["peer"]) for r in res}
    assert got == {(k, p) for k in ("dict10", "ndarray1M") for p in ("ackring.mp", "mp.Queue")}
    for r in res:
        assert r["obj_per_s"] > 0 and r["objects"] >= 64
        if r["peer"] != "ackring.mp":
            assert r["ackring_mp_over_peer"] > 0


def test_asyncio_mode():
    res = bench("--mode", "asyncio", "--messages", "3000", "--rounds", "300", "--warmup", "30")["results"]["asyncio"]
    assert [r["variant"] for r in res["throughput"]] == ["blocking", "thread->asyncio.Queue", "ackring.aio"]
    assert all(r["msg_per_s"] > 0 for r in res["throughput"])
    assert all(0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] for r in res["latency"])


def test_object_modes_run_on_their_own(capsys):
    assert cli.main(["bench", "--mode", "objects,spsc"]) == 2
    assert "on its own" in capsys.readouterr().err
