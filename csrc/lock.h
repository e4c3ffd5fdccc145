/* SPDX-License-Identifier: MIT */
/*
 * lock.h - a lock word in a shared segment that a dead holder cannot take
 * with it.  Not part of the cdef.
 *
 * The word is 0 when free, else the holder's owner id (owner.h), plus
 * LOCK_WAITERS once somebody sleeps on it.  Taking and giving an
 * uncontended lock is one compare-and-swap and one exchange: no system
 * call.  A contender that finds the lock held asks the kernel whether the
 * holder lives, before each sleep and every LOCK_CHECK_NS while it sleeps:
 * a dead holder's lock is taken over at once, whatever the contender's
 * timeout (even a non-blocking call does this), a live holder's never,
 * however long it holds it.  Liveness is not judged by time at all.
 */
#ifndef PYIPC_LOCK_H
#define PYIPC_LOCK_H

#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"
#include "segment.h"

#define LOCK_WAITERS 0x80000000u
#define LOCK_RECOVERED 1 /* taken from a dead holder: repair, then go on */

#ifdef PYIPC_TEST_HOOKS
/* Test builds only: called right after every successful fast-path CAS, so a
 * test can hold a freshly taken lock as long as it likes. */
extern void (*pyipc_test_after_lock)(_Atomic uint32_t *word);
#define AFTER_LOCK(w)                                 \
	do {                                          \
		if (pyipc_test_after_lock)            \
			pyipc_test_after_lock(w);     \
	} while (0)
#else
#define AFTER_LOCK(w) ((void)(w))
#endif

int lock_take_slow(_Atomic uint32_t *word, const struct seg *s, int64_t deadline);

/*
 * Take the lock for handle s: 0, LOCK_RECOVERED (the caller now holds a
 * lock whose holder died inside it, and must repair what it protects), or
 * -EAGAIN / -ETIMEDOUT / -EINTR.  Even a NOWAIT call waits for a live
 * holder, at most one slice: the lock is only ever held for a copy.
 */
static inline int lock_take(_Atomic uint32_t *word, const struct seg *s, int64_t deadline)
{
	uint32_t v = 0;

	if (likely(atomic_compare_exchange_strong_explicit(word, &v, s->owner, memory_order_acquire,
							   memory_order_relaxed))) {
		AFTER_LOCK(word);
		return 0;
	}
	return lock_take_slow(word, s, deadline);
}

static inline void lock_give(_Atomic uint32_t *word)
{
	if (atomic_exchange_explicit(word, 0, memory_order_release) & LOCK_WAITERS)
		futex_wake(word, 1);
}

#endif
