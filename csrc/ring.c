// SPDX-License-Identifier: MIT
/*
 * ring.c - a ring of variable-length messages in a shared segment: the
 * handle, records and cursors, put and get, and waiting.
 *
 * Design in one paragraph.  Producers and consumers are two classes, each
 * with its own lock (lock.h) and its own cache lines (a "two-lock queue"):
 * producers serialise among themselves and own claim/tail, consumers
 * serialise among themselves and own take/free (layout.h), so a producer
 * copies in while a consumer copies out.  A record is published by one
 * store of a cursor after its bytes are written, so a process that dies
 * mid-copy leaves nothing half-visible; a one-entry redo log per side lets
 * whoever takes over a dead holder's lock finish its counter updates
 * (ring_repair.c).  Sleepers wait on futex words ("event counts") with a
 * waiter bit, so a wake costs a system call only when someone sleeps, and a
 * dead sleeper leaves at most one spurious wake behind.  Reservations and
 * views, which let a message be written or read in place, are in
 * ring_lease.c.
 *
 * The segment is untrusted: geometry is validated at attach and kept in the
 * process-local handle; every cursor and length read from the segment is
 * checked before it is used to address memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "owner.h"
#include "ring_internal.h"

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

/* ---- handle lifetime: calls in flight and leases vs close() ----------- */

int ring_enter(struct pyipc_ring *r)
{
	atomic_fetch_add(&r->users, 1);
	/* seq_cst on both sides: either close() sees us, or we see close(). */
	if (unlikely(atomic_load(&r->closing))) {
		atomic_fetch_sub(&r->users, 1);
		return -EBADF;
	}
	return 0;
}

void ring_leave(struct pyipc_ring *r)
{
	atomic_fetch_sub(&r->users, 1);
}

static void unmap_once(struct pyipc_ring *r)
{
	if (atomic_exchange(&r->unmapped, 1))
		return;
	forksafe_remove(&r->fork);
	seg_detach(&r->seg);
}

/* A lease taken through this handle ended: the last one after close()
 * unmaps (a lease keeps the memory it points into mapped). */
void ring_lease_gone(struct pyipc_ring *r)
{
	if (atomic_fetch_sub(&r->leases, 1) == 1 && atomic_load(&r->closing))
		unmap_once(r);
}

/* Does a lock word or a lease of the ring name owner id `id`? */
static int id_named(struct ring_hdr *h, uint32_t id)
{
	if ((atomic_load(&h->prod.lock) & ~LOCK_WAITERS) == id ||
	    (atomic_load(&h->cons.lock) & ~LOCK_WAITERS) == id)
		return 1;
	for (int i = 0; i < PYIPC_MAX_LEASES; i++)
		if (atomic_load(&h->reserves[i].owner) == id || atomic_load(&h->views[i].owner) == id)
			return 1;
	return 0;
}

/*
 * A handle must not hold an id that a dead holder's lock or lease still
 * names: that holder would look alive for as long as the handle lives, and
 * its lock would never be taken over.  Ids come from a counter in the
 * segment, which may have wrapped or been scribbled, so check, and claim
 * another while the id is named (at most two locks and the leases can be).
 * Async-signal-safe, for the forked child.
 */
static int claim_unnamed_id(struct pyipc_ring *r)
{
	for (int i = 0; i < 2 * PYIPC_MAX_LEASES + 3 && id_named(r->hdr, r->seg.owner); i++) {
		int rc = seg_claim_again(&r->seg);

		if (rc)
			return rc;
	}
	return 0;
}

/*
 * In a forked child: the threads that were inside calls on this handle did
 * not come along, and neither may the parent's file description (its lock
 * vouches for the parent).  Leases open at the fork are the parent's.
 */
static void ring_after_fork(struct fork_hook *hook)
{
	struct pyipc_ring *r = container_of(hook, struct pyipc_ring, fork);

	atomic_store(&r->users, 0);
	atomic_store(&r->leases, 0);
	if (!atomic_load(&r->unmapped)) {
		seg_after_fork(&r->seg);
		if (claim_unnamed_id(r))
			r->seg.owner = OWNER_UNKNOWN;
	}
}

static int handle_new(struct pyipc_ring **out)
{
	struct pyipc_ring *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->seg.fd = -1;
	r->seg.share_fd = -1;
	r->fork.in_child = ring_after_fork;
	*out = r;
	return 0;
}

