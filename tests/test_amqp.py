"""Broker-only behaviour of ackring.connect(): what is declared on the
broker, what a broker cannot do (NotImplementedError), URLs and connection
errors, fork and pickling, prefetch as basic_qos, a deleted queue.  Needs a
RabbitMQ (see tests/_backends.py: skipped without one, failed without one
under ACKRING_REQUIRE_AMQP=1), except the tests of that skip/fail rule and
of the lazy import."""

import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest

import ackring
import _backends as B
from _backends import take, wait_until

MP = multiprocessing.get_context("fork")


@pytest.fixture
def broker():
    return B.broker_or_skip()


@pytest.fixture
def make_q(broker):
    made = []

    def make(name=None, **kw):
        name = B.unique_name() if name is None else name
        made.append(name)
        kw.setdefault("capacity", 8)
        kw.setdefault("message_size", 256)
        return broker.create(name, **kw)

    yield make
    for name in made:
        try:
            broker.unlink(name, missing_ok=True)
        except Exception:
            pass


def raw_channel():
    """A plain pika channel to look at what ackring declared."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(B.amqp_url()))
    return conn, conn.channel()


# ------------------------------------------------------------ without a broker


def test_import_ackring_does_not_import_pika():
    out = subprocess.run([sys.executable, "-c", "import ackring, sys; print('pika' in sys.modules, "
                          "callable(ackring.connect), 'connect' in ackring.__all__)"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


def _run_probe_test(tmp_path, require):
    """Run one amqp test in a child pytest against a port nobody listens on."""
    test = tmp_path / "test_probe.py"
    test.write_text(textwrap.dedent("""
        import _backends as B
        def test_needs_a_broker():
            B.broker_or_skip()
    """))
    env = dict(os.environ, ACKRING_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F")
    env.pop("ACKRING_REQUIRE_AMQP", None)
    if require:
        env["ACKRING_REQUIRE_AMQP"] = "1"
    env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
                          capture_output=True, text=True, timeout=100, env=env, cwd=str(tmp_path))


def test_missing_broker_skips_with_the_reason(tmp_path):
    out = _run_probe_test(tmp_path, require=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 skipped" in out.stdout
    assert "no RabbitMQ at amqp://guest:guest@127.0.0.1:1/%2F: set ACKRING_AMQP_URL" in out.stdout


def test_missing_broker_fails_when_required(tmp_path):
    out = _run_probe_test(tmp_path, require=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 failed" in out.stdout
    assert "ACKRING_REQUIRE_AMQP=1 but no RabbitMQ at" in out.stdout


def test_bad_urls_and_parameters():
    pytest.importorskip("pika")
    with pytest.raises(ValueError):
        ackring.connect("http://localhost:5672/")
    with pytest.raises(TypeError):
        ackring.connect(b"amqp://localhost")
    with pytest.raises(TypeError):
        ackring.connect("amqp://localhost", no_such_parameter=1)
    b = ackring.connect("amqp://guest:guest@127.0.0.1:1/%2F", connection_attempts=1, socket_timeout=1)
    from ackring.amqp import BrokerError
    with pytest.raises(BrokerError) as ei:
        b.open("anything")
    assert "127.0.0.1:1" in str(ei.value)
    assert isinstance(ei.value, (ackring.Error, ConnectionError))


# ------------------------------------------------------------ what is declared


def test_declares_durable_quorum_queues_with_the_delivery_rules(make_q, broker):
    q = make_q(capacity=16, max_deliveries=5, ttl=30, dead_letter_capacity=32)
    conn, ch = raw_channel()
    try:
        expected = {"x-queue-type": "quorum", "x-dead-letter-exchange": q.name + ".dlx",
                    "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
                    "x-max-length": 16, "x-delivery-limit": 4, "x-message-ttl": 30000}
        # Redeclaring with equal arguments succeeds; the broker refuses any difference.
        ch.queue_declare(q.name, durable=True, arguments=expected)
        ch.queue_declare(q.name + ".dlq", durable=True,
                         arguments={"x-queue-type": "quorum", "x-overflow": "drop-head", "x-max-length": 32})
        ch.exchange_declare(q.name + ".dlx", "fanout", durable=True, passive=True)
        import pika.exceptions
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
            ch.queue_declare(q.name, durable=True, arguments=dict(expected, **{"x-delivery-limit": 5}))
        assert ei.value.reply_code == 406
    finally:
        conn.close()
    # and ackring says so too
    with pytest.raises(ackring.IncompatibleQueue):
        broker.create(q.name, capacity=16, max_deliveries=6, ttl=30, dead_letter_capacity=32, exist_ok=True)
    same = broker.create(q.name, capacity=16, max_deliveries=5, ttl=30, dead_letter_capacity=32, exist_ok=True)
    assert same.config["max_deliveries"] == 5
    same.close()


def test_messages_are_persistent_with_a_message_id(make_q):
    q = make_q()
    with q.producer() as p, q.consumer() as c:
        mid = p.put(b"durable", ttl=5)
        m = c.get(timeout=5)
        assert m.id == mid == m.key == m.properties.message_id
        assert m.properties.delivery_mode == 2
        assert m.properties.expiration == "5000"
        assert bytes(m) == m.body == b"durable" and len(m) == 7
        assert m.view().tobytes() == b"durable"
        m.ack()
        with pytest.raises(ackring.AlreadySettled):
            m.view()


def test_unlink_removes_queue_dlq_and_exchange(make_q, broker):
    q = make_q()
    name = q.name
    q.close()
    broker.unlink(name)
    for n in (name, name + ".dlq"):
        with pytest.raises(ackring.QueueNotFound):
            broker.open(n)
    conn, ch = raw_channel()
    try:
        import pika.exceptions
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
            ch.exchange_declare(name + ".dlx", "fanout", durable=True, passive=True)
        assert ei.value.reply_code == 404
    finally:
        conn.close()


def test_open_knows_no_settings_and_pickle_keeps_them(make_q, broker):
    q = make_q(message_size=8, max_deliveries=4)
    opened = broker.open(q.name)
    assert opened.message_size is None and opened.config["max_deliveries"] is None
    assert opened.dead_letters.name == q.name + ".dlq"
    with opened.producer() as p:
        p.put(b"longer than eight")            # no client-side limit known here
    clone = pickle.loads(pickle.dumps(q))
    assert clone.url == q.url and clone.config == q.config
    with clone.producer() as p:
        with pytest.raises(ackring.MessageTooLarge):
            p.put(b"longer than eight")
    d = broker.open(q.name + ".dlq")
    assert d.config["is_dead_letter_queue"] and d.dead_letters is None
    for h in (opened, clone, d):
        h.close()


# ------------------------------------------------------------ what a broker cannot do


def test_leases_receipts_and_reserve_are_not_implemented(make_q, broker):
    with pytest.raises(NotImplementedError, match="ack lease"):
        broker.create(B.unique_name(), ack_timeout=1.0)
    q = make_q()
    with pytest.raises(NotImplementedError, match="ack lease"):
        q.consumer(ack_timeout=1.0)
    with q.producer() as p, q.consumer() as c:
        mid = p.put(b"x")
        with pytest.raises(NotImplementedError, match="wait_acked"):
            p.wait_acked(mid, timeout=1)
        with pytest.raises(NotImplementedError):
            p.reserve(4)
        with pytest.raises(NotImplementedError, match="get_many"):
            c.get_batch(4, timeout=0)
        with pytest.raises(NotImplementedError, match="put_many"):
            p.put_batch([b"y"])
        m = c.get(timeout=5)
        with pytest.raises(NotImplementedError, match="extend"):
            m.extend(5)
        m.ack()


# ------------------------------------------------------------ prefetch is basic_qos


def test_prefetch_window_sends_the_rest_to_other_consumers(make_q):
    q = make_q()
    with q.producer() as p:
        ids = p.put_many([b"w%d" % i for i in range(3)])
    with q.consumer(prefetch=2) as a, q.consumer(prefetch=2) as b:
        held = [a.get(timeout=5), a.get(timeout=5)]   # a's whole window, unsettled
        m = b.get(timeout=5)                   # the broker pushes no more to a
        assert [x.id for x in held] + [m.id] == ids
        a.ack_many(held)
        m.ack()


def test_default_prefetch(make_q):
    from ackring.amqp import DEFAULT_PREFETCH

    q = make_q()
    with q.consumer() as c:
        assert c.prefetch == DEFAULT_PREFETCH


# ------------------------------------------------------------ queue deleted, fork


def test_deleted_queue_ends_iteration_and_refuses_puts(make_q, broker):
    q = make_q()
    p = q.producer()
    c = q.consumer()
    p.put(b"before")
    assert c.get(timeout=5).body == b"before"
    broker.unlink(q.name)
    assert list(c) == []                       # the broker cancelled the consumer
    with pytest.raises(ackring.QueueNotFound):
        p.put(b"after")
    p.close()
    c.close()


def _forked_child_puts(q, p, conn):
    try:
        ids = [p.put(b"from the child")]       # the inherited producer reconnects
        with q.producer() as p2:
            ids.append(p2.put(b"and a new one"))
        conn.send(("ok", ids, q.stats()["depth"] >= 2))
    except BaseException as e:
        conn.send(("error", repr(e), None))


def test_fork_child_opens_its_own_connections(make_q, procs):
    q = make_q()
    p = q.producer()
    c = q.consumer(prefetch=1)
    mid = p.put(b"from the parent")
    held = c.get(timeout=5)
    parent, child = MP.Pipe()
    procs(_forked_child_puts, q, p, child)
    assert parent.poll(30)
    status, ids, deep = parent.recv()
    assert status == "ok", ids
    assert deep
    procs.join_all(10)
    assert held.id == mid
    held.ack()                                 # the parent's connections were left alone
    assert [m.body for m in take(c, 2)] == [b"from the child", b"and a new one"]
    assert p.put(b"parent again")
    assert take(c, 1)[0].body == b"parent again"
    p.close()
    c.close()


def test_stale_after_reconnect(make_q):
    q = make_q()
    with q.producer() as p:
        p.put(b"s")
    c = q.consumer()
    m = c.get(timeout=5)
    c._conn.close()                            # as if the connection dropped
    with pytest.raises(ackring.StaleDelivery):
        m.ack()
    m2 = c.get(timeout=5)                      # reconnects; the broker requeued it
    assert (m2.id, m2.redelivered) == (m.id, True)
    m2.ack()
    c.close()
    wait_until(lambda: q.stats()["depth"] == 0, 10, "an empty queue")
