"""The chaos engine behind tests/test_torture.py and bench/soak.py (one copy).

Several producer and consumer processes move 64-byte messages through a small
queue while the parent SIGKILLs random ones at random moments and starts
replacements.  Every message is accounted for in a shared-memory ledger that
survives the death of whoever wrote to it:

* every message carries a global *number*; producer instance k owns the numbers
  of block k (``BLOCK`` of them), so numbers are never reused;
* ``conf[n] = 1``  - written by the producer right AFTER put/put_many/commit
  returned (the publisher confirm).  A producer killed between the return and
  this store leaves a delivered-but-unconfirmed message, which is allowed;
* ``cons[n] |= SEEN`` - written by the consumer when the message is delivered,
  BEFORE it is settled, so every acked message is SEEN; ``ACKED`` right after
  the ack returned.  A consumer that finds ``ACKED`` already set (delivery after
  ack) or ``SEEN`` set on a first delivery (``redelivered`` False) flags a bug;
* ``pid_low[n]`` / ``cid_low[n]`` - the low 7 bits of the message id as the
  producer got it and as the consumer saw it: they must agree.

The ledger is one anonymous shared mapping made before any worker is forked
(replacements are forked from the parent too), so a write lands in shared
memory the instant it is made and a SIGKILL cannot lose it.

Verdict (``Result.ok``): no confirmed number is missing from the consumers'
SEEN marks (nothing lost), no duplicate first delivery, no delivery after ack,
no corrupt body, no id mismatch, no worker error, the queue drained to depth 0
and in_flight 0, and ``q.check() == []``.
"""

import mmap
import multiprocessing
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
from multiprocessing.sharedctypes import RawArray

import ackring
from _ar_workers import as_view

SIZE = 64
BLOCK = 1 << 16                 # numbers per producer instance

SEEN, ACKED, REDELIVERED, DUP, AFTER_ACK, NACKED = 1, 2, 4, 8, 16, 32
BAD_BITS = DUP | AFTER_ACK

_HEAD = struct.Struct("<QQ")


