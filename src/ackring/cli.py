"""The ``ackring`` command line.

``ackring bench`` measures cross-process throughput: one producer process puts
N messages into a queue, one consumer process takes (and, for ackring, acks)
every one of them, and the time runs from the moment both processes are ready
until the consumer holds the N-th message.  The same is done for each peer in
``PEERS`` (today: ``multiprocessing.Queue``) so the numbers come with a
yardstick measured on the same machine in the same run.

Adding a peer (faster-fifo, pyzmq, posix_ipc, ...) means writing three small
module-level functions -- ``setup`` (in the parent), ``produce`` and
``consume`` (each in its own child process) -- and one ``Peer`` entry in
``PEERS``; the harness (processes, start gate, timing, verification, cleanup,
report) is shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import queue as _queue
import secrets
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

DEFAULT_MESSAGES = 200_000
DEFAULT_SIZE = 64
DEFAULT_CAPACITY = 1024
DEFAULT_REPEAT = 3
DEFAULT_TIMEOUT = 30.0

_MONO = time.CLOCK_MONOTONIC  # system-wide: timestamps compare across processes


class BenchError(RuntimeError):
    """A benchmark run failed (a child crashed, hung, or miscounted)."""


@dataclass(frozen=True)
class Params:
    """What one run does; pickled to the child processes."""

    messages: int
    size: int
    capacity: int
    timeout: float  # seconds one put/get may wait before the run counts as hung


class Clock:
    """Handed to a peer's produce/consume function inside the child.

    ``start()`` is the start gate: it returns once both children are set up
    and records the time.  The consumer calls ``stop()`` once it holds the
    last message.
    """

    def __init__(self, barrier: Any, gate_timeout: float) -> None:
        self._barrier = barrier
        self._gate_timeout = gate_timeout
        self.t_start: Optional[int] = None
        self.t_stop: Optional[int] = None

    def start(self) -> None:
        self._barrier.wait(self._gate_timeout)
        self.t_start = time.clock_gettime_ns(_MONO)

    def stop(self) -> None:
        self.t_stop = time.clock_gettime_ns(_MONO)


@dataclass(frozen=True)
class Peer:
    """One transport the bench can measure.

    setup(ctx, params) -> (handle, cleanup)
        Runs in the parent.  ``handle`` is passed to both children (it must be
        picklable for the spawn start method); ``cleanup()`` runs in a
        ``finally`` after the children are gone.
    produce(handle, params, clock)
        Runs in the producer child: set up, ``clock.start()``, then put
        ``params.messages`` messages of ``params.size`` bytes.
    consume(handle, params, clock) -> int
        Runs in the consumer child: set up, ``clock.start()``, take exactly
        ``params.messages`` messages, ``clock.stop()``, then count anything
        left over; returns the number of messages received.
    """

    name: str
    description: str
    setup: Callable[[Any, Params], Tuple[Any, Callable[[], None]]]
    produce: Callable[[Any, Params, Clock], None]
    consume: Callable[[Any, Params, Clock], int]
    requires: Tuple[str, ...] = ()  # importable modules the peer needs
    scaled: bool = False  # runs fewer messages than asked (see scale_messages)

    def missing(self) -> Optional[str]:
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return mod
        return None


def scale_messages(n: int) -> int:
    """Message count for slow peers: N/4, at least 10000 (never more than N)."""
    return max(min(n, 10_000), n // 4)


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


# --------------------------------------------------------------------------- ackring


def _ackring_setup(ctx: Any, params: Params) -> Tuple[Any, Callable[[], None]]:
    import ackring

    name = "bench-%d-%s" % (os.getpid(), secrets.token_hex(4))
    q = ackring.create(name, capacity=params.capacity, message_size=max(params.size, 1))

    def cleanup() -> None:
        ackring.unlink(name, missing_ok=True)

    try:
        # The children open the queue by name; the parent keeps no handle
        # (nothing of it is inherited across fork).
        q.close()
    except BaseException:
        cleanup()
        raise
    return name, cleanup


def _ackring_produce(name: str, params: Params, clock: Clock) -> None:
    import ackring

    payload = _payload(params.size)
    timeout = params.timeout
    with ackring.open(name) as q, q.producer() as p:
        put = p.put
        clock.start()
        for _ in range(params.messages):
            put(payload, timeout=timeout)


def _ackring_consume(name: str, params: Params, clock: Clock) -> int:
    import ackring

    n = params.messages
    timeout = params.timeout
    with ackring.open(name) as q, q.consumer() as c:
        get = c.get
        i = 0
        clock.start()
        try:
            for i in range(n - 1):
                get(timeout=timeout).ack()
            i = n - 1
            last = get(timeout=timeout)
        except _queue.Empty:
            raise BenchError("consumer got only %d of %d messages (waited %gs)" % (i, n, timeout)) from None
        body = last.body
        last.ack()
        clock.stop()
        if body != _payload(params.size):
            raise BenchError("message %d arrived with a wrong payload (%d bytes)" % (n, len(body)))
        extra = 0
        while True:
            try:
                get(timeout=0).ack()
            except _queue.Empty:
                break
            extra += 1
        return n + extra


# ------------------------------------------------------------ multiprocessing.Queue


def _mpq_setup(ctx: Any, params: Params) -> Tuple[Any, Callable[[], None]]:
    q = ctx.Queue(maxsize=params.capacity)
    return q, q.close


def _mpq_produce(q: Any, params: Params, clock: Clock) -> None:
    payload = _payload(params.size)
    timeout = params.timeout
    put = q.put
    clock.start()
    for _ in range(params.messages):
        put(payload, True, timeout)


def _mpq_consume(q: Any, params: Params, clock: Clock) -> int:
    n = params.messages
    timeout = params.timeout
    get = q.get
    i = 0
    clock.start()
    try:
        for i in range(n - 1):
            get(True, timeout)
        i = n - 1
        last = get(True, timeout)
    except _queue.Empty:
        raise BenchError("consumer got only %d of %d messages (waited %gs)" % (i, n, timeout)) from None
    clock.stop()
    if last != _payload(params.size):
        raise BenchError("message %d arrived with a wrong payload" % n)
    extra = 0
    while True:
        try:
            q.get(True, 0.05)
        except _queue.Empty:
            break
        extra += 1
    return n + extra


# Registry of peers, in report order.  ackring first: the ratio column is
# ackring's throughput divided by each peer's.
PEERS: Dict[str, Peer] = {
    "ackring": Peer(
        "ackring",
        "ackring producer.put / consumer.get + ack",
        _ackring_setup,
        _ackring_produce,
        _ackring_consume,
    ),
    "mp.Queue": Peer(
        "mp.Queue",
        "multiprocessing.Queue(maxsize=capacity) put / get",
        _mpq_setup,
        _mpq_produce,
        _mpq_consume,
        scaled=True,
    ),
}


# --------------------------------------------------------------------------- harness


def _child(role: str, peer_name: str, handle: Any, params: Params, barrier: Any, results: Any) -> None:
    # Ctrl-C goes to the whole process group; the parent handles it and
    # terminates the children, so they must not die with tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    clock = Clock(barrier, params.timeout)
    try:
        peer = PEERS[peer_name]
        count = None
        if role == "producer":
            peer.produce(handle, params, clock)
        else:
            count = peer.consume(handle, params, clock)
        results.put((role, None, {"start": clock.t_start, "stop": clock.t_stop, "count": count}))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
        try:
            barrier.abort()
        except Exception:
            pass
        if isinstance(e, BenchError):
            msg = str(e)
        else:
            msg = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
        results.put((role, msg, None))


def _stop(procs: Sequence[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def run_once(ctx: Any, peer: Peer, params: Params) -> float:
    """One producer and one consumer process; returns messages per second."""
    # Backstop only: a hung put/get fails in the child after params.timeout.
    deadline = time.monotonic() + 60 + 2 * params.timeout + params.messages * 200e-6
    started: Dict[str, Any] = {}  # role -> Process
    handle, cleanup = peer.setup(ctx, params)
    try:
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        try:
            for role in ("consumer", "producer"):
                p = ctx.Process(
                    target=_child,
                    args=(role, peer.name, handle, params, barrier, results),
                    name="ackring-bench-%s-%s" % (peer.name, role),
                    daemon=True,
                )
                p.start()
                started[role] = p
            got: Dict[str, Dict[str, Any]] = {}
            silent_since: Dict[str, float] = {}
            while len(got) < 2:
                try:
                    role, err, data = results.get(timeout=0.2)
                except _queue.Empty:
                    now = time.monotonic()
                    if now > deadline:
                        raise BenchError("%s: run did not finish in time" % peer.name) from None
                    for r, p in started.items():
                        if r in got or p.exitcode is None:
                            continue
                        if p.exitcode != 0:
                            raise BenchError("%s %s died (exit code %s)" % (peer.name, r, p.exitcode)) from None
                        if now - silent_since.setdefault(r, now) > 5:
                            raise BenchError("%s %s exited without a report" % (peer.name, r)) from None
                    continue
                if err is not None:
                    raise BenchError("%s %s failed: %s" % (peer.name, role, err))
                got[role] = data
            for p in started.values():
                p.join(timeout=30)
                if p.is_alive():
                    raise BenchError("%s did not exit after its run" % p.name)
        finally:
            _stop(list(started.values()))
            results.close()
    finally:
        cleanup()

    cons, prod = got["consumer"], got["producer"]
    if cons["count"] != params.messages:
        raise BenchError(
            "%s: consumer received %d messages, expected exactly %d" % (peer.name, cons["count"], params.messages)
        )
    elapsed_ns = cons["stop"] - min(cons["start"], prod["start"])
    if elapsed_ns <= 0:
        raise BenchError("%s: non-positive elapsed time" % peer.name)
    return params.messages * 1e9 / elapsed_ns


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


def _version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("ackring")
    except Exception:
        return None


def bench(args: argparse.Namespace) -> int:
    names = args.peer or list(PEERS)
    peers = []
    notes = []
    for name in dict.fromkeys(names):
        peer = PEERS[name]
        missing = peer.missing()
        if missing:
            notes.append("%s skipped: module %r is not installed" % (name, missing))
            continue
        peers.append(peer)
    if not peers:
        print("ackring bench: error: no peer available (%s)" % "; ".join(notes), file=sys.stderr)
        return 1

    methods = multiprocessing.get_all_start_methods()
    method = args.start_method or ("fork" if "fork" in methods else "spawn")
    ctx = multiprocessing.get_context(method)
    cpus = usable_cpus()
    if cpus < 2:
        notes.append("only %d usable CPU: producer and consumer share it, expect low numbers" % cpus)

    counts = {
        p.name: scale_messages(args.messages) if p.scaled else args.messages for p in peers
    }
    rates: Dict[str, List[float]] = {p.name: [] for p in peers}
    for rep in range(args.repeat):
        for peer in peers:
            params = Params(counts[peer.name], args.size, args.capacity, args.timeout)
            try:
                rate = run_once(ctx, peer, params)
            except BenchError as e:
                print("ackring bench: error: %s" % e, file=sys.stderr)
                return 1
            rates[peer.name].append(rate)
            print(
                "run %d/%d %-10s %12s msg/s" % (rep + 1, args.repeat, peer.name, "{:,.0f}".format(rate)),
                file=sys.stderr,
                flush=True,
            )

    for peer in peers:
        if counts[peer.name] != args.messages:
            notes.append(
                "%s ran %d messages per repeat instead of %d to keep the runtime reasonable; "
                "throughput is per message, so the ratio stays comparable"
                % (peer.name, counts[peer.name], args.messages)
            )

    medians = {name: statistics.median(r) for name, r in rates.items()}
    ref = medians.get("ackring")
    rows = []
    for peer in peers:
        med = medians[peer.name]
        rows.append(
            {
                "peer": peer.name,
                "description": peer.description,
                "messages": counts[peer.name],
                "msg_per_s": med,
                "mb_per_s": med * args.size / 1e6,
                "ratio": (ref / med) if ref is not None and med > 0 else None,
                "runs_msg_per_s": rates[peer.name],
            }
        )

    info = {
        "ackring_version": _version(),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus,
        "start_method": method,
        "ackring_dir": os.environ.get("ACKRING_DIR") or "/dev/shm",
    }
    if args.json:
        out = dict(info)
        out.update(
            {
                "params": {
                    "messages": args.messages,
                    "size": args.size,
                    "capacity": args.capacity,
                    "repeat": args.repeat,
                },
                "statistic": "median",
                "results": rows,
                "notes": notes,
            }
        )
        print(json.dumps(out, indent=2))
        return 0

    print(
        "ackring bench: %d messages x %d B, capacity %d, median of %d repeat(s), start method %s"
        % (args.messages, args.size, args.capacity, args.repeat, method)
    )
    print("cpu: %s (%s cores, %d usable); %s" % (info["cpu_model"], info["cpu_count"], cpus, info["python"]))
    print()
    header = ("peer", "messages", "msg/s", "MB/s", "ackring/peer")
    table = [header]
    for row in rows:
        table.append(
            (
                row["peer"],
                "{:,}".format(row["messages"]),
                "{:,.0f}".format(row["msg_per_s"]),
                "{:,.1f}".format(row["mb_per_s"]),
                "%.2fx" % row["ratio"] if row["ratio"] is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    for row in rows:
        print("  %s: %s" % (row["peer"], row["description"]))
    for note in notes:
        print("note: %s" % note)
    return 0


# ----------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1 << 30:
        raise argparse.ArgumentTypeError("must be between 1 and 2**30")
    return value


def _capacity(text: str) -> int:
    value = int(text)
    if value < 2 or value & (value - 1):
        raise argparse.ArgumentTypeError("must be a power of two >= 2")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ackring",
        description="ackring: crash-safe shared-memory message queues with acks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench",
        help="measure producer->consumer throughput across processes",
        description=(
            "One producer process puts N messages, one consumer process gets and acks each; "
            "throughput is N / (time from both ready to the N-th message taken). "
            "Compared with multiprocessing.Queue on the same machine."
        ),
    )
    b.add_argument("--messages", "-n", type=_positive_int, default=DEFAULT_MESSAGES, metavar="N",
                   help="messages per run (default %(default)s)")
    b.add_argument("--size", "-s", type=_size, default=DEFAULT_SIZE, metavar="BYTES",
                   help="message size in bytes (default %(default)s)")
    b.add_argument("--capacity", "-c", type=_capacity, default=DEFAULT_CAPACITY, metavar="C",
                   help="queue capacity, a power of two (default %(default)s)")
    b.add_argument("--repeat", "-r", type=_positive_int, default=DEFAULT_REPEAT, metavar="R",
                   help="runs per peer; the median is reported (default %(default)s)")
    b.add_argument("--peer", action="append", choices=list(PEERS), metavar="PEER",
                   help="measure only this peer (repeatable; default all: %s)" % ", ".join(PEERS))
    b.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                   help="multiprocessing start method (default fork where available, else spawn)")
    b.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="longest a single put/get may wait before the run fails (default %(default)s)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.set_defaults(func=bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("ackring: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
