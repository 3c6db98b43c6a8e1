/*
 * ackring.c - the C core.  Read ackring.h first, then docs/design.md.
 *
 * Conventions used in every comment on an atomic below:
 *   "who"   - which process writes the field, and in which slot state;
 *   "order" - why that memory ordering is enough.
 * Invariants I1..I6 are stated in docs/design.md and named where they are kept.
 */
#define _GNU_SOURCE
#include "ackring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define AR_CACHELINE 64
#define AR_ALIGNED __attribute__((aligned(AR_CACHELINE)))

/* Shorthands for the GCC/Clang __atomic builtins; every use names its order. */
#define LOAD(p, o) __atomic_load_n((p), (o))
#define STORE(p, v, o) __atomic_store_n((p), (v), (o))
#define CAS(p, expp, v, so, fo) __atomic_compare_exchange_n((p), (expp), (v), 0, (so), (fo))
#define FADD(p, v, o) __atomic_fetch_add((p), (v), (o))
#define FSUB(p, v, o) __atomic_fetch_sub((p), (v), (o))
#define RLX __ATOMIC_RELAXED
#define ACQ __ATOMIC_ACQUIRE
#define REL __ATOMIC_RELEASE
#define ACQREL __ATOMIC_ACQ_REL
#define SEQ __ATOMIC_SEQ_CST

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

/* ------------------------------------------------------------------------
 * Segment layout.  Offsets and sizes are fixed by AR_VERSION; docs/design.md
 * has the table.  Everything in the first cache line is written once by the
 * creator before the segment gets its public name (link(2)), and is validated
 * and copied into the process-local ar_queue at open; it is never trusted
 * again after that.
 * ------------------------------------------------------------------------ */
typedef struct ar_header {
    /* line 0: immutable geometry */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint32_t capacity;
    uint32_t message_size;
    uint32_t slot_size;
    uint32_t max_clients;
    uint64_t flags;
    uint64_t created_ns; /* CLOCK_REALTIME at creation */
    uint64_t queue_id;   /* random, from getrandom(2): tells re-creations of a name apart */
    uint64_t total_size;

    /* line 1: producer side.
     * tail: next ring position to claim.  A hint (I1): advanced only by
     * CAS(t -> t+1) after slot t was claimed, by the claimer or by any
     * process that finds slot t claimed ("helping"), so a process dying
     * between its claim and its advance leaves nothing half done (I2). */
    uint64_t tail AR_ALIGNED;
    uint32_t not_full_seq;      /* futex word producers sleep on; bumped by settles */
    uint32_t producers_waiting; /* producers between announce and leave of a sleep  */

    /* line 2: consumer side, same rules as tail. */
    uint64_t head AR_ALIGNED;
    /* requeued: an upper bound on the number of READY slots behind head
     * (requeued by nack or reclaim).  Raised before such a slot becomes
     * READY, lowered after it is taken, so it is never below the truth (I5). */
    uint64_t requeued;
    uint32_t not_empty_seq;     /* futex word consumers sleep on; bumped by publishes */
    uint32_t consumers_waiting;

    /* line 3: delivery rules, written once by the creator (like line 0) and
     * validated at open. */
    uint32_t max_deliveries AR_ALIGNED; /* 0 = unlimited */
    uint32_t dlq_overhead;              /* bytes of dead-letter header in a DLQ message (0 if not a DLQ) */
    uint64_t default_ttl_ns;            /* 0 = none */
    uint64_t ack_timeout_ns;            /* default lease of a delivery; 0 = none */

    /* line 4: rarely written */
    uint64_t reclaim_lock AR_ALIGNED; /* 0, or the reclaimer's pid << 32 | its entry's seq << 16 |
                                       * its entry + 1; taken and released by CAS */
    uint32_t leases_seen;             /* set (relaxed) once any delivery carried a lease */
    uint32_t pad4;

    /* lines 5-6: counters folded in from freed entries (relaxed fetch-add) */
    uint64_t retired[16] AR_ALIGNED;
} ar_header;

/* A process-table entry: one per attached producer or consumer object. */
/* Entry word: bits 0..7 state, 8..15 role, 16..31 seq (bumped by every
 * claim, so each registration of an index is told apart from the next),
 * 32..63 pid. */
enum { AR_C_FREE = 0, AR_C_CLAIMING = 1, AR_C_ACTIVE = 2, AR_C_DEAD = 3, AR_C_CLOSING = 4 };
#define CW_STATE(w) ((uint32_t)((w) & 0xFFu))
#define CW_ROLE(w) ((uint32_t)(((w) >> 8) & 0xFFu))
#define CW_SEQ(w) ((uint32_t)(((w) >> 16) & 0xFFFFu))
#define CW_PID(w) ((uint32_t)((w) >> 32))
#define CWORD(state, role, pid, seq)                                                                 \
    (((uint64_t)(pid) << 32) | ((uint64_t)((seq) & 0xFFFFu) << 16) | ((uint64_t)(role) << 8) | (state))
#define CW_WITH_STATE(w, state) (((w) & ~(uint64_t)0xFFu) | (state))

enum {
    CNT_PUBLISHED, CNT_ACKED, CNT_NACKED, CNT_REDELIVERED, CNT_DISCARDED, CNT_DROPPED,
    CNT_DL_REJECTED, CNT_DL_LIMIT, CNT_DL_EXPIRED, CNT_DL_LEASE, CNT_LEASE_EXPIRED, CNT_DLQ_DROPPED,
    CNT_N
};
/* A client's `waiting` word counts its threads asleep on each side: the low
 * 16 bits on the consumer side, the high 16 on the producer side. */
#define WAIT_CONSUMER 1u
#define WAIT_PRODUCER 0x10000u

typedef struct ar_client {
    uint64_t word;       /* CWORD; FREE -> CLAIMING by CAS (the claimer, seq + 1), -> ACTIVE by
                          * the claimer's CAS, -> CLOSING by the owner's CAS (unregister), or
                          * -> DEAD by a reclaimer's CAS on a dead owner's exact word,
                          * -> FREE (seq kept) by whoever then released its slots. */
    uint64_t start_time; /* written by the claimer while CLAIMING, read after ACTIVE (acquire) */
    uint64_t count[CNT_N]; /* statistics, written only by the owner (relaxed fetch-add) */
    uint32_t waiting;      /* WAIT_* counts: changed only by the owner's threads while counted in a
                            * waiters word; taken (exchanged to 0) by the reclaimer of a dead owner
                            * (a live closer's sleepers take their own counts out) */
    uint32_t pad;
    uint64_t nacking;      /* position + 1 of a nack(requeue) between its hint increment and its
                            * CAS, else 0; written only by the owner (relaxed), read by reclaim */
} AR_ALIGNED ar_client;

/* Slot header; the payload follows it, slot_size bytes per slot in all. */
typedef struct ar_slot {
    uint64_t word;       /* the slot word (ackring.h).  Every state change is one CAS on it. */
    uint64_t id;         /* ring position; written by the WRITING owner */
    uint32_t len;        /* payload length; written by the WRITING owner, bounds-checked by readers */
    uint32_t flags;
    uint64_t publish_ns; /* CLOCK_REALTIME at publish; written by the WRITING owner */
    uint64_t expire_ns;  /* CLOCK_MONOTONIC expiry (TTL), 0 = none; written by the WRITING owner */
    uint64_t lease;      /* LEASE(gen, deadline_us): written by the DELIVERED owner (get, extend);
                          * read by the lease scan, which acts only if gen matches the word's */
    uint64_t reserved[2];
} ar_slot;
#define LEASE(gen, us) (((uint64_t)(gen) << 48) | ((us) & 0xFFFFFFFFFFFFull))
#define LEASE_GEN(l) ((uint32_t)((l) >> 48))
#define LEASE_US(l) ((l) & 0xFFFFFFFFFFFFull)

/* Dead-letter header at the start of every DLQ message (little-endian, 40 bytes). */
typedef struct ar_death {
    uint64_t original_id;
    uint64_t queue_id;   /* of the queue it died in */
    uint64_t publish_ns; /* CLOCK_REALTIME of its first publish */
    uint64_t dead_ns;    /* CLOCK_REALTIME of dead-lettering */
    uint32_t reason;     /* AR_DL_* */
    uint32_t delivery_count;
} ar_death;

struct ar_queue {
    unsigned char *base;
    size_t size;
    ar_header *hdr;
    ar_client *clients;
    unsigned char *slots;
    /* geometry validated at open; local copies, never re-read from shared memory */
    uint32_t capacity, mask, shift, message_size, slot_size, max_clients;
    uint64_t queue_id, created_ns;
    ar_config cfg;     /* delivery rules, validated at open */
    ar_queue *dlq;     /* this process's handle on the dead-letter queue, or NULL */
    uint32_t dlq_entry; /* our producer entry in it */
    /* mine[i]: the ACTIVE word this process installed in entry i, or 0.
     * Process-local; lets every operation check, with one load, that entry i
     * is still this very registration (not closed, not reclaimed from under
     * us by a wrong verdict, not re-taken by someone else).  Written under
     * the caller's lock (the GIL), read by waits without it: relaxed atomics. */
    uint64_t *mine;
};

