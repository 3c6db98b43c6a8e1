"""`ackring bench --mode durable` end to end with few messages.  Every cell
drains (or counts) what it put and raises on a miscount, so a run that
returns moved every message; the group-commit figures come from the
queue's own syncs counter."""
import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile

import pytest

from ackring._bench import driver, durable

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".durable-tmp")


@pytest.fixture
def bdir():
    os.makedirs(ROOT, exist_ok=True)
    d = tempfile.mkdtemp(dir=ROOT)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(240)
def test_durable_mode_end_to_end(bdir):
    args = argparse.Namespace(mode=["durable"], messages=400, repeat=1, json=True, timeout=120.0, dir=bdir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert driver.run_bench(args) == 0
    res = json.loads(out.getvalue())
    rows = {(r["peer"], r["size"], r["producers"]): r for r in res["results"]["durable"]}
    for size in (64, 4096):
        for k in (1, 4):
            for peer in ("ackring:os", "ackring:sync", "ackring:sync:put_many64", "ackring:memory", "sqlite3-wal"):
                assert rows[(peer, size, k)]["msg_per_s"] > 0
            sync = rows[("ackring:sync", size, k)]
            assert sync["syncs_per_s"] > 0 and sync["p50_confirm_us"] <= sync["p99_confirm_us"]
            # put_many of 64 per confirm: many messages per sync
            assert rows[("ackring:sync:put_many64", size, k)]["msgs_per_sync"] > 8
            assert rows[("ackring:os", size, k)]["over_shm"] > 0
    assert not os.listdir(bdir)  # the run cleans up after itself
    if not any(r["peer"] == "persist-queue" for r in rows.values()):
        assert any("persist-queue" in n for n in res["notes"])
    if not os.environ.get("ACKRING_AMQP_URL"):
        assert any("ACKRING_AMQP_URL" in n for n in res["notes"])


def test_durable_mode_table(bdir):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert durable.main(["-n", "100", "-r", "1", "--dir", bdir]) == 0
    text = out.getvalue()
    assert "ackring:sync" in text and "msg/sync" in text and "sqlite3-wal" in text


def test_durable_runs_on_its_own():
    args = argparse.Namespace(mode=["durable", "spsc"], messages=10, repeat=1, json=True)
    assert driver.run_bench(args) == 2
