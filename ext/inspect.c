/*
 * inspect.c - looking at a queue: stats, raw snapshots for check(), peek
 * (look without taking), purge (drop what is ready).  design.md 9.
 * Snapshots are plain atomic loads, not atomic as a whole.
 */
#include "ar_internal.h"

int ar_stats_read(const ar_queue *q, ar_stats *st) {
    memset(st, 0, sizeof *st);
    if (q->corrupt)
        return CORRUPT();
    uint64_t oldest = 0;
    for (uint32_t i = 0; i < q->capacity; i++) {
        ar_slot *s = slot_at(q, i);
        uint64_t w = LOAD(&s->word, RLX);
        uint32_t state = SW_STATE(w);
        if (state == AR_S_READY)
            st->depth++;
        else if (state == AR_S_DELIVERED || state == AR_S_DYING)
            st->in_flight++;
        else if (state == AR_S_WRITING)
            st->writing++;
        else
            continue;
        if (state == AR_S_WRITING)
            continue;
        /* The oldest unsettled message, and who holds it: what an operator
         * needs when producers wait (capacity messages unsettled). */
        uint64_t pub = LOAD(&s->publish_ns, RLX);
        if (pub && (!oldest || pub < oldest)) {
            oldest = pub;
            st->oldest_publish_ns = pub;
            uint64_t use = LOAD(&s->use, RLX);
            st->oldest_id = use ? msg_id(q, use, i) : 0;
            st->oldest_state = state;
            uint32_t owner = SW_OWNER(w);
            st->oldest_pid = (state != AR_S_READY && owner < q->max_clients)
                                 ? EW_PID(LOAD(&entry_at(q, owner)->word, RLX))
                                 : 0;
        }
    }
    uint64_t c[CNT_N];
    for (int k = 0; k < CNT_N; k++)
        c[k] = LOAD(&q->hdr->retired[k], RLX);
    for (uint32_t i = 0; i < q->max_clients; i++) {
        ar_entry *en = entry_at(q, i);
        uint64_t w = LOAD(&en->word, ACQ);
        if (EW_STATE(w) == E_FREE)
            continue;
        for (int k = 0; k < CNT_N; k++)
            c[k] += LOAD(&en->count[k], RLX);
        if (EW_STATE(w) == E_ACTIVE) {
            if (EW_ROLE(w) == AR_ROLE_PRODUCER)
                st->producers++;
            else if (EW_ROLE(w) == AR_ROLE_CONSUMER)
                st->consumers++;
            else
                st->observers++;
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
    st->recovered = c[CNT_RECOVERED];
    st->stale = c[CNT_STALE];
    st->purged = c[CNT_PURGED];
    st->reclaimed_entries = LOAD(&q->hdr->reclaimed_entries, RLX);
    st->capacity = q->capacity;
    st->message_size = q->message_size;
    st->max_clients = q->max_clients;
    st->shutdown = shut_down(q);
    st->durability = q->durability;
    uint64_t *ringn[3] = {&st->free_ring, &st->ready_ring, &st->requeue_ring};
    for (int r = 0; r < R_COUNT; r++)
        *ringn[r] = ring_count(q, r);
    st->syncs = LOAD(&q->hdr->syncs, RLX);
    st->synced_seq = LOAD(&q->hdr->sync_done, RLX);
    st->pub_seq = LOAD(&q->hdr->pub_seq, RLX);
    /* The SIGBUS guard may have marked us while we read (the file was
     * truncated under us): what we read then was zero pages, not the queue. */
    if (q->corrupt) {
        memset(st, 0, sizeof *st);
        return CORRUPT();
    }
    return AR_OK;
}

int ar_inspect_header(const ar_queue *q, ar_header_raw *o) {
    memset(o, 0, sizeof *o);
    const ar_header *h = q->hdr;
    o->magic = LOAD(&h->magic, RLX);
    o->version = LOAD(&h->version, RLX);
    o->header_size = LOAD(&h->header_size, RLX);
    o->capacity = LOAD(&h->capacity, RLX);
    o->message_size = LOAD(&h->message_size, RLX);
    o->slot_size = LOAD(&h->slot_size, RLX);
    o->max_clients = LOAD(&h->max_clients, RLX);
    o->flags = LOAD(&h->flags, RLX);
    o->mode = LOAD(&h->mode, RLX);
    o->queue_id = LOAD(&h->queue_id, RLX);
    o->peer_id = LOAD(&h->peer_id, RLX);
    o->total_size = LOAD(&h->total_size, RLX);
    o->shutdown = LOAD(&h->shutdown, RLX);
    o->leases_seen = LOAD(&h->leases_seen, RLX);
    o->durability = LOAD(&h->durability, RLX);
    for (int r = 0; r < R_COUNT; r++) {
        o->head[r] = LOAD(&h->head[r].pos, ACQ);
        o->tail[r] = LOAD(&h->tail[r].pos, ACQ);
    }
    o->hint_lag = q->run_max;
    o->not_empty = LOAD(&h->not_empty.seq, RLX);
    o->not_full = LOAD(&h->not_full.seq, RLX);
    o->synced_seq = LOAD(&h->sync_done, RLX);
    o->pub_seq = LOAD(&h->pub_seq, RLX);
    return AR_OK;
}

int ar_inspect_slot(const ar_queue *q, uint32_t index, ar_slot_raw *o) {
    if (index >= q->capacity)
        return AR_INVAL;
    ar_slot *s = slot_at(q, index);
    o->word = LOAD(&s->word, ACQ);
    o->lease = LOAD(&s->lease, RLX);
    o->use = LOAD(&s->use, RLX);
    o->publish_ns = LOAD(&s->publish_ns, RLX);
    o->pub_seq = LOAD(&s->pub_seq, RLX);
    o->len = LOAD(&s->len, RLX);
    o->crc = LOAD(&s->crc, RLX);
    if (!(q->flags & AR_F_CHECKSUM))
        o->crc_ok = 2;
    else
        o->crc_ok = o->len <= q->message_size && slot_crc(q, s, o->len) == o->crc;
    return AR_OK;
}

int ar_inspect_cell(const ar_queue *q, uint32_t ring, uint32_t index, uint64_t *cell) {
    if (ring >= R_COUNT || index >= q->capacity)
        return AR_INVAL;
    *cell = LOAD(&q->cells[ring][index], ACQ);
    return AR_OK;
}

/* ---------------------------------------------------------------- peek */

int ar_peek(const ar_queue *q, ar_peek_item *items, size_t n, size_t *got) {
    *got = 0;
    if (q->corrupt)
        return CORRUPT();
    /* Delivery order: the requeue ring, then the ready ring; the entries
     * from head to tail, each hint allowed its lag (I1): at most a lap and
     * two runs. */
    for (int r = R_REQUEUE; r >= R_READY && *got < n; r--) {
        uint64_t hd = LOAD(&q->hdr->head[r].pos, ACQ), t = LOAD(&q->hdr->tail[r].pos, ACQ);
        int64_t L = (int64_t)q->run_max, span = (int64_t)(t - hd);
        if (span < -L || span > (int64_t)q->capacity + L)
            return CORRUPT();
        for (uint64_t p = hd; (int64_t)(t + (uint64_t)L - p) > 0 && *got < n; p++) {
            uint64_t c = LOAD(&q->cells[r][p & q->mask], ACQ);
            if (seq_diff(CELL_SEQ(c), p + 1) != 0)
                continue; /* popped meanwhile */
            uint32_t v = CELL_VAL(c);
            if (v >= q->capacity)
                return CORRUPT();
            ar_slot *s = slot_at(q, v);
            uint64_t w = LOAD(&s->word, ACQ);
            if (SW_STATE(w) != AR_S_READY)
                continue;
            uint32_t len = LOAD(&s->len, RLX);
            uint64_t use = LOAD(&s->use, RLX);
            if (len > q->message_size || use == 0)
                return CORRUPT();
            if ((q->flags & AR_F_CHECKSUM) && slot_crc(q, s, len) != LOAD(&s->crc, RLX)) {
                /* A get would raise on this message (and discard it); so does
                 * a peek, rather than show a body that is not the one written.
                 * Unless the slot moved on while we read it (taken, settled,
                 * reused: a new use or state), which a sound queue does. */
                if (!slot_unchanged(q, v, w))
                    continue;
                return CORRUPT();
            }
            ar_peek_item *it = &items[(*got)++];
            it->id = msg_id(q, use, v);
            it->word = w;
            it->publish_ns = LOAD(&s->publish_ns, RLX);
            it->data = payload(s);
            it->len = len;
            it->delivery_count = SW_GEN(w);
            it->index = v;
            it->requeued = r == R_REQUEUE;
            it->dead_reason = 0;
            if (q->cfg.is_dlq && len >= AR_DEATH_SIZE) {
                ar_death dh; /* copied like the body: ar_peek_still says if it held */
                memcpy(&dh, it->data, AR_DEATH_SIZE);
                it->dead_original_id = dh.original_id;
                it->dead_queue_id = dh.queue_id;
                it->dead_publish_ns = dh.publish_ns;
                it->dead_ns = dh.dead_ns;
                it->dead_reason = dh.reason;
                it->dead_delivery_count = dh.delivery_count;
                it->data += AR_DEATH_SIZE;
                it->len -= AR_DEATH_SIZE;
            }
        }
    }
    if (q->corrupt) { /* truncated under us while we looked (SIGBUS guard) */
        *got = 0;
        return CORRUPT();
    }
    return AR_OK;
}

int ar_peek_still(const ar_queue *q, const ar_peek_item *it) {
    return it->index < q->capacity && slot_unchanged(q, it->index, it->word);
}

/* ---------------------------------------------------------------- purge */

int ar_purge(ar_client *c, uint64_t *n) {
    *n = 0;
    int rc = client_enter(c);
    if (rc != AR_OK)
        return rc;
    ar_queue *q = c->q;
    /* What is ready now: at most the entries present when we start, so a
     * producer that keeps publishing cannot keep us here. */
    uint64_t limit = 0;
    for (int r = R_READY; r <= R_REQUEUE; r++)
        limit += ring_count(q, r) + q->run_max; /* a hint may lag by a run (I1) */
    if (limit > q->capacity)
        limit = q->capacity;
    spin_lock(&c->lock);
    for (uint64_t k = 0; k < limit; k++) {
        uint32_t v;
        uint64_t w;
        int r, got = AR_EMPTY;
        for (r = R_REQUEUE; r >= R_READY; r--)
            if ((got = ring_take(q, r, c->entry, &v, &w, NULL)) != AR_EMPTY)
                break;
        if (got == AR_EMPTY)
            break;
        if (got != AR_OK) {
            rc = got;
            break;
        }
        if (free_slot(q, c->entry, v, &w, AR_OUT_PURGED, T11, NULL) == AR_OK)
            (*n)++;
        unmark_take(q, c->entry);
    }
    count(q, c->entry, CNT_PURGED, *n);
    spin_unlock(&c->lock);
    return client_done(c, rc);
}
