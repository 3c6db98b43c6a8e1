"""The light watchdog thread each attached process may run.

Every ``interval`` seconds it runs one reclaim pass on its queue: it reads the
process table (one word per entry) and asks psutil about each process that
has an entry, so its cost is about ``clients x (20-50 us)`` per interval,
with the GIL held for that long.  It holds only a weak reference to the
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
                self.repaired += seg.reclaim()
                self.passes += 1
            except Exception as exc:  # keep watching; a closed queue ends the loop above
                self.error = exc
            del seg
