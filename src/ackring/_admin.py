"""Operator subcommands of the ``ackring`` CLI, modelled on rabbitmqctl /
rabbitmqadmin: ls, stats, peek, get, publish, dlq, redrive, purge, rm,
create, check, watchdog.

Every command takes ``--json`` (one JSON document; ``stats --watch`` and
``watchdog`` print one JSON object per line) and ``--dir`` (the queue
directory; default $ACKRING_DIR, else /dev/shm).  Text output is aligned
columns.
"""
import base64
import json
import signal
import sys
import threading
import time

#: What each stats() counter means: shown by ``ackring stats --help``, and
#: in the README's table.
STATS_HELP = (
    ("depth", "messages ready to be delivered"),
    ("in_flight", "delivered to a consumer, not settled yet"),
    ("unsettled", "depth + in_flight: what counts against capacity"),
    ("writing", "slots a producer is writing now (put / reserve in progress)"),
    ("published", "messages stored by put (counted once each)"),
    ("acked", "messages acked: done and gone"),
    ("nacked", "nack(requeue=True) only: given back to be delivered again (rejects are not counted here)"),
    ("redelivered", "deliveries after the first (nacked, recovered from dead consumers, leases run out)"),
    ("rejected", "reject() / nack(requeue=False): sent to the dead-letter queue"),
    ("dead_lettered", "sent to the DLQ, by reason: rejected, delivery_limit, expired (TTL), lease_expired"),
    ("dead_lettered_total", "the sum of dead_lettered"),
    ("expired", "messages whose TTL ran out (dead-lettered, reason expired)"),
    ("lease_expired", "deliveries taken back because their ack lease (ack_timeout) ran out"),
    ("recovered", "deliveries taken back from dead consumers and delivered again"),
    ("discarded", "half-written messages of dead producers thrown away (their put never returned)"),
    ("dropped", "dead letters this queue could not keep (on a DLQ: full; on a main queue: no DLQ)"),
    ("dlq_dropped", "dead letters of this queue dropped because its DLQ was full"),
    ("purged", "messages removed by purge"),
    ("stale", "index entries found already taken and skipped (a repair in progress; normally 0)"),
    ("reclaimed_entries", "process-table entries of dead processes freed"),
    ("producers", "attached producers"),
    ("consumers", "attached consumers"),
    ("observers", "attached processes writing dead letters only"),
    ("oldest_unsettled", "the oldest unsettled message: id, age in seconds, state, holder pid"),
    ("capacity", "slots: the most unsettled messages"),
    ("message_size", "largest message, bytes"),
    ("max_clients", "process-table entries"),
    ("shutdown", "the queue was shut down (puts refused, gets end when drained)"),
    ("durability", "memory, os (page cache of a file) or sync (fdatasync before put returns)"),
    ("free_ring", "entries in the free ring (slots to write)"),
    ("ready_ring", "entries in the ready ring"),
    ("requeue_ring", "entries in the requeue ring (given back, delivered first)"),
    ("syncs", "fdatasync calls made (file queues)"),
    ("synced_seq", "publish sequence known durable (file queues)"),
    ("pub_seq", "publish sequence number"),
)
_RATE_KEYS = ("published", "acked", "nacked", "redelivered", "rejected", "dead_lettered_total")
REASONS = ("rejected", "delivery_limit", "expired", "lease_expired")


# ----------------------------------------------------------------- helpers


def _open(args, name=None):
    import ackring

    # An operator tool must not run a watchdog thread of its own beside the
    # one it may be asked to run in the foreground.
    return ackring.open(name or args.name, dir=args.dir, watchdog=None)


def _out(text=""):
    sys.stdout.write(text + "\n")


def _json(obj):
    _out(json.dumps(obj, default=str))


