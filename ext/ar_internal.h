/*
 * ar_internal.h - what the rooms of the C core share: the segment layout,
 * the atomics vocabulary, the process-local handle and client structs, and
 * the small inline helpers of the hot path.  Not installed; the bindings see
 * only ackring.h.
 *
 * docs/design.md is the long form.  Every shared field below says who writes
 * it, under which atomic, and why that order is enough.  Transition labels
 * (T1..T14) and invariants (I1..I8) are those of docs/design.md sections 3 and 4.
 */
#ifndef AR_INTERNAL_H
#define AR_INTERNAL_H

#define _GNU_SOURCE
#include "ackring.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ atomics
 * Shorthands for the GCC/Clang __atomic builtins; every use names its order. */
#define LOAD(p, o) __atomic_load_n((p), (o))
#define STORE(p, v, o) __atomic_store_n((p), (v), (o))
#define CAS(p, expp, v, so, fo) __atomic_compare_exchange_n((p), (expp), (v), 0, (so), (fo))
#define FADD(p, v, o) __atomic_fetch_add((p), (v), (o))
#define FOR(p, v, o) __atomic_fetch_or((p), (v), (o))
#define XCHG(p, v, o) __atomic_exchange_n((p), (v), (o))
#define FENCE(o) __atomic_thread_fence(o)
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

#define AR_LINE 64
#define AR_ALIGNED __attribute__((aligned(AR_LINE)))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Every loop over shared positions gives up after this many rounds and
 * reports AR_CORRUPT: in a sound segment each round that fails does so
 * because another process made progress, so the bound is never reached. */
#define AR_SPIN_BOUND (1u << 20)

/* Every "this cannot happen in a sound segment" answer goes through here:
 * with ACKRING_TRACE_CORRUPT set it says where (for diagnosis). */
int ar_corrupt_at(const char *file, int line);
#define CORRUPT() ar_corrupt_at(__FILE__, __LINE__)

/* ------------------------------------------------------------------ layout
 * Layout v2.  The file is: header (AR_HDR_SIZE bytes), process table
 * (max_clients entries of AR_ENTRY_SIZE), three index rings of `capacity`
 * 8-byte cells each (free, ready, requeue), then `capacity` slots of
 * slot_size bytes.  Every section starts on a 128-byte boundary (the
 * adjacent-line prefetcher pairs 64-byte lines).  Offsets are stored in the
 * header and checked against the geometry at open (I4). */
#define AR_HDR_SIZE 1536u
#define AR_ENTRY_SIZE 256u
#define AR_SLOT_HDR 64u
#define AR_SECTION_ALIGN 128u

/* OFD lock bytes (fcntl F_OFD_SETLK on these offsets of the file; advisory,
 * unrelated to the bytes' contents). */
#define AR_LOCK_RECLAIM 0   /* held while a reclaim pass repairs dead entries */
#define AR_LOCK_SYNC 1      /* the group-commit leader of a durable queue */
#define AR_LOCK_REBUILD 2   /* exclusive: recovery after a reboot */
#define AR_LOCK_ENTRY0 64   /* entry i: byte AR_LOCK_ENTRY0 + i, held by its live owner */

/* Flags in the header (immutable after creation). */
#define AR_F_DLQ 1u
#define AR_F_CHECKSUM 2u
#define AR_F_FILE 4u      /* lives on a real filesystem (durable variant) */

/* An eventcount word: bit 0 "someone may sleep", bits 1..31 a sequence. */
typedef struct { uint32_t seq; uint32_t pad[15]; } AR_ALIGNED ar_event;

/* A free-running position of one ring, alone on its line (no false
 * sharing between the pushing and the popping side). */
typedef struct { uint64_t pos; uint64_t pad[7]; } AR_ALIGNED ar_pos;

enum { R_FREE = 0, R_READY = 1, R_REQUEUE = 2, R_COUNT = 3 };

