"""ackring's Producer/Consumer API over a RabbitMQ broker (``ackring.connect``).

    broker = ackring.connect("amqp://guest:guest@localhost:5672/%2F")
    q = broker.create("jobs", capacity=1024, message_size=4096)
    with q.producer() as p:
        p.put(b"hello")                     # returns once the broker confirmed it
    with q.consumer(prefetch=10) as c, c.get(timeout=1) as m:
        handle(m.body)                      # acked on normal exit

Built on pika's BlockingConnection.  Every delivery rule is the broker's own
feature, not emulated here:

- ``put`` publishes persistent messages on a channel in confirm mode and
  returns when the broker acks the publish (a nack from a full queue is
  retried until ``timeout``, then ``Full``);
- queues are durable quorum queues; ``max_deliveries`` is ``x-delivery-limit``
  (= max_deliveries - 1: the broker counts returns, ackring deliveries);
  ``capacity`` is ``x-max-length`` with ``x-overflow: reject-publish``;
  ``ttl`` is ``x-message-ttl`` and a per-message ``expiration``;
- dead letters go through the fanout exchange ``<name>.dlx`` (at-least-once
  dead-lettering) into the quorum queue ``<name>.dlq``; ``m.death`` is read
  from the ``x-death`` header;
- ``prefetch`` is ``basic_qos(prefetch_count)``; acks, nacks and rejects are
  the AMQP ones (``ack_many`` uses ``multiple=True`` when it can);
- ``m.delivery_count`` is the quorum queue's ``x-delivery-count`` + 1 and
  ``m.key`` / ``m.id`` the ``message_id`` property set by the producer.

What a broker cannot do raises ``NotImplementedError``: ack leases
(``ack_timeout``, ``m.extend``), receipts (``wait_acked``), zero-copy
``reserve``.  The README's "Scaling out" section has the whole table.

Threads: a pika connection must only be used by the thread that uses it.
Every producer and every consumer has a connection of its own: use each from
one thread at a time (one producer / consumer per thread).  A ``Broker``'s
admin calls (create, open, unlink, ``Queue.stats``) share one connection of
the Broker: call them from one thread, or ``connect()`` once per thread.
After ``fork`` a child never touches its parent's sockets: the objects it
inherited open new connections on first use (messages the parent held are
the parent's: settling them in the child raises ``StaleDelivery``).

Queues pickle by URL + name (+ the settings they were created with), so a
child process started with any start method reconnects by itself.
"""

from __future__ import annotations

import collections
import math
import numbers
import os
import time
import uuid
import weakref

from . import _errors as E

try:
    import pika
    import pika.exceptions as _pe
except ImportError as _e:  # pragma: no cover - exercised only without pika
    raise ImportError("ackring.connect() needs pika: pip install 'ackring[amqp]' (%s)" % _e) from None

__all__ = ["connect", "Broker", "Queue", "Producer", "Consumer", "Message", "BrokerError",
           "DEFAULT_PREFETCH"]

#: The prefetch window of a consumer made with prefetch=None: a broker
#: consumer always has one (it is basic_qos's prefetch_count).
DEFAULT_PREFETCH = 64
DLQ_SUFFIX = ".dlq"
DLX_SUFFIX = ".dlx"
_PUBLISHED_HEADER = "x-ackring-published-ns"
_MAX_MESSAGE_SIZE = 128 << 20          # RabbitMQ's default max_message_size
_FULL_RETRY_MIN, _FULL_RETRY_MAX = 0.001, 0.05
_REASONS = {"rejected": "rejected", "expired": "expired", "delivery_limit": "delivery_limit",
            "maxlen": "maxlen"}


class BrokerError(E.Error, ConnectionError):
    """The connection to the broker failed, or the broker refused an operation."""


def connect(url, **params):
    """A Broker for ``url`` (``amqp://user:pass@host:5672/vhost``, as pika's
    URLParameters reads it, query options included).  Keyword arguments set
    attributes of pika's ConnectionParameters (heartbeat,
    blocked_connection_timeout, ...).  Nothing is opened until first use."""
    return Broker(url, **params)


def _parameters(url, params):
    if not isinstance(url, str):
        raise TypeError("url must be a str, not %s" % type(url).__name__)
    if not url.startswith(("amqp://", "amqps://")):
        raise ValueError("not an AMQP URL (amqp://user:pass@host:port/vhost): %r" % (url,))
    p = pika.URLParameters(url)
    for k, v in params.items():
        if k.startswith("_") or not hasattr(p, k):
            raise TypeError("connect() got an unknown connection parameter %r" % k)
        setattr(p, k, v)
    return p


