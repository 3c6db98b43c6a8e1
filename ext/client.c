/*
 * client.c - process-local producers and consumers: the calls the bindings
 * make.  Everything both bindings used to do twice lives here once: calls in
 * progress and close, re-registration after fork, prefetch accounting,
 * duplicate checks of batch settles, the give-back of a get that finished
 * after its consumer was closed.  design.md 8.
 *
 * Threads may share a client (cffi drops the GIL around every call): the
 * client's spinlock makes its entry's markers single-writer; `busy` counts
 * calls in progress so close() releases the entry only when the last returns.
 */
#include "ar_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------------ settings, hooks */

int ar_hook = H_OFF;
static const char *const hook_names[H_COUNT] = {
    "", "alloc_popped", "put_writing", "publish_ready", "get_popped", "get_taken", "ack_freed", "nack_ready",
    "dlq_dying", "dlq_copied", "reclaim_locked", "register_locked", "lease_taken", "extend_read", "sync_leader", "get_leased",
    "run_pushed", "run_taken"};

/* Pause mode ("pause:<point>"): the first thread to reach the point waits
 * there, alone (the rest of the process runs on), until
 * ar_test_hook_paused(1) lets it go or 30 s pass; that hit disarms the hook. */
static int hook_pause;
static int hook_parked, hook_go;

void ar_hook_hit(int point) {
    if (!LOAD(&hook_pause, ACQ)) {
        raise(SIGSTOP);
        return;
    }
    int expect = point;
    if (!CAS(&ar_hook, &expect, H_OFF, ACQREL, RLX))
        return; /* another thread took this hit */
    STORE(&hook_parked, 1, SEQ);
    uint64_t until = ar_now_ns() + 30000000000ull;
    while (!LOAD(&hook_go, ACQ) && ar_now_ns() < until)
        usleep(100);
    STORE(&hook_parked, 0, SEQ);
}

int ar_test_hook_paused(int release) {
    int parked = LOAD(&hook_parked, SEQ);
    if (release)
        STORE(&hook_go, 1, REL);
    return parked;
}

int ar_set_test_hook(const char *point) {
    if (!point || !*point) {
        ar_hook = H_OFF;
        return AR_OK;
    }
    int pause = strncmp(point, "pause:", 6) == 0;
    if (pause)
        point += 6;
    for (int i = 1; i < H_COUNT; i++)
        if (strcmp(point, hook_names[i]) == 0) {
            STORE(&hook_go, 0, RLX);
            STORE(&hook_pause, pause, REL);
            ar_hook = i;
            return AR_OK;
        }
    return AR_INVAL;
}

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

static int trace_corrupt = -1;
int ar_corrupt_at(const char *file, int line) {
    if (trace_corrupt < 0)
        trace_corrupt = getenv("ACKRING_TRACE_CORRUPT") != NULL;
    if (trace_corrupt)
        fprintf(stderr, "ackring: AR_CORRUPT at %s:%d (pid %d)\n", file, line, (int)getpid());
    return AR_CORRUPT;
}

const char *ar_status_name(int rc) {
    static const char *const names[] = {"OK", "EMPTY", "FULL", "AGAIN", "TOOBIG", "STALE", "CORRUPT",
                                        "INCOMPATIBLE", "TABLE_FULL", "EXISTS", "NOTFOUND", "INVAL",
                                        "ERRNO", "CLOSED", "PREFETCH", "SETTLED", "FORKED", "DENIED",
                                        "CLIENT_CLOSED", "WRONG_CLIENT"};
    return rc >= 0 && rc < (int)(sizeof names / sizeof *names) ? names[rc] : "?";
}

/* ------------------------------------------------------------------ client life */

static int take_entry(ar_client *c) {
    uint64_t word;
    uint32_t e;
    int rc = entry_register(c->q, c->role, &e, &word);
    if (rc != AR_OK)
        return rc;
    c->entry = e;
    c->word = word;
    c->fork_gen = ar_fork_gen;
    c->released = 0;
    return AR_OK;
}

