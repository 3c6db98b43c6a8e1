"""Pieces shared by the harness, the peers and the report."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

MiB = 1 << 20


class BenchError(RuntimeError):
    """A benchmark run failed (a child crashed, hung, or miscounted)."""


class Skip(Exception):
    """Raised by a peer's setup when it cannot run this configuration
    (e.g. a message size above a kernel limit); the run is skipped with a note."""


@dataclass(frozen=True)
class Params:
    """What one run does; inherited by the child processes (fork)."""

    mode: str  # "spsc", "mpmc" or "latency"
    messages: int  # throughput: total messages; latency: measured round trips
    size: int
    capacity: int
    timeout: float  # seconds one put/get may wait before the run counts as hung
    producers: int = 1
    consumers: int = 1
    batch: int = 0  # >1: put_many/get_many where the peer has them
    zero_copy: bool = False
    warmup: int = 0  # latency: round trips before measuring
    spin: bool = False  # latency, ackring only: poll with get(timeout=0) instead of blocking

    def with_(self, **kw: Any) -> "Params":
        return replace(self, **kw)

    def share(self, idx: int) -> int:
        """Messages producer ``idx`` sends (the total split as evenly as possible)."""
        base, extra = divmod(self.messages, self.producers)
        return base + (1 if idx < extra else 0)


# CLOCK_MONOTONIC is system-wide, so timestamps from different children compare.
_MONO = time.CLOCK_MONOTONIC


def now_ns() -> int:
    return time.clock_gettime_ns(_MONO)


class Clock:
    """Handed to a peer's functions inside a child process.

    ``sync()``  waits until every child of the run got there (for multi-step
                set-ups such as bind-then-connect);
    ``start()`` is the start gate: the same barrier, then the start time is taken;
    ``stop()``  records the end time (consumers: once they hold the last message);
    ``producers_done()`` (MPMC) waits for all producers to have put everything,
    then sets ``stop_event``;
    ``counts`` (MPMC) is a shared array where each consumer posts its count
    when idle: a consumer stops once the event is set and the counts add up.
    """

    def __init__(self, barrier: Any, producer_barrier: Any, stop_event: Any, counts: Any,
                 gate_timeout: float) -> None:
        self._barrier = barrier
        self._producer_barrier = producer_barrier
        self.stop_event = stop_event
        self.counts = counts
        self._gate_timeout = gate_timeout
        self.t_start: Optional[int] = None
        self.t_stop: Optional[int] = None

    def sync(self) -> None:
        self._barrier.wait(self._gate_timeout)

    def start(self) -> None:
        self._barrier.wait(self._gate_timeout)
        self.t_start = now_ns()

    def stop(self, t: Optional[int] = None) -> None:
        self.t_stop = now_ns() if t is None else t

    def producers_done(self) -> None:
        """Wait for every producer to have put all its messages, then tell the consumers."""
        if self._producer_barrier is not None:
            self._producer_barrier.wait(self._gate_timeout + 60)
        if self.stop_event is not None:
            self.stop_event.set()


_PAYLOADS: dict = {}


def payload(size: int) -> bytes:
    """A recognisable payload of ``size`` bytes (cached per size)."""
    p = _PAYLOADS.get(size)
    if p is None:
        p = (bytes(range(256)) * (size // 256 + 1))[:size]
        _PAYLOADS[size] = p
    return p


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "hardware", "cpu model", "processor name"):
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ackring_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("ackring")
    except Exception:
        return None


def machine_info(start_method: str) -> dict:
    return {
        "ackring_version": ackring_version(),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "start_method": start_method,
        "ackring_dir": os.environ.get("ACKRING_DIR") or "/dev/shm",
        "loadavg_at_start": _loadavg(),
    }


class CpuSample:
    """A /proc/stat snapshot of the whole machine's CPU time, next to this
    process's own CPU time and that of its reaped children (os.times()).

    ``others_busy(a, b)`` is the share of the machine's CPU time between the
    two snapshots that went to processes other than this one and its
    children: busy time system-wide minus our own.  The children must have
    been reaped (joined) before ``b`` is taken, which the harness does."""

    __slots__ = ("busy", "total", "own")

    def __init__(self, busy: float, total: float, own: float) -> None:
        self.busy, self.total, self.own = busy, total, own

    @staticmethod
    def take() -> Optional["CpuSample"]:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu" or len(fields) < 5:
            return None
        # user nice system idle iowait irq softirq steal [guest guest_nice]
        # (guest time is already counted in user and nice; steal, CPU time
        # the hypervisor gave to other guests, counts as busy: it is load too)
        v = [int(x) for x in fields[1:9]]
        v += [0] * (8 - len(v))
        hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        idle = v[3] + v[4]
        total = sum(v[:8])
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return CpuSample((total - idle) / hz, total / hz, own)

    @staticmethod
    def others_busy(a: Optional["CpuSample"], b: Optional["CpuSample"]) -> Optional[Tuple[float, float]]:
        """(CPU seconds others used, CPU seconds the machine had) between a and b."""
        if a is None or b is None or b.total <= a.total:
            return None
        others = (b.busy - a.busy) - (b.own - a.own)
        return max(0.0, others), b.total - a.total


def _loadavg() -> Optional[str]:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def fmt_size(n: int) -> str:
    for unit, div in (("MiB", MiB), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return "%d %s" % (n // div, unit)
    return "%d B" % n
