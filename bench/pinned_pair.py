"""One producer and one consumer process, each pinned to its own CPU, 64 B
messages, every one acked: the A/B harness for changes to the hot paths.
Pinning takes the scheduler's placement out of the figure (``ackring
bench`` does not pin); the machine's own swings stay, so compare builds by
alternating runs and taking the median of the paired ratios.

    python bench/pinned_pair.py --messages 1500000              # put / get + ack
    python bench/pinned_pair.py --messages 2000000 --batch 64   # put_batch / get_batch + Batch.ack

Prints the consumer's rate (msg/s from its first get to its last ack).
Needs two CPUs.
"""
import argparse
import multiprocessing as mp
import os
import sys
import time

import ackring


def _producer(name, n, batch, cpu, ready):
    os.sched_setaffinity(0, {cpu})
    with ackring.open(name) as q, q.producer() as p:
        data = b"x" * 64
        ready.wait(60)
        if batch > 1:
            put = getattr(p, "put_batch", p.put_many)
            chunk = [data] * batch
            for _ in range(n // batch):
                put(chunk, timeout=30)
        else:
            put = p.put
            for _ in range(n):
                put(data, timeout=30)


def _consumer(name, n, batch, cpu, ready, out):
    os.sched_setaffinity(0, {cpu})
    with ackring.open(name) as q, q.consumer() as c:
        ready.wait(60)
        got = 0
        t = time.perf_counter()
        if batch > 1:
            while got < n:
                b = c.get_batch(batch, timeout=30)
                got += len(b)
                b.ack()
        else:
            get = c.get
            for got in range(1, n + 1):
                get(timeout=30).ack()
        out.put((got, time.perf_counter() - t))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1500000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--capacity", type=int, default=1024)
    a = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("pinned_pair needs two CPUs")
    n = a.messages - a.messages % max(a.batch, 1)
    name = "pinned-pair-%d" % os.getpid()
    q = ackring.create(name, capacity=a.capacity, message_size=64)
    ctx = mp.get_context("fork")
    ready, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_producer, args=(name, n, a.batch, cpus[0], ready), daemon=True),
             ctx.Process(target=_consumer, args=(name, n, a.batch, cpus[1], ready, out), daemon=True)]
    try:
        for p in procs:
            p.start()
        got, dt = out.get(timeout=300)
        api = "get_batch(%d)" % a.batch if a.batch > 1 else "get+ack"
        print("%s: %d messages, %.2f M msg/s" % (api, got, got / dt / 1e6))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        q.close()
        ackring.unlink(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
