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


def as_view(obj):
    """memoryview(obj); obj.view() where the backend's classes cannot export a
    buffer (the cffi backend on CPython < 3.12: PEP 688's __buffer__ is 3.12+)."""
    try:
        return memoryview(obj)
    except TypeError:
        if not hasattr(obj, "view"):
            raise
        return obj.view()


def drain(c, timeout=0.0, pick=lambda m: m, settle="ack"):
    """Get every message deliverable now (until a get waits `timeout` in
    vain), settle each with m.<settle>(), and return [pick(m), ...]."""
    out = []
    while True:
        try:
            m = c.get(timeout=timeout)
        except ackring.Empty:
            return out
        getattr(m, settle)()
        out.append(pick(m))


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

def hold_and_hang(qname, n, conn, release, watchdog=None):
    """Take n deliveries without settling them, report their ids, then wait to be killed.
    No watchdog by default: the tests count what their own reclaim() (or open)
    repairs, and a holder's watchdog would race them, reclaiming another killed
    holder first (seen: test_open_recovers_a_queue_whose_processes_all_died)."""
    try:
        q = ackring.open(qname, watchdog=watchdog)
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
        q = ackring.open(qname, watchdog=None)   # no watchdog: see hold_and_hang
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


# ------------------------------------------------------- delivery semantics

class Poison(Exception):
    """What a consumer's handler raises on the poison message."""


def _poison_consume(qname, cidx, poison, stop, result_q, limit_s):
    # Handles every message inside `with m:` -- acked on normal exit, nacked
    # (requeued) when the handler raises, which it always does on `poison`.
    q = ackring.open(qname)
    c = q.consumer()
    acked, poison_counts = [], []
    deadline = time.monotonic() + limit_s
    while not stop.is_set():
        if time.monotonic() > deadline:
            raise AssertionError("poison consumer %d hit its deadline" % cidx)
        try:
            m = c.get(timeout=0.1)
        except ackring.Empty:
            continue
        body = m.body
        try:
            with m:
                if body == poison:
                    raise Poison(m.id)
        except Poison:
            poison_counts.append((m.id, m.delivery_count))
        else:
            acked.append((m.id, body, m.delivery_count))
    c.close()
    q.close()
    result_q.put(("consumer", cidx, acked, poison_counts))


def poison_consumer(qname, cidx, poison, stop, result_q, limit_s):
    _guard(result_q, "poison consumer %d" % cidx, _poison_consume, qname, cidx, poison, stop,
           result_q, limit_s)


def lease_sleeper(qname, conn, taken_back, limit_s):
    """Take one message and sit on it past its lease until the parent says
    another consumer has it (taken_back); then report what extend() and ack() do."""
    try:
        q = ackring.open(qname)
        c = q.consumer()
        m = c.get(timeout=limit_s)
        conn.send(("got", m.id, m.delivery_count, m.body))
        if not taken_back.wait(limit_s):
            conn.send(("timeout",))
            return
        out = []
        for what in ("extend", "ack"):
            try:
                m.extend(5) if what == "extend" else m.ack()
            except ackring.StaleDelivery:
                out.append(what + ":stale")
            else:
                out.append(what + ":ok")
        conn.send(("late", out, c.outstanding))
        c.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def lease_taker(qname, conn, limit_s):
    """Block in get() until the message comes back, ack it, report."""
    try:
        q = ackring.open(qname)
        c = q.consumer(ack_timeout=30)  # its own lease cannot run out under a slow scheduler
        m = c.get(timeout=limit_s)
        info = (m.id, m.delivery_count, m.redelivered, m.body)
        m.ack()
        conn.send(("got",) + info)
        c.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def _ttl_produce(qname, pidx, n, short_ttl, size, result_q):
    # Even sequence numbers get a short per-message ttl, odd ones none.
    q = ackring.open(qname)
    p = q.producer()
    short, live = [], []
    for seq in range(n):
        if seq % 2 == 0:
            short.append((p.put(body_for(pidx, seq, size), timeout=30, ttl=short_ttl), seq))
        else:
            live.append((p.put(body_for(pidx, seq, size), timeout=30), seq))
    done_at = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    p.close()
    q.close()
    result_q.put(("producer", pidx, short, live, done_at))


def ttl_producer(qname, pidx, n, short_ttl, size, result_q):
    _guard(result_q, "ttl producer %d" % pidx, _ttl_produce, qname, pidx, n, short_ttl, size, result_q)


def _wait_producer_waiting(q, limit_s):
    """Bounded poll until some producer of q sleeps (e.g. in wait_acked)."""
    deadline = time.monotonic() + limit_s
    while not q._seg.raw_header()["not_full"] & 1:   # the eventcount's "may sleep" bit
        if time.monotonic() > deadline:
            raise AssertionError("no producer started waiting")
        time.sleep(0.002)


