"""File-backed queues (issue 9): durability "os" and "sync", group commit,
the rebuild after a reboot, torn slots, check on files, a full disk, SIGKILL
torture and crash images that simulate power loss.

Durable tests need a real filesystem (fdatasync means something there, not
on tmpfs): the queues live under tests/../.durable-tmp (the worktree/clone)."""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import ackring
import importlib

backend = importlib.import_module("ackring.backend")

import _crash_images as ci
import _layout
import _torture

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(os.path.dirname(HERE), ".durable-tmp")


@pytest.fixture
def ddir():
    os.makedirs(ROOT, exist_ok=True)
    d = tempfile.mkdtemp(dir=ROOT, prefix="t-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _fstype(path):
    out = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return out.stdout.strip()


def test_queue_dir_is_a_real_filesystem(ddir):
    assert _fstype(ddir) not in ("tmpfs", "ramfs"), "durable tests need a disk filesystem"


def _run(code, *args, timeout=60):
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                       cwd=HERE)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("durability", ["os", "sync"])
def test_create_by_path_and_dir_same_api(ddir, durability):
    path = os.path.join(ddir, "jobs.ackring")
    q = ackring.create(path=path, durability=durability, capacity=16, message_size=128, max_deliveries=2)
    try:
        assert q.path == path and q.durability == durability
        assert os.path.exists(path) and os.path.exists(path + ".dlq")  # DLQ: a sibling file
        with q.producer() as p, q.consumer() as c:
            p.put(b"a")
            p.put(b"b")
            p.put(b"c", ttl=0.001)
            m = c.get(timeout=1)
            assert m.body == b"a"
            m.ack()
            m = c.get(timeout=1)
            assert m.body == b"b"
            m.nack()                       # requeue
            m = c.get(timeout=1)
            assert m.body == b"b" and m.delivery_count == 2
            m.reject()                     # -> DLQ file
            time.sleep(0.01)
            with pytest.raises(ackring.Empty):
                c.get(timeout=0)           # c expired
        dl = q.dead_letters
        reasons = sorted(d["reason"] for d in (dm.death for dm in _drain_msgs(dl)))
        assert reasons == ["expired", "rejected"]
    finally:
        q.close()
    q2 = ackring.create("byname", dir=ddir, durability=durability, capacity=8, message_size=64, ack_timeout=0.05)
    try:
        assert os.path.dirname(q2.path) == ddir
        with q2.producer() as p, q2.consumer() as c:
            r = p.put(b"leased")
            m = c.get(timeout=1)
            time.sleep(0.1)
            q2.reclaim()                   # the lease ran out: taken back
            m2 = c.get(timeout=1)
            assert m2.body == b"leased" and m2.delivery_count == 2
            m2.ack()
            if hasattr(r, "wait_acked"):
                assert r.wait_acked(timeout=5)
    finally:
        q2.close()
    q3 = ackring.open("byname", dir=ddir)
    assert q3.durability == durability
    q3.close()


def _drain_msgs(q):
    out = []
    with q.consumer() as c:
        while True:
            try:
                m = c.get(timeout=0)
            except ackring.Empty:
                return out
            out.append(m)
            m.ack()


@pytest.mark.parametrize("durability", ["os", "sync"])
def test_moved_between_two_runs(ddir, durability):
    """close -> a new process reopens and drains everything, in order."""
    path = os.path.join(ddir, "moved")
    q = ackring.create(path=path, durability=durability, capacity=256, message_size=64)
    with q.producer() as p:
        for i in range(200):
            p.put(b"m%d" % i)
    with q.consumer() as c:
        for i in range(50):
            c.get(timeout=1).ack()
    q.close()
    out = _run("import ackring,sys,json\n"
               "q=ackring.open(path=sys.argv[1])\n"
               "r=[]\n"
               "with q.consumer() as c:\n"
               "  while True:\n"
               "    try: m=c.get(timeout=0)\n"
               "    except ackring.Empty: break\n"
               "    r.append(bytes(m.body).decode()); m.ack()\n"
               "print(json.dumps([r, q.open_recovery, q.check()])); q.close()", path)
    got, rec, problems = json.loads(out)
    assert got == ["m%d" % i for i in range(50, 200)]
    assert problems == []


