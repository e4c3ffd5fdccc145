// SPDX-License-Identifier: MIT
/*
 * topic.c - publish once, every subscriber reads: a broadcast ring in a
 * shared segment (layout.h has the bytes).
 *
 * Design in one paragraph.  Publishers share one lock (lock.h) and write
 * each message once, at `claim`; a message becomes visible with one store
 * of `tail` after its bytes (and its number, `seq`) are written.  Every
 * subscriber owns a slot with its own cursor and reads without any lock
 * (a Disruptor or Aeron IPC subscriber, in effect): one receive reads the
 * publishers' line (tail, oldest) and the record, and writes only its own
 * slot's line.  Before a publisher overwrites space it moves `oldest` past
 * it; on a "block" topic it may only do so up to the slowest live
 * subscriber's gate, on an "overwrite" topic up to the oldest open view,
 * and on both never past an open reservation.  A subscriber of an
 * "overwrite" topic that copies a record checks `oldest` again after the
 * copy (the stamp of a seqlock): a record that was overwritten meanwhile is
 * thrown away, never returned torn, and the numbers in the records tell how
 * many messages it missed.
 *
 * Why these choices:
 *  - one copy per message and a cursor per subscriber, rather than a ring
 *    per subscriber: a subscriber costs its cursor, not a copy and a lock
 *    round per message;
 *  - subscriber slots name their owner by owner id (owner.h), so a dead
 *    subscriber is found by asking the kernel, in any PID namespace, and
 *    its slot is given back: it never holds a "block" publisher for longer
 *    than the publisher's next look (every LEASE_CHECK_NS while it sleeps);
 *  - publishers keep the lowest subscriber gate in process memory and read
 *    the slots again only when that says "full" or when the set of
 *    subscribers changed (subs_gen): the slots' lines are written by the
 *    subscribers, and reading them on every publish would pull each one
 *    across CPUs;
 *  - sleepers wait on event counts with a waiter bit (shared.h): a publish
 *    makes no system call unless a subscriber sleeps, and publishers held
 *    back by one subscriber sleep on that subscriber's own word, which only
 *    it bumps;
 *  - a view on an "overwrite" topic registers its hold under the
 *    publishers' lock: publishers then see every hold when they check, with
 *    no fence on their path (views are for large messages, where one lock
 *    round is nothing).
 *
 * The segment is untrusted: geometry is validated at attach and kept here;
 * every cursor, length and slot field is checked before it addresses memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "forksafe.h"
#include "internal.h"
#include "layout.h"
#include "lock.h"
#include "owner.h"
#include "segment.h"
#include "shared.h"
#include "topic_api.h"

#define TREC_HDR 16u
#define LEASE_CHECK_NS 10000000ll /* a publisher held back looks at the holder this often */
#define MAX_VIEWS PYIPC_MAX_LEASES
#define SKIP_LEN UINT64_MAX

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

struct trec {
	uint32_t len;
	uint32_t check;
	uint64_t seq;
};

/* What a publisher waits for: a subscriber (its gate, or its view) or the
 * tail (an open reservation). */
enum { BLK_TAIL, BLK_SLOT };
struct blocker {
	int kind;
	uint32_t slot;
	uint32_t owner;
	uint64_t target; /* oldest must be able to reach this */
};

struct pyipc_topic {
	struct seg seg;
	struct topic_hdr *hdr;
	struct topic_slot *slots;
	unsigned char *data;
	uint64_t cap;
	uint64_t mask;
	uint64_t max_msg;
	uint32_t max_subs;
	int overflow;
	/* Publishers: the lowest subscriber gate as last computed, valid while
	 * subs_gen and the repair epoch say gate_gen and epoch; under the lock. */
	uint64_t gate;
	uint32_t gate_gen;
	uint32_t pub_epoch;
	int gate_ok;
	/* Subscriber state, under mu.  The slot in the segment is a published
	 * copy; this one is the truth (a slot nobody else may write). */
	pthread_mutex_t mu;
	int sub;    /* slot index, or -1 */
	int forked; /* a forked child's copy of a subscriber: subscribe anew first */
	uint32_t sub_epoch;
	uint64_t read, next_seq, count, bytes, missed, cached_tail;
	uint64_t vpos[MAX_VIEWS];
	uint8_t vused[MAX_VIEWS];
	uint32_t nviews;
	_Atomic int users;   /* calls in progress on this handle */
	_Atomic int leases;  /* leases held through this handle */
	_Atomic int closing;
	_Atomic int unmapped;
	struct fork_hook fork;
};

static uint64_t hdr_bytes(uint32_t max_subs)
{
	return sizeof(struct topic_hdr) + (uint64_t)max_subs * sizeof(struct topic_slot);
}

static inline uint64_t trec_size(uint64_t len)
{
	return TREC_HDR + ((len + 7) & ~7ull);
}

static inline unsigned char *at(const struct pyipc_topic *t, uint64_t pos)
{
	return t->data + (pos & t->mask);
}

static inline void read_hdr(const struct pyipc_topic *t, uint64_t pos, struct trec *h)
{
	memcpy(h, at(t, pos), sizeof(*h));
}

static inline void write_hdr(struct pyipc_topic *t, uint64_t pos, uint32_t len, uint32_t check,
			     uint64_t seq)
{
	struct trec h = { .len = len, .check = check, .seq = seq };

	memcpy(at(t, pos), &h, sizeof(h));
}

static inline void write_msg_hdr(struct pyipc_topic *t, uint64_t pos, uint64_t len, uint64_t seq)
{
	write_hdr(t, pos, (uint32_t)len, ~(uint32_t)len, seq);
}

static inline void write_skip_hdr(struct pyipc_topic *t, uint64_t pos, uint64_t size, uint64_t seq)
{
	write_hdr(t, pos, (uint32_t)size, ~(uint32_t)size ^ REC_SKIP, seq);
}

/* A record's size, with *len its payload length or SKIP_LEN, or -EBADMSG
 * if h is not a record that fits in `avail` bytes. */
static inline int64_t parse(const struct pyipc_topic *t, const struct trec *h, uint64_t avail,
			    uint64_t *len)
{
	if (likely(h->check == ~h->len)) {
		if (h->len > t->max_msg || trec_size(h->len) > avail)
			return -EBADMSG;
		*len = h->len;
		return (int64_t)trec_size(h->len);
	}
	if (h->check == (~h->len ^ REC_SKIP) && h->len >= TREC_HDR && !(h->len & 7) && h->len <= avail) {
		*len = SKIP_LEN;
		return h->len;
	}
	return -EBADMSG;
}

/* a <= b, both 8-aligned, at most a ring apart. */
static inline int span_ok(const struct pyipc_topic *t, uint64_t a, uint64_t b)
{
	return b - a <= t->cap && !((a | b) & 7);
}

static inline int before(uint64_t a, uint64_t b)
{
	return (int64_t)(a - b) < 0;
}

static int shutdown_state(const struct pyipc_topic *t)
{
	uint32_t s = atomic_load_explicit(&t->hdr->seg.shutdown, memory_order_acquire);

	if (likely(s == 0))
		return 0;
	return s == SHUT_DRAIN || s == SHUT_IMMEDIATE ? 1 : -EBADMSG;
}

static int stop_waiting(struct pyipc_topic *t)
{
	return atomic_load(&t->hdr->seg.shutdown) ||
	       atomic_load_explicit(&t->closing, memory_order_relaxed);
}

/* ---- handle lifetime ---------------------------------------------------- */

static int enter(struct pyipc_topic *t)
{
	atomic_fetch_add(&t->users, 1);
	/* seq_cst on both sides: either close() sees us, or we see close(). */
	if (unlikely(atomic_load(&t->closing))) {
		atomic_fetch_sub(&t->users, 1);
		return -EBADF;
	}
	return 0;
}

static void leave(struct pyipc_topic *t)
{
	atomic_fetch_sub(&t->users, 1);
}

static void wake_all_words(struct pyipc_topic *t)
{
	wake_everyone(&t->hdr->pub.data_evt);
	for (uint32_t i = 0; i < t->max_subs; i++)
		if (atomic_load_explicit(&t->slots[i].evt, memory_order_relaxed) & 1u)
			wake_everyone(&t->slots[i].evt);
}

/* Give our slot back: publishers no longer wait for us.  No lock: taking a
 * slot needs the publishers' lock, giving one back only relaxes what a
 * publisher computed, and a publisher that is stopped while holding its
 * lock must not keep a subscriber from closing. */
static void unsubscribe(struct pyipc_topic *t)
{
	struct topic_slot *s;
	uint32_t mine;

	if (t->sub < 0 || t->forked)
		return;
	s = &t->slots[t->sub];
	mine = t->seg.owner;
	if (atomic_load(&s->hold) != HOLD_NONE) {
		atomic_store(&s->hold, HOLD_NONE);
		atomic_fetch_sub(&t->hdr->views_open, 1);
	}
	if (atomic_compare_exchange_strong(&s->owner, &mine, 0))
		atomic_fetch_add(&t->hdr->pub.subs_gen, 1);
	t->sub = -1;
	wake_everyone(&s->evt);
}

static void unmap_once(struct pyipc_topic *t)
{
	if (atomic_exchange(&t->unmapped, 1))
		return;
	forksafe_remove(&t->fork);
	unsubscribe(t);
	seg_detach(&t->seg);
}

static void lease_gone(struct pyipc_topic *t)
{
	if (atomic_fetch_sub(&t->leases, 1) == 1 && atomic_load(&t->closing))
		unmap_once(t);
}

static int claim_unnamed_id(struct pyipc_topic *t);

/* In a forked child: the parent's threads, leases and file description
 * stay behind; a subscriber's slot is the parent's, so the child's copy
 * takes a slot of its own at its first call, where the parent was. */
