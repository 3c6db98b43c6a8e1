"""Every bad input and every broken segment must raise the documented exception."""

import os
import stat
import struct

import pytest

import ackring
from _ar_workers import segment_path

BAD_NAMES = ["", "a/b", "x" * 201, ".hidden", "bad name", "naïve", "..", "/abs", "tab\tname",
             "nul\x00name"]

ALL_ERRORS = ["Empty", "Full", "QueueNotFound", "MessageTooLarge", "IncompatibleQueue",
              "StaleDelivery", "AlreadySettled", "QueueClosed", "TooManyClients"]


def test_all_exceptions_subclass_error():
    assert issubclass(ackring.Error, Exception)
    for name in ALL_ERRORS:
        exc = getattr(ackring, name)
        assert issubclass(exc, ackring.Error), name


# -------------------------------------------------------------- put inputs

@pytest.mark.parametrize("bad", ["text", 42, None, 3.5, ["a"], object()],
                         ids=["str", "int", "None", "float", "list", "object"])
def test_put_non_bytes_is_type_error(q, bad):
    p = q.producer()
    with pytest.raises(TypeError):
        p.put(bad)
    s = q.stats()
    assert (s["depth"], s["published"]) == (0, 0)
    with pytest.raises(ackring.Empty):
        q.consumer().get(timeout=0)


def test_put_many_with_bad_item_is_type_error(q):
    p = q.producer()
    with pytest.raises(TypeError):
        p.put_many(["text"])
    assert q.stats()["depth"] == 0


def test_message_too_large(make_queue):
    q = make_queue(capacity=4, message_size=64)
    p = q.producer()
    with pytest.raises(ackring.MessageTooLarge):
        p.put(b"x" * 65)
    with pytest.raises(ValueError):
        p.put(bytearray(1000))
    with pytest.raises(ackring.MessageTooLarge):
        p.put_many([b"x" * 65])
    s = q.stats()
    assert (s["depth"], s["published"]) == (0, 0)

    exact = bytes(range(64))
    mid = p.put(exact)
    m = q.consumer().get(timeout=1)
    assert (m.id, m.body, len(m)) == (mid, exact, 64)
    m.ack()


def test_message_too_large_does_not_consume_capacity(make_queue):
    q = make_queue(capacity=2, message_size=8)
    p = q.producer()
    for _ in range(5):
        with pytest.raises(ackring.MessageTooLarge):
            p.put(b"123456789", timeout=0)
    p.put(b"1", timeout=0)
    p.put(b"2", timeout=0)
    assert q.stats()["depth"] == 2


def test_zero_length_message_ok(make_queue):
    q = make_queue(capacity=2, message_size=1)
    q.producer().put(b"")
    q.producer().put(b"z")
    c = q.consumer()
    bodies = []
    for _ in range(2):
        m = c.get(timeout=1)
        bodies.append(m.body)
        m.ack()
    assert bodies == [b"", b"z"]


# ---------------------------------------------------------- create inputs

@pytest.mark.parametrize("capacity", [0, 1, 3, 6, 12, 1000, -1, -2, -8])
def test_bad_capacity(qname, capacity):
    with pytest.raises(ValueError):
        ackring.create(qname, capacity=capacity, message_size=16)
    assert not os.path.exists(segment_path(qname))


@pytest.mark.parametrize("capacity", [2, 4, 1024])
def test_good_capacity(make_queue, capacity):
    assert make_queue(capacity=capacity, message_size=16).capacity == capacity


@pytest.mark.parametrize("message_size", [0, -1, -4096, 2 ** 30 + 1, 2 ** 31, 2 ** 40])
def test_bad_message_size(qname, message_size):
    with pytest.raises(ValueError):
        ackring.create(qname, capacity=4, message_size=message_size)
    assert not os.path.exists(segment_path(qname))


def test_message_size_one_ok(make_queue):
    q = make_queue(capacity=2, message_size=1)
    assert q.message_size == 1
    with pytest.raises(ackring.MessageTooLarge):
        q.producer().put(b"ab")


@pytest.mark.parametrize("name", BAD_NAMES, ids=[ascii(n)[:16] for n in BAD_NAMES])
def test_bad_names_create(name, ackring_dir):
    before = set(os.listdir(ackring_dir))
    with pytest.raises(ValueError):
        ackring.create(name, capacity=4, message_size=16)
    assert set(os.listdir(ackring_dir)) == before


