// SPDX-License-Identifier: MIT
/*
 * ring_repair.c - putting a ring right: after a lock holder died inside it
 * (always, as part of taking the lock over), and after a process scribbled
 * on it (only when asked, by repair()).  check() validates without
 * changing anything.
 *
 * Takeover repair is small because every operation has one commit point,
 * a single store, and writes its redo log before it (ring.c): whatever the
 * dead holder did before its commit point is invisible and simply
 * forgotten; what it did after is finished here.  Lease tables are made
 * consistent by dropping entries that cannot be right, and the published
 * cursors are recomputed from what remains.
 */
#include "ring_internal.h"

/* Did the operation in s's redo log reach its commit point? */
static int reached(struct pyipc_ring *r, struct side *s, struct lease *t)
{
	uint32_t slot = s->log.slot;

	switch (s->log.op) {
	case OP_PUT:
	case OP_RESERVE:
	case OP_TAKE:
	case OP_VIEW:
		return atomic_load(&s->own) == s->log.cursor;
	case OP_COMMIT:
		return slot >= PYIPC_MAX_LEASES || !atomic_load(&t[slot].owner) ||
		       atomic_load(&t[slot].pos) != s->log.cursor;
	}
	return 0;
}

/* A dead holder's operation: finish its counters if it committed. */
static void finish_log(struct pyipc_ring *r, struct side *s, struct lease *t)
{
	uint64_t seq = atomic_load(&s->log.seq);

	if (seq != atomic_load(&s->done) + 1)
		return; /* no operation was open */
	if (reached(r, s, t)) {
		atomic_store(&s->count, s->log.count);
		atomic_store(&s->bytes, s->log.bytes);
	}
	atomic_store(&s->done, seq);
}

/* Recompute a side's published cursor from its open leases. */
static void republish(struct side *s, struct lease *t, uint64_t floor, uint64_t none)
{
	uint32_t n;
	uint64_t c = lowest_lease(t, floor, none, &n);

	atomic_store(&s->leases, n);
	atomic_store_explicit(&s->cursor, c, memory_order_release);
}

int ring_recover_prod(struct pyipc_ring *r)
{
	struct ring_hdr *h = r->hdr;
	struct side *p = &h->prod;
	uint64_t claim = atomic_load(&p->own), tail = atomic_load(&p->cursor);
	uint64_t free = atomic_load(&h->cons.cursor);

	if (!cursors_ok(r, free, claim) || !cursors_ok(r, tail, claim))
		return -EBADMSG; /* scribbled: only repair() can tell what to keep */
	finish_log(r, p, h->reserves);
	keep_leases(h->reserves, r->cap, tail, claim);
	republish(p, h->reserves, tail, claim);
	return 0;
}

int ring_recover_cons(struct pyipc_ring *r)
{
	struct ring_hdr *h = r->hdr;
	struct side *c = &h->cons;
	uint64_t take = atomic_load(&c->own), free = atomic_load(&c->cursor);

	if (!cursors_ok(r, free, take))
		return -EBADMSG;
	finish_log(r, c, h->views);
	keep_leases(h->views, r->cap, free, take);
	republish(c, h->views, free, take);
	return 0;
}

/* Does the shared copy of the geometry still say what we read at attach? */
static int geometry_ok(const struct pyipc_ring *r)
{
	const struct seg_hdr *s = &r->hdr->seg;

	return s->magic == SEG_MAGIC && s->version == PYIPC_LAYOUT_VERSION &&
	       s->kind == PYIPC_KIND_RING && s->hdr_size == r->seg.hdr_size && s->capacity == r->cap &&
	       s->max_msg == r->max_msg && s->max_messages == r->max_messages;
}

/* Walk the records in [from, to): how many messages, or -EBADMSG; *end is
 * where the walk stopped (the first bad record, or `to`). */
static int64_t walk(struct pyipc_ring *r, uint64_t from, uint64_t to, uint64_t *end)
{
	int64_t n = 0, size;
	uint64_t len;

	while (from != to) {
		size = parse_record(r, from, to - from, &len);
		if (size < 0)
			break;
		if (len != SKIP_LEN)
			n++;
		from += (uint64_t)size;
	}
	*end = from;
	return from == to ? n : -EBADMSG;
}

int64_t pyipc_ring_check(pyipc_ring *r)
{
	struct ring_hdr *h;
	uint64_t take, tail, free, end;
	int64_t rc = ring_enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	if (shutdown_state(r) < 0 || !geometry_ok(r)) {
		rc = -EBADMSG;
		goto out;
	}
	/* Bounded: a lock scribbled into a held state must not hang a check. */
	rc = ring_lock(r, &h->cons, now_ns() + SLICE_NS);
	if (rc)
		goto out;
	take = atomic_load(&h->cons.own);
	free = atomic_load(&h->cons.cursor);
	tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
	if (!cursors_ok(r, free, take) || !cursors_ok(r, take, tail) || !cursors_ok(r, free, tail))
		rc = -EBADMSG;
	else
		rc = walk(r, take, tail, &end);
	for (int i = 0; rc >= 0 && i < PYIPC_MAX_LEASES; i++) {
		struct lease *e = &h->views[i];
		uint32_t owner = atomic_load(&e->owner);
		uint64_t pos = atomic_load(&e->pos);

		if (owner && (e->check != lease_check(pos, e->end, owner) || pos - free > take - free ||
			      e->end - free > take - free))
			rc = -EBADMSG;
	}
	lock_give(&h->cons.lock);
out:
	ring_leave(r);
	return rc;
}