int ar_client_new(ar_queue *q, uint32_t role, uint32_t prefetch, uint64_t lease_ns, ar_client **out) {
    *out = NULL;
    if (role < AR_ROLE_PRODUCER || role > AR_ROLE_CONSUMER || (lease_ns > AR_MAX_DURATION_NS && lease_ns != UINT64_MAX))
        return AR_INVAL;
    if (q->closed)
        return AR_CLIENT_CLOSED;
    if (q->corrupt)
        return CORRUPT();
    ar_client *c = calloc(1, sizeof *c);
    if (!c)
        return AR_ERRNO;
    c->q = q;
    c->role = role;
    c->prefetch = prefetch;
    c->lease_ns = lease_ns;
    c->lock_gen = ar_fork_gen;
    int rc = take_entry(c);
    if (rc != AR_OK) {
        free(c);
        return rc;
    }
    ar_queue_ref(q);
    *out = c;
    return AR_OK;
}

static void release(ar_client *c) {
    /* Exactly once, and only this fork generation's own registration. */
    if (XCHG(&c->released, 1, ACQREL) == 0 && c->fork_gen == ar_fork_gen) {
        entry_unregister(c->q, c->entry, c->word); /* requeues what a consumer held */
        STORE(&c->outstanding, 0, RLX);
    }
}

int client_enter(ar_client *c) {
    if (UNLIKELY(c->q->corrupt))
        return CORRUPT();
    /* Dekker with close(): busy up first, then look at closed (both seq_cst),
     * so either we see the close or the closer sees us busy. */
    FADD(&c->busy, 1, SEQ);
    if (UNLIKELY(LOAD(&c->closed, SEQ))) {
        client_leave(c);
        return AR_CLIENT_CLOSED;
    }
    if (UNLIKELY(c->fork_gen != ar_fork_gen)) {
        /* We are a fork child: the entry is the parent's.  Take our own.
         * The lock may have been held by a parent thread that the child does
         * not have: it starts free. */
        if (c->lock_gen != ar_fork_gen) {
            STORE(&c->lock.v, 0, RLX);
            c->lock_gen = ar_fork_gen;
        }
        spin_lock(&c->lock);
        int rc = AR_OK;
        if (c->fork_gen != ar_fork_gen) {
            STORE(&c->outstanding, 0, RLX);
            rc = take_entry(c);
        }
        spin_unlock(&c->lock);
        if (rc != AR_OK) {
            return client_done(c, rc);
        }
    }
    return AR_OK;
}

void client_leave(ar_client *c) {
    if (FADD(&c->busy, -1, SEQ) == 1 && LOAD(&c->close_pending, SEQ))
        release(c);
}

int ar_client_close(ar_client *c) {
    if (XCHG(&c->closed, 1, SEQ))
        return AR_OK;
    STORE(&c->close_pending, 1, SEQ);
    if (LOAD(&c->busy, SEQ) == 0)
        release(c);
    /* Our other threads asleep in a call wake and see the close. */
    wake_all(&c->q->hdr->not_empty);
    wake_all(&c->q->hdr->not_full);
    return AR_OK;
}

void ar_client_free(ar_client *c) {
    if (!c)
        return;
    ar_client_close(c);
    ar_queue *q = c->q;
    free(c);
    ar_queue_unref(q);
}

int ar_client_closed(const ar_client *c) { return LOAD(&c->closed, RLX); }
uint32_t ar_client_outstanding(const ar_client *c) { return (uint32_t)LOAD(&c->outstanding, RLX); }
uint32_t ar_client_prefetch(const ar_client *c) { return c->prefetch; }
uint32_t ar_client_entry(const ar_client *c) { return c->entry; }

/* ------------------------------------------------------------------ put */

typedef struct {
    const void *data;
    uint32_t len;
    uint64_t ttl_ns;
    uint64_t *id;
} put_args;