def receipt_settler(qname, conn, release, limit_s):
    """Take three messages.  Ack the first and reject the second, each only
    once the parent is blocked in wait_acked; hold the third until `release`."""
    try:
        q = ackring.open(qname)
        c = q.consumer()
        ms = [c.get(timeout=limit_s) for _ in range(3)]
        conn.send(("held", [m.id for m in ms]))
        _wait_producer_waiting(q, limit_s)
        ms[0].ack()
        conn.send(("acked", ms[0].id))
        # the parent's first wait has returned (and left the waiters count)
        # before it sends this: a waiter seen from now on is its second wait
        if not conn.poll(limit_s) or conn.recv() != "next":
            raise AssertionError("no 'next' from the parent")
        _wait_producer_waiting(q, limit_s)
        ms[1].reject()
        conn.send(("rejected", ms[1].id))
        if not release.wait(limit_s):
            conn.send(("timeout",))
            return
        ms[2].ack()
        conn.send(("acked", ms[2].id))
        c.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def rejecting_child(qname, n, conn, limit_s):
    """Open the queue by name, take n messages and dead-letter them: even
    ones with reject(), odd ones with nack(requeue=False)."""
    try:
        q = ackring.open(qname)
        c = q.consumer()
        out = []
        for i in range(n):
            m = c.get(timeout=limit_s)
            out.append((m.id, m.body, m.publish_time_ns))
            m.reject() if i % 2 == 0 else m.nack(requeue=False)
        conn.send(("done", out, q.dead_letters.name))
        c.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


# ------------------------------------------------- test hooks (test_recovery)

def hook_child(qname, point, action, conn):
    """Do `action` with the test hook set at `point`: the process SIGSTOPs
    itself inside the action, where the parent SIGKILLs it (or SIGCONTs it).
    Reports ("ready", pid, info) just before the action, and ("returned",
    info) or ("raised", name) once the action finishes."""
    from ackring.backend import set_test_hook
    try:
        info = None
        if action == "open_reclaim":       # the reclaim pass ackring.open() runs
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            ackring.open(qname, watchdog=None)
            conn.send(("returned", None))
            os._exit(6)
        q = ackring.open(qname, watchdog=None)
        if action == "register":
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            q.producer()
        elif action in ("put", "put_many", "put_many5", "reserve"):
            p = q.producer()
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            if action == "put":
                info = p.put(b"victim", timeout=5)
            elif action == "put_many":
                info = p.put_many([b"victim-1", b"victim-2"], timeout=5)
            elif action == "put_many5":
                info = p.put_many([b"victim-%d" % i for i in range(1, 6)], timeout=5)
            else:
                r = p.reserve(16, timeout=5)
                as_view(r)[:6] = b"victim"
                info = r.commit(6)
        elif action == "get":
            c = q.consumer()
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            info = c.get(timeout=5).id
        elif action == "get_many":
            c = q.consumer()
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            info = [m.id for m in c.get_many(5, timeout=5)]
        elif action in ("ack", "ack_many", "nack", "reject"):
            c = q.consumer()
            ms = c.get_many(3, timeout=5)
            conn.send(("ready", os.getpid(), [(m.id, m.delivery_count) for m in ms]))
            set_test_hook(point)
            if action == "ack":
                ms[0].ack()
            elif action == "ack_many":
                c.ack_many(ms)
            elif action == "nack":
                ms[0].nack()
            else:
                ms[0].reject()
        elif action == "extend":
            c = q.consumer(ack_timeout=0.3)
            m = c.get(timeout=5)
            conn.send(("ready", os.getpid(), m.id))
            set_test_hook(point)
            try:
                m.extend(30)
            except ackring.StaleDelivery:
                conn.send(("raised", "StaleDelivery"))
                os._exit(6)
        elif action in ("leased_get", "leased_get_many", "leased_get_lazy", "leased_get_view"):
            # a 0.3 s lease that runs out while this process is stopped
            # between the take and the copy of the body (hook get_leased)
            c = q.consumer(ack_timeout=0.3)
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            try:
                if action == "leased_get":
                    ms = [c.get(timeout=5)]
                elif action == "leased_get_many":
                    ms = c.get_many(4, timeout=5)
                else:
                    m = c.get(timeout=5, copy=False)
                    set_test_hook("")
                    ms = [m]
                    if action == "leased_get_view":
                        seen = bytes(m.view())       # the view, then extend: the README's rule
                        m.extend(1)
                        ms = []
                        info = [(m.id, seen, m.delivery_count)]
                if ms:
                    info = [(m.id, m.body, m.delivery_count) for m in ms]
            except ackring.StaleDelivery:
                info = "StaleDelivery"
        elif action == "reclaim":
            conn.send(("ready", os.getpid(), None))
            set_test_hook(point)
            info = q.reclaim()
        else:
            raise ValueError(action)
        conn.send(("returned", info))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    os._exit(6)


