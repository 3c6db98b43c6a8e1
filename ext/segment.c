/*
 * segment.c - a queue's file: create (with its dead-letter queue), open and
 * validate, trust checks, unlink, close; the fork handler that gives every
 * child its own open file description (and so its own OFD locks); the SIGBUS
 * guard.  design.md section 2.
 */
#include "ar_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

unsigned long ar_fork_gen = 1;

uint64_t ar_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
uint64_t ar_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/* TTL expiry clock: monotonic in memory queues (a wall-clock step cannot
 * expire messages early); the wall clock in file queues, whose messages
 * outlive the boot whose monotonic clock they would be measured on. */
uint64_t ttl_clock_ns(const ar_queue *q) { return (q->flags & AR_F_FILE) ? ar_realtime_ns() : ar_now_ns(); }

int ar_check_name(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 204 || name[0] == '.')
        return AR_INVAL;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return AR_INVAL;
    }
    return AR_OK;
}

/* ------------------------------------------------------------------ geometry */

static inline uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }
static uint32_t slot_size_for(uint32_t msz) { return (uint32_t)round_up((uint64_t)AR_SLOT_HDR + msz, AR_LINE); }
static uint64_t ring_bytes(uint32_t cap) { return round_up((uint64_t)cap * 8, AR_SECTION_ALIGN); }
typedef struct { uint64_t table, rings, slots, total; } layout;
static layout layout_for(uint32_t cap, uint32_t msz, uint32_t max_clients) {
    layout l;
    l.table = AR_HDR_SIZE;
    l.rings = l.table + (uint64_t)max_clients * AR_ENTRY_SIZE;
    l.slots = l.rings + 3 * ring_bytes(cap);
    l.total = l.slots + (uint64_t)cap * slot_size_for(msz);
    return l;
}

static void set_geometry(ar_queue *q, const ar_header *h) {
    q->capacity = h->capacity;
    q->mask = h->capacity - 1;
    q->shift = (uint32_t)__builtin_ctz(h->capacity);
    q->run_max = q->capacity / 2 < AR_RUN_MAX ? q->capacity / 2 : AR_RUN_MAX;
    if (q->run_max == 0)
        q->run_max = 1;
    q->message_size = h->message_size;
    q->slot_size = h->slot_size;
    q->max_clients = h->max_clients;
    q->flags = h->flags;
    q->durability = h->durability;
    q->queue_id = h->queue_id;
    q->peer_id = h->peer_id;
    q->created_ns = h->created_ns;
    q->table = q->base + h->table_off;
    for (int r = 0; r < R_COUNT; r++)
        q->cells[r] = (uint64_t *)(q->base + h->rings_off + (uint64_t)r * ring_bytes(h->capacity));
    q->slots = q->base + h->slots_off;
    q->cfg.max_deliveries = h->max_deliveries;
    q->cfg.is_dlq = (h->flags & AR_F_DLQ) != 0;
    q->cfg.default_ttl_ns = h->default_ttl_ns;
    q->cfg.ack_timeout_ns = h->ack_timeout_ns;
    q->cfg.durability = h->durability;
    q->cfg.checksum = (h->flags & AR_F_CHECKSUM) != 0;
    q->observer = h->max_clients;
    q->dlq_entry = h->max_clients;
}

/* I4: every header field is checked against the others and the file size
 * before anything is derived from it.  `h` is a private copy (pread), so a
 * concurrent scribbler cannot change a field between its check and its use. */