def body_of(num):
    """64 bytes that encode `num` and are checkable byte for byte."""
    return _HEAD.pack(num, num ^ 0xA5A5A5A5A5A5A5A5) * (SIZE // _HEAD.size)


def number_of(body):
    return _HEAD.unpack_from(body)[0]


def _table(bits):
    return bytes(1 if (i & bits) else 0 for i in range(256))


T_SEEN, T_ACKED, T_RED, T_DUP, T_AFTER, T_NACKED = (
    _table(SEEN), _table(ACKED), _table(REDELIVERED), _table(DUP), _table(AFTER_ACK), _table(NACKED))
T_NZ = bytes([0] + [1] * 255)


class Ledger:
    """Four byte arrays of `size` entries in one anonymous MAP_SHARED mapping
    (pages are allocated only when touched)."""

    def __init__(self, size):
        self.size = size
        self.m = mmap.mmap(-1, 4 * size)

    def conf_set(self, n):
        self.m[n] = 1

    def pid_set(self, n, mid):
        self.m[2 * self.size + n] = 0x80 | (mid & 0x7F)

    def cons(self, n):
        return self.m[self.size + n]

    def cons_set(self, n, v):
        self.m[self.size + n] = v

    def cid_set(self, n, mid):
        self.m[3 * self.size + n] = 0x80 | (mid & 0x7F)

    def slices(self, a, b):
        s = self.size
        m = self.m
        return m[a:b], m[s + a:s + b], m[2 * s + a:2 * s + b], m[3 * s + a:3 * s + b]

    def close(self):
        self.m.close()


class Shared:
    """Control words and counters in shared memory (no locks: a worker killed
    while holding a lock would wedge everyone)."""

    def __init__(self, pslots, cslots):
        self.stop = RawArray("b", 2)            # [0] producers stop, [1] consumers stop
        self.pprog = RawArray("q", pslots)      # confirmed messages per producer slot
        self.cprog = RawArray("q", cslots)      # deliveries per consumer slot
        self.bad = RawArray("q", 1)             # corrupt bodies / numbers out of range
        self.errors = RawArray("q", 1)          # protocol violations seen by workers
        self.stale_acks = RawArray("q", 1)      # acks and nacks refused because the lease ran out (leases only)
        self.held = RawArray("q", 1)            # the holder holds its message


def _report(errdir, tag, text):
    path = os.path.join(errdir, "%s-%d-%d.txt" % (tag, os.getpid(), time.monotonic_ns()))
    with open(path, "w") as f:
        f.write(text)


# ------------------------------------------------------------------ workers

def producer_main(qname, slot, block, ledger, sh, seed, errdir, qdir):
    os.environ["ACKRING_DIR"] = qdir
    try:
        rng = random.Random(seed)
        q = ackring.open(qname)
        p = q.producer()
        base = block * BLOCK
        seq = 0
        seen_ids = set()
        while seq < BLOCK and not sh.stop[0]:
            r = rng.random()
            if r < 0.5:                                            # put
                n = base + seq
                try:
                    ids = [p.put(body_of(n), timeout=0.5)]
                except ackring.Full:
                    continue
            elif r < 0.8:                                          # put_many
                k = min(rng.randint(2, 8), BLOCK - seq)
                try:
                    ids = p.put_many([body_of(base + seq + i) for i in range(k)], timeout=0.5)
                except ackring.Full as e:
                    ids = e.ids
            else:                                                  # reserve / commit
                n = base + seq
                try:
                    res = p.reserve(SIZE, timeout=0.5)
                except ackring.Full:
                    continue
                rid = res.id
                if rng.random() < 0.1:                             # change of mind
                    res.abort()
                    continue
                with res as buf:
                    buf[:] = body_of(n)
                ids = [rid]
            for i, mid in enumerate(ids):                          # confirmed: record
                n = base + seq + i
                ledger.conf_set(n)
                ledger.pid_set(n, mid)
                if mid in seen_ids:   # ids are unique over the queue's life (not ordered)
                    sh.errors[0] += 1
                    _report(errdir, "id", "producer %d: id %d given twice" % (block, mid))
                seen_ids.add(mid)
            seq += len(ids)
            sh.pprog[slot] += len(ids)
        p.close()
        q.close()
    except BaseException:
        _report(errdir, "producer", traceback.format_exc())
        os._exit(3)
    os._exit(0)


def _still_ours(m, lease):
    """Under ack leases: is this delivery still ours (its lease not run out
    and taken back)?  extend() succeeds only if the slot's word is still the
    one we took, so what we read before it was read while we held it."""
    try:
        m.extend(lease)
        return True
    except ackring.StaleDelivery:
        return False


def _inspect(m, ledger, sh, errdir, copy, lease=None):
    """Check the body and record the delivery in the ledger.

    With leases a slow worker's delivery can be taken back at any moment,
    and another consumer may get, ack and record it before this one has
    read the ledger: a late reader would then see ACKED (or SEEN) and flag a
    false duplicate, and a zero-copy view may by then show the slot's next
    message.  So what was read is judged only if the delivery was still ours
    after reading it; otherwise nothing is recorded (its redelivery is) and
    its ack below is refused as stale."""
    if copy:
        b = m.body
    else:
        with as_view(m) as v:
            b = bytes(v)
    n = number_of(b) if len(b) >= 8 else -1
    if len(b) != SIZE or not 0 <= n < ledger.size or b != body_of(n):
        if lease is not None and not copy and not _still_ours(m, lease):
            return -1   # a view of a slot taken back under us (copies are checked by get)
        sh.bad[0] += 1
        _report(errdir, "body", "message %d: bad body %r" % (m.id, b))
        return -1
    v = ledger.cons(n)
    if v & ACKED:
        v |= AFTER_ACK
    if v & SEEN and not m.redelivered:
        v |= DUP
    if m.redelivered:
        v |= REDELIVERED
    if lease is not None and not _still_ours(m, lease):
        return -1
    ledger.cons_set(n, v | SEEN)
    ledger.cid_set(n, m.id)
    return n


def _live_went_stale(e, lease, sh, errdir, what):
    """A settle refused as stale: an error without leases (a live consumer's
    delivery is never taken back), reported; with ack leases it is expected
    (the lease ran out, the message was redelivered), and the caller counts it."""
    if lease is not None:
        return False
    sh.errors[0] += 1
    _report(errdir, "stale", "live consumer's %s went stale: %r" % (what, e))
    return True


def consume_once(c, rng, ledger, sh, errdir, timeout=0.2, lease=None):
    """One get / inspect / settle round; returns the number of deliveries.
    Used by the consumer workers and by the parent's final drain."""
    r = rng.random()
    copy = True
    try:
        if r < 0.4:
            ms = [c.get(timeout=timeout)]
        elif r < 0.8:
            ms = c.get_many(rng.randint(2, 16), timeout=timeout)
        else:
            copy = False
            ms = [c.get(timeout=timeout, copy=False)]
    except ackring.Empty:
        return 0
    nums = [_inspect(m, ledger, sh, errdir, copy, lease) for m in ms]   # recorded BEFORE settling
    keep = []
    for m, n in zip(ms, nums):
        if rng.random() < 0.01:
            try:
                m.nack()
            except ackring.StaleDelivery as e:
                if _live_went_stale(e, lease, sh, errdir, "nack"):
                    return len(ms)
                sh.stale_acks[0] += 1   # taken back before this nack: redelivered, the nack refused
                continue
            if n >= 0:
                ledger.cons_set(n, ledger.cons(n) | NACKED)
        else:
            keep.append((m, n))
    try:
        if len(keep) > 1:
            c.ack_many([m for m, _ in keep])
        else:
            for m, _ in keep:
                m.ack()
    except ackring.StaleDelivery as e:
        if _live_went_stale(e, lease, sh, errdir, "ack"):
            return len(ms)
        # with ack leases a slow consumer's delivery may be taken back: the
        # message was redelivered, and this ack was refused, not counted
        # (a single ack: the one refused is keep[0], not ms[0], which may be
        # a message nacked above)
        stale = set(getattr(e, "ids", [keep[0][0].id] if len(keep) == 1 else []))
        sh.stale_acks[0] += len(stale)
        keep = [(m, n) for m, n in keep if m.id not in stale]
    for _m, n in keep:
        if n >= 0:
            ledger.cons_set(n, ledger.cons(n) | ACKED)
    return len(ms)


def consumer_main(qname, slot, ledger, sh, seed, errdir, qdir, lease=None):
    os.environ["ACKRING_DIR"] = qdir
    try:
        rng = random.Random(seed)
        q = ackring.open(qname)
        c = q.consumer(ack_timeout=lease)
        while not sh.stop[1]:
            sh.cprog[slot] += consume_once(c, rng, ledger, sh, errdir, lease=lease)
        c.close()
        q.close()
    except BaseException:
        _report(errdir, "consumer", traceback.format_exc())
        os._exit(3)
    os._exit(0)


def holder_main(qname, ledger, sh, errdir, qdir):
    """Take one message and hold it, unsettled, for the whole run (it must not
    stall anybody: capacity counts unsettled messages, nothing else), then ack it."""
    os.environ["ACKRING_DIR"] = qdir
    try:
        q = ackring.open(qname)
        c = q.consumer()
        m = c.get(timeout=30)
        n = _inspect(m, ledger, sh, errdir, True)
        sh.held[0] = 1
        while not sh.stop[1]:
            time.sleep(0.05)  # the holder's idle loop: it holds, on purpose
        m.ack()
        if n >= 0:
            ledger.cons_set(n, ledger.cons(n) | ACKED)
        c.close()
        q.close()
    except BaseException:
        _report(errdir, "holder", traceback.format_exc())
        os._exit(3)
    os._exit(0)


# ------------------------------------------------------------------ parent

class Result(dict):
    """Summary of one run; ``ok`` is the verdict, ``problems`` says why not."""

    @property
    def ok(self):
        return not self["problems"]

    def summary(self):
        keys = ["seconds", "kills", "producer_kills", "consumer_kills", "instances", "confirmed",
                "delivered", "acked", "unconfirmed_delivered", "redelivered", "nacked",
                "duplicates", "after_ack", "lost", "bad_bodies", "id_mismatch", "worker_errors",
                "acked_unflagged", "stale_acks", "stops", "max_progress_gap", "stalls_over_2s",
                "final_stats", "check"]
        lines = ["%-22s %s" % (k, self.get(k)) for k in keys]
        lines.append("%-22s %s" % ("verdict", "OK" if self.ok else "FAIL"))
        for p in self["problems"]:
            lines.append("  problem: " + p)
        return "\n".join(lines)


def run(seconds, producers=2, consumers=2, capacity=16, kill_interval=(0.05, 0.5), seed=None,
        ledger_size=1 << 24, stall_s=20.0, drain_s=20.0, log=None, qdir=None, hold=False, lease=None,
        stops=False, durability="memory"):
    """Run the torture for `seconds` of chaos, then drain and verify.

    hold: one more consumer takes a message at the start and holds it
    unsettled to the end.  lease: consumers take deliveries under an ack
    lease of that many seconds (a slow one sees its delivery taken back).
    stops: some chaos rounds SIGSTOP a worker for 10-100 ms instead of
    killing it.  durability: "os" or "sync" puts the queue in a file under
    `qdir` (which must then be on a real filesystem).

    Segments go to `qdir` (default: $ACKRING_DIR, else a fresh directory
    under /dev/shm that is removed afterwards).  Returns a Result."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    own_dir = None
    if qdir is None:
        qdir = os.environ.get("ACKRING_DIR")
    if not qdir:
        own_dir = qdir = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None,
                                          prefix="ackring-torture-")
    old_dir = os.environ.get("ACKRING_DIR")
    os.environ["ACKRING_DIR"] = qdir
    errdir = tempfile.mkdtemp(prefix="ackring-torture-err-")
    name = "torture-%d-%d" % (os.getpid(), seed)
    ctx = multiprocessing.get_context("fork")
    ledger = Ledger(ledger_size)
    sh = Shared(producers, consumers)
    q = ackring.create(name, capacity=capacity, message_size=SIZE, watchdog=None,
                       **({} if durability == "memory" else {"durability": durability, "dir": qdir}))
    holder = None
    pworkers = [None] * producers
    cworkers = [None] * consumers
    next_block = [0]
    counts = {"kills": 0, "producer_kills": 0, "consumer_kills": 0, "instances": 0, "stops": 0,
              "max_progress_gap": 0.0, "stalls_over_2s": 0}
    problems = []
    say = log or (lambda s: None)

    def start_producer(i):
        if (next_block[0] + 1) * BLOCK > ledger_size:
            return False
        blk = next_block[0]
        next_block[0] += 1
        w = ctx.Process(target=producer_main, args=(name, i, blk, ledger, sh, rng.randrange(1 << 30),
                                                    errdir, qdir), daemon=True)
        w.start()
        pworkers[i] = w
        counts["instances"] += 1
        return True

    def start_consumer(i):
        w = ctx.Process(target=consumer_main, args=(name, i, ledger, sh, rng.randrange(1 << 30),
                                                    errdir, qdir, lease), daemon=True)
        w.start()
        cworkers[i] = w
        counts["instances"] += 1

    def kill(w):
        try:
            os.kill(w.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        w.join(10)
        if w.is_alive():
            problems.append("process %d survived SIGKILL for 10 s" % w.pid)

    def all_workers():
        return [w for w in pworkers + cworkers if w is not None]

    t0 = time.monotonic()
    try:
        for i in range(producers):
            start_producer(i)
        if hold:
            holder = ctx.Process(target=holder_main, args=(name, ledger, sh, errdir, qdir), daemon=True)
            holder.start()
            counts["instances"] += 1
        for i in range(consumers):
            start_consumer(i)
        last_progress, last_change = -1, time.monotonic()
        stalled = False
        budget_out = False
        end = t0 + seconds
        next_note = t0 + 60
        while time.monotonic() < end and not problems:
            # pacing of the chaos itself (not a wait for a condition)
            time.sleep(rng.uniform(*kill_interval))
            # producers that used up their block exit 0: replace them
            for i, w in enumerate(pworkers):
                if w is not None and w.exitcode is not None:
                    if w.exitcode != 0:
                        problems.append("producer %d exited with %r" % (w.pid, w.exitcode))
                    w.join()
                    if not start_producer(i):
                        budget_out = True
            for w in cworkers:
                if w.exitcode is not None:
                    problems.append("consumer %d exited with %r" % (w.pid, w.exitcode))
            if budget_out:
                say("ledger budget exhausted after %.0f s: ending the chaos early" % (time.monotonic() - t0))
                break
            if stops and rng.random() < 0.3:
                # stop one at random for 10-100 ms: alive, but doing nothing
                live = [w for w in all_workers() if w.is_alive()]
                if live:
                    w = rng.choice(live)
                    try:
                        os.kill(w.pid, signal.SIGSTOP)
                        time.sleep(rng.uniform(0.01, 0.1))  # how long it stays stopped
                    finally:
                        os.kill(w.pid, signal.SIGCONT)
                    counts["stops"] += 1
                continue
            # kill one (sometimes two) at random
            for _ in range(2 if rng.random() < 0.15 else 1):
                live = [(True, i) for i, w in enumerate(pworkers) if w is not None and w.is_alive()]
                live += [(False, i) for i, w in enumerate(cworkers) if w.is_alive()]
                if not live:
                    break
                is_prod, i = rng.choice(live)
                kill(pworkers[i] if is_prod else cworkers[i])
                counts["kills"] += 1
                counts["producer_kills" if is_prod else "consumer_kills"] += 1
                if is_prod:
                    if not start_producer(i):
                        pworkers[i] = None
                else:
                    start_consumer(i)
            prog = sum(sh.cprog)
            now = time.monotonic()
            if prog != last_progress:
                last_progress, last_change, stalled = prog, now, False
            else:
                gap = now - last_change
                counts["max_progress_gap"] = round(max(counts["max_progress_gap"], gap), 2)
                if gap > 2 and not stalled:
                    stalled = True
                    counts["stalls_over_2s"] += 1
                if gap > stall_s:
                    problems.append("no consumer progress for %.0f s: stats %r check %r entries %r" % (
                        gap, q.stats(), q.check(), q._seg.entries()))
            if now >= next_note:
                next_note = now + 60
                say("t=%4.0fs kills=%d confirmed~%d delivered~%d stats=%r" % (
                    now - t0, counts["kills"], sum(sh.pprog), prog, q.stats()))

        # ---- stop the chaos: producers first, then drain with the consumers
        sh.stop[0] = 1
        for w in pworkers:
            if w is not None:
                w.join(15)
                if w.exitcode is None:
                    problems.append("producer %d did not stop within 15 s" % w.pid)
                    kill(w)
                elif w.exitcode not in (0, -signal.SIGKILL):
                    problems.append("producer %d exited with %r" % (w.pid, w.exitcode))
        deadline = time.monotonic() + drain_s
        held = 1 if holder is not None else 0
        if holder is not None and not sh.held[0]:
            problems.append("the holder never got its message")
        while True:
            s = q.stats()
            if s["depth"] == 0 and s["in_flight"] <= held:
                break
            if time.monotonic() > deadline:
                problems.append("consumers did not drain the queue within %g s: %r check %r" % (drain_s, s, q.check()))
                break
            time.sleep(0.01)  # poll interval of a bounded condition loop
        sh.stop[1] = 1
        for w in cworkers + ([holder] if holder is not None else []):
            w.join(5)
            if w.exitcode is None:
                problems.append("consumer %d did not stop within 5 s (stuck in a call?)" % w.pid)
                kill(w)
            elif w.exitcode != 0:
                problems.append("consumer %d exited with %r" % (w.pid, w.exitcode))
        seconds_run = time.monotonic() - t0

        # ---- a clean consumer in the parent takes whatever is left (only from
        # a sound ring: a get on a wedged one could spin without returning)
        q.reclaim()
        pre = q.check()
        if pre:
            problems.append("q.check() before the final drain: %r" % (pre,))
        else:
            c = q.consumer()
            drng = random.Random(seed + 1)
            while consume_once(c, drng, ledger, sh, errdir, timeout=0.3, lease=lease):
                pass
            c.close()
        q.reclaim()
        final = q.stats()
        check = q.check()
        if final["depth"] or final["in_flight"]:
            problems.append("queue not drained: %r" % (final,))
        if final["producers"] or final["consumers"]:
            problems.append("process table not empty after the run: %r" % (q._seg.entries(),))
        if check:
            problems.append("q.check(): %r" % (check,))

        # ---- verify the ledger, one block at a time
        tot = dict(confirmed=0, delivered=0, acked=0, unconfirmed_delivered=0, redelivered=0,
                   nacked=0, duplicates=0, after_ack=0, lost=0, id_mismatch=0, acked_unflagged=0)
        lost_examples = []
        for blk in range(next_block[0]):
            a, b = blk * BLOCK, (blk + 1) * BLOCK
            conf, cons, pidl, cidl = ledger.slices(a, b)
            seen = cons.translate(T_SEEN)
            acked = cons.translate(T_ACKED)
            tot["confirmed"] += conf.count(1)
            tot["delivered"] += seen.count(1)
            tot["acked"] += acked.count(1)
            tot["redelivered"] += cons.translate(T_RED).count(1)
            tot["nacked"] += cons.translate(T_NACKED).count(1)
            tot["duplicates"] += cons.translate(T_DUP).count(1)
            tot["after_ack"] += cons.translate(T_AFTER).count(1)
            ci, si, ai = (int.from_bytes(x, "little") for x in (conf, seen, acked))
            lost = ci & ~si
            if lost:
                k = bin(lost).count("1")
                tot["lost"] += k
                for j in range(b - a):
                    if conf[j] and not seen[j] and len(lost_examples) < 10:
                        lost_examples.append(a + j)
            tot["unconfirmed_delivered"] += bin(si & ~ci).count("1")
            tot["acked_unflagged"] += bin(si & ~ai).count("1")
            both = int.from_bytes(pidl.translate(T_NZ), "little") & int.from_bytes(cidl.translate(T_NZ), "little")
            diff = (int.from_bytes(pidl, "little") ^ int.from_bytes(cidl, "little")) & (both * 0xFF)
            if diff:
                tot["id_mismatch"] += sum(1 for j in range(b - a) if pidl[j] and cidl[j] and pidl[j] != cidl[j])
        if tot["lost"]:
            problems.append("%d confirmed messages never delivered, e.g. numbers %r" % (tot["lost"], lost_examples))
        for k in ("duplicates", "after_ack", "id_mismatch"):
            if tot[k]:
                problems.append("%d messages with %s" % (tot[k], k))
        if sh.bad[0]:
            problems.append("%d corrupt bodies" % sh.bad[0])
        errs = sorted(os.listdir(errdir))
        if sh.errors[0] or errs:
            texts = []
            for fn in errs[:5]:
                with open(os.path.join(errdir, fn)) as f:
                    texts.append(fn + ":\n" + f.read())
            problems.append("%d worker errors / %d reports:\n%s" % (sh.errors[0], len(errs), "\n".join(texts)))
        res = Result(tot)
        res.update(counts, seconds=round(seconds_run, 1), seed=seed, bad_bodies=sh.bad[0],
                   stale_acks=sh.stale_acks[0],
                   worker_errors=sh.errors[0] + len(errs), final_stats=final, check=check,
                   problems=problems)
        return res
    finally:
        for w in all_workers() + ([holder] if holder is not None else []):
            if w.is_alive():
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            w.join(5)
        try:
            q.close()
        finally:
            ackring.unlink(name, missing_ok=True)
            ledger.close()
            import shutil
            shutil.rmtree(errdir, ignore_errors=True)
            if own_dir:
                shutil.rmtree(own_dir, ignore_errors=True)
            if old_dir is None:
                os.environ.pop("ACKRING_DIR", None)
            else:
                os.environ["ACKRING_DIR"] = old_dir


if __name__ == "__main__":  # quick manual run: python tests/_torture.py SECONDS
    r = run(float(sys.argv[1]) if len(sys.argv) > 1 else 10, log=print)
    print(r.summary())
    sys.exit(0 if r.ok else 1)