static int try_put(ar_client *c, const void *data, uint32_t len, uint64_t ttl_ns, uint64_t *id) {
    ar_queue *q = c->q;
    if (UNLIKELY(shut_down(q)))
        return AR_CLOSED;
    uint32_t v;
    uint64_t ww, use;
    int rc = alloc_slot(q, c->entry, &v, &ww, &use, NULL);
    if (rc != AR_OK)
        return rc;
    ar_slot *s = slot_at(q, v);
    if (len)
        memcpy(payload(s), data, len);
    rc = publish_slot(q, c->entry, v, s, ww, len, ttl_ns, 0, NULL);
    if (rc == AR_OK)
        *id = msg_id(q, use, v);
    return rc;
}

/* put_many's non-blocking part, up to AR_RUN_MAX messages at a time: first
 * every slot of the chunk is allocated and written (WRITING, ours: a death
 * here leaves them to be discarded, T8, as for a single put that never
 * returned), then all are published (T2 and the ready push) in one tight
 * loop.  So the ready ring's cells are written a cache line at a time, not
 * one cell between two messages' work, and a consumer chasing them takes
 * each line once rather than once per cell.  runs: the call's free and
 * ready runs (rings.c); now_ns: its one clock read. *stored: how many were
 * published, in order. */
static int put_chunk(ar_client *c, const ar_iovec *msgs, size_t n, uint64_t ttl_ns, uint64_t *ids, uint64_t now_ns,
                     ar_run *runs, size_t *stored) {
    ar_queue *q = c->q;
    uint32_t v[AR_RUN_MAX];
    uint64_t ww[AR_RUN_MAX], use[AR_RUN_MAX];
    *stored = 0;
    if (UNLIKELY(shut_down(q)))
        return AR_CLOSED;
    if (n > AR_RUN_MAX)
        n = AR_RUN_MAX;
    int rc = AR_OK;
    size_t k = 0;
    for (; k < n; k++) {
        rc = alloc_slot(q, c->entry, &v[k], &ww[k], &use[k], &runs[R_FREE]);
        if (rc != AR_OK)
            break; /* AR_FULL: publish what we have, then the caller waits */
        if (msgs[k].len)
            memcpy(payload(slot_at(q, v[k])), msgs[k].data, msgs[k].len);
    }
    size_t j = 0;
    for (; j < k; j++) {
        int prc = publish_slot(q, c->entry, v[j], slot_at(q, v[j]), ww[j], (uint32_t)msgs[j].len, ttl_ns, now_ns,
                               &runs[R_READY]);
        if (prc != AR_OK) {
            rc = prc; /* only a corrupted segment: the rest are given up (T8) */
            for (size_t x = j + 1; x < k; x++) {
                uint64_t w = ww[x];
                free_slot(q, c->entry, v[x], &w, AR_OUT_DISCARDED, T8, NULL);
            }
            break;
        }
        ids[j] = msg_id(q, use[j], v[j]);
    }
    *stored = j;
    return rc;
}

static int put_attempt(ar_client *c, void *a) {
    put_args *pa = a;
    if (LOAD(&c->closed, RLX))
        return AR_CLIENT_CLOSED;
    spin_lock(&c->lock);
    int rc = try_put(c, pa->data, pa->len, pa->ttl_ns, pa->id);
    spin_unlock(&c->lock);
    return rc;
}

int ar_put(ar_client *c, const void *data, size_t len, uint64_t deadline, uint64_t ttl_ns, uint64_t *id) {
    if (len > c->q->message_size)
        return AR_TOOBIG;
    if (ttl_ns > AR_MAX_DURATION_NS)
        return AR_INVAL;
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    put_args pa = {data, (uint32_t)len, ttl_ns, id};
    rc = put_attempt(c, &pa);
    if (rc == AR_FULL && deadline != 0)
        rc = wait_for(c, &c->q->hdr->not_full, deadline, put_attempt, &pa, AR_FULL);
    if (rc == AR_OK && c->q->durability == AR_DUR_SYNC)
        rc = durable_confirm(c->q, 0, deadline);
    return client_done(c, rc);
}

