/*
 * ackring.h - the C core of ackring: a crash-safe ring of message slots in a
 * shared-memory segment, changed only by compare-and-swap on 64-bit slot words.
 *
 * One source, wrapped by the Cython backend (CPython) and meant to be wrapped
 * unchanged by a cffi backend (PyPy): no Python types appear here, every
 * function returns an AR_* status code, nothing is passed as a raw integer
 * pointer across the boundary.
 *
 * docs/design.md is the long form of the comments in this file and ackring.c:
 * the segment layout, the slot state machine, the invariants (I1..I6) and the
 * memory-ordering argument.  Each invariant is named again at the code that
 * keeps it.
 */
#ifndef ACKRING_H
#define ACKRING_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes (mapped to Python exceptions in src/ackring/_errors.py) */
enum {
    AR_OK = 0,
    AR_EMPTY = 1,        /* nothing deliverable (non-blocking get / deadline passed) */
    AR_FULL = 2,         /* no free slot (non-blocking put / deadline passed)        */
    AR_AGAIN = 3,        /* a wait slice elapsed or a signal arrived: check signals, retry */
    AR_TOOBIG = 4,       /* message longer than message_size; nothing written        */
    AR_STALE = 5,        /* settle of a delivery that is no longer current           */
    AR_CORRUPT = 6,      /* a word read from shared memory fails its bounds check    */
    AR_INCOMPATIBLE = 7, /* not an ackring segment, wrong version, truncated        */
    AR_TABLE_FULL = 8,   /* no free process-table entry                             */
    AR_EXISTS = 9,       /* create: the name exists                                 */
    AR_NOTFOUND = 10,    /* open/unlink: no such queue                              */
    AR_INVAL = 11,       /* bad argument                                            */
    AR_ERRNO = 12        /* a system call failed; errno holds the reason            */
};

/* ---- slot word: one 64-bit word per slot, the single source of truth (I1)
 *
 *   bits  0..3   state        AR_S_*
 *   bits  4..15  owner        process-table index; AR_NO_OWNER when none
 *   bits 16..31  gen          delivery generation = deliveries so far (wraps, skips 0)
 *   bits 32..63  lap          position / capacity, of the message the slot holds
 *                             (or last held, when FREE)
 */
enum {
    AR_S_FREE = 0,      /* settled (or never used); writable by position (lap+1)*cap+i */
    AR_S_WRITING = 1,   /* claimed by producer `owner`, payload being copied          */
    AR_S_READY = 2,     /* published: deliverable                                     */
    AR_S_DELIVERED = 3  /* held by consumer `owner` under generation `gen`            */
};
#define AR_NO_OWNER 0xFFFu

/* A FREE word's owner field records how the message there was settled, so a
 * producer can learn it (ar_wait_settled) until the slot is reused. */
enum {
    AR_OUT_ACKED = 0,
    AR_OUT_DROPPED = 1,       /* nack(requeue=False)/reject without a dead-letter queue */
    AR_OUT_DEAD = 2,          /* + AR_DL_* reason: dead-lettered */
    AR_OUT_DISCARDED = 0xFFE, /* never published (dead writer, aborted reservation) */
    AR_OUT_NONE = 0xFFF       /* never used */
};
/* Dead-letter reasons */
enum { AR_DL_REJECTED = 1, AR_DL_DELIVERY_LIMIT = 2, AR_DL_EXPIRED = 3, AR_DL_LEASE_EXPIRED = 4 };
#define AR_DEATH_SIZE 40
#define AR_MAX_CLIENTS 4095u

#define AR_W_STATE(w) ((uint32_t)((w) & 0xFu))
#define AR_W_OWNER(w) ((uint32_t)(((w) >> 4) & 0xFFFu))
#define AR_W_GEN(w) ((uint32_t)(((w) >> 16) & 0xFFFFu))
#define AR_W_LAP(w) ((uint32_t)((w) >> 32))
#define AR_WORD(state, owner, gen, lap)                                         \
    (((uint64_t)(uint32_t)(lap) << 32) | ((uint64_t)((gen) & 0xFFFFu) << 16) |   \
     ((uint64_t)((owner) & 0xFFFu) << 4) | (uint64_t)((state) & 0xFu))

#define AR_MAGIC 0x474E49524B434121ull /* "!ACKRING" little-endian */
#define AR_VERSION 1u
#define AR_MAX_MESSAGE_SIZE (1u << 30)   /* 1 GiB: beyond it a message is "absurd" */
#define AR_MAX_CAPACITY (1u << 24)
#define AR_NAME_MAX 204 /* 200 for a queue, plus ".dlq" for its dead-letter queue */

/* ---- roles of a process-table entry */
enum { AR_ROLE_PRODUCER = 1, AR_ROLE_CONSUMER = 2, AR_ROLE_OBSERVER = 3 };

