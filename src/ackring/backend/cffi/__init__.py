"""cffi backend: the C core in ext/ through cffi, with the classes in plain Python
(the PyPy path).  See _core.py; the C module is built by _build.py."""
from ._core import (Batch, Consumer, Message, Producer, Reservation, Segment,  # noqa: F401
                    set_sync_snapshots, set_test_hook)

__all__ = ["Segment", "Producer", "Consumer", "Message", "Reservation", "Batch", "set_test_hook",
           "set_sync_snapshots"]
