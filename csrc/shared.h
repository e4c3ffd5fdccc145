/* SPDX-License-Identifier: MIT */
/*
 * shared.h - helpers over the shared structures of layout.h that every
 * kind of segment (ring, topic) uses: event counts with a waiter bit, lease
 * tables, and one-entry redo logs.  Not part of the cdef.
 */
#ifndef PYIPC_SHARED_H
#define PYIPC_SHARED_H

#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"
#include "layout.h"
#include "owner.h"
#include "segment.h"

/*
 * Event counts.  A sleeper sets bit 0 of the word (announce_sleeper), makes
 * a seq_cst fence, checks its condition once more and sleeps while the word
 * still holds the value it announced.  Whoever changes the condition makes
 * a seq_cst fence and then calls wake_sleepers(): either the sleeper's
 * second check sees the change, or the waker sees the bit.  A wake costs a
 * system call only when the bit says somebody sleeps.
 */
static inline uint32_t announce_sleeper(_Atomic uint32_t *evt)
{
	return atomic_fetch_or(evt, 1u) | 1u;
}

static inline void wake_sleepers(_Atomic uint32_t *evt)
{
	uint32_t v = atomic_load_explicit(evt, memory_order_relaxed);

	while (v & 1u) {
		/* v + 1 clears the waiter bit and advances the count. */
		if (atomic_compare_exchange_weak(evt, &v, v + 1)) {
			futex_wake_all(evt);
			return;
		}
	}
}

/* Wake every sleeper, flagged or not (shutdown, close, repair): all must
 * look at the new state. */
static inline void wake_everyone(_Atomic uint32_t *evt)
{
	atomic_fetch_add(evt, 2);
	futex_wake_all(evt);
}

/* The lowest position of an open lease in table t (positions compared from
 * `floor`, which is at or below all of them), or `none` if there is none;
 * *n counts them. */
static inline uint64_t lowest_lease(struct lease *t, uint64_t floor, uint64_t none, uint32_t *n)
{
	uint64_t low = none;
	uint32_t i, k = 0;

	for (i = 0; i < PYIPC_MAX_LEASES; i++) {
		if (!atomic_load_explicit(&t[i].owner, memory_order_relaxed))
			continue;
		k++;
		if (t[i].pos - floor < low - floor)
			low = t[i].pos;
	}
	*n = k;
	return low;
}

/* Drop the leases of t that do not lie within [lo, hi) of a record area of
 * `cap` bytes, or fail their check; returns how many remain. */
static inline uint32_t keep_leases(struct lease *t, uint64_t cap, uint64_t lo, uint64_t hi)
{
	uint32_t n = 0;

	for (int i = 0; i < PYIPC_MAX_LEASES; i++) {
		uint32_t owner = atomic_load(&t[i].owner);
		uint64_t pos = atomic_load(&t[i].pos), end = t[i].end;

		if (!owner)
			continue;
		if (t[i].check != lease_check(pos, end, owner) || ((pos | end) & 7) || end <= pos ||
		    end - pos > cap || pos - lo > hi - lo || end - lo > hi - lo)
			atomic_store(&t[i].owner, 0);
		else
			n++;
	}
	return n;
}

/* Lock-free look: does table t hold a lease whose holder is dead? */
static inline int dead_leases(const struct seg *s, struct lease *t)
{
	for (int i = 0; i < PYIPC_MAX_LEASES; i++) {
		uint32_t owner = atomic_load_explicit(&t[i].owner, memory_order_relaxed);

		if (owner && owner_liveness(s->fd, s->owner, owner) == OWNER_DEAD)
			return 1;
	}
	return 0;
}

/* Open a redo log for one operation (done is the side's count of finished
 * operations); its commit point comes after. */
static inline void redo_open(struct redo *log, _Atomic uint64_t *done, uint32_t op, uint32_t slot,
			     uint64_t cursor, uint64_t count, uint64_t bytes)
{
	log->op = op;
	log->slot = slot;
	log->cursor = cursor;
	log->count = count;
	log->bytes = bytes;
	/* seq last: a log with the new seq is a whole one. */
	atomic_store_explicit(&log->seq, atomic_load_explicit(done, memory_order_relaxed) + 1,
			      memory_order_release);
}

static inline void redo_close(struct redo *log, _Atomic uint64_t *done)
{
	atomic_store_explicit(done, atomic_load_explicit(&log->seq, memory_order_relaxed),
			      memory_order_release);
}

#endif
