"""cffi builder of ``ackring.backend.cffi._ackring_cffi`` (out-of-line API mode).

setup.py hands this file to cffi (``cffi_modules=[".../_build.py:ffibuilder"]``),
so ``pip install .`` compiles ext/ackring.c a second time, into this module, next
to the Cython extension.  The C core is used unchanged: ``cdef`` below repeats
the parts of ext/ackring.h the Python layer (_core.py) calls, and the C compiler
checks them against the real header (``...`` lets it fill in values and
layouts).

The compiler flags come from :func:`build_flags`, which setup.py uses for the
Cython extension too, so ``ACKRING_DEBUG`` / ``ACKRING_SANITIZE`` apply to both.
Paths are relative to the project root (where setup.py runs).

Stand-alone, for a quick in-tree build: ``python src/ackring/backend/cffi/_build.py``
from the project root writes the module into src/ackring/backend/cffi/.
"""
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
    ]
    link_args = []
    define_macros = []
    if debug:
        compile_args += ["-O0", "-g", "-UNDEBUG"]  # CPython's CFLAGS carry -DNDEBUG: keep assert() on
        define_macros.append(("ACKRING_DEBUG", "1"))
    else:
        compile_args += ["-O2"]
    if sanitize:
        compile_args += ["-fsanitize=" + sanitize, "-fno-omit-frame-pointer"]
        link_args += ["-fsanitize=" + sanitize]
    return debug, sanitize, compile_args, link_args, define_macros