def _open_connection(parameters, what):
    try:
        return pika.BlockingConnection(parameters)
    except _pe.AMQPError as e:
        raise BrokerError("cannot connect to the broker at %s:%s for %s: %s"
                          % (parameters.host, parameters.port, what, _describe(e))) from e


def _describe(e):
    return "%s%s" % (type(e).__name__, (": %s" % e) if str(e) else "")


def _closed_code(e):
    """The AMQP reply code of a channel or connection closed by the broker."""
    return getattr(e, "reply_code", None) if isinstance(
        e, (_pe.ChannelClosedByBroker, _pe.ConnectionClosedByBroker)) else None


def _timeout_arg(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, (str, bytes)) or not isinstance(timeout, numbers.Real):
        raise TypeError("timeout must be None or a number of seconds, not %s" % type(timeout).__name__)
    if not timeout >= 0:
        raise ValueError("timeout must be None or a number >= 0, not %r" % (timeout,))
    return float(timeout)


def _seconds_arg(value, what):
    """None, or a number of seconds > 0."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be None or a number of seconds, not %s" % (what, type(value).__name__))
    if not (value > 0) or value > 1e9:
        raise ValueError("%s must be None or a number of seconds > 0, not %r" % (what, value))
    return float(value)


def _ms(seconds):
    return max(1, int(math.ceil(seconds * 1000)))


def _bytes_of(data, what="put()"):
    if isinstance(data, bytes):
        return data
    if isinstance(data, Message):
        return data.body
    if isinstance(data, str):
        raise TypeError("%s takes bytes-like data, not str (encode it first)" % what)
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError("%s takes bytes-like data, not %s" % (what, type(data).__name__)) from None


# ------------------------------------------------------------------------ Broker


class Broker:
    """One broker (URL): create / open / unlink queues on it.

    Its admin calls share one connection, opened on first use: use a Broker
    from one thread (or connect() per thread)."""

    def __init__(self, url, **params):
        self._parameters = _parameters(url, params)
        self.url = url
        self._params = dict(params)
        self._conn = None
        self._chan = None
        self._pid = os.getpid()
        self._closed = False
        self._queues = weakref.WeakSet()
        self._version = None

    closed = property(lambda self: self._closed)

    def __repr__(self):
        return "<ackring.amqp.Broker %s:%s%s>" % (self._parameters.host, self._parameters.port,
                                                 " closed" if self._closed else "")

    def __reduce__(self):
        return (_broker, (self.url, self._params))

    # ---- the admin channel
    def _channel(self):
        if self._closed:
            raise E.QueueClosed("this Broker was closed")
        if self._pid != os.getpid():   # forked: the socket is the parent's
            self._conn = self._chan = None
            self._pid = os.getpid()
        if self._conn is None or not self._conn.is_open:
            self._conn = _open_connection(self._parameters, "admin calls")
            self._chan = None
            self._version = self._conn._impl.server_properties.get("version")
        if self._chan is None or not self._chan.is_open:
            self._chan = self._conn.channel()
        return self._chan

    def _admin(self, what, fn):
        """fn(channel); broker refusals become ackring errors."""
        try:
            return fn(self._channel())
        except _pe.ChannelClosedByBroker as e:
            self._chan = None
            if e.reply_code == 404:
                raise E.QueueNotFound(2, "no such queue on the broker", what) from None
            if e.reply_code == 406:
                raise E.IncompatibleQueue("%s: the broker refused it: %s" % (what, e.reply_text)) from None
            if e.reply_code == 405:
                raise BrokerError("%s: the queue is locked by another connection: %s"
                                  % (what, e.reply_text)) from None
            raise BrokerError("%s: %s" % (what, _describe(e))) from e
        except _pe.AMQPError as e:
            self._conn = self._chan = None
            raise BrokerError("%s: %s" % (what, _describe(e))) from e

    def _exists(self, name):
        try:
            self._admin(name, lambda ch: ch.queue_declare(name, passive=True))
            return True
        except E.QueueNotFound:
            return False

    def _server_major(self):
        self._channel()
        v = self._version
        if isinstance(v, bytes):
            v = v.decode("ascii", "replace")
        try:
            return int(str(v).split(".")[0])
        except ValueError:
            return 3

    # ---- the Queue surface
    def create(self, name, capacity=1024, message_size=4096, *, exist_ok=False,
               max_deliveries=20, ttl=None, ack_timeout=None, dead_letter_capacity=None):
        """Declare durable quorum queue ``name``, its dead-letter exchange
        ``name.dlx`` and dead-letter queue ``name.dlq``; the arguments mean
        what they mean for ackring.create (see the module docstring for the
        broker feature behind each).  FileExistsError if it exists, unless
        exist_ok=True, which opens it (IncompatibleQueue if the broker finds
        its arguments differ)."""
        import ackring

        ackring._check_name(name, creating=True)
        capacity = None if capacity is None else ackring._check_capacity(capacity)
        dlq_capacity = capacity if dead_letter_capacity is None else ackring._check_capacity(
            dead_letter_capacity, "dead_letter_capacity")
        message_size = ackring._int_arg(message_size, "message_size")
        if not 1 <= message_size <= _MAX_MESSAGE_SIZE:
            raise ValueError("message_size must be from 1 to %d bytes, not %d" % (_MAX_MESSAGE_SIZE, message_size))
        if max_deliveries is not None:
            max_deliveries = ackring._int_arg(max_deliveries, "max_deliveries")
            if not 1 <= max_deliveries <= 0xFFFF:
                raise ValueError("max_deliveries must be None or from 1 to 65535, not %d" % max_deliveries)
        ttl = _seconds_arg(ttl, "ttl")
        if ack_timeout is not None:
            raise NotImplementedError(
                "ack_timeout: a broker has no per-delivery ack lease (RabbitMQ's consumer_timeout is "
                "broker-wide and closes the whole channel); use the shared-memory backend for leases")
        config = {"capacity": capacity, "message_size": message_size, "max_deliveries": max_deliveries,
                  "ttl": ttl, "ack_timeout": None, "is_dead_letter_queue": False,
                  "dead_letter_capacity": dlq_capacity}
        if not exist_ok and self._exists(name):
            raise FileExistsError("queue %r exists on the broker (pass exist_ok=True to open it)" % name)
        dlq, dlx = name + DLQ_SUFFIX, name + DLX_SUFFIX
        major = self._server_major()
        dlq_args = {"x-queue-type": "quorum", "x-overflow": "drop-head"}
        if dlq_capacity is not None:
            dlq_args["x-max-length"] = dlq_capacity
        if major >= 4:
            dlq_args["x-delivery-limit"] = -1   # 4.x defaults to 20; a DLQ's consumers may retry freely
        args = {"x-queue-type": "quorum", "x-dead-letter-exchange": dlx,
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        if capacity is not None:
            args["x-max-length"] = capacity
        if max_deliveries is not None:
            args["x-delivery-limit"] = max_deliveries - 1   # the broker counts returns
        elif major >= 4:
            args["x-delivery-limit"] = -1
        if ttl is not None:
            args["x-message-ttl"] = _ms(ttl)

        def declare(ch):
            # The dead-letter side first: a crash in between leaves a spare
            # DLQ, never a queue whose dead letters have nowhere to go.
            ch.exchange_declare(dlx, "fanout", durable=True)
            ch.queue_declare(dlq, durable=True, arguments=dlq_args)
            ch.queue_bind(dlq, dlx)
            ch.queue_declare(name, durable=True, arguments=args)

        self._admin("create %r" % name, declare)
        return self._queue(name, config)

    def open(self, name):
        """Open an existing queue (QueueNotFound if there is none).  AMQP
        cannot read a queue's arguments back, so a queue opened by name knows
        its settings only as None (``capacity``, ``message_size``, ``config``
        values); the broker still applies every one of them.  A queue handed
        over by pickle keeps the settings it was created with."""
        import ackring

        ackring._check_name(name)
        self._admin("open %r" % name, lambda ch: ch.queue_declare(name, passive=True))
        return self._queue(name, {"is_dead_letter_queue": name.endswith(DLQ_SUFFIX)})

    def unlink(self, name, missing_ok=False):
        """Delete queue ``name``, its dead-letter queue and exchange.  Messages
        in them are gone; consumers of them are cancelled by the broker."""
        import ackring

        ackring._check_name(name)
        found = self._exists(name)
        if not found and not missing_ok:
            raise E.QueueNotFound(2, "no such queue on the broker", name)

        def delete(ch):
            if found:
                ch.queue_delete(name)
            if not name.endswith(DLQ_SUFFIX):
                ch.queue_delete(name + DLQ_SUFFIX)      # no error for a missing queue
                ch.exchange_delete(name + DLX_SUFFIX)

        self._admin("unlink %r" % name, delete)

    def _queue(self, name, config):
        q = Queue(self, name, config)
        self._queues.add(q)
        return q

    def close(self):
        """Close every queue handle made here (and their producers and
        consumers), then the admin connection.  Idempotent."""
        if self._closed:
            return
        for q in list(self._queues):
            q.close()
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = self._chan = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _broker(url, params):
    return Broker(url, **params)


def _reopen(url, params, name, config):
    return Broker(url, **params)._queue(name, config)


# ------------------------------------------------------------------------- Queue


class Queue:
    """A queue on a broker: the ackring Queue surface.  Picklable by URL,
    name and settings: a child process that unpickles it reconnects."""

    def __init__(self, broker, name, config):
        self._broker = broker
        self._name = name
        cfg = {"capacity": None, "message_size": None, "max_deliveries": None, "ttl": None,
               "ack_timeout": None, "is_dead_letter_queue": name.endswith(DLQ_SUFFIX)}
        cfg.update(config)
        self._config = cfg
        self._closed = False
        self._clients = weakref.WeakSet()
        self._dead_letters = None

    name = property(lambda self: self._name)
    url = property(lambda self: self._broker.url)
    broker = property(lambda self: self._broker)
    closed = property(lambda self: self._closed)
    capacity = property(lambda self: self._config["capacity"])
    message_size = property(lambda self: self._config["message_size"])

    @property
    def config(self):
        """The settings this handle knows: those it was created with (None
        for a queue opened by name: AMQP cannot read them back)."""
        return dict(self._config)

    @property
    def dead_letters(self):
        """The dead-letter queue ``<name>.dlq``; None for a dead-letter queue
        itself, or when it is missing on the broker."""
        self._check()
        if self._config["is_dead_letter_queue"]:
            return None
        if self._dead_letters is None or self._dead_letters.closed:
            dlq = self._name + DLQ_SUFFIX
            if not self._broker._exists(dlq):
                return None
            cap = self._config.get("dead_letter_capacity")
            self._dead_letters = Queue(self._broker, dlq, {
                "is_dead_letter_queue": True, "capacity": cap,
                "message_size": self._config["message_size"]})
        return self._dead_letters

    def __repr__(self):
        return "<ackring.amqp.Queue %r on %s:%s%s>" % (
            self._name, self._broker._parameters.host, self._broker._parameters.port,
            " closed" if self._closed else "")

    def __reduce__(self):
        return (_reopen, (self._broker.url, self._broker._params, self._name, self._config))

    def _check(self):
        if self._closed:
            raise E.QueueClosed("queue %r is closed" % self._name)

    def producer(self):
        """A new Producer, with a connection of its own."""
        self._check()
        p = Producer(self)
        self._clients.add(p)
        return p

    def consumer(self, prefetch=None, ack_timeout=None):
        """A new Consumer, with a connection of its own, subscribed with
        basic_qos(prefetch_count=prefetch) (None: DEFAULT_PREFETCH).  get()
        past ``prefetch`` unsettled messages raises PrefetchExceeded.
        Closing it (or its process dying) makes the broker requeue whatever
        it held unsettled."""
        self._check()
        if ack_timeout is not None:
            raise NotImplementedError(
                "ack_timeout: a broker has no per-delivery ack lease; use the shared-memory backend")
        if prefetch is not None:
            if isinstance(prefetch, bool) or not isinstance(prefetch, numbers.Integral):
                raise TypeError("prefetch must be None or an int, not %s" % type(prefetch).__name__)
            if not 1 <= prefetch <= 65535:
                raise ValueError("prefetch must be None or from 1 to 65535 (basic_qos), not %r" % (prefetch,))
        c = Consumer(self, DEFAULT_PREFETCH if prefetch is None else int(prefetch))
        self._clients.add(c)
        return c

    def stats(self):
        """What AMQP tells about the queue: ``depth`` (ready messages) and
        ``consumers``, and the settings this handle knows.  The broker's
        counters (published, acked, ...) are the management plugin's, not
        AMQP's: not here."""
        self._check()
        ok = self._broker._admin("stats of %r" % self._name,
                                 lambda ch: ch.queue_declare(self._name, passive=True))
        return {"backend": "amqp", "depth": ok.method.message_count, "consumers": ok.method.consumer_count,
                "capacity": self._config["capacity"], "message_size": self._config["message_size"]}

    def close(self):
        """Close every producer and consumer of this handle.  Idempotent; the
        queue stays on the broker (unlink deletes it)."""
        if self._closed:
            return
        for c in list(self._clients):
            c.close()
        if self._dead_letters is not None:
            self._dead_letters.close()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------- the clients