_Static_assert(sizeof(ar_slot) == 64, "slot header is one cache line");
_Static_assert(sizeof(ar_client) == 128, "client entry is two cache lines");
_Static_assert(sizeof(ar_death) == AR_DEATH_SIZE, "dead-letter header");
_Static_assert(offsetof(ar_header, tail) == 64, "layout v1");
_Static_assert(offsetof(ar_header, head) == 128, "layout v1");
_Static_assert(offsetof(ar_header, max_deliveries) == 192, "layout v1");
_Static_assert(offsetof(ar_header, reclaim_lock) == 256, "layout v1");
_Static_assert(offsetof(ar_header, retired) == 320, "layout v1");
_Static_assert(sizeof(ar_header) == 448, "layout v1");
_Static_assert(CNT_N <= 16, "retired[] holds every counter");

/* ---------------------------------------------------------------- helpers */

static inline uint32_t slot_size_for(uint32_t message_size) {
    uint64_t s = sizeof(ar_slot) + (uint64_t)message_size;
    return (uint32_t)((s + AR_CACHELINE - 1) & ~(uint64_t)(AR_CACHELINE - 1));
}
static inline uint64_t clients_offset(void) { return sizeof(ar_header); }
static inline uint64_t slots_offset(uint32_t max_clients) {
    return clients_offset() + (uint64_t)max_clients * sizeof(ar_client);
}
static inline uint64_t total_size_for(uint32_t cap, uint32_t msz, uint32_t max_clients) {
    return slots_offset(max_clients) + (uint64_t)cap * slot_size_for(msz);
}
static inline ar_slot *slot_at(const ar_queue *q, uint64_t pos) {
    /* The mask keeps every index in bounds whatever pos a corrupted head/tail holds. */
    return (ar_slot *)(q->slots + (size_t)(pos & q->mask) * q->slot_size);
}
static inline uint32_t lap_of(const ar_queue *q, uint64_t pos) { return (uint32_t)(pos >> q->shift); }
static inline unsigned char *payload(ar_slot *s) { return (unsigned char *)(s + 1); }
static inline uint32_t next_gen(uint32_t g) { return g >= 0xFFFFu ? 1u : g + 1u; }
static inline uint32_t prev_gen(uint32_t g) { return g <= 1u ? 0u : g - 1u; }

uint64_t ar_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static uint64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void count(ar_queue *q, uint32_t entry, int which, uint64_t n) {
    if (entry < q->max_clients)
        /* who: the entry's owner only; relaxed: a statistic, ordered with nothing. */
        FADD(&q->clients[entry].count[which], n, RLX);
}

/* ---- test hook (see ar_set_test_hook).  ar_hook is process-local. */
enum {
    H_OFF = 0, H_PUT_CLAIMED, H_PUT_WRITING, H_GET_CLAIMED, H_ACK_BEFORE, H_ACK_AFTER,
    H_NACK_HINT, H_REGISTER_CLAIMED, H_RECLAIM_LOCKED, H_COUNT
};
static const char *const hook_names[H_COUNT] = {
    "", "put_claimed", "put_writing", "get_claimed", "ack_before", "ack_after",
    "nack_hint", "register_claimed", "reclaim_locked"};
static int ar_hook = H_OFF;
#define HOOK(point)                                                             \
    do {                                                                        \
        if (__builtin_expect(ar_hook == (point), 0))                            \
            raise(SIGSTOP);                                                     \
    } while (0)

int ar_set_test_hook(const char *point) {
    if (!point || !*point) {
        ar_hook = H_OFF;
        return AR_OK;
    }
    for (int i = 1; i < H_COUNT; i++)
        if (strcmp(point, hook_names[i]) == 0) {
            ar_hook = i;
            return AR_OK;
        }
    return AR_INVAL;
}
/* How long a blocking call spins before it sleeps on the futex. */
static uint64_t ar_spin_ns = 10000;

__attribute__((constructor)) static void settings_from_env(void) {
    const char *p = getenv("ACKRING_TEST_STOP_AT");
    if (p)
        ar_set_test_hook(p);
    p = getenv("ACKRING_SPIN_US");
    if (p && *p) {
        char *end;
        unsigned long long us = strtoull(p, &end, 10);
        if (*end == 0 && us <= 1000000ull)
            ar_spin_ns = us * 1000ull;
    }
}

/* Futex on a word in the shared mapping: not FUTEX_PRIVATE, the waiters are
 * other processes.  The timeout is relative, measured on CLOCK_MONOTONIC. */
static void futex_wait(uint32_t *addr, uint32_t expected, uint64_t timeout_ns) {
    struct timespec ts = {(time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull)};
    syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
    /* EAGAIN (word moved), EINTR (signal) and ETIMEDOUT all mean: re-check. */
}
static void futex_wake_all(uint32_t *addr) { syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); }

/* I6 (no lost wakeup), publisher half.  Wake sleepers of one side if any announced themselves.  Called right after a
 * seq_cst CAS that made the awaited condition true: that CAS and the seq_cst
 * load of *waiting pair with the sleeper's seq_cst fetch-add on *waiting and its
 * seq_cst re-check (Dekker), so either we see the sleeper or it sees our CAS.
 * No syscall when nobody waits (the fast path). */
static inline void wake_side(uint32_t *waiting, uint32_t *seq) {
    if (LOAD(waiting, SEQ) != 0) {
        FADD(seq, 1, SEQ); /* moves the word so a sleeper about to FUTEX_WAIT returns EAGAIN */
        futex_wake_all(seq);
    }
}
static inline void wake_consumers(ar_queue *q) { wake_side(&q->hdr->consumers_waiting, &q->hdr->not_empty_seq); }
static inline void wake_producers(ar_queue *q) { wake_side(&q->hdr->producers_waiting, &q->hdr->not_full_seq); }

/* Advance a shared position from `from` to `from + 1` if nobody did yet.
 * Failure means another process helped: positions only grow. */
static inline void help_advance(uint64_t *pos, uint64_t from) {
    uint64_t expected = from;
    /* release: publishes nothing by itself; readers re-validate the slot word. */
    CAS(pos, &expected, from + 1, REL, RLX);
}

/* ---------------------------------------------------------------- names, files */

int ar_check_name(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > AR_NAME_MAX || name[0] == '.')
        return AR_INVAL;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return AR_INVAL;
    }
    return AR_OK;
}

static int seg_path(char *buf, size_t bufsz, const char *dir, const char *name) {
    int n = snprintf(buf, bufsz, "%s/ackring.%s", dir, name);
    return (n < 0 || (size_t)n >= bufsz) ? AR_INVAL : AR_OK;
}

static int map_queue(int fd, size_t size, ar_queue **out) {
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return AR_ERRNO;
    ar_queue *q = calloc(1, sizeof *q);
    if (!q) {
        munmap(base, size);
        errno = ENOMEM;
        return AR_ERRNO;
    }
    q->base = base;
    q->size = size;
    q->hdr = (ar_header *)base;
    *out = q;
    return AR_OK;
}

static void set_geometry(ar_queue *q, uint32_t cap, uint32_t msz, uint32_t max_clients) {
    q->capacity = cap;
    q->mask = cap - 1;
    q->shift = (uint32_t)__builtin_ctz(cap);
    q->message_size = msz;
    q->slot_size = slot_size_for(msz);
    q->max_clients = max_clients;
    q->clients = (ar_client *)(q->base + clients_offset());
    q->slots = q->base + slots_offset(max_clients);
}

static inline int entry_is_mine(const ar_queue *q, uint32_t e) {
    /* seq_cst: the load half of the store-load pairing with a closer or
     * reclaimer that marks the entry CLOSING/DEAD before scanning slots. */
    uint64_t m = LOAD(&q->mine[e], RLX);
    return m != 0 && LOAD(&q->clients[e].word, SEQ) == m;
}