static int header_valid(const ar_header *h, uint64_t file_size) {
    if (h->magic != AR_MAGIC || h->version != AR_VERSION || h->header_size != AR_HDR_SIZE)
        return 0;
    if (h->capacity < 2 || h->capacity > AR_MAX_CAPACITY || (h->capacity & (h->capacity - 1)))
        return 0;
    if (h->message_size < 1 || h->message_size > AR_MAX_MESSAGE_SIZE ||
        h->slot_size != slot_size_for(h->message_size))
        return 0;
    if (h->max_clients < 1 || h->max_clients > AR_MAX_CLIENTS)
        return 0;
    if (h->flags & ~(AR_F_DLQ | AR_F_CHECKSUM | AR_F_FILE))
        return 0;
    if (h->mode & ~0777u)
        return 0;
    layout l = layout_for(h->capacity, h->message_size, h->max_clients);
    if (h->table_off != l.table || h->rings_off != l.rings || h->slots_off != l.slots ||
        h->total_size != l.total || h->total_size != file_size || h->total_size > (uint64_t)SIZE_MAX / 2)
        return 0;
    int dlq = (h->flags & AR_F_DLQ) != 0;
    if (h->dlq_overhead != (dlq ? AR_DEATH_SIZE : 0u) || (dlq && h->message_size < AR_DEATH_SIZE))
        return 0;
    if (h->max_deliveries > 0xFFFFu || h->default_ttl_ns > AR_MAX_DURATION_NS ||
        h->ack_timeout_ns > AR_MAX_DURATION_NS)
        return 0;
    if (h->durability > AR_DUR_SYNC || (h->durability != AR_DUR_MEMORY) != ((h->flags & AR_F_FILE) != 0))
        return 0;
    if (h->queue_id == 0)
        return 0;
    return 1;
}

/* ------------------------------------------------------------------ open handles, fork */

static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static ar_queue *open_list;

/* The SIGBUS guard reads this table from a signal handler: slots written
 * with atomic stores, in chunks of AR_GUARD_CHUNK allocated on demand (under
 * open_mu) and never freed, so the handler never sees a chunk go away.
 * AR_GUARD_CHUNKS * AR_GUARD_CHUNK handles at most per process; past that an
 * open or create fails with EMFILE rather than leave a mapping unguarded. */
#define AR_GUARD_CHUNK 1024
#define AR_GUARD_CHUNKS 64
typedef struct { unsigned char *base; size_t size; ar_queue *q; } guard_slot;
static guard_slot *guard[AR_GUARD_CHUNKS];
static struct sigaction prev_bus;
static int guard_installed;

static void chain_bus(int sig, siginfo_t *si, void *ctx) {
    /* Not ours: hand it to whoever had SIGBUS before us, as if we were not
     * there.  A fault (si_code > 0) that the previous disposition would not
     * handle (SIG_DFL, or SIG_IGN, which the kernel overrides for a fault):
     * SIG_DFL again and return, so the access faults again and the default
     * action (terminate, core) runs at the faulting instruction.  A SIGBUS
     * sent by kill/tgkill/sigqueue (si_code <= 0) has no instruction to
     * repeat: SIG_DFL re-raises it, SIG_IGN ignores it (and our guard stays). */
    int dfl_or_ign = prev_bus.sa_handler == SIG_DFL || prev_bus.sa_handler == SIG_IGN; /* (a union) */
    if (!dfl_or_ign && (prev_bus.sa_flags & SA_SIGINFO)) {
        prev_bus.sa_sigaction(sig, si, ctx);
    } else if (!dfl_or_ign) {
        prev_bus.sa_handler(sig);
    } else if (si->si_code > 0) {
        signal(SIGBUS, SIG_DFL);
    } else if (prev_bus.sa_handler == SIG_DFL) {
        signal(SIGBUS, SIG_DFL);
        raise(SIGBUS); /* SA_NODEFER: delivered now, the default action ends the process */
    }
}

static void bus_handler(int sig, siginfo_t *si, void *ctx) {
    unsigned char *a = (unsigned char *)si->si_addr;
    /* Only a fault the kernel raised (si_code > 0: BUS_ADRERR for an access
     * past the end of the file) is ours to repair; a SIGBUS sent by kill()
     * carries a pid and uid where si_addr would be. */
    for (int c = 0; si->si_code > 0 && c < AR_GUARD_CHUNKS; c++) {
        guard_slot *g = LOAD(&guard[c], ACQ);
        if (!g)
            break;
        for (int i = 0; i < AR_GUARD_CHUNK; i++) {
            unsigned char *b = LOAD(&g[i].base, ACQ);
            size_t n = LOAD(&g[i].size, ACQ);
            if (b && a >= b && a < b + n) {
                /* The file under one of our mappings shrank (truncated by
                 * another writer).  Put zero pages over the whole mapping so
                 * the faulting access and every later one complete, and mark
                 * the handle corrupt: from now on its calls answer AR_CORRUPT. */
                ar_queue *q = LOAD(&g[i].q, ACQ);
                if (q)
                    q->corrupt = 1;
                if (mmap(b, n, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) !=
                    MAP_FAILED)
                    return;
                chain_bus(sig, si, ctx);
                return;
            }
        }
    }
    chain_bus(sig, si, ctx);
}

