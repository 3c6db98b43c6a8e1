"""Operator subcommands of the ``ackring`` CLI: check, watchdog, stats.

``ackring check NAME``     verify a queue's segment; exit 1 if anything is wrong.
``ackring watchdog NAME``  a daemon for deployments: reclaim what dead processes
                           hold, every --interval seconds, until SIGTERM/SIGINT.
``ackring stats NAME``     print the queue's counters (``--json`` for machines).
"""
import json
import signal
import threading
import time


def _open(name):
    import ackring

    # An operator tool must not run a watchdog thread of its own beside the
    # one it may be asked to run in the foreground.
    return ackring.open(name, watchdog=None)


def cmd_check(args):
    with _open(args.name) as q:
        problems = q.check()
        if args.reclaim:
            n = q.reclaim()
            print("reclaim: repaired %d slot(s)" % n)
            problems = q.check()
    if args.json:
        print(json.dumps({"queue": args.name, "ok": not problems, "problems": problems}))
    elif problems:
        print("queue %r: %d problem(s)" % (args.name, len(problems)))
        for p in problems:
            print("  - " + p)
    else:
        print("queue %r: ok" % args.name)
    return 1 if problems else 0


def cmd_watchdog(args):
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with _open(args.name) as q:
        print("ackring watchdog: queue %r, a reclaim pass every %gs (SIGTERM/Ctrl-C stops)"
              % (args.name, args.interval), flush=True)

        def report(n):
            print("%s reclaimed %d slot(s) from dead processes"
                  % (time.strftime("%Y-%m-%dT%H:%M:%S"), n), flush=True)

        n = q.reclaim()
        if n:
            report(n)
        q.run_watchdog(args.interval, stop=stop, on_repair=report)
    return 0


def cmd_stats(args):
    with _open(args.name) as q:
        st = q.stats()
    if args.json:
        print(json.dumps(st))
    else:
        width = max(map(len, st))
        for k, v in st.items():
            print("%-*s  %s" % (width, k, v))
    return 0


def _interval(text):
    v = float(text)
    if not v > 0:
        raise ValueError(text)
    return v


def add_commands(sub):
    """Add the operator subcommands to an argparse subparsers object; each
    sets ``func`` (args -> exit code)."""
    c = sub.add_parser("check", help="verify a queue's segment (exit 1 on problems)")
    c.add_argument("name")
    c.add_argument("--reclaim", action="store_true", help="run a reclaim pass, then check again")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)
    w = sub.add_parser("watchdog", help="reclaim slots held by dead processes, as a daemon")
    w.add_argument("name")
    w.add_argument("--interval", type=_interval, default=0.1, help="seconds between passes (default 0.1)")
    w.set_defaults(func=cmd_watchdog)
    s = sub.add_parser("stats", help="print a queue's counters")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
