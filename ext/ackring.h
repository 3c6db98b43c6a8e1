/*
 * ackring.h - the public face of ackring's C core, the one header both
 * bindings (Cython for CPython, cffi for PyPy) wrap.  No Python types, every
 * function returns an AR_* status, no pointer crosses the boundary as an
 * integer.
 *
 * The core is split by concern, one file per room of docs/design.md:
 *   segment.c   create / open / validate / unlink, trust checks, SIGBUS guard, fork
 *   rings.c     the three index rings (free, ready, requeue) and their repair
 *   slots.c     the slot pool: allocation, publish, take, settle
 *   wait.c      eventcounts: spin, sleep on a futex, wake without a storm
 *   table.c     the process table: OFD-lock liveness, register, reclaim
 *   delivery.c  delivery rules: dead letters, limits, TTL, leases, receipts
 *   client.c    process-local clients: calls in progress, close, prefetch, batches
 *   inspect.c   stats, raw snapshots for check(), peek, purge
 *   durable.c   file-backed queues: group commit, checksums, rebuild after reboot
 *   crc32c.c    CRC32C (SSE4.2 when the CPU has it)
 */
#ifndef ACKRING_H
#define ACKRING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes (their Python meaning: src/ackring/_status.py) */
enum {
    AR_OK = 0,
    AR_EMPTY = 1,        /* nothing deliverable (non-blocking get / deadline passed) */
    AR_FULL = 2,         /* `capacity` messages unsettled (non-blocking put / deadline passed) */
    AR_AGAIN = 3,        /* a wait slice elapsed: check signals, call again */
    AR_TOOBIG = 4,       /* message longer than message_size; nothing written */
    AR_STALE = 5,        /* settle/extend of a delivery that is no longer current */
    AR_CORRUPT = 6,      /* something read from the segment fails its bounds check */
    AR_INCOMPATIBLE = 7, /* not an ackring segment of this layout, or truncated */
    AR_TABLE_FULL = 8,   /* no free process-table entry */
    AR_EXISTS = 9,       /* create: the name exists */
    AR_NOTFOUND = 10,    /* open/unlink: no such queue (or its directory is missing) */
    AR_INVAL = 11,       /* bad argument */
    AR_ERRNO = 12,       /* a system call failed; errno holds the reason */
    AR_CLOSED = 13,      /* the queue was shut down (puts at once, gets once drained) */
    AR_PREFETCH = 14,    /* the consumer holds `prefetch` unsettled messages */
    AR_SETTLED = 15,     /* the delivery (or reservation) was settled already */
    AR_FORKED = 16,      /* the delivery belongs to the parent process of a fork */
    AR_DENIED = 17,      /* not trusted: another owner, a symlink, unexpected write bits */
    AR_CLIENT_CLOSED = 18, /* the producer/consumer was closed */
    AR_WRONG_CLIENT = 19 /* the delivery belongs to another consumer */
};

/* ---- slot states (design.md 3).  A slot word is state | owner | gen | use. */
enum { AR_S_FREE = 0, AR_S_WRITING = 1, AR_S_READY = 2, AR_S_DELIVERED = 3, AR_S_DYING = 4 };
#define AR_NO_OWNER 0xFFFu

/* How a message was settled: recorded in its FREE slot word until reuse. */
enum {
    AR_OUT_ACKED = 0,
    AR_OUT_DROPPED = 1,       /* dead-lettered without room or without a DLQ */
    AR_OUT_DEAD = 2,          /* + AR_DL_* reason: dead-lettered (3..6) */
    AR_OUT_PURGED = 7,        /* removed by purge() */
    AR_OUT_DISCARDED = 0xFFE, /* never published (dead writer, aborted reservation) */
    AR_OUT_NONE = 0xFFF       /* never used, or reused since: outcome no longer known */
};
enum { AR_DL_REJECTED = 1, AR_DL_DELIVERY_LIMIT = 2, AR_DL_EXPIRED = 3, AR_DL_LEASE_EXPIRED = 4 };
#define AR_DEATH_SIZE 40
#define AR_MAX_CLIENTS 4095u
#define AR_MAGIC 0x474E49524B434121ull /* "!ACKRING" little-endian */
#define AR_VERSION 2u
#define AR_MAX_MESSAGE_SIZE (1u << 30)
#define AR_MAX_CAPACITY (1u << 24)
#define AR_MAX_DURATION_NS (86400ull * 365 * 1000000000ull) /* ttl / ack_timeout / lease: 1 year */