/* ---- what a consumer holds after a get: enough to settle it later */
typedef struct ar_delivery {
    uint64_t pos;        /* ring position = message id                          */
    uint64_t word;       /* the DELIVERED word this delivery installed          */
    const unsigned char *data; /* payload inside the mapping                   */
    uint32_t len;        /* payload length, bounds-checked against message_size */
    uint32_t delivery_count;
    uint64_t publish_ns; /* CLOCK_REALTIME at publish                           */
    /* on a dead-letter queue: the death record (data/len are then the original body) */
    uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns;
    uint32_t dead_reason, dead_delivery_count;
} ar_delivery;

typedef struct ar_config {
    uint32_t max_deliveries; /* 0 = unlimited */
    uint32_t is_dlq;         /* a dead-letter queue: messages carry an ar_death header */
    uint64_t default_ttl_ns; /* 0 = none */
    uint64_t ack_timeout_ns; /* 0 = none */
} ar_config;

typedef struct ar_stats {
    uint64_t depth, in_flight, published, acked, nacked, redelivered, discarded, dropped;
    uint64_t rejected, dl_delivery_limit, dl_expired, dl_lease_expired, lease_expired, dlq_dropped;
    uint32_t producers, consumers, capacity, message_size, max_clients;
    uint64_t head, tail, requeued_hint;
} ar_stats;

/* Per-client liveness record as stored in the table (read by the Python layer,
 * which asks psutil whether pid with that start time still runs). */
typedef struct ar_client_info {
    uint32_t index, role, pid, state; /* state: 0 free, 1 claiming, 2 active, 3 dead, 4 closing */
    uint64_t start_time; /* identity of the process start: ms since boot, + 1 (0: not yet written) */
    uint64_t word;       /* the whole entry word (state, role, seq, pid): a reclaim verdict names it */
    uint32_t mine;       /* 1 if it is a live registration made through this handle */
} ar_client_info;

typedef struct ar_queue ar_queue; /* process-local handle; never shared */

/* Segment life */
int ar_create(const char *dir, const char *name, uint32_t capacity, uint32_t message_size,
              uint32_t max_clients, int mode, const ar_config *cfg, ar_queue **out);
void ar_get_config(const ar_queue *q, ar_config *cfg);
/* Give q this process's handle on its dead-letter queue and our producer
 * entry there; messages dead-lettered by this process go to it.  NULL detaches. */
void ar_attach_dlq(ar_queue *q, ar_queue *dlq, uint32_t dlq_entry);
int ar_open(const char *dir, const char *name, ar_queue **out);
int ar_unlink(const char *dir, const char *name);
void ar_close(ar_queue *q); /* munmap + free; caller guarantees no borrowed pointers remain */
int ar_check_name(const char *name);

/* Geometry, validated at open and kept process-local (never re-read from shm) */
uint32_t ar_capacity(const ar_queue *q);
uint32_t ar_message_size(const ar_queue *q);
uint32_t ar_max_clients(const ar_queue *q);
uint64_t ar_queue_id(const ar_queue *q);
uint64_t ar_created_ns(const ar_queue *q);

/* Process table */
int ar_register(ar_queue *q, uint32_t role, uint32_t pid, uint64_t start_time, uint32_t *entry);
int ar_unregister(ar_queue *q, uint32_t entry); /* requeues what the entry still holds, frees it */
/* 1 if `entry` is still this handle's own live registration (not closed, not
 * reclaimed from under us, not re-taken by anyone). */
int ar_entry_ok(const ar_queue *q, uint32_t entry);
/* Wake every sleeper of this queue (they re-check and see a close). */
void ar_wake_all(ar_queue *q);
int ar_get_client(const ar_queue *q, uint32_t index, ar_client_info *out);
/* Repair everything a dead client left behind and free its entry.
 * `verdict_word` (the entry word the caller judged dead) and `start_time`
 * must still match the entry, so a stale verdict cannot hit a newcomer.
 * *repaired gets the number of slots put right.  Serialised by the segment's
 * reclaim lock: returns AR_AGAIN when another live reclaimer holds it. */
int ar_reclaim_entry(ar_queue *q, uint32_t reclaimer, uint32_t index, uint64_t verdict_word,
                     uint64_t start_time, uint32_t *repaired);

/* Messages.  deadline_ns: 0 = do not wait, UINT64_MAX = no deadline, else an
 * absolute CLOCK_MONOTONIC time.  A blocking call waits at most one slice
 * (AR_WAIT_SLICE_NS) and returns AR_AGAIN so the caller can check signals. */
#define AR_WAIT_SLICE_NS 50000000ull
#define AR_NO_DEADLINE UINT64_MAX
/* ttl_ns: 0 = the queue's default; the lower of the two wins. */
int ar_put(ar_queue *q, uint32_t entry, const void *data, size_t len, uint64_t deadline_ns,
           uint64_t ttl_ns, uint64_t *id);