@pytest.mark.parametrize("name", BAD_NAMES, ids=[ascii(n)[:16] for n in BAD_NAMES])
def test_bad_names_open_and_unlink(name):
    with pytest.raises(ValueError):
        ackring.open(name)
    with pytest.raises(ValueError):
        ackring.unlink(name)


# ---------------------------------------------------------- missing queues

def test_open_missing(qname):
    with pytest.raises(ackring.QueueNotFound) as ei:
        ackring.open(qname)
    assert isinstance(ei.value, FileNotFoundError)
    assert isinstance(ei.value, ackring.Error)


def test_unlink_missing(qname):
    with pytest.raises(ackring.QueueNotFound):
        ackring.unlink(qname)
    ackring.unlink(qname, missing_ok=True)  # no error
    assert not os.path.exists(segment_path(qname))


def test_unlink_twice(qname):
    ackring.create(qname, capacity=2, message_size=8).close()
    ackring.unlink(qname)
    with pytest.raises(ackring.QueueNotFound):
        ackring.unlink(qname)


# ------------------------------------------------------- broken segments

def _real_segment_bytes(name):
    q = ackring.create(name, capacity=8, message_size=64)
    q.producer().put(b"payload")
    q.close()
    with open(segment_path(name), "rb") as f:
        data = f.read()
    return data


def _write_segment(name, data):
    path = segment_path(name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _assert_incompatible(name):
    with pytest.raises(ackring.IncompatibleQueue) as ei:
        ackring.open(name)
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, ackring.Error)


def test_real_segment_header_layout(qname):
    data = _real_segment_bytes(qname)
    assert data[:8] == struct.pack("<Q", 0x474E49524B434121)  # "!ACKRING"
    assert data[:8] == b"!ACKRING"
    assert struct.unpack_from("<I", data, 8)[0] == 2        # layout version 2 (core v2)


def test_copy_of_real_segment_opens(qname):
    """Control for the corruption tests below: an intact byte copy is accepted."""
    data = _real_segment_bytes(qname + "-src")
    _write_segment(qname, data)
    q = ackring.open(qname)
    try:
        assert (q.capacity, q.message_size) == (8, 64)
        m = q.consumer().get(timeout=1)
        assert m.body == b"payload"
        m.ack()
    finally:
        q.close()


@pytest.mark.parametrize("kind", ["empty", "zeros-small", "zeros-large", "garbage-small",
                                  "garbage-large", "text"])
def test_open_non_segment_is_incompatible(qname, kind):
    data = {
        "empty": b"",
        "zeros-small": bytes(16),
        "zeros-large": bytes(1 << 16),
        "garbage-small": os.urandom(20),
        "garbage-large": os.urandom(1 << 16),
        "text": b"this is not an ackring segment\n" * 100,
    }[kind]
    _write_segment(qname, data)
    _assert_incompatible(qname)


