"""q.check(): verify a whole segment and say what is wrong in plain words.

It reads the header, every slot word and every process-table entry and checks
them against the invariants of docs/design.md.  On a quiet queue an empty list
means the segment is sound.  Under live traffic a few findings can be
transient (a slot caught between its claim and the advance of tail or head).
Repair is what ``q.reclaim()`` does.
"""
from ._liveness import dead_entries

AR_MAGIC = 0x474E49524B434121
STATE_NAMES = {0: "FREE", 1: "WRITING", 2: "READY", 3: "DELIVERED"}
CLIENT_STATES = {0: "FREE", 1: "CLAIMING", 2: "ACTIVE", 3: "DEAD", 4: "CLOSING"}
NO_OWNER = 0xFFF
# A FREE word's owner field records how the slot's message was settled (AR_OUT_* in ext/ackring.h).
FREE_OUTCOMES = {0, 1, 3, 4, 5, 6, 0xFFE, 0xFFF}
WAIT_CONSUMER, WAIT_PRODUCER = 0xFFFF, 0xFFFF0000  # count fields of a client's waiting word


def _word(w):
    return w & 0xF, (w >> 4) & 0xFFF, (w >> 16) & 0xFFFF, w >> 32


def check_segment(seg):
    problems = []
    h = seg.raw_header()
    cap, msz, max_clients = seg.capacity, seg.message_size, seg.max_clients
    shift = cap.bit_length() - 1
    mask = cap - 1
    if h["magic"] != AR_MAGIC:
        problems.append("header: magic is %#x, not ackring's %#x" % (h["magic"], AR_MAGIC))
    for key, want in (("capacity", cap), ("message_size", msz), ("max_clients", max_clients),
                      ("queue_id", seg.queue_id)):
        if h[key] != want:
            problems.append("header: %s changed from %d to %d since the queue was opened"
                            % (key, want, h[key]))
    head, tail = h["head"], h["tail"]
    if head > tail:
        problems.append("head %d is ahead of tail %d" % (head, tail))
    elif tail - head > cap:
        problems.append("tail %d is more than capacity %d ahead of head %d" % (tail, cap, head))

    clients = {row[0]: row for row in seg.clients()}
    dead = {row[0] for row in dead_entries(clients.values())}
    for row in clients.values():
        index, state, pid = row[0], row[1], row[3]
        if state not in CLIENT_STATES:
            problems.append("client %d: unknown state %d" % (index, state))
        elif index in dead:
            problems.append("client %d (pid %d) is %s but its process is gone: reclaim will free it"
                            % (index, pid, CLIENT_STATES[state].lower()))

    lock = h["reclaim_lock"]
    if lock:
        holder_pid, holder_entry = lock >> 32, (lock & 0xFFFF) - 1
        row = clients.get(holder_entry)
        if row is None or row[3] != holder_pid or holder_entry in dead:
            problems.append("the reclaim lock is held by pid %d, which is gone: the next reclaim breaks it"
                            % holder_pid)

    ready_behind_head = 0
    waiting_flags = {WAIT_CONSUMER: 0, WAIT_PRODUCER: 0}
    for index in clients:
        w = seg.client_waiting(index)
        waiting_flags[WAIT_CONSUMER] += w & 0xFFFF
        waiting_flags[WAIT_PRODUCER] += w >> 16

    for i, (word, mid, length) in enumerate(seg.raw_slots()):
        state, owner, gen, lap = _word(word)
        name = STATE_NAMES.get(state)
        if name is None:
            problems.append("slot %d: unknown state %d (word %#018x)" % (i, state, word))
            continue
        # The last position claimed for slot i is the largest p < tail with p % cap == i;
        # the slot must be on that lap (or on tail's lap, if tail's advance is pending).
        if tail > i:
            last = i + (((tail - 1 - i) >> shift) << shift)
            want_lap = (last >> shift) & 0xFFFFFFFF
        else:
            last, want_lap = None, 0xFFFFFFFF
        pending_lap = (tail >> shift) & 0xFFFFFFFF if (tail & mask) == i else None
        if lap != want_lap and lap != pending_lap:
            problems.append("slot %d: on lap %d, but tail %d says lap %d" % (i, lap, tail, want_lap))
            continue
        pos = ((tail >> shift) << shift | i) if lap == pending_lap and lap != want_lap else last
        if state in (1, 3):
            if owner >= max_clients:
                problems.append("slot %d: %s by owner %d, beyond the table of %d" % (i, name, owner, max_clients))
            elif owner not in clients:
                problems.append("slot %d: %s by client %d, whose entry is free" % (i, name, owner))
            elif owner in dead:
                problems.append("slot %d: %s by dead client %d: reclaim will %s it"
                                % (i, name, owner, "redeliver" if state == 3 else "discard"))
        elif state == 0 and owner not in FREE_OUTCOMES:
            problems.append("slot %d: FREE with unknown settle outcome %d" % (i, owner))
        elif state == 2 and owner != NO_OWNER:
            problems.append("slot %d: READY but names owner %d" % (i, owner))
        if state in (2, 3):
            if length > msz:
                problems.append("slot %d: length %d exceeds message_size %d" % (i, length, msz))
            if pos is not None and mid != pos:
                problems.append("slot %d: message id %d does not match its position %d" % (i, mid, pos))
            if state == 2 and pos is not None and pos < head:
                ready_behind_head += 1
    if h["requeued"] < ready_behind_head:
        problems.append("requeue hint %d is below the %d requeued messages behind head: they would be missed"
                        % (h["requeued"], ready_behind_head))
    for bit, key in ((WAIT_CONSUMER, "consumers_waiting"), (WAIT_PRODUCER, "producers_waiting")):
        if h[key] < waiting_flags[bit]:
            problems.append("%s is %d but %d clients say they wait: a wakeup could be lost"
                            % (key, h[key], waiting_flags[bit]))
    return problems