def test_put_many_of_1000_costs_one_sync(ddir):
    q = ackring.create(path=os.path.join(ddir, "pm"), durability="sync", capacity=1024, message_size=64)
    try:
        s0 = q.stats()["syncs"]
        with q.producer() as p:
            p.put_many([b"%d" % i for i in range(1000)])
        assert q.stats()["syncs"] - s0 == 1
        assert q.stats()["depth"] == 1000
    finally:
        q.close()


def test_os_durability_makes_no_sync_per_put(ddir):
    q = ackring.create(path=os.path.join(ddir, "os"), durability="os", capacity=1024, message_size=64)
    try:
        s0 = q.stats()["syncs"]
        with q.producer() as p:
            for i in range(500):
                p.put(b"%d" % i)
        assert q.stats()["syncs"] == s0
    finally:
        q.close()


_PRODUCER = """
import ackring, sys
q = ackring.open(path=sys.argv[1], watchdog=None)
n, tag = int(sys.argv[2]), sys.argv[3]
with q.producer() as p:
    for i in range(n):
        p.put(b"%s-%d" % (tag.encode(), i))
q.close()
"""


def test_several_producer_processes_share_syncs(ddir):
    path = os.path.join(ddir, "gc")
    q = ackring.create(path=path, durability="sync", capacity=4096, message_size=64)
    try:
        n, k = 400, 4
        ps = [subprocess.Popen([sys.executable, "-c", _PRODUCER, path, str(n), "p%d" % j]) for j in range(k)]
        try:
            for p in ps:
                assert p.wait(timeout=90) == 0
        finally:
            for p in ps:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        st = q.stats()
        assert st["depth"] == n * k
        # one put each, each waiting for its confirm: without group commit
        # that is n*k syncs; sharing makes it fewer
        assert st["syncs"] < n * k, st["syncs"]
        got = sorted(bytes(m.body) for m in _drain_msgs(q))
        assert got == sorted(b"p%d-%d" % (j, i) for j in range(k) for i in range(n))
    finally:
        q.close()


def _scribble_boot(path):
    with open(path, "r+b") as f:
        f.seek(ci.BOOT_ID_OFF)
        f.write(os.urandom(16))


@pytest.mark.parametrize("durability", ["os", "sync"])
def test_reboot_rebuilds_the_queue_nothing_confirmed_lost(ddir, durability):
    path = os.path.join(ddir, "rb")
    q = ackring.create(path=path, durability=durability, capacity=64, message_size=64)
    p, c = q.producer(), q.consumer()
    for i in range(40):
        p.put(b"r%d" % i)
    held = [c.get(timeout=1) for _ in range(10)]  # delivered, unsettled
    for m in held[:5]:
        m.ack()
    q.sync()
    # the whole "boot" dies: this process's entries stay in the table, and a
    # new boot is simulated by another boot id in the header
    _scribble_boot(path)
    out = _run("import ackring,sys,json\n"
               "q=ackring.open(path=sys.argv[1])\n"
               "rec=q.open_recovery; chk=q.check(); r=[]\n"
               "with q.consumer() as c:\n"
               "  while True:\n"
               "    try: m=c.get(timeout=0)\n"
               "    except ackring.Empty: break\n"
               "    r.append(bytes(m.body).decode()); m.ack()\n"
               "print(json.dumps([r, rec, chk, q.stats()['consumers'], q.stats()['producers']])); q.close()", path)
    got, rec, chk, ncons, nprod = json.loads(out)
    assert rec["rebuilt"] == 1, rec
    assert rec["entries"] >= 2, rec          # the old boot's producer and consumer
    assert rec["requeued"] == 5, rec          # the 5 delivered, unacked
    assert sorted(got) == sorted(["r%d" % i for i in range(5, 40)])
    assert chk == []
    assert ncons == 0 and nprod == 0


