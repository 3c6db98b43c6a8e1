"""One process, no second core: put + get + ack of 64 B messages in a loop,
for counting instructions per message with callgrind, free of the
machine's noise (the per-message twin of batch_loop.py):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/message_loop.py 50000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/message_loop.py 150000

(the difference of the two totals over 100,000 is the cost of one message;
it takes out start-up and the 5,000-message warm-up both runs make).
"""
import os
import sys

import ackring


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    name = "message-loop-%d" % os.getpid()
    q = ackring.create(name, capacity=1024, message_size=64)
    try:
        p, c = q.producer(), q.consumer()
        put, get = p.put, c.get
        data = b"x" * 64

        def loop(k):
            for _ in range(k):
                put(data, timeout=1)
                get(timeout=1).ack()

        loop(5000)
        loop(n)
        p.close()
        c.close()
    finally:
        q.close()
        ackring.unlink(name)


if __name__ == "__main__":
    main()