int ar_create(const char *dir, const char *name, uint32_t capacity, uint32_t message_size,
              uint32_t max_clients, int mode, const ar_config *cfg, ar_queue **out) {
    if (ar_check_name(name) != AR_OK || capacity < 2 || capacity > AR_MAX_CAPACITY ||
        (capacity & (capacity - 1)) != 0 || message_size < 1 || message_size > AR_MAX_MESSAGE_SIZE ||
        max_clients < 1 || max_clients > AR_MAX_CLIENTS || !cfg ||
        (cfg->is_dlq && message_size < AR_DEATH_SIZE))
        return AR_INVAL;
    char path[4096], tmp[4096];
    if (seg_path(path, sizeof path, dir, name) != AR_OK)
        return AR_INVAL;
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = realtime_ns() ^ ((uint64_t)getpid() << 32);
    int n = snprintf(tmp, sizeof tmp, "%s/.ackring.%s.%d.%016llx.tmp", dir, name, (int)getpid(),
                     (unsigned long long)rnd);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return AR_INVAL;
    uint64_t size = total_size_for(capacity, message_size, max_clients);
    if (size > (uint64_t)SIZE_MAX / 2)
        return AR_INVAL;

    /* Build the whole segment under a private temporary name, then give it its
     * public name with link(2), which fails with EEXIST atomically: an opener
     * never sees a half-initialised segment, and a creator killed at any point
     * leaves at worst a stray temporary file, never a broken queue. */
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
    int rc = AR_ERRNO;
    ar_queue *q = NULL;
    if (fchmod(fd, (mode_t)mode & 07777) != 0)
        goto fail;
    /* posix_fallocate reserves the tmpfs pages now: a full /dev/shm is an
     * ENOSPC here instead of a SIGBUS in some later put(). */
    if ((errno = posix_fallocate(fd, 0, (off_t)size)) != 0)
        goto fail;
    if ((rc = map_queue(fd, (size_t)size, &q)) != AR_OK)
        goto fail;
    set_geometry(q, capacity, message_size, max_clients);
    if (!(q->mine = calloc(max_clients, sizeof *q->mine))) {
        errno = ENOMEM;
        goto fail;
    }
    ar_header *h = q->hdr;
    h->version = AR_VERSION;
    h->header_size = sizeof(ar_header);
    h->capacity = capacity;
    h->message_size = message_size;
    h->slot_size = q->slot_size;
    h->max_clients = max_clients;
    h->created_ns = realtime_ns();
    h->queue_id = rnd ? rnd : 1;
    h->total_size = size;
    h->max_deliveries = cfg->max_deliveries;
    h->dlq_overhead = cfg->is_dlq ? AR_DEATH_SIZE : 0;
    h->default_ttl_ns = cfg->default_ttl_ns;
    h->ack_timeout_ns = cfg->ack_timeout_ns;
    q->cfg = *cfg;
    q->cfg.is_dlq = cfg->is_dlq ? 1 : 0;
    for (uint32_t i = 0; i < capacity; i++) {
        /* lap 0xFFFFFFFF = "lap -1": slot i is free for position i of lap 0. */
        slot_at(q, i)->word = AR_WORD(AR_S_FREE, AR_NO_OWNER, 0, 0xFFFFFFFFu);
    }
    /* release: orders every initialising store before the magic (belt and braces;
     * link(2) below is what actually publishes the segment). */
    STORE(&h->magic, AR_MAGIC, REL);
    q->queue_id = h->queue_id;
    q->created_ns = h->created_ns;
    if (link(tmp, path) != 0) {
        rc = errno == EEXIST ? AR_EXISTS : (errno == ENOENT ? AR_NOTFOUND : AR_ERRNO);
        int e = errno;
        ar_close(q);
        q = NULL;
        errno = e;
        goto fail;
    }
    unlink(tmp);
    close(fd);
    *out = q;
    return AR_OK;
fail : {
    int e = errno;
    if (q)
        ar_close(q);
    unlink(tmp);
    close(fd);
    errno = e;
    return rc;
}
}

int ar_open(const char *dir, const char *name, ar_queue **out) {
    if (ar_check_name(name) != AR_OK)
        return AR_INVAL;
    char path[4096];
    if (seg_path(path, sizeof path, dir, name) != AR_OK)
        return AR_INVAL;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return AR_ERRNO;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < sizeof(ar_header)) {
        close(fd);
        return AR_INCOMPATIBLE;
    }
    /* I4: validate every header field against the others and the file size
     * before anything is derived from it; a copy is read so a concurrent
     * scribbler cannot change a field between its check and its use. */
    ar_header h;
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        close(fd);
        return AR_INCOMPATIBLE;
    }
    if (h.magic != AR_MAGIC || h.version != AR_VERSION || h.header_size != sizeof(ar_header) ||
        h.capacity < 2 || h.capacity > AR_MAX_CAPACITY || (h.capacity & (h.capacity - 1)) != 0 ||
        h.message_size < 1 || h.message_size > AR_MAX_MESSAGE_SIZE ||
        h.slot_size != slot_size_for(h.message_size) || h.max_clients < 1 ||
        h.max_clients > AR_MAX_CLIENTS ||
        h.total_size != total_size_for(h.capacity, h.message_size, h.max_clients) ||
        h.total_size != (uint64_t)st.st_size || h.total_size > (uint64_t)SIZE_MAX / 2 ||
        (h.dlq_overhead != 0 && h.dlq_overhead != AR_DEATH_SIZE) ||
        (h.dlq_overhead && h.message_size < AR_DEATH_SIZE)) {
        close(fd);
        return AR_INCOMPATIBLE;
    }
    ar_queue *q = NULL;
    int rc = map_queue(fd, (size_t)h.total_size, &q);
    int e = errno;
    close(fd);
    if (rc != AR_OK) {
        errno = e;
        return rc;
    }
    set_geometry(q, h.capacity, h.message_size, h.max_clients);
    if (!(q->mine = calloc(h.max_clients, sizeof *q->mine))) {
        ar_close(q);
        errno = ENOMEM;
        return AR_ERRNO;
    }
    q->queue_id = h.queue_id;
    q->created_ns = h.created_ns;
    q->cfg.max_deliveries = h.max_deliveries;
    q->cfg.is_dlq = h.dlq_overhead != 0;
    q->cfg.default_ttl_ns = h.default_ttl_ns;
    q->cfg.ack_timeout_ns = h.ack_timeout_ns;
    *out = q;
    return AR_OK;
}

void ar_get_config(const ar_queue *q, ar_config *cfg) { *cfg = q->cfg; }

void ar_attach_dlq(ar_queue *q, ar_queue *dlq, uint32_t dlq_entry) {
    /* A dead-letter queue has no dead-letter queue of its own. */
    q->dlq = (q->cfg.is_dlq || (dlq && dlq_entry >= dlq->max_clients)) ? NULL : dlq;
    q->dlq_entry = dlq_entry;
}

int ar_unlink(const char *dir, const char *name) {
    if (ar_check_name(name) != AR_OK)
        return AR_INVAL;
    char path[4096];
    if (seg_path(path, sizeof path, dir, name) != AR_OK)
        return AR_INVAL;
    if (unlink(path) != 0)
        return errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
    return AR_OK;
}

void ar_close(ar_queue *q) {
    if (!q)
        return;
    munmap(q->base, q->size);
    free(q->mine);
    free(q);
}

uint32_t ar_capacity(const ar_queue *q) { return q->capacity; }
uint32_t ar_message_size(const ar_queue *q) { return q->message_size; }
uint32_t ar_max_clients(const ar_queue *q) { return q->max_clients; }
uint64_t ar_queue_id(const ar_queue *q) { return q->queue_id; }
uint64_t ar_created_ns(const ar_queue *q) { return q->created_ns; }

/* ---------------------------------------------------------------- process table */

int ar_register(ar_queue *q, uint32_t role, uint32_t pid, uint64_t start_time, uint32_t *entry) {
    if (role < AR_ROLE_PRODUCER || role > AR_ROLE_OBSERVER || pid == 0)
        return AR_INVAL;
    for (uint32_t i = 0; i < q->max_clients; i++) {
        ar_client *c = &q->clients[i];
        uint64_t w = LOAD(&c->word, RLX);
        if (CW_STATE(w) != AR_C_FREE)
            continue;
        /* I2: the entry names its owner (pid) from the instant it is taken, so a
         * claimer killed before ACTIVE is still found and freed by reclaim.
         * acquire: we will reuse whatever the previous owner left; its release
         * store of FREE happens-before our writes. */
        uint32_t seq = CW_SEQ(w) + 1;
        if (!CAS(&c->word, &w, CWORD(AR_C_CLAIMING, role, pid, seq), ACQ, RLX))
            continue;
        HOOK(H_REGISTER_CLAIMED);
        c->start_time = start_time;
        for (int k = 0; k < CNT_N; k++)
            STORE(&c->count[k], 0, RLX);
        /* `waiting` is not reset: sleepers of a previous, closed owner (other
         * threads of a live process) still take their counts out themselves. */
        /* release: start_time and the zeroed counters are visible to whoever
         * reads ACTIVE with acquire (reclaim's liveness check).  A CAS, not a
         * store: if a stale verdict (pid reuse) marked the claim DEAD
         * meanwhile, the reclaimer owns it now and we look further. */
        uint64_t claiming = CWORD(AR_C_CLAIMING, role, pid, seq);
        uint64_t active = CWORD(AR_C_ACTIVE, role, pid, seq);
        if (!CAS(&c->word, &claiming, active, REL, RLX))
            continue;
        STORE(&q->mine[i], active, RLX);
        *entry = i;
        return AR_OK;
    }
    return AR_TABLE_FULL;
}

int ar_get_client(const ar_queue *q, uint32_t index, ar_client_info *out) {
    if (index >= q->max_clients)
        return AR_INVAL;
    const ar_client *c = &q->clients[index];
    uint64_t w = LOAD(&c->word, ACQ); /* acquire: pairs with the release store of ACTIVE */
    out->index = index;
    out->state = CW_STATE(w);
    out->role = CW_ROLE(w);
    out->pid = CW_PID(w);
    out->word = w;
    out->mine = LOAD(&q->mine[index], RLX) == w && w != 0;
    out->start_time = LOAD(&c->start_time, RLX);
    return AR_OK;
}

/* DELIVERED (word *w, held by someone else or by a dead process) -> READY
 * behind head.  Returns 1 on success; on failure *w has the current word. */
