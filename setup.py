"""Build ackring's two C extensions, one per backend, over the same C core:

``ackring.backend.cython._core``
    the Cython wrapper compiled together with ext/ackring.c (CPython path);
``ackring.backend.cffi._ackring_cffi``
    the cffi module of ext/ackring.c (PyPy path), described by
    src/ackring/backend/cffi/_build.py and handed to cffi through
    ``cffi_modules``.

On PyPy only the cffi module is built (Cython extensions run slowly there,
through cpyext).  All package metadata lives in pyproject.toml.

Environment switches, read at build time, for both extensions:

``ACKRING_DEBUG=1``
    ``-O0 -g -DACKRING_DEBUG=1`` and Cython bounds/wraparound checks on.
``ACKRING_PROFILE=1``
    the release build (``-O2``) with debug info and symbols kept, for
    ``perf`` and ``valgrind --tool=callgrind``.
``ACKRING_LTO=0``
    release and profile builds use link-time optimisation (``-flto=auto``)
    across ext/*.c; this turns it off, for a toolchain without LTO.
``ACKRING_SANITIZE=1`` (or a sanitizer list such as ``address,undefined``)
    ``-fsanitize=... -fno-omit-frame-pointer`` on compile and link.  An
    ASan-built extension has to be run with the sanitizer runtime preloaded,
    e.g. ``LD_PRELOAD=$(gcc -print-file-name=libasan.so) python -m pytest``
    (plus ``ASAN_OPTIONS=detect_leaks=0``, CPython itself "leaks" at exit).

Switching modes in the same checkout rebuilds everything: the build mode is
stamped in build/ and a changed stamp forces a full rebuild, and the Cython
output of debug and release builds lives in separate directories.
"""

import glob
import importlib.util
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CFFI_BUILD = "src/ackring/backend/cffi/_build.py"
PYPY = platform.python_implementation() == "PyPy"


def _load_cffi_build():
    """_build.py as a module: it holds the compiler flags both extensions use."""
    spec = importlib.util.spec_from_file_location("_ackring_cffi_build", os.path.join(HERE, CFFI_BUILD))
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:  # pragma: no cover - pyproject.toml lists cffi as a build requirement
        sys.exit("ackring: building needs cffi>=1.15 (pip installs it from pyproject.toml's build requirements): %s" % e)
    return mod


def _check_python_h():
    """Say clearly what to install when the Python headers are missing,
    instead of gcc's "Python.h: No such file or directory"."""
    import sysconfig

    inc = sysconfig.get_paths().get("include") or ""
    if os.path.exists(os.path.join(inc, "Python.h")) or os.environ.get("ACKRING_SKIP_HEADER_CHECK"):
        return
    sys.exit("ackring: building needs the Python development headers (%s/Python.h is missing).\n"
             "  Debian/Ubuntu: apt-get install python3-dev   (PyPy: pypy3-dev)\n"
             "  Fedora/RHEL:   dnf install python3-devel\n"
             "  Alpine:        apk add python3-dev" % inc)


if any(cmd.startswith(("build", "bdist", "install", "develop", "editable")) for cmd in sys.argv[1:]):
    _check_python_h()

# The C core, one file per concern (ext/ackring.h lists them), compiled into both extensions.
CORE_SOURCES = sorted(glob.glob("ext/*.c"))
CORE_HEADERS = sorted(glob.glob("ext/*.h"))

DEBUG, SANITIZE, compile_args, link_args, define_macros = _load_cffi_build().build_flags()

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": not DEBUG,
}

BUILD_MODE = "debug=%d sanitize=%s profile=%s lto=%s" % (DEBUG, SANITIZE or "-", os.environ.get("ACKRING_PROFILE", "-"),
                                                        os.environ.get("ACKRING_LTO", "-"))


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
        sources=["src/ackring/backend/cython/_core.pyx"] + CORE_SOURCES,
        include_dirs=["ext"],
        depends=CORE_HEADERS,
        define_macros=define_macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]


def _cython_extensions():
    if PYPY:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:  # pragma: no cover - pyproject.toml lists Cython as a build requirement
        sys.exit("ackring: building needs Cython>=3.0 (pip installs it from pyproject.toml's build requirements)")
    return cythonize(
        extensions,
        compiler_directives=directives,
        build_dir=os.path.join("build", "cython-debug" if DEBUG else "cython"),
        quiet=True,
    )


setup(
    ext_modules=_cython_extensions(),
    # cffi's setuptools hook adds the cffi module to ext_modules and generates
    # its C source in build_ext (ours, so a mode change rebuilds it too).
    cffi_modules=[CFFI_BUILD + ":ffibuilder"],
    cmdclass={"build_ext": BuildExt},
)