/* Called with open_mu held (it serialises chunk allocation). */
static int guard_add(ar_queue *q) {
    for (int c = 0; c < AR_GUARD_CHUNKS; c++) {
        guard_slot *g = LOAD(&guard[c], ACQ);
        if (!g) {
            void *p = mmap(NULL, AR_GUARD_CHUNK * sizeof *g, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           -1, 0);
            if (p == MAP_FAILED)
                return -1;
            g = p;
            STORE(&guard[c], g, REL);
        }
        for (int i = 0; i < AR_GUARD_CHUNK; i++) {
            unsigned char *none = NULL;
            if (CAS(&g[i].base, &none, (unsigned char *)1, ACQ, RLX)) {
                STORE(&g[i].q, q, REL);
                STORE(&g[i].size, q->size, REL);
                STORE(&g[i].base, q->base, REL);
                return 0;
            }
        }
    }
    errno = EMFILE; /* more handles than the guard has room for: refused, not left unguarded */
    return -1;
}
static void guard_remove(ar_queue *q) {
    for (int c = 0; c < AR_GUARD_CHUNKS; c++) {
        guard_slot *g = LOAD(&guard[c], ACQ);
        if (!g)
            break;
        for (int i = 0; i < AR_GUARD_CHUNK; i++)
            if (LOAD(&g[i].q, ACQ) == q) {
                STORE(&g[i].size, 0, REL);
                STORE(&g[i].q, NULL, REL);
                STORE(&g[i].base, NULL, REL);
            }
    }
}

static void fork_prepare(void) { pthread_mutex_lock(&open_mu); }
static void fork_parent(void) { pthread_mutex_unlock(&open_mu); }
static void fork_child(void) {
    /* Only the forking thread survives; every process-local lock may have
     * been held by a thread that is gone, so they start afresh. */
    pthread_mutex_init(&open_mu, NULL);
    ar_fork_gen++;
    for (ar_queue *q = open_list; q; q = q->next_open) {
        /* OFD locks belong to the open file description, which a fork child
         * shares with its parent: give the child a description of its own,
         * so the parent's locks (its entries' liveness) stay the parent's and
         * die with it.  open(2) of /proc/self/fd/N makes a new description of
         * the same file; dup3 puts it under the same fd number, keeping
         * close-on-exec (dup2 would clear it, and a program the child execs
         * would inherit the description and its locks: entries that look
         * alive as long as that program runs). */
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", q->fd);
        int nfd = open(p, O_RDWR | O_CLOEXEC);
        if (nfd >= 0) {
            dup3(nfd, q->fd, O_CLOEXEC);
            close(nfd);
        }
        memset(q->mine, 0, (size_t)q->max_clients * sizeof *q->mine);
        q->observer = q->max_clients;
        q->dlq_entry = q->max_clients;
        pthread_mutex_init(&q->dlq_mu, NULL);
        pthread_mutex_init(&q->reclaim_mu, NULL);
        pthread_mutex_init(&q->sync_mu, NULL);
    }
}

static void init_process(void);
static void install_once(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_process);
}
static void init_process(void) {
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = bus_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &prev_bus) == 0)
        guard_installed = 1;
}

static ar_queue *new_handle(int fd, unsigned char *base, size_t size) {
    ar_queue *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->fd = fd;
    q->base = base;
    q->size = size;
    q->hdr = (ar_header *)base;
    q->refs = 1;
    q->fork_gen = ar_fork_gen;
    pthread_mutex_init(&q->dlq_mu, NULL);
    pthread_mutex_init(&q->reclaim_mu, NULL);
    pthread_mutex_init(&q->sync_mu, NULL);
    return q;
}

/* Geometry from `h`: the creator's own header, or an opener's validated
 * private copy (never re-read from the mapping). */