static int requeue_slot(ar_queue *q, ar_slot *s, uint32_t i, uint64_t *w, int hint_raised, uint32_t gen) {
    ar_header *h = q->hdr;
    uint32_t lap = AR_W_LAP(*w);
    /* The holder may have died between its slot CAS and its head advance:
     * finish that first, so the slot is behind head when it turns READY (I5)
     * and the head path never takes it twice. */
    uint64_t hd = LOAD(&h->head, ACQ);
    if (lap_of(q, hd) == lap && (hd & q->mask) == i)
        help_advance(&h->head, hd);
    /* I5: the hint goes up before the slot is READY, so it is never low
     * (unless a dead nacker raised it for this very slot already). */
    if (!hint_raised)
        FADD(&h->requeued, 1, SEQ);
    if (CAS(&s->word, w, AR_WORD(AR_S_READY, AR_NO_OWNER, gen, lap), SEQ, ACQ))
        return 1;
    if (!hint_raised)
        FSUB(&h->requeued, 1, RLX); /* lost the race: the hint goes back */
    return 0;
}

/* Put back everything slot-wise that entry `e` holds: WRITING slots are
 * discarded (their put() never returned: nothing confirmed is lost), DELIVERED
 * slots become READY again behind head (I5).  Only called by the owner itself
 * (close) or by the reclaimer holding the lock on a DEAD entry, so no other
 * process acts as `e` meanwhile.  Returns the number of slots repaired. */
static uint32_t release_slots(ar_queue *q, uint32_t e) {
    uint32_t repaired = 0, requeued = 0, discarded = 0;
    ar_header *h = q->hdr;
    /* A nack(requeue) the owner died in, after raising the hint: its slot's
     * requeue below must not raise the hint a second time. */
    uint64_t nacking = LOAD(&q->clients[e].nacking, RLX);
    for (uint32_t i = 0; i < q->capacity; i++) {
        ar_slot *s = slot_at(q, i);
        uint64_t w = LOAD(&s->word, SEQ); /* seq_cst: pairs with takers' entry_is_mine */
        for (;;) {
            uint32_t st = AR_W_STATE(w);
            if (AR_W_OWNER(w) != e || (st != AR_S_WRITING && st != AR_S_DELIVERED))
                break;
            uint32_t lap = AR_W_LAP(w);
            if (st == AR_S_WRITING) {
                /* The writer may have died before advancing tail: finish it (I2). */
                uint64_t t = LOAD(&h->tail, ACQ);
                if (lap_of(q, t) == lap && (t & q->mask) == i)
                    help_advance(&h->tail, t);
                /* seq_cst: pairs with sleeping consumers' re-check (see wake_side). */
                if (CAS(&s->word, &w, AR_WORD(AR_S_FREE, AR_OUT_DISCARDED, 0, lap), SEQ, ACQ)) {
                    repaired++;
                    discarded++;
                    break;
                }
            } else {
                uint64_t pos = nacking ? nacking - 1 : 0;
                int raised = nacking && (pos & q->mask) == i && lap_of(q, pos) == lap;
                if (requeue_slot(q, s, i, &w, raised, AR_W_GEN(w))) {
                    repaired++;
                    requeued++;
                    break;
                }
            }
        }
    }
    if (discarded)
        count(q, e, CNT_DISCARDED, discarded);
    if (requeued)
        wake_consumers(q);
    if (discarded) {
        wake_consumers(q); /* head may move past the discarded position */
        wake_producers(q);
    }
    return repaired;
}

/* Fold an entry's statistics into the retired totals and free the entry. */
static void retire_entry(ar_queue *q, uint32_t e, uint64_t expect_word, int take_waiting) {
    ar_client *c = &q->clients[e];
    for (int k = 0; k < CNT_N; k++) {
        uint64_t v = LOAD(&c->count[k], RLX);
        if (v) {
            /* relaxed: statistics. A death between these two lines counts v twice (documented). */
            FADD(&q->hdr->retired[k], v, RLX);
            STORE(&c->count[k], 0, RLX);
        }
    }
    /* A dead sleeper stays counted in the waiters words: take it out so
     * publishers stop paying for futex wakes nobody needs.  Exchange first:
     * a reclaimer dying after it leaves the count high (harmless), never
     * subtracted twice. */
    if (take_waiting) { /* only for a dead owner: a live closer's sleepers leave by themselves */
        uint32_t wbits = __atomic_exchange_n(&c->waiting, 0, RLX);
        if (wbits & 0xFFFFu)
            FSUB(&q->hdr->consumers_waiting, wbits & 0xFFFFu, SEQ);
        if (wbits >> 16)
            FSUB(&q->hdr->producers_waiting, wbits >> 16, SEQ);
    }
    /* release: everything above happens-before the next claimer's acquire
     * CAS.  FREE keeps seq, so the next claim gets a new one. */
    uint64_t w = expect_word;
    CAS(&c->word, &w, CWORD(AR_C_FREE, 0, 0, CW_SEQ(expect_word)), REL, RLX);
}

int ar_unregister(ar_queue *q, uint32_t entry) {
    if (entry >= q->max_clients)
        return AR_INVAL;
    /* Only this very registration of ours: never another process's entry
     * that took the index after a reclaim freed ours. */
    uint64_t w = LOAD(&q->mine[entry], RLX);
    STORE(&q->mine[entry], 0, RLX);
    if (w == 0)
        return AR_STALE;
    /* CLOSING first (seq_cst), then the scan: a get or put racing on another
     * thread either is seen by the scan or sees the entry is no longer
     * ours and gives its slot back (store-load pairing with entry_is_mine).
     * CLOSING, not DEAD: other processes' reclaim passes leave a live
     * closer alone (they act on CLOSING only if its process is gone). */
    uint64_t closing = CW_WITH_STATE(w, AR_C_CLOSING);
    if (!CAS(&q->clients[entry].word, &w, closing, SEQ, RLX))
        return AR_STALE;
    release_slots(q, entry);
    STORE(&q->clients[entry].nacking, 0, RLX);
    retire_entry(q, entry, closing, 0);
    return AR_OK;
}

int ar_entry_ok(const ar_queue *q, uint32_t entry) {
    return entry < q->max_clients && entry_is_mine(q, entry);
}

void ar_wake_all(ar_queue *q) {
    FADD(&q->hdr->not_empty_seq, 1, SEQ);
    futex_wake_all(&q->hdr->not_empty_seq);
    FADD(&q->hdr->not_full_seq, 1, SEQ);
    futex_wake_all(&q->hdr->not_full_seq);
}

int ar_reclaim_entry(ar_queue *q, uint32_t reclaimer, uint32_t index, uint64_t verdict_word,
                     uint64_t start_time, uint32_t *repaired) {
    *repaired = 0;
    /* reclaimer == max_clients: a caller with no entry of its own (a full table). */
    if (index >= q->max_clients || reclaimer > q->max_clients)
        return AR_INVAL;
    ar_header *h = q->hdr;
    uint32_t pid = CW_PID(verdict_word);
    uint64_t rw = reclaimer < q->max_clients ? LOAD(&q->mine[reclaimer], RLX) : 0;
    /* lock word: holder pid, the holder entry's seq, holder entry + 1 */
    uint64_t me = ((uint64_t)(uint32_t)getpid() << 32) | ((uint64_t)CW_SEQ(rw) << 16) | (reclaimer + 1);
    uint64_t held = 0;
    /* acquire: a previous reclaimer's repairs (release on unlock) are visible. */
    if (!CAS(&h->reclaim_lock, &held, me, ACQ, RLX)) {
        /* Held.  A dead process must not be able to stall recovery, so the
         * lock is broken when its holder is known dead: the caller judged
         * the very entry it is reclaiming dead and that entry is the
         * holder's; or the holder's entry no longer belongs to the holder;
         * or no process has the holder's pid. */
        uint32_t hidx = (uint32_t)(held & 0xFFFFu) - 1, hseq = (uint32_t)((held >> 16) & 0xFFFFu);
        uint32_t hpid = (uint32_t)(held >> 32);
        uint64_t hw = hidx < q->max_clients ? LOAD(&q->clients[hidx].word, ACQ) : 0;
        int holder_dead = (hidx == index && hpid == pid && hseq == CW_SEQ(verdict_word)) ||
                          (hidx < q->max_clients &&
                           (CW_PID(hw) != hpid || CW_SEQ(hw) != hseq || CW_STATE(hw) != AR_C_ACTIVE)) ||
                          (kill((pid_t)hpid, 0) != 0 && errno == ESRCH);
        if (!holder_dead)
            return AR_AGAIN;
        if (!CAS(&h->reclaim_lock, &held, me, ACQ, RLX))
            return AR_AGAIN;
    }
    HOOK(H_RECLAIM_LOCKED);
    int rc = AR_OK;
    ar_client *c = &q->clients[index];
    uint64_t w = LOAD(&c->word, ACQ);
    uint32_t st = CW_STATE(w);
    /* The verdict was about exactly this word (state, seq and pid): any
     * change since (a close finished, the index re-taken, even by the same
     * process) makes it stale.  For a live state the start time must match
     * too. */
    if (w != verdict_word || st == AR_C_FREE ||
        (st != AR_C_DEAD && LOAD(&c->start_time, RLX) != start_time)) {
        rc = AR_STALE;
    } else {
        uint64_t dead = CW_WITH_STATE(w, AR_C_DEAD);
        /* DEAD first: nobody may claim the entry while its slots are repaired,
         * so a repair can never hit a newcomer under the same index. */
        if (st != AR_C_DEAD && !CAS(&c->word, &w, dead, SEQ, ACQ)) {
            rc = AR_STALE;
        } else {
            *repaired = release_slots(q, index);
            STORE(&c->nacking, 0, RLX);
            retire_entry(q, index, dead, 1);
        }
    }
    /* release: our repairs happen-before the next reclaimer's acquire.  A
     * CAS, not a store: if our lock was broken meanwhile (we were judged
     * dead), the successor's lock stays. */
    uint64_t mine_lock = me;
    CAS(&h->reclaim_lock, &mine_lock, 0, REL, RLX);
    return rc;
}

