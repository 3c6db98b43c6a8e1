"""cffi builder of ``ackring.backend.cffi._ackring_cffi`` (out-of-line API mode).

setup.py hands this file to cffi (``cffi_modules=[".../_build.py:ffibuilder"]``),
so ``pip install .`` compiles the C core in ext/ a second time, into this module, next
to the Cython extension.  The C core is used unchanged, and so is its header: ``cdef`` is read
from ext/ackring.h itself (cdef_from_header), so no declaration is written twice.

The compiler flags come from :func:`build_flags`, which setup.py uses for the
Cython extension too, so ``ACKRING_DEBUG`` / ``ACKRING_SANITIZE`` apply to both.
Paths are relative to the project root (where setup.py runs).

Stand-alone, for a quick in-tree build: ``python src/ackring/backend/cffi/_build.py``
from the project root writes the module into src/ackring/backend/cffi/.
"""
import glob
import os
import re
import sys

from cffi import FFI


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


def build_flags():
    """(debug, sanitize, compile_args, link_args, define_macros) from the environment."""
    debug = _flag("ACKRING_DEBUG")
    sanitize = _sanitizers()
    compile_args = [
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-fno-strict-aliasing",
        # the core's functions are the extension's own: hidden, so calls
        # between ext/*.c are direct (no PLT) and may be inlined; only the
        # module's init function (visibility set by Python's headers) is exported
        "-fvisibility=hidden",
    ]
    link_args = []
    define_macros = []
    if debug:
        compile_args += ["-O0", "-g", "-UNDEBUG"]  # CPython's CFLAGS carry -DNDEBUG: keep assert() on
        define_macros.append(("ACKRING_DEBUG", "1"))
    elif _flag("ACKRING_PROFILE"):
        # release code with debug info and symbols, for perf and callgrind
        compile_args += ["-O2", "-g"]
    else:
        # release: -O2, no debug info (-g0 overrides the -g in Python's own
        # CFLAGS), symbols stripped at link time
        compile_args += ["-O2", "-g0"]
        link_args += ["-s"]
    if not debug and not sanitize and os.environ.get("ACKRING_LTO", "1").strip().lower() not in ("0", "no", "false", "off"):
        # link-time optimisation across the rooms of the core (ext/*.c): the
        # hot path's small functions (ring ops, slot transitions) inline into
        # each other; 7.6% fewer instructions per message on the batch path,
        # 3.3% on the per-message one (BENCHMARKS.md, "put_batch").
        # ACKRING_LTO=0 turns it off (a toolchain without LTO support).
        compile_args += ["-flto=auto"]
        link_args += ["-O2", "-flto=auto"]
    if sanitize:
        compile_args += ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer"]
        link_args += ["-fsanitize=" + sanitize]
    return debug, sanitize, compile_args, link_args, define_macros


def cdef_from_header(path):
    """The declarations of ext/ackring.h in the form cffi's cdef takes.

    The header is the one source: comments and preprocessor guards go, every
    ``#define NAME value`` becomes ``#define NAME ...`` (cffi asks the
    compiler for the value), and ``ar_put`` takes ``const char *`` so a bytes
    object passes as a pointer to its own storage, no copy.  cffi compiles a
    check of every declaration against the real header.
    """
    with open(path) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    out = []
    skip = 0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#ifdef __cplusplus"):
            skip = 1
            continue
        if skip:
            if stripped.startswith("#endif"):
                skip = 0
            continue
        m = re.match(r"#define\s+(AR_\w+)\s+\S", stripped)
        if m:
            out.append("#define %s ..." % m.group(1))
            continue
        if stripped.startswith("#"):
            continue
        out.append(line)
    cdef = "\n".join(out)
    cdef = cdef.replace("int ar_put(ar_client *c, const void *data,", "int ar_put(ar_client *c, const char *data,")
    return cdef


def make_builder(module="ackring.backend.cffi._ackring_cffi", root="."):
    _debug, _sanitize, compile_args, link_args, define_macros = build_flags()
    ffi = FFI()
    ffi.cdef(cdef_from_header(os.path.join(root, "ext", "ackring.h")))
    ffi.set_source(
        module,
        '#include "ackring.h"',
        sources=sorted(glob.glob(os.path.join(root, "ext", "*.c"))),
        include_dirs=[os.path.join(root, "ext")],
        depends=sorted(glob.glob(os.path.join(root, "ext", "*.h"))),
        define_macros=define_macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    # In-tree build: the module lands in src/ackring/backend/cffi/.
    ffibuilder.compile(tmpdir="src", verbose=True)
