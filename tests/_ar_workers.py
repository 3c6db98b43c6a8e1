"""Child-process bodies and helpers shared by the ackring tests.

Kept in a plain module (not a test module) so that spawn and forkserver
children can import the targets by name.  Every child bounds each blocking
call with a timeout and reports back through a multiprocessing queue or pipe;
an exception in a child is reported as ("error", tag, traceback) so the parent
fails with the child's traceback instead of waiting for a result.
"""

import os
import signal
import struct
import time
import traceback
from array import array

import ackring

HEAD = struct.Struct("<IQ")  # (producer index, sequence number)


def segment_path(name):
    """Where a queue's segment file lives (honours ACKRING_DIR)."""
    return os.path.join(os.environ["ACKRING_DIR"], "ackring." + name)


def body_for(pidx, seq, size=64):
    """A body of exactly `size` bytes that encodes (pidx, seq) and is checkable."""
    head = HEAD.pack(pidx, seq)
    return (head * (size // len(head) + 1))[:size]


def decode(body):
    return HEAD.unpack_from(body)


def key(pidx, seq):
    return (pidx << 40) | seq


def _guard(result_q, tag, fn, *args):
    try:
        fn(*args)
    except BaseException:
        result_q.put(("error", tag, traceback.format_exc()))
        raise


def collect(result_q, count, procs, timeout, on_item=None):
    """Read `count` results from result_q within `timeout` seconds.

    Fails early (AssertionError) on a child-reported error, or when a child has
    died with a non-zero exit code and nothing is left to read.
    """
    import queue as _queue

    deadline = time.monotonic() + timeout
    out = []
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for child results: got %d of %d; exit codes %r" % (
            len(out), count, [p.exitcode for p in procs.started])
        try:
            item = result_q.get(timeout=min(0.5, left))
        except _queue.Empty:
            dead = [p for p in procs.started if p.exitcode not in (None, 0)]
            if dead:
                # give a crashed child's queued error report a moment to arrive
                try:
                    item = result_q.get(timeout=1.0)
                except _queue.Empty:
                    raise AssertionError("child process(es) died: %r" % [
                        (p.name, p.exitcode) for p in dead])
            else:
                continue
        if item[0] == "error":
            raise AssertionError("child %s failed:\n%s" % (item[1], item[2]))
        out.append(item)
        if on_item is not None:
            on_item(item, out)
    return out


# ---------------------------------------------------------------- MPMC workers

def _produce(qname, pidx, n, size, result_q):
    q = ackring.open(qname)
    p = q.producer()
    ids = array("Q")
    for seq in range(n):
        ids.append(p.put(body_for(pidx, seq, size), timeout=30))
    p.close()
    q.close()
    result_q.put(("producer", pidx, ids.tobytes()))


def producer_worker(qname, pidx, n, size, result_q):
    _guard(result_q, "producer %d" % pidx, _produce, qname, pidx, n, size, result_q)


def _consume(q, cidx, started, producers_done, result_q, batch, size, deadline_s):
    # q is either the parent's Queue object (inherited by fork, pickled by spawn)
    # or a name.
    if isinstance(q, str):
        q = ackring.open(q)
    c = q.consumer()
    started.release()
    keys = array("Q")
    ids = array("Q")
    bad = []
    redelivered = 0
    timed_out = False
    deadline = time.monotonic() + deadline_s
    while True:
        if time.monotonic() > deadline:
            timed_out = True
            break
        done = producers_done.is_set()  # read BEFORE the get that may come back empty
        try:
            if batch > 1:
                ms = c.get_many(batch, timeout=0.2)
            else:
                ms = [c.get(timeout=0.2)]
        except ackring.Empty:
            if done:
                break
            continue
        for m in ms:
            body = m.body
            pidx, seq = decode(body)
            if len(body) != size or body != body_for(pidx, seq, size):
                bad.append((m.id, body))
            if m.redelivered or m.delivery_count != 1:
                redelivered += 1
            m.ack()
            keys.append(key(pidx, seq))
            ids.append(m.id)
    c.close()
    q.close()
    result_q.put(("consumer", cidx, keys.tobytes(), ids.tobytes(), bad[:10], len(bad),
                  redelivered, timed_out))


def consumer_worker(q, cidx, started, producers_done, result_q, batch, size, deadline_s):
    _guard(result_q, "consumer %d" % cidx, _consume, q, cidx, started, producers_done, result_q,
           batch, size, deadline_s)


# ------------------------------------------------------ handing objects across

def _pickled_queue_produce(q, n, result_q):
    # q arrived pickled (forkserver/spawn): it must have been re-opened by name.
    p = q.producer()
    ids = [p.put(b"fs-%d" % i, timeout=30) for i in range(n)]
    p.close()
    result_q.put(("ok", q.name, q.queue_id, ids))
    q.close()


def pickled_queue_producer(q, n, result_q):
    _guard(result_q, "pickled-queue producer", _pickled_queue_produce, q, n, result_q)


def _inherited_producer_put(p, n, result_q):
    # p is the parent's Producer object, inherited through fork.
    ids = [p.put(b"child-%d" % i, timeout=30) for i in range(n)]
    p.close()  # must only close the child's registration, not the parent's
    result_q.put(("ok", ids))


def inherited_producer_child(p, n, result_q):
    _guard(result_q, "inherited producer", _inherited_producer_put, p, n, result_q)


def _inherited_consumer_get(q, n, result_q):
    c = q.consumer()
    got = []
    for _ in range(n):
        m = c.get(timeout=30)
        got.append((m.id, m.body))
        m.ack()
    c.close()
    q.close()  # closes the child's handle only
    result_q.put(("ok", got))


def inherited_queue_consumer(q, n, result_q):
    _guard(result_q, "inherited consumer", _inherited_consumer_get, q, n, result_q)


# ------------------------------------------------------------ blocking calls

def blocked_get_child(qname, ready, conn):
    try:
        q = ackring.open(qname)
        c = q.consumer()
        t0 = time.monotonic()  # before ready: elapsed covers all the parent's waiting
        ready.set()
        m = c.get(timeout=None)
        elapsed = time.monotonic() - t0
        body = m.body
        m.ack()
        conn.send(("got", body, elapsed))
        c.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def blocked_put_child(qname, body, ready, conn):
    try:
        q = ackring.open(qname)
        p = q.producer()
        t0 = time.monotonic()  # before ready: elapsed covers all the parent's waiting
        ready.set()
        mid = p.put(body, timeout=None)
        elapsed = time.monotonic() - t0
        conn.send(("put", mid, elapsed))
        p.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def sigint_child(qname, what, ready, conn):
    """Block forever in get() (what='get') or put() on a full queue (what='put');
    report whether SIGINT ended it with KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    q = ackring.open(qname)
    client = q.consumer() if what == "get" else q.producer()
    try:
        t0 = time.monotonic()  # before ready: elapsed covers all the parent's waiting
        ready.set()
        if what == "get":
            client.get()
        else:
            client.put(b"blocked")
    except KeyboardInterrupt:
        elapsed = time.monotonic() - t0
        client.close()
        q.close()
        conn.send(("kbi", elapsed))
        os._exit(0)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        os._exit(2)
    conn.send(("returned", time.monotonic() - t0))
    os._exit(3)


# --------------------------------------------------------------- crash safety

def hold_and_hang(qname, n, conn, release):
    """Take n deliveries without settling them, report their ids, then wait to be killed."""
    try:
        q = ackring.open(qname)
        c = q.consumer()
        ids = []
        for _ in range(n):
            ids.append(c.get(timeout=30).id)
        conn.send(("held", ids, os.getpid()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    release.wait(60)  # bounded: the parent kills us long before this
    os._exit(4)


def register_and_hang(qname, role, conn, release):
    try:
        q = ackring.open(qname)
        client = q.producer() if role == "producer" else q.consumer()
        conn.send(("registered", os.getpid(), client.closed))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    release.wait(60)
    os._exit(4)


# ------------------------------------------------------------------ wraparound

def _wrap_produce(qname, n, size, result_q):
    q = ackring.open(qname)
    p = q.producer()
    ids = array("Q")
    for seq in range(n):
        ids.append(p.put(body_for(7, seq, size), timeout=30))
    p.close()
    q.close()
    result_q.put(("producer", 7, ids.tobytes()))


def wrap_producer(qname, n, size, result_q):
    _guard(result_q, "wrap producer", _wrap_produce, qname, n, size, result_q)


# ------------------------------------------------------- crash mid-stream

def endless_producer(qname, size, count, limit_s):
    """Put body_for(0, seq) for seq = 0, 1, ... until killed (bounded by limit_s);
    count.value is the number of puts confirmed so far."""
    q = ackring.open(qname)
    p = q.producer()
    deadline = time.monotonic() + limit_s
    seq = 0
    while time.monotonic() < deadline:
        try:
            p.put(body_for(0, seq, size), timeout=1)
        except ackring.Full:
            continue
        seq += 1
        count.value = seq
    os._exit(5)


def flagging_consumer(qname, size, batch, flags, bad, limit_s):
    """Get and ack until killed; flags[seq] = 1 right after each ack returns."""
    q = ackring.open(qname)
    c = q.consumer()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            ms = c.get_many(batch, timeout=1)
        except ackring.Empty:
            continue
        for m in ms:
            body = m.body
            pidx, seq = decode(body)
            if body != body_for(pidx, seq, size):
                bad.value += 1
            m.ack()
            flags[seq] = 1
    os._exit(5)


def flat_producer(qname, n, size, done):
    q = ackring.open(qname)
    p = q.producer()
    for seq in range(n):
        p.put(body_for(1, seq, size), timeout=60)
    done.set()
    p.close()
    q.close()


def ack_inherited_message(m, conn):
    """Try to settle a message delivered to the parent before fork."""
    try:
        m.ack()
    except ackring.StaleDelivery:
        conn.send("stale")
    except BaseException as e:
        conn.send("other: %r" % (e,))
    else:
        conn.send("acked")