/* ---------------------------------------------------------------- messages */

/* Claim the slot at tail for `e` (FREE of the previous lap -> WRITING) and
 * advance tail.  On AR_OK, *pos and *slot name the claimed position. */
static int claim_slot(ar_queue *q, uint32_t e, uint64_t *pos, ar_slot **slot) {
    ar_header *h = q->hdr;
    for (;;) {
        uint64_t t = LOAD(&h->tail, ACQ);
        ar_slot *s = slot_at(q, t);
        /* acquire: pairs with the consumer's settle CAS, so its reads of the
         * old payload happen-before our overwrite; seq_cst (a plain load on
         * x86) because it is also the re-check half of the Dekker pair in
         * wait_loop (I6). */
        uint64_t w = LOAD(&s->word, SEQ);
        uint32_t lap = lap_of(q, t);
        int32_t d = (int32_t)(AR_W_LAP(w) - lap);
        if (d == -1) {
            if (AR_W_STATE(w) == AR_S_FREE) {
                /* I2: claim the slot first, naming ourselves as owner; acquire as
                 * above, seq_cst for the pairing with a closer (entry_is_mine). */
                if (!CAS(&s->word, &w, AR_WORD(AR_S_WRITING, e, 0, lap), SEQ, RLX))
                    continue;
                HOOK(H_PUT_CLAIMED);
                help_advance(&h->tail, t); /* then the position; anyone may finish this */
                if (!entry_is_mine(q, e)) {
                    /* Our entry was closed or reclaimed: discard the claim
                     * (consumers step over it) rather than write under it. */
                    uint64_t exp = AR_WORD(AR_S_WRITING, e, 0, lap);
                    if (CAS(&s->word, &exp, AR_WORD(AR_S_FREE, AR_OUT_DISCARDED, 0, lap), SEQ, RLX)) {
                        wake_consumers(q);
                        wake_producers(q);
                    }
                    return AR_STALE;
                }
                *pos = t;
                *slot = s;
                return AR_OK;
            }
            /* The slot still holds lap-1's unsettled message: full, unless tail moved. */
            if (LOAD(&h->tail, ACQ) != t)
                continue;
            return AR_FULL;
        }
        if (d == 0) { /* position t already claimed: help tail along */
            help_advance(&h->tail, t);
            continue;
        }
        if (d > 0) /* our tail was stale */
            continue;
        return AR_CORRUPT; /* a slot two laps behind tail cannot happen in a sound segment */
    }
}

/* WRITING -> READY for a slot `e` claimed at `pos`, whose payload is in place. */
static int publish(ar_queue *q, uint32_t e, uint64_t pos, ar_slot *s, uint32_t len, uint64_t ttl_ns) {
    uint32_t lap = lap_of(q, pos);
    uint64_t ttl = q->cfg.default_ttl_ns;
    if (ttl_ns && (!ttl || ttl_ns < ttl)) /* the lower TTL wins */
        ttl = ttl_ns;
    s->id = pos;
    s->len = len;
    s->flags = 0;
    s->publish_ns = realtime_ns();
    s->expire_ns = ttl ? ar_now_ns() + ttl : 0;
    s->lease = 0; /* no delivery yet: the lease scan ignores the slot */
    HOOK(H_PUT_WRITING);
    /* I3: publish.  seq_cst CAS: release for the payload and fields above, and
     * the Dekker half of the no-lost-wakeup argument (wake_side).  It fails
     * only if a reclaimer judged us dead and discarded the slot. */
    uint64_t exp = AR_WORD(AR_S_WRITING, e, 0, lap);
    if (!CAS(&s->word, &exp, AR_WORD(AR_S_READY, AR_NO_OWNER, 0, lap), SEQ, RLX))
        return AR_STALE;
    count(q, e, CNT_PUBLISHED, 1);
    wake_consumers(q);
    return AR_OK;
}

static int try_put(ar_queue *q, uint32_t e, const void *data, uint32_t len, uint64_t ttl_ns, uint64_t *id) {
    uint64_t pos;
    ar_slot *s;
    int rc = claim_slot(q, e, &pos, &s);
    if (rc != AR_OK)
        return rc;
    if (len)
        memcpy(payload(s), data, len);
    rc = publish(q, e, pos, s, len, ttl_ns);
    if (rc == AR_OK)
        *id = pos;
    return rc;
}

/* I3: a delivery is settled only by a CAS from exactly the word it installed:
 * same lap, owner and generation.  Anything else is a stale delivery. */
static int settle(ar_queue *q, uint32_t e, const ar_delivery *d, uint64_t new_word) {
    ar_slot *s = slot_at(q, d->pos);
    uint64_t exp = d->word;
    if (AR_W_OWNER(exp) != e || AR_W_STATE(exp) != AR_S_DELIVERED)
        return AR_STALE;
    /* seq_cst: release for our reads of the payload (the next writer's acquire
     * pairs with it), and the Dekker half towards sleeping producers. */
    if (!CAS(&s->word, &exp, new_word, SEQ, RLX))
        return AR_STALE;
    return AR_OK;
}

static inline uint64_t free_word(const ar_delivery *d, uint32_t outcome) {
    return AR_WORD(AR_S_FREE, outcome, AR_W_GEN(d->word), AR_W_LAP(d->word));
}

static int try_get(ar_queue *q, uint32_t e, ar_delivery *d, uint64_t lease_ns);

/* Copy a dead letter into the DLQ.  When the DLQ is full its oldest dead
 * letter that nobody holds is dropped to make room; if every one is held,
 * the new one is dropped.  Either way dlq_dropped says so: a full DLQ never
 * blocks the main queue. */
static int dlq_put(ar_queue *q, uint32_t e, const ar_death *dh, const unsigned char *body, uint32_t blen) {
    ar_queue *dq = q->dlq;
    uint32_t de = q->dlq_entry;
    if ((uint64_t)blen + AR_DEATH_SIZE > dq->message_size) {
        count(q, e, CNT_DLQ_DROPPED, 1);
        return AR_TOOBIG;
    }
    for (int tries = 0; tries < 8; tries++) {
        uint64_t pos;
        ar_slot *s;
        int rc = claim_slot(dq, de, &pos, &s);
        if (rc == AR_OK) {
            memcpy(payload(s), dh, AR_DEATH_SIZE);
            if (blen)
                memcpy(payload(s) + AR_DEATH_SIZE, body, blen);
            return publish(dq, de, pos, s, AR_DEATH_SIZE + blen, 0);
        }
        if (rc != AR_FULL)
            return rc;
        /* The strict ring needs the slot at tail: drop the dead letter there
         * if nobody holds it (it is the oldest, at head or requeued behind
         * it); if a DLQ consumer holds it, no room can be made. */
        uint64_t t = LOAD(&dq->hdr->tail, ACQ);
        ar_slot *ts = slot_at(dq, t);
        uint64_t w = LOAD(&ts->word, ACQ);
        uint32_t plap = lap_of(dq, t) - 1;
        if (AR_W_LAP(w) != plap || AR_W_STATE(w) == AR_S_FREE)
            continue; /* tail moved or the slot just came free: claim again */
        if (AR_W_STATE(w) != AR_S_READY)
            break; /* held by a DLQ consumer (or being written): no room to make */
        uint64_t oldest = t - dq->capacity, hd = LOAD(&dq->hdr->head, ACQ);
        if (!CAS(&ts->word, &w, AR_WORD(AR_S_FREE, AR_OUT_DROPPED, AR_W_GEN(w), plap), SEQ, RLX))
            continue;
        if (oldest < hd)
            FSUB(&dq->hdr->requeued, 1, RLX); /* it was a requeued one (I5: lowered after it left READY) */
        count(dq, de, CNT_DROPPED, 1);
        count(q, e, CNT_DLQ_DROPPED, 1);
    }
    count(q, e, CNT_DLQ_DROPPED, 1);
    return AR_FULL;
}

static const int dl_counter[5] = {0, CNT_DL_REJECTED, CNT_DL_LIMIT, CNT_DL_EXPIRED, CNT_DL_LEASE};

/* Dead-letter a delivery `e` holds: copy it to the DLQ (if this queue has
 * one attached), then settle it with the outcome recorded in the FREE word.
 * A death between the two leaves a copy in the DLQ and the delivery with the
 * dead process: reclaim redelivers it, so it may be dead-lettered twice,
 * never lost (at-least-once, like everything else here). */
