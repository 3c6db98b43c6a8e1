"""One process, no second core: put_batch(64) (put_many on an ackring
without it) + get_batch(64) + Batch.ack in a loop, for counting instructions
per message with callgrind, free of the machine's noise:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/batch_loop.py 64000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/batch_loop.py 128000

(the difference of the two totals over 64,000 is the cost of one message;
it takes out start-up and the 6,400-message warm-up both runs make).
A second argument of 1 runs the per-message API instead (put + get + ack,
one message a turn), e.g. ``batch_loop.py 50000 1`` and ``150000 1``.
"""
import os
import sys

import ackring


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    name = "batch-loop-%d" % os.getpid()
    q = ackring.create(name, capacity=1024, message_size=64)
    try:
        p, c = q.producer(), q.consumer()
        data = b"x" * 64
        if batch > 1:
            put = getattr(p, "put_batch", p.put_many)
            chunk = [data] * batch

            def loop(k):
                for _ in range(k // batch):
                    put(chunk, timeout=1)
                    c.get_batch(batch, timeout=1).ack()
        else:
            put, get = p.put, c.get

            def loop(k):
                for _ in range(k):
                    put(data, timeout=1)
                    get(timeout=1).ack()

        loop(6400)
        loop(n)
        p.close()
        c.close()
    finally:
        q.close()
        ackring.unlink(name)


if __name__ == "__main__":
    main()