def blocked_consumer_report(qname, n, timeout, conn):
    """Take n messages (each get bounded by `timeout`), ack them, report
    [(id, body, delivery_count)] - or ("empty", got_so_far)."""
    try:
        q = ackring.open(qname, watchdog=None)
        c = q.consumer()
        got = []
        for _ in range(n):
            try:
                m = c.get(timeout=timeout)
            except ackring.Empty:
                conn.send(("empty", got))
                os._exit(0)
            got.append((m.id, m.body, m.delivery_count))
            m.ack()
        conn.send(("got", got))
        c.close()
        q.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    os._exit(0)


# ------------------------------------------------------ fast paths (test_fastpaths)

def _batch_produce(qname, n, batch, size, how, result_q):
    q = ackring.open(qname)
    p = q.producer()
    ids = array("Q")
    seq = 0
    while seq < n:
        if how == "put_many":
            k = min(batch, n - seq)
            ids.extend(p.put_many([body_for(3, seq + i, size) for i in range(k)], timeout=30))
            seq += k
        else:  # reserve: write in place, commit on leaving the block
            r = p.reserve(size, timeout=30)
            with r as buf:
                buf[:] = body_for(3, seq, size)
            ids.append(r.id)
            seq += 1
    p.close()
    q.close()
    result_q.put(("producer", how, ids.tobytes()))


def batch_producer(qname, n, batch, size, how, result_q):
    _guard(result_q, "batch producer", _batch_produce, qname, n, batch, size, how, result_q)


def _batch_consume(qname, n, batch, size, copy, result_q):
    q = ackring.open(qname)
    c = q.consumer()
    seqs = array("Q")
    ids = array("Q")
    bad = 0
    deadline = time.monotonic() + 60
    while len(ids) < n and time.monotonic() < deadline:
        if copy == "get_batch":   # one Batch object, one ack for it
            try:
                b = c.get_batch(batch, timeout=0.5)
            except ackring.Empty:
                continue
            for body, mid, dc in zip(b, b.ids, b.delivery_counts):
                _pidx, seq = decode(body)
                if body != body_for(3, seq, size) or dc != 1:
                    bad += 1
                seqs.append(seq)
                ids.append(mid)
            b.ack()
            continue
        try:
            ms = c.get_many(batch, timeout=0.5, copy=copy)
        except ackring.Empty:
            continue
        for m in ms:
            body = m.body if copy else bytes(as_view(m))
            _pidx, seq = decode(body)
            if body != body_for(3, seq, size) or m.delivery_count != 1:
                bad += 1
            seqs.append(seq)
            ids.append(m.id)
        c.ack_many(ms)
    c.close()
    q.close()
    result_q.put(("consumer", seqs.tobytes(), ids.tobytes(), bad))


def batch_consumer(qname, n, batch, size, copy, result_q):
    _guard(result_q, "batch consumer", _batch_consume, qname, n, batch, size, copy, result_q)


def stale_ack_many_child(qname, conn):
    """Hold 3 deliveries under a 0.2 s ack lease until the parent has taken
    them back, then take the requeued copies anew and ack_many a mix of one
    old (stale) delivery and two current ones."""
    try:
        q = ackring.open(qname, watchdog=None)
        c = q.consumer(ack_timeout=0.2)
        old = c.get_many(3, timeout=10)
        conn.send(("held", [m.id for m in old]))
        if not conn.poll(30):
            os._exit(7)
        conn.recv()
        new = c.get_many(3, timeout=10)
        try:
            c.ack_many([old[0], new[0], new[1]])
        except ackring.StaleDelivery as e:
            res = ("stale", list(e.ids), [m.settled for m in (old[0], new[0], new[1])])
        else:
            res = ("no error",)
        c.ack_many(new[2:])
        conn.send(res + ([m.id for m in new],))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    os._exit(0)


# ------------------------------------------- parent-side helpers for hook tests

def wait_stopped(child, conn, point, timeout=20):
    """Wait (bounded) until `child` has SIGSTOPped itself; fail if it went on."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(child.pid).status() == psutil.STATUS_STOPPED:
                return
        except psutil.NoSuchProcess:
            pass
        if conn.poll():
            raise AssertionError("hook child went past %s: %r" % (point, conn.recv()))
        assert child.exitcode is None, "hook child exited with %r" % child.exitcode
        assert time.monotonic() < deadline, "child never stopped at %s" % point
        time.sleep(0.005)  # poll interval of a bounded condition loop


def stop_child_at(procs, qname, point, action, with_conn=False):
    """Fork a hook_child; return (process, info) once it is stopped at `point`
    (and the parent's end of its pipe, with_conn=True)."""
    import multiprocessing

    parent_conn, child_conn = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = procs(hook_child, qname, point, action, child_conn, method="fork")
    assert parent_conn.poll(20), "hook child did not start"
    msg = parent_conn.recv()
    assert msg[0] == "ready", msg
    wait_stopped(child, parent_conn, point)
    return (child, msg[2], parent_conn) if with_conn else (child, msg[2])


def kill_and_reap(child):
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
