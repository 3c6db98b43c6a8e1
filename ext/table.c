/*
 * table.c - the process table: who is attached, who is alive, and the
 * reclaim pass that repairs what dead processes left.  design.md 6.
 *
 * Liveness is a kernel-held lock, not a guess from pids: the owner of entry
 * i holds an OFD lock (fcntl F_OFD_SETLK) on byte AR_LOCK_ENTRY0 + i of the
 * segment file through its open file description.  The kernel drops the
 * lock when the last descriptor of that description closes, which happens
 * when the process dies however it dies.  So a SIGSTOPped process is alive,
 * a zombie or a process whose main thread exited is judged exactly, pid
 * reuse and pid namespaces do not matter, and a reclaimer that takes a dead
 * entry's lock holds it for the whole repair: no two repairs of one entry.
 *
 * Registration takes the lock first and then CASes the word FREE -> ACTIVE,
 * so a non-FREE entry whose lock can be taken has a dead owner (or a dead
 * reclaimer) - I8.
 */
#include "ar_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int ofd_lock(int fd, uint64_t off) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)off;
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

void ofd_unlock(int fd, uint64_t off) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)off;
    fl.l_len = 1;
    fcntl(fd, F_OFD_SETLK, &fl);
}

/* 1 if another open file description holds the byte (our own locks never
 * conflict with us, so callers check their own entries separately). */
int ofd_held_by_other(int fd, uint64_t off) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)off;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0)
        return 1; /* cannot tell: assume alive (never reclaim on doubt) */
    return fl.l_type != F_UNLCK;
}

int entry_is_mine(const ar_queue *q, uint32_t e) {
    if (e >= q->max_clients)
        return 0;
    uint64_t m = LOAD(&q->mine[e], RLX);
    return m != 0 && LOAD(&entry_at(q, e)->word, ACQ) == m;
}

static uint64_t start_ticks(void) {
    /* field 22 of /proc/self/stat, for operators (check, stats, ls) */
    static unsigned long gen;
    static uint64_t cached;
    if (gen == ar_fork_gen && cached)
        return cached;
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    uint64_t t = 0;
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (p) {
            int field = 2;
            for (p++; *p && field < 22; p++)
                if (*p == ' ')
                    field++;
            t = strtoull(p, NULL, 10) + 1;
        }
    }
    cached = t;
    gen = ar_fork_gen;
    return t;
}

int entry_register(ar_queue *q, uint32_t role, uint32_t *entry, uint64_t *word) {
    uint32_t pid = (uint32_t)getpid();
    for (int attempt = 0; attempt < 2; attempt++) {
        for (uint32_t i = 0; i < q->max_clients; i++) {
            ar_entry *en = entry_at(q, i);
            uint64_t w = LOAD(&en->word, ACQ);
            if (EW_STATE(w) != E_FREE)
                continue;
            /* I8: the lock first.  Failing means someone holds it: a
             * registrant racing us, or a reclaimer. */
            if (!ofd_lock(q->fd, AR_LOCK_ENTRY0 + i))
                continue;
            HOOK(H_REGISTER_LOCKED);
            w = LOAD(&en->word, ACQ);
            if (EW_STATE(w) != E_FREE) {
                /* Dead, not yet reclaimed: the reclaim pass frees it. */
                ofd_unlock(q->fd, AR_LOCK_ENTRY0 + i);
                continue;
            }
            /* We hold the lock, so nobody else writes the entry: plain
             * relaxed stores, published by the CAS below. */
            STORE(&en->start_time, start_ticks(), RLX);
            STORE(&en->reg_ns, ar_realtime_ns(), RLX);
            STORE(&en->take_mark, 0, RLX);
            STORE(&en->push_mark, 0, RLX);
            for (int k = 0; k < CNT_N; k++)
                STORE(&en->count[k], 0, RLX);
            uint64_t nw = EWORD(E_ACTIVE, role, pid, EW_SEQ(w) + 1);
            /* seq_cst: the release of the fields above, and ordered with
             * liveness readers. */
            if (!CAS(&en->word, &w, nw, SEQ, RLX)) {
                ofd_unlock(q->fd, AR_LOCK_ENTRY0 + i);
                continue;
            }
            STORE(&q->mine[i], nw, RLX);
            *entry = i;
            *word = nw;
            return AR_OK;
        }
        /* A full table may hold dead entries: reclaim, then look once more. */
        ar_recovery rec;
        if (attempt == 0 && (ar_reclaim(q, &rec) != AR_OK || rec.entries == 0))
            break;
    }
    return AR_TABLE_FULL;
}

