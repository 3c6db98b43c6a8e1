"""The ``amqp`` peer: ackring's own API over a RabbitMQ broker
(``ackring.connect(url)``), so the shared-memory ring and the broker are
measured by the same loops in the same run.

Every put waits for the broker's publisher confirm (on a durable quorum
queue: replicated and fsynced), every message is acked, and the consumer
reads through ``basic_qos`` with ackring.amqp's default prefetch window.
The URL is ``$ACKRING_AMQP_URL`` (``ackring bench --url`` sets it), default
amqp://guest:guest@127.0.0.1:5672/%2F.  Opt-in: it runs only when asked
for (``--peers amqp`` or ``--url``); without a broker its runs are skipped
with a note.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, List, Tuple

from .common import Clock, Params, Skip
from .peers import LATENCY, POLL_SLICE, Ends, Peer, _generic, _token

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def url() -> str:
    return os.environ.get("ACKRING_AMQP_URL") or DEFAULT_URL


def _setup(params: Params, ctx: Any) -> Tuple[Any, Callable[[], None]]:
    import ackring

    u = url()
    base = "bench-" + _token()
    names = [base + "-ping", base + "-pong"] if params.mode == LATENCY else [base]
    try:
        broker = ackring.connect(u, connection_attempts=1, socket_timeout=5)
        for n in names:
            broker.create(n, capacity=params.capacity, message_size=max(params.size, 1)).close()
    except ackring.Error as e:
        raise Skip("no broker at %s (%s): start one with .ci/rabbitmq.sh, pass --url" % (u, e)) from None

    def cleanup() -> None:
        for n in names:
            try:
                broker.unlink(n, missing_ok=True)
            except Exception:
                pass
        broker.close()

    return (u, names), cleanup


def _open(handle: Any, params: Params, role: str, idx: int, clock: Clock) -> Ends:
    import ackring

    u, names = handle
    t = params.timeout
    broker = ackring.connect(u)
    src = dst = names[0]
    if role == "ping":
        src, dst = names[1], names[0]
    elif role == "echo":
        src, dst = names[0], names[1]
    ends = Ends(closers=[broker.close])
    try:
        if role in ("producer", "ping", "echo"):
            p = broker.open(dst).producer()
            ends.closers.append(p.close)
            ends.put = functools.partial(p.put, timeout=t)
        if role in ("consumer", "ping", "echo"):
            c = broker.open(src).consumer()
            ends.closers.append(c.close)
            get = c.get

            def take(timeout: float) -> bytes:
                m = get(timeout=timeout)
                m.ack()
                return m.body

            ends.get = functools.partial(take, t)
            ends.poll = functools.partial(take, POLL_SLICE)
            ends.nowait = functools.partial(take, 0.05)
    except BaseException:
        ends.close()
        raise
    clock.sync()
    return ends


def _labelled(run: Callable[..., dict], api: str) -> Callable[..., dict]:
    def labelled(handle: Any, params: Params, clock: Clock, idx: int, role: str) -> dict:
        out = run(handle, params, clock, idx, role)
        out["api"] = api
        return out

    return labelled


def _verify(handle: Any, params: Params) -> Any:
    """After a throughput run nothing may be left: the broker counts ready
    messages (its published/acked counters are the management plugin's)."""
    import ackring

    u, names = handle
    with ackring.connect(u) as broker:
        depth = broker.open(names[0]).stats()["depth"]
    return None if depth == 0 else "%d message(s) left in the queue" % depth


def _roles() -> dict:
    roles = _generic(_open)
    roles["producer"] = _labelled(roles["producer"], "put (confirmed)")
    roles["consumer"] = _labelled(roles["consumer"], "get+ack")
    roles["ping"] = _labelled(roles["ping"], "put (confirmed) / get+ack")
    return roles


PEER = Peer(
    "amqp",
    "ackring.connect(url): put waits for the publisher confirm, get + ack, durable quorum queue",
    _setup,
    _roles(),
    requires=("pika",),
    slow=True,
    verify=_verify,
    opt_in=True,
    note="RabbitMQ at $ACKRING_AMQP_URL / --url",
)


def register(peers: dict) -> None:
    peers[PEER.name] = PEER


__all__: List[str] = ["PEER", "register", "url"]
