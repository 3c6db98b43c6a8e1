"""Backend selection, pyzmq style.

Every backend exposes the names in ``public_api``, over the same C core
(ext/ackring.c):

``cython``
    ackring.backend.cython._core, the CPython path (default on CPython).
``cffi``
    ackring.backend.cffi, plain Python over a cffi module, the PyPy path
    (default on PyPy).  On CPython <= 3.11 a Python class cannot export a
    buffer, so there ``memoryview(m)`` needs ``m.view()`` instead.

``ACKRING_BACKEND=cython`` or ``ACKRING_BACKEND=cffi`` forces a choice; the
chosen backend missing (not built, or failing to import) is an ImportError.
``name`` is the backend in use (also ``ackring.backend``).
"""
import importlib
import os
import platform

public_api = ["Segment", "Producer", "Consumer", "Message", "Reservation", "Batch", "set_test_hook",
              "set_sync_snapshots", "test_hook_paused", "futex_counts", "ring_probes"]

_MODULES = {"cython": "ackring.backend.cython._core", "cffi": "ackring.backend.cffi._core"}
_BUILT = {"cython": "`pip install .` builds it on CPython (not on PyPy)",
          "cffi": "`pip install .` builds it (with cffi>=1.15)"}


def _default():
    return "cffi" if platform.python_implementation() == "PyPy" else "cython"


def _load(choice):
    try:
        return importlib.import_module(_MODULES[choice])
    except ImportError as e:
        raise ImportError(
            "ackring: the %s backend is not available (%s: %s); %s%s"
            % (choice, type(e).__name__, e, _BUILT[choice],
               "" if os.environ.get("ACKRING_BACKEND") else "; ACKRING_BACKEND=cython|cffi picks another"),
            name=e.name, path=e.path) from e


_choice = os.environ.get("ACKRING_BACKEND", "").strip().lower() or _default()
if _choice not in _MODULES:
    raise ImportError("unknown ACKRING_BACKEND %r (available: %s)"
                      % (os.environ.get("ACKRING_BACKEND"), ", ".join(sorted(_MODULES))))

_backend = _load(_choice)
Segment = _backend.Segment
Producer = _backend.Producer
Consumer = _backend.Consumer
Message = _backend.Message
Reservation = _backend.Reservation
Batch = _backend.Batch
set_test_hook = _backend.set_test_hook
set_sync_snapshots = _backend.set_sync_snapshots
test_hook_paused = _backend.test_hook_paused
futex_counts = _backend.futex_counts
ring_probes = _backend.ring_probes

name = _choice