int ar_put_many(ar_client *c, const ar_iovec *msgs, size_t n, uint64_t deadline, uint64_t ttl_ns, uint64_t *ids,
                size_t *done) {
    ar_queue *q = c->q;
    /* The whole batch is checked first: a too-long message anywhere means
     * nothing is written. */
    for (size_t i = *done; i < n; i++)
        if (msgs[i].len > q->message_size)
            return AR_TOOBIG;
    if (ttl_ns > AR_MAX_DURATION_NS)
        return AR_INVAL;
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    size_t start = *done;
    rc = AR_OK;
    /* One lock, one entry check, one clock read and ring runs (rings.c) for
     * the non-blocking puts; the runs end before the lock is let go. */
    ar_run runs[R_COUNT] = {{0}};
    uint64_t now = ar_realtime_ns();
    spin_lock(&c->lock);
    while (*done < n && !LOAD(&c->closed, RLX)) {
        size_t k;
        rc = put_chunk(c, msgs + *done, n - *done, ttl_ns, ids + *done, now, runs, &k);
        *done += k;
        if (rc != AR_OK)
            break;
    }
    ring_run_end(q, R_FREE, &runs[R_FREE]);
    ring_run_end(q, R_READY, &runs[R_READY]);
    spin_unlock(&c->lock);
    if (*done < n && rc == AR_OK)
        rc = AR_CLIENT_CLOSED;
    if (rc == AR_FULL && deadline != 0) {
        put_args pa = {msgs[*done].data, (uint32_t)msgs[*done].len, ttl_ns, &ids[*done]};
        rc = wait_for(c, &q->hdr->not_full, deadline, put_attempt, &pa, AR_FULL);
        if (rc == AR_OK) {
            (*done)++;
            if (*done < n)
                rc = AR_AGAIN; /* room again: the caller calls once more for the rest */
        }
    }
    /* Group commit: one sync for everything this call stored. */
    if (*done > start && q->durability == AR_DUR_SYNC) {
        int crc = durable_confirm(q, 0, deadline);
        if (crc != AR_OK)
            rc = crc;
    }
    return client_done(c, rc);
}

/* ------------------------------------------------------------------ reserve / commit */

typedef struct {
    ar_reservation *r;
} claim_args;

static int claim_attempt(ar_client *c, void *a) {
    ar_reservation *r = ((claim_args *)a)->r;
    if (LOAD(&c->closed, RLX))
        return AR_CLIENT_CLOSED;
    if (shut_down(c->q))
        return AR_CLOSED;
    uint32_t v;
    uint64_t ww, use;
    spin_lock(&c->lock);
    int rc = alloc_slot(c->q, c->entry, &v, &ww, &use, NULL);
    spin_unlock(&c->lock);
    if (rc != AR_OK)
        return rc;
    r->client = c;
    r->fork_gen = ar_fork_gen;
    r->index = v;
    r->word = ww;
    r->id = msg_id(c->q, use, v);
    r->buf = payload(slot_at(c->q, v));
    r->done = 0;
    return AR_OK;
}

int ar_reserve(ar_client *c, uint64_t deadline, ar_reservation *r) {
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    claim_args ca = {r};
    rc = claim_attempt(c, &ca);
    if (rc == AR_FULL && deadline != 0)
        rc = wait_for(c, &c->q->hdr->not_full, deadline, claim_attempt, &ca, AR_FULL);
    if (rc != AR_OK)
        return client_done(c, rc);
    /* else: an open reservation counts as a call in progress until it is
     * committed or aborted, so close() does not discard it under a writer. */
    return rc;
}