enum { AR_ROLE_PRODUCER = 1, AR_ROLE_CONSUMER = 2, AR_ROLE_OBSERVER = 3 };
enum { AR_DUR_MEMORY = 0, AR_DUR_OS = 1, AR_DUR_SYNC = 2 };
enum { AR_ACK = 0, AR_REQUEUE = 1, AR_REJECT = 2 };

/* deadline_ns: 0 = do not wait, AR_NO_DEADLINE = none, else CLOCK_MONOTONIC.
 * A blocking call waits at most one slice, then returns AR_AGAIN. */
#define AR_WAIT_SLICE_NS 50000000ull
#define AR_NO_DEADLINE UINT64_MAX

typedef struct ar_queue ar_queue;   /* process-local handle on one segment */
typedef struct ar_client ar_client; /* process-local producer / consumer */

typedef struct ar_config {
    uint32_t max_deliveries; /* 0 = unlimited (at most 65535) */
    uint32_t is_dlq;
    uint64_t default_ttl_ns; /* 0 = none */
    uint64_t ack_timeout_ns; /* 0 = none */
    uint32_t durability;     /* AR_DUR_* */
    uint32_t checksum;       /* CRC32C per message (always on for file queues) */
} ar_config;

typedef struct ar_create_args {
    const char *path;        /* the main queue's file; its DLQ is path + ".dlq" */
    uint32_t capacity, message_size, max_clients, dlq_capacity;
    int mode;                /* permission bits only (0..0777) */
    ar_config cfg;           /* of the main queue; its DLQ gets is_dlq and no rules */
} ar_create_args;

/* What a reclaim pass (or the open that ran one) put right. */
typedef struct ar_recovery {
    uint32_t entries;   /* dead process-table entries freed */
    uint32_t requeued;  /* messages a dead consumer held, redelivered */
    uint32_t discarded; /* half-written messages of dead producers, discarded */
    uint32_t repushed;  /* half-done ring operations finished */
    uint32_t leases;    /* deliveries whose ack lease ran out, taken back */
    uint32_t rebuilt;   /* 1 if the segment was rebuilt after a reboot */
    uint32_t torn;      /* torn slots discarded by that rebuild */
    uint32_t busy;      /* entries left for the next pass (their repair found work in progress) */
} ar_recovery;

typedef struct ar_delivery {
    ar_client *client;
    unsigned long fork_gen;
    uint64_t id;         /* message id: unique over the queue's life, same on every redelivery */
    uint64_t word;       /* the DELIVERED slot word this delivery installed */
    const unsigned char *data; /* payload inside the mapping (valid until settled) */
    uint32_t len;
    uint32_t delivery_count;
    uint32_t index;      /* slot index */
    uint32_t flags;      /* AR_D_* */
    uint64_t publish_ns; /* CLOCK_REALTIME at publish */
    /* on a dead-letter queue: the death record (data/len are then the original body) */
    uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns;
    uint32_t dead_reason, dead_delivery_count;
} ar_delivery;
#define AR_D_SETTLED 1u
#define AR_D_MARK 2u

typedef struct ar_reservation {
    ar_client *client;
    unsigned long fork_gen;
    uint64_t id;
    uint64_t word;       /* the WRITING word of the claim */
    unsigned char *buf;  /* message_size writable bytes */
    uint32_t index;
    uint32_t done;
} ar_reservation;

typedef struct ar_iovec {
    const void *data;
    size_t len;
} ar_iovec;

typedef struct ar_stats {
    uint64_t depth, in_flight, writing;
    uint64_t published, acked, nacked, redelivered, discarded, dropped, rejected;
    uint64_t dl_delivery_limit, dl_expired, dl_lease_expired, lease_expired, dlq_dropped;
    uint64_t recovered, stale, purged, reclaimed_entries;
    uint32_t producers, consumers, observers, capacity, message_size, max_clients;
    uint32_t shutdown, durability;
    uint64_t free_ring, ready_ring, requeue_ring; /* entries in each ring (tail - head) */
    uint64_t oldest_publish_ns; /* CLOCK_REALTIME publish time of the oldest unsettled message, 0 none */
    uint64_t oldest_id;
    uint32_t oldest_state, oldest_pid; /* AR_S_*, and the pid holding it (0: nobody) */
    uint64_t syncs, synced_seq, pub_seq;
} ar_stats;