/* Copy the geometry into the handle, make sure of its owner id, and
 * register for fork. */
static int handle_map(struct pyipc_ring *r)
{
	struct ring_hdr *h = (struct ring_hdr *)r->seg.hdr;
	int rc;

	r->hdr = h;
	r->data = r->seg.data;
	r->cap = r->seg.cap;
	r->mask = r->cap - 1;
	r->max_msg = r->cap - REC_HDR;
	r->cached_free = atomic_load(&h->cons.cursor);
	r->cached_tail = atomic_load(&h->prod.cursor);
	r->prod_epoch = r->cons_epoch = atomic_load(&h->seg.epoch);
	rc = claim_unnamed_id(r);
	return rc ? rc : forksafe_add(&r->fork);
}

int pyipc_ring_create(const char *where, int flags, uint64_t capacity, uint64_t max_messages,
		      uint32_t mode, pyipc_ring **out)
{
	struct pyipc_ring *r;
	int rc = handle_new(&r);

	if (rc)
		return rc;
	rc = seg_create(&r->seg, where, flags, capacity, sizeof(struct ring_hdr), mode);
	if (rc)
		goto err_free;
	r->max_messages = max_messages;
	r->seg.hdr->max_msg = r->seg.cap - REC_HDR;
	r->seg.hdr->max_messages = max_messages;
	rc = handle_map(r);
	if (rc)
		goto err_unlink;
	seg_publish(&r->seg, PYIPC_KIND_RING);
	*out = r;
	return 0;

err_unlink:
	pyipc_seg_unlink(where, flags);
	seg_detach(&r->seg);
err_free:
	free(r);
	return rc;
}

int pyipc_ring_create_anon(uint64_t capacity, uint64_t max_messages, pyipc_ring **out)
{
	struct pyipc_ring *r;
	int rc = handle_new(&r);

	if (rc)
		return rc;
	rc = seg_create_anon(&r->seg, capacity, sizeof(struct ring_hdr));
	if (rc)
		goto err_free;
	r->max_messages = max_messages;
	r->seg.hdr->max_msg = r->seg.cap - REC_HDR;
	r->seg.hdr->max_messages = max_messages;
	rc = handle_map(r);
	if (rc) {
		seg_detach(&r->seg);
		goto err_free;
	}
	seg_publish(&r->seg, PYIPC_KIND_RING);
	*out = r;
	return 0;

err_free:
	free(r);
	return rc;
}

/* Validate the ring-specific geometry of a just-attached segment. */
static int ring_geometry(struct pyipc_ring *r, int flags)
{
	r->max_messages = r->seg.hdr->max_messages;
	if (flags & PYIPC_SEG_REPAIR) {
		if (r->max_messages > r->seg.cap / REC_HDR)
			r->max_messages = 0; /* damaged: repair() writes 0 back */
		return 0;
	}
	if (r->seg.hdr->max_msg != r->seg.cap - REC_HDR || r->max_messages > r->seg.cap / REC_HDR)
		return -EBADMSG;
	return 0;
}

int pyipc_ring_attach_fd(int fd, pyipc_ring **out)
{
	struct pyipc_ring *r;
	int rc = handle_new(&r);

	if (rc)
		return rc;
	rc = seg_attach_fd(&r->seg, fd, PYIPC_KIND_RING, sizeof(struct ring_hdr));
	if (rc)
		goto err_free;
	rc = ring_geometry(r, 0);
	if (!rc)
		rc = handle_map(r);
	if (rc) {
		seg_detach(&r->seg);
		goto err_free;
	}
	*out = r;
	return 0;

err_free:
	free(r);
	return rc;
}

int pyipc_ring_share_fd(const pyipc_ring *r)
{
	if (atomic_load(&r->closing))
		return -EBADF;
	return r->seg.share_fd >= 0 ? r->seg.share_fd : -ENOTSUP;
}

int pyipc_ring_attach(const char *where, int flags, pyipc_ring **out)
{
	struct pyipc_ring *r;
	int rc = handle_new(&r);

	if (rc)
		return rc;
	rc = seg_attach(&r->seg, where, flags, PYIPC_KIND_RING, sizeof(struct ring_hdr));
	if (rc)
		goto err_free;
	/* The rest of the geometry; read once, like the shared part. */
	rc = ring_geometry(r, flags);
	if (rc)
		goto err_detach;
	rc = handle_map(r);
	if (rc)
		goto err_detach;
	*out = r;
	return 0;

err_detach:
	seg_detach(&r->seg);
err_free:
	free(r);
	return rc;
}

