"""cffi backend: ext/ackring.c through cffi, with the classes in plain Python
(the PyPy path).  See _core.py; the C module is built by _build.py."""
from ._core import Consumer, Message, Producer, Reservation, Segment, set_test_hook  # noqa: F401

__all__ = ["Segment", "Producer", "Consumer", "Message", "Reservation", "set_test_hook"]