static void after_fork(struct fork_hook *hook)
{
	struct pyipc_topic *t = container_of(hook, struct pyipc_topic, fork);

	atomic_store(&t->users, 0);
	atomic_store(&t->leases, 0);
	pthread_mutex_init(&t->mu, NULL);
	memset(t->vused, 0, sizeof(t->vused));
	t->nviews = 0;
	if (t->sub >= 0)
		t->forked = 1;
	if (!atomic_load(&t->unmapped)) {
		seg_after_fork(&t->seg);
		if (claim_unnamed_id(t))
			t->seg.owner = OWNER_UNKNOWN;
	}
}

static int handle_new(struct pyipc_topic **out)
{
	struct pyipc_topic *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->seg.fd = -1;
	t->seg.share_fd = -1;
	t->sub = -1;
	t->fork.in_child = after_fork;
	pthread_mutex_init(&t->mu, NULL);
	*out = t;
	return 0;
}

/* Does the segment name owner id `id` anywhere (the lock, a reservation,
 * a subscriber slot)? */
static int id_named(struct pyipc_topic *t, uint32_t id)
{
	if ((atomic_load(&t->hdr->pub.lock) & ~LOCK_WAITERS) == id)
		return 1;
	for (int i = 0; i < PYIPC_MAX_LEASES; i++)
		if (atomic_load(&t->hdr->reserves[i].owner) == id)
			return 1;
	for (uint32_t i = 0; i < t->max_subs; i++)
		if (atomic_load(&t->slots[i].owner) == id)
			return 1;
	return 0;
}

/* As the ring does (ring.c, claim_unnamed_id): never hold an id that a dead
 * holder's lock, reservation or slot still names, or that holder would look
 * alive for as long as this handle lives.  Async-signal-safe. */
static int claim_unnamed_id(struct pyipc_topic *t)
{
	for (uint32_t i = 0; i < t->max_subs + PYIPC_MAX_LEASES + 2 && id_named(t, t->seg.owner); i++) {
		int rc = seg_claim_again(&t->seg);

		if (rc)
			return rc;
	}
	return 0;
}

static int handle_map(struct pyipc_topic *t)
{
	int rc;

	t->hdr = (struct topic_hdr *)t->seg.hdr;
	t->slots = t->hdr->slots;
	t->data = t->seg.data;
	t->cap = t->seg.cap;
	t->mask = t->cap - 1;
	t->max_msg = t->cap - TREC_HDR;
	t->pub_epoch = t->sub_epoch = atomic_load(&t->hdr->seg.epoch);
	rc = claim_unnamed_id(t);
	return rc ? rc : forksafe_add(&t->fork);
}

int pyipc_topic_create(const char *where, int flags, uint64_t capacity, uint32_t max_subscribers,
		       int overflow, uint32_t mode, pyipc_topic **out)
{
	struct pyipc_topic *t;
	int rc;

	if (max_subscribers < 1 || max_subscribers > PYIPC_TOPIC_MAX_SUBSCRIBERS ||
	    (overflow != TOPIC_BLOCK && overflow != TOPIC_OVERWRITE))
		return -EINVAL;
	rc = handle_new(&t);
	if (rc)
		return rc;
	rc = seg_create(&t->seg, where, flags, capacity, hdr_bytes(max_subscribers), mode);
	if (rc)
		goto err_free;
	t->max_subs = max_subscribers;
	t->overflow = overflow;
	t->seg.hdr->max_msg = t->seg.cap - TREC_HDR;
	t->seg.hdr->params[0] = max_subscribers;
	t->seg.hdr->params[1] = (uint32_t)overflow;
	rc = handle_map(t);
	if (rc)
		goto err_unlink;
	for (uint32_t i = 0; i < max_subscribers; i++)
		atomic_store(&t->slots[i].hold, HOLD_NONE);
	seg_publish(&t->seg, PYIPC_KIND_TOPIC);
	*out = t;
	return 0;

err_unlink:
	pyipc_seg_unlink(where, flags);
	seg_detach(&t->seg);
err_free:
	free(t);
	return rc;
}

static int pub_lock(struct pyipc_topic *t, int64_t deadline);
static void pub_unlock(struct pyipc_topic *t);

int pyipc_topic_attach(const char *where, int flags, pyipc_topic **out)
{
	struct pyipc_topic *t;
	struct seg_hdr peek;
	uint64_t hdr_min = sizeof(struct topic_hdr);
	int rc = handle_new(&t);

	if (rc)
		return rc;
	if (flags & PYIPC_SEG_REPAIR) {
		/* The header's size follows from max_subscribers: read it first. */
		rc = seg_peek(where, flags, &peek);
		if (rc)
			goto err_free;
		if (peek.params[0] < 1 || peek.params[0] > PYIPC_TOPIC_MAX_SUBSCRIBERS) {
			rc = -EBADMSG;
			goto err_free;
		}
		hdr_min = hdr_bytes(peek.params[0]);
	}
	rc = seg_attach(&t->seg, where, flags, PYIPC_KIND_TOPIC, hdr_min);
	if (rc)
		goto err_free;
	/* The rest of the geometry, read once like the shared part. */
	t->max_subs = t->seg.hdr->params[0];
	t->overflow = (int)t->seg.hdr->params[1];
	if (t->max_subs < 1 || t->max_subs > PYIPC_TOPIC_MAX_SUBSCRIBERS ||
	    hdr_bytes(t->max_subs) > t->seg.hdr_size) {
		rc = -EBADMSG;
		goto err_detach;
	}
	if (t->overflow != TOPIC_BLOCK && t->overflow != TOPIC_OVERWRITE) {
		if (!(flags & PYIPC_SEG_REPAIR)) {
			rc = -EBADMSG;
			goto err_detach;
		}
		t->overflow = TOPIC_BLOCK; /* repair() writes it back */
	}
	if (!(flags & PYIPC_SEG_REPAIR) && t->seg.hdr->max_msg != t->seg.cap - TREC_HDR) {
		rc = -EBADMSG;
		goto err_detach;
	}
	rc = handle_map(t);
	if (rc)
		goto err_detach;
	*out = t;
	return 0;

err_detach:
	seg_detach(&t->seg);
err_free:
	free(t);
	return rc;
}

int pyipc_topic_close(pyipc_topic *t)
{
	if (atomic_exchange(&t->closing, 1))
		return 0;
	/* Let calls in other threads notice and leave, then unmap under none. */
	while (atomic_load(&t->users) > 0) {
		wake_all_words(t);
		usleep(1000);
	}
	if (atomic_load(&t->leases) == 0)
		unmap_once(t);
	return 0;
}

void pyipc_topic_free(pyipc_topic *t)
{
	if (!t)
		return;
	pyipc_topic_close(t);
	unmap_once(t);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

uint64_t pyipc_topic_capacity(const pyipc_topic *t)
{
	return t->cap;
}

uint64_t pyipc_topic_max_message_size(const pyipc_topic *t)
{
	return t->max_msg;
}

uint32_t pyipc_topic_max_subscribers(const pyipc_topic *t)
{
	return t->max_subs;
}

int pyipc_topic_overflow(const pyipc_topic *t)
{
	return t->overflow;
}

int pyipc_topic_flush(pyipc_topic *t)
{
	int rc = enter(t);

	if (rc)
		return rc;
	if (msync(t->seg.hdr, t->seg.hdr_size + t->cap, MS_SYNC))
		rc = -errno;
	leave(t);
	return rc;
}

/* ---- the publishers' side: lock, recovery, revealing records ----------- */

/*
 * Make [tail, to) visible: stamp every record with its number (a skip
 * record with the next message's), count messages and bytes, and publish
 * the new tail through the redo log.  Publishers' lock held.
 */
static int reveal(struct pyipc_topic *t, uint64_t to)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t pos = atomic_load_explicit(&p->tail, memory_order_relaxed);
	uint64_t seq = atomic_load_explicit(&p->tail_seq, memory_order_relaxed);
	uint64_t bytes = atomic_load_explicit(&p->bytes, memory_order_relaxed);

	while (pos != to) {
		struct trec h;
		uint64_t len;
		int64_t size;

		read_hdr(t, pos, &h);
		size = parse(t, &h, to - pos, &len);
		if (size < 0)
			return -EBADMSG;
		h.seq = seq;
		memcpy(at(t, pos), &h, sizeof(h));
		if (len != SKIP_LEN) {
			seq++;
			bytes += len;
		}
		pos += (uint64_t)size;
	}
	redo_open(&p->log, &p->done, OP_COMMIT, 0, to, seq, bytes);
	atomic_store_explicit(&p->tail_seq, seq, memory_order_relaxed);
	atomic_store_explicit(&p->bytes, bytes, memory_order_relaxed);
	/* Release: the stamped records come before the tail that shows them. */
	atomic_store_explicit(&p->tail, to, memory_order_release);
	redo_close(&p->log, &p->done);
	return 0;
}

/* Recompute tail from the open reservations and reveal up to it. */
static int republish(struct pyipc_topic *t)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
	uint64_t claim = atomic_load_explicit(&p->claim, memory_order_relaxed);
	uint32_t n;
	uint64_t to = lowest_lease(t->hdr->reserves, tail, claim, &n);

	atomic_store_explicit(&p->leases, n, memory_order_relaxed);
	return to == tail ? 0 : reveal(t, to);
}

/* oldest_seq after oldest moved (or was put right): the stamp at oldest. */
static void set_oldest_seq(struct pyipc_topic *t, uint64_t oldest)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
	struct trec h;

	if (oldest == tail) {
		atomic_store_explicit(&p->oldest_seq, atomic_load(&p->tail_seq), memory_order_relaxed);
		return;
	}
	read_hdr(t, oldest, &h);
	atomic_store_explicit(&p->oldest_seq, h.seq, memory_order_relaxed);
}

