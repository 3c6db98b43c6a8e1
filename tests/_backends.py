"""Both backends behind one fixture, and the child-process bodies the
semantics tests share (a plain module, so spawn children import them by name).

``backend`` is "shm" or "amqp".  The amqp backend talks to the broker at
$ACKRING_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2F); where none
answers its tests are skipped with the reason, unless ACKRING_REQUIRE_AMQP=1
(CI), which makes a missing broker a failure.  Start one with
``bash .ci/rabbitmq.sh start`` (it prints the URL to export).
"""

import os
import time
import traceback
import uuid

import pytest

import ackring

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_probe = {}


def amqp_url():
    return os.environ.get("ACKRING_AMQP_URL") or DEFAULT_URL


def amqp_required():
    return os.environ.get("ACKRING_REQUIRE_AMQP") == "1"


def broker_or_skip():
    """A connected ackring Broker for amqp_url(); skip (or fail, when
    ACKRING_REQUIRE_AMQP=1) if there is no broker there or no pika."""
    url = amqp_url()
    if url not in _probe:
        try:
            b = ackring.connect(url, connection_attempts=1, socket_timeout=3, blocked_connection_timeout=30)
            b._channel()
            _probe[url] = (b, None)
        except Exception as e:  # ImportError (no pika), BrokerError, a bad URL ...
            _probe[url] = (None, "%s: %s" % (type(e).__name__, e))
    b, why = _probe[url]
    if b is None:
        msg = ("no RabbitMQ at %s: set ACKRING_AMQP_URL to a broker's URL (bash .ci/rabbitmq.sh start "
               "prints one) [%s]" % (url, why))
        if amqp_required():
            pytest.fail("ACKRING_REQUIRE_AMQP=1 but " + msg, pytrace=False)
        pytest.skip(msg)
    if b._pid != os.getpid():   # a forked test process: its own admin connection
        b = ackring.connect(url, connection_attempts=1, socket_timeout=3, blocked_connection_timeout=30)
        _probe[url] = (b, None)
    return b


def unique_name():
    return "t-" + uuid.uuid4().hex[:16]


class Maker:
    """make(capacity=8, message_size=256, name=None, **kw) on one backend;
    every queue it made is closed and deleted at teardown."""

    def __init__(self, backend):
        self.backend = backend
        self.broker = broker_or_skip() if backend == "amqp" else None
        self.made = []

    @property
    def api(self):
        """ackring itself (shm) or the Broker: the create/open/unlink surface."""
        return self.broker if self.backend == "amqp" else ackring

    def __call__(self, capacity=8, message_size=256, name=None, **kw):
        name = unique_name() if name is None else name
        self.made.append(name)
        return self.api.create(name, capacity=capacity, message_size=message_size, **kw)

    def cleanup(self):
        for name in self.made:
            try:
                self.api.unlink(name, missing_ok=True)
            except Exception:
                pass


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.005)


def wait_past(t_monotonic):
    """Wait until CLOCK_MONOTONIC passes t (the condition a TTL is defined by)."""
    while time.monotonic() <= t_monotonic:
        time.sleep(max(0.001, min(0.02, t_monotonic - time.monotonic())))


def drain(c, timeout=0.0, settle="ack"):
    """Every message that arrives before a get waits ``timeout`` in vain, settled."""
    out = []
    while True:
        try:
            m = c.get(timeout=timeout)
        except ackring.Empty:
            return out
        getattr(m, settle)()
        out.append(m)


def take(c, n, timeout=10.0, settle="ack"):
    """Exactly n messages (each get bounded by ``timeout``), settled."""
    out = []
    for _ in range(n):
        m = c.get(timeout=timeout)
        getattr(m, settle)()
        out.append(m)
    return out


# ------------------------------------------------------------ child processes


def _report(conn, fn, *args):
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def produce(q, tag, n, conn):
    """Put n messages b"<tag>:<i>"; report their ids."""
    def run():
        with q.producer() as p:
            return [p.put(b"%s:%d" % (tag.encode(), i), timeout=20) for i in range(n)]
    _report(conn, run)


def consume_until(q, stop, conn, budget, acked=None, total=None):
    """Get and ack until ``stop`` is set and a get comes back empty; report
    [(id, body, delivery_count), ...].  With ``acked`` (a shared counter)
    and ``total``: until all consumers together acked ``total`` (a broker
    may still hold messages prefetched for another consumer when one sees
    an empty get, so "empty once" is not "done")."""
    def run():
        out = []
        deadline = time.monotonic() + budget
        with q.consumer(prefetch=16) as c:
            while time.monotonic() < deadline:
                try:
                    m = c.get(timeout=0.1)
                except ackring.Empty:
                    if stop.is_set() and (acked is None or acked.value >= total):
                        break
                    continue
                out.append((m.id, m.body, m.delivery_count))
                m.ack()
                if acked is not None:
                    with acked.get_lock():
                        acked.value += 1
        return out
    _report(conn, run)


def hold_then_hang(q, n, conn, budget):
    """Take n messages, report their ids, then hang unsettled until killed."""
    def run():
        c = q.consumer(prefetch=n)
        held = [c.get(timeout=20) for _ in range(n)]
        return [m.id for m in held], held, c
    try:
        ids, held, c = run()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    conn.send(("ok", ids))
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:   # SIGKILL ends this; the budget bounds it regardless
        time.sleep(0.05)
