"""Build the one C extension of ackring: ``ackring.backend.cython._core``.

All package metadata lives in pyproject.toml; this file only describes the
extension (the Cython wrapper compiled together with the C core in ext/).

Environment switches, read at build time:

``ACKRING_DEBUG=1``
    ``-O0 -g -DACKRING_DEBUG=1`` and Cython bounds/wraparound checks on.
``ACKRING_SANITIZE=1`` (or a sanitizer list such as ``address,undefined``)
    ``-fsanitize=... -fno-omit-frame-pointer`` on compile and link.  An
    ASan-built extension has to be run with the sanitizer runtime preloaded,
    e.g. ``LD_PRELOAD=$(gcc -print-file-name=libasan.so) python -m pytest``
    (plus ``ASAN_OPTIONS=detect_leaks=0``, CPython itself "leaks" at exit).

Switching modes in the same checkout rebuilds everything: the build mode is
stamped in build/ and a changed stamp forces a full rebuild, and the Cython
output of debug and release builds lives in separate directories.
"""

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - pyproject.toml lists Cython as a build requirement
    sys.exit("ackring: building needs Cython>=3.0 (pip installs it from pyproject.toml's build requirements)")

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "no", "false", "off")


def _sanitizers():
    raw = os.environ.get("ACKRING_SANITIZE", "").strip().lower()
    if raw in ("", "0", "no", "false", "off"):
        return None
    if raw in ("1", "yes", "true", "on"):
        return "address,undefined"
    if not re.fullmatch(r"[a-z]+(,[a-z]+)*", raw):
        sys.exit("ackring: ACKRING_SANITIZE must be 1 or a comma-separated sanitizer list, got %r" % raw)
    return raw


DEBUG = _flag("ACKRING_DEBUG")
SANITIZE = _sanitizers()

compile_args = [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-fno-strict-aliasing",
]
link_args = []
define_macros = []
if DEBUG:
    compile_args += ["-O0", "-g", "-UNDEBUG"]  # CPython's CFLAGS carry -DNDEBUG: keep assert() on
    define_macros.append(("ACKRING_DEBUG", "1"))
else:
    compile_args += ["-O2"]
if SANITIZE:
    compile_args += ["-fsanitize=" + SANITIZE, "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=" + SANITIZE]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": not DEBUG,
}

BUILD_MODE = "debug=%d sanitize=%s" % (DEBUG, SANITIZE or "-")


class BuildExt(build_ext):
    """build_ext that rebuilds from scratch when the build mode changed.

    setuptools only compares timestamps, so without this an ``ACKRING_DEBUG=1``
    build after a release build in the same tree would reuse the release .so.
    """

    def run(self):
        stamp = os.path.join(self.build_temp, "ackring-build-mode")
        try:
            with open(stamp) as f:
                previous = f.read()
        except OSError:
            previous = None
        if previous != BUILD_MODE:
            self.force = True
        super().run()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(BUILD_MODE)


extensions = [
    Extension(
        "ackring.backend.cython._core",
        sources=["src/ackring/backend/cython/_core.pyx", "ext/ackring.c"],
        include_dirs=["ext"],
        depends=["ext/ackring.h"],
        define_macros=define_macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        build_dir=os.path.join("build", "cython-debug" if DEBUG else "cython"),
        quiet=True,
    ),
    cmdclass={"build_ext": BuildExt},
)
