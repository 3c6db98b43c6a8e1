"""What the C core's status codes, outcomes and records mean in Python, once
for both backends.

The numbers stay defined in ext/ackring.h only: each backend hands in the
AR_* constants as it sees them (Cython from its extern block, cffi from
``lib``), and gets back the error factory and the decoding of the C records
(stats, recoveries, deaths, process-table entries) as plain Python values.
"""
import errno as _errno
import os as _os

from . import _errors as E

_NAMES = ("AR_OK", "AR_EMPTY", "AR_FULL", "AR_AGAIN", "AR_TOOBIG", "AR_STALE", "AR_CORRUPT",
          "AR_INCOMPATIBLE", "AR_TABLE_FULL", "AR_EXISTS", "AR_NOTFOUND", "AR_INVAL", "AR_ERRNO",
          "AR_CLOSED", "AR_PREFETCH", "AR_SETTLED", "AR_FORKED", "AR_DENIED", "AR_CLIENT_CLOSED",
          "AR_WRONG_CLIENT",
          "AR_OUT_ACKED", "AR_OUT_DROPPED", "AR_OUT_DEAD", "AR_OUT_PURGED", "AR_OUT_DISCARDED", "AR_OUT_NONE",
          "AR_DL_REJECTED", "AR_DL_DELIVERY_LIMIT", "AR_DL_EXPIRED", "AR_DL_LEASE_EXPIRED")

STATS_FIELDS = (
    "depth", "in_flight", "writing", "published", "acked", "nacked", "redelivered", "discarded",
    "dropped", "rejected", "dl_delivery_limit", "dl_expired", "dl_lease_expired", "lease_expired",
    "dlq_dropped", "recovered", "stale", "purged", "reclaimed_entries", "producers", "consumers",
    "observers", "capacity", "message_size", "max_clients", "shutdown", "durability", "free_ring",
    "ready_ring", "requeue_ring", "oldest_publish_ns", "oldest_id", "oldest_state", "oldest_pid",
    "syncs", "synced_seq", "pub_seq")
RECOVERY_FIELDS = ("entries", "requeued", "discarded", "repushed", "leases", "rebuilt", "torn", "busy")
ENTRY_FIELDS = ("index", "state", "role", "pid", "seq", "mine", "alive", "word", "start_time", "reg_ns",
                "take_mark", "push_mark")
DURABILITY = ("memory", "os", "sync")
SLOT_STATES = ("free", "writing", "ready", "delivered", "dying")
ENTRY_STATES = {0: "free", 2: "active", 3: "dead", 4: "closing"}
ROLES = {1: "producer", 2: "consumer", 3: "observer"}


class Status:
    """``error(rc, what, err)``: the exception for a C status; ``outcomes``:
    settle outcome code -> (outcome, reason); ``reasons``: dead-letter code -> name."""

    def __init__(self, codes):
        c = {name: codes[name] for name in _NAMES}
        self.codes = c
        self._errors = {
            c["AR_EMPTY"]: lambda what: E.Empty(what),
            c["AR_FULL"]: lambda what: E.Full(what),
            c["AR_TOOBIG"]: lambda what: E.MessageTooLarge(what),
            c["AR_STALE"]: lambda what: E.StaleDelivery(what + ": this delivery is no longer current"),
            c["AR_CORRUPT"]: lambda what: E.CorruptedQueue(
                what + ": the segment failed a bounds or checksum check (corrupted queue)"),
            c["AR_INCOMPATIBLE"]: lambda what: E.IncompatibleQueue(
                what + ": not an ackring segment of layout version 2, or truncated"),
            c["AR_TABLE_FULL"]: lambda what: E.TooManyClients(
                what + ": the process table is full (raise max_clients at create)"),
            c["AR_NOTFOUND"]: lambda what: E.QueueNotFound(_errno.ENOENT, "no such queue", what),
            c["AR_EXISTS"]: lambda what: FileExistsError(_errno.EEXIST, "queue exists", what),
            c["AR_INVAL"]: lambda what: ValueError(what),
            c["AR_CLOSED"]: lambda what: E.QueueClosed(what + ": the queue was shut down"),
            c["AR_PREFETCH"]: lambda what: E.PrefetchExceeded(
                what + ": the consumer holds its prefetch limit of unsettled messages: settle one first"),
            c["AR_SETTLED"]: lambda what: E.AlreadySettled(what + ": already settled"),
            c["AR_FORKED"]: lambda what: E.StaleDelivery(
                what + ": it was delivered to the parent process before fork"),
            c["AR_DENIED"]: lambda what: E.UntrustedQueue(
                _errno.EACCES, "not trusted: a symlink, another user's file, or write bits its "
                "creator did not ask for (see trust_uids= and mode=)", what),
            c["AR_CLIENT_CLOSED"]: lambda what: E.QueueClosed(what + ": the producer or consumer is closed"),
            c["AR_WRONG_CLIENT"]: lambda what: ValueError(what + ": delivered to another consumer"),
        }
        self._errno_status = c["AR_ERRNO"]
        self.reasons = {c["AR_DL_REJECTED"]: "rejected", c["AR_DL_DELIVERY_LIMIT"]: "delivery_limit",
                        c["AR_DL_EXPIRED"]: "expired", c["AR_DL_LEASE_EXPIRED"]: "lease_expired"}
        self.outcomes = {c["AR_OUT_ACKED"]: ("acked", None), c["AR_OUT_DROPPED"]: ("dropped", None),
                         c["AR_OUT_PURGED"]: ("purged", None),
                         c["AR_OUT_DISCARDED"]: ("discarded", None), c["AR_OUT_NONE"]: ("settled", None)}
        for code, reason in self.reasons.items():
            self.outcomes[c["AR_OUT_DEAD"] + code] = ("dead_lettered", reason)

    def error(self, rc, what, err=0):
        make = self._errors.get(rc)
        if make is not None:
            return make(what)
        if rc == self._errno_status:
            e = err or _errno.EIO
            return OSError(e, _os.strerror(e), what)
        return E.Error("%s: unexpected status %d" % (what, rc))

    def receipt(self, message_id, outcome):
        how, reason = self.outcomes.get(outcome, ("settled", None))
        return E.Receipt(message_id, how, reason)

    def death(self, reason, original_id, queue_id, delivery_count, publish_ns, dead_ns):
        if reason == 0:
            return None
        return {"reason": self.reasons.get(reason, "unknown(%d)" % reason), "id": original_id,
                "queue_id": queue_id, "delivery_count": delivery_count,
                "first_publish_time": publish_ns / 1e9, "time": dead_ns / 1e9}