int pyipc_ring_close(pyipc_ring *r)
{
	if (atomic_exchange(&r->closing, 1))
		return 0;
	/* Let calls in other threads notice and leave, then unmap under none. */
	while (atomic_load(&r->users) > 0) {
		wake_sleepers(&r->hdr->prod.wake_evt);
		wake_sleepers(&r->hdr->cons.wake_evt);
		usleep(1000);
	}
	if (atomic_load(&r->leases) == 0)
		unmap_once(r);
	return 0;
}

void pyipc_ring_free(pyipc_ring *r)
{
	if (!r)
		return;
	pyipc_ring_close(r);
	unmap_once(r);
	free(r);
}

uint64_t pyipc_ring_capacity(const pyipc_ring *r)
{
	return r->cap;
}

uint64_t pyipc_ring_max_message_size(const pyipc_ring *r)
{
	return r->max_msg;
}

uint64_t pyipc_ring_max_messages(const pyipc_ring *r)
{
	return r->max_messages;
}

int pyipc_ring_flush(pyipc_ring *r)
{
	int rc = ring_enter(r);

	if (rc)
		return rc;
	if (msync(r->seg.hdr, r->seg.hdr_size + r->cap, MS_SYNC))
		rc = -errno;
	ring_leave(r);
	return rc;
}

void pyipc_copy(void *dst, const void *src, size_t n)
{
	if (n)
		memcpy(dst, src, n);
}

/* ---- locks, the redo log and repair epochs ----------------------------- */

/* Take a side's lock; if its holder died inside it, repair the side first. */
int ring_lock(struct pyipc_ring *r, struct side *s, int64_t deadline)
{
	int rc = lock_take(&s->lock, &r->seg, deadline);

	if (likely(rc == 0))
		return 0;
	if (rc != LOCK_RECOVERED)
		return rc;
	atomic_fetch_add(&r->hdr->seg.recoveries, 1);
	rc = s == &r->hdr->prod ? ring_recover_prod(r) : ring_recover_cons(r);
	if (rc)
		lock_give(&s->lock);
	return rc;
}

/* After repair() moved cursors, this handle's cached cursors are stale. */
void ring_sync_epoch(struct pyipc_ring *r, int producer)
{
	uint32_t e = atomic_load_explicit(&r->hdr->seg.epoch, memory_order_relaxed);

	if (producer) {
		if (unlikely(e != r->prod_epoch)) {
			r->prod_epoch = e;
			r->cached_free = atomic_load(&r->hdr->cons.cursor);
		}
	} else if (unlikely(e != r->cons_epoch)) {
		r->cons_epoch = e;
		r->cached_tail = atomic_load(&r->hdr->prod.cursor);
	}
}

/* Open the redo log for one operation; its commit point comes after. */
void ring_log(struct side *s, uint32_t op, uint32_t slot, uint64_t cursor, uint64_t count,
	      uint64_t bytes)
{
	redo_open(&s->log, &s->done, op, slot, cursor, count, bytes);
}

void ring_log_done(struct side *s)
{
	redo_close(&s->log, &s->done);
}

/* ---- put -------------------------------------------------------------- */

/*
 * Append the records src[0..n) (lengths in lens) that fit now; the caller
 * holds the producers' lock.  Returns how many were appended, or -EMSGSIZE
 * / -EBADMSG if the first cannot be appended at all.  *ticket gets the end
 * of the last record: the message is consumed once `take` passes it.
 */