typedef struct ar_header {
    /* line 0: immutable geometry, written by the creator before link(2). */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint32_t capacity;
    uint32_t message_size;
    uint32_t slot_size;
    uint32_t max_clients;
    uint32_t flags;        /* AR_F_* */
    uint32_t mode;         /* permission bits create() asked for (open checks the file against them) */
    uint64_t created_ns;   /* CLOCK_REALTIME */
    uint64_t queue_id;     /* getrandom(2), never 0 */
    uint64_t total_size;
    /* line 1: immutable offsets and delivery rules */
    uint64_t table_off AR_ALIGNED;
    uint64_t rings_off;
    uint64_t slots_off;
    uint64_t peer_id;         /* the DLQ's queue_id in a main queue; the main queue's in a DLQ */
    uint32_t max_deliveries;  /* 0 = unlimited */
    uint32_t dlq_overhead;    /* AR_DEATH_SIZE in a DLQ, else 0 */
    uint64_t default_ttl_ns;  /* 0 = none */
    uint64_t ack_timeout_ns;  /* 0 = none */
    uint32_t durability;      /* AR_DUR_*; fixed at creation */
    uint32_t owner_uid;       /* euid of the creator */
    /* line 2: rarely written */
    uint32_t shutdown AR_ALIGNED; /* 0, then 1 forever: written by q.shutdown()/unlink (seq_cst store) */
    uint32_t leases_seen;         /* 1 once any delivery carried a lease (relaxed) */
    uint8_t boot_id[16];          /* /proc/sys/kernel/random/boot_id of the boot that last used it */
    uint64_t reclaimed_entries;   /* dead entries freed by reclaim (relaxed fetch-add) */
    uint64_t rebuilds;            /* reboots recovered (durable); written under AR_LOCK_REBUILD */
    /* lines 3..8: ring positions, one line each */
    ar_pos head[R_COUNT];         /* next position to pop, per ring: a hint (I1) */
    ar_pos tail[R_COUNT];         /* next position to push, per ring: a hint (I1) */
    /* lines 9, 10: eventcounts (off the position lines) */
    ar_event not_empty;           /* consumers sleep here; pushes to ready/requeue wake it */
    ar_event not_full;            /* producers and receipt waiters sleep here; frees wake it */
    /* line 11: durable group commit (file queues only) */
    uint64_t pub_seq AR_ALIGNED;  /* publish sequence counter: fetch-add by publishers */
    uint64_t sync_started;        /* syncs begun: RMW by confirmers (+0) and the leader (+1) */
    uint64_t sync_done;           /* every sync numbered <= this has completed (release store by the leader) */
    uint32_t sync_gen;            /* futex word followers sleep on: bumped after each sync */
    uint32_t sync_pending;        /* settles since the last sync (acks are made durable lazily) */
    uint64_t syncs;               /* fdatasync calls made for this queue */
    /* lines 12..15: statistics folded in from freed entries (relaxed fetch-add) */
    uint64_t retired[32] AR_ALIGNED;
} ar_header;

/* Entry word: bits 0..7 state, 8..15 role, 16..31 seq, 32..63 pid. */
enum { E_FREE = 0, E_ACTIVE = 2, E_DEAD = 3, E_CLOSING = 4 };
#define EW_STATE(w) ((uint32_t)((w) & 0xFFu))
#define EW_ROLE(w) ((uint32_t)(((w) >> 8) & 0xFFu))
#define EW_SEQ(w) ((uint32_t)(((w) >> 16) & 0xFFFFu))
#define EW_PID(w) ((uint32_t)((w) >> 32))
#define EWORD(state, role, pid, seq)                                                                 \
    (((uint64_t)(pid) << 32) | ((uint64_t)((seq) & 0xFFFFu) << 16) | ((uint64_t)((role) & 0xFF) << 8) | \
     (uint64_t)(state))
#define EW_WITH_STATE(w, st) (((w) & ~(uint64_t)0xFFu) | (st))

/* Statistics counters (ar_stats has the same names). */
enum {
    CNT_PUBLISHED, CNT_ACKED, CNT_NACKED, CNT_REDELIVERED, CNT_DISCARDED, CNT_DROPPED,
    CNT_DL_REJECTED, CNT_DL_LIMIT, CNT_DL_EXPIRED, CNT_DL_LEASE, CNT_LEASE_EXPIRED, CNT_DLQ_DROPPED,
    CNT_RECOVERED, CNT_STALE, CNT_PURGED, CNT_N
};