def table(rows, headers, right=()):
    """Aligned columns: rows of str; columns named in ``right`` right-aligned."""
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    lines = []
    for r in [list(headers)] + rows:
        cells = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(r, widths, headers)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def show_body(body, width=60):
    """A body made safe for a terminal: printable UTF-8 text quoted, anything
    else as hex; truncated to about ``width`` characters with the full size."""
    try:
        text = bytes(body).decode("utf-8")
        printable = text.isprintable()
    except UnicodeDecodeError:
        printable = False
    if printable:
        s = json.dumps(text, ensure_ascii=False)  # quoted, escapes shown
        if len(s) > width:
            s = s[:width - 4] + '..."'
        return s
    hexed = bytes(body[:max(1, (width - 8) // 2)]).hex()
    return "hex:" + hexed + ("..." if len(body) > len(hexed) // 2 else "")


def body_json(body):
    """A body for --json: base64 always, and the text when it is UTF-8."""
    d = {"size": len(body), "body_base64": base64.b64encode(bytes(body)).decode("ascii")}
    try:
        d["body_text"] = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        pass
    return d


def _ago(t, now=None):
    age = max(0.0, (now or time.time()) - t)
    if age < 120:
        return "%.1fs ago" % age
    if age < 7200:
        return "%.0fm ago" % (age / 60)
    return "%.1fh ago" % (age / 3600)


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# ----------------------------------------------------------------- commands


def cmd_ls(args):
    import ackring

    rows = ackring.list_queues(args.dir)
    if args.json:
        _json(rows)
        return 0
    if not rows:
        _out("no queues in %s" % ackring._directory(args.dir))
        return 0
    cols = ("NAME", "DEPTH", "IN_FLIGHT", "CONSUMERS", "PRODUCERS", "DLQ", "CAPACITY", "DURABILITY", "SIZE")
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["name"]] + ["-"] * 7 + [human_bytes(r.get("size", 0)) + "  (" + r["error"] + ")"])
            continue
        out.append([r["name"], str(r["depth"]), str(r["in_flight"]), str(r["consumers"]), str(r["producers"]),
                    "-" if r["dlq_depth"] is None else str(r["dlq_depth"]), str(r["capacity"]),
                    r["durability"], human_bytes(r["size"])])
    _out(table(out, cols, right=cols[1:7]))
    return 0


def _stats_rows(st, prev=None, dt=None):
    rows = []
    for key, meaning in STATS_HELP:
        v = st.get(key)
        if key == "dead_lettered":
            for reason, count in v.items():
                row = ["dead_lettered." + reason, str(count)]
                if prev is not None:
                    row.append("")
                rows.append(row + ["sent to the DLQ for reason " + reason])
            continue
        if key == "oldest_unsettled":
            v = "-" if v is None else "id %d, %.1fs old, %s%s" % (
                v["id"], v["age"], v["state"], ", held by pid %d" % v["holder_pid"] if v["holder_pid"] else "")
        row = [key, str(v)]
        if prev is not None:
            row.append("%+.0f/s" % ((st[key] - prev[key]) / dt) if key in _RATE_KEYS and dt else "")
        rows.append(row + [meaning])
    return rows


def _print_stats(name, st, prev=None, dt=None):
    _out("queue %r  (%s, %d x %d B)" % (name, st["durability"], st["capacity"], st["message_size"]))
    heads = ("COUNTER", "VALUE") + (("RATE",) if prev is not None else ()) + ("MEANING",)
    _out(table(_stats_rows(st, prev, dt), heads, right=("VALUE", "RATE")))


def cmd_stats(args):
    with _open(args) as q:
        if not args.watch:
            st = q.stats()
            _json(st) if args.json else _print_stats(args.name, st)
            return 0
        tty = sys.stdout.isatty() and not args.json
        prev = prev_t = None
        n = 0
        while True:
            st, now = q.stats(), time.monotonic()
            if args.json:
                _json(dict(st, time=time.time()))
            else:
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J")  # refresh in place
                else:
                    _out("-- %s" % time.strftime("%H:%M:%S"))
                _print_stats(args.name, st, prev if prev is not None else st,
                             (now - prev_t) if prev_t is not None else None)
            sys.stdout.flush()
            n += 1
            if args.count is not None and n >= args.count:
                return 0
            prev, prev_t = st, now
            time.sleep(args.interval)


def _peek_rows(items, width, dead=False):
    now = time.time()
    rows = []
    for m in items:
        row = [str(m["id"]), str(m["delivery_count"]), "yes" if m["requeued"] else "", _ago(m["publish_time"], now),
               str(len(m["body"]))]
        if dead:
            d = m["death"]
            row = [str(d["id"]), d["reason"], str(d["delivery_count"]), _when(d["first_publish_time"]),
                   _when(d["time"]), str(len(m["body"]))]
        rows.append(row + [show_body(m["body"], width)])
    return rows


def _peek_json(m):
    d = {k: v for k, v in m.items() if k != "body"}
    d.update(body_json(m["body"]))
    return d


def cmd_peek(args):
    with _open(args) as q:
        items = q.peek(args.n)
        depth = q.stats()["depth"]
    if args.json:
        _json({"queue": args.name, "depth": depth, "messages": [_peek_json(m) for m in items]})
        return 0
    _out("queue %r: %d ready, showing %d (not taken)" % (args.name, depth, len(items)))
    if items:
        cols = ("ID", "DELIVERIES", "REQUEUED", "PUBLISHED", "SIZE", "BODY")
        _out(table(_peek_rows(items, args.width), cols, right=("ID", "DELIVERIES", "SIZE")))
    return 0


def cmd_dlq(args):
    import ackring

    with _open(args) as q:
        dlq = q.dead_letters
        if dlq is None:
            raise ValueError("queue %r has no dead-letter queue" % args.name)
        items = dlq.peek(args.n)
        depth = dlq.stats()["depth"]
    if args.json:
        _json({"queue": args.name, "dlq": args.name + ackring.DLQ_SUFFIX, "depth": depth,
               "messages": [_peek_json(m) for m in items]})
        return 0
    by = {}
    for m in items:
        by[m["death"]["reason"]] = by.get(m["death"]["reason"], 0) + 1
    _out("queue %r: %d dead letter(s)%s, showing %d" % (
        args.name, depth, (" (shown: %s)" % ", ".join("%s %d" % kv for kv in sorted(by.items()))) if by else "",
        len(items)))
    if items:
        cols = ("ID", "REASON", "DELIVERIES", "FIRST PUBLISHED", "DIED", "SIZE", "BODY")
        _out(table(_peek_rows(items, args.width, dead=True), cols, right=("ID", "DELIVERIES", "SIZE")))
    return 0


def cmd_get(args):
    import ackring

    with _open(args) as q, q.consumer() as c:
        try:
            m = c.get(timeout=args.timeout)
        except ackring.Empty:
            if args.json:
                _json({"queue": args.name, "message": None})
            print("ackring: queue %r: no message ready" % args.name, file=sys.stderr)
            return 1
        body = m.body
        info = {"id": m.id, "delivery_count": m.delivery_count, "publish_time": m.publish_time_ns / 1e9}
        if m.death is not None:
            info["death"] = m.death
        # settle before writing, so a closed pipe cannot leave it half-done
        action = "acked" if args.ack else "requeued"
        m.ack() if args.ack else m.nack(requeue=True)
    if args.raw:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    elif args.json:
        info.update(body_json(body), action=action)
        _json({"queue": args.name, "message": info})
    else:
        _out("message %d (delivery %d, %d bytes, %s): %s" % (
            info["id"], info["delivery_count"], len(body), action, show_body(body, args.width)))
    return 0


def cmd_publish(args):
    if args.body is None or args.body == "-":
        data = sys.stdin.buffer.read()
        bodies = data.splitlines() if args.lines else [data]
    else:
        body = args.body.encode("utf-8")
        bodies = body.splitlines() if args.lines else [body]
    with _open(args) as q, q.producer() as p:
        ids = [p.put(b, timeout=args.timeout, ttl=args.ttl) for b in bodies]
    if args.json:
        _json({"queue": args.name, "ids": ids})
    else:
        _out("published %d message(s) to %r%s" % (len(ids), args.name,
                                                  " (id %d)" % ids[0] if len(ids) == 1 else ""))
    return 0


def cmd_redrive(args):
    import ackring

    with _open(args) as q:
        try:
            moved = q.redrive(n=args.n, reason=args.reason, put_timeout=args.timeout)
            full = None
        except ackring.Full as e:
            moved, full = e.moved, e
        left = q.dead_letters.stats()["depth"]
    if args.json:
        _json({"queue": args.name, "moved": moved, "dlq_depth": left, "stopped": str(full) if full else None})
    else:
        _out("moved %d dead letter(s) back to %r; %d left in the dead-letter queue" % (moved, args.name, left))
        if full:
            print("ackring: stopped: %s" % full, file=sys.stderr)
    return 1 if full else 0


def cmd_purge(args):
    with _open(args) as q:
        n = q.purge()
        held = q.stats()["in_flight"]
    if args.json:
        _json({"queue": args.name, "purged": n, "in_flight": held})
    else:
        _out("purged %d ready message(s) from %r (%d held by consumers left alone)" % (n, args.name, held))
    return 0


def cmd_rm(args):
    import ackring

    attached = None
    try:
        with _open(args) as q:
            st = q.stats()
            attached = st["producers"] + st["consumers"]
    except ackring.QueueNotFound:
        if not args.force:
            raise
    except (ackring.Error, OSError):
        pass  # a damaged queue can still be removed
    ackring.unlink(args.name, missing_ok=args.force, dir=args.dir)
    if args.json:
        _json({"queue": args.name, "removed": True, "attached": attached})
    else:
        _out("removed queue %r and its dead-letter queue%s" % (
            args.name, " (%d attached clients were shut down)" % attached if attached else ""))
    return 0


def cmd_create(args):
    import ackring

    kw = {}
    for key in ("capacity", "message_size", "ttl", "ack_timeout", "dead_letter_capacity", "durability"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.max_deliveries is not None:
        kw["max_deliveries"] = args.max_deliveries or None
    with ackring.create(args.name, exist_ok=args.exist_ok, mode=args.mode, max_clients=args.max_clients,
                        checksum=args.checksum, dir=args.dir, watchdog=None, **kw) as q:
        info = {"queue": q.name, "path": q.path, "capacity": q.capacity, "message_size": q.message_size}
        info.update(q.config)
    if args.json:
        _json(info)
    else:
        _out("queue %r at %s: capacity %d, message_size %d, max_deliveries %s, ttl %s, ack_timeout %s, %s" % (
            info["queue"], info["path"], info["capacity"], info["message_size"], info["max_deliveries"],
            info["ttl"], info["ack_timeout"], info["durability"]))
    return 0


def _names(args):
    import ackring

    if args.all:
        if args.names:
            raise ValueError("give queue names or --all, not both")
        return [r["name"] for r in ackring.list_queues(args.dir)]
    if not args.names:
        raise ValueError("give one or more queue names, or --all")
    return args.names


_RECOVERY_WORDS = {"entries": "dead process entries", "requeued": "message(s) requeued",
                   "discarded": "half-written message(s) discarded", "repushed": "index(es) re-pushed",
                   "leases": "expired lease(s) taken back", "rebuilt": "rebuild after a reboot",
                   "torn": "torn slot(s) dropped", "busy": "entries busy (left for later)"}


def cmd_check(args):
    results = []
    for name in _names(args):
        with _open(args, name) as q:
            # Opening runs a reclaim pass first: say what it repaired, or the
            # check below would only ever see an already repaired segment.
            on_open = {k: v for k, v in q.open_recovery.items() if v}
            problems = q.check()
            repaired = None
            if args.reclaim:
                repaired = q.reclaim()
                problems = q.check()
        results.append({"queue": name, "ok": not problems, "problems": problems, "repaired": repaired,
                        "repaired_on_open": on_open})
    if args.json:
        _json(results[0] if len(results) == 1 and not args.all else results)
    else:
        for r in results:
            if r["repaired_on_open"]:
                _out("queue %r: opening it repaired %s" % (r["queue"], ", ".join(
                    "%s %s" % (v, _RECOVERY_WORDS.get(k, k)) for k, v in r["repaired_on_open"].items())))
            if r["repaired"] is not None:
                _out("queue %r: reclaim repaired %d slot(s)" % (r["queue"], r["repaired"]))
            _out("queue %r: %s" % (r["queue"], "ok" if r["ok"] else "%d problem(s)" % len(r["problems"])))
            for p in r["problems"]:
                _out("  - " + p)
    return 0 if all(r["ok"] for r in results) else 1


def cmd_watchdog(args):
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    names = _names(args)
    queues = {}

    def event(name, n):
        if args.json:
            _json({"time": time.time(), "queue": name, "reclaimed": n})
        else:
            _out("%s queue %r: reclaimed %d slot(s) from dead processes"
                 % (time.strftime("%Y-%m-%dT%H:%M:%S"), name, n))
        sys.stdout.flush()

    try:
        for name in names:
            queues[name] = _open(args, name)
        if args.json:
            _json({"time": time.time(), "watching": names, "interval": args.interval})
        else:
            _out("ackring watchdog: %d queue(s) (%s), a reclaim pass every %gs (SIGTERM/Ctrl-C stops)"
                 % (len(names), ", ".join(names), args.interval))
        sys.stdout.flush()
        passes = 0
        while True:
            for name, q in list(queues.items()):
                if q.closed or q.is_shutdown:
                    q.close()
                    del queues[name]
                    continue
                n = q.reclaim()
                if n:
                    event(name, n)
            passes += 1
            if not queues or (args.count is not None and passes >= args.count) or stop.wait(args.interval):
                return 0
    finally:
        for q in queues.values():
            q.close()


# ----------------------------------------------------------------- parser


def _interval(text):
    v = float(text)
    if not v > 0:
        raise ValueError(text)
    return v


def _count(text):
    v = int(text)
    if v < 1:
        raise ValueError(text)
    return v


def _mode(text):
    return int(text, 8)


NAME_HELP = "queue name (a file ackring.NAME in the queue directory; NAME.dlq is its dead-letter queue)"


def add_commands(sub, common):
    """Add the operator subcommands to an argparse subparsers object; each
    sets ``func`` (args -> exit code).  ``common``: the parent parser with
    --json and --dir."""
    import argparse

    from .cli import _bytes, _capacity

    def add(name, help, **kw):
        return sub.add_parser(name, help=help, description=kw.pop("description", help[0].upper() + help[1:] + "."),
                              parents=[common], **kw)

    p = add("ls", "list the queues in the directory: depth, in_flight, clients, DLQ depth, size")
    p.set_defaults(func=cmd_ls)

    p = add("stats", "print a queue's counters (--watch: a live view)",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="counters:\n" + "\n".join("  %-20s %s" % kv for kv in STATS_HELP))
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("--watch", "-w", action="store_true", help="refresh in place every --interval seconds, "
                   "with rates (one JSON object per line with --json)")
    p.add_argument("--interval", type=_interval, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--count", type=_count, help="with --watch: stop after this many refreshes")
    p.set_defaults(func=cmd_stats)

    p = add("peek", "show ready messages in delivery order without taking them")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("-n", type=_count, default=10, help="at most this many (default 10)")
    p.add_argument("--width", type=_count, default=60, help="body column width (default 60)")
    p.set_defaults(func=cmd_peek)

    p = add("get", "take one message; by default give it back (--requeue), or --ack it away")
    p.add_argument("name", help=NAME_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ack", action="store_true", help="ack it: it leaves the queue")
    g.add_argument("--requeue", action="store_true", help="nack(requeue=True) it: delivered again (default)")
    p.add_argument("--timeout", type=float, default=0, help="seconds to wait for one (default 0)")
    p.add_argument("--raw", action="store_true", help="write the body's bytes to stdout, nothing else")
    p.add_argument("--width", type=_count, default=60, help="body width in text output (default 60)")
    p.set_defaults(func=cmd_get)

    p = add("publish", "put a message (BODY, or stdin when BODY is - or missing)")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("body", nargs="?", help="the message text (UTF-8); - or nothing: read stdin as bytes")
    p.add_argument("--lines", action="store_true", help="one message per line")
    p.add_argument("--ttl", type=float, help="seconds the message may wait before it expires")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a free slot (default 5)")
    p.set_defaults(func=cmd_publish)

    p = add("dlq", "list a queue's dead letters (reason, deliveries, times) without taking them")
    p.add_argument("name", help=NAME_HELP + " (the main queue's)")
    p.add_argument("-n", type=_count, default=20, help="at most this many (default 20)")
    p.add_argument("--width", type=_count, default=40, help="body column width (default 40)")
    p.set_defaults(func=cmd_dlq)

    p = add("redrive", "move dead letters back to the main queue (each put, then acked in the DLQ)")
    p.add_argument("name", help=NAME_HELP + " (the main queue's)")
    p.add_argument("--reason", choices=REASONS, help="only dead letters of this reason")
    p.add_argument("-n", type=_count, help="at most this many (default all)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for room in the main queue before stopping (default 5)")
    p.set_defaults(func=cmd_redrive)

    p = add("purge", "drop every ready message (not those held by consumers); says how many")
    p.add_argument("name", help=NAME_HELP)
    p.set_defaults(func=cmd_purge)

    p = add("rm", "remove a queue and its dead-letter queue (attached processes are shut down)")
    p.add_argument("name", help=NAME_HELP)
    p.add_argument("--force", "-f", action="store_true", help="no error if it does not exist")
    p.set_defaults(func=cmd_rm)

    p = add("create", "create a queue and its dead-letter queue")
    p.add_argument("name", help="queue name: 1-200 characters of [A-Za-z0-9._-], not starting with '.'")
    p.add_argument("--capacity", "-c", type=_capacity, help="slots, a power of two (default 1024)")
    p.add_argument("--message-size", "-s", type=_bytes, help="largest message: bytes, k/M suffixes (default 4096)")
    p.add_argument("--max-deliveries", type=int, help="delivery limit before dead-lettering (default 20; 0: none)")
    p.add_argument("--ttl", type=float, help="seconds a message may wait (default: no TTL)")
    p.add_argument("--ack-timeout", type=float, help="seconds a delivery may stay unsettled (default: no lease)")
    p.add_argument("--dead-letter-capacity", type=_capacity, help="DLQ slots (default: capacity)")
    p.add_argument("--durability", choices=("memory", "os", "sync"),
                   help="memory (default), os or sync (file queues: give --dir on a real filesystem)")
    p.add_argument("--checksum", action="store_true", help="CRC32C per message")
    p.add_argument("--max-clients", type=int, default=256, help="process-table entries (default 256)")
    p.add_argument("--mode", type=_mode, default=0o600, help="permission bits, octal (default 600)")
    p.add_argument("--exist-ok", action="store_true", help="open it if it exists with the same settings")
    p.set_defaults(func=cmd_create)

    p = add("check", "verify queues' segments (exit 1 on problems)")
    p.add_argument("names", nargs="*", metavar="NAME", help=NAME_HELP)
    p.add_argument("--all", action="store_true", help="every queue in the directory")
    p.add_argument("--reclaim", action="store_true", help="run a reclaim pass, then check again")
    p.set_defaults(func=cmd_check)

    p = add("watchdog", "reclaim what dead processes hold in one or more queues, as a daemon")
    p.add_argument("names", nargs="*", metavar="NAME", help=NAME_HELP)
    p.add_argument("--all", action="store_true", help="every queue in the directory at start")
    p.add_argument("--interval", type=_interval, default=0.1, help="seconds between passes (default 0.1)")
    p.add_argument("--count", type=_count, help="stop after this many passes (default: until SIGTERM/SIGINT)")
    p.set_defaults(func=cmd_watchdog)
