// SPDX-License-Identifier: MIT
/*
 * ring_lease.c - zero-copy leases: a reservation lets a producer write a
 * message in place, a view lets a consumer read one in place.
 *
 * A reservation takes its record's space at `claim` like a put, but the
 * record is written as a skip record until the commit turns its header into
 * a message header; meanwhile it holds `tail` at its position, so messages
 * put after it become visible only after it (one order for every
 * consumer).  A view takes the message at `take` (no other consumer gets
 * it) but holds `free` at its position until released, so producers never
 * reuse memory that someone still reads.  Other consumers go on taking
 * later messages while a view is open; producers can use only the space
 * before the oldest open view.
 *
 * Open leases are listed in a table per side, each entry naming its
 * holder's owner id.  A holder that dies is found by whoever waits behind
 * it (ring.c, reap_in_the_way): its reservation stays a skip record, its
 * view's message is lost, and the space comes back.
 */
#include "owner.h"
#include "ring_internal.h"

/* Is t[i] a lease this handle holds at pos, as the table says? */
static int mine(struct pyipc_ring *r, struct lease *e, uint64_t pos)
{
	uint32_t owner = atomic_load_explicit(&e->owner, memory_order_relaxed);

	return owner == r->seg.owner && atomic_load_explicit(&e->pos, memory_order_relaxed) == pos &&
	       e->check == lease_check(pos, e->end, owner);
}

static int free_slot(struct lease *t)
{
	for (int i = 0; i < PYIPC_MAX_LEASES; i++)
		if (!atomic_load_explicit(&t[i].owner, memory_order_relaxed))
			return i;
	return -1;
}

static void fill(struct pyipc_ring *r, struct lease *e, uint64_t pos, uint64_t end)
{
	atomic_store_explicit(&e->pos, pos, memory_order_relaxed);
	e->end = end;
	e->check = lease_check(pos, end, r->seg.owner);
	/* owner last: a slot with an owner is a whole entry. */
	atomic_store_explicit(&e->owner, r->seg.owner, memory_order_release);
}

/* Lock-free look: does table t hold a lease whose holder is dead? */
int ring_dead_leases(struct pyipc_ring *r, struct lease *t)
{
	return dead_leases(&r->seg, t);
}

/* Recompute tail from the open reservations; the producers' lock is held. */
uint64_t ring_publish_tail(struct pyipc_ring *r)
{
	struct side *p = &r->hdr->prod;
	uint64_t tail = atomic_load_explicit(&p->cursor, memory_order_relaxed);
	uint64_t claim = atomic_load_explicit(&p->own, memory_order_relaxed);
	uint32_t n;

	tail = lowest_lease(r->hdr->reserves, tail, claim, &n);
	atomic_store_explicit(&p->leases, n, memory_order_relaxed);
	atomic_store_explicit(&p->cursor, tail, memory_order_release);
	return tail;
}

/* Recompute free from the open views; the consumers' lock is held. */
uint64_t ring_publish_free(struct pyipc_ring *r)
{
	struct side *c = &r->hdr->cons;
	uint64_t free = atomic_load_explicit(&c->cursor, memory_order_relaxed);
	uint64_t take = atomic_load_explicit(&c->own, memory_order_relaxed);
	uint32_t n;

	free = lowest_lease(r->hdr->views, free, take, &n);
	atomic_store_explicit(&c->leases, n, memory_order_relaxed);
	atomic_store_explicit(&c->cursor, free, memory_order_release);
	return free;
}

int ring_reap_reserves(struct pyipc_ring *r)
{
	struct lease *t = r->hdr->reserves;
	int n = 0;

	for (int i = 0; i < PYIPC_MAX_LEASES; i++) {
		uint32_t owner = atomic_load_explicit(&t[i].owner, memory_order_relaxed);
		uint64_t pos = atomic_load_explicit(&t[i].pos, memory_order_relaxed);

		if (!owner || owner_liveness(r->seg.fd, r->seg.owner, owner) != OWNER_DEAD)
			continue;
		/* Its holder may have died inside commit, after the message
		 * header was written: make it a skip record again. */
		if (t[i].check == lease_check(pos, t[i].end, owner) && t[i].end - pos <= r->cap &&
		    t[i].end - pos >= REC_HDR && !((pos | t[i].end) & 7))
			write_skip_hdr(r, pos, t[i].end - pos);
		atomic_store_explicit(&t[i].owner, 0, memory_order_release);
		n++;
	}
	if (n)
		ring_publish_tail(r);
	return n;
}

int ring_reap_views(struct pyipc_ring *r)
{
	struct lease *t = r->hdr->views;
	int n = 0;

	for (int i = 0; i < PYIPC_MAX_LEASES; i++) {
		uint32_t owner = atomic_load_explicit(&t[i].owner, memory_order_relaxed);

		if (owner && owner_liveness(r->seg.fd, r->seg.owner, owner) == OWNER_DEAD) {
			atomic_store_explicit(&t[i].owner, 0, memory_order_release);
			n++;
		}
	}
	if (n)
		ring_publish_free(r);
	return n;
}