class _Client:
    """One connection + channel, reopened after fork (never shared with the parent)."""

    _what = "client"

    def __init__(self, queue):
        self._queue = queue
        self._conn = None
        self._ch = None
        self._pid = None
        self._closed = False
        self._gen = 0          # bumped on every new channel: older deliveries are stale

    closed = property(lambda self: self._closed or self._queue._closed)

    def _check(self):
        if self._closed or self._queue._closed:
            raise E.QueueClosed("this %s of queue %r is closed" % (self._what, self._queue.name))

    def _channel(self):
        """The live channel, opened (again) when needed."""
        if self._pid != os.getpid():
            self._conn = self._ch = None   # forked: the parent's socket, leave it alone
            self._pid = os.getpid()
        if self._ch is not None and self._ch.is_open and self._conn.is_open:
            return self._ch
        if self._conn is not None and self._conn.is_open:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = _open_connection(self._queue._broker._parameters,
                                      "a %s of %r" % (self._what, self._queue.name))
        try:
            self._ch = self._conn.channel()
            self._setup(self._ch)
        except BaseException:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = self._ch = None
            raise
        self._gen += 1
        return self._ch

    def _setup(self, ch):
        pass

    def _lost(self, e, what):
        """Map a pika exception raised during ``what``; the channel is dropped."""
        code = _closed_code(e)
        self._ch = None
        if code == 404:
            return E.QueueNotFound(2, "no such queue on the broker", self._queue.name)
        return BrokerError("%s on queue %r: %s" % (what, self._queue.name, _describe(e)))

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._conn is not None and self._pid == os.getpid():
            try:
                if self._conn.is_open:
                    self._conn.close()
            except Exception:
                pass
        self._conn = self._ch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Producer(_Client):
    """Publishes with confirms: put() returns the message id once the broker
    has acked the publish (for a quorum queue: replicated and on disk)."""

    _what = "producer"

    def __init__(self, queue):
        super().__init__(queue)
        self._token = None
        self._seq = 0
        self._channel()

    def _setup(self, ch):
        ch.confirm_delivery()
        self._token = uuid.uuid4().hex[:16]   # new per connection (and so per forked child)
        self._seq = 0

    def put(self, data, timeout=None, ttl=None):
        """Publish one persistent message; returns its id (the message_id
        property) once the broker confirmed it.  If the queue is full (the
        broker nacks: x-overflow reject-publish) the publish is retried until
        ``timeout`` (None: no limit), then ackring.Full.  ``ttl``: seconds
        until it expires undelivered (the lower of this and the queue's wins)."""
        self._check()
        body = _bytes_of(data)
        timeout = _timeout_arg(timeout)
        ttl = _seconds_arg(ttl, "ttl")
        limit = self._queue.message_size
        if limit is not None and len(body) > limit:
            raise E.MessageTooLarge("message of %d bytes exceeds message_size %d of queue %r"
                                    % (len(body), limit, self._queue.name))
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._publish(body, deadline, ttl)

    def _publish(self, body, deadline, ttl):
        pause = _FULL_RETRY_MIN
        ch = self._channel()
        self._seq += 1
        mid = "%s-%d" % (self._token, self._seq)
        props = pika.BasicProperties(
            delivery_mode=2, message_id=mid, timestamp=int(time.time()),
            expiration=None if ttl is None else str(_ms(ttl)),
            headers={_PUBLISHED_HEADER: time.time_ns()})
        while True:
            try:
                ch.basic_publish("", self._queue.name, body, props, mandatory=True)
                return mid
            except _pe.UnroutableError:
                raise E.QueueNotFound(2, "no such queue on the broker (the publish was returned)",
                                      self._queue.name) from None
            except _pe.NackError:
                pass   # full (reject-publish): retry below
            except _pe.AMQPError as e:
                raise self._lost(e, "put") from e
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise E.Full("queue %r is full (the broker refused the publish)" % self._queue.name)
            wait = pause if deadline is None else min(pause, deadline - now)
            # Waiting inside pika keeps the connection's heartbeats going.
            self._conn.process_data_events(time_limit=wait)
            pause = min(pause * 2, _FULL_RETRY_MAX)

    def put_many(self, messages, timeout=None, ttl=None):
        """Publish several messages in order; returns their ids.  Every item
        is type- and size-checked first.  ``timeout`` bounds the whole call;
        on Full, the exception's ``ids`` lists the confirmed ones.  (Each
        publish waits for its own confirm: BlockingChannel confirms one at a
        time.)"""
        self._check()
        items = [_bytes_of(m, "put_many()") for m in messages]
        timeout = _timeout_arg(timeout)
        ttl = _seconds_arg(ttl, "ttl")
        limit = self._queue.message_size
        if limit is not None:
            for i, b in enumerate(items):
                if len(b) > limit:
                    raise E.MessageTooLarge("item %d: a message of %d bytes exceeds message_size %d"
                                            % (i, len(b), limit))
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = []
        for b in items:
            try:
                ids.append(self._publish(b, deadline, ttl))
            except E.Full:
                raise E.Full("put_many to queue %r: %d of %d stored before the timeout"
                             % (self._queue.name, len(ids), len(items)), ids=ids) from None
        return ids

    def put_batch(self, messages, timeout=None, ttl=None):
        raise NotImplementedError("put_batch: a broker's message ids are strings, not an array('Q') of "
                                  "numbers; use put_many()")

    def wait_acked(self, message_id, timeout=None):
        raise NotImplementedError(
            "wait_acked: a broker tells a publisher that it stored a message (put returns on the "
            "confirm), not how a consumer settled it; keep receipts in your own reply queue, or use "
            "the shared-memory backend")

    def reserve(self, size=-1, timeout=None, ttl=None):
        raise NotImplementedError("reserve: there is no slot to write into on a broker; use put()")

    def __repr__(self):
        return "<ackring.amqp.Producer of %r%s>" % (self._queue.name, " closed" if self.closed else "")


