/*
 * rings.c - the three index rings (free, ready, requeue).  design.md 4.
 *
 * A ring is `capacity` cells of one 64-bit word each, seq (40 bits) | value
 * (24 bits), and two free-running positions, head and tail, each alone on a
 * cache line.  Every change of a cell is one CAS that both claims the
 * position and stores (or takes) the value, so a process dying between two
 * steps leaves no cell half done; head and tail are hints (I1) that anyone
 * advances past a cell it finds already pushed or popped.
 *
 * A slot index is in at most one ring at a time, so a ring never holds more
 * than `capacity` entries and a push always finds its cell free (I3); a push
 * that does not is a corrupted segment.
 *
 * Batch calls push or pop runs (ar_run): after the first cell they try the
 * next position's cell directly and move the hint once at the end, so a
 * batch of k costs k cell CASes and about k / run_max hint CASes instead of
 * 2k.  A hint then lags by up to run_max positions (I1), never a lap.
 */
#include "ar_internal.h"

#include <fcntl.h>

/* Move a position hint from `from` to `from + 1` if nobody did yet. */
static inline void help_advance(uint64_t *pos, uint64_t from) {
    /* load first: under contention most helpers find it moved already and
     * skip the locked instruction.  release: publishes nothing by itself;
     * readers re-validate the cell. */
    if (LOAD(pos, RLX) == from)
        CAS(pos, &from, from + 1, REL, RLX);
}

/* Move a hint forward to `to` (a run's end) unless it is there or past it
 * already.  Every position below `to` was pushed (popped): the run's own
 * cells, and below the run's start what the hint had already passed when
 * the run began (it began at the hint's value then). */
static void hint_jump(uint64_t *pos, uint64_t to) {
    uint64_t cur = LOAD(pos, RLX);
    for (uint32_t n = 0; n < AR_SPIN_BOUND && (int64_t)(to - cur) > 0; n++)
        if (CAS(pos, &cur, to, REL, RLX)) /* release: as help_advance */
            return;
}

/* End a run: the hint (tail for a push run, head for a take run) moves past
 * the run's last cell.  A process that dies before this leaves the hint up
 * to run_max behind, which the next push (take) or reclaim pass helps on. */
void ring_run_end(ar_queue *q, int r, ar_run *run) {
    if (run->next == run->start)
        return;
    hint_jump(run->take ? &q->hdr->head[r].pos : &q->hdr->tail[r].pos, run->next);
    run->start = run->next = 0;
}

/* Every push but a run's next step (ar_internal.h:ring_push): a push from
 * the tail hint, which may start a run, after ending the caller's run if it
 * has one (at run_max, or its next cell was not free). */
int ring_push_slow(ar_queue *q, int r, uint32_t v, ar_run *run) {
    ar_header *h = q->hdr;
    uint64_t *cells = q->cells[r];
    if (run && run->next != run->start)
        ring_run_end(q, r, run);
    for (uint32_t n = 0; n < AR_SPIN_BOUND; n++) {
        uint64_t t = LOAD(&h->tail[r].pos, ACQ);
        uint64_t *cp = &cells[t & q->mask];
        uint64_t c = LOAD(cp, ACQ);
        int64_t d = seq_diff(CELL_SEQ(c), t);
        if (d == 0) {
            /* The cell is free for position t: claim it and store v in one
             * CAS.  seq_cst: release for everything the pusher wrote (the
             * slot), and the waker's half of I6 (wait.c). */
            if (CAS(cp, &c, CELL(SEQ40(t + 1), v), SEQ, RLX)) {
                if (run) { /* a run starts at the hint's value: tail moves at its end */
                    run->start = t;
                    run->next = t + 1;
                    run->take = 0;
                } else {
                    help_advance(&h->tail[r].pos, t);
                }
                return AR_OK;
            }
            continue;
        }
        if (d == 1 || d == (int64_t)q->capacity) {
            /* pushed at t already (and maybe popped since: d == R), but the
             * pusher has not advanced tail yet (it is in a run, or between
             * its CAS and help_advance): help it */
            help_advance(&h->tail[r].pos, t);
            continue;
        }
        if (LOAD(&h->tail[r].pos, ACQ) != t)
            continue; /* our snapshot was stale */
        /* d < 0: the entry of the previous lap is still there (a full ring);
         * any other d: the cell is more than one step ahead of tail.
         * Neither happens in a sound segment (I3). */
        return CORRUPT();
    }
    return CORRUPT();
}

/* Test counter (ar_ring_probes): cells ring_take looked at, while enabled. */
int ring_count_probes;
uint64_t ring_probes;

uint64_t ar_ring_probes(int enable) {
    if (enable >= 0)
        STORE(&ring_count_probes, enable != 0, RLX);
    return LOAD(&ring_probes, RLX);
}

/* The entry after the one just taken, if it is there already: warm its slot
 * (the word the next take CASes, and the first payload line) while the
 * caller works on this one.  In a steady stream the other process wrote
 * those lines last, so the next take would otherwise wait for them. */