/* Marker words (design.md 4.3): 0, or MARK(ring, index). */
#define MARK(r, v) ((1ull << 63) | ((uint64_t)(r) << 32) | (uint64_t)(v))
#define MARK_RING(m) ((uint32_t)(((m) >> 32) & 0x3u))
#define MARK_IDX(m) ((uint32_t)((m) & 0xFFFFFFFFu))

typedef struct ar_entry {
    uint64_t word;       /* EWORD.  FREE -> ACTIVE by the registrant's CAS while it holds the
                          * entry's OFD lock; ACTIVE -> CLOSING by its owner; -> DEAD by a
                          * reclaimer holding the lock of a dead owner; -> FREE (seq kept) by
                          * whichever of the two released its slots.  seq_cst, but the
                          * CASes to FREE (release is enough: nothing after them is read). */
    uint64_t start_time; /* process start (ticks since boot), for operators only */
    uint64_t reg_ns;     /* CLOCK_REALTIME of the registration, for operators only */
    /* Markers (I7): written only by the entry's owner (or by the reclaimer acting
     * as the dead owner).  take: set before a ring pop, cleared (release) after
     * the slot transition that completes it; push: set before the slot
     * transition that must be followed by a ring push, cleared after the push. */
    uint64_t take_mark, take_word;
    uint64_t push_mark, push_word;
    uint64_t pad0;
    uint64_t count[CNT_N]; /* statistics: plain load+store by the owner only (relaxed atomics) */
    uint64_t pad1[32 - 8 - CNT_N];
} ar_entry;

/* Slot word: the single source of truth for a message (I2).
 *   bits 0..2 state, 3..14 owner (table index; AR_NO_OWNER none; in FREE the
 *   settle outcome), 15 spare, 16..31 gen (deliveries so far), 32..63 use
 *   (allocations of the slot, low 32 bits). */
#define SW_STATE(w) ((uint32_t)((w) & 0x7u))
#define SW_OWNER(w) ((uint32_t)(((w) >> 3) & 0xFFFu))
#define SW_GEN(w) ((uint32_t)(((w) >> 16) & 0xFFFFu))
#define SW_USE(w) ((uint32_t)((w) >> 32))
#define SWORD(state, owner, gen, use)                                                       \
    (((uint64_t)(uint32_t)(use) << 32) | ((uint64_t)((gen) & 0xFFFFu) << 16) |              \
     ((uint64_t)((owner) & 0xFFFu) << 3) | (uint64_t)((state) & 0x7u))

typedef struct ar_slot {
    uint64_t word;       /* SWORD; every change is one CAS (slot_cas) */
    uint64_t lease;      /* LEASE(deadline_ms, tag): stored by the DELIVERED owner at each take;
                          * CASed by extend and by the lease scan (T9/T10), see delivery.c */
    uint64_t use;        /* allocations of this slot (64-bit): written by the WRITING owner */
    uint32_t len;        /* payload length: written by the WRITING owner, bounds-checked by readers (I4) */
    uint32_t crc;        /* CRC32C of the immutable fields + payload (checksummed queues) */
    uint64_t publish_ns; /* CLOCK_REALTIME at publish */
    uint64_t expire_ns;  /* TTL expiry (CLOCK_MONOTONIC; CLOCK_REALTIME in file queues), 0 none */
    uint64_t pub_seq;    /* publish sequence (file queues: order rebuilt after a reboot) */
    uint64_t reserved;
} ar_slot;

/* Lease word: deadline in CLOCK_MONOTONIC milliseconds (40 bits) and a tag
 * naming the delivery: gen (16 bits) and the low 8 bits of use.  Deadline 0
 * with a matching tag = TAKEN by a lease scan. */
#define LEASE_TAG(w) ((uint64_t)((SW_GEN(w) << 8) | (SW_USE(w) & 0xFFu)))
#define LEASE(ms, tag) (((uint64_t)(ms) << 24) | ((tag) & 0xFFFFFFu))
#define LEASE_MS(l) ((l) >> 24)
#define LEASE_TAGOF(l) ((l) & 0xFFFFFFu)
#define LEASE_MAX_MS ((1ull << 40) - 1)