/*
 * A publisher died holding the lock.  Its last operation either opened its
 * redo log (every byte it wrote is in place: finish it) or did not (what it
 * wrote lies beyond claim or tail, unseen: forget it); then drop leases that
 * cannot be right and reveal what the open reservations no longer hold.
 */
static int recover_pub(struct pyipc_topic *t)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t claim = atomic_load(&p->claim), tail = atomic_load(&p->tail);
	uint64_t oldest = atomic_load(&p->oldest), seq = atomic_load(&p->log.seq);
	uint64_t c = p->log.cursor;

	if (!span_ok(t, oldest, tail) || !span_ok(t, tail, claim) || !span_ok(t, oldest, claim))
		return -EBADMSG; /* scribbled: only repair() can tell what to keep */
	if (seq == atomic_load(&p->done) + 1) {
		switch (p->log.op) {
		case OP_PUT:
			if (span_ok(t, claim, c) && span_ok(t, oldest, c)) {
				atomic_store(&p->claim, c);
				atomic_store(&p->tail_seq, p->log.count);
				atomic_store(&p->bytes, p->log.bytes);
				atomic_store_explicit(&p->tail, c, memory_order_release);
			}
			break;
		case OP_RESERVE:
			if (span_ok(t, claim, c) && span_ok(t, oldest, c))
				atomic_store(&p->claim, c);
			break;
		case OP_COMMIT:
			if (span_ok(t, tail, c) && span_ok(t, c, claim)) {
				atomic_store(&p->tail_seq, p->log.count);
				atomic_store(&p->bytes, p->log.bytes);
				atomic_store_explicit(&p->tail, c, memory_order_release);
			}
			break;
		}
		atomic_store(&p->done, seq);
		claim = atomic_load(&p->claim);
		tail = atomic_load(&p->tail);
	}
	keep_leases(t->hdr->reserves, t->cap, tail, claim);
	if (republish(t))
		return -EBADMSG;
	set_oldest_seq(t, oldest);
	t->gate_ok = 0;
	return 0;
}

static int pub_lock(struct pyipc_topic *t, int64_t deadline)
{
	int rc = lock_take(&t->hdr->pub.lock, &t->seg, deadline);
	uint32_t e;

	if (unlikely(rc)) {
		if (rc != LOCK_RECOVERED)
			return rc;
		atomic_fetch_add(&t->hdr->seg.recoveries, 1);
		rc = recover_pub(t);
		if (rc) {
			lock_give(&t->hdr->pub.lock);
			return rc;
		}
	}
	e = atomic_load_explicit(&t->hdr->seg.epoch, memory_order_relaxed);
	if (unlikely(e != t->pub_epoch)) {
		t->pub_epoch = e;
		t->gate_ok = 0;
	}
	return 0;
}

static void pub_unlock(struct pyipc_topic *t)
{
	lock_give(&t->hdr->pub.lock);
}

/* Take the publishers' lock for a short, rare operation (subscribing,
 * reaping): retry the slices, since the lock is only ever held for a copy. */
static int pub_lock_forever(struct pyipc_topic *t)
{
	int rc;

	do
		rc = pub_lock(t, FOREVER);
	while (rc == -EINTR);
	return rc;
}

/* After something became visible: wake sleeping subscribers, if any. */
static void wake_data(struct pyipc_topic *t)
{
	/* Pairs with the fence in sub_sleep(): either the sleeper sees our
	 * tail, or we see its waiter bit. */
	atomic_thread_fence(memory_order_seq_cst);
	wake_sleepers(&t->hdr->pub.data_evt);
}

/* Highest slot in use + 1, after slots were given back. */
static void shrink_hi(struct pyipc_topic *t)
{
	uint32_t hi = atomic_load(&t->hdr->pub.hi);

	if (hi > t->max_subs)
		hi = t->max_subs;
	while (hi && !atomic_load(&t->slots[hi - 1].owner))
		hi--;
	atomic_store(&t->hdr->pub.hi, hi);
}

/* Give back the slot of a dead subscriber; publishers' lock held. */
static int reap_slot(struct pyipc_topic *t, uint32_t i, uint32_t owner)
{
	struct topic_slot *s = &t->slots[i];

	if (!atomic_compare_exchange_strong(&s->owner, &owner, 0))
		return 0;
	if (atomic_exchange(&s->hold, HOLD_NONE) != HOLD_NONE)
		atomic_fetch_sub(&t->hdr->views_open, 1);
	atomic_fetch_add(&t->hdr->pub.subs_gen, 1);
	shrink_hi(t);
	wake_everyone(&s->evt);
	return 1;
}

/* Reservations whose holder died become skip records; lock held. */
static int reap_reserves(struct pyipc_topic *t)
{
	struct lease *tab = t->hdr->reserves;
	int n = 0;

	for (int i = 0; i < PYIPC_MAX_LEASES; i++) {
		uint32_t owner = atomic_load_explicit(&tab[i].owner, memory_order_relaxed);
		uint64_t pos = atomic_load_explicit(&tab[i].pos, memory_order_relaxed), end = tab[i].end;

		if (!owner || owner_liveness(t->seg.fd, t->seg.owner, owner) != OWNER_DEAD)
			continue;
		/* It may have died inside commit, after its message header was
		 * written: make it a skip record again. */
		if (tab[i].check == lease_check(pos, end, owner) && end - pos <= t->cap &&
		    end - pos >= TREC_HDR && !((pos | end) & 7))
			write_skip_hdr(t, pos, end - pos, 0);
		atomic_store_explicit(&tab[i].owner, 0, memory_order_release);
		n++;
	}
	if (n && republish(t) < 0)
		return -EBADMSG;
	return n;
}

/* Open reservations, if any, whose holder died end now (they hold the tail
 * for everyone).  1 if any was reaped, 0 if none, or an error. */
static int reap_dead_reserves(struct pyipc_topic *t, int64_t deadline)
{
	int rc;

	if (!atomic_load_explicit(&t->hdr->pub.leases, memory_order_relaxed) ||
	    !dead_leases(&t->seg, t->hdr->reserves))
		return 0;
	rc = pub_lock(t, deadline);
	if (rc)
		return rc;
	rc = reap_reserves(t);
	pub_unlock(t);
	if (rc > 0)
		wake_data(t);
	return rc < 0 ? rc : rc > 0;
}

/* ---- making room ---------------------------------------------------------- */

/* The lowest gate of the live subscribers ("block" topics); lock held.
 * 1 if target is within it, 0 if not (*b names the slowest), -EBADMSG. */
static int compute_gate(struct pyipc_topic *t, uint32_t gen, uint64_t target, struct blocker *b)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
	uint64_t oldest = atomic_load_explicit(&p->oldest, memory_order_relaxed), gate = tail;
	uint32_t hi = atomic_load_explicit(&p->hi, memory_order_relaxed), slow = 0, slow_owner = 0;

	if (hi > t->max_subs)
		hi = t->max_subs;
	for (uint32_t i = 0; i < hi; i++) {
		uint32_t owner = atomic_load_explicit(&t->slots[i].owner, memory_order_acquire);
		uint64_t g;

		if (!owner)
			continue;
		/* Acquire: its reads of the records come before we reuse them. */
		g = atomic_load_explicit(&t->slots[i].gate, memory_order_acquire);
		if (before(g, oldest) || before(tail, g) || (g & 7))
			return -EBADMSG;
		if (g - oldest < gate - oldest) {
			gate = g;
			slow = i;
			slow_owner = owner;
		}
	}
	t->gate = gate;
	t->gate_gen = gen;
	t->gate_ok = 1;
	if (before(gate, target)) {
		b->kind = BLK_SLOT;
		b->slot = slow;
		b->owner = slow_owner;
		b->target = target;
		return 0;
	}
	return 1;
}

/* "overwrite" topics: is an open view in the way of target?  Lock held;
 * holds are registered under the same lock. */
static int views_clear(struct pyipc_topic *t, uint64_t target, struct blocker *b)
{
	uint32_t hi;

	if (t->overflow != TOPIC_OVERWRITE ||
	    !atomic_load_explicit(&t->hdr->views_open, memory_order_relaxed))
		return 1;
	hi = atomic_load_explicit(&t->hdr->pub.hi, memory_order_relaxed);
	if (hi > t->max_subs)
		hi = t->max_subs;
	for (uint32_t i = 0; i < hi; i++) {
		uint32_t owner = atomic_load_explicit(&t->slots[i].owner, memory_order_relaxed);
		uint64_t h = atomic_load_explicit(&t->slots[i].hold, memory_order_relaxed);

		if (owner && h != HOLD_NONE && before(h, target)) {
			b->kind = BLK_SLOT;
			b->slot = i;
			b->owner = owner;
			b->target = target;
			return 0;
		}
	}
	return 1;
}

/*
 * Room for a record of `size` bytes at `pos` (claim, plus what this batch
 * wrote before it): move oldest past everything that record overwrites, as
 * far as the gates allow.  Lock held.  1 room, 0 not now (*b says what is
 * in the way), -EBADMSG.
 */