static int dead_letter(ar_queue *q, uint32_t e, const ar_delivery *d0, uint32_t reason) {
    /* Fence off the lease scan first: move the word to a new generation
     * (still DELIVERED by us).  A scan that took the delivery back already
     * makes this CAS fail (stale: nothing copied); one that comes later
     * finds no lease of the new generation.  So a message is never both
     * dead-lettered and redelivered, short of a crash in between. */
    ar_delivery dd = *d0, *d = &dd;
    uint64_t fenced = AR_WORD(AR_S_DELIVERED, e, next_gen(AR_W_GEN(d0->word)), AR_W_LAP(d0->word));
    if (settle(q, e, d0, fenced) != AR_OK)
        return AR_STALE;
    dd.word = fenced;
    uint32_t outcome = AR_OUT_DROPPED;
    if (q->dlq) {
        ar_death dh = {d->pos, q->queue_id, d->publish_ns, realtime_ns(), reason, d->delivery_count};
        if (dlq_put(q, e, &dh, d->data, d->len) == AR_OK)
            outcome = AR_OUT_DEAD + reason;
    }
    int rc = settle(q, e, d, free_word(d, outcome));
    if (rc != AR_OK)
        return rc;
    count(q, e, outcome == AR_OUT_DROPPED ? CNT_DROPPED : dl_counter[reason], 1);
    wake_producers(q);
    return AR_OK;
}

static int fill_delivery(ar_queue *q, ar_slot *s, uint64_t pos, uint64_t word, ar_delivery *d) {
    /* We own the slot (DELIVERED, acquired by CAS), so the producer's writes are visible. */
    uint32_t len = s->len;
    uint64_t id = s->id;
    d->pos = pos;
    d->word = word;
    if (len > q->message_size || id != pos) { /* I4: never trust a length from shared memory */
        /* Discard it (an error is raised, nothing is silently skipped). */
        uint64_t exp = word;
        if (CAS(&s->word, &exp, AR_WORD(AR_S_FREE, AR_OUT_DISCARDED, AR_W_GEN(word), AR_W_LAP(word)), SEQ, RLX))
            wake_producers(q);
        return AR_CORRUPT;
    }
    d->data = payload(s);
    d->len = len;
    d->delivery_count = AR_W_GEN(word);
    d->publish_ns = s->publish_ns;
    d->dead_reason = 0;
    if (q->cfg.is_dlq) { /* strip and decode the dead-letter header */
        ar_death dh;
        if (len < AR_DEATH_SIZE) {
            uint64_t exp = word;
            if (CAS(&s->word, &exp, AR_WORD(AR_S_FREE, AR_OUT_DISCARDED, AR_W_GEN(word), AR_W_LAP(word)),
                    SEQ, RLX))
                wake_producers(q);
            return AR_CORRUPT;
        }
        memcpy(&dh, d->data, AR_DEATH_SIZE);
        d->dead_original_id = dh.original_id;
        d->dead_queue_id = dh.queue_id;
        d->dead_publish_ns = dh.publish_ns;
        d->dead_ns = dh.dead_ns;
        d->dead_reason = dh.reason;
        d->dead_delivery_count = dh.delivery_count;
        d->data += AR_DEATH_SIZE;
        d->len -= AR_DEATH_SIZE;
    }
    return AR_OK;
}

#define AR_TAKEN_AWAY (-1) /* internal: the message went to the DLQ instead; look again */

/* We hold slot s at pos (word `mine`).  Apply the delivery rules: a message
 * over the delivery limit or past its TTL is dead-lettered, never handed out;
 * otherwise start its lease and hand it out. */
static int deliver(ar_queue *q, uint32_t e, ar_slot *s, uint64_t pos, uint64_t mine, ar_delivery *d,
                   uint64_t lease_ns) {
    /* Our entry may have been closed by another thread while we waited (or
     * reclaimed under a wrong verdict): then give the slot back rather than
     * hold it under an entry that is not ours.  seq_cst: store-load pairing
     * with ar_unregister / ar_reclaim_entry (CLOSING or DEAD, then scan):
     * either its scan sees our DELIVERED word, or entry_is_mine fails here,
     * or both (one requeue wins, the other CAS fails). */
    if (!entry_is_mine(q, e)) {
        /* Give it back as it was: this take does not count as a delivery. */
        uint64_t w = mine;
        requeue_slot(q, s, (uint32_t)(pos & q->mask), &w, 0, prev_gen(AR_W_GEN(mine)));
        wake_consumers(q);
        return AR_STALE;
    }
    int rc = fill_delivery(q, s, pos, mine, d);
    if (rc != AR_OK)
        return rc;
    uint32_t gen = AR_W_GEN(mine);
    uint64_t exp = s->expire_ns, now = 0;
    int over = q->cfg.max_deliveries && gen > q->cfg.max_deliveries;
    if (over || (exp && (now = ar_now_ns()) >= exp)) {
        /* Taken for a delivery that never happens: the record counts only
         * the deliveries that did. */
        d->delivery_count = gen - 1;
        dead_letter(q, e, d, over ? AR_DL_DELIVERY_LIMIT : AR_DL_EXPIRED);
        return AR_TAKEN_AWAY;
    }
    if (lease_ns == 0)
        lease_ns = q->cfg.ack_timeout_ns;
    else if (lease_ns == UINT64_MAX)
        lease_ns = 0;
    if (lease_ns) {
        if (!now)
            now = ar_now_ns();
        /* who: the DELIVERED owner; relaxed: the lease scan matches gen against
         * the word it loaded, so a stale lease can never expire this delivery. */
        STORE(&s->lease, LEASE(gen, (now + lease_ns) / 1000), RLX);
        if (!LOAD(&q->hdr->leases_seen, RLX))
            STORE(&q->hdr->leases_seen, 1, RLX);
    }
    if (gen > 1)
        count(q, e, CNT_REDELIVERED, 1);
    return AR_OK;
}

/* Take a requeued READY slot behind head, oldest position first. */
static int take_requeued(ar_queue *q, uint32_t e, ar_delivery *d, uint64_t lease_ns) {
    ar_header *h = q->hdr;
    uint64_t hd = LOAD(&h->head, ACQ);
    uint64_t p = hd >= q->capacity ? hd - q->capacity : 0;
    for (; p < hd; p++) {
        ar_slot *s = slot_at(q, p);
        uint64_t w = LOAD(&s->word, SEQ); /* seq_cst: a wait_loop re-check (I6) */
        uint32_t lap = lap_of(q, p);
        if (AR_W_LAP(w) != lap || AR_W_STATE(w) != AR_S_READY)
            continue;
        uint64_t mine = AR_WORD(AR_S_DELIVERED, e, next_gen(AR_W_GEN(w)), lap);
        /* acquire: the requeuer's release (its CAS) made the slot's fields
         * visible; seq_cst: store-load pairing with a closer (entry_is_mine). */
        if (!CAS(&s->word, &w, mine, SEQ, RLX))
            continue;
        FSUB(&h->requeued, 1, RLX); /* I5: lowered only after the slot left READY */
        int rc = deliver(q, e, s, p, mine, d, lease_ns);
        if (rc == AR_TAKEN_AWAY)
            continue;
        return rc;
    }
    return AR_EMPTY;
}

static int try_get(ar_queue *q, uint32_t e, ar_delivery *d, uint64_t lease_ns) {
    ar_header *h = q->hdr;
    /* I5: a requeued message goes ahead of everything never delivered.
     * seq_cst: a wait_loop re-check (I6), paired with the requeuer's seq_cst RMW. */
    if (LOAD(&h->requeued, SEQ) != 0) {
        int rc = take_requeued(q, e, d, lease_ns);
        if (rc != AR_EMPTY)
            return rc;
    }
    for (;;) {
        uint64_t hd = LOAD(&h->head, ACQ);
        ar_slot *s = slot_at(q, hd);
        /* seq_cst (a plain load on x86): the re-check half of the Dekker pair in wait_loop. */
        uint64_t w = LOAD(&s->word, SEQ);
        uint32_t lap = lap_of(q, hd);
        int32_t dl = (int32_t)(AR_W_LAP(w) - lap);
        if (dl == 0) {
            uint32_t st = AR_W_STATE(w);
            if (st == AR_S_READY) {
                uint64_t mine = AR_WORD(AR_S_DELIVERED, e, next_gen(AR_W_GEN(w)), lap);
                /* I2: take the slot first, naming ourselves; acquire pairs with the
                 * producer's publish CAS so the payload is visible; seq_cst for
                 * the store-load pairing with a closer (entry_is_mine). */
                if (!CAS(&s->word, &w, mine, SEQ, RLX))
                    continue;
                HOOK(H_GET_CLAIMED);
                help_advance(&h->head, hd); /* then the position; anyone may finish this */
                int rc = deliver(q, e, s, hd, mine, d, lease_ns);
                if (rc == AR_TAKEN_AWAY)
                    continue;
                return rc;
            }
            if (st == AR_S_WRITING) /* its producer is copying; publish will wake us */
                return AR_EMPTY;
            help_advance(&h->head, hd); /* taken or discarded already: move on */
            continue;
        }
        if (dl == -1) { /* nothing claimed at head yet */
            if (LOAD(&h->head, ACQ) != hd)
                continue;
            return AR_EMPTY;
        }
        if (dl > 0) {
            /* The slot moved on to a later lap.  If head is still hd, the
             * message at hd was discarded (a dead writer, an aborted
             * reservation) without anyone stepping head past it, and a
             * producer has since reused the slot: step past it now.  A
             * producer can reuse the slot only once position hd is FREE, so
             * this never skips a message. */
            help_advance(&h->head, hd);
            continue;
        }
        return AR_CORRUPT;
    }
}