CDEF = r"""
/* status codes */
#define AR_OK ...
#define AR_EMPTY ...
#define AR_FULL ...
#define AR_AGAIN ...
#define AR_TOOBIG ...
#define AR_STALE ...
#define AR_CORRUPT ...
#define AR_INCOMPATIBLE ...
#define AR_TABLE_FULL ...
#define AR_EXISTS ...
#define AR_NOTFOUND ...
#define AR_INVAL ...
#define AR_ERRNO ...

/* slot states, settle outcomes, dead-letter reasons, roles */
#define AR_S_FREE ...
#define AR_S_WRITING ...
#define AR_S_READY ...
#define AR_S_DELIVERED ...
#define AR_OUT_ACKED ...
#define AR_OUT_DROPPED ...
#define AR_OUT_DEAD ...
#define AR_OUT_DISCARDED ...
#define AR_OUT_NONE ...
#define AR_DL_REJECTED ...
#define AR_DL_DELIVERY_LIMIT ...
#define AR_DL_EXPIRED ...
#define AR_DL_LEASE_EXPIRED ...
#define AR_ROLE_PRODUCER ...
#define AR_ROLE_CONSUMER ...
#define AR_ROLE_OBSERVER ...
#define AR_DEATH_SIZE ...
#define AR_MAX_CLIENTS ...
#define AR_WAIT_SLICE_NS ...
#define AR_NO_DEADLINE ...

typedef struct ar_delivery {
    uint64_t pos;
    uint64_t word;
    const unsigned char *data;
    uint32_t len;
    uint32_t delivery_count;
    uint64_t publish_ns;
    uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns;
    uint32_t dead_reason, dead_delivery_count;
    ...;
} ar_delivery;

typedef struct ar_config {
    uint32_t max_deliveries;
    uint32_t is_dlq;
    uint64_t default_ttl_ns;
    uint64_t ack_timeout_ns;
    ...;
} ar_config;

typedef struct ar_stats {
    uint64_t depth, in_flight, published, acked, nacked, redelivered, discarded, dropped;
    uint64_t rejected, dl_delivery_limit, dl_expired, dl_lease_expired, lease_expired, dlq_dropped;
    uint32_t producers, consumers, capacity, message_size, max_clients;
    uint64_t head, tail, requeued_hint;
    ...;
} ar_stats;

typedef struct ar_client_info {
    uint32_t index, role, pid, state;
    uint64_t start_time;
    uint64_t word;
    uint32_t mine;
    ...;
} ar_client_info;

typedef struct ar_queue ar_queue;

typedef struct ar_iovec {
    const void *data;
    size_t len;
    ...;
} ar_iovec;

typedef struct ar_header_raw {
    uint64_t magic, queue_id, total_size, head, tail, requeued, reclaim_lock;
    uint32_t version, header_size, capacity, message_size, slot_size, max_clients;
    uint32_t consumers_waiting, producers_waiting, leases_seen;
    ...;
} ar_header_raw;

typedef struct ar_slot_raw {
    uint64_t word, id;
    uint32_t len;
    ...;
} ar_slot_raw;

int ar_create(const char *dir, const char *name, uint32_t capacity, uint32_t message_size,
              uint32_t max_clients, int mode, const ar_config *cfg, ar_queue **out);
void ar_get_config(const ar_queue *q, ar_config *cfg);
void ar_attach_dlq(ar_queue *q, ar_queue *dlq, uint32_t dlq_entry);
int ar_open(const char *dir, const char *name, ar_queue **out);
int ar_unlink(const char *dir, const char *name);
void ar_close(ar_queue *q);
int ar_check_name(const char *name);

uint32_t ar_capacity(const ar_queue *q);
uint32_t ar_message_size(const ar_queue *q);
uint32_t ar_max_clients(const ar_queue *q);
uint64_t ar_queue_id(const ar_queue *q);
uint64_t ar_created_ns(const ar_queue *q);

int ar_register(ar_queue *q, uint32_t role, uint32_t pid, uint64_t start_time, uint32_t *entry);
int ar_unregister(ar_queue *q, uint32_t entry);
int ar_entry_ok(const ar_queue *q, uint32_t entry);
void ar_wake_all(ar_queue *q);
int ar_get_client(const ar_queue *q, uint32_t index, ar_client_info *out);
int ar_reclaim_entry(ar_queue *q, uint32_t reclaimer, uint32_t index, uint64_t verdict_word,
                     uint64_t start_time, uint32_t *repaired);

/* `data` is declared `const char *` (it is `const void *` in ackring.h):
 * then a bytes object is passed as a pointer to its own storage, no copy. */
int ar_put(ar_queue *q, uint32_t entry, const char *data, size_t len, uint64_t deadline_ns,
           uint64_t ttl_ns, uint64_t *id);
int ar_get(ar_queue *q, uint32_t entry, ar_delivery *d, uint64_t deadline_ns, uint64_t lease_ns);
int ar_ack(ar_queue *q, uint32_t entry, const ar_delivery *d);
int ar_nack(ar_queue *q, uint32_t entry, const ar_delivery *d, int requeue);
int ar_extend(ar_queue *q, uint32_t entry, const ar_delivery *d, uint64_t lease_ns);
int ar_expire_leases(ar_queue *q, uint32_t entry, uint32_t *n);
int ar_wait_settled(ar_queue *q, uint32_t entry, uint64_t id, uint64_t deadline_ns, uint32_t *outcome);
int ar_put_many(ar_queue *q, uint32_t entry, const ar_iovec *msgs, size_t n, uint64_t deadline_ns,
                uint64_t ttl_ns, uint64_t *ids, size_t *done);
int ar_get_many(ar_queue *q, uint32_t entry, ar_delivery *ds, size_t n, uint64_t deadline_ns,
                uint64_t lease_ns, size_t *got);
int ar_ack_many(ar_queue *q, uint32_t entry, const ar_delivery *ds, size_t n, int *rcs);

int ar_reserve(ar_queue *q, uint32_t entry, uint64_t deadline_ns, uint64_t *pos, unsigned char **buf);
int ar_commit(ar_queue *q, uint32_t entry, uint64_t pos, size_t len, uint64_t ttl_ns);
int ar_abort(ar_queue *q, uint32_t entry, uint64_t pos);

int ar_stats_read(const ar_queue *q, ar_stats *st);
int ar_inspect_header(const ar_queue *q, ar_header_raw *out);
int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *out);
int ar_inspect_client_waiting(const ar_queue *q, uint32_t index, uint32_t *waiting);

int ar_set_test_hook(const char *point);
uint64_t ar_now_ns(void);
"""


def make_builder(module="ackring.backend.cffi._ackring_cffi", root="."):
    _debug, _sanitize, compile_args, link_args, define_macros = build_flags()
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module,
        '#include "ackring.h"',
        sources=[os.path.join(root, "ext", "ackring.c")],
        include_dirs=[os.path.join(root, "ext")],
        depends=[os.path.join(root, "ext", "ackring.h")],
        define_macros=define_macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    # In-tree build: the module lands in src/ackring/backend/cffi/.
    ffibuilder.compile(tmpdir="src", verbose=True)
