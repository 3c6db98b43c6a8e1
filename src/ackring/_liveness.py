"""Telling live processes from dead ones, with psutil.

A process-table entry records a pid and the process's start time, as whole
milliseconds since boot: psutil's ``create_time() - boot_time()``.  (Both
are wall-clock figures built on the kernel's boot time, which moves when the
clock is stepped; their difference does not, so a clock step cannot make a
live process look dead.)  An entry is dead when no process has that pid, the
one that has it is a zombie, or it started at another time (the pid was
reused): comparing start times keeps a recycled pid from passing for the
dead owner.
"""
import os

import psutil

_C_CLAIMING, _C_ACTIVE, _C_DEAD, _C_CLOSING = 1, 2, 3, 4
_self = None


def _start_ms(p):
    # +1: 0 is reserved for "not written yet" (an entry still CLAIMING)
    return round((p.create_time() - psutil.boot_time()) * 1000) + 1


def self_identity():
    """(pid, start time in ms since boot) of this process, cached until the next fork."""
    global _self
    if _self is None:
        p = psutil.Process()
        _self = (p.pid, _start_ms(p))
    return _self


def forget_self():
    global _self
    _self = None


def is_alive(pid, start_ms):
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            started = _start_ms(p)
            if p.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped
                return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # someone else's live process
        return True
    if start_ms == 0:
        return True  # entry still CLAIMING: its start time is not written yet
    return abs(started - start_ms) <= 1  # 1 ms of float rounding


def dead_entries(clients):
    """From Segment.clients() rows, the (index, word, start_time) of entries
    whose owner is dead: the verdict names the exact entry word, so it goes
    stale the moment the entry changes.

    A DEAD entry (a reclaimer died half way) is always returned: its owner was
    judged dead already, and its pid may by now belong to someone else.  A
    CLOSING entry is returned only if its process is gone (a live process
    closes its own)."""
    me = os.getpid()
    out = []
    for index, state, role, pid, start, word, mine in clients:
        if state == _C_DEAD:
            out.append((index, word, start))
        elif state in (_C_CLAIMING, _C_ACTIVE, _C_CLOSING):
            if pid == me:
                # Our own entries are live; a forked child never inherits
                # entries under its own pid, so this cannot misjudge.
                continue
            if not is_alive(pid, start if state != _C_CLAIMING else 0):
                out.append((index, word, start))
    return out
