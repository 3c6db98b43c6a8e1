"""Hostile-segment fuzzing of layout v2 (issue 13 items 6, 7; issue 8 item 8).

Real segments (made by the real API: messages ready, delivered to a consumer
that was then SIGKILLed, half-written by a killed producer, requeued,
dead-lettered, leased, checksummed ...) are snapshotted as templates.  Each
case copies one template, applies a seeded mutation (byte and bit flips,
random or interesting 64-bit words in header fields, ring positions and
cells, slot words, lengths and fields, process-table words and markers,
payload bytes, truncation or extension of the file, truncation *while
mapped*), writes it as a queue and its .dlq, and runs a bounded operation
sequence on it: open (which reclaims), stats, check, peek, get with a
timeout + ack/nack/reject, put with a timeout, get of the fresh message,
dead letters, reclaim, stats, close.

Outcome classes, per case:
    ok         every step returned normally (Empty/Full count as normal)
    clean      some step raised an ackring.Error / ValueError / OSError
    hang       the case did not finish within its bound (SIGALRM in the
               child, or the parent's per-case bound: the child is killed)
    crash      the child died by any other signal
    unexpected some step raised another exception type (a binding bug)
plus, across outcomes: bodies longer than message_size ("long"), bodies that
are not one of the bodies written ("wrong": a corruption inside bounds,
which only a checksum can catch), and blocking calls that returned more than
LATE_S after their timeout ("late").

The parent (the test process) runs the cases in batches in forked children:
one child runs many cases in a row and reports each over a pipe; a case that
hangs or crashes costs that child, and the next child resumes after it.

    python tests/_fuzz.py --cases 10000 --seed 1 [--jobs 2] [--start 0]
    python tests/_fuzz.py --replay 1234 --seed 1      # one case, verbose
"""
import json
import os
import random
import select
import shutil
import signal
import struct
import sys
import tempfile
import time

import ackring

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import _layout as L  # noqa: E402

CAP, MSZ, MAXC = 8, 64, 8
DLQ_MSZ = MSZ + 40
GET_TIMEOUT, PUT_TIMEOUT = 0.02, 0.05
LATE_S = 3.0          # a blocking call back later than its timeout + this is "late"
CASE_ALARM_S = 8      # the child's own bound per case (SIGALRM, default action)
CASE_BOUND_S = 12.0   # the parent's bound per case (then SIGKILL)

# header fields of layout v2 (ext/ar_internal.h, ar_header): name -> (offset, size)
HDR_FIELDS = {
    "magic": (0, 8), "version": (8, 4), "header_size": (12, 4), "capacity": (16, 4),
    "message_size": (20, 4), "slot_size": (24, 4), "max_clients": (28, 4), "flags": (32, 4),
    "mode": (36, 4), "created_ns": (40, 8), "queue_id": (48, 8), "total_size": (56, 8),
    "table_off": (64, 8), "rings_off": (72, 8), "slots_off": (80, 8), "peer_id": (88, 8),
    "max_deliveries": (96, 4), "dlq_overhead": (100, 4), "default_ttl_ns": (104, 8),
    "ack_timeout_ns": (112, 8), "durability": (120, 4), "owner_uid": (124, 4),
    "shutdown": (128, 4), "leases_seen": (132, 4), "boot_id": (136, 8), "reclaimed_entries": (152, 8),
    "rebuilds": (160, 8), "not_empty": (L.NOT_EMPTY, 4), "not_full": (L.NOT_FULL, 4),
    "pub_seq": (704, 8), "sync_started": (712, 8), "sync_done": (720, 8), "sync_gen": (728, 4),
    "sync_pending": (732, 4), "syncs": (736, 8), "retired0": (768, 8), "retired5": (808, 8),
}
# entry fields (ar_entry)
ENTRY_FIELDS = {"word": 0, "start_time": 8, "reg_ns": 16, "take_mark": 24, "take_word": 32,
                "push_mark": 40, "push_word": 48, "count0": 64, "count3": 88}
# slot header fields (ar_slot): name -> (offset, size)
SLOT_FIELDS = {"word": (0, 8), "lease": (8, 8), "use": (16, 8), "len": (24, 4), "crc": (28, 4),
               "publish_ns": (32, 8), "expire_ns": (40, 8), "pub_seq": (48, 8)}

