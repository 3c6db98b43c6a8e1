/*
 * slots.c - the slot pool: allocate, publish, settle, requeue, and the
 * release of everything an entry holds.  design.md 3.
 *
 * A slot's word is the single source of truth for its message (I2): state,
 * owner, delivery count (gen) and use (allocations of the slot).  Every
 * change is one CAS through slot_cas(); the rings only say where to look.
 * A message's storage (its slot) is apart from its place in the delivery
 * order (its ring entry), so a message held for an hour pins one slot and
 * nothing else.
 */
#include "ar_internal.h"

#include <stdio.h>
#include <stdlib.h>

/* Allowed (from, to) state pairs of each transition label: design.md 3.2.
 * Checked on every slot CAS in ACKRING_DEBUG builds. */
#ifdef ACKRING_DEBUG
static const struct { uint8_t from, to; } transitions[T16 + 1] = {
    [T1] = {AR_S_FREE, AR_S_WRITING},       /* allocate */
    [T2] = {AR_S_WRITING, AR_S_READY},      /* publish */
    [T3] = {AR_S_READY, AR_S_DELIVERED},    /* take (get) */
    [T4] = {AR_S_DELIVERED, AR_S_FREE},     /* ack */
    [T5] = {AR_S_DELIVERED, AR_S_READY},    /* nack(requeue) */
    [T6] = {AR_S_DELIVERED, AR_S_DYING},    /* dead-letter: fence */
    [T7] = {AR_S_DYING, AR_S_FREE},         /* dead-letter: settled */
    [T8] = {AR_S_WRITING, AR_S_FREE},       /* abort / discard a dead writer's slot */
    [T9] = {AR_S_DELIVERED, AR_S_READY},    /* lease ran out: taken back */
    [T10] = {AR_S_DELIVERED, AR_S_DYING},   /* lease ran out on the last delivery: taken over */
    [T11] = {AR_S_READY, AR_S_FREE},        /* dropped from a full DLQ, or purged */
    [T12] = {AR_S_DELIVERED, AR_S_READY},   /* holder closed or died: redelivered */
    [T13] = {AR_S_DYING, AR_S_READY},       /* dead-lettering interrupted by a death */
    [T14] = {AR_S_DELIVERED, AR_S_FREE},    /* taken, failed its bounds/checksum check: discarded */
    [T15] = {AR_S_DELIVERED, AR_S_DELIVERED}, /* (unused) */
    [T16] = {AR_S_FREE, AR_S_FREE},         /* (unused) */
};

/* ar_internal.h:slot_cas calls this in debug builds. */
void slot_cas_check(uint64_t expected, uint64_t desired, int label) {
    if (label < T1 || label > T14 || transitions[label].from != SW_STATE(expected) ||
        transitions[label].to != SW_STATE(desired)) {
        fprintf(stderr, "ackring: illegal slot transition T%d %u -> %u\n", label, SW_STATE(expected),
                SW_STATE(desired));
        abort();
    }
}
#endif

uint32_t slot_crc(const ar_queue *q, const ar_slot *s, uint32_t len) {
    struct {
        uint64_t use, publish_ns, expire_ns, pub_seq;
        uint32_t len, pad;
    } fields = {LOAD(&s->use, RLX), LOAD(&s->publish_ns, RLX), LOAD(&s->expire_ns, RLX),
                LOAD(&s->pub_seq, RLX), len, 0};
    (void)q;
    uint32_t c = ar_crc32c(0, &fields, sizeof fields);
    return ar_crc32c(c, payload((ar_slot *)s), len);
}

/* Take a free slot for entry e: pop its index from the free ring, then
 * FREE -> WRITING (T1) naming e.  AR_FULL when `capacity` messages are
 * unsettled (the free ring is empty). */
int alloc_slot(ar_queue *q, uint32_t e, uint32_t *vout, uint64_t *wwriting, uint64_t *useout, ar_run *run) {
    for (uint32_t n = 0; n < AR_SPIN_BOUND; n++) {
        uint32_t v;
        uint64_t w;
        int rc = ring_take(q, R_FREE, e, &v, &w, run);
        if (rc == AR_EMPTY)
            return AR_FULL;
        if (rc != AR_OK)
            return rc;
        HOOK(H_ALLOC_POPPED);
        ar_slot *s = slot_at(q, v);
        uint32_t use32 = SW_USE(w) + 1;
        uint64_t ww = SWORD(AR_S_WRITING, e, 0, use32);
        if (!slot_cas(q, s, &w, ww, T1)) {
            /* Nobody else changes a FREE slot whose index we popped: only a
             * corrupted segment gets here.  Drop the entry. */
            unmark_take(q, e);
            count(q, e, CNT_STALE, 1);
            continue;
        }
        unmark_take(q, e);
        /* release fence (I9): our payload and field stores below stay after the
         * T1 CAS for anyone who reads the slot without owning it (a reader
         * that saw one of them sees the word moved: ar_intact, ar_peek_still). */
        FENCE(REL);
        /* The 64-bit use count behind the word's 32 bits (ids stay unique for
         * the queue's life).  We own the slot (WRITING): plain relaxed store. */
        uint64_t u = LOAD(&s->use, RLX);
        u = ((uint32_t)u == SW_USE(w)) ? u + 1 : (uint64_t)use32;
        STORE(&s->use, u, RLX);
        *vout = v;
        *wwriting = ww;
        *useout = u;
        return AR_OK;
    }
    return CORRUPT();
}