static int finish_reservation(ar_reservation *r, int commit, size_t len, uint64_t ttl_ns, uint64_t *id) {
    ar_client *c = r->client;
    if (!c || r->done)
        return AR_SETTLED;
    if (r->fork_gen != ar_fork_gen)
        return AR_FORKED;
    if (commit && (len > c->q->message_size || ttl_ns > AR_MAX_DURATION_NS))
        return AR_INVAL;
    ar_queue *q = c->q;
    int rc;
    spin_lock(&c->lock);
    if (LOAD(&slot_at(q, r->index)->word, ACQ) != r->word) {
        rc = AR_STALE;
    } else if (commit && !LOAD(&c->closed, RLX) && !shut_down(q)) {
        rc = publish_slot(q, c->entry, r->index, slot_at(q, r->index), r->word, (uint32_t)len, ttl_ns, 0, NULL);
        if (rc == AR_OK && id)
            *id = r->id;
    } else {
        uint64_t w = r->word;
        rc = free_slot(q, c->entry, r->index, &w, AR_OUT_DISCARDED, T8, NULL);
        if (rc == AR_OK)
            count(q, c->entry, CNT_DISCARDED, 1);
        if (rc == AR_OK && commit)
            rc = LOAD(&c->closed, RLX) ? AR_CLIENT_CLOSED : AR_CLOSED;
    }
    spin_unlock(&c->lock);
    r->done = 1;
    if (rc == AR_OK && commit && q->durability == AR_DUR_SYNC)
        rc = durable_confirm(q, 0, AR_NO_DEADLINE);
    return client_done(c, rc); /* the reservation's call in progress ends */
}

int ar_commit(ar_reservation *r, size_t len, uint64_t ttl_ns, uint64_t *id) {
    return finish_reservation(r, 1, len, ttl_ns, id);
}
int ar_abort(ar_reservation *r) { return finish_reservation(r, 0, 0, 0, NULL); }

/* ------------------------------------------------------------------ get */

/* get_many's state across its takes: its runs on the requeue and ready
 * rings, and the first ring to look at.  Once a batch found the requeue
 * ring empty it takes from the ready ring only: a nack landing during the
 * batch is concurrent with it, and the next call takes it. */
typedef struct {
    ar_run runs[R_COUNT];
    int top;
} ar_batch_take;

/* One take, requeued messages first (they go ahead of never-delivered ones).
 * bt: NULL (a single get), or get_many's state. */
static int try_get(ar_client *c, ar_delivery *d, ar_batch_take *bt) {
    ar_queue *q = c->q;
    uint32_t e = c->entry;
    for (uint32_t n = 0; n <= q->capacity + 1; n++) {
        int rc = AR_EMPTY, r;
        uint32_t v = 0;
        uint64_t w = 0;
        for (r = bt ? bt->top : R_REQUEUE; r >= R_READY; r--) {
            rc = bt ? ring_take(q, r, e, &v, &w, &bt->runs[r]) : ring_take_slow(q, r, e, &v, &w, NULL);
            if (rc != AR_EMPTY)
                break;
            if (bt)
                bt->top = R_READY;
        }
        if (rc == AR_EMPTY)
            return shut_down(q) ? AR_CLOSED : AR_EMPTY;
        if (rc != AR_OK)
            return rc;
        HOOK(H_GET_POPPED);
        uint64_t wd = SWORD(AR_S_DELIVERED, e, next_gen(SW_GEN(w)), SW_USE(w));
        /* T3: nobody else moves a READY slot whose index we popped. */
        if (!slot_cas(q, slot_at(q, v), &w, wd, T3)) {
            unmark_take(q, e);
            count(q, e, CNT_STALE, 1);
            continue;
        }
        HOOK(H_GET_TAKEN);
        unmark_take(q, e);
        rc = apply_rules(c, v, wd, d);
        if (rc == AR_TAKEN_AWAY)
            continue;
        if (rc == AR_OK) {
            d->client = c;
            d->fork_gen = ar_fork_gen;
            HOOK(H_GET_LEASED); /* handed out, body not yet copied: ar_intact's window */
        }
        return rc;
    }
    return CORRUPT();
}

static int get_attempt(ar_client *c, void *a) {
    if (LOAD(&c->closed, RLX))
        return AR_CLIENT_CLOSED;
    spin_lock(&c->lock);
    int rc = try_get(c, (ar_delivery *)a, NULL);
    spin_unlock(&c->lock);
    return rc;
}

/* A get that completes after another thread closed its consumer gives the
 * message straight back (it counts as a delivery: design.md 9). */
static void give_back(ar_client *c, ar_delivery *d) {
    uint64_t w = d->word;
    spin_lock(&c->lock);
    requeue_slot(c->q, c->entry, d->index, &w, T5, NULL);
    spin_unlock(&c->lock);
    d->flags |= AR_D_SETTLED;
}