def test_torn_unconfirmed_slot_discarded_corrupt_confirmed_reported(ddir):
    path = os.path.join(ddir, "torn")
    q = ackring.create(path=path, durability="sync", capacity=8, message_size=64, checksum=True)
    with q.producer() as p:
        for i in range(4):
            p.put(b"body-%d-%s" % (i, b"x" * 40))
    raw = _layout.Raw(q)
    slots = [i for i, row in enumerate(q._seg.raw_slots()) if row[3]]
    assert len(slots) == 4
    # a confirmed message whose body changed on disk: check() reports it
    off = raw.slot(slots[0]) + 64 + 3
    raw.m[off] ^= 0xFF
    problems = q.check()
    assert any("checksum" in pr for pr in problems), problems
    raw.m[off] ^= 0xFF
    assert q.check() == []
    # a half-written slot (never confirmed) and the reboot: discarded at open
    s1 = raw.slot(slots[1])
    w = raw.get(_layout.U64, s1)
    raw.put(_layout.U64, s1, (w & ~7) | 1)   # state WRITING
    raw.m[s1 + 64] ^= 0x55                    # and its body half there
    raw.m.flush()
    raw.close()
    q.close()
    _scribble_boot(path)
    q = ackring.open(path=path)
    try:
        rec = q.open_recovery
        assert rec["rebuilt"] == 1 and rec["discarded"] + rec["torn"] == 1, rec
        got = sorted(bytes(m.body) for m in _drain_msgs(q))
        assert got == sorted(b"body-%d-%s" % (i, b"x" * 40) for i in (0, 2, 3))
        assert q.check() == []
    finally:
        q.close()