static void retire_counters(ar_queue *q, ar_entry *en) {
    for (int k = 0; k < CNT_N; k++) {
        uint64_t v = LOAD(&en->count[k], RLX);
        if (v) {
            /* relaxed: statistics.  A death between these two lines counts v
             * twice (design.md 9). */
            FADD(&q->hdr->retired[k], v, RLX);
            STORE(&en->count[k], 0, RLX);
        }
    }
}

int entry_unregister(ar_queue *q, uint32_t e, uint64_t word) {
    if (e >= q->max_clients || word == 0 || LOAD(&q->mine[e], RLX) != word)
        return AR_STALE;
    ar_entry *en = entry_at(q, e);
    uint64_t w = word, closing = EW_WITH_STATE(word, E_CLOSING);
    if (!CAS(&en->word, &w, closing, SEQ, RLX))
        return AR_STALE;
    uint32_t rq, ds;
    release_entry_slots(q, e, &rq, &ds);
    retire_counters(q, en);
    STORE(&en->take_mark, 0, RLX);
    STORE(&en->push_mark, 0, RLX);
    STORE(&q->mine[e], 0, RLX);
    /* release: everything above happens-before the next registrant's acquire.
     * FREE keeps seq, so the next registration gets a new word. */
    w = closing;
    CAS(&en->word, &w, EWORD(E_FREE, 0, 0, EW_SEQ(closing)), REL, RLX);
    ofd_unlock(q->fd, AR_LOCK_ENTRY0 + e);
    return AR_OK;
}

/* Repair dead entry i (we hold its lock and the reclaim lock) acting as it:
 * first its half-done ring operations (markers), then its slots, then free
 * it.  A death of ours anywhere in here leaves the entry DEAD with its
 * markers naming what is still half done, and the next pass repeats the
 * repair, which is idempotent. */
static int reclaim_entry(ar_queue *q, uint32_t i, uint64_t w, ar_recovery *rec) {
    ar_entry *en = entry_at(q, i);
    HOOK(H_RECLAIM_LOCKED);
    if (EW_STATE(w) != E_DEAD) {
        uint64_t dead = EW_WITH_STATE(w, E_DEAD);
        if (!CAS(&en->word, &w, dead, SEQ, ACQ))
            return AR_AGAIN;
        w = dead;
    }
    uint64_t pm = LOAD(&en->push_mark, ACQ), pw = LOAD(&en->push_word, ACQ);
    uint64_t tm = LOAD(&en->take_mark, ACQ), tw = LOAD(&en->take_word, ACQ);
    /* The push marker first: finishing it may reuse the push marker. */
    if (pm) {
        int pushed = 0, rc = ensure_in_ring(q, i, MARK_IDX(pm), pw, &pushed);
        if (rc == AR_AGAIN)
            return rc;
        rec->repushed += (uint32_t)pushed;
        STORE(&en->push_mark, 0, REL);
    }
    if (tm) {
        int pushed = 0, rc = ensure_in_ring(q, i, MARK_IDX(tm), tw, &pushed);
        if (rc == AR_AGAIN)
            return rc;
        rec->repushed += (uint32_t)pushed;
        STORE(&en->take_mark, 0, REL);
    }
    uint32_t rq = 0, ds = 0;
    release_entry_slots(q, i, &rq, &ds);
    count(q, i, CNT_RECOVERED, rq);
    rec->requeued += rq;
    rec->discarded += ds;
    retire_counters(q, en);
    FADD(&q->hdr->reclaimed_entries, 1, RLX);
    uint64_t e = w;
    CAS(&en->word, &e, EWORD(E_FREE, 0, 0, EW_SEQ(w)), REL, RLX);
    rec->entries++;
    return AR_OK;
}