static int prefetch_room(ar_client *c, size_t n, size_t *room) {
    if (!c->prefetch) {
        *room = n;
        return AR_OK;
    }
    int out = LOAD(&c->outstanding, RLX);
    if (out >= (int)c->prefetch)
        return AR_PREFETCH;
    *room = n < (size_t)(c->prefetch - (uint32_t)out) ? n : (size_t)(c->prefetch - (uint32_t)out);
    return AR_OK;
}

int ar_get(ar_client *c, ar_delivery *d, uint64_t deadline) {
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    size_t room;
    if (c->role != AR_ROLE_CONSUMER) {
        rc = AR_INVAL;
    } else if ((rc = prefetch_room(c, 1, &room)) == AR_OK) {
        rc = get_attempt(c, d);
        if (rc == AR_EMPTY && deadline != 0)
            rc = wait_for(c, &c->q->hdr->not_empty, deadline, get_attempt, d, AR_EMPTY);
        if (rc == AR_OK) {
            if (LOAD(&c->closed, SEQ)) {
                give_back(c, d);
                rc = AR_CLIENT_CLOSED;
            } else {
                FADD(&c->outstanding, 1, RLX);
            }
        }
    }
    return client_done(c, rc);
}

int ar_get_many(ar_client *c, ar_delivery *ds, size_t n, uint64_t deadline, size_t *got) {
    *got = 0;
    if (n == 0)
        return AR_OK;
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    size_t room = 0;
    if (c->role != AR_ROLE_CONSUMER) {
        rc = AR_INVAL;
    } else if ((rc = prefetch_room(c, n, &room)) == AR_OK) {
        rc = get_attempt(c, &ds[0]);
        if (rc == AR_EMPTY && deadline != 0)
            rc = wait_for(c, &c->q->hdr->not_empty, deadline, get_attempt, &ds[0], AR_EMPTY);
        if (rc == AR_OK) {
            size_t k = 1;
            ar_batch_take bt = {.top = R_REQUEUE};
            spin_lock(&c->lock);
            int r2 = AR_OK;
            while (k < room && (r2 = try_get(c, &ds[k], &bt)) == AR_OK)
                k++;
            ring_run_end(c->q, R_READY, &bt.runs[R_READY]);
            ring_run_end(c->q, R_REQUEUE, &bt.runs[R_REQUEUE]);
            spin_unlock(&c->lock);
            if (LOAD(&c->closed, SEQ)) {
                for (size_t i = 0; i < k; i++)
                    give_back(c, &ds[i]);
                rc = AR_CLIENT_CLOSED;
            } else {
                FADD(&c->outstanding, (int)k, RLX);
                *got = k;
                /* what stopped the batch short (corruption) is reported next call */
            }
        }
    }
    return client_done(c, rc);
}

/* I9.  After the binding copied a delivery's body out of the slot: was the
 * delivery still ours all through the copy?  A lease can run out before the
 * copy is made (the process was stopped or descheduled past ack_timeout):
 * the scan takes the message back (T9), another consumer may ack it and a
 * producer reuse the slot, so the bytes copied may be another message's.
 * Seqlock reader: the copy's loads, an acquire fence, then the word; every
 * writer of a payload first moves the word away from ours (T1 in alloc_slot,
 * with its release fence).  drop: a stale delivery is given up here (settled
 * locally, no longer outstanding) and the caller looks again. */
int ar_intact(ar_delivery *d, int drop) {
    ar_client *c = d->client;
    if (!c)
        return AR_INVAL;
    if (d->flags & AR_D_SETTLED)
        return AR_SETTLED;
    if (slot_unchanged(c->q, d->index, d->word))
        return AR_OK;
    if (drop) {
        d->flags |= AR_D_SETTLED;
        FADD(&c->outstanding, -1, RLX); /* the scan counted it (lease_expired) */
    }
    return AR_STALE;
}

/* ------------------------------------------------------------------ settle */