typedef struct ar_entry_info {
    uint32_t index, state, role, pid, seq, mine, alive;
    uint64_t word, start_time, reg_ns, take_mark, push_mark;
} ar_entry_info;

typedef struct ar_header_raw {
    uint64_t magic, queue_id, peer_id, total_size;
    uint32_t version, header_size, capacity, message_size, slot_size, max_clients, flags, mode;
    uint32_t shutdown, leases_seen, durability;
    uint64_t head[3], tail[3]; /* free, ready, requeue */
    uint32_t not_empty, not_full;
    uint64_t synced_seq, pub_seq;
    uint32_t hint_lag; /* how far a head or tail may lag its ring's cells (a run, design.md I1); not in the segment */
} ar_header_raw;

typedef struct ar_slot_raw {
    uint64_t word, lease, use, publish_ns, pub_seq;
    uint32_t len, crc, crc_ok; /* crc_ok: 1 matches, 0 does not, 2 not checksummed */
} ar_slot_raw;

typedef struct ar_peek_item {
    uint64_t id, word, publish_ns;
    const unsigned char *data;
    uint32_t len, delivery_count, index, requeued;
    /* on a dead-letter queue, as in ar_delivery: the death record */
    uint64_t dead_original_id, dead_queue_id, dead_publish_ns, dead_ns;
    uint32_t dead_reason, dead_delivery_count;
} ar_peek_item;

/* ---- segment life (segment.c) */
int ar_check_name(const char *name);
/* Create the queue and its dead-letter queue together: both built under
 * private names, then linked into place; neither can be pre-planted. */
int ar_create_pair(const ar_create_args *a, ar_queue **main, ar_queue **dlq);
/* Open an existing segment.  It must be a regular file (no symlink) owned by
 * the effective uid or one of trust_uids, with no write bits beyond those
 * its creator asked for. */
int ar_open(const char *path, const uint32_t *trust_uids, size_t ntrust, ar_queue **out);
/* Attach q's dead-letter queue (checks they were made as a pair). */
int ar_attach_dlq(ar_queue *q, ar_queue *dlq);
/* Shut the queue down, then remove its file (and path.dlq's). */
int ar_unlink(const char *path, const uint32_t *trust_uids, size_t ntrust);
void ar_close(ar_queue *q);
int ar_shutdown(ar_queue *q);
int ar_is_shutdown(const ar_queue *q);
void ar_get_config(const ar_queue *q, ar_config *cfg);
uint32_t ar_capacity(const ar_queue *q);
uint32_t ar_message_size(const ar_queue *q);
uint32_t ar_max_clients(const ar_queue *q);
uint64_t ar_queue_id(const ar_queue *q);
uint64_t ar_created_ns(const ar_queue *q);
uint32_t ar_file_mode(const ar_queue *q);
int ar_sync(ar_queue *q); /* durable queues: fdatasync now (clean shutdown does it too) */

/* ---- process table and recovery (table.c) */
int ar_reclaim(ar_queue *q, ar_recovery *rec);
void ar_last_open(const ar_queue *q, ar_recovery *rec);
int ar_entry_info_get(const ar_queue *q, uint32_t index, ar_entry_info *out);

/* ---- clients (client.c) */
int ar_client_new(ar_queue *q, uint32_t role, uint32_t prefetch, uint64_t lease_ns, ar_client **out);
int ar_client_close(ar_client *c); /* idempotent; releases when the last call in progress returns */
void ar_client_free(ar_client *c); /* closes if needed, then frees (the binding's dealloc) */
int ar_client_closed(const ar_client *c);
uint32_t ar_client_outstanding(const ar_client *c);
uint32_t ar_client_prefetch(const ar_client *c);
uint32_t ar_client_entry(const ar_client *c);