static int make_room(struct pyipc_topic *t, uint64_t pos, uint64_t size, struct blocker *b)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t target = pos + size - t->cap;
	uint64_t oldest = atomic_load_explicit(&p->oldest, memory_order_relaxed), tail, walk;
	int rc;

	rc = views_clear(t, target, b);
	if (rc <= 0 || !before(oldest, target))
		return rc;
	tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
	if (before(tail, target)) {
		b->kind = BLK_TAIL; /* an open reservation a ring back */
		b->target = target;
		return 0;
	}
	if (t->overflow == TOPIC_BLOCK) {
		uint32_t gen = atomic_load_explicit(&p->subs_gen, memory_order_relaxed);

		if (!t->gate_ok || gen != t->gate_gen || before(t->gate, target)) {
			rc = compute_gate(t, gen, target, b);
			if (rc <= 0)
				return rc;
		}
	}
	/* Whole records: oldest always lies on a record boundary. */
	for (walk = oldest; before(walk, target);) {
		struct trec h;
		uint64_t len;
		int64_t sz;

		read_hdr(t, walk, &h);
		sz = parse(t, &h, tail - walk, &len);
		if (sz < 0)
			return -EBADMSG;
		walk += (uint64_t)sz;
	}
	atomic_store_explicit(&p->oldest, walk, memory_order_relaxed);
	set_oldest_seq(t, walk);
	/* Release: oldest is seen to move before any byte we write behind it
	 * (a subscriber copying there checks oldest after its copy). */
	atomic_thread_fence(memory_order_release);
	return 1;
}

/* ---- publish ------------------------------------------------------------ */

/* Append the messages that fit now; lock held.  How many, or -errno. */
static int64_t append(struct pyipc_topic *t, const unsigned char *src, const uint64_t *lens,
		      size_t n, struct blocker *b)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t claim = atomic_load_explicit(&p->claim, memory_order_relaxed), pos = claim;
	uint64_t seq = atomic_load_explicit(&p->tail_seq, memory_order_relaxed);
	uint64_t bytes = atomic_load_explicit(&p->bytes, memory_order_relaxed);
	uint32_t leases = atomic_load_explicit(&p->leases, memory_order_relaxed);
	size_t i;
	int rc;

	for (i = 0; i < n; i++) {
		uint64_t len = lens[i], size = trec_size(len);

		if (len > t->max_msg) {
			if (i == 0)
				return -EMSGSIZE;
			break;
		}
		rc = make_room(t, pos, size, b);
		if (rc <= 0) {
			if (rc < 0 && i == 0)
				return rc;
			break;
		}
		/* Behind an open reservation the numbers are not known yet:
		 * the commit that reveals these records stamps them. */
		write_msg_hdr(t, pos, len, leases ? 0 : seq);
		if (len) /* src may be NULL for an empty message */
			memcpy(at(t, pos) + TREC_HDR, src, len);
		src += len;
		seq++;
		bytes += len;
		pos += size;
	}
	if (!i)
		return 0;
	if (leases) {
		redo_open(&p->log, &p->done, OP_RESERVE, 0, pos, 0, 0);
		atomic_store_explicit(&p->claim, pos, memory_order_release);
	} else {
		redo_open(&p->log, &p->done, OP_PUT, 0, pos, seq, bytes);
		atomic_store_explicit(&p->claim, pos, memory_order_relaxed);
		atomic_store_explicit(&p->tail_seq, seq, memory_order_relaxed);
		atomic_store_explicit(&p->bytes, bytes, memory_order_relaxed);
		/* Release: the records come before the tail that shows them. */
		atomic_store_explicit(&p->tail, pos, memory_order_release);
	}
	redo_close(&p->log, &p->done);
	return (int64_t)i;
}

static int blocker_gone(struct pyipc_topic *t, const struct blocker *b)
{
	struct topic_slot *s;
	uint64_t h;

	if (b->kind == BLK_TAIL)
		return !before(atomic_load(&t->hdr->pub.tail), b->target);
	s = &t->slots[b->slot];
	if (atomic_load(&s->owner) != b->owner)
		return 1;
	if (t->overflow == TOPIC_BLOCK)
		return !before(atomic_load(&s->gate), b->target);
	h = atomic_load(&s->hold);
	return h == HOLD_NONE || !before(h, b->target);
}

/*
 * What holds a publisher back (*b) may be a dead holder: a subscriber's
 * slot, or an open reservation holding the tail.  Ask the kernel, and if
 * it is dead, give its slot back or end its reservation.  1 if something
 * was reaped (retry), 0 if not, or an error from taking the lock.
 */
static int pub_reap_in_the_way(struct pyipc_topic *t, const struct blocker *b, int64_t deadline)
{
	int rc;

	if (b->kind == BLK_SLOT) {
		if (owner_liveness(t->seg.fd, t->seg.owner, b->owner) != OWNER_DEAD)
			return 0;
		rc = pub_lock(t, deadline);
		if (rc)
			return rc;
		reap_slot(t, b->slot, b->owner); /* 0: someone else did */
		pub_unlock(t);
		return 1;
	}
	return reap_dead_reserves(t, deadline);
}

/*
 * Wait, without the lock, until what is in the way (*b) has moved, a
 * subscriber in the way died (its slot is then given back here), shutdown,
 * close, the deadline or the end of this slice.  0 to retry, or
 * -ETIMEDOUT / -EINTR / -EAGAIN.
 */
static int pub_sleep(struct pyipc_topic *t, const struct blocker *b, int64_t deadline, int *spun)
{
	struct topic_pub *p = &t->hdr->pub;
	_Atomic uint32_t *evt;
	int64_t start, until, wake_at;
	int rc, poll = 1;
	uint32_t v;

	rc = slice_begin(deadline, &until);
	if (rc == -EAGAIN) {
		/* Non-blocking: no sleep, but a dead holder in the way is
		 * reaped now, or a caller that only polls would wait for good. */
		rc = pub_reap_in_the_way(t, b, deadline);
		return rc > 0 ? 0 : rc < 0 ? rc : -EAGAIN;
	}
	if (rc)
		return rc;
	if (!*spun) {
		/* A subscriber on another CPU usually moves on within
		 * microseconds, far less than a cross-CPU wake-up costs. */
		*spun = 1;
		start = now_ns();
		for (int i = 0;; i++) {
			if (blocker_gone(t, b) || stop_waiting(t))
				return 0;
			cpu_relax();
			if ((i & 63) == 63 && now_ns() - start > SPIN_NS)
				break;
		}
	}
	rc = pub_reap_in_the_way(t, b, deadline);
	if (rc)
		return rc < 0 ? rc : 0;
	evt = b->kind == BLK_SLOT ? &t->slots[b->slot].evt : &p->data_evt;
	v = announce_sleeper(evt);
	/* Pairs with the waker's fence: see shared.h. */
	atomic_thread_fence(memory_order_seq_cst);
	if (blocker_gone(t, b) || stop_waiting(t))
		return 0;
	start = now_ns();
	if (start >= until)
		return slice_end(deadline, until);
	atomic_fetch_add_explicit(&p->waits, 1, memory_order_relaxed);
	/* A dead holder wakes nobody: look at it again every LEASE_CHECK_NS. */
	wake_at = poll && start + LEASE_CHECK_NS < until ? start + LEASE_CHECK_NS : until;
	rc = futex_wait_until(evt, v, wake_at);
	if (rc == -ETIMEDOUT)
		return wake_at < until ? 0 : slice_end(deadline, until);
	return rc;
}

static int publish_records(pyipc_topic *t, const unsigned char *src, const uint64_t *lens, size_t n,
			   int64_t deadline, size_t *done)
{
	struct blocker b;
	int spun = 0, rc = enter(t);

	*done = 0;
	if (rc)
		return rc;
	while (*done < n) {
		int shut = shutdown_state(t);
		int64_t k;

		if (unlikely(shut)) {
			rc = shut < 0 ? shut : -ESHUTDOWN;
			break;
		}
		if (lens[*done] > t->max_msg) {
			rc = -EMSGSIZE;
			break;
		}
		rc = pub_lock(t, deadline);
		if (rc)
			break;
		k = append(t, src, lens + *done, n - *done, &b);
		pub_unlock(t);
		if (k < 0) {
			rc = (int)k;
			break;
		}
		if (k > 0) {
			wake_data(t);
			for (int64_t i = 0; i < k; i++)
				src += lens[*done + i];
			*done += (size_t)k;
			continue;
		}
		rc = pub_sleep(t, &b, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&t->closing)) {
			rc = -EBADF;
			break;
		}
	}
	leave(t);
	return rc;
}

int pyipc_topic_publish(pyipc_topic *t, const void *data, size_t len, int64_t deadline)
{
	uint64_t len64 = len;
	size_t done;

	return publish_records(t, data, &len64, 1, deadline, &done);
}

int pyipc_topic_publish_many(pyipc_topic *t, const void *data, const uint64_t *lens, size_t n,
			     int64_t deadline, size_t *done)
{
	return publish_records(t, data, lens, n, deadline, done);
}

/* ---- reservations --------------------------------------------------------- */

static int mine(struct pyipc_topic *t, struct lease *e, uint64_t pos)
{
	uint32_t owner = atomic_load_explicit(&e->owner, memory_order_relaxed);

	return owner == t->seg.owner && atomic_load_explicit(&e->pos, memory_order_relaxed) == pos &&
	       e->check == lease_check(pos, e->end, owner);
}

/* Place a reservation at claim if it fits now; lock held.  1 placed, 0 no
 * room yet, -ENOSPC the table is full, -EBADMSG. */
