/* SPDX-License-Identifier: MIT */
/*
 * ring_internal.h - what the ring's sources share: the process-local
 * handle and the helpers that ring.c (records and cursors),
 * ring_lease.c (reservations and views) and ring_repair.c (takeover
 * repair, check, repair) all use.  Not part of the cdef.
 */
#ifndef PYIPC_RING_INTERNAL_H
#define PYIPC_RING_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "forksafe.h"
#include "internal.h"
#include "layout.h"
#include "lock.h"
#include "segment.h"
#include "shared.h"

#define SKIP_LEN UINT64_MAX /* parse_record(): the record is a skip record */
#define LEASE_CHECK_NS 10000000ll /* waiters held up by a lease look at its owner this often */

/* The process-local handle: geometry copied out of the segment once. */
struct pyipc_ring {
	struct seg seg;
	struct ring_hdr *hdr;
	unsigned char *data;
	uint64_t cap;
	uint64_t mask;
	uint64_t max_msg;
	uint64_t max_messages;
	/*
	 * The other side's published cursor as last read.  Reading the real
	 * one pulls its cache line over from the other CPU, so producers
	 * re-read `free` only when the cached one says "full", consumers
	 * `tail` only when theirs says "empty".  Kept here, not in the
	 * segment: a cache nobody else can write can never be scribbled.
	 * Each is used under its side's lock; *_epoch is the repair epoch it
	 * belongs to (repair() may move cursors back).
	 */
	uint64_t cached_free;
	uint64_t cached_tail;
	uint32_t prod_epoch;
	uint32_t cons_epoch;
	_Atomic int users;   /* calls in progress on this handle */
	_Atomic int leases;  /* leases held through this handle */
	_Atomic int closing; /* close() was called */
	_Atomic int unmapped;
	struct fork_hook fork;
};

static inline uint64_t rec_size(uint64_t len)
{
	return REC_HDR + ((len + 7) & ~7ull);
}

struct rec_hdr {
	uint32_t len;
	uint32_t check;
};

/* The record at pos: its size, with *len its payload length or SKIP_LEN,
 * or -EBADMSG if it is not a record or does not fit in `avail` bytes. */
static inline int64_t parse_record(const struct pyipc_ring *r, uint64_t pos, uint64_t avail,
				   uint64_t *len)
{
	struct rec_hdr rh;

	memcpy(&rh, r->data + (pos & r->mask), sizeof(rh));
	if (likely(rh.check == ~rh.len)) {
		if (rh.len > r->max_msg || rec_size(rh.len) > avail)
			return -EBADMSG;
		*len = rh.len;
		return (int64_t)rec_size(rh.len);
	}
	if (rh.check == (~rh.len ^ REC_SKIP) && rh.len >= REC_HDR && !(rh.len & 7) && rh.len <= avail) {
		*len = SKIP_LEN;
		return rh.len;
	}
	return -EBADMSG;
}

static inline void write_record_hdr(struct pyipc_ring *r, uint64_t pos, uint64_t len)
{
	struct rec_hdr rh = { .len = (uint32_t)len, .check = ~(uint32_t)len };

	memcpy(r->data + (pos & r->mask), &rh, sizeof(rh));
}

static inline void write_skip_hdr(struct pyipc_ring *r, uint64_t pos, uint64_t size)
{
	struct rec_hdr rh = { .len = (uint32_t)size, .check = ~(uint32_t)size ^ REC_SKIP };

	memcpy(r->data + (pos & r->mask), &rh, sizeof(rh));
}

/* free <= take <= tail <= claim, 8-aligned, claim - free <= cap: the two
 * cursors a <= b are a plausible pair (as far as one pair can tell). */
static inline int cursors_ok(const struct pyipc_ring *r, uint64_t a, uint64_t b)
{
	return b - a <= r->cap && !((a | b) & 7);
}

/* The shutdown word as 0 (open), 1 (drain), 2 (immediate), or -EBADMSG. */
static inline int shutdown_state(const struct pyipc_ring *r)
{
	uint32_t s = atomic_load_explicit(&r->hdr->seg.shutdown, memory_order_acquire);

	if (likely(s == 0))
		return 0;
	if (s == SHUT_DRAIN)
		return 1;
	if (s == SHUT_IMMEDIATE)
		return 2;
	return -EBADMSG;
}

/* After a commit and unlock: pairs with the fence in sleep_on() so that
 * either the sleeper sees our cursor or we see its waiter bit. */
static inline void wake_other(struct side *s)
{
	atomic_thread_fence(memory_order_seq_cst);
	wake_sleepers(&s->wake_evt);
}

/* ring.c */
int ring_enter(struct pyipc_ring *r);
void ring_leave(struct pyipc_ring *r);
int ring_lock(struct pyipc_ring *r, struct side *s, int64_t deadline);
void ring_sync_epoch(struct pyipc_ring *r, int producer);
void ring_log(struct side *s, uint32_t op, uint32_t slot, uint64_t cursor, uint64_t count,
	      uint64_t bytes);
void ring_log_done(struct side *s);
int ring_sleep(struct pyipc_ring *r, int for_space, uint64_t need, int64_t deadline, int *spun);
int ring_pass_skips(struct pyipc_ring *r, int64_t deadline);
void ring_lease_gone(struct pyipc_ring *r);

/* ring_lease.c */
uint64_t ring_publish_tail(struct pyipc_ring *r);
uint64_t ring_publish_free(struct pyipc_ring *r);
int ring_reap_reserves(struct pyipc_ring *r);
int ring_reap_views(struct pyipc_ring *r);
int ring_dead_leases(struct pyipc_ring *r, struct lease *t);

/* ring_repair.c */
int ring_recover_prod(struct pyipc_ring *r);
int ring_recover_cons(struct pyipc_ring *r);

#endif