int ar_put(ar_client *c, const void *data, size_t len, uint64_t deadline_ns, uint64_t ttl_ns, uint64_t *id);
/* Stores msgs[*done..n) in order, advancing *done; AR_OK when all are stored. */
int ar_put_many(ar_client *c, const ar_iovec *msgs, size_t n, uint64_t deadline_ns, uint64_t ttl_ns,
                uint64_t *ids, size_t *done);
int ar_reserve(ar_client *c, uint64_t deadline_ns, ar_reservation *r);
int ar_commit(ar_reservation *r, size_t len, uint64_t ttl_ns, uint64_t *id);
int ar_abort(ar_reservation *r);
int ar_get(ar_client *c, ar_delivery *d, uint64_t deadline_ns);
/* Waits for the first message only, then takes what is ready, up to n. */
int ar_get_many(ar_client *c, ar_delivery *ds, size_t n, uint64_t deadline_ns, size_t *got);
/* After copying d's body out of the mapping: AR_OK if the delivery was still
 * this consumer's all through the copy, AR_STALE if its lease ran out first
 * (the copy may hold another message's bytes: discard it).  drop=1 also
 * gives the stale delivery up (settled, no longer counted against prefetch). */
int ar_intact(ar_delivery *d, int drop);
int ar_settle(ar_delivery *d, int how); /* AR_ACK, AR_REQUEUE, AR_REJECT */
/* Settle a batch (pointers to deliveries of one consumer): every item is
 * checked first (wrong client, settled, forked, repeated) and nothing is
 * settled if one fails (its index in *bad).  rcs[i] gets each status. */
int ar_settle_many(ar_client *c, ar_delivery *const *ds, size_t n, int how, int *rcs, size_t *bad);
int ar_extend(ar_delivery *d, uint64_t lease_ns);
int ar_wait_settled(ar_client *c, uint64_t id, uint64_t deadline_ns, uint32_t *outcome);

/* ---- inspection (inspect.c) */
int ar_stats_read(const ar_queue *q, ar_stats *st);
int ar_inspect_header(const ar_queue *q, ar_header_raw *out);
int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *out);
int ar_inspect_cell(const ar_queue *q, uint32_t ring, uint32_t index, uint64_t *cell);
/* Look at up to n ready messages in delivery order without taking them.
 * The items point into the mapping: copy, then ar_peek_still(q, item). */
int ar_peek(const ar_queue *q, ar_peek_item *items, size_t n, size_t *got);
int ar_peek_still(const ar_queue *q, const ar_peek_item *item);
/* Drop every message that is ready now (not the ones held); *n says how many. */
int ar_purge(ar_client *c, uint64_t *n);

/* Test hook: SIGSTOP this process at a named point inside a critical window
 * (also from ACKRING_TEST_STOP_AT).  Points: alloc_popped, put_writing,
 * publish_ready, get_popped, get_taken, ack_freed, nack_ready, dlq_dying,
 * dlq_copied, reclaim_locked, register_locked, lease_taken, extend_read,
 * sync_leader, get_leased, run_pushed, run_taken (a batch's second or later
 * push / take of a ring run, before its hint moved).  One predictable
 * branch per site when off.
 * "pause:<point>" instead parks only the first thread to get there (the hook
 * disarms) until ar_test_hook_paused(1); ar_test_hook_paused(0) says whether
 * one is parked. */
int ar_set_test_hook(const char *point);
int ar_test_hook_paused(int release);
/* Test hook for durable queues: before each fdatasync, copy the file to
 * dir/snap-<n> (the state that sync makes durable).  NULL turns it off. */
int ar_set_sync_snapshots(const char *dir);
/* Test counters of this process (tests, bench/futex_hog.py), relaxed: the
 * FUTEX_WAIT and FUTEX_WAKE system calls wait.c made, always counted (not
 * the group commit's in durable.c, which only file queues with sync make). */
void ar_futex_counts(uint64_t *waits, uint64_t *wakes);
/* Test counter: ring cells ring takes (get, get_many) looked at, counted only
 * while enabled (one predictable branch per cell when off).  enable: 1 on,
 * 0 off, -1 unchanged; returns the count so far. */
uint64_t ar_ring_probes(int enable);
uint64_t ar_now_ns(void); /* CLOCK_MONOTONIC */
const char *ar_status_name(int rc);

#ifdef __cplusplus
}
#endif
#endif