static int place(struct pyipc_topic *t, uint64_t len, uint32_t *slot, uint64_t *pos,
		 struct blocker *b)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t claim = atomic_load_explicit(&p->claim, memory_order_relaxed), size = trec_size(len);
	struct lease *e = NULL;
	int i, rc = make_room(t, claim, size, b);

	if (rc <= 0)
		return rc;
	for (i = 0; i < PYIPC_MAX_LEASES; i++) {
		if (!atomic_load_explicit(&t->hdr->reserves[i].owner, memory_order_relaxed)) {
			e = &t->hdr->reserves[i];
			break;
		}
	}
	if (!e)
		return -ENOSPC;
	/* Until its commit, the record reads as a skip record. */
	write_skip_hdr(t, claim, size, 0);
	atomic_store_explicit(&e->pos, claim, memory_order_relaxed);
	e->end = claim + size;
	e->check = lease_check(claim, claim + size, t->seg.owner);
	/* owner last: a slot with an owner is a whole entry. */
	atomic_store_explicit(&e->owner, t->seg.owner, memory_order_release);
	redo_open(&p->log, &p->done, OP_RESERVE, (uint32_t)i, claim + size, 0, 0);
	atomic_store_explicit(&p->claim, claim + size, memory_order_release); /* commit point */
	atomic_fetch_add_explicit(&p->leases, 1, memory_order_relaxed);
	redo_close(&p->log, &p->done);
	/* tail stays at the oldest open reservation, at or before us. */
	*slot = (uint32_t)i;
	*pos = claim;
	return 1;
}

int pyipc_topic_reserve(pyipc_topic *t, uint64_t len, int64_t deadline, struct pyipc_lease *out)
{
	uint32_t *slot = &out->slot;
	uint64_t *pos = &out->pos;
	struct blocker b;
	int spun = 0, rc = enter(t);

	if (rc)
		return rc;
	for (;;) {
		int shut = shutdown_state(t);

		if (shut) {
			rc = shut < 0 ? shut : -ESHUTDOWN;
			break;
		}
		if (len > t->max_msg) {
			rc = -EMSGSIZE;
			break;
		}
		rc = pub_lock(t, deadline);
		if (rc)
			break;
		rc = place(t, len, slot, pos, &b);
		pub_unlock(t);
		if (rc == 1) {
			atomic_fetch_add(&t->leases, 1);
			out->ptr = (char *)at(t, *pos) + TREC_HDR;
			out->len = len;
			rc = 0;
			break;
		}
		if (rc < 0)
			break;
		rc = pub_sleep(t, &b, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&t->closing)) {
			rc = -EBADF;
			break;
		}
	}
	leave(t);
	return rc;
}

/* Leases end even on a handle being closed: it stays mapped for them. */
int pyipc_topic_commit(pyipc_topic *t, const struct pyipc_lease *l, int publish)
{
	uint32_t slot = l->slot;
	uint64_t pos = l->pos, len = l->len;
	struct topic_pub *p = &t->hdr->pub;
	struct lease *e;
	uint64_t before_tail;
	int rc;

	if (slot >= PYIPC_MAX_LEASES || atomic_load(&t->unmapped))
		return -ESTALE;
	rc = pub_lock(t, FOREVER);
	if (rc)
		return rc;
	e = &t->hdr->reserves[slot];
	if (!mine(t, e, pos) || e->end != pos + trec_size(len)) {
		pub_unlock(t);
		lease_gone(t); /* repair() dropped it: it is gone all the same */
		return -ESTALE;
	}
	if (publish)
		write_msg_hdr(t, pos, len, 0); /* reveal() stamps its number */
	atomic_store_explicit(&e->owner, 0, memory_order_release); /* commit point */
	before_tail = atomic_load_explicit(&p->tail, memory_order_relaxed);
	rc = republish(t);
	pub_unlock(t);
	if (atomic_load_explicit(&p->tail, memory_order_relaxed) != before_tail)
		wake_data(t);
	lease_gone(t);
	return rc;
}

/* ---- subscribers ---------------------------------------------------------- */

/* Copy the subscriber's state into its slot, for publishers and tools.
 * Under mu. */
static void sub_publish(struct pyipc_topic *t)
{
	struct topic_slot *s = &t->slots[t->sub];
	uint64_t gate = t->read;

	for (int i = 0; i < MAX_VIEWS && t->nviews; i++)
		if (t->vused[i] && t->vpos[i] - gate > (uint64_t)INT64_MAX)
			gate = t->vpos[i];
	atomic_store_explicit(&s->read, t->read, memory_order_relaxed);
	atomic_store_explicit(&s->next_seq, t->next_seq, memory_order_relaxed);
	atomic_store_explicit(&s->count, t->count, memory_order_relaxed);
	atomic_store_explicit(&s->bytes, t->bytes, memory_order_relaxed);
	atomic_store_explicit(&s->missed, t->missed, memory_order_relaxed);
	/* Release: our reads of the records come before publishers reuse them. */
	atomic_store_explicit(&s->gate, gate, memory_order_release);
}

/* After the gate moved: wake a publisher that sleeps on this slot. */
static void wake_publishers(struct pyipc_topic *t)
{
	atomic_thread_fence(memory_order_seq_cst);
	wake_sleepers(&t->slots[t->sub].evt);
}

/*
 * Take a slot; mu held.  A new subscriber starts at the tail (start 0) or
 * at the oldest record (1); a forked child's copy starts where its parent
 * was (`from`, if still in the ring).  Under the publishers' lock, so that
 * no publisher is half-way through overwriting where we start, and every
 * publisher sees the new subscriber (subs_gen) before it next writes.
 */
static int subscribe(struct pyipc_topic *t, int start, int have_from, uint64_t from, uint64_t from_seq)
{
	struct topic_pub *p = &t->hdr->pub;
	uint32_t me = t->seg.owner, hi;
	uint64_t tail, oldest, pos, seq;
	int rc, slot = -1;

	rc = pub_lock_forever(t);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < t->max_subs; i++) {
		uint32_t owner = atomic_load(&t->slots[i].owner);

		/* A slot under our own id is a dead handle's that had the id
		 * before us: its holder cannot be alive. */
		if (owner && (owner == me || owner_liveness(t->seg.fd, me, owner) == OWNER_DEAD) &&
		    reap_slot(t, i, owner))
			owner = 0;
		if (!owner && slot < 0)
			slot = (int)i;
	}
	if (slot < 0) {
		pub_unlock(t);
		return -EUSERS;
	}
	tail = atomic_load(&p->tail);
	oldest = atomic_load(&p->oldest);
	if (have_from && !before(from, oldest) && !before(tail, from) && !(from & 7)) {
		pos = from;
		seq = from_seq;
	} else if (start || have_from) {
		pos = oldest;
		seq = atomic_load(&p->oldest_seq);
	} else {
		pos = tail;
		seq = atomic_load(&p->tail_seq);
	}
	{
		struct topic_slot *s = &t->slots[slot];

		atomic_store(&s->gate, pos);
		atomic_store(&s->read, pos);
		atomic_store(&s->next_seq, seq);
		atomic_store(&s->hold, HOLD_NONE);
		atomic_store(&s->count, 0);
		atomic_store(&s->bytes, 0);
		atomic_store(&s->missed, 0);
		atomic_store(&s->waits, 0);
		atomic_store(&s->views, 0);
		atomic_store_explicit(&s->owner, me, memory_order_release);
	}
	hi = atomic_load(&p->hi);
	if (hi > t->max_subs)
		hi = t->max_subs;
	if ((uint32_t)slot + 1 > hi)
		atomic_store(&p->hi, (uint32_t)slot + 1);
	atomic_fetch_add(&p->subs_gen, 1);
	pub_unlock(t);
	t->sub = slot;
	t->forked = 0;
	t->read = t->cached_tail = pos;
	t->next_seq = seq;
	t->count = t->bytes = t->missed = 0;
	t->sub_epoch = atomic_load(&t->hdr->seg.epoch);
	return 0;
}

int pyipc_topic_subscribe(pyipc_topic *t, int start)
{
	int rc = enter(t);

	if (rc)
		return rc;
	pthread_mutex_lock(&t->mu);
	rc = t->sub >= 0 || t->forked ? -EALREADY : subscribe(t, start ? 1 : 0, 0, 0, 0);
	pthread_mutex_unlock(&t->mu);
	leave(t);
	return rc;
}

/* Before a subscriber's call; mu held: a forked child takes its own slot,
 * and after a repair() the slot's cursors are the truth. */
static int sub_ready(struct pyipc_topic *t)
{
	struct topic_slot *s;
	uint32_t e;

	if (unlikely(t->forked))
		return subscribe(t, 0, 1, t->read, t->next_seq);
	if (unlikely(t->sub < 0))
		return -EPERM;
	s = &t->slots[t->sub];
	e = atomic_load_explicit(&t->hdr->seg.epoch, memory_order_relaxed);
	if (unlikely(e != t->sub_epoch)) {
		t->sub_epoch = e;
		if (atomic_load(&s->owner) != t->seg.owner) /* repair() dropped us */
			return subscribe(t, 0, 1, t->read, t->next_seq);
		t->read = t->cached_tail = atomic_load(&s->read);
		t->next_seq = atomic_load(&s->next_seq);
	}
	return 0;
}

/* "overwrite": has the record at *pos been (or is it being) overwritten?
 * If so, *pos moves to the oldest record still intact, and *tail to a
 * tail read after it (so *pos <= *tail again). */
static inline int overtaken(struct pyipc_topic *t, uint64_t *pos, uint64_t *tail)
{
	uint64_t oldest;

	/* Acquire: the copy we just made comes before this look (the second
	 * read of a seqlock's stamp). */
	atomic_thread_fence(memory_order_acquire);
	oldest = atomic_load_explicit(&t->hdr->pub.oldest, memory_order_relaxed);
	if (likely(!before(*pos, oldest)))
		return 0;
	*pos = oldest;
	*tail = atomic_load_explicit(&t->hdr->pub.tail, memory_order_acquire);
	t->cached_tail = *tail;
	return 1;
}

/* A message received: account for its number (a gap is what we missed). */
static inline void count_seq(struct pyipc_topic *t, uint64_t seq, uint64_t len)
{
	if (seq > t->next_seq) {
		t->missed += seq - t->next_seq;
		t->next_seq = seq;
	}
	t->next_seq++;
	t->count++;
	t->bytes += len;
}