/* Dead-letter header at the start of every DLQ message (40 bytes). */
typedef struct ar_death {
    uint64_t original_id;
    uint64_t queue_id;
    uint64_t publish_ns;
    uint64_t dead_ns;
    uint32_t reason;
    uint32_t delivery_count;
} ar_death;

/* Ring cell: seq (40 bits, a position mod 2^40) << 24 | value (slot index).
 * Empty for a push at position p when seq == p; full for a pop at p when
 * seq == p + 1; after the pop seq == p + R (empty for the push one lap on).
 * The value stays in a popped cell (a reclaimer may read it). */
#define CELL(seq, v) ((((uint64_t)(seq)) << 24) | ((uint64_t)(v) & 0xFFFFFFu))
#define CELL_SEQ(c) ((c) >> 24)
#define CELL_VAL(c) ((uint32_t)((c) & 0xFFFFFFu))
#define SEQ40(p) ((p) & 0xFFFFFFFFFFull)
/* signed distance of a 40-bit seq from a 64-bit position's low 40 bits */
static inline int64_t seq_diff(uint64_t cell_seq, uint64_t pos) {
    uint64_t d = (cell_seq - SEQ40(pos)) & 0xFFFFFFFFFFull;
    return (int64_t)(d << 24) >> 24;
}

_Static_assert(sizeof(ar_header) <= AR_HDR_SIZE, "header fits its section");
_Static_assert(sizeof(ar_entry) == AR_ENTRY_SIZE, "entry is four lines");
_Static_assert(sizeof(ar_slot) == AR_SLOT_HDR, "slot header is one line");
_Static_assert(sizeof(ar_death) == AR_DEATH_SIZE, "dead-letter header");
_Static_assert(CNT_N <= 24, "entry counters fit");
_Static_assert(offsetof(ar_header, table_off) == 64, "layout v2");
_Static_assert(offsetof(ar_header, shutdown) == 128, "layout v2");
_Static_assert(offsetof(ar_header, head) == 192 && offsetof(ar_header, tail) == 384, "layout v2");
_Static_assert(offsetof(ar_header, not_empty) == 576 && offsetof(ar_header, not_full) == 640, "layout v2");
_Static_assert(offsetof(ar_header, pub_seq) == 704 && offsetof(ar_header, retired) == 768, "layout v2");
_Static_assert(offsetof(ar_entry, take_mark) == 24 && offsetof(ar_entry, count) == 64, "layout v2");
_Static_assert(offsetof(ar_slot, len) == 24 && offsetof(ar_slot, publish_ns) == 32, "layout v2");

/* ------------------------------------------------------------------ handles */

/* A tiny process-local spinlock: the per-client lock that makes the entry's
 * markers single-writer when threads share a client (the GIL covers none of
 * this under cffi).  Never held across a wait. */
typedef struct { int v; } ar_spin;
static inline void spin_lock(ar_spin *l) {
    while (XCHG(&l->v, 1, ACQ))
        while (LOAD(&l->v, RLX))
            cpu_relax();
}
static inline void spin_unlock(ar_spin *l) { STORE(&l->v, 0, REL); }