/* WRITING -> READY (T2) of a slot whose payload is in place, then its index
 * onto the ready ring: the publisher confirm of a memory queue. */
int publish_slot(ar_queue *q, uint32_t e, uint32_t v, ar_slot *s, uint64_t ww, uint32_t len, uint64_t ttl_ns,
                 uint64_t now_ns, ar_run *run) {
    uint64_t ttl = q->cfg.default_ttl_ns;
    if (ttl_ns && (!ttl || ttl_ns < ttl)) /* the lower TTL wins */
        ttl = ttl_ns;
    /* who: the WRITING owner; relaxed: the T2 CAS below releases them. */
    STORE(&s->len, len, RLX);
    STORE(&s->publish_ns, now_ns ? now_ns : ar_realtime_ns(), RLX); /* a batch reads the clock once */
    STORE(&s->expire_ns, ttl ? ttl_clock_ns(q) + ttl : 0, RLX);
    if (q->flags & AR_F_FILE)
        STORE(&s->pub_seq, FADD(&q->hdr->pub_seq, 1, RLX) + 1, RLX);
    if (q->flags & AR_F_CHECKSUM)
        STORE(&s->crc, slot_crc(q, s, len), RLX);
    HOOK(H_PUT_WRITING);
    uint64_t wr = SWORD(AR_S_READY, AR_NO_OWNER, 0, SW_USE(ww));
    mark_push(q, e, v, wr);
    if (!slot_cas(q, s, &ww, wr, T2)) {
        unmark_push(q, e);
        return AR_STALE;
    }
    HOOK(H_PUBLISH_READY);
    count(q, e, CNT_PUBLISHED, 1); /* before a consumer can take (and ack) it */
    int rc = ring_push(q, R_READY, v, run);
    unmark_push(q, e);
    wake_consumers(q);
    return rc;
}

/* (DELIVERED|DYING|WRITING|READY) -> FREE with an outcome, then the index
 * onto the free ring: a settle (T4, T7), a discard (T8, T14) or a drop (T11). */
int free_slot(ar_queue *q, uint32_t e, uint32_t v, uint64_t *expected, uint32_t outcome, int label, ar_run *run) {
    ar_slot *s = slot_at(q, v);
    uint64_t wf = SWORD(AR_S_FREE, outcome, SW_GEN(*expected), SW_USE(*expected));
    mark_push(q, e, v, wf);
    if (!slot_cas(q, s, expected, wf, label)) {
        unmark_push(q, e);
        return AR_STALE;
    }
    HOOK(H_ACK_FREED);
    int rc = ring_push(q, R_FREE, v, run);
    unmark_push(q, e);
    if (q->flags & AR_F_FILE)
        durable_settled(q);
    wake_producers(q);
    return rc;
}

/* (DELIVERED|DYING) -> READY, keeping the delivery count, then the index onto
 * the requeue ring, which consumers drain before the ready ring (T5, T9,
 * T12, T13). */
int requeue_slot(ar_queue *q, uint32_t e, uint32_t v, uint64_t *expected, int label, ar_run *run) {
    ar_slot *s = slot_at(q, v);
    uint32_t gen = SW_GEN(*expected);
    uint64_t wr = SWORD(AR_S_READY, AR_NO_OWNER, gen ? gen : 1, SW_USE(*expected));
    mark_push(q, e, v, wr);
    if (!slot_cas(q, s, expected, wr, label)) {
        unmark_push(q, e);
        return AR_STALE;
    }
    HOOK(H_NACK_READY);
    int rc = ring_push(q, R_REQUEUE, v, run);
    unmark_push(q, e);
    wake_consumers(q);
    return rc;
}

/* Everything slot-wise entry e still holds: WRITING slots are discarded
 * (their put never returned: nothing confirmed is lost), DELIVERED and DYING
 * slots are redelivered.  Run by e's owner closing it, or by a reclaimer
 * acting as dead e (holding e's lock: nobody else acts as e meanwhile). */
int release_entry_slots(ar_queue *q, uint32_t e, uint32_t *requeued, uint32_t *discarded) {
    *requeued = *discarded = 0;
    int rc = AR_OK;
    for (uint32_t i = 0; i < q->capacity; i++) {
        ar_slot *s = slot_at(q, i);
        uint64_t w = LOAD(&s->word, SEQ);
        for (int tries = 0; tries < 64; tries++) {
            uint32_t st = SW_STATE(w);
            if (SW_OWNER(w) != e || (st != AR_S_WRITING && st != AR_S_DELIVERED && st != AR_S_DYING))
                break;
            int r;
            if (st == AR_S_WRITING) {
                r = free_slot(q, e, i, &w, AR_OUT_DISCARDED, T8, NULL);
                if (r != AR_STALE) {
                    (*discarded)++;
                    count(q, e, CNT_DISCARDED, 1);
                }
            } else {
                r = requeue_slot(q, e, i, &w, st == AR_S_DYING ? T13 : T12, NULL);
                if (r != AR_STALE)
                    (*requeued)++;
            }
            if (r == AR_STALE) { /* lost a race with a lease scan: w is the new word */
                continue;
            }
            if (r != AR_OK)
                rc = r;
            break;
        }
    }
    return rc;
}