/*
 * Find the next message from t->read: skip records and (on "overwrite")
 * overwritten records are passed.  1 with the message at *pos and its
 * header in *h and size in *size, 0 none, -EBADMSG.  mu held.
 */
static int next_message(struct pyipc_topic *t, uint64_t *pos, uint64_t *tail, struct trec *h,
			uint64_t *len, uint64_t *size, int *fresh)
{
	struct topic_pub *p = &t->hdr->pub;
	int ow = t->overflow == TOPIC_OVERWRITE;

	for (;;) {
		int64_t sz;

		if (*pos == *tail) {
			if (*fresh)
				return 0;
			*fresh = 1;
			*tail = atomic_load_explicit(&p->tail, memory_order_acquire);
			t->cached_tail = *tail;
			if (*pos == *tail)
				return 0;
		}
		if (ow && overtaken(t, pos, tail))
			continue; /* fell a ring behind: go on from the oldest record */
		if (!span_ok(t, *pos, *tail))
			return -EBADMSG;
		read_hdr(t, *pos, h);
		sz = parse(t, h, *tail - *pos, len);
		if (ow && overtaken(t, pos, tail))
			continue; /* what we read may be torn */
		if (sz < 0)
			return -EBADMSG;
		*size = (uint64_t)sz;
		if (*len == SKIP_LEN) {
			*pos += *size;
			continue;
		}
		return 1;
	}
}

/* Receive up to max messages into buf; mu held.  How many (0: none yet),
 * -EMSGSIZE with *needed, or -EBADMSG. */
static int64_t sub_take(struct pyipc_topic *t, unsigned char *buf, uint64_t cap, uint64_t *lens,
			uint64_t max, uint64_t *needed)
{
	uint64_t pos = t->read, tail = t->cached_tail, off = 0, n = 0, start = pos;
	int ow = t->overflow == TOPIC_OVERWRITE, fresh = 0;
	int64_t rc = 0;

	while (n < max) {
		struct trec h;
		uint64_t len, size, here;
		int got = next_message(t, &pos, &tail, &h, &len, &size, &fresh);

		if (got <= 0) {
			rc = got;
			break;
		}
		if (len > cap - off) {
			if (!n) {
				*needed = len;
				rc = -EMSGSIZE;
			}
			break;
		}
		here = pos;
		if (len)
			memcpy(buf + off, at(t, pos) + TREC_HDR, len);
		if (ow && overtaken(t, &pos, &tail))
			continue; /* overwritten while we copied: thrown away */
		lens[n++] = len;
		off += len;
		count_seq(t, h.seq, len);
		pos = here + size;
	}
	if (pos != start) {
		t->read = pos;
		sub_publish(t);
		if (!ow)
			wake_publishers(t);
	}
	return n ? (int64_t)n : rc;
}

/* Wait for data without mu.  0 to retry, or -ETIMEDOUT / -EINTR / -EAGAIN. */
static int sub_sleep(struct pyipc_topic *t, int64_t deadline, int *spun)
{
	struct topic_pub *p = &t->hdr->pub;
	struct topic_slot *s = &t->slots[t->sub];
	int64_t start, until, wake_at;
	int rc, poll = 0;
	uint32_t v;

	rc = slice_begin(deadline, &until);
	if (rc == -EAGAIN) {
		/* Non-blocking: no sleep, but a dead publisher's reservation
		 * holding the tail ends now (see pub_sleep). */
		rc = reap_dead_reserves(t, deadline);
		return rc > 0 ? 0 : rc < 0 ? rc : -EAGAIN;
	}
	if (rc)
		return rc;
	if (!*spun) {
		*spun = 1;
		start = now_ns();
		for (int i = 0;; i++) {
			if (atomic_load(&p->tail) != atomic_load(&s->read) || stop_waiting(t))
				return 0;
			cpu_relax();
			if ((i & 63) == 63) {
				if (now_ns() - start > SPIN_NS)
					break;
				/* Subscribers often share a CPU: let one with work run
				 * rather than spin through its turn. */
				sched_yield();
			}
		}
	}
	/* An open reservation holds the tail; its holder may have died. */
	poll = atomic_load_explicit(&p->leases, memory_order_relaxed) != 0;
	rc = reap_dead_reserves(t, deadline);
	if (rc)
		return rc < 0 ? rc : 0;
	v = announce_sleeper(&p->data_evt);
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load(&p->tail) != atomic_load(&s->read) || stop_waiting(t))
		return 0;
	start = now_ns();
	if (start >= until)
		return slice_end(deadline, until);
	atomic_fetch_add_explicit(&s->waits, 1, memory_order_relaxed);
	wake_at = poll && start + LEASE_CHECK_NS < until ? start + LEASE_CHECK_NS : until;
	rc = futex_wait_until(&p->data_evt, v, wake_at);
	if (rc == -ETIMEDOUT)
		return wake_at < until ? 0 : slice_end(deadline, until);
	return rc;
}

int64_t pyipc_topic_recv_many(pyipc_topic *t, void *buf, uint64_t cap, uint64_t *lens,
			      uint64_t max, int64_t deadline, uint64_t *needed)
{
	int64_t rc = enter(t);
	int spun = 0;

	if (rc)
		return rc;
	if (max == 0) {
		rc = -EINVAL;
		goto out;
	}
	for (;;) {
		int shut = shutdown_state(t);

		if (unlikely(shut < 0)) {
			rc = shut;
			break;
		}
		pthread_mutex_lock(&t->mu);
		rc = sub_ready(t);
		if (!rc)
			rc = sub_take(t, buf, cap, lens, max, needed);
		pthread_mutex_unlock(&t->mu);
		if (rc)
			break;
		if (shut) {
			rc = -ESHUTDOWN; /* drained */
			break;
		}
		rc = sub_sleep(t, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&t->closing)) {
			rc = -EBADF;
			break;
		}
	}
out:
	leave(t);
	return rc;
}

int64_t pyipc_topic_recv(pyipc_topic *t, void *buf, uint64_t cap, int64_t deadline, uint64_t *needed)
{
	uint64_t len;
	int64_t rc = pyipc_topic_recv_many(t, buf, cap, &len, 1, deadline, needed);

	return rc == 1 ? (int64_t)len : rc;
}

/* ---- views ---------------------------------------------------------------- */

/* The oldest of this subscriber's open views, or HOLD_NONE. */
static uint64_t lowest_view(struct pyipc_topic *t)
{
	uint64_t low = HOLD_NONE;

	for (int i = 0; i < MAX_VIEWS && t->nviews; i++)
		if (t->vused[i] && (low == HOLD_NONE || before(t->vpos[i], low)))
			low = t->vpos[i];
	return low;
}

/* Take the next message as a view; mu held.  1 with its length in *len,
 * 0 none, -ENOSPC too many views, -EBADMSG. */
static int take_view(struct pyipc_topic *t, uint32_t *vi, uint64_t *vpos, uint64_t *vlen)
{
	struct topic_slot *s = &t->slots[t->sub];
	uint64_t pos = t->read, tail = t->cached_tail, start = pos, len = 0, size = 0;
	int fresh = 0, i, got;
	struct trec h;

	for (i = 0; i < MAX_VIEWS && t->vused[i]; i++)
		;
	if (i == MAX_VIEWS)
		return -ENOSPC;
	for (;;) {
		got = next_message(t, &pos, &tail, &h, &len, &size, &fresh);
		if (got <= 0 || t->overflow == TOPIC_BLOCK)
			break;
		/*
		 * "overwrite": publishers do not wait for our cursor, only for
		 * holds.  Register the hold under their lock, where they look
		 * for holds, and only if the record is still intact then; from
		 * there on nobody writes over it until we let go.
		 */
		got = pub_lock_forever(t);
		if (got)
			break;
		if (before(pos, atomic_load(&t->hdr->pub.oldest))) {
			pub_unlock(t);
			continue; /* overwritten meanwhile: next_message moves on */
		}
		read_hdr(t, pos, &h);
		if (parse(t, &h, tail - pos, &len) != (int64_t)size || len == SKIP_LEN) {
			pub_unlock(t);
			got = -EBADMSG;
			break;
		}
		if (atomic_load(&s->hold) == HOLD_NONE) {
			atomic_store(&s->hold, pos);
			atomic_fetch_add(&t->hdr->views_open, 1);
		}
		pub_unlock(t);
		got = 1;
		break;
	}
	if (got == 1) {
		t->vused[i] = 1;
		t->vpos[i] = pos;
		t->nviews++;
		atomic_store(&s->views, t->nviews);
		count_seq(t, h.seq, len);
		pos += size;
		*vi = (uint32_t)i;
		*vpos = pos - size;
		*vlen = len;
	}
	if (pos != start || got == 1) {
		t->read = pos;
		sub_publish(t);
	}
	return got;
}

int64_t pyipc_topic_view(pyipc_topic *t, int64_t deadline, struct pyipc_lease *out)
{
	uint32_t *slot = &out->slot;
	uint64_t *pos = &out->pos;
	int64_t rc = enter(t);
	int spun = 0;

	if (rc)
		return rc;
	for (;;) {
		int shut = shutdown_state(t);
		uint64_t len = 0;

		if (shut < 0) {
			rc = shut;
			break;
		}
		pthread_mutex_lock(&t->mu);
		rc = sub_ready(t);
		if (!rc)
			rc = take_view(t, slot, pos, &len);
		pthread_mutex_unlock(&t->mu);
		if (rc == 1) {
			atomic_fetch_add(&t->leases, 1);
			out->ptr = (char *)at(t, *pos) + TREC_HDR;
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
		rc = sub_sleep(t, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&t->closing)) {
			rc = -EBADF;
			break;
		}
	}
	leave(t);
	return rc;
}