static int finish_handle(ar_queue *q, const ar_header *h, const char *path) {
    set_geometry(q, h);
    q->mine = calloc(q->max_clients, sizeof *q->mine);
    q->path = strdup(path);
    if (!q->mine || !q->path)
        return AR_ERRNO;
    install_once();
    pthread_mutex_lock(&open_mu);
    if (guard_add(q) != 0) {
        int e = errno;
        pthread_mutex_unlock(&open_mu);
        errno = e;
        return AR_ERRNO;
    }
    q->next_open = open_list;
    open_list = q;
    q->listed = 1;
    pthread_mutex_unlock(&open_mu);
    return AR_OK;
}

static void free_handle(ar_queue *q) {
    if (!q)
        return;
    if (q->listed) {
        pthread_mutex_lock(&open_mu);
        for (ar_queue **pp = &open_list; *pp; pp = &(*pp)->next_open)
            if (*pp == q) {
                *pp = q->next_open;
                break;
            }
        pthread_mutex_unlock(&open_mu);
    }
    guard_remove(q);
    if (q->base)
        munmap(q->base, q->size);
    if (q->fd >= 0)
        close(q->fd); /* releases every OFD lock this handle still holds */
    free(q->mine);
    free(q->path);
    free(q);
}

void ar_queue_unref(ar_queue *q) {
    /* acq_rel: the last holder sees every other holder's writes before it unmaps */
    if (q && FADD(&q->refs, -1, ACQREL) == 1) {
        if (q->dlq)
            ar_queue_unref(q->dlq);
        free_handle(q);
    }
}
void ar_queue_ref(ar_queue *q) { FADD(&q->refs, 1, RLX); }

/* ------------------------------------------------------------------ boot id */

static void read_boot_id(uint8_t out[16]) {
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

/* ------------------------------------------------------------------ create */

static int zero_fill(int fd, uint64_t size) {
    /* A file queue writes every block now, so no later store through the
     * mapping needs the filesystem to allocate (a full disk is an error here,
     * not a SIGBUS in some later put), then makes the zeroes durable. */
    static const unsigned char zeros[65536];
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < sizeof zeros ? (size_t)(size - off) : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (uint64_t)w;
    }
    return fdatasync(fd);
}

typedef struct {
    char tmp[PATH_MAX];
    int fd;
    ar_queue *q;
} building;