/* lease_ns: how long the delivery may stay unsettled before the lease scan
 * takes it back (0 = the queue's ack_timeout, UINT64_MAX = none).  Messages
 * over the delivery limit or past their TTL are dead-lettered on the way and
 * never handed out. */
int ar_get(ar_queue *q, uint32_t entry, ar_delivery *d, uint64_t deadline_ns, uint64_t lease_ns);
int ar_ack(ar_queue *q, uint32_t entry, const ar_delivery *d);
/* requeue=0 dead-letters with reason "rejected" (drops it on a DLQ). */
int ar_nack(ar_queue *q, uint32_t entry, const ar_delivery *d, int requeue);
/* Lengthen a delivery's lease to now + lease_ns; AR_STALE if it was taken back. */
int ar_extend(ar_queue *q, uint32_t entry, const ar_delivery *d, uint64_t lease_ns);
/* Take back every delivery whose lease ran out: requeued, or dead-lettered
 * (reason lease_expired) when it used its last allowed delivery.  Run by the
 * reclaim pass; `entry` is the caller's own.  *n gets the number taken back. */
int ar_expire_leases(ar_queue *q, uint32_t entry, uint32_t *n);
/* The settlement of message `id`: AR_OK with *outcome (AR_OUT_*), AR_EMPTY if
 * it is not settled yet (waits up to the deadline, one slice at a time:
 * AR_AGAIN), AR_INVAL if no such message was ever published.  AR_OUT_NONE
 * when the slot has been reused since: settled, outcome no longer known. */
int ar_wait_settled(ar_queue *q, uint32_t entry, uint64_t id, uint64_t deadline_ns, uint32_t *outcome);
/* Batches: one call per batch.  put_many stores msgs[*done..n) in order and
 * advances *done; it returns AR_OK when all are stored, else what stopped it
 * (AR_FULL at the deadline, AR_AGAIN after a slice: call again to go on).
 * get_many waits (like ar_get) for the first message only, then takes what is
 * ready, up to n; *got says how many.  ack_many settles each delivery and
 * writes its status into rcs[i]; one wakeup for the whole batch. */
typedef struct ar_iovec {
    const void *data;
    size_t len;
} ar_iovec;
int ar_put_many(ar_queue *q, uint32_t entry, const ar_iovec *msgs, size_t n, uint64_t deadline_ns,
                uint64_t ttl_ns, uint64_t *ids, size_t *done);
int ar_get_many(ar_queue *q, uint32_t entry, ar_delivery *ds, size_t n, uint64_t deadline_ns,
                uint64_t lease_ns, size_t *got);
int ar_ack_many(ar_queue *q, uint32_t entry, const ar_delivery *ds, size_t n, int *rcs);

/* Zero-copy send ("loan"): reserve claims the slot at tail in WRITING state
 * and hands out its payload area (message_size bytes); commit publishes `len`
 * bytes of it, abort discards the slot.  Consumers queue behind an open
 * reservation, so keep it short.  A producer that dies holding one is
 * repaired like any half-written put. */
int ar_reserve(ar_queue *q, uint32_t entry, uint64_t deadline_ns, uint64_t *pos, unsigned char **buf);
int ar_commit(ar_queue *q, uint32_t entry, uint64_t pos, size_t len, uint64_t ttl_ns);
int ar_abort(ar_queue *q, uint32_t entry, uint64_t pos);

int ar_stats_read(const ar_queue *q, ar_stats *st);

/* Raw inspection for q.check(): plain snapshots, bounds-checked indexes. */
typedef struct ar_header_raw {
    uint64_t magic, queue_id, total_size, head, tail, requeued, reclaim_lock;
    uint32_t version, header_size, capacity, message_size, slot_size, max_clients;
    uint32_t consumers_waiting, producers_waiting, leases_seen;
} ar_header_raw;
typedef struct ar_slot_raw {
    uint64_t word, id;
    uint32_t len;
} ar_slot_raw;
int ar_inspect_header(const ar_queue *q, ar_header_raw *out);
int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *out);
int ar_inspect_client_waiting(const ar_queue *q, uint32_t index, uint32_t *waiting);

/* Test hook: make this process SIGSTOP itself at a named point inside a
 * critical window, so a test can SIGKILL it exactly there.  Costs one
 * predictable branch per site when off.  Also read from the environment
 * variable ACKRING_TEST_STOP_AT when the library is loaded.  Points:
 * put_claimed, put_writing, get_claimed, ack_before, ack_after, nack_hint,
 * register_claimed, reclaim_locked. */
int ar_set_test_hook(const char *point);
uint64_t ar_now_ns(void); /* CLOCK_MONOTONIC */

#ifdef __cplusplus
}
#endif
#endif