struct ar_queue {
    unsigned char *base;
    size_t size;
    ar_header *hdr;
    unsigned char *table;
    uint64_t *cells[R_COUNT];
    unsigned char *slots;
    int fd;              /* kept open: its open file description holds our OFD locks */
    /* geometry validated at open; local copies, never re-read from shared memory */
    uint32_t capacity, mask, shift, message_size, slot_size, max_clients, flags, durability;
    uint32_t run_max;    /* longest ring run, min(AR_RUN_MAX, capacity / 2), at least 1 (I1) */
    uint64_t queue_id, created_ns, peer_id;
    ar_config cfg;
    char *path;
    int refs;            /* Segment handle + clients + deliveries' holders (atomic) */
    int closed;          /* the Segment handle was closed (no new clients) */
    volatile int corrupt; /* set by the SIGBUS guard: every call answers AR_CORRUPT */
    uint64_t *mine;      /* mine[i]: the ACTIVE word this handle installed in entry i, else 0 */
    unsigned long fork_gen; /* fork generation at which fd/mine were last valid */
    /* dead-lettering: our producer entry in the DLQ, one user at a time */
    ar_queue *dlq;
    uint32_t dlq_entry;
    unsigned long dlq_gen;
    pthread_mutex_t dlq_mu;
    /* reclaim passes and lease scans of this handle: one at a time */
    pthread_mutex_t reclaim_mu;
    /* the group-commit leader of this handle: one thread at a time */
    pthread_mutex_t sync_mu;
    uint32_t observer;   /* our observer entry (lease scans), or max_clients */
    unsigned long observer_gen;
    uint64_t last_reclaim_ns;
    ar_recovery last_open; /* what the reclaim at open repaired */
    ar_queue *next_open; /* list of open handles, for the fork handler */
    int listed;
};

struct ar_client {
    ar_queue *q;
    uint32_t entry;
    uint32_t role;
    uint64_t word;           /* the entry word our registration installed */
    unsigned long fork_gen;
    ar_spin lock;            /* markers and the counters below */
    unsigned long lock_gen;  /* fork generation the lock state belongs to */
    uint32_t prefetch;       /* 0 = unlimited */
    int outstanding;         /* deliveries not yet settled (atomic) */
    uint64_t lease_ns;       /* 0 = the queue's ack_timeout; UINT64_MAX = none */
    int busy;                /* calls in progress + open reservations (atomic) */
    int closed;              /* close() was called (atomic) */
    int close_pending;       /* the last busy call releases the entry */
    int released;            /* the entry was given back */
};

/* ------------------------------------------------------------------ helpers */

extern unsigned long ar_fork_gen; /* bumped in every fork child (pthread_atfork) */
extern uint64_t ar_spin_ns;       /* ACKRING_SPIN_US */

static inline ar_entry *entry_at(const ar_queue *q, uint32_t e) {
    return (ar_entry *)(q->table + (size_t)e * AR_ENTRY_SIZE);
}
static inline ar_slot *slot_at(const ar_queue *q, uint32_t i) {
    /* i is always < capacity here: every index read from shared memory is
     * checked by the caller before it reaches slot_at (I4). */
    return (ar_slot *)(q->slots + (size_t)i * q->slot_size);
}
/* I9, the seqlock re-check of a reader that does not own slot i: after its
 * copy of the slot's body or fields, is the word still w?  acquire fence:
 * the copy's loads are ordered before the word load; every writer moves the
 * word away first (alloc_slot's T1 and release fence). */
static inline int slot_unchanged(const ar_queue *q, uint32_t i, uint64_t w) {
    FENCE(ACQ);
    return LOAD(&slot_at(q, i)->word, RLX) == w;
}
static inline unsigned char *payload(ar_slot *s) { return (unsigned char *)(s + 1); }

/* A hint to the cache, not an access: bring the line at p here, for writing
 * (w) or reading.  x86 PREFETCHW is a NOP on CPUs without it. */
static inline void warm_line(const void *p, int w) {
#if defined(__x86_64__) || defined(__i386__)
    if (w)
        __asm__ __volatile__("prefetchw %0" ::"m"(*(const char *)p));
    else
        __builtin_prefetch(p, 0, 3);
#else
    if (w) /* the builtin's arguments must be constants */
        __builtin_prefetch(p, 1, 3);
    else
        __builtin_prefetch(p, 0, 3);
#endif
}
static inline uint32_t next_gen(uint32_t g) { return g >= 0xFFFFu ? 1u : g + 1u; }
static inline uint64_t msg_id(const ar_queue *q, uint64_t use, uint32_t i) {
    return ((use - 1) << q->shift) | i;
}
/* Counters: the owner alone writes its entry's counters (the client lock or
 * the reclaim lock makes the writer unique), so a relaxed load + store does. */
