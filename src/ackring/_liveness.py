"""Telling live processes from dead ones, with psutil.

A process-table entry records a pid and the process's start time, as the
kernel's ``starttime`` (clock ticks since boot, field 22 of /proc/PID/stat),
plus one so that 0 can mean "not written yet".  Ticks since boot never move
when the wall clock is stepped, unlike psutil's ``create_time()`` (a wall-
clock figure built on a boot time that some psutil versions cache): so a
clock step cannot make a live process look dead.  psutil has no public call
for the raw ticks, hence the few lines that read them below; everything else
(does the pid exist, is it a zombie) is psutil's.

An entry is dead when no process has that pid, the one that has it is a
zombie, or it started at another time (the pid was reused): comparing start
times keeps a recycled pid from passing for the dead owner.
"""
import os

import psutil

_C_CLAIMING, _C_ACTIVE, _C_DEAD, _C_CLOSING = 1, 2, 3, 4
_self = None


def _start_ticks(pid):
    """The process's start time in clock ticks since boot, + 1; None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19]) + 1  # field 22 overall


def self_identity():
    """(pid, start ticks) of this process, cached until the next fork."""
    global _self
    if _self is None:
        pid = os.getpid()
        _self = (pid, _start_ticks(pid))
    return _self


def forget_self():
    global _self
    _self = None


def is_alive(pid, start_ticks):
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped
            return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # someone else's live process
        return True
    if start_ticks == 0:
        return True  # entry still CLAIMING: its start time is not written yet
    return _start_ticks(pid) == start_ticks


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