class Consumer(_Client):
    """basic_consume with manual acks and basic_qos(prefetch).  Messages the
    broker pushed ahead are kept here until get() hands them out."""

    _what = "consumer"

    def __init__(self, queue, prefetch):
        super().__init__(queue)
        self._prefetch = prefetch
        self._buffer = collections.deque()
        self._held = {}            # delivery tag -> Message, handed out and unsettled
        self._cancelled = False
        self._channel()

    prefetch = property(lambda self: self._prefetch)
    outstanding = property(lambda self: len(self._held))

    def _setup(self, ch):
        self._buffer.clear()
        self._held.clear()
        self._cancelled = False
        ch.basic_qos(prefetch_count=self._prefetch)
        ch.add_on_cancel_callback(self._on_cancel)
        ch.basic_consume(self._queue.name, self._on_message, auto_ack=False)

    def _on_message(self, ch, method, props, body):
        self._buffer.append((method, props, body))

    def _on_cancel(self, frame):
        self._cancelled = True     # the queue was deleted

    def _pump(self, wait):
        """Let pika read and dispatch frames for up to ``wait`` seconds
        (returns as soon as a message arrived)."""
        try:
            self._conn.process_data_events(time_limit=wait)
        except _pe.AMQPError as e:
            raise self._lost(e, "get") from e

    def _allowance(self, n):
        if len(self._held) >= self._prefetch:
            raise E.PrefetchExceeded(
                "consumer holds %d unsettled message(s), its prefetch limit: settle one first"
                % len(self._held))
        return min(n, self._prefetch - len(self._held))

    def _take(self, deadline):
        """The next live message from the buffer, waiting until deadline."""
        while True:
            while self._buffer:
                method, props, body = self._buffer.popleft()
                if self._expired(props):
                    # Pushed to us in time, expired while it waited here:
                    # give it back; the broker dead-letters it ("expired").
                    self._ch.basic_nack(method.delivery_tag, requeue=True)
                    continue
                m = Message(self, self._gen, method, props, body)
                self._held[method.delivery_tag] = m
                return m
            if self._cancelled:
                raise E.QueueNotFound(2, "the queue was deleted on the broker", self._queue.name)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise E.Empty("no message in queue %r" % self._queue.name)
            self._pump(None if deadline is None else max(0.0, deadline - now))

    def _expired(self, props):
        ttl = self._queue._config.get("ttl")
        if props.expiration is not None:
            try:
                t = int(props.expiration) / 1000.0
            except ValueError:
                t = None
            if t is not None:
                ttl = t if ttl is None else min(ttl, t)
        if ttl is None:
            return False
        published = (props.headers or {}).get(_PUBLISHED_HEADER)
        if not isinstance(published, int):
            return False
        return time.time_ns() - published >= ttl * 1e9

    def get(self, timeout=None, copy=True):
        """Receive one message (it stays the broker's until settled).  Waits
        up to ``timeout`` seconds (None: no limit), then ackring.Empty.
        ``copy`` is accepted for the API's sake: a broker message is always a
        copy."""
        self._check()
        timeout = _timeout_arg(timeout)
        self._allowance(1)
        self._channel()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._buffer:
            self._pump(0)
        return self._take(deadline)

    def get_batch(self, n, timeout=None):
        raise NotImplementedError("get_batch: a broker hands out one message object per delivery; "
                                  "use get_many() and ack_many()")

    def get_many(self, n, timeout=None, copy=True):
        """Up to n messages (and at most the prefetch allowance): waits up to
        ``timeout`` for the first, then takes what has already arrived."""
        self._check()
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError("get_many() needs an int n, not %s" % type(n).__name__)
        if n < 1:
            raise ValueError("get_many() needs n >= 1")
        timeout = _timeout_arg(timeout)
        n = self._allowance(n)
        self._channel()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._buffer:
            self._pump(0)
        out = [self._take(deadline)]
        if len(self._buffer) < n - 1:
            self._pump(0)
        while len(out) < n and self._buffer:
            try:
                out.append(self._take(0))
            except E.Empty:
                break
        return out

    def ack_many(self, messages):
        """Ack a batch: one basic_ack(multiple=True) when the batch is every
        unsettled delivery up to its last, else one basic_ack each.  Every
        item must be an unsettled message of this consumer, else nothing is
        acked."""
        self._check()
        items = list(messages)
        seen = set()
        for m in items:
            if not isinstance(m, Message):
                raise TypeError("ack_many() takes Message objects, not %s" % type(m).__name__)
            if m._consumer is not self:
                raise ValueError("message %r was delivered to another consumer" % (m.id,))
            if m._settled:
                raise E.AlreadySettled("message %r was already settled" % (m.id,))
            if id(m) in seen:
                raise E.AlreadySettled("ack_many() got message %r twice" % (m.id,))
            seen.add(id(m))
        if not items:
            return
        stale = [m for m in items if not m._current()]
        live = [m for m in items if m._current()]
        try:
            if live:
                tags = sorted(m._tag for m in live)
                top = tags[-1]
                if tags == sorted(t for t in self._held if t <= top):
                    self._ch.basic_ack(top, multiple=True)
                else:
                    for t in tags:
                        self._ch.basic_ack(t)
        except _pe.AMQPError as e:
            raise self._lost(e, "ack_many") from e
        finally:
            for m in items:
                m._settled = True
                self._held.pop(m._tag, None)
        if stale:
            exc = E.StaleDelivery("%d of %d deliveries were no longer current (their channel was "
                                  "closed, so the broker requeued them)" % (len(stale), len(items)))
            exc.ids = [m.id for m in stale]
            raise exc

    def close(self):
        """Close the connection: the broker requeues every message this
        consumer held unsettled, and those it had prefetched."""
        super().close()
        self._held.clear()
        self._buffer.clear()

    def __iter__(self):
        return self

    def __next__(self):
        if self.closed:
            raise StopIteration
        try:
            return self.get()
        except (E.QueueClosed, E.QueueNotFound):
            raise StopIteration

    def __repr__(self):
        return "<ackring.amqp.Consumer of %r prefetch=%d%s>" % (
            self._queue.name, self._prefetch, " closed" if self.closed else "")