static inline void count(ar_queue *q, uint32_t e, int which, uint64_t n) {
    if (e < q->max_clients) {
        uint64_t *c = &entry_at(q, e)->count[which];
        STORE(c, LOAD(c, RLX) + n, RLX);
    }
}
static inline int shut_down(const ar_queue *q) { return LOAD(&q->hdr->shutdown, ACQ) != 0; }

uint64_t ar_realtime_ns(void);
uint64_t ttl_clock_ns(const ar_queue *q);

/* ---- slot transitions (slots.c).  One helper for every slot-word CAS; in
 * ACKRING_DEBUG builds it checks the (from, to) pair against the table of
 * allowed transitions of design.md section 3. */
enum { T1 = 1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15, T16 };
#ifdef ACKRING_DEBUG
void slot_cas_check(uint64_t expected, uint64_t desired, int label); /* aborts on a pair not in the table */
#endif
static inline int slot_cas(ar_queue *q, ar_slot *s, uint64_t *expected, uint64_t desired, int label) {
#ifdef ACKRING_DEBUG
    slot_cas_check(*expected, desired, label);
#endif
    (void)q;
    (void)label;
    /* seq_cst: each transition releases what its maker wrote (payload, fields)
     * to the next owner's acquire, and is ordered with the markers (I7). */
    return CAS(&s->word, expected, desired, SEQ, ACQ);
}

/* ---- rings (rings.c) */
/* A run (design.md 3.5): consecutive positions of one ring that one caller
 * pushes or pops inside a batch call (put_many, get_many, settle_many)
 * without moving the position hint after each; ring_run_end moves it once.
 * On the caller's stack, used under its client lock.  start == next: no run.
 * A run is at most q->run_max long, so a hint lags by at most that (I1). */
typedef struct {
    uint64_t start, next;
    int take; /* a run of takes (moves head) or of pushes (moves tail) */
} ar_run;
#define AR_RUN_MAX 64
int ring_push_slow(ar_queue *q, int r, uint32_t v, ar_run *run);
int ring_take_slow(ar_queue *q, int r, uint32_t e, uint32_t *v, uint64_t *w, ar_run *run);
void ring_run_end(ar_queue *q, int r, ar_run *run);
uint64_t ring_count(const ar_queue *q, int r);
void ring_settle_hints(ar_queue *q);
int ensure_in_ring(ar_queue *q, uint32_t acting, uint32_t v, uint64_t w, int *pushed);
extern int ring_count_probes; /* test counter (ar_ring_probes): on? */
extern uint64_t ring_probes;  /* cells ring_take looked at while on */
/* The ring a slot in state w belongs in, or -1 (in none). */
static inline int ring_for_word(uint64_t w) {
    if (SW_STATE(w) == AR_S_FREE)
        return R_FREE;
    if (SW_STATE(w) == AR_S_READY)
        return SW_GEN(w) ? R_REQUEUE : R_READY;
    return -1;
}
static inline void mark_take(ar_queue *q, uint32_t e, int r, uint32_t v, uint64_t w) {
    ar_entry *en = entry_at(q, e);
    STORE(&en->take_word, w, RLX);
    /* relaxed: the ring pop CAS (seq_cst, a release) that follows orders it
     * before the pop for anyone who sees the pop (ensure_in_ring). */
    STORE(&en->take_mark, MARK(r, v), RLX);
}
static inline void unmark_take(ar_queue *q, uint32_t e) {
    /* release: the slot CAS that completed the take is visible to whoever
     * sees the marker gone (ensure_in_ring's final re-read). */
    STORE(&entry_at(q, e)->take_mark, 0, REL);
}
static inline void mark_push(ar_queue *q, uint32_t e, uint32_t v, uint64_t w) {
    ar_entry *en = entry_at(q, e);
    STORE(&en->push_word, w, RLX);
    STORE(&en->push_mark, MARK(ring_for_word(w), v), REL);
}
static inline void unmark_push(ar_queue *q, uint32_t e) { STORE(&entry_at(q, e)->push_mark, 0, REL); }
/* ring_take and ring_push (a run's next step inline, anything else through
 * ring_take_slow / ring_push_slow) are at the end of this file: they use HOOK. */