static int64_t append(struct pyipc_ring *r, const unsigned char *src, const uint64_t *lens,
		      size_t n, uint64_t *ticket)
{
	struct ring_hdr *h = r->hdr;
	struct side *p = &h->prod;
	uint64_t claim = atomic_load_explicit(&p->own, memory_order_relaxed);
	uint64_t free = r->cached_free, pos = claim, bytes = 0, taken = 0;
	uint64_t puts = atomic_load_explicit(&p->count, memory_order_relaxed);
	int fresh = 0, counted = 0;
	size_t i;

	if (unlikely(!cursors_ok(r, free, claim))) {
		fresh = 1;
		free = atomic_load_explicit(&h->cons.cursor, memory_order_acquire);
		r->cached_free = free;
		if (!cursors_ok(r, free, claim))
			return -EBADMSG;
	}
	for (i = 0; i < n; i++) {
		uint64_t len = lens[i], size = rec_size(len);

		if (len > r->max_msg) {
			if (i == 0)
				return -EMSGSIZE;
			break;
		}
		if (pos + size - free > r->cap) {
			/* Full by the cached free: read the consumers' real one. */
			if (fresh)
				break;
			fresh = 1;
			free = atomic_load_explicit(&h->cons.cursor, memory_order_acquire);
			r->cached_free = free;
			if (!cursors_ok(r, free, claim)) {
				if (i)
					break;
				return -EBADMSG;
			}
			if (pos + size - free > r->cap)
				break;
		}
		if (r->max_messages) {
			if (!counted) {
				taken = atomic_load_explicit(&h->cons.count, memory_order_acquire);
				counted = 1;
				if (p->leases) /* a cache: count it again (see below) */
					ring_publish_tail(r);
			}
			if (puts + i + p->leases - taken >= r->max_messages)
				break;
		}
		write_record_hdr(r, pos, len);
		if (len) /* src may be NULL for an empty message */
			memcpy(r->data + (pos & r->mask) + REC_HDR, src, len);
		src += len;
		bytes += len;
		pos += size;
	}
	if (i) {
		uint64_t total = atomic_load_explicit(&p->bytes, memory_order_relaxed) + bytes;

		ring_log(p, OP_PUT, 0, pos, puts + i, total);
		/* Release: the record bytes come before the cursors. */
		atomic_store_explicit(&p->own, pos, memory_order_release);
		/*
		 * Else the oldest open reservation holds tail.  The count of open
		 * reservations is only a cache of their table, so it is counted
		 * again (and tail republished) whenever it says there are any: a
		 * count written over never holds every later message back.
		 */
		if (!p->leases)
			atomic_store_explicit(&p->cursor, pos, memory_order_release);
		else
			ring_publish_tail(r);
		atomic_store_explicit(&p->count, puts + i, memory_order_relaxed);
		atomic_store_explicit(&p->bytes, total, memory_order_relaxed);
		ring_log_done(p);
		if (ticket)
			*ticket = pos;
	}
	return (int64_t)i;
}