@pytest.mark.parametrize("keep", [4, 8, 12, 64, "half", "minus-one"])
def test_open_truncated_segment_is_incompatible(qname, keep):
    data = _real_segment_bytes(qname + "-src")
    n = {"half": len(data) // 2, "minus-one": len(data) - 1}.get(keep, keep)
    assert 0 < n < len(data)
    _write_segment(qname, data[:n])
    _assert_incompatible(qname)


@pytest.mark.parametrize("version", [0, 1, 3, 999, 0xFFFFFFFF])
def test_open_other_version_is_incompatible(qname, version):
    data = bytearray(_real_segment_bytes(qname + "-src"))
    struct.pack_into("<I", data, 8, version)
    _write_segment(qname, bytes(data))
    _assert_incompatible(qname)


def test_open_bad_magic_is_incompatible(qname):
    data = bytearray(_real_segment_bytes(qname + "-src"))
    data[0] ^= 0xFF
    _write_segment(qname, bytes(data))
    _assert_incompatible(qname)


def test_create_exist_ok_on_garbage_is_incompatible(qname):
    _write_segment(qname, os.urandom(4096))
    with pytest.raises(ackring.IncompatibleQueue):
        ackring.create(qname, capacity=4, message_size=16, exist_ok=True)


# ------------------------------------------------------------ settling

def test_double_ack(q):
    q.producer().put(b"x")
    m = q.consumer().get(timeout=1)
    m.ack()
    with pytest.raises(ackring.AlreadySettled):
        m.ack()
    with pytest.raises(ackring.AlreadySettled):
        m.nack()
    assert q.stats()["acked"] == 1


def test_ack_after_nack(q):
    q.producer().put(b"x")
    c = q.consumer()
    m = c.get(timeout=1)
    m.nack(requeue=True)
    with pytest.raises(ackring.AlreadySettled):
        m.ack()
    with pytest.raises(ackring.AlreadySettled):
        m.nack(requeue=False)
    # the requeued message is untouched by the failed settles
    again = c.get(timeout=1)
    assert (again.body, again.delivery_count) == (b"x", 2)
    again.ack()
    assert q.stats()["acked"] == 1


def test_ack_after_drop(q):
    q.producer().put(b"x")
    m = q.consumer().get(timeout=1)
    m.nack(requeue=False)
    with pytest.raises(ackring.AlreadySettled):
        m.ack()
    assert q.stats()["acked"] == 0


def test_ack_after_consumer_closed(q):
    q.producer().put(b"x")
    c = q.consumer()
    m = c.get(timeout=1)
    c.close()
    with pytest.raises(ackring.QueueClosed):
        m.ack()
    with pytest.raises(ackring.QueueClosed):
        m.nack()


# ----------------------------------------------------------- permissions

def test_segment_mode_default(q):
    assert stat.S_IMODE(os.stat(q.path).st_mode) == 0o600


def test_segment_mode_explicit(make_queue):
    old = os.umask(0o022)
    try:
        q = make_queue(capacity=2, message_size=8, mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(q.path).st_mode) == 0o640


# ------------------------------------------------------------- timeouts

def test_negative_timeouts(q):
    p = q.producer()
    c = q.consumer()
    for call in (lambda: p.put(b"x", timeout=-1), lambda: p.put(b"x", timeout=-0.001),
                 lambda: p.put_many([b"x"], timeout=-1)):
        with pytest.raises(ValueError):
            call()
    assert q.stats()["published"] == 0
    p.put(b"y")
    for call in (lambda: c.get(timeout=-1), lambda: c.get(timeout=-0.5),
                 lambda: c.get_many(2, timeout=-1)):
        with pytest.raises(ValueError):
            call()
    # the message was not taken by the rejected calls
    m = c.get(timeout=0)
    assert (m.body, m.delivery_count) == (b"y", 1)
    m.ack()


def test_int_timeouts_of_every_size(q):
    """An int timeout takes its own path in the Cython binding (no float is
    made of it): huge ints mean no limit, huge negative ones are refused,
    bools are not numbers of seconds, and 0 does not wait."""
    p, c = q.producer(), q.consumer()
    with pytest.raises(ackring.Empty):
        c.get(timeout=0)
    with pytest.raises(ackring.Empty):
        c.get(timeout=1 - 1)
    for bad, err in ((-(10 ** 30), ValueError), (-1, ValueError), (True, TypeError), (False, TypeError)):
        with pytest.raises(err):
            p.put(b"x", timeout=bad)
        with pytest.raises(err):
            c.get(timeout=bad)
    assert q.stats()["published"] == 0
    p.put(b"a", timeout=10 ** 30)       # no limit (it does not wait: there is room)
    p.put(b"b", timeout=2 ** 63)
    p.put(b"c", timeout=10 ** 9)
    got = []
    for t in (10 ** 30, 2 ** 64, 1):
        m = c.get(timeout=t)
        got.append(m.body)
        m.ack()
    assert got == [b"a", b"b", b"c"]


# ---------------------------------------------------------- client table

def test_too_many_clients(make_queue):
    q = make_queue(capacity=2, message_size=8, max_clients=2)
    clients = []
    with pytest.raises(ackring.TooManyClients):
        for _ in range(3):
            clients.append(q.producer())
    assert 1 <= len(clients) <= 2
    clients.pop().close()
    clients.append(q.consumer())  # a freed entry is reusable
    for cl in clients:
        cl.close()