static int build(building *b, const char *dir, const char *base, uint32_t cap, uint32_t msz, uint32_t max_clients,
                 int mode, const ar_config *cfg, uint32_t flags) {
    b->fd = -1;
    b->q = NULL;
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = ar_realtime_ns() ^ ((uint64_t)getpid() << 32);
    int n = snprintf(b->tmp, sizeof b->tmp, "%s/.%s.%d.%016llx.tmp", dir, base, (int)getpid(),
                     (unsigned long long)rnd);
    if (n < 0 || (size_t)n >= sizeof b->tmp)
        return AR_INVAL;
    layout l = layout_for(cap, msz, max_clients);
    if (l.total > (uint64_t)SIZE_MAX / 2)
        return AR_INVAL;
    /* O_EXCL | O_NOFOLLOW: a name planted in a shared directory is never
     * opened; 0600 until fchmod gives the exact mode (umask does not apply). */
    b->fd = open(b->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (b->fd < 0) {
        b->tmp[0] = 0;
        return errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
    }
    if (fchmod(b->fd, (mode_t)mode) != 0)
        return AR_ERRNO;
    if (flags & AR_F_FILE) {
        if (zero_fill(b->fd, l.total) != 0)
            return AR_ERRNO;
    } else if ((errno = posix_fallocate(b->fd, 0, (off_t)l.total)) != 0) {
        /* tmpfs pages reserved now: a full /dev/shm is ENOSPC here, not a SIGBUS later */
        return AR_ERRNO;
    }
    void *base_p = mmap(NULL, (size_t)l.total, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
    if (base_p == MAP_FAILED)
        return AR_ERRNO;
    b->q = new_handle(b->fd, base_p, (size_t)l.total);
    if (!b->q) {
        munmap(base_p, (size_t)l.total);
        errno = ENOMEM;
        return AR_ERRNO;
    }
    ar_header *h = b->q->hdr;
    h->version = AR_VERSION;
    h->header_size = AR_HDR_SIZE;
    h->capacity = cap;
    h->message_size = msz;
    h->slot_size = slot_size_for(msz);
    h->max_clients = max_clients;
    h->flags = flags;
    h->mode = (uint32_t)mode;
    h->created_ns = ar_realtime_ns();
    h->queue_id = rnd ? rnd : 1;
    h->total_size = l.total;
    h->table_off = l.table;
    h->rings_off = l.rings;
    h->slots_off = l.slots;
    h->max_deliveries = cfg->max_deliveries;
    h->dlq_overhead = (flags & AR_F_DLQ) ? AR_DEATH_SIZE : 0;
    h->default_ttl_ns = cfg->default_ttl_ns;
    h->ack_timeout_ns = cfg->ack_timeout_ns;
    h->durability = cfg->durability;
    h->owner_uid = (uint32_t)geteuid();
    read_boot_id(h->boot_id);
    set_geometry(b->q, h);
    /* Every slot FREE, never used; every index in the free ring, in order
     * (so the first capacity messages get ids 0, 1, 2, ...); the ready and
     * requeue rings empty (cell j empty for a push at position j). */
    for (uint32_t i = 0; i < cap; i++) {
        slot_at(b->q, i)->word = SWORD(AR_S_FREE, AR_OUT_NONE, 0, 0);
        b->q->cells[R_FREE][i] = CELL(i + 1, i);
        b->q->cells[R_READY][i] = CELL(i, 0);
        b->q->cells[R_REQUEUE][i] = CELL(i, 0);
    }
    h->tail[R_FREE].pos = cap;
    return AR_OK;
}

static void publish_built(building *b) {
    /* release: orders every initialising store before the magic (the link
     * below is what publishes the segment; this is belt and braces). */
    STORE(&b->q->hdr->magic, AR_MAGIC, REL);
}

static void unbuild(building *b) {
    int e = errno;
    if (b->q)
        free_handle(b->q); /* closes fd */
    else if (b->fd >= 0)
        close(b->fd);
    if (b->tmp[0])
        unlink(b->tmp);
    b->q = NULL;
    b->fd = -1;
    errno = e;
}

static int dir_of(const char *path, char *dir, size_t n, const char **base) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        if (n < 2)
            return AR_INVAL;
        strcpy(dir, ".");
        *base = path;
        return AR_OK;
    }
    size_t len = (size_t)(slash - path);
    if (len == 0)
        len = 1; /* "/name" */
    if (len >= n)
        return AR_INVAL;
    memcpy(dir, path, len);
    dir[len] = 0;
    *base = slash + 1;
    return **base ? AR_OK : AR_INVAL;
}

/* An existing DLQ file is replaceable only if it is our own orphan: a
 * regular file of our euid, an ackring DLQ, whose main queue is gone (a
 * create that died between its two links). */