/* ---- waiting (wait.c) */
void wake_sleepers(ar_event *ev, uint32_t v);
/* After a change that may let a waiter on ev go on (wait.c): inline, as
 * every publish and settle makes one, and only a set bit 0 costs more. */
static inline void wake(ar_event *ev) {
    /* seq_cst: the waker's half of I6 (wait.c, top). */
    uint32_t v = LOAD(&ev->seq, SEQ);
    if (UNLIKELY(v & 1u))
        wake_sleepers(ev, v);
}
void wake_all(ar_event *ev);
typedef int (*ar_attempt)(ar_client *c, void *arg);
int wait_for(ar_client *c, ar_event *ev, uint64_t deadline, ar_attempt attempt, void *arg, int none);
static inline void wake_consumers(ar_queue *q) { wake(&q->hdr->not_empty); }
static inline void wake_producers(ar_queue *q) { wake(&q->hdr->not_full); }

/* ---- messages (slots.c) */
/* run: NULL, or the caller's run on the ring the call pushes to (pops from);
 * now_ns: the batch's one clock read, or 0 to read the clock here. */
int publish_slot(ar_queue *q, uint32_t e, uint32_t v, ar_slot *s, uint64_t wwriting, uint32_t len,
                 uint64_t ttl_ns, uint64_t now_ns, ar_run *run);
int alloc_slot(ar_queue *q, uint32_t e, uint32_t *v, uint64_t *wwriting, uint64_t *use, ar_run *run);
int free_slot(ar_queue *q, uint32_t e, uint32_t v, uint64_t *expected, uint32_t outcome, int label, ar_run *run);
int requeue_slot(ar_queue *q, uint32_t e, uint32_t v, uint64_t *expected, int label, ar_run *run);
int release_entry_slots(ar_queue *q, uint32_t e, uint32_t *requeued, uint32_t *discarded);
uint32_t slot_crc(const ar_queue *q, const ar_slot *s, uint32_t len);

/* ---- delivery rules (delivery.c) */
int dead_letter(ar_queue *q, uint32_t e, uint32_t v, uint64_t w, const ar_delivery *d, uint32_t reason);
int fill_delivery(ar_queue *q, uint32_t e, uint32_t v, uint64_t w, ar_delivery *d);
int apply_rules(ar_client *c, uint32_t v, uint64_t w, ar_delivery *d);
int expire_leases(ar_queue *q, uint32_t o, uint32_t *n);
int dlq_entry(ar_queue *q, uint32_t *e);
#define AR_TAKEN_AWAY (-1) /* internal: the message went to the DLQ instead; look again */

/* ---- handles (segment.c) */
void ar_queue_ref(ar_queue *q);
void ar_queue_unref(ar_queue *q);

/* ---- process table (table.c) */
int entry_register(ar_queue *q, uint32_t role, uint32_t *entry, uint64_t *word);
int entry_unregister(ar_queue *q, uint32_t entry, uint64_t word);
int entry_is_mine(const ar_queue *q, uint32_t e);
int ofd_lock(int fd, uint64_t off);
void ofd_unlock(int fd, uint64_t off);
int ofd_held_by_other(int fd, uint64_t off);
int queue_observer(ar_queue *q, uint32_t *e);

/* ---- durability (durable.c) */
int durable_confirm(ar_queue *q, uint64_t pub_seq, uint64_t deadline);
void durable_settled(ar_queue *q);
void durable_flush_settles(ar_queue *q);
int durable_rebuild(ar_queue *q, ar_recovery *rec);
int durable_close(ar_queue *q);
uint32_t ar_crc32c(uint32_t crc, const void *buf, size_t len);

/* ---- client plumbing (client.c) */
int client_enter(ar_client *c);
void client_leave(ar_client *c);
/* End a call: a segment found truncated during it (the SIGBUS guard marked
 * the handle corrupt; the call ran on against zero pages) makes its answer
 * AR_CORRUPT, whatever it saw there. */
static inline int client_done(ar_client *c, int rc) {
    ar_queue *q = c->q;
    client_leave(c);
    return UNLIKELY(q->corrupt) ? AR_CORRUPT : rc;
}