int pyipc_topic_release(pyipc_topic *t, const struct pyipc_lease *l)
{
	uint32_t vi = l->slot;
	uint64_t pos = l->pos;
	struct topic_slot *s;
	uint64_t low;

	if (vi >= MAX_VIEWS || atomic_load(&t->unmapped))
		return -ESTALE;
	pthread_mutex_lock(&t->mu);
	if (t->sub < 0 || t->forked || !t->vused[vi] || t->vpos[vi] != pos) {
		pthread_mutex_unlock(&t->mu);
		lease_gone(t);
		return -ESTALE;
	}
	s = &t->slots[t->sub];
	t->vused[vi] = 0;
	t->nviews--;
	atomic_store(&s->views, t->nviews);
	low = lowest_view(t);
	if (t->overflow == TOPIC_OVERWRITE && atomic_load(&s->hold) != low) {
		/* No lock: a publisher that sees the old hold only waits longer,
		 * and our wake below ends that wait. */
		if (low == HOLD_NONE)
			atomic_fetch_sub(&t->hdr->views_open, 1);
		atomic_store(&s->hold, low);
	}
	sub_publish(t);
	wake_publishers(t);
	pthread_mutex_unlock(&t->mu);
	lease_gone(t);
	return 0;
}

/* ---- event-loop waits ------------------------------------------------------- */

/* Lock-free: would a publish of a record of `size` bytes find room now?
 * If not, *b says what is in the way. */
static int room_now(struct pyipc_topic *t, uint64_t size, struct blocker *b)
{
	struct topic_pub *p = &t->hdr->pub;
	uint64_t target = atomic_load(&p->claim) + size - t->cap;
	uint64_t tail = atomic_load(&p->tail);
	uint32_t hi = atomic_load(&p->hi);

	if (before(tail, target)) {
		b->kind = BLK_TAIL;
		b->target = target;
		return 0;
	}
	if (hi > t->max_subs)
		hi = t->max_subs;
	for (uint32_t i = 0; i < hi; i++) {
		struct topic_slot *s = &t->slots[i];
		uint32_t owner = atomic_load(&s->owner);
		uint64_t g = t->overflow == TOPIC_BLOCK ? atomic_load(&s->gate) : atomic_load(&s->hold);

		if (owner && g != HOLD_NONE && before(g, target)) {
			b->kind = BLK_SLOT;
			b->slot = i;
			b->owner = owner;
			b->target = target;
			return 0;
		}
	}
	return 1;
}

static int data_now(struct pyipc_topic *t)
{
	return atomic_load(&t->hdr->pub.tail) != atomic_load(&t->slots[t->sub].read);
}

int pyipc_topic_arm(pyipc_topic *t, int for_space, uint64_t need, uint32_t **word, uint32_t *val)
{
	struct topic_pub *p;
	_Atomic uint32_t *evt;
	struct blocker b;
	int rc = enter(t), poll = 0;

	if (rc)
		return rc;
	p = &t->hdr->pub;
	if (!for_space) {
		pthread_mutex_lock(&t->mu);
		rc = sub_ready(t);
		pthread_mutex_unlock(&t->mu);
		if (rc)
			goto out;
		rc = 1;
		if (data_now(t) || stop_waiting(t))
			goto out;
		if (atomic_load(&p->leases)) {
			poll = 1;
			if (dead_leases(&t->seg, t->hdr->reserves))
				goto out; /* the caller's attempt (or wait) reaps it */
		}
		evt = &p->data_evt;
		*val = announce_sleeper(evt);
		atomic_thread_fence(memory_order_seq_cst);
		if (data_now(t) || stop_waiting(t))
			goto out;
	} else {
		if (need > t->max_msg) {
			rc = -EMSGSIZE; /* no room ever comes */
			goto out;
		}
		rc = 1;
		if (stop_waiting(t) || room_now(t, trec_size(need), &b))
			goto out;
		if (b.kind == BLK_SLOT) {
			poll = 1; /* a subscriber may die without a wake */
			evt = &t->slots[b.slot].evt;
		} else {
			poll = atomic_load(&p->leases) != 0;
			evt = &p->data_evt;
		}
		*val = announce_sleeper(evt);
		atomic_thread_fence(memory_order_seq_cst);
		if (blocker_gone(t, &b) || stop_waiting(t))
			goto out;
	}
	*word = (uint32_t *)evt;
	rc = poll ? 2 : 0;
out:
	leave(t);
	return rc;
}

int pyipc_topic_wait(pyipc_topic *t, int for_space, uint64_t need, int64_t deadline)
{
	struct blocker b;
	int spun = 0, rc = enter(t);

	if (rc)
		return rc;
	if (!for_space) {
		pthread_mutex_lock(&t->mu);
		rc = sub_ready(t);
		pthread_mutex_unlock(&t->mu);
	} else if (need > t->max_msg) {
		rc = -EMSGSIZE;
	}
	while (!rc) {
		if (stop_waiting(t))
			break;
		if (!for_space) {
			if (data_now(t))
				break;
			rc = sub_sleep(t, deadline, &spun);
		} else {
			if (room_now(t, trec_size(need), &b))
				break;
			rc = pub_sleep(t, &b, deadline, &spun);
		}
	}
	leave(t);
	return rc;
}

/* ---- shutdown and inspection ------------------------------------------------ */

int pyipc_topic_shutdown(pyipc_topic *t)
{
	uint32_t cur = 0;
	int rc = enter(t);

	if (rc)
		return rc;
	atomic_compare_exchange_strong(&t->hdr->seg.shutdown, &cur, SHUT_DRAIN);
	wake_all_words(t);
	leave(t);
	return 0;
}

int pyipc_topic_subscribers(pyipc_topic *t)
{
	uint32_t hi;
	int n = 0, rc = enter(t);

	if (rc)
		return rc;
	rc = pub_lock_forever(t);
	if (rc)
		goto out;
	hi = atomic_load(&t->hdr->pub.hi);
	if (hi > t->max_subs)
		hi = t->max_subs;
	for (uint32_t i = 0; i < hi; i++) {
		uint32_t owner = atomic_load(&t->slots[i].owner);

		if (!owner)
			continue;
		if (owner_liveness(t->seg.fd, t->seg.owner, owner) == OWNER_DEAD && reap_slot(t, i, owner))
			continue;
		n++;
	}
	pub_unlock(t);
	rc = n;
out:
	leave(t);
	return rc;
}

int64_t pyipc_topic_pending(pyipc_topic *t)
{
	struct topic_pub *p;
	uint64_t tail_seq, first, oldest_seq, n;
	int64_t rc = enter(t);

	if (rc)
		return rc;
	p = &t->hdr->pub;
	pthread_mutex_lock(&t->mu);
	rc = sub_ready(t);
	first = t->next_seq;
	pthread_mutex_unlock(&t->mu);
	if (rc)
		goto out;
	oldest_seq = atomic_load(&p->oldest_seq);
	tail_seq = atomic_load(&p->tail_seq);
	if (first < oldest_seq)
		first = oldest_seq; /* those before are lost, and will count as missed */
	n = tail_seq - first;
	rc = n > t->cap / TREC_HDR ? 0 : (int64_t)n; /* never report garbage */
out:
	leave(t);
	return rc;
}

int64_t pyipc_topic_missed(pyipc_topic *t)
{
	int64_t rc = enter(t);

	if (rc)
		return rc;
	pthread_mutex_lock(&t->mu);
	rc = sub_ready(t);
	if (!rc)
		rc = (int64_t)t->missed;
	pthread_mutex_unlock(&t->mu);
	leave(t);
	return rc;
}

int pyipc_topic_info(pyipc_topic *t, struct pyipc_topic_info *out)
{
	struct topic_hdr *h;
	uint32_t hi;
	int rc = enter(t), shut;

	if (rc)
		return rc;
	h = t->hdr;
	memset(out, 0, sizeof(*out));
	out->capacity = t->cap;
	out->max_message_size = t->max_msg;
	out->hdr_size = t->seg.hdr_size;
	out->published = atomic_load(&h->pub.tail_seq);
	out->bytes_published = atomic_load(&h->pub.bytes);
	out->oldest_seq = atomic_load(&h->pub.oldest_seq);
	out->retained = out->published - out->oldest_seq;
	if (out->retained > t->cap / TREC_HDR)
		out->retained = 0;
	out->bytes_used = atomic_load(&h->pub.claim) - atomic_load(&h->pub.oldest);
	if (out->bytes_used > t->cap)
		out->bytes_used = 0;
	out->publish_waits = atomic_load(&h->pub.waits);
	out->recoveries = atomic_load(&h->seg.recoveries);
	out->max_subscribers = t->max_subs;
	hi = atomic_load(&h->pub.hi);
	if (hi > t->max_subs)
		hi = t->max_subs;
	for (uint32_t i = 0; i < hi; i++)
		out->subscribers += atomic_load(&t->slots[i].owner) != 0;
	out->overflow = (uint32_t)t->overflow;
	out->reserves = atomic_load(&h->pub.leases);
	if (out->reserves > PYIPC_MAX_LEASES)
		out->reserves = 0;
	out->views = atomic_load(&h->views_open);
	if (out->views > t->max_subs)
		out->views = 0;
	out->version = PYIPC_LAYOUT_VERSION;
	shut = shutdown_state(t);
	out->shutdown = shut < 0 ? 3 : (uint32_t)shut;
	out->creator_pid = h->seg.creator_pid;
	out->owner = t->seg.owner;
	leave(t);
	return 0;
}

