"""Child-process bodies for test_aio.py and test_mp_queue.py.

Kept in a plain module so spawn children can import them by name.  Every
blocking call is bounded; a failure is reported as ("error", traceback).
"""

import asyncio
import os
import time
import traceback

import ackring


def _report(conn, fn, *args):
    try:
        conn.send(fn(*args))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


# ----------------------------------------------------------------- test_aio


def _paced_produce(qname, n, pause):
    q = ackring.open(qname)
    p = q.producer()
    ids = []
    for i in range(n):
        ids.append(p.put(b"m-%d" % i, timeout=30))
        if pause:
            time.sleep(pause)  # spreads the messages over time (what is tested: waits in between)
    p.close()
    q.close()
    return ("done", ids)


def paced_producer(qname, n, pause, conn):
    """Put b"m-0" .. b"m-<n-1>", `pause` seconds apart; report their ids."""
    _report(conn, _paced_produce, qname, n, pause)


def _take(qname, n, timeout, settle):
    q = ackring.open(qname)
    c = q.consumer()
    got = []
    for _ in range(n):
        try:
            m = c.get(timeout=timeout)
        except ackring.Empty:
            break
        got.append((m.id, m.body, m.delivery_count))
        getattr(m, settle)()
    c.close()
    q.close()
    return ("got", got)


def taking_consumer(qname, n, timeout, settle, conn):
    """Take up to n messages (each get bounded by `timeout`), settle each with
    m.<settle>() and report [(id, body, delivery_count)]."""
    _report(conn, _take, qname, n, timeout, settle)


def _gated_take(qname, n, gate, timeout, settle):
    if not gate.wait(timeout):
        return ("error", "gate never opened")
    return _take(qname, n, timeout, settle)


def gated_consumer(qname, n, gate, timeout, settle, conn):
    """taking_consumer once `gate` (an Event) is set."""
    _report(conn, _gated_take, qname, n, gate, timeout, settle)


def _async_child(qname, n):
    import ackring.aio as aio

    async def main():
        q = ackring.open(qname)
        c = aio.AsyncConsumer(q.consumer())
        p = aio.AsyncProducer(q.producer())
        mid = await p.aput(b"from-child", timeout=10)
        got = []
        for _ in range(n):
            m = await asyncio.wait_for(c.aget(timeout=10), 20)
            got.append(m.body)
            m.ack()
        receipt = await p.await_acked(mid, timeout=10)
        c.close()
        p.close()
        q.close()
        return ("got", got, receipt.outcome)

    return asyncio.run(main())


def async_child(qname, n, conn):
    """Use ackring.aio in a (forked) child: its pool must work there."""
    _report(conn, _async_child, qname, n)


# ----------------------------------------------------------- test_mp_queue


def _mp_echo(q, out, n):
    got = 0
    for _ in range(n):
        obj = q.get(timeout=30)
        out.put(("echo", os.getpid(), obj), timeout=30)
        got += 1
    return ("done", got)


def mp_echo(q, out, n, conn):
    """Get n objects from ackring.mp queue q and put ("echo", pid, obj) on out."""
    _report(conn, _mp_echo, q, out, n)


def _mp_drain(q, out, stop_after):
    got = []
    while True:
        try:
            obj = q.get(timeout=stop_after)
        except ackring.Empty:
            break
        got.append(obj)
    out.put(("drained", os.getpid(), got), timeout=30)
    return ("done", len(got))


def mp_drain(q, out, stop_after, conn):
    """Get until a get waits `stop_after` s in vain; put the list on out."""
    _report(conn, _mp_drain, q, out, stop_after)


def _mp_put_range(q, start, n):
    for i in range(start, start + n):
        q.put(("item", i), timeout=30)
    q.close()  # a child's close never removes the parent's segment
    return ("done", n)


def mp_put_range(q, start, n, conn):
    _report(conn, _mp_put_range, q, start, n)


def _jq_worker(jq, results, gate, timeout):
    done = 0
    while True:
        task = jq.get(timeout=timeout)
        if task is None:
            jq.task_done()
            return ("done", done)
        results.put((task, task * task), timeout=timeout)  # before task_done
        if gate is not None and not gate.wait(timeout):
            return ("error", "gate never opened")
        jq.task_done()
        done += 1


def jq_worker(jq, results, gate, timeout, conn):
    """JoinableQueue worker: for each task t put (t, t*t) on results, wait
    for `gate` (if any), then task_done(); a None task ends it."""
    _report(conn, _jq_worker, jq, results, gate, timeout)


def _jq_take(jq, n, timeout):
    return ("took", [jq.get(timeout=timeout) for _ in range(n)])


def jq_take(jq, n, timeout, conn):
    """get n tasks and report them without calling task_done."""
    _report(conn, _jq_take, jq, n, timeout)


def _inherited_aget(ac):
    async def main():
        m = await asyncio.wait_for(ac.aget(), 15)
        body = m.body
        m.ack()
        return ("got", body, m.delivery_count)

    return asyncio.run(main())


def inherited_async_consumer(ac, conn):
    """aget on an AsyncConsumer inherited through fork (its parent was
    waiting in an aget at the fork)."""
    _report(conn, _inherited_aget, ac)