static inline void warm_next(ar_queue *q, int r, const uint64_t *cells, uint64_t pos) {
    uint64_t c = LOAD(&cells[pos & q->mask], RLX);
    if (seq_diff(CELL_SEQ(c), pos + 1) != 0 || CELL_VAL(c) >= q->capacity) /* I4 */
        return;
    ar_slot *s = slot_at(q, CELL_VAL(c));
    warm_line(s, 1);
    warm_line(payload(s), r == R_FREE);
}

/* Every take but a run's next step (ar_internal.h:ring_take): from the
 * head hint, a run's first take and its end, and the empty, lagging-hint,
 * lost-race and corrupt cases. */
int ring_take_slow(ar_queue *q, int r, uint32_t e, uint32_t *vout, uint64_t *wout, ar_run *run) {
    ar_header *h = q->hdr;
    uint64_t *cells = q->cells[r];
    int64_t R = (int64_t)q->capacity;
    for (uint32_t n = 0; n < AR_SPIN_BOUND; n++) {
        /* In a run, look at the run's next position first; anything there
         * but a full cell ends the run and we look again from the hint. */
        int in_run = run && run->next != run->start;
        if (in_run && run->next - run->start >= q->run_max) {
            ring_run_end(q, r, run);
            in_run = 0;
        }
        uint64_t hd = in_run ? run->next : LOAD(&h->head[r].pos, ACQ);
        uint64_t *cp = &cells[hd & q->mask];
        uint64_t c = LOAD(cp, ACQ); /* acquire: pairs with the push CAS (the slot is visible) */
        if (UNLIKELY(LOAD(&ring_count_probes, RLX)))
            FADD(&ring_probes, 1, RLX);
        int64_t d = seq_diff(CELL_SEQ(c), hd + 1);
        if (d == 0) {
            uint32_t v = CELL_VAL(c);
            if (UNLIKELY(v >= q->capacity)) {
                /* I4: an index read from the segment.  Pop the bad entry so
                 * the ring moves on, and say so once. */
                if (CAS(cp, &c, CELL(SEQ40(hd + (uint64_t)R), v), SEQ, RLX)) {
                    if (in_run)
                        run->next = hd + 1;
                    else
                        help_advance(&h->head[r].pos, hd);
                }
                return CORRUPT();
            }
            uint64_t w = LOAD(&slot_at(q, v)->word, ACQ);
            /* I7: name what we take before we take it (the marker is what a
             * reclaimer finds if we die between this pop and the slot CAS). */
            mark_take(q, e, r, v, w);
            /* seq_cst: releases the marker store to whoever sees the pop. */
            if (!CAS(cp, &c, CELL(SEQ40(hd + (uint64_t)R), v), SEQ, RLX)) {
                unmark_take(q, e);
                if (in_run)
                    ring_run_end(q, r, run); /* another taker got there: look from the hint */
                continue;
            }
            if (run) { /* a run starts at the hint's value: head moves at its end */
                if (!in_run) {
                    run->start = hd;
                    run->take = 1;
                }
                run->next = hd + 1;
                if (in_run)
                    HOOK(H_RUN_TAKEN); /* head lags the run by >= 2: design.md 6.3 */
            } else {
                help_advance(&h->head[r].pos, hd);
            }
            if (UNLIKELY(ring_for_word(w) != r)) {
                /* An entry whose slot is not in this ring's state: never
                 * made by a sound segment.  Dropped (its slot is accounted
                 * for by its own word) and counted. */
                unmark_take(q, e);
                count(q, e, CNT_STALE, 1);
                continue;
            }
            if (!run) /* a run takes the next entry at once: nothing to hide it behind */
                warm_next(q, r, cells, hd + 1);
            *vout = v;
            *wout = w;
            return AR_OK;
        }
        if (in_run) {
            ring_run_end(q, r, run);
            continue;
        }
        if (d == -1) {
            /* Nothing pushed at hd yet: empty, if head is still hd and sane. */
            if (LOAD(&h->head[r].pos, ACQ) != hd)
                continue;
            /* Each hint lags the truth by at most run_max positions (a
             * pusher or popper in a run, or between its cell CAS and its
             * advance, which the next one helps), so tail - head is within
             * [-run_max, R + run_max] (I1). */
            uint64_t t = LOAD(&h->tail[r].pos, ACQ);
            int64_t L = (int64_t)q->run_max;
            if ((int64_t)(t - hd) < -L || (int64_t)(t - hd) > R + L) {
                if (LOAD(&h->head[r].pos, ACQ) != hd)
                    continue; /* both moved on while we looked */
                return CORRUPT(); /* head far ahead of tail, or more than a lap behind */
            }
            return AR_EMPTY;
        }
        if (d > 0 && d <= R) {
            /* popped at hd already (d == R - 1), maybe pushed again one lap
             * on (d == R): the head hint lags (a taker in a run, or between
             * its CAS and its advance).  Help it. */
            help_advance(&h->head[r].pos, hd);
            continue;
        }
        if (LOAD(&h->head[r].pos, ACQ) != hd)
            continue;
        return CORRUPT(); /* a cell more than a lap away from a stable head */
    }
    return CORRUPT();
}