/* I6 (no lost wakeup), sleeper half.  Spin briefly, then one bounded sleep on a futex word after announcing
 * ourselves in *waiting.  Returns the attempt's result, `none` at the
 * deadline, or AR_AGAIN after at most one slice (so the caller can check for
 * signals and run a reclaim pass). */
static int wait_loop(ar_queue *q, uint32_t e, uint64_t deadline, uint32_t *waiting, uint32_t *seq,
                     uint32_t wbit, int (*attempt)(ar_queue *, uint32_t, void *), void *arg, int none) {
    /* Spin briefly first: the other side is often a few microseconds away,
     * and a futex sleep + wake costs more than that.  Bounded by time, not
     * by count (ar_spin_ns, ACKRING_SPIN_US), so a slow peer costs at most
     * that much CPU per wait. */
    uint64_t now = ar_now_ns(), spin_until = now + ar_spin_ns;
    for (int i = 1;; i++) {
        cpu_relax();
        int rc = attempt(q, e, arg);
        if (rc != none)
            return rc;
        if ((i & 15) == 0 && (now = ar_now_ns()) >= spin_until)
            break;
    }
    if (deadline != AR_NO_DEADLINE && now >= deadline)
        return none;
    uint64_t slice = AR_WAIT_SLICE_NS;
    if (deadline != AR_NO_DEADLINE && deadline - now < slice)
        slice = deadline - now;
    uint32_t sv = LOAD(seq, ACQ);
    /* Announce, then re-check (Dekker with wake_side): seq_cst RMW then seq_cst load. */
    FADD(waiting, 1, SEQ);
    ar_client *c = &q->clients[e];
    /* counted first, flagged second: a death in between over-counts (harmless), never under-counts */
    FADD(&c->waiting, wbit, RLX);
    int rc = attempt(q, e, arg);
    if (rc == none)
        futex_wait(seq, sv, slice);
    FSUB(&c->waiting, wbit, RLX);
    FSUB(waiting, 1, SEQ);
    if (rc != none)
        return rc;
    rc = attempt(q, e, arg);
    if (rc != none)
        return rc;
    if (deadline != AR_NO_DEADLINE && ar_now_ns() >= deadline)
        return none;
    return AR_AGAIN;
}

typedef struct {
    const void *data;
    uint32_t len;
    uint64_t ttl_ns;
    uint64_t *id;
} put_args;
static int put_attempt(ar_queue *q, uint32_t e, void *a) {
    put_args *pa = a;
    return try_put(q, e, pa->data, pa->len, pa->ttl_ns, pa->id);
}
typedef struct {
    ar_delivery *d;
    uint64_t lease_ns;
} get_args;
static int get_attempt(ar_queue *q, uint32_t e, void *a) {
    get_args *ga = a;
    return try_get(q, e, ga->d, ga->lease_ns);
}

int ar_put(ar_queue *q, uint32_t e, const void *data, size_t len, uint64_t deadline, uint64_t ttl_ns,
           uint64_t *id) {
    if (len > q->message_size)
        return AR_TOOBIG;
    if (e >= q->max_clients)
        return AR_INVAL;
    int rc = try_put(q, e, data, (uint32_t)len, ttl_ns, id);
    if (rc != AR_FULL || deadline == 0)
        return rc;
    put_args pa = {data, (uint32_t)len, ttl_ns, id};
    return wait_loop(q, e, deadline, &q->hdr->producers_waiting, &q->hdr->not_full_seq, WAIT_PRODUCER,
                     put_attempt, &pa, AR_FULL);
}

int ar_get(ar_queue *q, uint32_t e, ar_delivery *d, uint64_t deadline, uint64_t lease_ns) {
    if (e >= q->max_clients)
        return AR_INVAL;
    int rc = try_get(q, e, d, lease_ns);
    if (rc != AR_EMPTY || deadline == 0)
        return rc;
    get_args ga = {d, lease_ns};
    return wait_loop(q, e, deadline, &q->hdr->consumers_waiting, &q->hdr->not_empty_seq, WAIT_CONSUMER,
                     get_attempt, &ga, AR_EMPTY);
}

int ar_ack(ar_queue *q, uint32_t e, const ar_delivery *d) {
    HOOK(H_ACK_BEFORE);
    int rc = settle(q, e, d, free_word(d, AR_OUT_ACKED));
    if (rc != AR_OK)
        return rc;
    HOOK(H_ACK_AFTER);
    count(q, e, CNT_ACKED, 1);
    wake_producers(q);
    return AR_OK;
}

int ar_nack(ar_queue *q, uint32_t e, const ar_delivery *d, int requeue) {
    if (e >= q->max_clients)
        return AR_INVAL;
    if (!requeue) {
        int rc = dead_letter(q, e, d, AR_DL_REJECTED);
        if (rc == AR_OK)
            count(q, e, CNT_NACKED, 1);
        return rc;
    }
    /* I5: raise the hint before the slot turns READY behind head.  The slot is
     * behind head already: ar_get advanced head past it before returning.
     * `nacking` tells a reclaim of a death inside this window that the hint
     * is raised already (a death between the increment and the marker, one
     * instruction, leaves the hint one too high: extra scans, no loss). */
    ar_client *c = &q->clients[e];
    FADD(&q->hdr->requeued, 1, SEQ);
    STORE(&c->nacking, d->pos + 1, RLX);
    HOOK(H_NACK_HINT);
    int rc = settle(q, e, d, AR_WORD(AR_S_READY, AR_NO_OWNER, AR_W_GEN(d->word), AR_W_LAP(d->word)));
    STORE(&c->nacking, 0, RLX);
    if (rc != AR_OK) {
        FSUB(&q->hdr->requeued, 1, RLX);
        return rc;
    }
    count(q, e, CNT_NACKED, 1);
    wake_consumers(q);
    return AR_OK;
}

int ar_extend(ar_queue *q, uint32_t e, const ar_delivery *d, uint64_t lease_ns) {
    ar_slot *s = slot_at(q, d->pos);
    if (AR_W_OWNER(d->word) != e || LOAD(&s->word, ACQ) != d->word)
        return AR_STALE;
    uint64_t until = (ar_now_ns() + lease_ns) / 1000;
    STORE(&s->lease, LEASE(AR_W_GEN(d->word), until), SEQ);
    if (!LOAD(&q->hdr->leases_seen, RLX))
        STORE(&q->hdr->leases_seen, 1, RLX);
    /* Re-check: if the lease scan took it back meanwhile, say so.  (A scan
     * that read the old lease just before our store may still win the
     * race; the caller then learns it from this check or from its ack.) */
    if (LOAD(&s->word, SEQ) != d->word)
        return AR_STALE;
    return AR_OK;
}

int ar_expire_leases(ar_queue *q, uint32_t e, uint32_t *n) {
    *n = 0;
    if (e >= q->max_clients)
        return AR_INVAL;
    if (!LOAD(&q->hdr->leases_seen, RLX))
        return AR_OK;
    uint64_t now_us = ar_now_ns() / 1000;
    uint32_t requeued = 0;
    for (uint32_t i = 0; i < q->capacity; i++) {
        ar_slot *s = slot_at(q, i);
        uint64_t w = LOAD(&s->word, ACQ);
        if (AR_W_STATE(w) != AR_S_DELIVERED)
            continue;
        uint64_t l = LOAD(&s->lease, SEQ);
        if (LEASE_GEN(l) != AR_W_GEN(w) || LEASE_US(l) == 0 || now_us < LEASE_US(l))
            continue;
        uint32_t gen = AR_W_GEN(w), lap = AR_W_LAP(w);
        if (q->cfg.max_deliveries && gen >= q->cfg.max_deliveries) {
            /* Its last allowed delivery ran out: dead-letter it.  Take it over
             * first (a death of ours from here on is repaired like any holder's). */
            uint64_t mine = AR_WORD(AR_S_DELIVERED, e, gen, lap);
            if (!CAS(&s->word, &w, mine, ACQ, RLX))
                continue;
            uint64_t pos = ((uint64_t)s->id & ~(uint64_t)q->mask) | i;
            ar_delivery d;
            if (fill_delivery(q, s, pos, mine, &d) == AR_OK && dead_letter(q, e, &d, AR_DL_LEASE_EXPIRED) == AR_OK)
                (*n)++;
        } else if (requeue_slot(q, s, i, &w, 0, AR_W_GEN(w))) {
            count(q, e, CNT_LEASE_EXPIRED, 1);
            requeued++;
            (*n)++;
        }
    }
    if (requeued)
        wake_consumers(q);
    return AR_OK;
}

typedef struct {
    uint64_t id;
    uint32_t *outcome;
} settled_args;
static int settled_attempt(ar_queue *q, uint32_t e, void *a) {
    settled_args *sa = a;
    ar_slot *s = slot_at(q, sa->id);
    uint64_t w = LOAD(&s->word, SEQ); /* seq_cst: the re-check half of the Dekker pair */
    int32_t d = (int32_t)(AR_W_LAP(w) - lap_of(q, sa->id));
    if (d > 0 || LOAD(&q->hdr->tail, ACQ) - sa->id > q->capacity) {
        /* the slot was reused: settled, outcome no longer recorded */
        *sa->outcome = AR_OUT_NONE;
        return AR_OK;
    }
    if (d < 0)
        return AR_CORRUPT; /* published ids are never ahead of their slot */
    if (AR_W_STATE(w) != AR_S_FREE)
        return AR_EMPTY;
    *sa->outcome = AR_W_OWNER(w);
    return AR_OK;
}

