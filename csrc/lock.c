// SPDX-License-Identifier: MIT
/* lock.c - the contended path of lock.h's lock words. */
#include "lock.h"
#include "owner.h"

#define LOCK_SPINS 200
#define LOCK_CHECK_NS 5000000ll /* a sleeping contender asks about the holder this often */

#ifdef PYIPC_TEST_HOOKS
void (*pyipc_test_after_lock)(_Atomic uint32_t *word);
#endif

int lock_take_slow(_Atomic uint32_t *word, const struct seg *s, int64_t deadline)
{
	int64_t until = now_ns() + SLICE_NS, t, wake_at;
	uint32_t mine = s->owner, v;
	int i, rc;

	if (deadline != NOWAIT && deadline != FOREVER && deadline < until)
		until = deadline;
	/* Most holders are only copying a message: a short spin finds the
	 * lock free without a system call. */
	for (i = 0; i < LOCK_SPINS; i++) {
		v = atomic_load_explicit(word, memory_order_relaxed);
		if (v == 0 && atomic_compare_exchange_weak_explicit(word, &v, mine, memory_order_acquire,
								     memory_order_relaxed))
			return 0;
		cpu_relax();
	}
	for (;;) {
		v = atomic_load_explicit(word, memory_order_relaxed);
		if (v == 0) {
			/* Once we have slept, others may sleep too: keep the bit
			 * so that our unlock wakes the next one. */
			if (atomic_compare_exchange_weak_explicit(word, &v, mine, memory_order_acquire,
								  memory_order_relaxed))
				return 0;
			continue;
		}
		/* No handle has id 0, and no lock operation leaves the waiter bit
		 * alone in the word (lock_give clears all of it): a word that
		 * names nobody was written over, and nobody holds it. */
		if ((v & ~LOCK_WAITERS) == 0 ||
		    owner_liveness(s->fd, s->owner, v & ~LOCK_WAITERS) == OWNER_DEAD) {
			if (atomic_compare_exchange_strong_explicit(word, &v, s->owner | (v & LOCK_WAITERS),
								    memory_order_acquire, memory_order_relaxed))
				return LOCK_RECOVERED;
			continue;
		}
		if (!(v & LOCK_WAITERS) &&
		    !atomic_compare_exchange_weak(word, &v, v | LOCK_WAITERS))
			continue;
		v |= LOCK_WAITERS;
		mine = s->owner | LOCK_WAITERS;
		t = now_ns();
		if (t >= until)
			return slice_end(deadline, until);
		wake_at = until < t + LOCK_CHECK_NS ? until : t + LOCK_CHECK_NS;
		rc = futex_wait_until(word, v, wake_at);
		if (rc == -EINTR)
			return -EINTR;
	}
}