class Message:
    """One delivery from the broker.  Settle it exactly once."""

    __slots__ = ("_consumer", "_gen", "_tag", "_redelivered", "_props", "_body", "_settled", "__weakref__")

    def __init__(self, consumer, gen, method, props, body):
        self._consumer = consumer
        self._gen = gen
        self._tag = method.delivery_tag
        self._redelivered = bool(method.redelivered)
        self._props = props
        self._body = body
        self._settled = False

    settled = property(lambda self: self._settled)
    body = property(lambda self: self._body)
    properties = property(lambda self: self._props, doc="pika's BasicProperties of the message.")

    @property
    def id(self):
        """The message_id property the producer set (unique: a random
        per-connection token and a sequence number); None for a message
        published without one."""
        return self._props.message_id

    @property
    def key(self):
        """The idempotency key: the message id, the same on every redelivery
        and unique across queues and their re-creations."""
        return self._props.message_id

    @property
    def delivery_count(self):
        """The quorum queue's x-delivery-count + 1 (1 on the first delivery)."""
        n = (self._props.headers or {}).get("x-delivery-count")
        if isinstance(n, int):
            return n + 1
        return 2 if self._redelivered else 1

    @property
    def redelivered(self):
        return self._redelivered or self.delivery_count > 1

    @property
    def publish_time_ns(self):
        """Wall-clock nanoseconds when the producer published it."""
        h = (self._props.headers or {}).get(_PUBLISHED_HEADER)
        if isinstance(h, int):
            return h
        return None if self._props.timestamp is None else int(self._props.timestamp) * 10 ** 9

    @property
    def death(self):
        """On a dead-letter queue: why and how it died, from the x-death
        header (reason, id, queue_id = the queue's name, delivery_count =
        None: the broker does not keep it, first_publish_time, time with the
        broker's one-second resolution); None on other queues."""
        deaths = (self._props.headers or {}).get("x-death")
        if not deaths:
            return None
        d = deaths[0]          # the most recent death first
        t = d.get("time")
        if hasattr(t, "timestamp"):
            t = t.timestamp()
        reason = d.get("reason")
        if isinstance(reason, bytes):
            reason = reason.decode()
        pub = self.publish_time_ns
        return {"reason": _REASONS.get(reason, reason), "id": self.id, "queue_id": d.get("queue"),
                "delivery_count": None, "first_publish_time": None if pub is None else pub / 1e9,
                "time": t}

    def __len__(self):
        return len(self._body)

    def view(self):
        """A read-only memoryview of the body (a broker message is a copy)."""
        if self._settled:
            raise E.AlreadySettled("message %r is settled" % (self.id,))
        return memoryview(self._body).toreadonly()

    def __bytes__(self):
        return self._body

    def __repr__(self):
        return "<ackring.amqp.Message id=%r len=%d delivery_count=%d%s>" % (
            self.id, len(self._body), self.delivery_count, " settled" if self._settled else "")

    def _current(self):
        c = self._consumer
        return c._gen == self._gen and c._pid == os.getpid() and c._ch is not None and c._ch.is_open

    def _settle(self, how, requeue=False):
        if self._settled:
            raise E.AlreadySettled("message %r was already settled" % (self.id,))
        c = self._consumer
        if c.closed:
            raise E.QueueClosed("the consumer of message %r is closed (the broker requeued its deliveries)"
                                % (self.id,))
        if not self._current():
            self._settled = True
            c._held.pop(self._tag, None)
            raise E.StaleDelivery("message %r: its channel is gone (closed, lost, or the parent's before "
                                  "fork), so the broker requeued it" % (self.id,))
        self._settled = True
        del c._held[self._tag]
        try:
            if how == "ack":
                c._ch.basic_ack(self._tag)
            elif how == "nack":
                c._ch.basic_nack(self._tag, requeue=requeue)
            else:
                c._ch.basic_reject(self._tag, requeue=False)
        except _pe.AMQPError as e:
            raise c._lost(e, how) from e

    def ack(self):
        """Done: the broker removes it."""
        self._settle("ack")

    def nack(self, requeue=True):
        """Give it back: requeued (requeue=True; x-delivery-count goes up) or
        dead-lettered with reason "rejected" (requeue=False)."""
        self._settle("nack", requeue)

    def reject(self):
        """Dead-letter it (reason "rejected")."""
        self._settle("reject")

    def extend(self, seconds):
        raise NotImplementedError("extend: a broker has no per-delivery ack lease to extend")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._settled:
            if exc_type is None:
                self.ack()
            else:
                self.nack(requeue=True)
        return False