def test_cli_check_on_a_file(ddir):
    q = ackring.create("clichk", dir=ddir, durability="sync", capacity=8, message_size=64, checksum=True)
    with q.producer() as p:
        p.put(b"hello world, this is a body")
    raw = _layout.Raw(q)
    i = [i for i, row in enumerate(q._seg.raw_slots()) if row[3]][0]
    env = dict(os.environ, ACKRING_DIR=ddir)
    ok = subprocess.run([sys.executable, "-m", "ackring", "check", "clichk"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    raw.m[raw.slot(i) + 64 + 2] ^= 0xFF
    bad = subprocess.run([sys.executable, "-m", "ackring", "check", "clichk"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "checksum" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    rep = subprocess.run([sys.executable, "-m", "ackring", "check", "--reclaim", "clichk"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "checksum" in rep.stdout + rep.stderr  # a changed confirmed body is reported, not hidden
    raw.close()
    q.close()


def test_full_disk_clear_error_nothing_confirmed_lost(ddir):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a full filesystem)")
    mnt = tempfile.mkdtemp(dir=ddir)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
    try:
        q = ackring.create(path=os.path.join(mnt, "small"), durability="sync", capacity=64, message_size=256)
        with q.producer() as p:
            for i in range(30):
                p.put(b"ok%d" % i)
        # fill the rest of the filesystem
        with open(os.path.join(mnt, "filler"), "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        with pytest.raises(OSError) as e:
            ackring.create(path=os.path.join(mnt, "big"), durability="sync", capacity=4096, message_size=4096)
        assert "big" in str(e.value), str(e.value)
        # the slots were reserved at create: the first queue still works
        with q.producer() as p:
            for i in range(30, 60):
                p.put(b"ok%d" % i)
        q.close()
        q = ackring.open(path=os.path.join(mnt, "small"))
        got = [bytes(m.body) for m in _drain_msgs(q)]
        assert got == [b"ok%d" % i for i in range(60)]
        q.close()
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


@pytest.mark.parametrize("durability", ["os", "sync"])
@pytest.mark.timeout(200)
def test_torture_file_backed(ddir, durability):
    """Producers and consumers SIGKILLed at random on a file queue; the queue
    drained and every message accounted for (tests/_torture.py's rules)."""
    r = _torture.run(6.0, producers=2, consumers=2, capacity=16, qdir=ddir, durability=durability)
    assert r.ok, r.summary()
    assert r["confirmed"] > 200, r.summary()
    assert r["producer_kills"] > 0 and r["consumer_kills"] > 0, r.summary()
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["after_ack"] == 0, r.summary()


# ---------------------------------------------------------------- crash images

def _record(ddir, n, seed):
    """Run a "sync" queue under the snapshot hook; returns (snapshots,
    covered, acked): covered[num] = number of snapshots when put returned
    (the sync that made it durable is among them), acked[num] = number of
    snapshots when its ack was called."""
    snapdir = os.path.join(ddir, "snaps")
    os.makedirs(snapdir)
    path = os.path.join(ddir, "cq")
    rng = random.Random(seed)
    q = ackring.create(path=path, durability="sync", capacity=32, message_size=192, checksum=True)
    covered, acked = {}, {}
    backend.set_sync_snapshots(snapdir)
    try:
        with q.producer() as p, q.consumer() as c:
            held = []
            num = 0
            while num < n:
                k = rng.choice([1, 1, 1, 3])
                batch = list(range(num, min(n, num + k)))
                if q.stats()["depth"] + len(held) + len(batch) > 30:
                    batch = []
                if batch:
                    if len(batch) == 1:
                        p.put(ci.body_of(batch[0]))
                    else:
                        p.put_many([ci.body_of(b) for b in batch])
                    ns = len(os.listdir(snapdir))
                    for b in batch:
                        covered[b] = ns
                    num += len(batch)
                if rng.random() < 0.6 or not batch:
                    try:
                        held.append(c.get(timeout=0))
                    except ackring.Empty:
                        pass
                if held and (rng.random() < 0.5 or not batch):
                    m = held.pop(rng.randrange(len(held)))
                    acked[ci.number_of(bytes(m.body))] = len(os.listdir(snapdir))
                    if rng.random() < 0.2:
                        m.nack()
                        del acked[ci.number_of(bytes(m.body))]
                    else:
                        m.ack()
    finally:
        backend.set_sync_snapshots(None)
        q.close()
    snaps = sorted(os.path.join(snapdir, f) for f in os.listdir(snapdir))
    return snaps, covered, acked


def _crash_images(ddir, n_msgs, n_images, seed):
    snaps, covered, acked = _record(ddir, n_msgs, seed)
    assert len(snaps) >= 10
    rng = random.Random(seed + 1)
    imgdir = os.path.join(ddir, "img")
    os.makedirs(imgdir)
    plan = []
    for j in range(n_images):
        k = rng.randrange(len(snaps))
        grain = rng.choice([512, 4096])
        exact = j % 4 == 0                      # at a sync point
        out = os.path.join(imgdir, "img%05d" % j)
        ci.build(snaps, k, rng, grain, out) if not exact else ci.build(snaps[:k + 1], k, rng, grain, out)
        plan.append((out, k + 1))               # snapshots 1..k+1 are on disk
    results = {}
    chunk = 40
    for a in range(0, len(plan), chunk):
        paths = [p for p, _ in plan[a:a + chunk]]
        r = subprocess.run([sys.executable, os.path.join(HERE, "_crash_images.py"), *paths], capture_output=True,
                           text=True, timeout=300, cwd=HERE)
        assert r.returncode == 0, r.stderr[-3000:]
        for line in r.stdout.splitlines():
            d = json.loads(line)
            results[d["image"]] = d
        for p in paths:
            os.unlink(p)
    lost = torn = dup = checked = 0
    for out, ondisk in plan:
        d = results[out]
        assert d["recovery"]["rebuilt"] == 1, d["recovery"]
        nums = []
        for h in d["bodies"]:
            num = ci.number_of(bytes.fromhex(h))
            if num is None:
                torn += 1
            else:
                nums.append(num)
        dup += len(nums) - len(set(nums))
        have = set(nums)
        # confirmed by a sync on this image, and not acked before the next one
        must = {m for m, s in covered.items() if s <= ondisk and not (m in acked and acked[m] <= ondisk)}
        lost += len(must - have)
        checked += len(must)
        assert d["check_after"] == [], d["check_after"]
    return {"images": len(plan), "snapshots": len(snaps), "lost": lost, "torn": torn, "duplicates": dup,
            "confirmed_checked": checked, "delivered": sum(len(d["bodies"]) for d in results.values())}


def test_crash_images_handful(ddir):
    r = _crash_images(ddir, 120, 12, seed=9)
    assert r["confirmed_checked"] > 12, r
    assert r == dict(r, lost=0, torn=0, duplicates=0), r


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_images_1000(ddir):
    r = _crash_images(ddir, 600, 1000, seed=int(os.environ.get("ACKRING_CRASH_SEED", "1")))
    print("crash images:", r)
    assert r["images"] >= 1000
    assert r == dict(r, lost=0, torn=0, duplicates=0), r


def test_ack_durability_window(ddir):
    """Under "sync" an ack returns before it is on disk: a power loss right
    after it redelivers the message (at least once).  The next sync anybody
    makes covers it; the reclaim pass (the watchdog's, every 0.1 s by default)
    makes one when settles are pending.  After that the ack survives."""
    snapdir = os.path.join(ddir, "snaps")
    os.makedirs(snapdir)
    path = os.path.join(ddir, "ackwin")
    q = ackring.create(path=path, durability="sync", capacity=8, message_size=64, watchdog=None)
    backend.set_sync_snapshots(snapdir)
    try:
        with q.producer() as p, q.consumer() as c:
            p.put_many([ci.body_of(i) for i in range(3)])
            c.get(timeout=1).ack()                       # message 0, acked: not yet durable
            n_before = len(os.listdir(snapdir))
            q.reclaim()                                  # what the watchdog does
            n_after = len(os.listdir(snapdir))
            q.reclaim()                                  # nothing pending: no further sync
            assert len(os.listdir(snapdir)) == n_after
    finally:
        backend.set_sync_snapshots(None)
        q.close()
    assert n_after == n_before + 1
    snaps = sorted(os.path.join(snapdir, f) for f in os.listdir(snapdir))
    rng = random.Random(0)
    before, after = os.path.join(ddir, "before"), os.path.join(ddir, "after")
    ci.build(snaps[:n_before], n_before - 1, rng, 512, before)   # power lost just after the ack
    ci.build(snaps[:n_after], n_after - 1, rng, 512, after)      # ... after the reclaim pass
    r = subprocess.run([sys.executable, os.path.join(HERE, "_crash_images.py"), before, after],
                       capture_output=True, text=True, timeout=120, cwd=HERE)
    assert r.returncode == 0, r.stderr
    got = [sorted(ci.number_of(bytes.fromhex(h)) for h in json.loads(line)["bodies"])
           for line in r.stdout.splitlines()]
    assert got == [[0, 1, 2], [1, 2]]


def test_readme_example_runs(ddir):
    """The README's "Durable queues" example runs as written (in a directory
    on a real filesystem)."""
    with open(os.path.join(os.path.dirname(HERE), "README.md")) as f:
        text = f.read()
    section = text.split("\n## Durable queues\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    r = subprocess.run([sys.executable, "-c", code], cwd=ddir, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1000 left;"), r.stdout
    assert os.listdir(ddir) == []  # it cleaned up after itself