/* put and put_many: append records, waiting for room as the deadline allows. */
static int put_records(pyipc_ring *r, const unsigned char *src, const uint64_t *lens, size_t n,
		       int64_t deadline, size_t *done, uint64_t *ticket)
{
	struct ring_hdr *h;
	int spun = 0, rc = ring_enter(r);

	*done = 0;
	if (rc)
		return rc;
	h = r->hdr;
	while (*done < n) {
		int shut = shutdown_state(r);
		int64_t k;

		if (unlikely(shut)) {
			rc = shut < 0 ? shut : -ESHUTDOWN;
			break;
		}
		if (lens[*done] > r->max_msg) {
			rc = -EMSGSIZE;
			break;
		}
		rc = ring_lock(r, &h->prod, deadline);
		if (rc)
			break;
		ring_sync_epoch(r, 1);
		k = append(r, src, lens + *done, n - *done, ticket);
		lock_give(&h->prod.lock);
		if (k < 0) {
			rc = (int)k;
			break;
		}
		if (k > 0) {
			wake_other(&h->prod);
			for (int64_t i = 0; i < k; i++)
				src += lens[*done + i];
			*done += (size_t)k;
			continue;
		}
		rc = ring_sleep(r, 1, rec_size(lens[*done]), deadline, &spun);
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

int pyipc_ring_put_many(pyipc_ring *r, const void *data, const uint64_t *lens, size_t n,
			int64_t deadline, size_t *done)
{
	return put_records(r, data, lens, n, deadline, done, NULL);
}

int pyipc_ring_put(pyipc_ring *r, const void *data, size_t len, int64_t deadline, uint64_t *ticket)
{
	uint64_t len64 = len;
	size_t done;

	return put_records(r, data, &len64, 1, deadline, &done, ticket);
}

/* ---- get -------------------------------------------------------------- */

/* Move `take` (and `free`, without open views) past what was taken. */
static void commit_take(struct pyipc_ring *r, uint64_t pos, uint64_t n, uint64_t bytes)
{
	struct side *c = &r->hdr->cons;
	uint64_t count = atomic_load_explicit(&c->count, memory_order_relaxed) + n;
	uint64_t total = atomic_load_explicit(&c->bytes, memory_order_relaxed) + bytes;

	ring_log(c, OP_TAKE, 0, pos, count, total);
	/* Release: our reads of the records come before the space is reused. */
	atomic_store_explicit(&c->own, pos, memory_order_release);
	if (!c->leases) /* else the oldest open view holds free (as in append()) */
		atomic_store_explicit(&c->cursor, pos, memory_order_release);
	else
		ring_publish_free(r);
	atomic_store_explicit(&c->count, count, memory_order_relaxed);
	atomic_store_explicit(&c->bytes, total, memory_order_relaxed);
	ring_log_done(c);
}

/*
 * Take up to max messages into buf (cap bytes), lengths into lens; the
 * caller holds the consumers' lock.  Skip records are passed over.  Returns
 * how many (0: none there), or -EMSGSIZE with *needed set when the first
 * does not fit, or -EBADMSG.  *moved says whether `take` moved.
 */
static int64_t take_records(struct pyipc_ring *r, unsigned char *buf, uint64_t cap, uint64_t *lens,
			    uint64_t max, uint64_t *needed, int *moved)
{
	struct ring_hdr *h = r->hdr;
	struct side *c = &h->cons;
	uint64_t take = atomic_load_explicit(&c->own, memory_order_relaxed);
	uint64_t tail = r->cached_tail, pos = take, off = 0, bytes = 0, n = 0;
	int64_t rc = 0;
	int fresh = 0;

	*moved = 0;
	if (unlikely(!cursors_ok(r, take, tail))) {
		fresh = 1;
		tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
		r->cached_tail = tail;
		if (!cursors_ok(r, take, tail))
			return -EBADMSG;
	}
	while (n < max) {
		uint64_t len;
		int64_t size;

		if (pos == tail) {
			/* Empty by the cached tail: read the producers' real one. */
			if (fresh)
				break;
			fresh = 1;
			tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
			r->cached_tail = tail;
			if (!cursors_ok(r, take, tail)) {
				rc = -EBADMSG;
				break;
			}
			if (pos == tail)
				break;
		}
		size = parse_record(r, pos, tail - pos, &len);
		if (unlikely(size < 0)) {
			rc = size; /* deliver the good ones; the next call reports it */
			break;
		}
		if (unlikely(len == SKIP_LEN)) {
			pos += (uint64_t)size;
			continue;
		}
		if (len > cap - off) {
			if (!n) {
				*needed = len;
				rc = -EMSGSIZE;
			}
			break;
		}
		if (len)
			memcpy(buf + off, r->data + (pos & r->mask) + REC_HDR, len);
		lens[n++] = len;
		off += len;
		bytes += len;
		pos += (uint64_t)size;
	}
	*moved = pos != take;
	if (*moved)
		commit_take(r, pos, n, bytes);
	return n ? (int64_t)n : rc;
}

int64_t pyipc_ring_get_many(pyipc_ring *r, void *buf, uint64_t cap, uint64_t *lens, uint64_t max,
			    int64_t deadline, uint64_t *needed)
{
	struct ring_hdr *h;
	int64_t rc = ring_enter(r);
	int spun = 0;

	if (rc)
		return rc;
	h = r->hdr;
	if (max == 0) {
		rc = -EINVAL;
		goto out;
	}
	for (;;) {
		int shut = shutdown_state(r), moved;

		if (unlikely(shut)) {
			/* An immediate shutdown discards what is queued. */
			if (shut < 0 || shut == 2) {
				rc = shut < 0 ? shut : -ESHUTDOWN;
				break;
			}
		}
		rc = ring_lock(r, &h->cons, deadline);
		if (rc)
			break;
		ring_sync_epoch(r, 0);
		rc = take_records(r, buf, cap, lens, max, needed, &moved);
		lock_give(&h->cons.lock);
		if (moved)
			wake_other(&h->cons);
		if (rc)
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
out:
	ring_leave(r);
	return rc;
}

int64_t pyipc_ring_get(pyipc_ring *r, void *buf, uint64_t cap, int64_t deadline, uint64_t *needed)
{
	uint64_t len;
	int64_t rc = pyipc_ring_get_many(r, buf, cap, &len, 1, deadline, needed);

	return rc == 1 ? (int64_t)len : rc;
}

/*
 * Pass the skip records at the consumers' end of the ring, so that the
 * space of an aborted or dead reservation goes back to the producers even
 * when no consumer comes by (one that does passes them anyway).  Called by
 * whoever made the skip record, holding no lock: producers take the
 * consumers' lock here, never both.  Returns 1 if space was freed.
 */
int ring_pass_skips(struct pyipc_ring *r, int64_t deadline)
{
	struct ring_hdr *h = r->hdr;
	struct side *c = &h->cons;
	uint64_t take, tail, pos, len;
	int64_t size;
	int rc;

	rc = ring_lock(r, c, deadline);
	if (rc)
		return rc;
	pos = take = atomic_load_explicit(&c->own, memory_order_relaxed);
	tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
	while (pos != tail && cursors_ok(r, take, tail)) {
		size = parse_record(r, pos, tail - pos, &len);
		if (size < 0 || len != SKIP_LEN)
			break;
		pos += (uint64_t)size;
	}
	if (pos != take)
		commit_take(r, pos, 0, 0);
	lock_give(&c->lock);
	if (pos == take)
		return 0;
	wake_other(c);
	return 1;
}

/* ---- waiting ---------------------------------------------------------- */

enum want { WANT_DATA, WANT_ROOM, WANT_CONSUMED };

static int has_data(struct pyipc_ring *r)
{
	struct ring_hdr *h = r->hdr;

	return atomic_load(&h->prod.cursor) != atomic_load(&h->cons.own);
}

static int has_room(struct pyipc_ring *r, uint64_t need)
{
	struct ring_hdr *h = r->hdr;
	uint64_t used = atomic_load(&h->prod.own) - atomic_load(&h->cons.cursor);

	if (used > r->cap)
		return 1; /* garbage: let the caller lock and report it */
	if (r->max_messages && atomic_load(&h->prod.count) + h->prod.leases -
				       atomic_load(&h->cons.count) >= r->max_messages)
		return 0;
	return r->cap - used >= need;
}

static int was_consumed(struct pyipc_ring *r, uint64_t ticket)
{
	return (int64_t)(atomic_load(&r->hdr->cons.own) - ticket) >= 0;
}

static int ready(struct pyipc_ring *r, enum want w, uint64_t need)
{
	if (w == WANT_DATA)
		return has_data(r);
	if (w == WANT_ROOM)
		return has_room(r, need);
	return was_consumed(r, need);
}

static int stop_waiting(struct pyipc_ring *r)
{
	return atomic_load(&r->hdr->seg.shutdown) ||
	       atomic_load_explicit(&r->closing, memory_order_relaxed);
}

/*
 * A lease may be what we wait for (an open reservation holds `tail` and
 * its space, an open view holds `free`).  If its holder died, end it now;
 * either way, poll for that every LEASE_CHECK_NS while leases are open,
 * since a dead holder wakes nobody.  Looks at the views (views 1) or the
 * reservations (0).  Returns 1 if something was reaped, 0 if not, and sets
 * *poll; or a negative error from taking the lock.
 */
static int reap_in_the_way(struct pyipc_ring *r, int views, int64_t deadline, int *poll)
{
	struct ring_hdr *h = r->hdr;
	struct side *s = views ? &h->cons : &h->prod;
	struct lease *t = views ? h->views : h->reserves;
	int rc, n;

	if (!atomic_load_explicit(&s->leases, memory_order_relaxed))
		return 0;
	*poll = 1;
	if (!ring_dead_leases(r, t))
		return 0;
	rc = ring_lock(r, s, deadline);
	if (rc)
		return rc;
	n = views ? ring_reap_views(r) : ring_reap_reserves(r);
	lock_give(&s->lock);
	if (n > 0) {
		wake_other(s);
		if (!views)
			ring_pass_skips(r, deadline); /* they are skip records now */
	}
	return n > 0;
}

/* Consumers wait behind reservations; producers behind views, and behind
 * reservations for their space: reap_in_the_way() for what ``w`` waits
 * behind.  1 reaped, 0 not, or a negative error. */
static int reap_leases_in_the_way(struct pyipc_ring *r, enum want w, int64_t deadline, int *poll)
{
	int rc;

	if (w == WANT_CONSUMED)
		return 0;
	rc = reap_in_the_way(r, 0, deadline, poll);
	if (!rc && w == WANT_ROOM)
		rc = reap_in_the_way(r, 1, deadline, poll);
	return rc;
}

/*
 * Wait, without holding any lock, until ready(), shutdown, close, the
 * deadline or the end of this call's slice.  Producers (room, consumed)
 * sleep on the consumers' event count, consumers on the producers'.
 * Returns 0 to retry, or -ETIMEDOUT / -EINTR / -EAGAIN (NOWAIT).
 *
 * First spin for a little while: a peer on another CPU usually answers in a
 * few microseconds, far less than the ~30 us a cross-CPU wake-up costs.
 */
static int sleep_until_ready(struct pyipc_ring *r, enum want w, uint64_t need, int64_t deadline,
			     int *spun)
{
	struct ring_hdr *h = r->hdr;
	_Atomic uint32_t *evt = w == WANT_DATA ? &h->prod.wake_evt : &h->cons.wake_evt;
	_Atomic uint64_t *waits = w == WANT_DATA ? &h->cons.waits : &h->prod.waits;
	int64_t start, until, wake_at;
	int rc, poll = 0;
	uint32_t v;


	rc = slice_begin(deadline, &until);
	if (rc == -EAGAIN) {
		/* Non-blocking: no sleep, but a dead holder's lease in the way
		 * ends now, as a dead holder's lock is taken over now.  Else a
		 * caller that only ever polls would wait behind it for good. */
		rc = reap_leases_in_the_way(r, w, deadline, &poll);
		return rc > 0 ? 0 : rc < 0 ? rc : -EAGAIN;
	}
	if (rc)
		return rc;
	start = now_ns();
	if (!*spun) {
		*spun = 1;
		for (int i = 0;; i++) {
			if (ready(r, w, need) || stop_waiting(r))
				return 0;
			cpu_relax();
			if ((i & 63) == 63 && now_ns() - start > SPIN_NS)
				break;
		}
	}
	rc = reap_leases_in_the_way(r, w, deadline, &poll);
	if (rc)
		return rc < 0 ? rc : 0;
	v = atomic_fetch_or(evt, 1u) | 1u; /* announce a sleeper */
	/* Pairs with wake_other(): see the comment there. */
	atomic_thread_fence(memory_order_seq_cst);
	if (ready(r, w, need) || stop_waiting(r))
		return 0;
	start = now_ns();
	if (start >= until)
		return slice_end(deadline, until);
	atomic_fetch_add_explicit(waits, 1, memory_order_relaxed);
	wake_at = poll && start + LEASE_CHECK_NS < until ? start + LEASE_CHECK_NS : until;
	rc = futex_wait_until(evt, v, wake_at);
	if (rc == -ETIMEDOUT)
		return wake_at < until ? 0 : slice_end(deadline, until);
	return rc; /* 0: woken or the count moved; -EINTR: a signal */
}

int ring_sleep(struct pyipc_ring *r, int for_space, uint64_t need, int64_t deadline, int *spun)
{
	return sleep_until_ready(r, for_space ? WANT_ROOM : WANT_DATA, need, deadline, spun);
}

int pyipc_ring_wait_consumed(pyipc_ring *r, uint64_t ticket, int64_t deadline)
{
	int spun = 0, rc = ring_enter(r);

	if (rc)
		return rc;
	for (;;) {
		if (was_consumed(r, ticket)) {
			rc = 0;
			break;
		}
		if (atomic_load(&r->hdr->seg.shutdown)) {
			rc = -ESHUTDOWN;
			break;
		}
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
		rc = sleep_until_ready(r, WANT_CONSUMED, ticket, deadline, &spun);
		if (rc)
			break;
	}
	ring_leave(r);
	return rc;
}

int pyipc_ring_wait(pyipc_ring *r, int for_space, uint64_t need, int64_t deadline)
{
	enum want w = for_space ? WANT_ROOM : WANT_DATA;
	int spun = 0, rc = ring_enter(r);

	if (rc)
		return rc;
	need = rec_size(need);
	for (;;) {
		if (ready(r, w, need) || stop_waiting(r)) {
			rc = 0;
			break;
		}
		rc = sleep_until_ready(r, w, need, deadline, &spun);
		if (rc)
			break;
	}
	ring_leave(r);
	return rc;
}

int pyipc_ring_arm(pyipc_ring *r, int for_space, uint64_t need, uint32_t **word, uint32_t *val)
{
	struct ring_hdr *h;
	enum want w = for_space ? WANT_ROOM : WANT_DATA;
	_Atomic uint32_t *evt;
	int rc = ring_enter(r), poll;

	if (rc)
		return rc;
	h = r->hdr;
	need = rec_size(need);
	evt = for_space ? &h->cons.wake_evt : &h->prod.wake_evt;
	rc = 1;
	if (ready(r, w, need) || stop_waiting(r))
		goto out;
	poll = 0;
	/* A deadline of now: the event loop's thread never waits for a lock. */
	if (reap_in_the_way(r, 0, now_ns(), &poll) > 0 ||
	    (for_space && reap_in_the_way(r, 1, now_ns(), &poll) > 0))
		goto out;
	*val = atomic_fetch_or(evt, 1u) | 1u;
	atomic_thread_fence(memory_order_seq_cst);
	if (ready(r, w, need) || stop_waiting(r))
		goto out;
	/* A sleep, for stats(), as in sleep_until_ready(). */
	atomic_fetch_add_explicit(for_space ? &h->prod.waits : &h->cons.waits, 1, memory_order_relaxed);
	*word = (uint32_t *)evt;
	/* 2: armed, but a lease whose holder may die is in the way: a dead
	 * holder wakes nobody, so arm again within LEASE_CHECK_NS. */
	rc = poll ? 2 : 0;
out:
	ring_leave(r);
	return rc;
}

/* ---- shutdown and inspection ------------------------------------------ */

int pyipc_ring_shutdown(pyipc_ring *r, int immediate)
{
	struct ring_hdr *h;
	uint32_t want = immediate ? SHUT_IMMEDIATE : SHUT_DRAIN, cur;
	int rc = ring_enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	/* Only ever escalate: open -> drain -> immediate. */
	cur = atomic_load(&h->seg.shutdown);
	while ((cur == 0 || (cur == SHUT_DRAIN && want == SHUT_IMMEDIATE)) &&
	       !atomic_compare_exchange_weak(&h->seg.shutdown, &cur, want))
		;
	/* Wake every sleeper, flagged or not: all must see the new state. */
	atomic_fetch_add(&h->prod.wake_evt, 2);
	atomic_fetch_add(&h->cons.wake_evt, 2);
	futex_wake_all(&h->prod.wake_evt);
	futex_wake_all(&h->cons.wake_evt);
	ring_leave(r);
	return 0;
}

int64_t pyipc_ring_qsize(pyipc_ring *r)
{
	struct ring_hdr *h;
	uint64_t n;
	int rc = ring_enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	if (shutdown_state(r) == 2) {
		n = 0; /* discarded: no get will ever return them */
	} else {
		/* gets first: a put landing in between can only make n larger. */
		uint64_t gets = atomic_load(&h->cons.count);

		n = atomic_load(&h->prod.count) - gets;
		if (n > r->cap / REC_HDR)
			n = 0; /* a transient or scribbled value: never report garbage */
	}
	ring_leave(r);
	return (int64_t)n;
}

int pyipc_ring_info(pyipc_ring *r, struct pyipc_ring_info *out)
{
	struct ring_hdr *h;
	int64_t n;
	int rc = ring_enter(r), shut;

	if (rc)
		return rc;
	h = r->hdr;
	memset(out, 0, sizeof(*out));
	out->capacity = r->cap;
	out->max_message_size = r->max_msg;
	out->max_messages = r->max_messages;
	out->hdr_size = r->seg.hdr_size;
	out->gets = atomic_load(&h->cons.count);
	out->bytes_got = atomic_load(&h->cons.bytes);
	out->get_waits = atomic_load(&h->cons.waits);
	out->puts = atomic_load(&h->prod.count);
	out->bytes_put = atomic_load(&h->prod.bytes);
	out->put_waits = atomic_load(&h->prod.waits);
	out->bytes_used = atomic_load(&h->prod.own) - atomic_load(&h->cons.cursor);
	if (out->bytes_used > r->cap)
		out->bytes_used = 0;
	out->reserves = atomic_load_explicit(&h->prod.leases, memory_order_relaxed);
	out->views = atomic_load_explicit(&h->cons.leases, memory_order_relaxed);
	if (out->reserves > PYIPC_MAX_LEASES)
		out->reserves = 0;
	if (out->views > PYIPC_MAX_LEASES)
		out->views = 0;
	out->recoveries = atomic_load(&h->seg.recoveries);
	out->version = PYIPC_LAYOUT_VERSION;
	shut = shutdown_state(r);
	out->shutdown = shut < 0 ? 3 : (uint32_t)shut;
	out->creator_pid = h->seg.creator_pid;
	out->owner = r->seg.owner;
	ring_leave(r);
	n = pyipc_ring_qsize(r);
	out->messages = n > 0 ? (uint64_t)n : 0;
	return 0;
}