def stats_dict(raw):
    """The public stats() dict from the C record's fields (in STATS_FIELDS order)."""
    s = dict(zip(STATS_FIELDS, raw))
    dead = {"rejected": s["rejected"], "delivery_limit": s.pop("dl_delivery_limit"),
            "expired": s.pop("dl_expired"), "lease_expired": s.pop("dl_lease_expired")}
    s["dead_lettered"] = dead
    s["dead_lettered_total"] = sum(dead.values())
    s["expired"] = dead["expired"]
    s["shutdown"] = bool(s["shutdown"])
    s["durability"] = DURABILITY[s["durability"]] if s["durability"] < len(DURABILITY) else "?"
    s["unsettled"] = s["depth"] + s["in_flight"]
    pub = s.pop("oldest_publish_ns")
    state = s.pop("oldest_state")
    oldest_id = s.pop("oldest_id")
    pid = s.pop("oldest_pid")
    if pub:
        import time as _time
        s["oldest_unsettled"] = {
            "id": oldest_id, "age": max(0.0, _time.time() - pub / 1e9),
            "state": SLOT_STATES[state] if state < len(SLOT_STATES) else "?",
            "holder_pid": pid or None}
    else:
        s["oldest_unsettled"] = None
    return s


def recovery_dict(raw):
    return dict(zip(RECOVERY_FIELDS, raw))


def entry_dict(raw):
    d = dict(zip(ENTRY_FIELDS, raw))
    d["mine"] = bool(d["mine"])
    d["alive"] = bool(d["alive"])
    return d


def check_duration(seconds, what):
    """None -> 0 (not set); a positive number of seconds, at most a year -> nanoseconds."""
    if seconds is None:
        return 0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("%s must be None or a number of seconds, not %s" % (what, type(seconds).__name__))
    if not (seconds > 0) or seconds > 365 * 86400:
        raise ValueError("%s must be None or a number of seconds > 0 and at most a year, not %r"
                         % (what, seconds))
    return int(seconds * 1e9) or 1


def bad_timeout(timeout):
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return ValueError("timeout must be None or a number of seconds >= 0, not %r" % (timeout,))
    return TypeError("timeout must be None or a number of seconds, not %s" % type(timeout).__name__)


def taken_back(message_id, in_batch=False):
    """The error for a body read (copied) after the message was taken back
    from its delivery (its ack lease ran out, or its consumer was closed and
    gave it back): the copy may hold another message's bytes (ar_intact said
    AR_STALE)."""
    return E.StaleDelivery("message %d%s was taken back (its ack lease ran out, or its consumer was closed) "
                           "before its body was read"
                           % (message_id, " of the batch" if in_batch else ""))


def no_pickle(obj):
    kind = type(obj).__name__
    hint = {"Producer": "pickle the Queue and open a producer in the child",
            "Consumer": "pickle the Queue and open a consumer in the child",
            "Message": "pass m.body (or m.key) instead; a delivery belongs to its consumer's process",
            "Reservation": "commit it first; a reservation belongs to its producer's process",
            "Batch": "pass the bodies instead; a batch belongs to its consumer's process"}.get(kind, "")
    raise TypeError("a %s cannot be pickled; %s" % (kind, hint))


# Pickled objects on the normal API (Producer.put_obj, Message.obj): both
# backends forward here, and the codec itself is ackring.mp's, so there is
# one implementation of it.
def put_obj(producer, obj, timeout, ttl):
    from ackring.mp import put_obj as _put_obj

    return _put_obj(producer, obj, timeout, ttl)


def load_obj(message):
    from ackring.mp import load_obj as _load_obj

    return _load_obj(message)