int queue_observer(ar_queue *q, uint32_t *e) {
    /* Our observer entry (lease scans act under it): made on first use,
     * made again after a fork.  Called under reclaim_mu. */
    if (q->observer < q->max_clients && q->observer_gen == ar_fork_gen && entry_is_mine(q, q->observer)) {
        *e = q->observer;
        return AR_OK;
    }
    uint64_t word;
    uint32_t o;
    int rc = entry_register(q, AR_ROLE_OBSERVER, &o, &word);
    if (rc != AR_OK)
        return rc;
    q->observer = o;
    q->observer_gen = ar_fork_gen;
    *e = o;
    return AR_OK;
}

int ar_reclaim(ar_queue *q, ar_recovery *rec) {
    memset(rec, 0, sizeof *rec);
    if (q->corrupt)
        return CORRUPT();
    if (pthread_mutex_trylock(&q->reclaim_mu) != 0)
        return AR_OK; /* another thread of ours is running a pass right now */
    STORE(&q->last_reclaim_ns, ar_now_ns(), RLX);
    int rc = AR_OK;
    if (ofd_lock(q->fd, AR_LOCK_RECLAIM)) {
        for (uint32_t i = 0; i < q->max_clients; i++) {
            if (LOAD(&q->mine[i], RLX))
                continue; /* ours (our own lock never conflicts with us) */
            ar_entry *en = entry_at(q, i);
            uint64_t w = LOAD(&en->word, ACQ);
            if (EW_STATE(w) == E_FREE)
                continue;
            if (!ofd_lock(q->fd, AR_LOCK_ENTRY0 + i))
                continue; /* alive */
            w = LOAD(&en->word, ACQ);
            uint32_t st = EW_STATE(w);
            if (st == E_ACTIVE || st == E_CLOSING || st == E_DEAD) {
                if (reclaim_entry(q, i, w, rec) == AR_AGAIN)
                    rec->busy++;
            } else if (st != E_FREE) {
                /* an unknown state: a corrupted entry.  Free it. */
                uint64_t e = w;
                CAS(&en->word, &e, EWORD(E_FREE, 0, 0, EW_SEQ(w)), REL, RLX);
            }
            ofd_unlock(q->fd, AR_LOCK_ENTRY0 + i);
        }
        /* a process that died in a ring run left a hint behind its cells */
        if (rec->entries)
            ring_settle_hints(q);
        ofd_unlock(q->fd, AR_LOCK_RECLAIM);
    }
    if (LOAD(&q->hdr->leases_seen, RLX)) {
        uint32_t o, n = 0;
        if (queue_observer(q, &o) == AR_OK) {
            int lr = expire_leases(q, o, &n);
            if (lr != AR_OK)
                rc = lr;
            rec->leases += n;
        }
    }
    if (q->durability == AR_DUR_SYNC && LOAD(&q->hdr->sync_pending, RLX))
        durable_flush_settles(q);
    pthread_mutex_unlock(&q->reclaim_mu);
    if (q->corrupt) /* truncated under this pass (SIGBUS guard): it repaired zero pages */
        rc = CORRUPT();
    if (q->dlq && !q->dlq->corrupt) {
        ar_recovery d;
        if (ar_reclaim(q->dlq, &d) == AR_OK) {
            rec->entries += d.entries;
            rec->requeued += d.requeued;
            rec->discarded += d.discarded;
            rec->repushed += d.repushed;
            rec->leases += d.leases;
        }
    }
    return rc;
}

void ar_last_open(const ar_queue *q, ar_recovery *rec) { *rec = q->last_open; }

int ar_entry_info_get(const ar_queue *q, uint32_t index, ar_entry_info *o) {
    if (index >= q->max_clients)
        return AR_INVAL;
    ar_entry *en = entry_at(q, index);
    uint64_t w = LOAD(&en->word, ACQ);
    memset(o, 0, sizeof *o);
    o->index = index;
    o->word = w;
    o->state = EW_STATE(w);
    o->role = EW_ROLE(w);
    o->pid = EW_PID(w);
    o->seq = EW_SEQ(w);
    o->start_time = LOAD(&en->start_time, RLX);
    o->reg_ns = LOAD(&en->reg_ns, RLX);
    o->take_mark = LOAD(&en->take_mark, RLX);
    o->push_mark = LOAD(&en->push_mark, RLX);
    o->mine = w != 0 && LOAD(&q->mine[index], RLX) == w;
    o->alive = o->state != E_FREE && (o->mine || ofd_held_by_other(q->fd, AR_LOCK_ENTRY0 + index));
    return AR_OK;
}