static int check_delivery(ar_client *c, ar_delivery *d) {
    if (d->client != c)
        return d->client ? AR_WRONG_CLIENT : AR_INVAL;
    if (d->flags & AR_D_SETTLED)
        return AR_SETTLED;
    if (d->fork_gen != ar_fork_gen)
        return AR_FORKED;
    return AR_OK;
}

/* One settle under the client lock.  Counts are the caller's.  runs: NULL,
 * or settle_many's runs on the free and requeue rings. */
static int settle_one(ar_client *c, ar_delivery *d, int how, ar_run *runs) {
    ar_queue *q = c->q;
    uint64_t w = d->word;
    if (SW_OWNER(w) != c->entry || SW_STATE(w) != AR_S_DELIVERED)
        return AR_STALE;
    switch (how) {
    case AR_ACK:
        return free_slot(q, c->entry, d->index, &w, AR_OUT_ACKED, T4, runs ? &runs[R_FREE] : NULL);
    case AR_REQUEUE:
        return requeue_slot(q, c->entry, d->index, &w, T5, runs ? &runs[R_REQUEUE] : NULL);
    default:
        return dead_letter(q, c->entry, d->index, w, d, AR_DL_REJECTED);
    }
}

static const int settle_counter[3] = {CNT_ACKED, CNT_NACKED, -1};

int ar_settle(ar_delivery *d, int how) {
    ar_client *c = d->client;
    if (!c || how < AR_ACK || how > AR_REJECT)
        return AR_INVAL;
    if (d->flags & AR_D_SETTLED)
        return AR_SETTLED;
    if (d->fork_gen != ar_fork_gen) {
        d->flags |= AR_D_SETTLED;
        return AR_FORKED;
    }
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    spin_lock(&c->lock);
    /* Counted before the settle is visible: whoever sees its receipt (or the
     * freed room) and then reads stats() sees it counted; undone if it failed. */
    int k = settle_counter[how];
    if (k >= 0)
        count(c->q, c->entry, k, 1);
    rc = settle_one(c, d, how, NULL);
    if (rc != AR_OK && k >= 0)
        count(c->q, c->entry, k, (uint64_t)-1);
    spin_unlock(&c->lock);
    d->flags |= AR_D_SETTLED;
    FADD(&c->outstanding, -1, RLX);
    return client_done(c, rc);
}

int ar_settle_many(ar_client *c, ar_delivery *const *ds, size_t n, int how, int *rcs, size_t *bad) {
    *bad = 0;
    if (how < AR_ACK || how > AR_REJECT)
        return AR_INVAL;
    /* Every item checked before anything is settled; repeats found by a mark. */
    int rc = AR_OK;
    size_t i;
    for (i = 0; i < n && rc == AR_OK; i++) {
        rc = check_delivery(c, ds[i]);
        if (rc == AR_OK && (ds[i]->flags & AR_D_MARK))
            rc = AR_SETTLED; /* the same message twice */
        if (rc == AR_OK)
            ds[i]->flags |= AR_D_MARK;
    }
    for (size_t k = 0; k < i; k++)
        ds[k]->flags &= ~AR_D_MARK;
    if (rc != AR_OK) {
        *bad = i - 1;
        return rc;
    }
    if (n == 0)
        return AR_OK;
    rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    uint64_t ok = 0;
    int k = settle_counter[how];
    spin_lock(&c->lock);
    if (k >= 0)
        count(c->q, c->entry, k, n); /* before any settle is visible, as in ar_settle */
    ar_run runs[R_COUNT] = {{0}};
    for (i = 0; i < n; i++) {
        rcs[i] = settle_one(c, ds[i], how, runs);
        ok += rcs[i] == AR_OK;
        ds[i]->flags |= AR_D_SETTLED;
    }
    ring_run_end(c->q, R_FREE, &runs[R_FREE]);
    ring_run_end(c->q, R_REQUEUE, &runs[R_REQUEUE]);
    if (k >= 0 && ok < n)
        count(c->q, c->entry, k, (uint64_t)0 - (n - ok));
    spin_unlock(&c->lock);
    FADD(&c->outstanding, -(int)n, RLX);
    return client_done(c, AR_OK);
}
