/*
 * durable.c - file-backed queues: group commit, lazy durable settles, the
 * rebuild after a reboot, and the crash-image test hook.  design.md 10.
 *
 * A file queue is the same segment on a real filesystem.  Writes go through
 * the shared mapping into the page cache (so a process crash loses nothing:
 * the page cache outlives the process); fdatasync(2) makes them durable.
 *
 * Group commit (durability "sync"): a publisher that has written its
 * messages reads `sync_started` with an RMW (fetch-add 0: it releases its
 * writes to the leader, whose own RMW on the same word acquires them) and
 * needs a sync numbered above what it read: such a sync begins after its
 * writes.  Whoever takes the sync lock (an OFD lock: a dead leader's is
 * released by the kernel) becomes leader: numbers the next sync, calls
 * fdatasync once for everyone, publishes sync_done and wakes the followers
 * sleeping on sync_gen.  One put_many of 1,000 messages, or 4 producers
 * confirming at once, share one fdatasync.
 */
#include "ar_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char snap_dir[PATH_MAX];

int ar_set_sync_snapshots(const char *dir) {
    if (!dir || !*dir) {
        snap_dir[0] = 0;
        return AR_OK;
    }
    if (strlen(dir) >= sizeof snap_dir - 32)
        return AR_INVAL;
    strcpy(snap_dir, dir);
    return AR_OK;
}

/* Test hook: the file as it is when fdatasync is called is a state the
 * sync makes durable (design.md 10.4: crash images are built from these). */
static void snapshot(ar_queue *q, uint64_t g) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/snap-%010llu", snap_dir, (unsigned long long)g);
    int out = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        return;
    static unsigned char buf[1 << 16];
    for (uint64_t off = 0; off < q->size;) {
        size_t n = q->size - off < sizeof buf ? (size_t)(q->size - off) : sizeof buf;
        memcpy(buf, q->base + off, n);
        if (write(out, buf, n) != (ssize_t)n)
            break;
        off += n;
    }
    close(out);
}

static void futex_wait_ms(uint32_t *addr, uint32_t expected, long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
}