int ar_wait_settled(ar_queue *q, uint32_t e, uint64_t id, uint64_t deadline, uint32_t *outcome) {
    if (e >= q->max_clients)
        return AR_INVAL;
    if (id >= LOAD(&q->hdr->tail, ACQ))
        return AR_INVAL;
    settled_args sa = {id, outcome};
    int rc = settled_attempt(q, e, &sa);
    if (rc != AR_EMPTY || deadline == 0)
        return rc;
    /* Settles wake producers (a settled slot is a free one), so receipts wait there. */
    return wait_loop(q, e, deadline, &q->hdr->producers_waiting, &q->hdr->not_full_seq, WAIT_PRODUCER,
                     settled_attempt, &sa, AR_EMPTY);
}

/* ---------------------------------------------------------------- batches */

int ar_put_many(ar_queue *q, uint32_t e, const ar_iovec *msgs, size_t n, uint64_t deadline, uint64_t ttl_ns,
                uint64_t *ids, size_t *done) {
    if (e >= q->max_clients)
        return AR_INVAL;
    /* Check the whole batch first: a too-long message anywhere means nothing is written. */
    for (size_t i = *done; i < n; i++)
        if (msgs[i].len > q->message_size)
            return AR_TOOBIG;
    while (*done < n) {
        size_t i = *done;
        int rc = ar_put(q, e, msgs[i].data, msgs[i].len, deadline, ttl_ns, &ids[i]);
        if (rc != AR_OK)
            return rc;
        *done = i + 1;
    }
    return AR_OK;
}

int ar_get_many(ar_queue *q, uint32_t e, ar_delivery *ds, size_t n, uint64_t deadline, uint64_t lease_ns,
                size_t *got) {
    *got = 0;
    if (n == 0)
        return AR_OK;
    int rc = ar_get(q, e, &ds[0], deadline, lease_ns);
    if (rc != AR_OK)
        return rc;
    size_t k = 1;
    while (k < n && (rc = try_get(q, e, &ds[k], lease_ns)) == AR_OK)
        k++;
    *got = k;
    return (rc == AR_OK || rc == AR_EMPTY) ? AR_OK : rc;
}

int ar_ack_many(ar_queue *q, uint32_t e, const ar_delivery *ds, size_t n, int *rcs) {
    uint64_t acked = 0;
    for (size_t i = 0; i < n; i++) {
        HOOK(H_ACK_BEFORE);
        rcs[i] = settle(q, e, &ds[i], free_word(&ds[i], AR_OUT_ACKED));
        acked += rcs[i] == AR_OK;
    }
    if (acked) {
        HOOK(H_ACK_AFTER);
        count(q, e, CNT_ACKED, acked);
        wake_producers(q);
    }
    return AR_OK;
}

/* ---------------------------------------------------------------- reserve / commit */

typedef struct {
    uint64_t *pos;
    ar_slot **slot;
} claim_args;
static int claim_attempt(ar_queue *q, uint32_t e, void *a) {
    claim_args *ca = a;
    return claim_slot(q, e, ca->pos, ca->slot);
}

int ar_reserve(ar_queue *q, uint32_t e, uint64_t deadline, uint64_t *pos, unsigned char **buf) {
    if (e >= q->max_clients)
        return AR_INVAL;
    ar_slot *s = NULL;
    int rc = claim_slot(q, e, pos, &s);
    if (rc == AR_FULL && deadline != 0) {
        claim_args ca = {pos, &s};
        rc = wait_loop(q, e, deadline, &q->hdr->producers_waiting, &q->hdr->not_full_seq, WAIT_PRODUCER,
                       claim_attempt, &ca, AR_FULL);
    }
    if (rc != AR_OK)
        return rc;
    *buf = payload(s);
    return AR_OK;
}

/* The reservation must still be ours: WRITING, this lap, this owner. */
static ar_slot *reserved_slot(ar_queue *q, uint32_t e, uint64_t pos) {
    ar_slot *s = slot_at(q, pos);
    uint64_t w = LOAD(&s->word, ACQ);
    if (w != AR_WORD(AR_S_WRITING, e, 0, lap_of(q, pos)))
        return NULL;
    return s;
}

int ar_commit(ar_queue *q, uint32_t e, uint64_t pos, size_t len, uint64_t ttl_ns) {
    if (e >= q->max_clients)
        return AR_INVAL;
    if (len > q->message_size)
        return AR_TOOBIG;
    ar_slot *s = reserved_slot(q, e, pos);
    if (!s)
        return AR_STALE;
    return publish(q, e, pos, s, (uint32_t)len, ttl_ns);
}

int ar_abort(ar_queue *q, uint32_t e, uint64_t pos) {
    if (e >= q->max_clients)
        return AR_INVAL;
    ar_slot *s = reserved_slot(q, e, pos);
    if (!s)
        return AR_STALE;
    uint64_t exp = AR_WORD(AR_S_WRITING, e, 0, lap_of(q, pos));
    /* Discard, exactly as reclaim discards a dead writer's slot: consumers
     * step over a FREE slot of the current lap. seq_cst: Dekker with sleepers. */
    if (!CAS(&s->word, &exp, AR_WORD(AR_S_FREE, AR_OUT_DISCARDED, 0, lap_of(q, pos)), SEQ, RLX))
        return AR_STALE;
    count(q, e, CNT_DISCARDED, 1);
    wake_consumers(q);
    wake_producers(q);
    return AR_OK;
}

/* ---------------------------------------------------------------- inspection */

int ar_inspect_header(const ar_queue *q, ar_header_raw *o) {
    const ar_header *h = q->hdr;
    o->magic = LOAD(&h->magic, RLX);
    o->version = h->version;
    o->header_size = h->header_size;
    o->capacity = h->capacity;
    o->message_size = h->message_size;
    o->slot_size = h->slot_size;
    o->max_clients = h->max_clients;
    o->queue_id = h->queue_id;
    o->total_size = h->total_size;
    o->head = LOAD(&h->head, ACQ);
    o->tail = LOAD(&h->tail, ACQ);
    o->requeued = LOAD(&h->requeued, ACQ);
    o->reclaim_lock = LOAD(&h->reclaim_lock, ACQ);
    o->consumers_waiting = LOAD(&h->consumers_waiting, ACQ);
    o->producers_waiting = LOAD(&h->producers_waiting, ACQ);
    o->leases_seen = LOAD(&h->leases_seen, RLX);
    return AR_OK;
}

int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *o) {
    if (index >= q->capacity)
        return AR_INVAL;
    ar_slot *s = slot_at(q, index);
    o->word = LOAD(&s->word, ACQ);
    o->id = s->id;
    o->len = s->len;
    return AR_OK;
}

int ar_inspect_client_waiting(const ar_queue *q, uint32_t index, uint32_t *waiting) {
    if (index >= q->max_clients)
        return AR_INVAL;
    *waiting = LOAD(&q->clients[index].waiting, RLX);
    return AR_OK;
}

int ar_stats_read(const ar_queue *q, ar_stats *st) {
    memset(st, 0, sizeof *st);
    for (uint32_t i = 0; i < q->capacity; i++) {
        uint64_t w = LOAD(&slot_at(q, i)->word, RLX); /* a snapshot, not atomic as a whole */
        uint32_t s = AR_W_STATE(w);
        if (s == AR_S_READY)
            st->depth++;
        else if (s == AR_S_DELIVERED)
            st->in_flight++;
    }
    uint64_t c[CNT_N];
    for (int k = 0; k < CNT_N; k++)
        c[k] = LOAD(&q->hdr->retired[k], RLX);
    for (uint32_t i = 0; i < q->max_clients; i++) {
        const ar_client *cl = &q->clients[i];
        uint64_t w = LOAD(&cl->word, ACQ);
        if (CW_STATE(w) == AR_C_FREE)
            continue;
        for (int k = 0; k < CNT_N; k++)
            c[k] += LOAD(&cl->count[k], RLX);
        if (CW_STATE(w) == AR_C_ACTIVE) {
            if (CW_ROLE(w) == AR_ROLE_PRODUCER)
                st->producers++;
            else if (CW_ROLE(w) == AR_ROLE_CONSUMER)
                st->consumers++;
        }
    }
    st->published = c[CNT_PUBLISHED];
    st->acked = c[CNT_ACKED];
    st->nacked = c[CNT_NACKED];
    st->redelivered = c[CNT_REDELIVERED];
    st->discarded = c[CNT_DISCARDED];
    st->dropped = c[CNT_DROPPED];
    st->rejected = c[CNT_DL_REJECTED];
    st->dl_delivery_limit = c[CNT_DL_LIMIT];
    st->dl_expired = c[CNT_DL_EXPIRED];
    st->dl_lease_expired = c[CNT_DL_LEASE];
    st->lease_expired = c[CNT_LEASE_EXPIRED];
    st->dlq_dropped = c[CNT_DLQ_DROPPED];
    st->capacity = q->capacity;
    st->message_size = q->message_size;
    st->max_clients = q->max_clients;
    st->head = LOAD(&q->hdr->head, RLX);
    st->tail = LOAD(&q->hdr->tail, RLX);
    st->requeued_hint = LOAD(&q->hdr->requeued, RLX);
    return AR_OK;
}
