"""What the C core's status and outcome codes mean in Python, once for both backends.

The numbers stay defined in ext/ackring.h only: each backend hands in the
AR_* constants as it sees them (Cython from its extern block, cffi from
``lib``), and gets back the error factory and the receipt tables.
"""
import errno as _errno
import os as _os

from . import _errors as E

_NAMES = ("AR_EMPTY", "AR_FULL", "AR_TOOBIG", "AR_STALE", "AR_CORRUPT", "AR_INCOMPATIBLE",
          "AR_TABLE_FULL", "AR_EXISTS", "AR_NOTFOUND", "AR_INVAL", "AR_ERRNO",
          "AR_OUT_ACKED", "AR_OUT_DROPPED", "AR_OUT_DEAD", "AR_OUT_DISCARDED", "AR_OUT_NONE",
          "AR_DL_REJECTED", "AR_DL_DELIVERY_LIMIT", "AR_DL_EXPIRED", "AR_DL_LEASE_EXPIRED")


class Status:
    """``error(rc, what, err)``: the exception for a C status; ``outcomes``:
    settle outcome code -> (outcome, reason); ``reasons``: dead-letter code -> name."""

    def __init__(self, codes):
        c = {name: codes[name] for name in _NAMES}
        self._errors = {
            c["AR_EMPTY"]: lambda what: E.Empty(what),
            c["AR_FULL"]: lambda what: E.Full(what),
            c["AR_TOOBIG"]: lambda what: E.MessageTooLarge(what),
            c["AR_STALE"]: lambda what: E.StaleDelivery(what),
            c["AR_CORRUPT"]: lambda what: E.CorruptedQueue(
                what + ": a slot failed its bounds check (corrupted segment)"),
            c["AR_INCOMPATIBLE"]: lambda what: E.IncompatibleQueue(
                what + ": not an ackring segment of layout version 1, or truncated"),
            c["AR_TABLE_FULL"]: lambda what: E.TooManyClients(
                what + ": the process table is full (raise max_clients at create)"),
            c["AR_NOTFOUND"]: lambda what: E.QueueNotFound(_errno.ENOENT, "no such queue", what),
            c["AR_EXISTS"]: lambda what: FileExistsError(_errno.EEXIST, "queue exists", what),
            c["AR_INVAL"]: lambda what: ValueError(what),
        }
        self._errno_status = c["AR_ERRNO"]
        self.reasons = {c["AR_DL_REJECTED"]: "rejected", c["AR_DL_DELIVERY_LIMIT"]: "delivery_limit",
                        c["AR_DL_EXPIRED"]: "expired", c["AR_DL_LEASE_EXPIRED"]: "lease_expired"}
        self.outcomes = {c["AR_OUT_ACKED"]: ("acked", None), c["AR_OUT_DROPPED"]: ("dropped", None),
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