/*
 * Place a reservation of len bytes at claim if it fits now; the producers'
 * lock is held.  1 placed, 0 no room yet, -ENOSPC the table is full,
 * -EBADMSG.
 */
static int place(struct pyipc_ring *r, uint64_t len, uint32_t *slot, uint64_t *pos)
{
	struct ring_hdr *h = r->hdr;
	struct side *p = &h->prod;
	uint64_t claim = atomic_load_explicit(&p->own, memory_order_relaxed);
	uint64_t size = rec_size(len), free = r->cached_free;
	uint32_t leases;
	int i;

	if (unlikely(atomic_load_explicit(&p->leases, memory_order_relaxed)))
		ring_publish_tail(r); /* the count is a cache: see append() */
	leases = atomic_load_explicit(&p->leases, memory_order_relaxed);

	if (!cursors_ok(r, free, claim) || claim + size - free > r->cap) {
		free = atomic_load_explicit(&h->cons.cursor, memory_order_acquire);
		r->cached_free = free;
		if (!cursors_ok(r, free, claim))
			return -EBADMSG;
		if (claim + size - free > r->cap)
			return 0;
	}
	if (r->max_messages && atomic_load_explicit(&p->count, memory_order_relaxed) + leases -
					atomic_load_explicit(&h->cons.count, memory_order_acquire) >=
				       r->max_messages)
		return 0;
	i = free_slot(h->reserves);
	if (i < 0)
		return -ENOSPC;
	/* Until its commit, the record reads as a skip record. */
	write_skip_hdr(r, claim, size);
	fill(r, &h->reserves[i], claim, claim + size);
	ring_log(p, OP_RESERVE, (uint32_t)i, claim + size, atomic_load(&p->count),
		 atomic_load(&p->bytes));
	atomic_store_explicit(&p->own, claim + size, memory_order_release); /* commit point */
	atomic_store_explicit(&p->leases, leases + 1, memory_order_relaxed);
	ring_log_done(p);
	/* tail stays: at the oldest open reservation, which is at or before us. */
	*slot = (uint32_t)i;
	*pos = claim;
	return 1;
}

