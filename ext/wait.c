/*
 * wait.c - blocking without a wake storm: a time-bounded spin, then an
 * eventcount sleep on a futex in the segment.  design.md 5.
 *
 * An eventcount is one 32-bit word: bit 0 says "someone may be asleep",
 * bits 1..31 count wakeups.  A sleeper sets bit 0 (fetch_or), re-checks its
 * condition, and sleeps only if the word still holds the value it saw.  A
 * waker, after making the condition true, loads the word; only if bit 0 is
 * set does it CAS the word to the next count with bit 0 clear, and only the
 * waker whose CAS cleared the bit calls FUTEX_WAKE.  So a busy queue makes
 * no system call at all, and a sleeping one makes one per sleep, not one per
 * message.
 *
 * I6 (no lost wakeup): the waker's change (a seq_cst CAS on a ring cell or a
 * slot word) is followed by its seq_cst load of the word; the sleeper's
 * seq_cst fetch_or is followed by a seq_cst fence and its re-check.  By the
 * single total order of seq_cst operations, either the waker's load sees
 * bit 0, or the sleeper's re-check sees the change.
 */
#include "ar_internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

uint64_t ar_spin_ns = 10000;

/* Test counters (ar_futex_counts): the futex system calls this process made.
 * Relaxed increments next to a system call cost nothing measurable. */
static uint64_t futex_waits, futex_wakes;

void ar_futex_counts(uint64_t *waits, uint64_t *wakes) {
    *waits = LOAD(&futex_waits, RLX);
    *wakes = LOAD(&futex_wakes, RLX);
}

static void futex_wait(uint32_t *addr, uint32_t expected, uint64_t timeout_ns) {
    struct timespec ts = {(time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull)};
    /* Shared futex (not FUTEX_PRIVATE): the wakers are other processes.
     * EAGAIN (the word moved), EINTR and ETIMEDOUT all mean: re-check. */
    FADD(&futex_waits, 1, RLX);
    syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
}
static void futex_wake(uint32_t *addr) {
    FADD(&futex_wakes, 1, RLX);
    syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* wake's rare half (ar_internal.h:wake): bit 0 was set in v.  Only the
 * waker that clears the flag makes the system call. */
void wake_sleepers(ar_event *ev, uint32_t v) {
    if (CAS(&ev->seq, &v, (v + 2u) & ~1u, SEQ, RLX))
        futex_wake(&ev->seq);
}

void wake_all(ar_event *ev) {
    /* Unconditional (close, shutdown): move the word and wake everyone. */
    uint32_t v = LOAD(&ev->seq, RLX);
    while (!CAS(&ev->seq, &v, (v + 2u) & ~1u, SEQ, RLX))
        ;
    futex_wake(&ev->seq);
}

int wait_for(ar_client *c, ar_event *ev, uint64_t deadline, ar_attempt attempt, void *arg, int none) {
    ar_queue *q = c->q;
    /* Spin briefly first: the other side is often microseconds away, and a
     * sleep plus a wake costs more.  Bounded by time (ACKRING_SPIN_US). */
    uint64_t now = ar_now_ns(), spin_until = now + ar_spin_ns;
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        int rc = attempt(c, arg);
        if (rc != none)
            return rc;
        if ((i & 15) == 0 && (now = ar_now_ns()) >= spin_until)
            break;
    }
    if (deadline != AR_NO_DEADLINE && now >= deadline)
        return none;
    /* A call blocked this long runs a reclaim pass (at most one per 100 ms
     * per handle): a dead process cannot stall a live one for longer. */
    if (now - LOAD(&q->last_reclaim_ns, RLX) >= 100000000ull) {
        ar_recovery rec;
        ar_reclaim(q, &rec);
        int rc = attempt(c, arg);
        if (rc != none)
            return rc;
    }
    uint64_t slice = AR_WAIT_SLICE_NS;
    if (deadline != AR_NO_DEADLINE && deadline - now < slice)
        slice = deadline - now;
    /* Announce (bit 0), fence, re-check, then sleep on the announced value. */
    uint32_t v = FOR(&ev->seq, 1u, SEQ) | 1u;
    FENCE(SEQ);
    int rc = attempt(c, arg);
    if (rc != none)
        return rc;
    futex_wait(&ev->seq, v, slice);
    rc = attempt(c, arg);
    if (rc != none)
        return rc;
    if (deadline != AR_NO_DEADLINE && ar_now_ns() >= deadline)
        return none;
    return AR_AGAIN;
}
