"""The ``ackring`` command line, run as a subprocess (``python -m ackring``)
for every command, in text and --json, against queues in the test's
ACKRING_DIR; the broken pipe; --dir; the exit statuses."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import ackring

TIMEOUT = 60


def run(*args, input=None, check=True, env=None):
    p = subprocess.run([sys.executable, "-m", "ackring"] + [str(a) for a in args], input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT, env=env)
    if check and p.returncode != 0:
        raise AssertionError("ackring %s: exit %d\n%s" % (" ".join(map(str, args)), p.returncode,
                                                           p.stderr.decode()))
    return p


def out(*args, **kw):
    return run(*args, **kw).stdout.decode()


def js(*args, **kw):
    return json.loads(run(*args, "--json", **kw).stdout)


def test_version():
    o = out("--version")
    assert o.startswith("ackring %s (backend %s" % (ackring.__version__, ackring.backend))


def test_every_command_has_help_json_and_named_name_argument():
    for cmd in ("ls", "stats", "peek", "get", "publish", "dlq", "redrive", "purge", "rm", "create",
                "check", "watchdog"):
        h = out(cmd, "--help")
        assert "--json" in h and "--dir" in h, cmd
        if cmd != "ls":
            assert "queue name" in h, cmd    # the name argument has help text


def test_stats_help_explains_every_counter(q):
    h = out("stats", "--help")
    for key in q.stats():
        assert "\n  %s " % key in h, key
    from ackring._admin import STATS_HELP

    assert sorted(k for k, _ in STATS_HELP) == sorted(q.stats())   # no counter left out, none invented


def test_create_ls_rm(qname):
    info = js("create", qname, "--capacity", 16, "--message-size", "1k", "--max-deliveries", 3, "--ttl", 60)
    assert (info["capacity"], info["message_size"], info["max_deliveries"], info["ttl"]) == (16, 1024, 3, 60.0)
    r = run("create", qname, check=False)
    assert r.returncode == 1 and b"exists" in r.stderr
    assert js("create", qname, "--exist-ok")["queue"] == qname
    with ackring.open(qname, watchdog=None) as q:
        with q.producer() as p:                 # closed: a dropped one is freed only by the GC on PyPy
            p.put(b"x")
        c = q.consumer()
        c.get(timeout=1)                                   # held: in flight
        rows = {r["name"]: r for r in js("ls")}
        assert rows[qname]["depth"] == 0 and rows[qname]["in_flight"] == 1
        assert rows[qname]["consumers"] == 1 and rows[qname]["dlq_depth"] == 0
        text = out("ls").splitlines()
        assert text[0].split() == ["NAME", "DEPTH", "IN_FLIGHT", "CONSUMERS", "PRODUCERS", "DLQ", "CAPACITY",
                                   "DURABILITY", "SIZE"]
        line = [ln for ln in text if ln.startswith(qname + " ")][0]
        assert line.split()[:7] == [qname, "0", "1", "1", "0", "0", "16"]
        o = out("rm", qname)
        assert "removed queue %r" % qname in o and "1 attached" in o
        assert q.is_shutdown                                # attached processes were told
        c.close()
    assert qname not in {r["name"] for r in js("ls")}
    r = run("rm", qname, check=False)
    assert r.returncode == 1 and b"no such queue" in r.stderr
    assert js("rm", qname, "--force")["removed"]


def test_publish_peek_get(q):
    assert js("publish", q.name, "hello")["ids"] == [0]
    assert js("publish", q.name, "-", input=b"\x00\xffbinary")["ids"] == [1]
    assert js("publish", q.name, "--lines", input=b"a\nb\n")["ids"] == [2, 3]
    assert "published 1 message(s)" in out("publish", q.name, "x" * 200)
    peek = js("peek", q.name, "-n", 3)
    assert peek["depth"] == 5 and [m["id"] for m in peek["messages"]] == [0, 1, 2]
    assert peek["messages"][0]["body_text"] == "hello"
    assert base64.b64decode(peek["messages"][1]["body_base64"]) == b"\x00\xffbinary"
    assert "body_text" not in peek["messages"][1]
    text = out("peek", q.name)
    assert '"hello"' in text and "hex:00ff" in text
    long_line = [ln for ln in text.splitlines() if ln.split()[0] == "4"][0]
    assert "xxx..." in long_line and len(long_line) < 150           # truncated
    assert q.stats()["depth"] == 5                                  # peek took nothing
    g = js("get", q.name)                                           # default: requeue
    assert (g["message"]["id"], g["message"]["action"], g["message"]["body_text"]) == (0, "requeued", "hello")
    assert q.stats()["depth"] == 5 and q.stats()["nacked"] == 1
    assert "acked" in out("get", q.name, "--ack")
    assert q.stats()["depth"] == 4 and q.stats()["acked"] == 1
    assert run("get", q.name, "--ack", "--raw").stdout == b"\x00\xffbinary"
    r = run("get", q.name, "--ack", "--requeue", check=False)
    assert r.returncode == 2                                        # mutually exclusive
    c = q.consumer()
    while True:
        try:
            c.get(timeout=0).ack()
        except ackring.Empty:
            break
    r = run("get", q.name, check=False)
    assert r.returncode == 1 and b"no message ready" in r.stderr


def test_purge_leaves_held_messages(q):
    p = q.producer()
    p.put_many([b"%d" % i for i in range(5)])
    c = q.consumer()
    held = c.get(timeout=1)
    res = js("purge", q.name)
    assert (res["purged"], res["in_flight"]) == (4, 1)
    assert q.stats()["depth"] == 0
    held.ack()
    assert "purged 0 ready message(s)" in out("purge", q.name)


def _dead_letters(q, reasons):
    p, c = q.producer(), q.consumer()
    for i, r in enumerate(reasons):
        p.put(b"dead%d" % i)
        m = c.get(timeout=1)
        if r == "rejected":
            m.reject()
        else:
            raise AssertionError(r)
    c.close()


def test_dlq_lists_dead_letters_with_reason_and_times(make_queue):
    q = make_queue(max_deliveries=1)
    _dead_letters(q, ["rejected", "rejected"])
    # a third one over the delivery limit: delivered once, requeued, dead at the second delivery
    q.producer().put(b"limit")
    with q.consumer() as c:
        c.get(timeout=1).nack()
    with q.consumer() as c:
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.2)
    d = js("dlq", q.name)
    assert d["depth"] == 3 and d["dlq"] == q.name + ".dlq"
    deaths = [m["death"] for m in d["messages"]]
    assert [x["reason"] for x in deaths] == ["rejected", "rejected", "delivery_limit"]
    assert [m["body_text"] for m in d["messages"]] == ["dead0", "dead1", "limit"]
    assert all(x["time"] >= x["first_publish_time"] > 0 for x in deaths)
    text = out("dlq", q.name)
    assert "3 dead letter(s)" in text and "delivery_limit 1" in text and "rejected 2" in text
    assert q.dead_letters.stats()["depth"] == 3                       # nothing taken


def test_redrive_counts_and_filters(make_queue):
    q = make_queue(capacity=4, max_deliveries=1)
    _dead_letters(q, ["rejected", "rejected"])
    q.producer().put(b"limit")
    with q.consumer() as c:
        c.get(timeout=1).nack()
    with q.consumer() as c:
        with pytest.raises(ackring.Empty):
            c.get(timeout=0.2)
    r = js("redrive", q.name, "--reason", "delivery_limit")
    assert (r["moved"], r["dlq_depth"]) == (1, 2)
    assert "moved 1 dead letter(s)" in out("redrive", q.name, "-n", 1)
    assert [m["body"] for m in q.peek()] == [b"limit", b"dead0"]
    # main queue full (capacity 4): the redrive stops, the dead letter in hand stays in the DLQ
    q.producer().put_many([b"f1", b"f2"])
    r = run("redrive", q.name, "--timeout", 0.2, "--json", check=False)
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert (res["moved"], res["dlq_depth"]) == (0, 1) and "full" in res["stopped"]
    assert q.stats()["depth"] == 4
    assert [m["body"] for m in q.dead_letters.peek()] == [b"dead1"]


def test_stats_text_json_and_watch(q):
    q.producer().put(b"x")
    st = js("stats", q.name)
    assert st["depth"] == 1 and st["published"] == 1
    text = out("stats", q.name)
    rows = {ln.split()[0]: ln.split()[1] for ln in text.splitlines()[2:]}
    assert rows["depth"] == "1" and rows["published"] == "1" and rows["dead_lettered.rejected"] == "0"
    assert "{" not in text                                          # no dict reprs
    lines = out("stats", q.name, "--watch", "--count", 3, "--interval", 0.05, "--json").splitlines()
    assert len(lines) == 3 and all(json.loads(ln)["depth"] == 1 for ln in lines)
    text = out("stats", q.name, "--watch", "--count", 2, "--interval", 0.05)
    assert text.count("queue %r" % q.name) == 2 and "RATE" in text


def _closed_pipe():
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.parametrize("args", [["ls"], ["stats", None], ["stats", None, "--watch", "--interval", "0.01"],
                                  ["peek", None], ["dlq", None]])
def test_broken_pipe_exits_quietly(q, args):
    for i in range(8):
        q.producer().put(b"m%d" % i)
    argv = [q.name if a is None else a for a in args]
    w = _closed_pipe()
    try:
        p = subprocess.run([sys.executable, "-m", "ackring"] + argv, stdout=w, stderr=subprocess.PIPE,
                           timeout=TIMEOUT)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, b"")


def test_broken_pipe_with_head():
    # the shell case: ackring ls | head -1
    p = subprocess.run("%s -m ackring stats --help | head -1" % sys.executable, shell=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert p.returncode == 0 and p.stdout.startswith(b"usage:") and p.stderr == b""


def test_dir_option_and_environment(tmp_path, qname):
    d = str(tmp_path)
    env = dict(os.environ)
    env.pop("ACKRING_DIR")
    run("--dir", d, "create", qname, "-c", 4, env=env)          # before the command
    assert os.path.exists(os.path.join(d, "ackring." + qname))
    assert [r["name"] for r in js("ls", "--dir", d, env=env)] == [qname]   # after it
    env["ACKRING_DIR"] = d
    assert [r["name"] for r in js("ls", env=env)] == [qname]
    run("rm", qname, env=env)
    r = run("ls", "--dir", str(tmp_path / "missing"), check=False)
    assert r.returncode == 1 and b"does not exist" in r.stderr


def test_check_several_and_all(make_queue):
    a, b = make_queue(name="qa"), make_queue(name="qb")
    res = js("check", "qa", "qb")
    assert [(r["queue"], r["ok"]) for r in res] == [("qa", True), ("qb", True)]
    assert {r["queue"] for r in js("check", "--all")} == {"qa", "qb"}
    assert js("check", "qa")["ok"] is True
    assert "queue 'qa': ok" in out("check", "qa", "--reclaim")
    r = run("check", check=False)
    assert r.returncode == 1 and b"--all" in r.stderr


def test_check_reports_what_its_own_open_repaired(make_queue):
    """A consumer killed while it holds a message: the open that `ackring
    check` does reclaims it, and check says so instead of a bare "ok"."""
    q = make_queue(name="qr", watchdog=None)
    q.producer().put(b"held")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import ackring, sys; q = ackring.open('qr', watchdog=None); c = q.consumer(); "
        "m = c.get(timeout=10); print(m.id, flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"0"
    finally:
        holder.kill()
        holder.wait(TIMEOUT)
    text = out("check", "qr")
    assert "queue 'qr': opening it repaired 1 dead process entries, 1 message(s) requeued" in text
    assert "queue 'qr': ok" in text
    res = js("check", "qr")                                  # a second open finds nothing left
    assert res["ok"] is True and res["repaired_on_open"] == {}
    assert q.stats()["depth"] == 1 and q.stats()["in_flight"] == 0


def test_watchdog_reclaims_a_dead_holder_in_one_of_several_queues(make_queue):
    a, b = make_queue(name="wa", watchdog=None), make_queue(name="wb", watchdog=None)
    b.producer().put(b"held")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import ackring, sys; q = ackring.open('wb', watchdog=None); c = q.consumer(); "
        "m = c.get(timeout=10); print(m.id, flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    wd = None
    try:
        assert holder.stdout.readline().strip() == b"0"
        assert b.stats()["in_flight"] == 1
        wd = subprocess.Popen([sys.executable, "-m", "ackring", "watchdog", "--all", "--json",
                               "--interval", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = json.loads(wd.stdout.readline())
        assert sorted(first["watching"]) == ["wa", "wb"]
        holder.kill()
        holder.wait(TIMEOUT)
        event = json.loads(wd.stdout.readline())                   # the watchdog's pass, not ours
        assert (event["queue"], event["reclaimed"]) == ("wb", 1)
        assert b.stats()["depth"] == 1 and b.stats()["in_flight"] == 0
        wd.send_signal(signal.SIGTERM)
        assert wd.wait(TIMEOUT) == 0
    finally:
        for p in (holder, wd):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(TIMEOUT)
    done = run("watchdog", "wa", "--count", 2, "--interval", 0.01)
    assert b"1 queue(s) (wa)" in done.stdout


def test_errors_are_one_line_not_tracebacks(qname):
    for args in (["stats", qname], ["peek", qname], ["get", qname], ["publish", qname, "x"], ["dlq", qname],
                 ["redrive", qname], ["purge", qname], ["create", "bad/name"], ["create", qname, "-c", 3]):
        r = run(*args, check=False)
        assert r.returncode in (1, 2), args
        assert b"Traceback" not in r.stderr and r.stderr.strip(), args