int pyipc_ring_reserve(pyipc_ring *r, uint64_t len, int64_t deadline, struct pyipc_lease *out)
{
	struct ring_hdr *h;
	int spun = 0, rc = ring_enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	for (;;) {
		int shut = shutdown_state(r);

		if (shut) {
			rc = shut < 0 ? shut : -ESHUTDOWN;
			break;
		}
		if (len > r->max_msg) {
			rc = -EMSGSIZE;
			break;
		}
		rc = ring_lock(r, &h->prod, deadline);
		if (rc)
			break;
		ring_sync_epoch(r, 1);
		rc = place(r, len, &out->slot, &out->pos);
		lock_give(&h->prod.lock);
		if (rc == 1) {
			atomic_fetch_add(&r->leases, 1);
			out->ptr = (char *)r->data + (out->pos & r->mask) + REC_HDR;
			out->len = len;
			rc = 0;
			break;
		}
		if (rc < 0)
			break;
		rc = ring_sleep(r, 1, rec_size(len), deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
	}
	ring_leave(r);
	return rc;
}

/* Leases end even on a handle being closed: it stays mapped for them.  The
 * lock wait is bounded (a slice), so -EINTR comes back to Python, which
 * runs its signal handlers and calls again. */
int pyipc_ring_commit(pyipc_ring *r, const struct pyipc_lease *l, int publish)
{
	struct side *p = &r->hdr->prod;
	uint32_t slot = l->slot;
	uint64_t pos = l->pos, len = l->len, before, after;
	struct lease *e;
	int rc;

	if (slot >= PYIPC_MAX_LEASES || atomic_load(&r->unmapped))
		return -ESTALE;
	rc = ring_lock(r, p, FOREVER);
	if (rc)
		return rc;
	e = &r->hdr->reserves[slot];
	if (!mine(r, e, pos) || e->end != pos + rec_size(len)) {
		lock_give(&p->lock);
		ring_lease_gone(r); /* repair() dropped it: it is gone all the same */
		return -ESTALE;
	}
	ring_log(p, OP_COMMIT, slot, pos, atomic_load(&p->count) + (publish ? 1 : 0),
		 atomic_load(&p->bytes) + (publish ? len : 0));
	if (publish)
		write_record_hdr(r, pos, len);
	atomic_store_explicit(&e->owner, 0, memory_order_release); /* commit point */
	before = atomic_load_explicit(&p->cursor, memory_order_relaxed);
	after = ring_publish_tail(r);
	atomic_store_explicit(&p->count, p->log.count, memory_order_relaxed);
	atomic_store_explicit(&p->bytes, p->log.bytes, memory_order_relaxed);
	ring_log_done(p);
	lock_give(&p->lock);
	if (after != before)
		wake_other(p);
	/* An aborted reservation at the consumers' end is freed now, whether
	 * or not a consumer comes by. */
	if (!publish)
		ring_pass_skips(r, now_ns() + SLICE_NS);
	ring_lease_gone(r);
	return 0;
}

/*
 * Take the oldest message as a view if there is one; the consumers' lock is
 * held.  1 taken (its length in *len), 0 none, -ENOSPC the table is full,
 * -EBADMSG.  *moved says whether `take` moved.
 */
static int take_view(struct pyipc_ring *r, uint32_t *slot, uint64_t *pos, uint64_t *len, int *moved)
{
	struct ring_hdr *h = r->hdr;
	struct side *c = &h->cons;
	uint64_t take = atomic_load_explicit(&c->own, memory_order_relaxed);
	uint64_t tail = r->cached_tail, at = take;
	int64_t size = 0;
	int fresh = 0, i, rc = 0;

	*moved = 0;
	if (!cursors_ok(r, take, tail)) {
		fresh = 1;
		tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
		r->cached_tail = tail;
		if (!cursors_ok(r, take, tail))
			return -EBADMSG;
	}
	for (;;) {
		if (at == tail) {
			if (fresh)
				break;
			fresh = 1;
			tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
			r->cached_tail = tail;
			if (!cursors_ok(r, take, tail)) {
				rc = -EBADMSG;
				break;
			}
			if (at == tail)
				break;
		}
		size = parse_record(r, at, tail - at, len);
		if (size < 0) {
			rc = -EBADMSG;
			break;
		}
		if (*len != SKIP_LEN) {
			rc = 1;
			break;
		}
		at += (uint64_t)size;
	}
	if (rc == 1) {
		i = free_slot(h->views);
		if (i < 0) {
			rc = -ENOSPC;
		} else {
			fill(r, &h->views[i], at, at + (uint64_t)size);
			ring_log(c, OP_VIEW, (uint32_t)i, at + (uint64_t)size,
				 atomic_load(&c->count) + 1, atomic_load(&c->bytes) + *len);
			atomic_store_explicit(&c->own, at + (uint64_t)size, memory_order_release);
			atomic_store_explicit(&c->count, c->log.count, memory_order_relaxed);
			atomic_store_explicit(&c->bytes, c->log.bytes, memory_order_relaxed);
			ring_publish_free(r); /* skip records before us may be freed */
			ring_log_done(c);
			*moved = 1;
			*slot = (uint32_t)i;
			*pos = at;
			return 1;
		}
	}
	if (at != take) {
		/* Only skip records: pass them. */
		ring_log(c, OP_TAKE, 0, at, atomic_load(&c->count), atomic_load(&c->bytes));
		atomic_store_explicit(&c->own, at, memory_order_release);
		ring_publish_free(r);
		ring_log_done(c);
		*moved = 1;
	}
	return rc;
}

int64_t pyipc_ring_view(pyipc_ring *r, int64_t deadline, struct pyipc_lease *out)
{
	struct ring_hdr *h;
	int64_t rc = ring_enter(r);
	int spun = 0;

	if (rc)
		return rc;
	h = r->hdr;
	for (;;) {
		int shut = shutdown_state(r), moved;
		uint64_t len = 0;

		if (shut < 0 || shut == 2) {
			rc = shut < 0 ? shut : -ESHUTDOWN;
			break;
		}
		rc = ring_lock(r, &h->cons, deadline);
		if (rc)
			break;
		ring_sync_epoch(r, 0);
		rc = take_view(r, &out->slot, &out->pos, &len, &moved);
		lock_give(&h->cons.lock);
		if (moved)
			wake_other(&h->cons);
		if (rc == 1) {
			atomic_fetch_add(&r->leases, 1);
			out->ptr = (char *)r->data + (out->pos & r->mask) + REC_HDR;
			out->len = len;
			rc = (int64_t)len;
			break;
		}
		if (rc < 0)
			break;
		if (shut) {
			rc = -ESHUTDOWN;
			break;
		}
		rc = ring_sleep(r, 0, 0, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
	}
	ring_leave(r);
	return rc;
}

int pyipc_ring_release(pyipc_ring *r, const struct pyipc_lease *l)
{
	struct side *c = &r->hdr->cons;
	uint32_t slot = l->slot;
	uint64_t pos = l->pos, before, after;
	struct lease *e;
	int rc;

	if (slot >= PYIPC_MAX_LEASES || atomic_load(&r->unmapped))
		return -ESTALE;
	rc = ring_lock(r, c, FOREVER);
	if (rc)
		return rc;
	e = &r->hdr->views[slot];
	if (!mine(r, e, pos)) {
		lock_give(&c->lock);
		ring_lease_gone(r); /* repair() dropped it: it is gone all the same */
		return -ESTALE;
	}
	atomic_store_explicit(&e->owner, 0, memory_order_release);
	before = atomic_load_explicit(&c->cursor, memory_order_relaxed);
	after = ring_publish_free(r);
	lock_give(&c->lock);
	if (after != before)
		wake_other(c);
	ring_lease_gone(r);
	return 0;
}