#define REPAIR_WAIT_NS 1000000000ll /* for a lock a live holder keeps */

/* Take a lock for repair(): a dead holder's side is rebuilt below anyway.
 * A holder alive (or beyond checking) for a second makes it -EBUSY: repair
 * never takes a lock from a holder that may live, and never hangs. */
static int repair_lock(struct pyipc_ring *r, struct side *s)
{
	int64_t deadline = now_ns() + REPAIR_WAIT_NS;
	int rc;

	do
		rc = lock_take(&s->lock, &r->seg, deadline);
	while (rc == -EINTR && now_ns() < deadline);
	if (rc == LOCK_RECOVERED) {
		atomic_fetch_add(&r->hdr->seg.recoveries, 1);
		rc = 0;
	}
	return rc == -ETIMEDOUT || rc == -EINTR ? -EBUSY : rc;
}

int64_t pyipc_ring_repair(pyipc_ring *r)
{
	struct ring_hdr *h;
	struct side *p, *c;
	uint64_t claim, tail, take, free, limit, end, queued;
	int64_t kept, dropped = 0;
	int64_t rc = ring_enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	p = &h->prod;
	c = &h->cons;
	/* Always producers first, then consumers: the only place that holds
	 * both, so no other order can deadlock against it. */
	rc = repair_lock(r, p);
	if (rc)
		goto out;
	rc = repair_lock(r, c);
	if (rc) {
		lock_give(&p->lock);
		goto out;
	}
	/* The shared geometry, for handles that attach from now on. */
	h->seg.version = PYIPC_LAYOUT_VERSION;
	h->seg.kind = PYIPC_KIND_RING;
	h->seg.hdr_size = r->seg.hdr_size;
	h->seg.capacity = r->cap;
	h->seg.max_msg = r->max_msg;
	h->seg.max_messages = r->max_messages;
	atomic_store((_Atomic uint64_t *)&h->seg.magic, SEG_MAGIC);
	if (shutdown_state(r) < 0)
		atomic_store(&h->seg.shutdown, 0);

	/*
	 * The consumers' `take` is the anchor: records are read from there.
	 * The producers' `claim` (or `tail`) bounds the walk when it is a
	 * plausible distance ahead; walking further would resurrect records
	 * of an earlier lap.
	 */
	claim = atomic_load(&p->own);
	tail = atomic_load(&p->cursor);
	take = (atomic_load(&c->own) + 7) & ~7ull;
	free = atomic_load(&c->cursor);
	if (!cursors_ok(r, free, take))
		free = take;
	limit = cursors_ok(r, take, claim) && cursors_ok(r, free, claim) ? claim
		: cursors_ok(r, take, tail) && cursors_ok(r, free, tail) ? tail
									 : take;
	kept = walk(r, take, limit, &end);
	if (kept < 0) {
		/* Count the good ones before the first bad record. */
		kept = walk(r, take, end, &end);
	}
	queued = atomic_load(&p->count) - atomic_load(&c->count);
	if (queued <= r->cap / REC_HDR && queued > (uint64_t)kept)
		dropped = (int64_t)(queued - (uint64_t)kept);
	else if (queued > r->cap / REC_HDR && end != limit)
		dropped = 1; /* at least the damaged one */

	atomic_store(&c->own, take);
	atomic_store(&c->cursor, free);
	keep_leases(h->views, r->cap, free, take);
	republish(c, h->views, free, take);
	atomic_store(&p->own, end);
	atomic_store(&p->cursor, take);
	keep_leases(h->reserves, r->cap, take, end);
	republish(p, h->reserves, take, end);
	atomic_store(&p->count, atomic_load(&c->count) + (uint64_t)kept);
	atomic_store(&p->done, atomic_load(&p->log.seq));
	atomic_store(&c->done, atomic_load(&c->log.seq));
	/* Every handle's cached cursors may now be ahead of the truth. */
	atomic_fetch_add(&h->seg.epoch, 1);
	lock_give(&c->lock);
	lock_give(&p->lock);
	atomic_fetch_add(&h->prod.wake_evt, 2);
	atomic_fetch_add(&h->cons.wake_evt, 2);
	futex_wake_all(&h->prod.wake_evt);
	futex_wake_all(&h->cons.wake_evt);
	rc = dropped;
out:
	ring_leave(r);
	return rc;
}
