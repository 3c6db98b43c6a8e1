"""Crash images for tests/test_durable.py: record a "sync" queue's file at
every sync point (ackring.backend.set_sync_snapshots), then build images a
power loss could leave: the file as of sync k, plus any subset of the
512 B sectors (or 4 KiB pages) that changed between sync k and sync k+1.

`python _crash_images.py IMG...` opens each image (after scribbling a foreign
boot id into it, as a reboot would), drains it and prints one JSON line per
image: the bodies delivered, what open() repaired and what check() said."""
import hashlib
import json
import os
import random
import struct
import sys

BOOT_ID_OFF = 136  # ar_header.boot_id (layout v2: shutdown 128, leases_seen 132)


def body_of(num):
    n = 8 + num % 180
    pad = hashlib.blake2b(struct.pack("<Q", num), digest_size=64).digest()
    return struct.pack("<Q", num) + (pad * 4)[: n - 8]


def number_of(body):
    """The message number, or None if the body is not one body_of made (torn)."""
    if len(body) < 8:
        return None
    num = struct.unpack_from("<Q", body)[0]
    return num if body_of(num) == body else None


def build(snaps, k, rng, grain, out):
    """Image between snapshot k and k+1 (or exactly k when k is the last)."""
    with open(snaps[k], "rb") as f:
        base = bytearray(f.read())
    if k + 1 < len(snaps):
        with open(snaps[k + 1], "rb") as f:
            nxt = f.read()
        changed = [o for o in range(0, len(base), grain) if base[o:o + grain] != nxt[o:o + grain]]
        # a random subset of the changed blocks reached the disk, the rest did not
        for o in changed:
            if rng.random() < 0.5:
                base[o:o + grain] = nxt[o:o + grain]
    base[BOOT_ID_OFF:BOOT_ID_OFF + 16] = os.urandom(16)  # the machine rebooted
    with open(out, "wb") as f:
        f.write(base)


def drain(path):
    import ackring
    q = ackring.open(path=path, watchdog=None)
    try:
        rec = q.open_recovery
        problems = q.check()
        bodies = []
        with q.consumer() as c:
            while True:
                try:
                    m = c.get(timeout=0)
                except ackring.Empty:
                    break
                bodies.append(bytes(m.body).hex())
                m.ack()
        return {"image": path, "bodies": bodies, "recovery": rec, "check": problems,
                "check_after": q.check()}
    finally:
        q.close()


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(json.dumps(drain(p)), flush=True)