static int own_orphan_dlq(const char *dlq_path, const char *main_path) {
    struct stat st;
    if (lstat(main_path, &st) == 0 || errno != ENOENT)
        return 0;
    int fd = open(dlq_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ar_header h;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
             pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h && header_valid(&h, (uint64_t)st.st_size) &&
             (h.flags & AR_F_DLQ);
    close(fd);
    return ok;
}

static int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int ar_create_pair(const ar_create_args *a, ar_queue **main_out, ar_queue **dlq_out) {
    *main_out = *dlq_out = NULL;
    const ar_config *cfg = &a->cfg;
    uint32_t cap = a->capacity, dcap = a->dlq_capacity, msz = a->message_size;
    if (!a->path || cap < 2 || cap > AR_MAX_CAPACITY || (cap & (cap - 1)) || dcap < 2 ||
        dcap > AR_MAX_CAPACITY || (dcap & (dcap - 1)) || msz < 1 || msz > AR_MAX_MESSAGE_SIZE - AR_DEATH_SIZE ||
        a->max_clients < 1 || a->max_clients > AR_MAX_CLIENTS || (a->mode & ~0777) ||
        cfg->max_deliveries > 0xFFFFu || cfg->default_ttl_ns > AR_MAX_DURATION_NS ||
        cfg->ack_timeout_ns > AR_MAX_DURATION_NS || cfg->durability > AR_DUR_SYNC)
        return AR_INVAL;
    char main_path[PATH_MAX], dlq_path[PATH_MAX], dir[PATH_MAX];
    const char *base;
    if (snprintf(main_path, sizeof main_path, "%s", a->path) >= (int)sizeof main_path ||
        snprintf(dlq_path, sizeof dlq_path, "%s.dlq", a->path) >= (int)sizeof dlq_path ||
        dir_of(a->path, dir, sizeof dir, &base) != AR_OK)
        return AR_INVAL;
    uint32_t fl = (cfg->durability != AR_DUR_MEMORY ? AR_F_FILE | AR_F_CHECKSUM : 0) |
                  (cfg->checksum ? AR_F_CHECKSUM : 0);
    ar_config dcfg = {0, 1, 0, 0, cfg->durability, cfg->checksum};
    building m, d;
    memset(&m, 0, sizeof m);
    memset(&d, 0, sizeof d);
    m.fd = d.fd = -1;
    int rc = build(&m, dir, base, cap, msz, a->max_clients, a->mode, cfg, fl);
    if (rc == AR_OK)
        rc = build(&d, dir, base, dcap, msz + AR_DEATH_SIZE, a->max_clients, a->mode, &dcfg, fl | AR_F_DLQ);
    if (rc != AR_OK)
        goto fail;
    m.q->hdr->peer_id = d.q->queue_id;
    d.q->hdr->peer_id = m.q->queue_id;
    m.q->peer_id = d.q->queue_id;
    d.q->peer_id = m.q->queue_id;
    publish_built(&m);
    publish_built(&d);
    if (fl & AR_F_FILE) {
        if (fdatasync(m.fd) != 0 || fdatasync(d.fd) != 0) {
            rc = AR_ERRNO;
            goto fail;
        }
    }
    struct stat st;
    if (lstat(main_path, &st) == 0) {
        rc = AR_EXISTS;
        goto fail;
    }
    /* The DLQ's name first, then the queue's: a crash in between leaves an
     * orphan DLQ of ours, which the next create replaces; never a queue
     * without its DLQ. */
    if (link(d.tmp, dlq_path) != 0) {
        if (errno != EEXIST) {
            rc = errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
            goto fail;
        }
        if (!own_orphan_dlq(dlq_path, main_path) || rename(d.tmp, dlq_path) != 0) {
            rc = AR_DENIED; /* somebody else's file sits at name.dlq: never use it */
            errno = EEXIST;
            goto fail;
        }
        d.tmp[0] = 0; /* renamed into place */
    }
    if (link(m.tmp, main_path) != 0) {
        int e = errno;
        /* Take our DLQ back out, if the name still holds our file. */
        struct stat ds, fs;
        if (stat(dlq_path, &ds) == 0 && fstat(d.fd, &fs) == 0 && ds.st_ino == fs.st_ino && ds.st_dev == fs.st_dev)
            unlink(dlq_path);
        errno = e;
        rc = e == EEXIST ? AR_EXISTS : AR_ERRNO;
        goto fail;
    }
    unlink(m.tmp);
    if (d.tmp[0])
        unlink(d.tmp);
    if (fl & AR_F_FILE)
        sync_dir(dir);
    if ((rc = finish_handle(m.q, m.q->hdr, main_path)) != AR_OK || (rc = finish_handle(d.q, d.q->hdr, dlq_path)) != AR_OK) {
        /* No room for the handles (ENOMEM, or EMFILE from the SIGBUS guard):
         * the names we just linked go again, so a failed create leaves nothing. */
        int e = errno;
        unlink(main_path);
        unlink(dlq_path);
        errno = e;
        m.tmp[0] = d.tmp[0] = 0;
        goto fail;
    }
    *main_out = m.q;
    *dlq_out = d.q;
    return AR_OK;
fail:
    unbuild(&m);
    unbuild(&d);
    return rc;
}

/* ------------------------------------------------------------------ open */

static int trusted_uid(uint32_t uid, const uint32_t *trust, size_t n) {
    if (uid == (uint32_t)geteuid())
        return 1;
    for (size_t i = 0; i < n; i++)
        if (trust[i] == uid)
            return 1;
    return 0;
}

/* Open + fstat + trust checks + header copy.  On AR_OK the caller owns *fd. */
static int open_checked(const char *path, const uint32_t *trust, size_t ntrust, int *fd_out, ar_header *h,
                        struct stat *st) {
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return AR_NOTFOUND;
        if (errno == ELOOP)
            return AR_DENIED; /* a symlink: never followed */
        return AR_ERRNO;
    }
    int rc = AR_OK;
    if (fstat(fd, st) != 0) {
        rc = AR_ERRNO;
    } else if (!S_ISREG(st->st_mode)) {
        rc = AR_INCOMPATIBLE;
    } else if (!trusted_uid((uint32_t)st->st_uid, trust, ntrust)) {
        rc = AR_DENIED; /* another user's file */
    } else if (st->st_mode & 07000) {
        rc = AR_DENIED; /* setuid/setgid/sticky: not something create() makes */
    } else if ((uint64_t)st->st_size < AR_HDR_SIZE ||
               pread(fd, h, sizeof *h, 0) != (ssize_t)sizeof *h ||
               !header_valid(h, (uint64_t)st->st_size)) {
        rc = AR_INCOMPATIBLE;
    } else if ((st->st_mode & 022) & ~h->mode) {
        rc = AR_DENIED; /* group/other may write it, which its creator did not ask for */
    }
    if (rc != AR_OK) {
        int e = errno;
        close(fd);
        errno = e;
        return rc;
    }
    *fd_out = fd;
    return AR_OK;
}

