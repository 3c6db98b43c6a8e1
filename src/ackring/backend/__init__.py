"""Backend selection, pyzmq style.

Every backend exposes the names in ``public_api``.  The Cython backend is the
CPython path; a cffi backend over the same ext/ackring.c (the PyPy path) is
planned.  ``ACKRING_BACKEND=cython`` forces a choice.
"""
import os

public_api = ["Segment", "Producer", "Consumer", "Message", "Reservation", "set_test_hook"]

_choice = os.environ.get("ACKRING_BACKEND", "cython")
if _choice != "cython":
    raise ImportError("unknown ACKRING_BACKEND %r (available: cython)" % (_choice,))

from .cython._core import Consumer, Message, Producer, Reservation, Segment, set_test_hook  # noqa: E402

name = _choice