/* ---- test hooks (client.c) */
enum {
    H_OFF = 0, H_ALLOC_POPPED, H_PUT_WRITING, H_PUBLISH_READY, H_GET_POPPED, H_GET_TAKEN,
    H_ACK_FREED, H_NACK_READY, H_DLQ_DYING, H_DLQ_COPIED, H_RECLAIM_LOCKED, H_REGISTER_LOCKED,
    H_LEASE_TAKEN, H_EXTEND_READ, H_SYNC_LEADER, H_GET_LEASED, H_RUN_PUSHED, H_RUN_TAKEN, H_COUNT
};
extern int ar_hook;
void ar_hook_hit(int point);
#define HOOK(point)                                                             \
    do {                                                                        \
        if (UNLIKELY(ar_hook == (point)))                                       \
            ar_hook_hit(point);                                                 \
    } while (0)

/* Pop an entry of ring r for entry e: its slot index and the slot's word.
 * AR_OK, AR_EMPTY or AR_CORRUPT.  The common step of a take run is here,
 * inline (a batch makes it once per message): the run's next cell is full
 * and names a slot in this ring's state.  It makes the same checks (I4),
 * marker (I7) and CAS as ring_take_slow (rings.c); anything else (no run,
 * the run at run_max, an empty or bad cell, a lost race, a stale entry)
 * goes to ring_take_slow, which sorts it out. */
static inline int ring_take(ar_queue *q, int r, uint32_t e, uint32_t *vout, uint64_t *wout, ar_run *run) {
    if (!run || run->next == run->start || run->next - run->start >= q->run_max)
        return ring_take_slow(q, r, e, vout, wout, run);
    uint64_t hd = run->next;
    uint64_t *cp = &q->cells[r][hd & q->mask];
    uint64_t c = LOAD(cp, ACQ); /* acquire: pairs with the push CAS (the slot is visible) */
    if (UNLIKELY(LOAD(&ring_count_probes, RLX)))
        FADD(&ring_probes, 1, RLX);
    uint32_t v = CELL_VAL(c);
    if (seq_diff(CELL_SEQ(c), hd + 1) != 0 || v >= q->capacity) /* I4 */
        return ring_take_slow(q, r, e, vout, wout, run);
    uint64_t w = LOAD(&slot_at(q, v)->word, ACQ);
    if (UNLIKELY(ring_for_word(w) != r))
        return ring_take_slow(q, r, e, vout, wout, run);
    mark_take(q, e, r, v, w); /* I7: name what we take before we take it */
    /* seq_cst: releases the marker store to whoever sees the pop. */
    if (!CAS(cp, &c, CELL(SEQ40(hd + q->capacity), v), SEQ, RLX)) {
        unmark_take(q, e);
        return ring_take_slow(q, r, e, vout, wout, run);
    }
    run->next = hd + 1;
    HOOK(H_RUN_TAKEN); /* head lags the run by >= 2: design.md 6.3 */
    *vout = v;
    *wout = w;
    return AR_OK;
}

/* Push slot index v onto ring r: AR_OK or AR_CORRUPT.  A push run's next
 * step is here, inline, as for ring_take: the next position's cell is free
 * for it, and its CAS claims it exactly as ring_push_slow's does; a cell
 * not free for that position (someone else pushed there), or the run at
 * run_max, goes to ring_push_slow, which ends the run and pushes from the
 * tail hint. */
static inline int ring_push(ar_queue *q, int r, uint32_t v, ar_run *run) {
    if (run && run->next != run->start && run->next - run->start < q->run_max) {
        uint64_t t = run->next;
        uint64_t *cp = &q->cells[r][t & q->mask];
        uint64_t c = LOAD(cp, ACQ);
        /* seq_cst: as ring_push_slow's claim (releases the slot's stores) */
        if (seq_diff(CELL_SEQ(c), t) == 0 && CAS(cp, &c, CELL(SEQ40(t + 1), v), SEQ, RLX)) {
            run->next = t + 1;
            HOOK(H_RUN_PUSHED); /* tail now lags the run by >= 2: design.md 6.3 */
            return AR_OK;
        }
    }
    return ring_push_slow(q, r, v, run);
}

#endif
