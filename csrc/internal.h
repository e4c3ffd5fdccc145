/* SPDX-License-Identifier: MIT */
/*
 * internal.h - what every family of the C core shares: clocks, deadlines
 * cut into slices, spinning, and futex calls.  Not part of the cdef.
 *
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds with two special
 * values: NOWAIT (0) never waits and FOREVER (-1) has no end.  No wait lasts
 * longer than one slice (SLICE_NS): when a slice ends before the deadline,
 * or a signal arrives, the call returns -EINTR and Python runs its signal
 * handlers (Ctrl-C) before it calls again with the same deadline
 * (PEP 475's retry-with-recomputed-timeout rule, done on our side).
 */
#ifndef PYIPC_INTERNAL_H
#define PYIPC_INTERNAL_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NOWAIT 0
#define FOREVER (-1)

#define SLICE_NS 100000000ll /* longest single wait: 100 ms, for Ctrl-C */
#define SPIN_NS 50000ll      /* spin this long before sleeping: see spin_until */

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

static inline int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static inline struct timespec ns_to_timespec(int64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000ll, .tv_nsec = ns % 1000000000ll };

	return ts;
}

/*
 * Where this call's wait must end: the deadline, or the end of one slice
 * from now if that is sooner.  Returns -EAGAIN for NOWAIT, -ETIMEDOUT when
 * the deadline has passed, else 0 with *until set.
 */
static inline int slice_begin(int64_t deadline, int64_t *until)
{
	int64_t t;

	if (deadline == NOWAIT)
		return -EAGAIN;
	t = now_ns();
	if (deadline != FOREVER && t >= deadline)
		return -ETIMEDOUT;
	*until = (deadline == FOREVER || deadline - t > SLICE_NS) ? t + SLICE_NS : deadline;
	return 0;
}

/* A wait that ended at `until` without what it waited for: the caller's
 * deadline (-ETIMEDOUT, or -EAGAIN for NOWAIT) or just a slice (-EINTR). */
static inline int slice_end(int64_t deadline, int64_t until)
{
	if (deadline == NOWAIT)
		return -EAGAIN;
	return (deadline != FOREVER && until >= deadline) ? -ETIMEDOUT : -EINTR;
}

/* A hint to the CPU that this is a spin loop (yields to the sibling
 * hyperthread, saves power); a no-op where there is no such instruction. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	atomic_signal_fence(memory_order_seq_cst);
#endif
}

/*
 * Wait on a futex word shared between processes until *word != val, a wake,
 * a signal (-EINTR) or the absolute CLOCK_MONOTONIC instant `until`
 * (-ETIMEDOUT).  0 also when the word had already moved (-EAGAIN from the
 * kernel): either way the caller looks again.  FUTEX_WAIT_BITSET is the
 * form that takes an absolute monotonic deadline, so a wait interrupted and
 * restarted never stretches.  No FUTEX_PRIVATE_FLAG: the word lives in
 * memory that other processes map.
 */
static inline int futex_wait_until(_Atomic uint32_t *word, uint32_t val, int64_t until)
{
	struct timespec ts = ns_to_timespec(until);

	if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET, val, &ts, NULL, FUTEX_BITSET_MATCH_ANY) == 0)
		return 0;
	return errno == EAGAIN ? 0 : -errno;
}

/* Wake up to n waiters of a shared futex word. */
static inline void futex_wake(_Atomic uint32_t *word, int n)
{
	syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

static inline void futex_wake_all(_Atomic uint32_t *word)
{
	futex_wake(word, INT_MAX);
}

#endif