I64 = [0, 1, 2, 7, 8, 9, 0xFF, 0xFFF, 0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
       0x100000000, 0xFFFFFFFFFF, 0x10000000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000,
       0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF00000000]
I32 = [0, 1, 2, 7, 8, 9, 39, 40, 41, 63, 64, 65, 103, 104, 105, 0xFF, 0xFFF, 0xFFFF, 0x10000,
       0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


# ------------------------------------------------------------------ bodies

def body(idx, length):
    """A self-describing body: 4-byte idx, 2-byte length, then a pattern."""
    length = max(6, min(MSZ, length))
    return struct.pack("<IH", idx & 0xFFFFFFFF, length) + bytes(((idx * 7 + k) & 0xFF) for k in range(length - 6))


def body_problem(b, msz=MSZ):
    """None if b is one of the bodies written, "long" if longer than the
    queue's message_size (read outside the slot), else "wrong"."""
    if len(b) > msz:
        return "long"
    if len(b) < 6:
        return "wrong"
    idx, length = struct.unpack_from("<IH", b)
    return None if length == len(b) and body(idx, length) == b else "wrong"


# ------------------------------------------------------------------ templates

class Template:
    def __init__(self, tag, seg, dlq, desc, checksum):
        self.tag, self.seg, self.dlq, self.desc, self.checksum = tag, seg, dlq, desc, checksum


def _geometry(data):
    cap, msz, ss, maxc = struct.unpack_from("<IIII", data, 16)
    rings = L.HDR + maxc * L.ENTRY
    slots = rings + 3 * L.ring_bytes(cap)
    return {"cap": cap, "msz": msz, "ss": ss, "maxc": maxc, "rings": rings, "slots": slots,
            "rb": L.ring_bytes(cap), "total": slots + cap * ss}


def make_templates(directory=None):
    """Real queues in a private directory, snapshotted after close: a dict tag -> Template."""
    own = directory is None
    directory = directory or tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None,
                                              prefix="ackring-fuzz-tpl-")
    counter = [0]
    out = {}

    def nb():
        i = counter[0]
        counter[0] += 1
        return body(i, 6 + (i * 13) % (MSZ - 5))

    def make(tag, **kw):
        return ackring.create(tag, dir=directory, capacity=CAP, message_size=MSZ, max_clients=MAXC,
                              watchdog=None, **kw)

    def die_holding(tag, n_get, reserve=False, ack_timeout=None, nack=False, dlq=False):
        """A child takes n_get messages (of the DLQ with dlq=True; and a
        half-written reservation), then is SIGKILLed."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                q = ackring.open(tag, dir=directory, watchdog=None)
                c = (q.dead_letters if dlq else q).consumer(ack_timeout=ack_timeout)
                held = [c.get(timeout=5) for _ in range(n_get)]
                if nack and held:
                    held[0].nack()
                if reserve:
                    res = q.producer().reserve(20)
                    res.view()[:6] = b"HALF!!"
                os.write(w, b"x")
                time.sleep(30)  # bounded: the parent kills us at once
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        os.close(w)
        got = os.read(r, 1)
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert got == b"x", "template holder %s failed" % tag

    def snap(q, tag, desc):
        raw = L.Raw(q)   # verifies the offsets in _layout.py against what the library reports
        raw.close()
        path, checksum = q.path, bool(q.config["checksum"])
        q.close()
        with open(path, "rb") as f:
            seg = f.read()
        with open(path + ".dlq", "rb") as f:
            dlq = f.read()
        assert len(seg) == _geometry(seg)["total"] and len(dlq) == _geometry(dlq)["total"]
        out[tag] = Template(tag, seg, dlq, desc, checksum)

    def lap_then_fill(p, c, laps, ready):
        # `laps` messages through (put + get + ack: the rings move on), then `ready` left READY
        for _ in range(laps):
            p.put(nb())
            c.get(timeout=1).ack()
        for _ in range(ready):
            p.put(nb())

    try:
        for cs in (False, True):
            sfx = "c" if cs else ""
            # T0: wrapped ring, 6 READY, nothing held
            q = make("t0" + sfx, checksum=cs)
            with q.producer() as p, q.consumer() as c:
                lap_then_fill(p, c, 14, 6)
            snap(q, "T0" + sfx, "wrapped, 6 ready")
            # T1: a killed consumer holds 2, a killed producer a half-written slot
            q = make("t1" + sfx, checksum=cs)
            with q.producer() as p, q.consumer() as c:
                lap_then_fill(p, c, 8, 5)
            die_holding("t1" + sfx, 2, reserve=True)
            snap(q, "T1" + sfx, "5 unsettled, dead consumer holds 2, dead producer 1 WRITING")
            # T2: requeued (nack), one dead letter (reject), one acked
            q = make("t2" + sfx, checksum=cs)
            with q.producer() as p, q.consumer() as c:
                lap_then_fill(p, c, 6, 6)
                a, b, d = c.get(timeout=1), c.get(timeout=1), c.get(timeout=1)
                a.nack()
                b.reject()
                d.ack()
            snap(q, "T2" + sfx, "requeued, a dead letter in the DLQ")
            # T3: leases, delivery limit, dead leased holder, one nacked, TTLs
            q = make("t3" + sfx, checksum=cs, ack_timeout=30.0, max_deliveries=3, ttl=3600)
            with q.producer() as p, q.consumer() as c:
                lap_then_fill(p, c, 3, 7)
                m = c.get(timeout=1)
                m.reject()
            die_holding("t3" + sfx, 3, ack_timeout=30.0, nack=True)
            snap(q, "T3" + sfx, "leases, max_deliveries 3, dead leased holder, requeued, DLQ")
            # T4: full (capacity READY)
            q = make("t4" + sfx, checksum=cs)
            with q.producer() as p, q.consumer() as c:
                lap_then_fill(p, c, 5, CAP)
            snap(q, "T4" + sfx, "full")
            # T5: a DLQ with several dead letters, one of them held by a dead DLQ consumer
            q = make("t5" + sfx, checksum=cs)
            with q.producer() as p, q.consumer() as c:
                for _ in range(5):
                    p.put(nb())
                for _ in range(4):
                    c.get(timeout=1).reject()
            die_holding("t5" + sfx, 1, dlq=True)
            snap(q, "T5" + sfx, "4 dead letters, a dead DLQ consumer holds one")
    finally:
        if own:
            shutil.rmtree(directory, ignore_errors=True)
    return out


# ------------------------------------------------------------------ mutations

def _w(off, size, v):
    return ("w", off, struct.pack("<Q" if size == 8 else "<I", v & ((1 << (8 * size)) - 1)))


def _rnd(r, size):
    if size == 8:
        return r.choice(I64) if r.random() < 0.4 else r.getrandbits(64)
    return r.choice(I32) if r.random() < 0.4 else r.getrandbits(32)


def _u64(data, off):
    return struct.unpack_from("<Q", data, off)[0]


def _u32(data, off):
    return struct.unpack_from("<I", data, off)[0]


def _near(r, v, cap, size=8):
    d = r.choice([1, -1, 2, -2, cap, -cap, cap + 1, -cap - 1, 2 * cap, 1 << 40, -(1 << 40), 1 << 63,
                  r.randrange(1, 64), -r.randrange(1, 64)])
    return (v + d) & ((1 << (8 * size)) - 1)


KINDS = [("byteflip", 10), ("bitflip", 6), ("word_rand", 8), ("header", 10), ("positions", 12),
         ("cell", 12), ("slot_word", 14), ("slot_len", 8), ("slot_field", 6), ("entry", 10),
         ("payload", 8), ("zero_region", 5), ("truncate", 4), ("extend", 2), ("truncate_live", 5),
         ("multi", 8)]


def gen_mutation(r, data, depth=0, g=None):
    """A list of ops on one file's bytes: ("w", off, bytes), ("size", n), ("live", n).
    ``g``: the geometry to aim with (default: read from ``data``'s header)."""
    g = g or _geometry(data)
    cap, ss = g["cap"], g["ss"]
    kinds = [(k, w) for k, w in KINDS if depth == 0 or k not in ("multi", "truncate_live")]
    kind = r.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    ops = []
    desc = kind
    if kind == "byteflip":
        for _ in range(r.randint(1, 8)):
            off = r.randrange(len(data))
            ops.append(("w", off, bytes([data[off] ^ r.randint(1, 255)])))
    elif kind == "bitflip":
        off = r.randrange(len(data))
        ops.append(("w", off, bytes([data[off] ^ (1 << r.randrange(8))])))
        desc += " @%d" % off
    elif kind == "word_rand":
        off = r.randrange(len(data) // 8) * 8
        ops.append(_w(off, 8, _rnd(r, 8)))
        desc += " @%d" % off
    elif kind == "header":
        f = r.choice(sorted(HDR_FIELDS))
        off, size = HDR_FIELDS[f]
        v = _rnd(r, size) if r.random() < 0.6 else _near(r, (_u64 if size == 8 else _u32)(data, off), cap, size)
        ops.append(_w(off, size, v))
        desc += " %s=%#x" % (f, v)
    elif kind == "positions":
        ring = r.randrange(3)
        which = r.choice(["head", "tail", "both"])
        for wh in (["head", "tail"] if which == "both" else [which]):
            off = L.HEAD + 64 * ring if wh == "head" else L.TAIL + 64 * ring
            v = _near(r, _u64(data, off), cap) if r.random() < 0.7 else _rnd(r, 8)
            ops.append(_w(off, 8, v))
            desc += " %s[%d]=%#x" % (wh, ring, v)
    elif kind == "cell":
        ring, j = r.randrange(3), r.randrange(cap)
        off = g["rings"] + ring * g["rb"] + 8 * j
        c = _u64(data, off)
        seq, val = c >> 24, c & 0xFFFFFF
        how = r.choice(["random", "seq", "val", "val_big", "copy", "full_here", "empty_here"])
        if how == "random":
            c = _rnd(r, 8)
        elif how == "seq":
            c = ((_near(r, seq, cap) & 0xFFFFFFFFFF) << 24) | val
        elif how == "val":
            c = (seq << 24) | r.randrange(cap)
        elif how == "val_big":
            c = (seq << 24) | r.choice([cap, cap + 1, 0xFFFFFF, r.randrange(cap, 1 << 24)])
        elif how == "copy":
            c = _u64(data, g["rings"] + r.randrange(3) * g["rb"] + 8 * r.randrange(cap))
        elif how == "full_here":   # looks pushed at a position of this lap
            c = (((j + 1 + cap * r.randrange(4)) & 0xFFFFFFFFFF) << 24) | r.randrange(cap)
        else:
            c = ((j + cap * r.randrange(4)) << 24) | val
        ops.append(_w(off, 8, c))
        desc += " %s ring %d cell %d -> %#x" % (how, ring, j, c)
    elif kind == "slot_word":
        i = r.randrange(cap)
        off = g["slots"] + i * ss
        w = _u64(data, off)
        st, own, gen, use = w & 7, (w >> 3) & 0xFFF, (w >> 16) & 0xFFFF, w >> 32
        how = r.choice(["random", "state", "owner", "gen", "use", "ready", "delivered_by", "writing_by",
                        "dying_by", "free"])
        if how == "random":
            w = _rnd(r, 8)
        else:
            if how == "state":
                st = r.randrange(8)
            elif how == "owner":
                own = r.choice([0, 1, 2, 7, 8, 9, 0xFFE, 0xFFF, r.randrange(4096)])
            elif how == "gen":
                gen = r.choice([0, 1, 2, 3, 4, 0xFFFF, r.randrange(65536)])
            elif how == "use":
                use = _near(r, use, cap, 4)
            elif how == "ready":
                st, own = 2, 0xFFF
            elif how in ("delivered_by", "dying_by", "writing_by"):
                st = {"delivered_by": 3, "dying_by": 4, "writing_by": 1}[how]
                own, gen = r.choice([0, 1, 5, 7, 8, 100, 0xFFF]), r.randrange(0, 5)
            elif how == "free":
                st, own = 0, r.choice([0, 1, 3, 7, 0xFFE, 0xFFF])
            w = L.slot_word(st, own, gen, use & 0xFFFFFFFF)
        ops.append(_w(off, 8, w))
        desc += " %s slot %d -> %#x" % (how, i, w)
    elif kind == "slot_len":
        i = r.randrange(cap)
        msz = g["msz"]
        v = r.choice([0, 1, 5, 6, 39, 40, 41, msz - 1, msz, msz + 1, ss, 0x7FFFFFFF, 0xFFFFFFFF,
                      r.getrandbits(32), r.randrange(msz + 1), r.randrange(msz + 1)])
        ops.append(_w(g["slots"] + i * ss + L.S_LEN, 4, v))
        desc += " slot %d len=%d" % (i, v)
    elif kind == "slot_field":
        i = r.randrange(cap)
        f = r.choice(["lease", "use", "crc", "publish_ns", "expire_ns", "pub_seq"])
        o, size = SLOT_FIELDS[f]
        off = g["slots"] + i * ss + o
        cur = (_u64 if size == 8 else _u32)(data, off)
        v = _near(r, cur, cap, size) if r.random() < 0.5 else _rnd(r, size)
        ops.append(_w(off, size, v))
        desc += " slot %d %s=%#x" % (i, f, v)
    elif kind == "entry":
        i = r.randrange(g["maxc"])
        base = L.HDR + i * L.ENTRY
        f = r.choice(["word", "word", "state", "pid", "mark", "mark", "markword", "count0", "count3",
                      "start_time"])
        if f == "word":
            ops.append(_w(base, 8, _rnd(r, 8)))
        elif f == "state":
            w = _u64(data, base)
            ops.append(_w(base, 8, (w & ~0xFF) | r.choice([0, 1, 2, 3, 4, 5, 0xFF])))
        elif f == "pid":
            w = _u64(data, base)
            pid = r.choice([0, 1, os.getpid(), 0x7FFFFFFF, 0xFFFFFFFF, r.randrange(1, 40000)])
            w = (pid << 32) | (w & 0xFFFF0000) | (r.choice([1, 2, 3, 0, 9]) << 8) | r.choice([2, 3, 4])
            ops.append(_w(base, 8, w))
        elif f == "mark":
            off = base + r.choice([ENTRY_FIELDS["take_mark"], ENTRY_FIELDS["push_mark"]])
            v = (1 << 63) | (r.randrange(4) << 32) | r.choice([0, 1, cap - 1, cap, 0xFFFFFFFF, r.randrange(cap)])
            if r.random() < 0.2:
                v = _rnd(r, 8)
            ops.append(_w(off, 8, v))
            # and make the entry look like a dead one that holds it
            if r.random() < 0.7:
                w = _u64(data, base)
                ops.append(_w(base, 8, (w & ~0xFF) | r.choice([2, 3, 4])))
        elif f == "markword":
            off = base + r.choice([ENTRY_FIELDS["take_word"], ENTRY_FIELDS["push_word"]])
            ops.append(_w(off, 8, L.slot_word(r.randrange(5), r.randrange(4096), r.randrange(4),
                                              r.randrange(4)) if r.random() < 0.6 else _rnd(r, 8)))
        else:
            ops.append(_w(base + ENTRY_FIELDS[f], 8, _rnd(r, 8)))
        desc += " %d.%s" % (i, f)
    elif kind == "payload":
        i = r.randrange(cap)
        a = g["slots"] + i * ss + 64  # the payload follows the 64-byte slot header
        for _ in range(r.randint(1, 4)):
            off = a + r.randrange(g["msz"])
            ops.append(("w", off, bytes([data[off] ^ r.randint(1, 255)])))
        desc += " slot %d" % i
    elif kind == "zero_region":
        region = r.choice(["header", "table", "rings", "slot_headers", "one_slot", "one_entry", "positions"])
        if region == "header":
            spans = [(0, L.HDR)]
        elif region == "table":
            spans = [(L.HDR, g["rings"])]
        elif region == "rings":
            spans = [(g["rings"], g["slots"])]
        elif region == "slot_headers":
            spans = [(g["slots"] + i * ss, g["slots"] + i * ss + 64) for i in range(cap)]
        elif region == "one_slot":
            i = r.randrange(cap)
            spans = [(g["slots"] + i * ss, g["slots"] + (i + 1) * ss)]
        elif region == "one_entry":
            i = r.randrange(g["maxc"])
            spans = [(L.HDR + i * L.ENTRY, L.HDR + (i + 1) * L.ENTRY)]
        else:
            spans = [(L.HEAD, L.NOT_EMPTY)]
        fill = r.choice([0, 0xFF, None])
        for a, b in spans:
            ops.append(("w", a, bytes(r.getrandbits(8) for _ in range(b - a)) if fill is None
                        else bytes([fill]) * (b - a)))
        desc += " %s fill=%s" % (region, fill)
    elif kind == "truncate":
        n = r.choice([0, 1, 63, L.HDR - 1, L.HDR, g["rings"], g["slots"], g["total"] - 1, g["total"] - 64,
                      r.randrange(g["total"])])
        ops.append(("size", n))
        desc += " to %d" % n
    elif kind == "extend":
        n = g["total"] + r.choice([1, 8, 64, 4096, r.randrange(1, 1 << 20)])
        ops.append(("size", n))
        desc += " to %d" % n
    elif kind == "truncate_live":
        n = r.choice([0, L.HDR, g["rings"], g["slots"], g["slots"] + ss, g["total"] - 4096 if g["total"] > 8192 else 4096,
                      r.randrange(g["total"])])
        n = n // 4096 * 4096 if r.random() < 0.5 else n
        ops.append(("live", n))
        desc += " while mapped, to %d" % n
    elif kind == "multi":
        parts = []
        for _ in range(r.randint(2, 5)):
            d, o = gen_mutation(r, data, depth=1, g=g)
            parts.append(d)
            ops.extend(o)
        desc = "multi[" + "; ".join(parts) + "]"
    return desc, ops


def apply_ops(data, ops):
    b = bytearray(data)
    live = None
    for op in ops:
        if op[0] == "w":
            _, off, d = op
            if off + len(d) <= len(b):
                b[off:off + len(d)] = d
        elif op[0] == "size":
            n = op[1]
            if n < len(b):
                del b[n:]
            else:
                b.extend(bytes(n - len(b)))
        else:
            live = op[1]
    return bytes(b), live


def make_case(seed, idx, templates):
    """Case idx of seed: deterministic (random.Random of a string)."""
    r = random.Random("ackring-fuzz-%d-%d" % (seed, idx))
    t = templates[r.choice(sorted(templates))]
    target = "dlq" if r.random() < 0.12 else "seg"
    desc, ops = gen_mutation(r, t.seg if target == "seg" else t.dlq)
    seg, dlq = t.seg, t.dlq
    live = None
    if target == "seg":
        seg, live = apply_ops(seg, ops)
    else:
        dlq, live = apply_ops(dlq, ops)
    return {"idx": idx, "template": t.tag, "checksum": t.checksum, "target": target, "desc": desc,
            "live": live, "seg": seg, "dlq": dlq}


# ------------------------------------------------------------------ one case (in the child)

CLEAN = (ackring.Error, ValueError, OSError)


def run_case(case, directory, log=None):
    """The bounded operation sequence on one mutated segment.  Returns a dict:
    steps [(name, result)], bodies problems, late calls."""
    name = "f%d" % case["idx"]
    path = os.path.join(directory, "ackring." + name)
    with open(path, "wb") as f:
        f.write(case["seg"])
    with open(path + ".dlq", "wb") as f:
        f.write(case["dlq"])
    res = {"steps": [], "long": 0, "wrong": 0, "late": 0, "bodies": 0, "max_over_s": 0.0}

    def step(nm, fn, timeout=None):
        if log:
            log("step %s" % nm)
        t0 = time.monotonic()
        try:
            v = fn()
            out = "ok"
        except (ackring.Empty, ackring.Full) as e:
            v, out = e, "expected:" + type(e).__name__
        except CLEAN as e:
            v, out = e, "clean:" + type(e).__name__
        except Exception as e:  # noqa: BLE001 - any other type is what the fuzzer looks for
            v, out = e, "unexpected:%s:%s" % (type(e).__name__, str(e)[:200])
        if timeout is not None:
            over = time.monotonic() - t0 - timeout
            res["max_over_s"] = max(res["max_over_s"], over)
            if over > LATE_S:
                res["late"] += 1
                out += ":late"
        res["steps"].append((nm, out))
        if log:
            log("  -> %s" % out)
        return out == "ok", v

    def seen(b, msz):
        b = bytes(b)
        res["bodies"] += 1
        why = body_problem(b, msz)
        if why:
            res[why] += 1
            if log:
                log("  BAD BODY (%s): len %d %s" % (why, len(b), b[:16].hex()))

    ok, q = step("open", lambda: ackring.open(name, dir=directory, watchdog=None))
    if not ok:
        return res
    if case["live"] is not None:
        # another writer truncates the file under our mapping (the SIGBUS guard's case)
        os.truncate(path if case["target"] == "seg" else path + ".dlq", case["live"])
    msz = q.message_size   # the handle's own (a mutated header may say less than MSZ)
    step("stats", q.stats)
    step("check", q.check)
    ok, rows = step("peek", lambda: q.peek(4))
    if ok:
        for row in rows:
            seen(row["body"], msz)
    ok, c = step("consumer", q.consumer)
    if ok:
        for k in range(CAP + 4):
            ok, m = step("get%d" % k, lambda: c.get(timeout=GET_TIMEOUT if k == 0 else 0),
                         timeout=GET_TIMEOUT)
            if not ok:
                break
            seen(m.body, msz)
            settle = ("ack", "ack", "nack", "reject")[k % 4]
            step("%s%d" % (settle, k), getattr(m, settle))
    ok, p = step("producer", q.producer)
    marker = body(0xABCD0000 + case["idx"], 33)
    if ok:
        ok, mid = step("put", lambda: p.put(marker, timeout=PUT_TIMEOUT), timeout=PUT_TIMEOUT)
        if ok and not isinstance(c, Exception):
            for k in range(CAP + 2):
                ok2, m = step("get_fresh%d" % k, lambda: c.get(timeout=GET_TIMEOUT), timeout=GET_TIMEOUT)
                if not ok2:
                    break
                seen(m.body, msz)
                step("ack_fresh%d" % k, m.ack)
                if m.id == mid:
                    break
    ok, dq = step("dead_letters", lambda: q.dead_letters)
    if ok and dq is not None:
        ok, dc = step("dlq_consumer", dq.consumer)
        if ok:
            for k in range(CAP + 2):
                ok, m = step("dlq_get%d" % k, lambda: dc.get(timeout=0), timeout=0)
                if not ok:
                    break
                seen(m.body, dq.message_size - 40)  # a dead letter is its death header + the body
                step("dlq_ack%d" % k, m.ack if k % 2 == 0 else m.nack)
    step("reclaim", q.reclaim)
    step("stats2", q.stats)
    step("close", q.close)
    for pth in (path, path + ".dlq"):
        try:
            os.unlink(pth)
        except OSError:
            pass
    return res


def _child(seed, start, end, templates, directory, wfd):
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    out = os.fdopen(wfd, "w", buffering=1)
    for idx in range(start, end):
        case = make_case(seed, idx, templates)
        out.write("S %d\n" % idx)
        signal.setitimer(signal.ITIMER_REAL, CASE_ALARM_S)
        res = run_case(case, directory)
        signal.setitimer(signal.ITIMER_REAL, 0)
        res["desc"] = case["desc"]
        res["template"] = case["template"]
        res["checksum"] = case["checksum"]
        out.write("E %d %s\n" % (idx, json.dumps(res)))
    out.flush()


def classify(res):
    outs = [o for _, o in res["steps"]]
    if any(o.startswith("unexpected") for o in outs):
        return "unexpected"
    if res["late"]:
        return "hang"
    if any(o.startswith("clean") for o in outs):
        return "clean"
    return "ok"


class Summary:
    def __init__(self):
        self.cases = 0
        self.counts = {"ok": 0, "clean": 0, "hang": 0, "crash": 0, "unexpected": 0}
        self.long = self.wrong = self.wrong_checksummed = self.bodies = 0
        self.max_over_s = 0.0
        self.failures = []   # (idx, outcome, detail)
        self.exc_types = {}
        self.wall_s = 0.0

    def add(self, idx, outcome, res=None, detail=""):
        self.cases += 1
        self.counts[outcome] += 1
        if res:
            self.long += res["long"]
            self.wrong += res["wrong"]
            self.bodies += res["bodies"]
            if res["checksum"]:
                self.wrong_checksummed += res["wrong"]
            self.max_over_s = max(self.max_over_s, res["max_over_s"])
            for _, o in res["steps"]:
                if o.startswith(("clean", "unexpected")):
                    k = o.split(":")[1]
                    self.exc_types[k] = self.exc_types.get(k, 0) + 1
            if res["long"] or (res["checksum"] and res["wrong"]):
                self.failures.append((idx, "body", res["desc"]))
        if outcome in ("hang", "crash", "unexpected"):
            self.failures.append((idx, outcome, detail or (res and res["desc"])))

    def merge(self, o):
        self.cases += o.cases
        for k in self.counts:
            self.counts[k] += o.counts[k]
        self.long += o.long
        self.wrong += o.wrong
        self.wrong_checksummed += o.wrong_checksummed
        self.bodies += o.bodies
        self.max_over_s = max(self.max_over_s, o.max_over_s)
        self.failures += o.failures
        for k, v in o.exc_types.items():
            self.exc_types[k] = self.exc_types.get(k, 0) + v

    def line(self):
        return ("cases %d: ok %d, clean errors %d, hangs %d, crashes %d, unexpected %d; bodies %d, "
                "longer than message_size %d, wrong %d (in checksummed queues %d); worst call over its "
                "timeout %.3f s; %.1f s" % (self.cases, self.counts["ok"], self.counts["clean"],
                                            self.counts["hang"], self.counts["crash"],
                                            self.counts["unexpected"], self.bodies, self.long, self.wrong,
                                            self.wrong_checksummed, self.max_over_s, self.wall_s))


def run_cases(seed, start, end, templates, directory, bound_s=CASE_BOUND_S):
    """Cases [start, end) of seed, in forked children, a batch per child."""
    s = Summary()
    t0 = time.monotonic()
    nxt = start
    while nxt < end:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                _child(seed, nxt, end, templates, directory, w)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        buf = b""
        cur, cur_t = None, time.monotonic()
        status = None
        killed = False
        try:
            while True:
                rd, _, _ = select.select([r], [], [], 0.2)
                if rd:
                    data = os.read(r, 1 << 16)
                    if not data:
                        break
                    buf += data
                    while b"\n" in buf:
                        ln, buf = buf.split(b"\n", 1)
                        ln = ln.decode()
                        if ln.startswith("S "):
                            cur, cur_t = int(ln.split()[1]), time.monotonic()
                        elif ln.startswith("E "):
                            _, i, js = ln.split(" ", 2)
                            res = json.loads(js)
                            s.add(int(i), classify(res), res)
                            cur = None
                            nxt = int(i) + 1
                elif cur is not None and time.monotonic() - cur_t > bound_s:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                    break
        finally:
            if status is None:
                if not killed:
                    # EOF: the child is exiting; bounded wait, then kill
                    deadline = time.monotonic() + bound_s
                    while time.monotonic() < deadline:
                        p, status = os.waitpid(pid, os.WNOHANG)
                        if p:
                            break
                        time.sleep(0.01)
                    else:
                        os.kill(pid, signal.SIGKILL)
                        status = None
                if status is None:
                    _, status = os.waitpid(pid, 0)
            os.close(r)
        if cur is not None:   # the child died (or was killed) in case `cur`
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            if killed or sig == signal.SIGALRM:
                s.add(cur, "hang", detail="no end after %s s" % (bound_s if killed else CASE_ALARM_S))
            else:
                s.add(cur, "crash", detail="status %#x signal %s" % (status, sig))
            nxt = cur + 1
            for fn in os.listdir(directory):   # what the dead child left
                try:
                    os.unlink(os.path.join(directory, fn))
                except OSError:
                    pass
        elif os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
            raise RuntimeError("fuzz child failed outside a case: status %#x" % status)
    s.wall_s = time.monotonic() - t0
    return s


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--replay", type=int, default=None, help="run one case verbosely in this process")
    a = ap.parse_args(argv)
    templates = make_templates()
    directory = tempfile.mkdtemp(dir="/dev/shm", prefix="ackring-fuzz-")
    try:
        if a.replay is not None:
            case = make_case(a.seed, a.replay, templates)
            print("case %d: template %s target %s: %s" % (a.replay, case["template"], case["target"], case["desc"]))
            res = run_case(case, directory, log=print)
            print(classify(res), json.dumps({k: v for k, v in res.items() if k != "steps"}))
            return 0
        end = a.start + a.cases
        if a.jobs <= 1:
            s = run_cases(a.seed, a.start, end, templates, directory)
        else:
            # a process per job, each with its share of the range
            import multiprocessing
            ctx = multiprocessing.get_context("fork")
            per = (a.cases + a.jobs - 1) // a.jobs
            with ctx.Pool(a.jobs) as pool:
                parts = pool.starmap(_job, [(a.seed, a.start + k * per, min(end, a.start + (k + 1) * per), templates)
                                            for k in range(a.jobs)])
            s = Summary()
            for p in parts:
                s.merge(p)
            s.wall_s = max(p.wall_s for p in parts)
        print("backend %s seed %d cases [%d, %d)" % (os.environ.get("ACKRING_BACKEND", "cython"), a.seed,
                                                     a.start, end))
        print(s.line())
        print("exception types:", json.dumps(s.exc_types, sort_keys=True))
        for f in s.failures[:50]:
            print("FAIL", f)
        return 1 if s.failures else 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _job(seed, start, end, templates):
    d = tempfile.mkdtemp(dir="/dev/shm", prefix="ackring-fuzz-")
    try:
        return run_cases(seed, start, end, templates, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
