/*
 * delivery.c - the delivery rules: what a take hands out, dead letters
 * (reject, delivery limit, TTL), ack leases and their expiry, receipts.
 * design.md 7.
 */
#include "ar_internal.h"

static const int dl_counter[5] = {0, CNT_DL_REJECTED, CNT_DL_LIMIT, CNT_DL_EXPIRED, CNT_DL_LEASE};

/* I4: read a taken slot's fields and check them before anything trusts
 * them: the length against message_size, the use count against the word,
 * the checksum (checksummed queues), the dead-letter header (DLQ). */
static int read_slot(ar_queue *q, uint32_t v, uint64_t w, ar_delivery *d) {
    ar_slot *s = slot_at(q, v);
    uint32_t len = LOAD(&s->len, RLX);
    uint64_t use = LOAD(&s->use, RLX);
    if (len > q->message_size || (uint32_t)use != SW_USE(w) || use == 0)
        return CORRUPT();
    if ((q->flags & AR_F_CHECKSUM) && slot_crc(q, s, len) != LOAD(&s->crc, RLX))
        return CORRUPT();
    d->index = v;
    d->word = w;
    d->id = msg_id(q, use, v);
    d->data = payload(s);
    d->len = len;
    d->delivery_count = SW_GEN(w);
    d->publish_ns = LOAD(&s->publish_ns, RLX);
    d->flags = 0;
    d->dead_reason = 0;
    if (q->cfg.is_dlq) {
        if (len < AR_DEATH_SIZE)
            return CORRUPT();
        ar_death dh;
        memcpy(&dh, d->data, AR_DEATH_SIZE);
        if (dh.reason < AR_DL_REJECTED || dh.reason > AR_DL_LEASE_EXPIRED)
            return CORRUPT();
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

int dlq_entry(ar_queue *q, uint32_t *e) {
    /* Our entry in the DLQ (an observer: not counted as a producer there);
     * made on first use and again after a fork.  Called under dlq_mu. */
    ar_queue *dq = q->dlq;
    if (q->dlq_entry < dq->max_clients && q->dlq_gen == ar_fork_gen && entry_is_mine(dq, q->dlq_entry)) {
        *e = q->dlq_entry;
        return AR_OK;
    }
    uint64_t word;
    int rc = entry_register(dq, AR_ROLE_OBSERVER, e, &word);
    if (rc != AR_OK)
        return rc;
    q->dlq_entry = *e;
    q->dlq_gen = ar_fork_gen;
    return AR_OK;
}

/* Copy a dead letter into the DLQ.  A full DLQ drops its oldest ready dead
 * letter to make room; if every one is held by a DLQ consumer, the new one
 * is dropped.  Either way it is counted: a full DLQ never blocks the main
 * queue. */
static int dlq_put(ar_queue *q, uint32_t e, const ar_death *dh, const unsigned char *body, uint32_t blen) {
    ar_queue *dq = q->dlq;
    if (dq->corrupt)
        return CORRUPT();
    if ((uint64_t)blen + AR_DEATH_SIZE > dq->message_size)
        return AR_TOOBIG;
    pthread_mutex_lock(&q->dlq_mu);
    uint32_t de;
    int rc = dlq_entry(q, &de);
    for (int tries = 0; rc == AR_OK && tries < 8; tries++) {
        uint32_t v;
        uint64_t ww, use;
        rc = alloc_slot(dq, de, &v, &ww, &use, NULL);
        if (rc == AR_OK) {
            ar_slot *s = slot_at(dq, v);
            memcpy(payload(s), dh, AR_DEATH_SIZE);
            if (blen)
                memcpy(payload(s) + AR_DEATH_SIZE, body, blen);
            rc = publish_slot(dq, de, v, s, ww, AR_DEATH_SIZE + blen, 0, 0, NULL);
            break;
        }
        if (rc != AR_FULL)
            break;
        /* Full: drop the oldest dead letter nobody holds (T11). */
        int dropped = 0;
        for (int r = R_READY; r <= R_REQUEUE && !dropped; r++) {
            uint64_t w;
            if (ring_take(dq, r, de, &v, &w, NULL) == AR_OK) {
                if (free_slot(dq, de, v, &w, AR_OUT_DROPPED, T11, NULL) == AR_OK) {
                    count(dq, de, CNT_DROPPED, 1);
                    count(q, e, CNT_DLQ_DROPPED, 1);
                    dropped = 1;
                }
                unmark_take(dq, de);
            }
        }
        if (!dropped)
            break; /* every dead letter is held: the new one is dropped */
        rc = AR_OK;
    }
    pthread_mutex_unlock(&q->dlq_mu);
    return rc;
}

int dead_letter(ar_queue *q, uint32_t e, uint32_t v, uint64_t w, const ar_delivery *d, uint32_t reason) {
    ar_slot *s = slot_at(q, v);
    if (SW_STATE(w) == AR_S_DELIVERED) {
        /* Fence (T6): DYING is skipped by lease scans, so a message is never
         * both dead-lettered and taken back, short of a death in between. */
        uint64_t dying = SWORD(AR_S_DYING, e, SW_GEN(w), SW_USE(w));
        if (!slot_cas(q, s, &w, dying, T6))
            return AR_STALE;
        w = dying;
    }
    HOOK(H_DLQ_DYING);
    uint32_t outcome = AR_OUT_DROPPED;
    if (q->dlq) {
        ar_death dh = {d->id, q->queue_id, d->publish_ns, ar_realtime_ns(), reason, d->delivery_count};
        if (dlq_put(q, e, &dh, d->data, d->len) == AR_OK)
            outcome = AR_OUT_DEAD + reason;
        else
            count(q, e, CNT_DLQ_DROPPED, 1);
    }
    HOOK(H_DLQ_COPIED);
    /* dropped: no DLQ (a DLQ's own rejects, a DLQ removed by hand) or no
     * room in it (also counted as dlq_dropped above).  Counted before the
     * settle (and its receipt) is visible, undone if it fails. */
    int which = outcome == AR_OUT_DROPPED ? CNT_DROPPED : dl_counter[reason];
    count(q, e, which, 1);
    int rc = free_slot(q, e, v, &w, outcome, T7, NULL);
    if (rc != AR_OK)
        count(q, e, which, (uint64_t)-1);
    return rc;
}

int fill_delivery(ar_queue *q, uint32_t e, uint32_t v, uint64_t w, ar_delivery *d) {
    int rc = read_slot(q, v, w, d);
    if (rc == AR_CORRUPT) {
        /* Discarded (T14): an error is raised, nothing is silently skipped. */
        if (free_slot(q, e, v, &w, AR_OUT_DISCARDED, T14, NULL) == AR_OK)
            count(q, e, CNT_DISCARDED, 1);
    }
    return rc;
}

/* We hold slot v (word w, just taken).  A message over the delivery limit
 * or past its TTL is dead-lettered, never handed out; otherwise its lease
 * starts and it is handed out. */
int apply_rules(ar_client *c, uint32_t v, uint64_t w, ar_delivery *d) {
    ar_queue *q = c->q;
    uint32_t e = c->entry;
    int rc = fill_delivery(q, e, v, w, d);
    if (rc != AR_OK)
        return rc;
    ar_slot *s = slot_at(q, v);
    uint32_t gen = SW_GEN(w);
    uint64_t exp = LOAD(&s->expire_ns, RLX);
    int over = q->cfg.max_deliveries && gen > q->cfg.max_deliveries;
    if (over || (exp && ttl_clock_ns(q) >= exp)) {
        /* Taken for a delivery that never happens: the death record counts
         * only the deliveries that did. */
        d->delivery_count = gen - 1;
        dead_letter(q, e, v, w, d, over ? AR_DL_DELIVERY_LIMIT : AR_DL_EXPIRED);
        return AR_TAKEN_AWAY;
    }
    uint64_t lease_ns = c->lease_ns ? c->lease_ns : q->cfg.ack_timeout_ns;
    uint64_t lease = 0;
    if (lease_ns && lease_ns != UINT64_MAX) {
        lease = LEASE((ar_now_ns() + lease_ns + 999999) / 1000000, LEASE_TAG(w));
        if (!LOAD(&q->hdr->leases_seen, RLX))
            STORE(&q->hdr->leases_seen, 1, RLX);
    }
    /* Always stored, so no lease of an earlier delivery of this slot can
     * apply to this one.  release: pairs with the lease scan's acquire. */
    STORE(&s->lease, lease, REL);
    if (gen > 1)
        count(q, e, CNT_REDELIVERED, 1);
    return AR_OK;
}

/* ---------------------------------------------------------------- leases */

int expire_leases(ar_queue *q, uint32_t o, uint32_t *n) {
    *n = 0;
    uint64_t now_ms = ar_now_ns() / 1000000;
    int rc = AR_OK;
    for (uint32_t i = 0; i < q->capacity; i++) {
        ar_slot *s = slot_at(q, i);
        uint64_t w = LOAD(&s->word, ACQ);
        if (SW_STATE(w) != AR_S_DELIVERED)
            continue;
        uint64_t l = LOAD(&s->lease, ACQ), tag = LEASE_TAG(w);
        if (LEASE_TAGOF(l) != tag || l == 0 || now_ms < LEASE_MS(l))
            continue;
        /* Take the lease first (deadline 0 = taken): an extend racing us now
         * fails instead of returning OK for a delivery we take back.  A lease
         * already taken (a scanner that died before it took the delivery
         * back, or one racing us) is taken back all the same: the slot CAS
         * below lets only one of us do it. */
        if (LEASE_MS(l) != 0 && !CAS(&s->lease, &l, LEASE(0, tag), SEQ, RLX))
            continue;
        HOOK(H_LEASE_TAKEN);
        uint32_t gen = SW_GEN(w);
        if (q->cfg.max_deliveries && gen >= q->cfg.max_deliveries) {
            /* Its last allowed delivery ran out: take it over (T10), then
             * dead-letter it as ours. */
            uint64_t dying = SWORD(AR_S_DYING, o, gen, SW_USE(w));
            if (!slot_cas(q, s, &w, dying, T10))
                continue;
            ar_delivery d;
            if (read_slot(q, i, dying, &d) != AR_OK) {
                free_slot(q, o, i, &dying, AR_OUT_DISCARDED, T7, NULL);
                rc = CORRUPT();
                continue;
            }
            if (dead_letter(q, o, i, dying, &d, AR_DL_LEASE_EXPIRED) == AR_OK)
                (*n)++;
        } else {
            count(q, o, CNT_LEASE_EXPIRED, 1); /* before the redelivery is visible */
            if (requeue_slot(q, o, i, &w, T9, NULL) == AR_OK)
                (*n)++;
            else
                count(q, o, CNT_LEASE_EXPIRED, (uint64_t)-1);
        }
    }
    return rc;
}

int ar_extend(ar_delivery *d, uint64_t lease_ns) {
    ar_client *c = d->client;
    if (!c)
        return AR_INVAL;
    if (d->flags & AR_D_SETTLED)
        return AR_SETTLED;
    if (d->fork_gen != ar_fork_gen)
        return AR_FORKED;
    if (lease_ns == 0 || lease_ns > AR_MAX_DURATION_NS)
        return AR_INVAL;
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    ar_queue *q = c->q;
    ar_slot *s = slot_at(q, d->index);
    uint64_t tag = LEASE_TAG(d->word);
    rc = AR_STALE;
    for (int tries = 0; tries < 16; tries++) {
        if (LOAD(&s->word, ACQ) != d->word)
            break;
        uint64_t l = LOAD(&s->lease, ACQ);
        HOOK(H_EXTEND_READ);
        /* The lease we read must be this delivery's (or none: extend then
         * starts one); one taken by a scan (deadline 0) means we lost. */
        if (l != 0 && (LEASE_TAGOF(l) != tag || LEASE_MS(l) == 0))
            break;
        uint64_t ms = (ar_now_ns() + lease_ns + 999999) / 1000000;
        if (ms > LEASE_MAX_MS) {
            rc = AR_INVAL;
            break;
        }
        if (!CAS(&s->lease, &l, LEASE(ms, tag), SEQ, RLX))
            continue; /* another thread extended, or a scan took it: look again */
        if (!LOAD(&q->hdr->leases_seen, RLX))
            STORE(&q->hdr->leases_seen, 1, RLX);
        /* After our CAS a scan can act only on a deadline it saw passed:
         * ours is in the future.  The word tells whether it was still ours. */
        rc = LOAD(&s->word, SEQ) == d->word ? AR_OK : AR_STALE;
        break;
    }
    return client_done(c, rc);
}

/* ---------------------------------------------------------------- receipts */

typedef struct {
    uint64_t id;
    uint32_t *outcome;
} settled_args;

static int settled_attempt(ar_client *c, void *a) {
    settled_args *sa = a;
    ar_queue *q = c->q;
    if (LOAD(&c->closed, RLX))
        return AR_CLIENT_CLOSED;
    uint32_t i = (uint32_t)(sa->id & q->mask);
    uint64_t use = (sa->id >> q->shift) + 1;
    uint64_t w = LOAD(&slot_at(q, i)->word, SEQ); /* seq_cst: the re-check half of I6 */
    int32_t diff = (int32_t)(SW_USE(w) - (uint32_t)use);
    if (diff > 0) { /* the slot was reused: settled, outcome no longer recorded */
        *sa->outcome = AR_OUT_NONE;
        return AR_OK;
    }
    if (diff < 0)
        return AR_INVAL; /* never published */
    if (SW_STATE(w) != AR_S_FREE)
        return AR_EMPTY;
    *sa->outcome = SW_OWNER(w);
    return AR_OK;
}

int ar_wait_settled(ar_client *c, uint64_t id, uint64_t deadline, uint32_t *outcome) {
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    if ((id >> c->q->shift) >= 0xFFFFFFFFull) {
        client_leave(c);
        return AR_INVAL;
    }
    settled_args sa = {id, outcome};
    rc = settled_attempt(c, &sa);
    if (rc == AR_EMPTY && deadline != 0)
        /* Frees wake producers (a free slot is room), so receipts wait there. */
        rc = wait_for(c, &c->q->hdr->not_full, deadline, settled_attempt, &sa, AR_EMPTY);
    return client_done(c, rc);
}
