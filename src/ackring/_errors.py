"""ackring's exceptions, defined once here and raised by every backend.

Each derives from :class:`ackring.Error` and, where one fits, from the built-in
exception a Python user would already catch (``queue.Empty``, ``ValueError``,
``FileNotFoundError`` ...).
"""
import queue as _queue
from collections import namedtuple as _namedtuple

__all__ = [
    "Error",
    "Empty",
    "Full",
    "QueueNotFound",
    "MessageTooLarge",
    "IncompatibleQueue",
    "CorruptedQueue",
    "StaleDelivery",
    "AlreadySettled",
    "QueueClosed",
    "TooManyClients",
    "PrefetchExceeded",
    "UntrustedQueue",
    "Receipt",
]


class Error(Exception):
    """Base class of every ackring error."""


class Empty(Error, _queue.Empty):
    """No message arrived before the timeout."""


class Full(Error, _queue.Full):
    """No slot became free before the timeout.

    For ``put_many`` and ``put_batch``, ``ids`` lists the messages stored
    (confirmed) before it.
    """

    def __init__(self, *args, ids=()):
        super().__init__(*args)
        self.ids = list(ids)


class QueueNotFound(Error, FileNotFoundError):
    """No queue of that name exists."""


class MessageTooLarge(Error, ValueError):
    """The message is longer than the queue's message_size; nothing was written."""


class IncompatibleQueue(Error, ValueError):
    """The file is not an ackring segment of this layout version, or its
    geometry differs from what was asked for."""


class CorruptedQueue(IncompatibleQueue):
    """A word read from the shared segment failed its bounds check."""


class StaleDelivery(Error):
    """The delivery is no longer current (it was taken back and redelivered,
    or it belongs to the parent of a forked process), so it cannot be settled."""


class AlreadySettled(Error):
    """The message was already acked, nacked or rejected."""


class QueueClosed(Error, ValueError):
    """The queue, producer or consumer was closed, or the queue was shut down
    (``q.shutdown()`` or ``ackring.unlink()``): puts raise at once, gets once
    the ready messages are drained."""


class TooManyClients(Error):
    """The queue's process table has no free entry (see ``max_clients``)."""


class PrefetchExceeded(Error, RuntimeError):
    """get() past the consumer's prefetch limit: settle a message first."""


class UntrustedQueue(Error, PermissionError):
    """The segment is not one this process trusts: a symlink, a file owned by
    another user (see ``trust_uids=``), or group/other write bits its creator
    did not ask for (see ``mode=``)."""


Receipt = _namedtuple("Receipt", "id outcome reason")
Receipt.__doc__ = """How a message was settled (Producer.wait_acked).

outcome: "acked", "dead_lettered" (reason: "rejected", "delivery_limit",
"expired", "lease_expired"), "dropped", or "settled" when the slot was reused
before the receipt was read (settled; how is no longer recorded)."""
