"""q.check(): verify a whole segment and say what is wrong in plain words.

It reads the header, every ring cell, every slot word and every
process-table entry and checks them against the invariants of
docs/design.md (I1..I8).  On a quiet queue an empty list means the segment
is sound.  Under live traffic a finding can be transient (a message caught
between its slot transition and its ring push, which its owner's marker
names).  Repair is what ``q.reclaim()`` does.
"""
from . import _status as S

AR_MAGIC = 0x474E49524B434121
RINGS = ("free", "ready", "requeue")
OUTCOMES = {0, 1, 3, 4, 5, 6, 7, 0xFFE, 0xFFF}
MASK40 = (1 << 40) - 1    # ring cells carry 40 bits of position


def _pos_diff(a, b):
    """a - b for 40-bit positions (b a free-running 64-bit one), signed."""
    d = (a - b) & MASK40
    return d - (MASK40 + 1) if d > MASK40 >> 1 else d


def _word(w):
    return w & 0x7, (w >> 3) & 0xFFF, (w >> 16) & 0xFFFF, w >> 32


def check_segment(seg):
    problems = []
    h = seg.raw_header()
    cap, msz, max_clients = seg.capacity, seg.message_size, seg.max_clients
    if h["magic"] != AR_MAGIC:
        problems.append("header: magic is %#x, not ackring's %#x" % (h["magic"], AR_MAGIC))
    for key, want in (("capacity", cap), ("message_size", msz), ("max_clients", max_clients),
                      ("queue_id", seg.queue_id)):
        if h[key] != want:
            problems.append("header: %s changed from %d to %d since the queue was opened" % (key, want, h[key]))

    entries = {e["index"]: e for e in seg.entries()}
    marked = {}      # (ring, index) some entry's marker names -> that entry
    for e in entries.values():
        state = S.ENTRY_STATES.get(e["state"])
        if state is None:
            problems.append("process-table entry %d: unknown state %d" % (e["index"], e["state"]))
        elif not e["alive"]:
            problems.append("process-table entry %d (pid %d) is %s but its process is gone: "
                            "reclaim will free it" % (e["index"], e["pid"], state))
        for mark in (e["take_mark"], e["push_mark"]):
            if mark:
                marked[((mark >> 32) & 3, mark & 0xFFFFFFFF)] = e

    where = {}       # slot index -> rings holding it
    lag = h["hint_lag"]  # how far head and tail may lag the cells (a ring run, design.md I1)
    for r, ring in enumerate(RINGS):
        head, tail = h["head"][r], h["tail"][r]
        if tail + lag < head:
            problems.append("%s ring: head %d is ahead of tail %d" % (ring, head, tail))
        elif tail - head > cap + lag:
            problems.append("%s ring: tail %d is more than capacity %d ahead of head %d" % (ring, tail, cap, head))
        cells = seg.raw_cells(r)
        # tail read again after the cells: pushes made while we read them are
        # at positions up to it; the head read before is the bound the other
        # way (a cell behind it was popped before it could be full again)
        later_tail = seg.raw_header()["tail"][r]
        for j, cell in enumerate(cells):
            seq, v = cell >> 24, cell & 0xFFFFFF
            if (seq - 1) % cap == j % cap:          # full
                pos = (seq - 1) & MASK40
                if v >= cap:
                    problems.append("%s ring cell %d: index %d beyond capacity %d" % (ring, j, v, cap))
                elif _pos_diff(pos, head) < 0:
                    problems.append("%s ring cell %d: index %d at position %d, behind head %d: no get or put "
                                    "will reach it" % (ring, j, v, pos, head))
                elif _pos_diff(pos, later_tail) >= lag:
                    problems.append("%s ring cell %d: index %d at position %d, ahead of tail %d: no get or put "
                                    "will reach it" % (ring, j, v, pos, later_tail))
                else:
                    where.setdefault(v, []).append(ring)
            elif seq % cap != j % cap:
                problems.append("%s ring cell %d: sequence %d belongs to no position of this cell" % (ring, j, seq))

    for i, (word, lease, use, length, crc_ok, pub, pub_seq) in enumerate(seg.raw_slots()):
        state, owner, gen, use32 = _word(word)
        rings = where.get(i, [])
        if len(rings) > 1:
            problems.append("slot %d: in %d ring places (%s): a message could be delivered out of turn"
                            % (i, len(rings), ", ".join(rings)))
        if state >= len(S.SLOT_STATES):
            problems.append("slot %d: unknown state %d (word %#018x)" % (i, state, word))
            continue
        name = S.SLOT_STATES[state].upper()
        want_ring = {0: "free", 2: "requeue" if gen else "ready"}.get(state)
        if want_ring is not None:
            mover = marked.get((RINGS.index(want_ring), i))
            if want_ring not in rings and (mover is None or not mover["alive"]):
                # (a live mover is between the slot's transition and its push)
                problems.append("slot %d: %s but not in the %s ring: %s" % (
                    i, name, want_ring, "no get or put would find it" if mover is None else
                    "reclaim of dead pid %d, which was moving it, will put it there" % mover["pid"]))
            if state == 0 and owner not in OUTCOMES:
                problems.append("slot %d: FREE with unknown settle outcome %d" % (i, owner))
        elif rings:
            problems.append("slot %d: %s but listed in the %s ring" % (i, name, rings[0]))
        if state in (1, 3, 4):
            e = entries.get(owner)
            if owner >= max_clients:
                problems.append("slot %d: %s by owner %d, beyond the table of %d" % (i, name, owner, max_clients))
            elif e is None:
                problems.append("slot %d: %s by process-table entry %d, which is free" % (i, name, owner))
            elif not e["alive"]:
                problems.append("slot %d: %s by dead pid %d: reclaim will %s it"
                                % (i, name, e["pid"], "discard" if state == 1 else "redeliver"))
        if state in (2, 3, 4):
            if length > msz:
                problems.append("slot %d: length %d exceeds message_size %d" % (i, length, msz))
            elif crc_ok == 0:
                problems.append("slot %d: %s message fails its checksum (a torn or changed body)" % (i, name))
            if (use & 0xFFFFFFFF) != use32 or use == 0:
                problems.append("slot %d: use count %d does not match its word (%d)" % (i, use, use32))
    return problems