/* Wait until a sync numbered >= need has completed, leading one if nobody is. */
static int sync_through(ar_queue *q, uint64_t need) {
    ar_header *h = q->hdr;
    for (;;) {
        if (LOAD(&h->sync_done, ACQ) >= need)
            return AR_OK;
        uint32_t gen = LOAD(&h->sync_gen, ACQ);
        if (pthread_mutex_trylock(&q->sync_mu) == 0) {
            if (ofd_lock(q->fd, AR_LOCK_SYNC)) {
                int rc = AR_OK;
                while (LOAD(&h->sync_done, ACQ) < need) {
                    /* acq_rel RMW: acquires every confirmer's writes (their
                     * fetch-add released them) before the sync below. */
                    uint64_t g = FADD(&h->sync_started, 1, ACQREL) + 1;
                    HOOK(H_SYNC_LEADER);
                    if (snap_dir[0])
                        snapshot(q, g);
                    if (fdatasync(q->fd) != 0) {
                        rc = AR_ERRNO;
                        break;
                    }
                    FADD(&h->syncs, 1, RLX);
                    /* release: done only after the data is on stable storage */
                    uint64_t d = LOAD(&h->sync_done, RLX);
                    while (d < g && !CAS(&h->sync_done, &d, g, REL, RLX))
                        ;
                    FADD(&h->sync_gen, 1, REL);
                    syscall(SYS_futex, &h->sync_gen, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
                }
                ofd_unlock(q->fd, AR_LOCK_SYNC);
                pthread_mutex_unlock(&q->sync_mu);
                return rc;
            }
            pthread_mutex_unlock(&q->sync_mu);
        }
        /* A follower: the leader wakes us; a dead leader's lock is gone, so
         * the timeout lets us take over. */
        if (LOAD(&h->sync_done, ACQ) < need)
            futex_wait_ms(&h->sync_gen, gen, 10);
    }
}

int durable_confirm(ar_queue *q, uint64_t unused, uint64_t deadline) {
    (void)unused;
    (void)deadline; /* the message is stored: its confirm waits for the disk */
    if (q->durability != AR_DUR_SYNC)
        return AR_OK;
    /* RMW (+0), release: our writes happen-before the leader's fdatasync. */
    uint64_t need = FADD(&q->hdr->sync_started, 0, ACQREL) + 1;
    return sync_through(q, need);
}

void durable_settled(ar_queue *q) {
    if (q->durability == AR_DUR_SYNC)
        FADD(&q->hdr->sync_pending, 1, RLX);
}

void durable_flush_settles(ar_queue *q) {
    /* Settles become durable with the next sync anybody makes; the reclaim
     * pass (every watchdog interval) makes one when settles are pending, so
     * an ack is on disk within about that interval (design.md 10.2). */
    if (XCHG(&q->hdr->sync_pending, 0, RLX))
        durable_confirm(q, 0, 0);
}

int ar_sync(ar_queue *q) {
    if (!(q->flags & AR_F_FILE))
        return AR_OK;
    if (q->corrupt)
        return CORRUPT();
    uint64_t need = FADD(&q->hdr->sync_started, 0, ACQREL) + 1;
    return sync_through(q, need);
}

int durable_close(ar_queue *q) {
    /* A clean close leaves everything on disk, whatever the durability. */
    return fdatasync(q->fd) == 0 ? AR_OK : AR_ERRNO;
}

/* ------------------------------------------------------------------ rebuild */

typedef struct {
    uint64_t seq;
    uint32_t index, gen;
} ready_item;

static int by_seq(const void *a, const void *b) {
    const ready_item *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void read_boot(uint8_t out[16]) {
    memset(out, 0, 16);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    int k = 0;
    for (ssize_t i = 0; i < n && k < 32; i++) {
        char c = buf[i];
        int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (v < 0)
            continue;
        out[k / 2] = (uint8_t)(out[k / 2] << 4 | v);
        k++;
    }
}

/* After a reboot (or a power loss) every process of the old boot is dead,
 * whatever pids the table names, and the rings and positions on disk are
 * whatever pages reached it.  The slots are the truth: each one FREE,
 * unsettled or half-written, with a checksum.  Rebuild the rest from them:
 * unsettled messages whose checksum holds go back to READY in publish
 * order; torn and half-written ones are discarded (never confirmed: a put
 * under "sync" returns only after its slot was on disk). */
int durable_rebuild(ar_queue *q, ar_recovery *rec) {
    ar_header *h = q->hdr;
    int locked = 0;
    for (int i = 0; i < 3000 && !(locked = ofd_lock(q->fd, AR_LOCK_REBUILD)); i++) {
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    if (!locked)
        return AR_AGAIN;
    uint8_t now[16];
    read_boot(now);
    if (memcmp(now, (const void *)h->boot_id, 16) == 0) {
        ofd_unlock(q->fd, AR_LOCK_REBUILD); /* another opener rebuilt it already */
        return AR_OK;
    }
    ready_item *items = malloc((size_t)q->capacity * sizeof *items);
    if (!items) {
        ofd_unlock(q->fd, AR_LOCK_REBUILD);
        errno = ENOMEM;
        return AR_ERRNO;
    }
    uint32_t nready = 0, nfree = 0;
    uint64_t maxseq = 0;
    uint32_t *freelist = (uint32_t *)malloc((size_t)q->capacity * sizeof *freelist);
    if (!freelist) {
        free(items);
        ofd_unlock(q->fd, AR_LOCK_REBUILD);
        errno = ENOMEM;
        return AR_ERRNO;
    }
    for (uint32_t i = 0; i < q->capacity; i++) {
        ar_slot *s = slot_at(q, i);
        uint64_t w = s->word;
        uint32_t st = SW_STATE(w);
        uint32_t len = s->len;
        int intact = len <= q->message_size && (uint32_t)s->use == SW_USE(w) && s->use != 0 &&
                     slot_crc(q, s, len) == s->crc;
        if ((st == AR_S_READY || st == AR_S_DELIVERED || st == AR_S_DYING) && intact) {
            uint32_t gen = SW_GEN(w);
            s->word = SWORD(AR_S_READY, AR_NO_OWNER, gen, SW_USE(w));
            items[nready++] = (ready_item){s->pub_seq, i, gen};
            if (s->pub_seq > maxseq)
                maxseq = s->pub_seq;
            if (st != AR_S_READY)
                rec->requeued++;
            continue;
        }
        if (st != AR_S_FREE) {
            /* half-written (WRITING) or torn: its put never returned */
            s->word = SWORD(AR_S_FREE, AR_OUT_DISCARDED, SW_GEN(w), SW_USE(w));
            if (st == AR_S_WRITING)
                rec->discarded++;
            else
                rec->torn++;
        } else if (SW_OWNER(w) > AR_OUT_PURGED && SW_OWNER(w) != AR_OUT_DISCARDED &&
                   SW_OWNER(w) != AR_OUT_NONE) {
            s->word = SWORD(AR_S_FREE, AR_OUT_NONE, SW_GEN(w), SW_USE(w));
        }
        freelist[nfree++] = i;
    }
    qsort(items, nready, sizeof *items, by_seq);
    /* Rings: free indices, then the ready and requeue orders by publish seq. */
    uint64_t pos[R_COUNT] = {0, 0, 0};
    for (uint32_t j = 0; j < q->capacity; j++)
        for (int r = 0; r < R_COUNT; r++)
            q->cells[r][j] = CELL(j, 0);
    for (uint32_t k = 0; k < nfree; k++, pos[R_FREE]++)
        q->cells[R_FREE][pos[R_FREE] & q->mask] = CELL(pos[R_FREE] + 1, freelist[k]);
    for (uint32_t k = 0; k < nready; k++) {
        int r = items[k].gen ? R_REQUEUE : R_READY;
        q->cells[r][pos[r] & q->mask] = CELL(pos[r] + 1, items[k].index);
        pos[r]++;
    }
    for (int r = 0; r < R_COUNT; r++) {
        h->head[r].pos = 0;
        h->tail[r].pos = pos[r];
    }
    /* The table: nobody of the old boot is attached. */
    for (uint32_t e = 0; e < q->max_clients; e++) {
        ar_entry *en = entry_at(q, e);
        if (EW_STATE(en->word) != E_FREE)
            rec->entries++;
        for (int k = 0; k < CNT_N; k++) {
            h->retired[k] += en->count[k];
        }
        uint32_t seq = EW_SEQ(en->word);
        memset(en, 0, sizeof *en);
        en->word = EWORD(E_FREE, 0, 0, seq);
    }
    h->not_empty.seq = 0;
    h->not_full.seq = 0;
    h->leases_seen = 0;
    h->pub_seq = maxseq;
    h->sync_started = h->sync_done = 0;
    h->sync_gen = 0;
    h->sync_pending = 0;
    h->rebuilds++;
    /* release: every store of the rebuild is visible before the new boot id
     * (an opener that sees it skips the rebuild; see ar_open's acquire). */
    FENCE(REL);
    memcpy((void *)h->boot_id, now, 16);
    free(items);
    free(freelist);
    rec->rebuilt = 1;
    int rc = fdatasync(q->fd) == 0 ? AR_OK : AR_ERRNO;
    ofd_unlock(q->fd, AR_LOCK_REBUILD);
    return rc;
}