int ar_open(const char *path, const uint32_t *trust, size_t ntrust, ar_queue **out) {
    *out = NULL;
    if (!path)
        return AR_INVAL;
    ar_header h;
    struct stat st;
    int fd = -1;
    int rc = open_checked(path, trust, ntrust, &fd, &h, &st);
    if (rc != AR_OK)
        return rc;
    void *base = mmap(NULL, (size_t)h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        errno = e;
        return AR_ERRNO;
    }
    ar_queue *q = new_handle(fd, base, (size_t)h.total_size);
    if (!q) {
        munmap(base, (size_t)h.total_size);
        close(fd);
        errno = ENOMEM;
        return AR_ERRNO;
    }
    if ((rc = finish_handle(q, &h, path)) != AR_OK) {
        int e = errno;
        free_handle(q);
        errno = e;
        return AR_ERRNO;
    }
    if (q->flags & AR_F_FILE) {
        uint8_t now[16];
        read_boot_id(now);
        int same_boot = memcmp(now, (const void *)q->hdr->boot_id, 16) == 0;
        /* acquire: pairs with the release fence before durable_rebuild's
         * boot-id store, so a matching id means its rings are seen too. */
        FENCE(ACQ);
        if (!same_boot) {
            /* Last used in another boot: no process of that boot is alive,
             * whatever pids the table names.  Rebuild from the slots. */
            rc = durable_rebuild(q, &q->last_open);
            if (rc != AR_OK) {
                int e = errno;
                ar_close(q);
                errno = e;
                return rc;
            }
        }
    }
    *out = q;
    return AR_OK;
}

int ar_attach_dlq(ar_queue *q, ar_queue *dlq) {
    if (q->cfg.is_dlq || !dlq || !dlq->cfg.is_dlq)
        return AR_INVAL;
    /* Made as a pair by one create: each names the other. */
    if (q->peer_id != dlq->queue_id || dlq->peer_id != q->queue_id)
        return AR_INCOMPATIBLE;
    struct stat a, b;
    if (fstat(q->fd, &a) != 0 || fstat(dlq->fd, &b) != 0)
        return AR_ERRNO;
    if (a.st_uid != b.st_uid)
        return AR_DENIED;
    pthread_mutex_lock(&q->dlq_mu);
    ar_queue *old = q->dlq;
    ar_queue_ref(dlq);
    q->dlq = dlq;
    q->dlq_entry = q->max_clients;
    pthread_mutex_unlock(&q->dlq_mu);
    if (old)
        ar_queue_unref(old);
    return AR_OK;
}

