"""The ``ackring bench`` harness (private; the command line lives in ackring.cli).

Modules:

- ``common``   -- parameters, the start gate / clock handed to children, payloads, errors
- ``peers``    -- one ``Peer`` per transport (ackring, multiprocessing.Queue,
                  multiprocessing.Pipe, faster-fifo, pyzmq, posix_ipc): setup in the
                  parent, produce/consume (throughput) and ping/echo (latency) in children
- ``harness``  -- child processes, start gates, timeouts, verification, cleanup
- ``report``   -- medians, ratios, targets, the table, JSON and the plot
- ``progress`` -- a tqdm bar, or a plain stderr line without tqdm
"""