int pyipc_topic_sub_info(pyipc_topic *t, uint32_t i, struct pyipc_topic_sub_info *out)
{
	struct topic_slot *s;
	uint64_t tail, tail_seq, next;
	enum liveness l;
	int rc;

	if (i >= t->max_subs)
		return -EINVAL;
	rc = enter(t);
	if (rc)
		return rc;
	s = &t->slots[i];
	memset(out, 0, sizeof(*out));
	out->owner = atomic_load(&s->owner);
	if (!out->owner) {
		rc = -ENOENT;
		goto out;
	}
	out->slot = i;
	l = owner_liveness(t->seg.fd, t->seg.owner, out->owner);
	out->alive = l == OWNER_ALIVE ? 1 : l == OWNER_DEAD ? 0 : 2;
	out->views = atomic_load(&s->views);
	tail = atomic_load(&t->hdr->pub.tail);
	tail_seq = atomic_load(&t->hdr->pub.tail_seq);
	next = atomic_load(&s->next_seq);
	out->lag = tail_seq - next > t->cap ? 0 : tail_seq - next;
	out->behind = tail - atomic_load(&s->read);
	if (out->behind > (uint64_t)INT64_MAX)
		out->behind = 0;
	out->received = atomic_load(&s->count);
	out->bytes = atomic_load(&s->bytes);
	out->missed = atomic_load(&s->missed);
	out->waits = atomic_load(&s->waits);
out:
	leave(t);
	return rc;
}

/* ---- check and repair --------------------------------------------------------- */

static int geometry_ok(const struct pyipc_topic *t)
{
	const struct seg_hdr *s = &t->hdr->seg;

	return s->magic == SEG_MAGIC && s->version == PYIPC_LAYOUT_VERSION &&
	       s->kind == PYIPC_KIND_TOPIC && s->hdr_size == t->seg.hdr_size && s->capacity == t->cap &&
	       s->max_msg == t->max_msg && s->params[0] == t->max_subs &&
	       s->params[1] == (uint32_t)t->overflow;
}

/* Walk the records in [from, to): how many messages, or -EBADMSG; *end is
 * where the walk stopped. */
static int64_t walk(struct pyipc_topic *t, uint64_t from, uint64_t to, uint64_t *end)
{
	int64_t n = 0, size;
	uint64_t len;
	struct trec h;

	while (from != to) {
		read_hdr(t, from, &h);
		size = parse(t, &h, to - from, &len);
		if (size < 0)
			break;
		if (len != SKIP_LEN)
			n++;
		from += (uint64_t)size;
	}
	*end = from;
	return from == to ? n : -EBADMSG;
}

/* Would keep_leases() drop anything from the reservations? */
static int keep_leases_would_drop(struct pyipc_topic *t, uint64_t lo, uint64_t hi)
{
	struct lease *tab = t->hdr->reserves;

	for (int i = 0; i < PYIPC_MAX_LEASES; i++) {
		uint32_t owner = atomic_load(&tab[i].owner);
		uint64_t pos = atomic_load(&tab[i].pos), end = tab[i].end;

		if (owner && (tab[i].check != lease_check(pos, end, owner) || ((pos | end) & 7) ||
			      end <= pos || pos - lo > hi - lo || end - lo > hi - lo))
			return 1;
	}
	return 0;
}

int64_t pyipc_topic_check(pyipc_topic *t)
{
	struct topic_pub *p;
	uint64_t claim, tail, oldest, end;
	int64_t rc = enter(t), n = 0;

	if (rc)
		return rc;
	p = &t->hdr->pub;
	if (shutdown_state(t) < 0 || !geometry_ok(t)) {
		rc = -EBADMSG;
		goto out;
	}
	/* Bounded: a lock scribbled into a held state must not hang a check. */
	rc = pub_lock(t, now_ns() + SLICE_NS);
	if (rc)
		goto out;
	claim = atomic_load(&p->claim);
	tail = atomic_load(&p->tail);
	oldest = atomic_load(&p->oldest);
	if (!span_ok(t, oldest, tail) || !span_ok(t, tail, claim) || !span_ok(t, oldest, claim))
		rc = -EBADMSG;
	else
		rc = n = walk(t, oldest, tail, &end);
	if (rc >= 0 && walk(t, tail, claim, &end) < 0)
		rc = -EBADMSG;
	if (rc >= 0 && keep_leases_would_drop(t, tail, claim))
		rc = -EBADMSG;
	for (uint32_t i = 0; rc >= 0 && i < t->max_subs; i++) {
		struct topic_slot *s = &t->slots[i];
		uint64_t g = atomic_load(&s->gate), r = atomic_load(&s->read);

		if (!atomic_load(&s->owner))
			continue;
		if ((g | r) & 7 || before(tail, r) || before(tail, g) ||
		    (t->overflow == TOPIC_BLOCK && (before(g, oldest) || before(r, g))))
			rc = -EBADMSG;
	}
	pub_unlock(t);
out:
	leave(t);
	return rc < 0 ? rc : n;
}

/* Take the publishers' lock for repair(): a dead holder's state is rebuilt
 * below anyway. */
static int repair_lock(struct pyipc_topic *t)
{
	int rc;

	do
		rc = lock_take(&t->hdr->pub.lock, &t->seg, FOREVER);
	while (rc == -EINTR);
	if (rc == LOCK_RECOVERED) {
		atomic_fetch_add(&t->hdr->seg.recoveries, 1);
		rc = 0;
	}
	return rc;
}

int64_t pyipc_topic_repair(pyipc_topic *t)
{
	struct topic_hdr *h;
	struct topic_pub *p;
	uint64_t claim, tail, oldest, end, limit, retained, seq, pos, views = 0;
	int64_t kept, dropped = 0;
	int64_t rc = enter(t);

	if (rc)
		return rc;
	h = t->hdr;
	p = &h->pub;
	rc = repair_lock(t);
	if (rc)
		goto out;
	/* The shared geometry, for handles that attach from now on. */
	h->seg.version = PYIPC_LAYOUT_VERSION;
	h->seg.kind = PYIPC_KIND_TOPIC;
	h->seg.hdr_size = t->seg.hdr_size;
	h->seg.capacity = t->cap;
	h->seg.max_msg = t->max_msg;
	h->seg.params[0] = t->max_subs;
	h->seg.params[1] = (uint32_t)t->overflow;
	atomic_store((_Atomic uint64_t *)&h->seg.magic, SEG_MAGIC);
	if (shutdown_state(t) < 0)
		atomic_store(&h->seg.shutdown, 0);

	/*
	 * `oldest` is the anchor: records are read from there, as far as the
	 * claim (or the tail) when it is a plausible distance ahead.
	 */
	claim = atomic_load(&p->claim);
	tail = atomic_load(&p->tail);
	oldest = atomic_load(&p->oldest) & ~7ull;
	limit = span_ok(t, oldest, claim) ? claim : span_ok(t, oldest, tail) ? tail : oldest;
	kept = walk(t, oldest, limit, &end);
	if (kept < 0)
		kept = walk(t, oldest, end, &end);
	if (!span_ok(t, oldest, tail) || before(end, tail))
		tail = end;
	retained = atomic_load(&p->tail_seq) - atomic_load(&p->oldest_seq);
	/* Number the records again from the oldest one's number. */
	seq = atomic_load(&p->oldest_seq);
	kept = 0;
	for (pos = oldest; pos != tail;) {
		struct trec r;
		uint64_t len = SKIP_LEN;
		int64_t sz;

		read_hdr(t, pos, &r);
		sz = parse(t, &r, tail - pos, &len);
		if (sz < 0)
			break; /* cannot be: walk() validated [oldest, end) */
		r.seq = seq;
		memcpy(at(t, pos), &r, sizeof(r));
		if (len != SKIP_LEN) {
			seq++;
			kept++;
		}
		pos += (uint64_t)sz;
	}
	if (retained <= t->cap / TREC_HDR && retained > (uint64_t)kept)
		dropped = (int64_t)(retained - (uint64_t)kept);
	else if (retained > t->cap / TREC_HDR && end != limit)
		dropped = 1; /* at least the damaged one */
	atomic_store(&p->oldest, oldest);
	atomic_store(&p->claim, end);
	atomic_store(&p->tail_seq, seq);
	atomic_store(&p->tail, tail);
	atomic_store(&p->done, atomic_load(&p->log.seq));
	keep_leases(h->reserves, t->cap, tail, end);
	republish(t);
	tail = atomic_load(&p->tail);
	set_oldest_seq(t, oldest);
	/* Slots: cursors put back within [oldest, tail]. */
	for (uint32_t i = 0; i < t->max_subs; i++) {
		struct topic_slot *s = &t->slots[i];
		uint64_t r = atomic_load(&s->read), hold = atomic_load(&s->hold);

		if (!atomic_load(&s->owner))
			continue;
		if ((r & 7) || before(tail, r) || (t->overflow == TOPIC_BLOCK && before(r, oldest))) {
			atomic_store(&s->read, oldest);
			atomic_store(&s->next_seq, atomic_load(&p->oldest_seq));
			r = oldest;
		}
		if (hold != HOLD_NONE && ((hold & 7) || before(hold, oldest) || before(tail, hold)))
			hold = HOLD_NONE;
		atomic_store(&s->hold, hold);
		views += hold != HOLD_NONE;
		atomic_store(&s->gate, hold != HOLD_NONE && before(hold, r) ? hold : r);
	}
	atomic_store(&h->views_open, (uint32_t)views);
	atomic_store(&p->hi, t->max_subs);
	shrink_hi(t);
	atomic_fetch_add(&p->subs_gen, 1);
	/* Every handle's cached cursors may now be ahead of the truth. */
	atomic_fetch_add(&h->seg.epoch, 1);
	t->gate_ok = 0;
	pub_unlock(t);
	wake_all_words(t);
	rc = dropped;
out:
	leave(t);
	return rc;
}
