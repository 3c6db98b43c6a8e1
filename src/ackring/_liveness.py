"""Telling live processes from dead ones, with psutil.

A process-table entry records a pid and the process's start time (psutil's
``create_time``, stored as the bits of the float).  An entry is dead when no
process has that pid, or the process that has it started at another time (the
pid was reused).  Comparing start times is what keeps a recycled pid from
passing for the dead owner.
"""
import os
import struct

import psutil

_C_CLAIMING, _C_ACTIVE, _C_DEAD = 1, 2, 3
_self = None


def _bits(t):
    return struct.unpack("<Q", struct.pack("<d", t))[0]


def self_identity():
    """(pid, start-time bits) of this process, cached until the next fork."""
    global _self
    if _self is None:
        p = psutil.Process()
        _self = (p.pid, _bits(p.create_time()))
    return _self


def forget_self():
    global _self
    _self = None


def is_alive(pid, start_bits):
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            ct = p.create_time()
            if p.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped
                return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # someone else's live process
        return True
    if start_bits == 0:
        return True  # entry still CLAIMING: its start time is not written yet
    return _bits(ct) == start_bits


def dead_entries(clients):
    """From Segment.clients() rows, the (index, pid, start_time) of dead owners.

    A DEAD entry (a reclaimer died half way) is always returned: its owner was
    judged dead already, and its pid may by now belong to someone else."""
    me = os.getpid()
    out = []
    for index, state, role, pid, start in clients:
        if state == _C_DEAD:
            out.append((index, pid, start))
        elif state in (_C_CLAIMING, _C_ACTIVE):
            if pid == me:
                # Our own entries are live; a forked child never inherits
                # entries under its own pid, so this cannot misjudge.
                continue
            if not is_alive(pid, start if state == _C_ACTIVE else 0):
                out.append((index, pid, start))
    return out
