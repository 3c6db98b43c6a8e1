"""Who a process-table entry belongs to, for operators (check, stats, ls).

Liveness itself is decided in C by the kernel-held OFD lock of each entry
(ext/table.c): it needs no pid, start time or psutil.  psutil only says what
an operator wants to see about a pid: its name and command line, and whether
it is stopped.
"""
import psutil


def describe(pid):
    """A short description of process `pid`: "name (pid N): cmdline", or
    "pid N (gone)"."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            try:
                cmd = " ".join(p.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmd = ""
            status = p.status()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "pid %d (gone)" % pid
    except psutil.AccessDenied:
        return "pid %d (another user's)" % pid
    s = "%s (pid %d%s)" % (name, pid, ", " + status if status in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE) else "")
    if cmd:
        s += ": " + (cmd if len(cmd) <= 80 else cmd[:77] + "...")
    return s
