"""The ``ackring`` command line.

``ackring bench`` is the benchmark harness (the code lives in ``ackring._bench``):

- throughput, SPSC (1 producer + 1 consumer process) and MPMC (2 + 2), over a
  range of message sizes, in messages/s and MB/s;
- round-trip latency (p50 / p99 / p99.9) by ping-pong between two processes
  with blocking waits;

for ackring (every message acked) next to multiprocessing.Queue and, when
importable (``pip install 'ackring[bench]'``), multiprocessing.Pipe,
faster-fifo, pyzmq and posix_ipc, measured in the same run; it prints
ackring/peer ratios first, then the measured medians with their spread
and the machine's load, and the project's performance targets (not judged
when the machine was too loaded to tell).  With no arguments it runs a short SPSC 64 B + 4 KiB
throughput and 64 B latency comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from typing import List, Optional, Sequence

DEFAULT_MESSAGES = 200_000
DEFAULT_ROUNDS = 5_000
DEFAULT_WARMUP = 1_000
DEFAULT_SIZES = "64,4096"
DEFAULT_MODES = "spsc,latency"
DEFAULT_CAPACITY = 1024
DEFAULT_REPEAT = 3
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_RING_BYTES = 64 << 20
MODES = ("spsc", "mpmc", "latency")
OBJECT_MODES = ("objects", "asyncio", "durable")  # ackring._bench.objects / .durable; not part of "all", run on their own

# ----------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _bytes(text: str) -> int:
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = 1
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError("not a size: %r (e.g. 64, 4096, 4k, 1M)" % text) from None
    if not 1 <= value <= 1 << 30:
        raise argparse.ArgumentTypeError("must be between 1 and 2**30")
    return value


def _sizes(text: str) -> List[int]:
    return [_bytes(x) for x in text.split(",") if x.strip()]


def _modes(text: str) -> List[str]:
    out = [x.strip().lower() for x in text.split(",") if x.strip()]
    if "all" in out:
        return list(MODES)
    bad = [m for m in out if m not in MODES + OBJECT_MODES]
    if bad or not out:
        raise argparse.ArgumentTypeError("modes are %s (comma separated)" % ", ".join(MODES + OBJECT_MODES))
    return out


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
    from ._bench.peers import PEERS

    import ackring

    parser = argparse.ArgumentParser(
        prog="ackring",
        description="ackring: crash-safe shared-memory message queues with acks.",
    )
    parser.add_argument("--version", action="version",
                        version="ackring %s (backend %s, %s %s)" % (
                            ackring.__version__, ackring.backend, sys.implementation.name,
                            ".".join(map(str, sys.version_info[:3]))))
    parser.add_argument("--dir", default=None, help="queue directory (default $ACKRING_DIR, else /dev/shm)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument("--dir", default=argparse.SUPPRESS,
                        help="queue directory (default $ACKRING_DIR, else /dev/shm)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench",
        help="benchmark ackring against multiprocessing.Queue and other IPC transports",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Throughput (SPSC: 1 producer + 1 consumer process; MPMC: 2 + 2) and ping-pong round-trip\n"
            "latency for ackring (every message acked) next to multiprocessing.Queue, and multiprocessing.Pipe,\n"
            "faster-fifo, pyzmq and posix_ipc when importable (pip install 'ackring[bench]').\n"
            "Each figure is the median over --repeat runs; peers are interleaved per repeat. The ratios\n"
            "against the peers (paired per repeat) come first; each figure shows its spread over the repeats\n"
            "and the CPU time other processes used meanwhile, and a target resting on a figure with a wide\n"
            "spread or a busy machine is 'not judged (machine loaded)' (thresholds printed with the results).\n"
            "Throughput = messages / (time from all processes ready to the last message taken)."
        ),
        epilog=(
            "examples:\n"
            "  ackring bench                                   # quick: SPSC 64 B + 4 KiB, latency 64 B\n"
            "  ackring bench --mode spsc,mpmc,latency --sizes 64,4096,65536,1048576 --plot out.png\n"
            "  ackring bench --sizes 64 --mode spsc --batch 64\n"
            "  ackring bench --sizes 65536 --mode spsc --zero-copy\n"
            "  ackring bench --json > bench.json\n"
            "  ackring bench --url amqp://guest:guest@127.0.0.1:5672/%%2F   # and over a RabbitMQ broker\n"
            "  ackring bench --mode objects,asyncio            # Python objects; asyncio consumers\n"
        ),
    )
    b.add_argument("--mode", "-m", type=_modes, default=_modes(DEFAULT_MODES), metavar="MODES",
                   help="comma list of spsc, mpmc, latency, or all (default %s); or, on their own, "
                        "objects (Python objects: ackring.mp.Queue vs multiprocessing.Queue and faster-fifo) "
                        "and asyncio (ackring.aio consumer vs blocking ones)" % DEFAULT_MODES)
    b.add_argument("--sizes", type=_sizes, default=_sizes(DEFAULT_SIZES), metavar="LIST",
                   help="message sizes in bytes, comma separated; k/M suffixes allowed (default %s)"
                        % DEFAULT_SIZES)
    b.add_argument("--latency-sizes", type=_sizes, metavar="LIST",
                   help="message sizes for the latency mode (default: the first of --sizes)")
    b.add_argument("--size", "-s", type=_bytes, metavar="BYTES", help="a single message size (same as --sizes BYTES)")
    b.add_argument("--peers", action="append", metavar="LIST",
                   help="comma list of peers to run (ackring always runs; default: every importable one of %s)"
                        % ", ".join(PEERS))
    b.add_argument("--peer", action="append", metavar="PEER", help=argparse.SUPPRESS)
    b.add_argument("--url", metavar="AMQP_URL",
                   help="run the amqp peer (ackring.connect) against this RabbitMQ URL too "
                        "(default for --peers amqp: $ACKRING_AMQP_URL)")
    b.add_argument("--messages", "-n", type=_positive_int, default=DEFAULT_MESSAGES, metavar="N",
                   help="messages per throughput run (default %(default)s; bounded by --max-bytes, "
                        "slow peers run N/4)")
    b.add_argument("--rounds", type=_positive_int, default=DEFAULT_ROUNDS, metavar="N",
                   help="measured round trips per latency run (default %(default)s)")
    b.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N",
                   help="latency round trips before measuring (default %(default)s)")
    b.add_argument("--repeat", "-r", type=_positive_int, default=DEFAULT_REPEAT, metavar="R",
                   help="runs per configuration; the median is reported (default %(default)s)")
    b.add_argument("--max-bytes", type=_bytes, default=DEFAULT_MAX_BYTES, metavar="BYTES",
                   help="at most this many payload bytes per throughput run (a quarter per latency run), so "
                        "big messages run fewer times (default 256M)")
    b.add_argument("--duration", type=_seconds, default=1.0, metavar="SECONDS",
                   help="if a run takes longer, later repeats of it move proportionally fewer messages "
                        "(default %(default)s)")
    b.add_argument("--capacity", "-c", type=_capacity, default=DEFAULT_CAPACITY, metavar="C",
                   help="queue depth, a power of two (default %(default)s; lowered for big messages, see "
                        "--ring-bytes)")
    b.add_argument("--ring-bytes", type=_bytes, default=DEFAULT_RING_BYTES, metavar="BYTES",
                   help="cap on depth x message size per queue (default 64M)")
    b.add_argument("--batch", type=int, default=0, metavar="N",
                   help="use the batch APIs (ackring put_many / get_many / ack_many, faster-fifo put_many / "
                        "get_many) with N messages per call")
    b.add_argument("--zero-copy", action="store_true",
                   help="ackring consumers read through get(copy=False) + memoryview (producers use "
                        "reserve() if the installed ackring has it)")
    b.add_argument("--spin", action="store_true",
                   help="latency: ackring busy-polls get(timeout=0) instead of blocking (a lower bound)")
    b.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                   help="multiprocessing start method (default fork)")
    b.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="longest a single put/get may wait before the run fails (default %(default)s)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    b.add_argument("--plot", metavar="PNG", help="write throughput against message size to this PNG (matplotlib)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar / line on stderr")
    b.add_argument("--self-check", action="store_true",
                   help="run tiny versions of every mode and variant, check that a miscount is detected, exit")
    b.set_defaults(func=bench)
    from ._admin import add_commands

    add_commands(sub, common)  # ls, stats, peek, get, publish, dlq, redrive, purge, rm, create, check, watchdog
    return parser


def bench(args: argparse.Namespace) -> int:
    from ._bench import driver

    if args.size is not None:
        args.sizes = [args.size]
    if args.url:
        import os

        os.environ["ACKRING_AMQP_URL"] = args.url   # read by the amqp peer's processes
        args.peers = (args.peers or []) + ["amqp"]
    if args.self_check:
        return driver.self_check(args)
    return driver.run_bench(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # `ackring ls | head -1`: the reader left; say nothing, exit 0.  Point
        # stdout at /dev/null so the flush at exit does not fail again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("ackring: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:  # ackring's errors derive from these or ackring.Error
        print("ackring: %s" % (exc,), file=sys.stderr)
        return 1
    except Exception as exc:
        from . import Error

        if not isinstance(exc, Error):
            raise
        print("ackring: %s" % (exc,), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