/* Entries between the hints, for stats and bounds: tail - head, which a
 * hint's lag (I1) can make a little short, or negative (then 0). */
uint64_t ring_count(const ar_queue *q, int r) {
    uint64_t hd = LOAD(&q->hdr->head[r].pos, ACQ), t = LOAD(&q->hdr->tail[r].pos, ACQ);
    int64_t n = (int64_t)(t - hd);
    return n < 0 ? 0 : n > (int64_t)q->capacity ? q->capacity : (uint64_t)n;
}

/* Help every hint past the cells pushed or popped before it (at most
 * run_max each): what a process that died in a run left behind.  Run by the
 * reclaim pass, so stats and check() see exact hints afterwards. */
void ring_settle_hints(ar_queue *q) {
    ar_header *h = q->hdr;
    for (int r = 0; r < R_COUNT; r++) {
        for (uint32_t n = 0; n <= q->run_max; n++) {
            uint64_t t = LOAD(&h->tail[r].pos, ACQ);
            int64_t d = seq_diff(CELL_SEQ(LOAD(&q->cells[r][t & q->mask], ACQ)), t);
            if (d != 1 && d != (int64_t)q->capacity)
                break;
            help_advance(&h->tail[r].pos, t);
        }
        for (uint32_t n = 0; n <= q->run_max; n++) {
            uint64_t hd = LOAD(&h->head[r].pos, ACQ);
            int64_t d = seq_diff(CELL_SEQ(LOAD(&q->cells[r][hd & q->mask], ACQ)), hd + 1);
            if (d <= 0 || d > (int64_t)q->capacity)
                break;
            help_advance(&h->head[r].pos, hd);
        }
    }
}

/* Is index v an entry of ring r now? (A full cell j has seq == j + 1 mod R.) */
static int ring_holds(ar_queue *q, int r, uint32_t v) {
    for (uint32_t j = 0; j < q->capacity; j++) {
        uint64_t c = LOAD(&q->cells[r][j], ACQ);
        if (CELL_VAL(c) == v && ((CELL_SEQ(c) - 1) & q->mask) == j)
            return 1;
    }
    return 0;
}

/* Does a live entry other than `acting` name index v in ring r in one of its
 * markers?  Then that process is in the middle of moving v itself. */
static int live_marker_names(ar_queue *q, uint32_t acting, int r, uint32_t v) {
    for (uint32_t k = 0; k < q->max_clients; k++) {
        if (k == acting)
            continue;
        ar_entry *en = entry_at(q, k);
        uint64_t tm = LOAD(&en->take_mark, ACQ), pm = LOAD(&en->push_mark, ACQ);
        int names = (tm && MARK_RING(tm) == (uint32_t)r && MARK_IDX(tm) == v) ||
                    (pm && MARK_RING(pm) == (uint32_t)r && MARK_IDX(pm) == v);
        if (!names)
            continue;
        uint64_t w = LOAD(&en->word, ACQ);
        if (EW_STATE(w) == E_FREE)
            continue;
        if (LOAD(&q->mine[k], RLX) == w || ofd_held_by_other(q->fd, AR_LOCK_ENTRY0 + k))
            return 1; /* alive: ours, or its owner holds the entry's lock */
    }
    return 0;
}

/* I7, the repair half.  A dead process (or a reclaimer that died acting for
 * one) left slot v in state w, which belongs in a ring, in the middle of a
 * pop or a push.  Put v in its ring unless it is there already, somebody is
 * moving it, or its word changed (then whoever changed it owns it).
 * Must run under the reclaim lock (table.c): no two repairs race.  The order
 * matters: ring scan, then markers, then the word again — a live taker sets
 * its marker before its pop and clears it only after its slot CAS, so a pop
 * the scan missed shows in the markers or in the word (design.md 4.3). */
int ensure_in_ring(ar_queue *q, uint32_t acting, uint32_t v, uint64_t w, int *pushed) {
    *pushed = 0;
    if (v >= q->capacity)
        return CORRUPT();
    int r = ring_for_word(w);
    if (r < 0)
        return AR_OK;
    ar_slot *s = slot_at(q, v);
    for (int round = 0; round < 64; round++) {
        if (LOAD(&s->word, SEQ) != w)
            return AR_OK;
        if (ring_holds(q, r, v))
            return AR_OK;
        if (live_marker_names(q, acting, r, v)) {
            /* a few microseconds, unless that process is stopped */
            for (int i = 0; i < 256; i++)
                cpu_relax();
            continue;
        }
        if (LOAD(&s->word, SEQ) != w)
            return AR_OK;
        mark_push(q, acting, v, w);
        int rc = ring_push(q, r, v, NULL);
        unmark_push(q, acting);
        *pushed = rc == AR_OK;
        if (r == R_FREE)
            wake_producers(q);
        else
            wake_consumers(q);
        return rc;
    }
    return AR_AGAIN; /* a live process is moving v and does not finish: next pass */
}