static int shutdown_file(const char *path, const uint32_t *trust, size_t ntrust) {
    ar_header h;
    struct stat st;
    int fd = -1;
    int rc = open_checked(path, trust, ntrust, &fd, &h, &st);
    if (rc != AR_OK)
        return rc;
    void *base = mmap(NULL, (size_t)h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return AR_ERRNO;
    ar_header *sh = (ar_header *)base;
    STORE(&sh->shutdown, 1, SEQ);
    wake_all(&sh->not_empty);
    wake_all(&sh->not_full);
    munmap(base, (size_t)h.total_size);
    return AR_OK;
}

static int unlink_one(const char *path, const uint32_t *trust, size_t ntrust) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
    int rc = shutdown_file(path, trust, ntrust);
    if (rc == AR_DENIED && !S_ISLNK(st.st_mode))
        return AR_DENIED; /* another user's queue: not ours to remove */
    /* Ours but not a sound segment (or a symlink someone planted at the
     * name): the name goes, nothing it points to is touched. */
    if (unlink(path) != 0)
        return errno == ENOENT ? AR_NOTFOUND : AR_ERRNO;
    return AR_OK;
}

int ar_unlink(const char *path, const uint32_t *trust, size_t ntrust) {
    char dlq_path[PATH_MAX];
    if (!path || snprintf(dlq_path, sizeof dlq_path, "%s.dlq", path) >= (int)sizeof dlq_path)
        return AR_INVAL;
    int rc = unlink_one(path, trust, ntrust);
    size_t n = strlen(path);
    if (!(n >= 4 && strcmp(path + n - 4, ".dlq") == 0)) {
        int rd = unlink_one(dlq_path, trust, ntrust);
        if (rc == AR_OK && rd == AR_DENIED)
            rc = AR_DENIED;
    }
    return rc;
}

void ar_close(ar_queue *q) {
    if (!q || q->closed)
        return;
    q->closed = 1;
    {
        /* Our observer and DLQ entries go back (a fork child has none: the
         * fork handler forgot the parent's). */
        pthread_mutex_lock(&q->reclaim_mu);
        if (q->observer < q->max_clients && q->observer_gen == ar_fork_gen)
            entry_unregister(q, q->observer, q->mine[q->observer]);
        q->observer = q->max_clients;
        pthread_mutex_unlock(&q->reclaim_mu);
        pthread_mutex_lock(&q->dlq_mu);
        if (q->dlq && q->dlq_entry < q->dlq->max_clients && q->dlq_gen == ar_fork_gen)
            entry_unregister(q->dlq, q->dlq_entry, q->dlq->mine[q->dlq_entry]);
        q->dlq_entry = q->dlq ? q->dlq->max_clients : 0;
        pthread_mutex_unlock(&q->dlq_mu);
    }
    if ((q->flags & AR_F_FILE) && !q->corrupt)
        durable_close(q);
    ar_queue_unref(q);
}

int ar_shutdown(ar_queue *q) {
    if (q->corrupt)
        return CORRUPT();
    /* seq_cst: a sleeper that announced itself after this store re-checks and
     * sees it; one that announced before is woken below. */
    STORE(&q->hdr->shutdown, 1, SEQ);
    wake_all(&q->hdr->not_empty);
    wake_all(&q->hdr->not_full);
    return AR_OK;
}

int ar_is_shutdown(const ar_queue *q) { return shut_down(q); }
void ar_get_config(const ar_queue *q, ar_config *cfg) { *cfg = q->cfg; }
uint32_t ar_capacity(const ar_queue *q) { return q->capacity; }
uint32_t ar_message_size(const ar_queue *q) { return q->message_size; }
uint32_t ar_max_clients(const ar_queue *q) { return q->max_clients; }
uint64_t ar_queue_id(const ar_queue *q) { return q->queue_id; }
uint64_t ar_created_ns(const ar_queue *q) { return q->created_ns; }
uint32_t ar_file_mode(const ar_queue *q) {
    struct stat st;
    return fstat(q->fd, &st) == 0 ? (uint32_t)(st.st_mode & 07777) : 0;
}
