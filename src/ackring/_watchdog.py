"""The light watchdog thread each attached process may run.

Every ``interval`` seconds it runs one reclaim pass on its queue, in C with
the GIL released: it tries the OFD lock of each process-table entry that is
in use (one fcntl per entry; a held lock means a live owner), and, once any
delivery carried a lease, scans the slot words for expired leases.  So its
cost is about ``entries x 1 us`` (+ ``capacity x 2 ns`` with leases) per
interval.  It holds only a weak reference to the
queue's segment and ends when the segment is closed or collected.
"""
import threading
import weakref


class Watchdog(threading.Thread):
    def __init__(self, segment, interval):
        super().__init__(name="ackring-watchdog-%s" % segment.name, daemon=True)
        self._seg = weakref.ref(segment)
        self.interval = float(interval)
        self.stopped = threading.Event()
        self.passes = 0
        self.repaired = 0
        self.error = None

    def stop(self):
        self.stopped.set()

    def run(self):
        while not self.stopped.wait(self.interval):
            seg = self._seg()
            if seg is None or seg.closed:
                return
            try:
                r = seg.reclaim()
                self.repaired += r["requeued"] + r["discarded"] + r["repushed"] + r["leases"]
                self.passes += 1
            except Exception as exc:  # keep watching; a closed queue ends the loop above
                self.error = exc
            del seg
