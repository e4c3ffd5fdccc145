// SPDX-License-Identifier: MIT
/*
 * waitset.c - futex words watched by helper threads for an event loop.
 *
 * Why this design (see also waitset_api.h).  An asyncio loop sleeps in
 * epoll; the ring's sleepers sleep on futex words in the segment.  The ways
 * to bridge them that were weighed:
 *
 *  - a thread per waiter (or per wait, in the loop's executor): what this
 *    replaces.  Threads grow with waiters, and executor threads are shared
 *    with run_in_executor() and getaddrinfo(), which then queue behind the
 *    waits.
 *  - a doorbell in the segment (an eventfd passed over a UNIX socket, or a
 *    datagram socket, rung by producers that see an async waiter
 *    registered): it puts a registry of descriptors or addresses in shared
 *    memory, which every producer must read and trust, and which a killed
 *    process leaves behind; and it changes the segment's layout.
 *  - this: helper threads of the waiting process sleep in futex_waitv(2) on
 *    the same event counts that synchronous sleepers use, so the producers'
 *    code and the segment stay exactly as they are: a put makes its one wake
 *    call only when the waiter bit is set, whoever set it.  One helper
 *    watches up to 127 words (the kernel's limit of 128, less the helper's
 *    own control word), so a thousand waits on a thousand rings cost eight
 *    threads, and an idle waitset costs no thread at all.
 *
 * Each helper's wait vector holds a private control word first: adding a
 * word bumps it and wakes the helper, which rebuilds its vector at once.
 * A removed word is not taken out of a sleeping helper's vector (no system
 * call to remove one, unless it was the helper's last): the kernel only
 * compares and queues on that address, and the helper reads words in user
 * space only under the lock that pyipc_waitset_remove() takes, so nothing
 * here touches memory that has been unmapped.  At worst a removed word's
 * wake costs that helper one rescan.
 *
 * The fallback, for kernels without futex_waitv (before 5.16) or seccomp
 * filters that refuse it, is one helper thread per watched word, each in
 * FUTEX_WAIT.  Its costs, documented in the README: a thread (with a
 * 256 KiB stack reservation) per word being waited on; removing a word still
 * watched wakes every sleeper on it, in every process (they look and sleep
 * again), because that is the only way to make the helper let go of it; and
 * each such helper wakes once a second to catch the one case where that
 * wake races with its going to sleep.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "forksafe.h"
#include "internal.h"
#include "pyipc_api.h"

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on every architecture */
#endif

#define WAITV_MAX 128                    /* FUTEX_WAITV_MAX */
#define WAITV_WORDS (WAITV_MAX - 1)      /* less the control word */
#define SIZE_U32 0x02                    /* FUTEX2_SIZE_U32 */
#define PRIVATE 128                      /* FUTEX2_PRIVATE == FUTEX_PRIVATE_FLAG */
#define IDLE_NS 2000000000ll             /* a helper with no word leaves after this */
#define RECHECK_NS 1000000000ll          /* fallback: see the file comment */
#define HELPER_STACK (256 * 1024)        /* plenty for a loop around one system call */

/* One entry of futex_waitv's vector (struct futex_waitv in linux/futex.h,
 * spelled out so that older kernel headers build too). */
struct waitv {
	uint64_t val;
	uint64_t uaddr;
	uint32_t flags;
	uint32_t reserved;
};

enum { SLOT_FREE, SLOT_WAITING, SLOT_FIRED };

struct slot {
	_Atomic uint32_t *word;
	uint32_t val;
	uint32_t state;
	uint64_t token;
};

struct helper {
	struct pyipc_waitset *ws;
	_Atomic uint32_t ctl; /* bumped to make the helper look at its slots again */
	int running;          /* a thread serves this helper */
	int busy;             /* fallback: its thread sleeps on a word, deaf to ctl */
	unsigned used;        /* slots not free */
	unsigned waiting;     /* slots in SLOT_WAITING */
	struct slot slots[];
};

struct pyipc_waitset {
	pthread_mutex_t mu;
	struct fork_hook fork_hook;
	_Atomic int orphaned; /* set in a forked child, where no helper runs */
	int efd;
	int mode;
	unsigned per;         /* slots per helper */
	int stop;
	unsigned refs;        /* the owner, plus one per running helper */
	struct helper **helpers;
	unsigned nhelpers, helpers_cap;
	uint64_t *ready;      /* tokens of fired words, oldest first */
	size_t nready, ready_cap;
	size_t waiting;       /* slots in SLOT_WAITING, over all helpers */
	size_t used;          /* slots not free, over all helpers */
	unsigned threads;     /* helpers with a running thread */
};

/* ---- system calls ------------------------------------------------------ */

static long futex_waitv(struct waitv *v, unsigned n, const struct timespec *abs_timeout)
{
	return syscall(SYS_futex_waitv, v, n, 0, abs_timeout, CLOCK_MONOTONIC);
}

/* Is futex_waitv usable here?  A vector of one word that does not hold the
 * value asked for returns EAGAIN at once where it is; ENOSYS (old kernel)
 * or EPERM (a seccomp filter) where it is not. */
static int have_waitv(void)
{
	uint32_t word = 0;
	struct waitv v = { .val = 1, .uaddr = (uintptr_t)&word, .flags = SIZE_U32 | PRIVATE };

	return futex_waitv(&v, 1, NULL) < 0 && errno == EAGAIN;
}

static void wake_private(_Atomic uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void wait_private(_Atomic uint32_t *word, uint32_t val, int64_t until)
{
	struct timespec ts = ns_to_timespec(until);

	syscall(SYS_futex, word, FUTEX_WAIT_BITSET_PRIVATE, val, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
}

static void signal_loop(int efd)
{
	uint64_t one = 1;

	/* EAGAIN only if the counter is near 2^64: the loop is woken anyway. */
	if (write(efd, &one, sizeof(one)) < 0)
		return;
}

/* ---- lifetime ---------------------------------------------------------- */

static void destroy(struct pyipc_waitset *ws)
{
	for (unsigned i = 0; i < ws->nhelpers; i++)
		free(ws->helpers[i]);
	free(ws->helpers);
	free(ws->ready);
	close(ws->efd);
	pthread_mutex_destroy(&ws->mu);
	free(ws);
}

/* fork() copies no helper thread, and perhaps a lock one of them held: the
 * child's copy of a waitset must never be used, only freed. */
static void in_child(struct fork_hook *hook)
{
	struct pyipc_waitset *ws = (struct pyipc_waitset *)((char *)hook -
							     offsetof(struct pyipc_waitset, fork_hook));

	atomic_store_explicit(&ws->orphaned, 1, memory_order_relaxed);
}

int pyipc_waitset_new(int flags, pyipc_waitset **out)
{
	struct pyipc_waitset *ws = calloc(1, sizeof(*ws));
	int rc;

	if (!ws)
		return -ENOMEM;
	rc = -pthread_mutex_init(&ws->mu, NULL);
	if (rc)
		goto err_free;
	ws->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ws->efd < 0) {
		rc = -errno;
		goto err_mutex;
	}
	ws->mode = (!(flags & PYIPC_WAITSET_THREADS) && have_waitv()) ? PYIPC_WAITSET_MODE_WAITV
								       : PYIPC_WAITSET_MODE_THREADS;
	ws->per = ws->mode == PYIPC_WAITSET_MODE_WAITV ? WAITV_WORDS : 1;
	ws->refs = 1;
	ws->fork_hook.in_child = in_child;
	rc = forksafe_add(&ws->fork_hook);
	if (rc)
		goto err_fd;
	*out = ws;
	return 0;

err_fd:
	close(ws->efd);
err_mutex:
	pthread_mutex_destroy(&ws->mu);
err_free:
	free(ws);
	return rc;
}

void pyipc_waitset_free(pyipc_waitset *ws)
{
	int last;

	if (!ws)
		return;
	forksafe_remove(&ws->fork_hook);
	if (atomic_load_explicit(&ws->orphaned, memory_order_relaxed)) {
		/* A forked child: its helpers were never copied; its lock may
		 * have been copied held.  Nobody else can see this memory. */
		destroy(ws);
		return;
	}
	pthread_mutex_lock(&ws->mu);
	ws->stop = 1;
	/* Wake under the lock: once it is released, the last helper to leave
	 * frees everything. */
	for (unsigned i = 0; i < ws->nhelpers; i++) {
		if (ws->helpers[i]->running) {
			atomic_fetch_add(&ws->helpers[i]->ctl, 1);
			wake_private(&ws->helpers[i]->ctl);
		}
	}
	last = --ws->refs == 0;
	pthread_mutex_unlock(&ws->mu);
	if (last)
		destroy(ws);
}

int pyipc_waitset_fd(const pyipc_waitset *ws)
{
	return ws->efd;
}

int pyipc_waitset_mode(const pyipc_waitset *ws)
{
	return ws->mode;
}

/* ---- the helper thread ------------------------------------------------- */

/* Fire slot s of h (its word moved): queue its token.  Under the lock. */
static void fire(struct pyipc_waitset *ws, struct helper *h, struct slot *s)
{
	s->state = SLOT_FIRED;
	h->waiting--;
	ws->waiting--;
	/* pyipc_waitset_add() keeps room for every slot still waiting. */
	ws->ready[ws->nready++] = s->token;
}

/*
 * Look at every waiting slot; fire those whose word moved, put the others
 * into v (from v[first] on).  Returns how many went into v; *fired tells
 * whether the loop must be signalled.  Under the lock: this is the only
 * place that reads a registered word, see the file comment.
 */
static unsigned scan(struct pyipc_waitset *ws, struct helper *h, struct waitv *v, unsigned first,
		     int *fired)
{
	unsigned n = first;
	int was_empty = ws->nready == 0;

	*fired = 0;
	for (unsigned i = 0; i < ws->per; i++) {
		struct slot *s = &h->slots[i];

		if (s->state != SLOT_WAITING)
			continue;
		if (atomic_load(s->word) != s->val) {
			fire(ws, h, s);
			*fired = was_empty; /* the loop drains it all: signal once */
			continue;
		}
		v[n].val = s->val;
		v[n].uaddr = (uintptr_t)s->word;
		v[n].flags = SIZE_U32; /* shared: the word is in other processes' memory */
		v[n].reserved = 0;
		n++;
	}
	return n - first;
}

/*
 * A helper with nothing to wait on: 1 if it should leave (no slot used for
 * IDLE_NS), else 0 with *idle_since set to when the idle spell began.
 * Fired slots the loop has not removed yet keep it, and restart the spell.
 */
static int idle(struct helper *h, int64_t *idle_since)
{
	int64_t t = now_ns();

	if (!*idle_since) {
		*idle_since = t;
	} else if (t - *idle_since >= IDLE_NS) {
		if (h->used == 0)
			return 1;
		*idle_since = t;
	}
	return 0;
}

/* futex_waitv mode: sleep on the control word and every waiting slot. */
static int serve_waitv(struct pyipc_waitset *ws, struct helper *h, int64_t *idle_since)
{
	struct waitv v[WAITV_MAX];
	struct timespec ts;
	int fired;
	unsigned n = scan(ws, h, v, 1, &fired);

	if (n == 0) {
		if (idle(h, idle_since))
			return 1;
		ts = ns_to_timespec(*idle_since + IDLE_NS);
	} else {
		*idle_since = 0;
	}
	v[0].val = atomic_load(&h->ctl);
	v[0].uaddr = (uintptr_t)&h->ctl;
	v[0].flags = SIZE_U32 | PRIVATE;
	v[0].reserved = 0;
	pthread_mutex_unlock(&ws->mu);
	if (fired)
		signal_loop(ws->efd);
	/* Any outcome (a wake, a word that moved, the timeout, even EFAULT for
	 * a word removed and unmapped since the scan) just means: look again. */
	futex_waitv(v, n + 1, n ? NULL : &ts);
	pthread_mutex_lock(&ws->mu);
	return 0;
}

/* Fallback mode: one word, in FUTEX_WAIT; or, without one, the control word. */
static int serve_one(struct pyipc_waitset *ws, struct helper *h, int64_t *idle_since)
{
	struct slot *s = &h->slots[0];

	if (s->state == SLOT_WAITING) {
		_Atomic uint32_t *word = s->word;
		uint32_t val = s->val;

		*idle_since = 0;
		if (atomic_load(word) != val) {
			int was_empty = ws->nready == 0;

			fire(ws, h, s);
			pthread_mutex_unlock(&ws->mu);
			if (was_empty)
				signal_loop(ws->efd);
			pthread_mutex_lock(&ws->mu);
			return 0;
		}
		h->busy = 1;
		pthread_mutex_unlock(&ws->mu);
		futex_wait_until(word, val, now_ns() + RECHECK_NS);
		pthread_mutex_lock(&ws->mu);
		h->busy = 0;
		return 0;
	}
	if (idle(h, idle_since))
		return 1;
	{
		uint32_t c = atomic_load(&h->ctl);

		pthread_mutex_unlock(&ws->mu);
		wait_private(&h->ctl, c, *idle_since + IDLE_NS);
		pthread_mutex_lock(&ws->mu);
	}
	return 0;
}

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	struct pyipc_waitset *ws = h->ws;
	int64_t idle_since = 0;
	int last;

	pthread_mutex_lock(&ws->mu);
	while (!ws->stop) {
		int leave = ws->mode == PYIPC_WAITSET_MODE_WAITV ? serve_waitv(ws, h, &idle_since)
								  : serve_one(ws, h, &idle_since);

		/* Decided under the lock: no word can be added to h meanwhile. */
		if (leave)
			break;
	}
	h->running = 0;
	ws->threads--;
	last = --ws->refs == 0;
	pthread_mutex_unlock(&ws->mu);
	if (last)
		destroy(ws);
	return NULL;
}

/* Start h's thread.  Under the lock. */
static int start_helper(struct pyipc_waitset *ws, struct helper *h)
{
	pthread_attr_t attr;
	pthread_t thread;
	sigset_t all, old;
	int rc;

	rc = pthread_attr_init(&attr);
	if (rc)
		return -rc;
	rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (!rc)
		rc = pthread_attr_setstacksize(&attr, HELPER_STACK);
	if (rc)
		goto out;
	/* Signals are for the interpreter's threads: the helper inherits a
	 * mask that blocks them all, so none is ever delivered to it. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&thread, &attr, helper_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!rc) {
		h->running = 1;
		ws->refs++;
		ws->threads++;
	}
out:
	pthread_attr_destroy(&attr);
	return -rc;
}

/* ---- add, remove, ready ------------------------------------------------ */

/* A helper with a free slot that can take a word now, or a new one.
 * Under the lock. */
static int pick_helper(struct pyipc_waitset *ws, unsigned *index)
{
	struct helper *h;

	for (unsigned i = 0; i < ws->nhelpers; i++) {
		h = ws->helpers[i];
		/* A busy fallback helper sleeps on a removed word until it
		 * notices: it cannot take another yet. */
		if (h->used < ws->per && !h->busy) {
			*index = i;
			return 0;
		}
	}
	if (ws->nhelpers == ws->helpers_cap) {
		unsigned cap = ws->helpers_cap ? 2 * ws->helpers_cap : 4;
		struct helper **p = realloc(ws->helpers, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		ws->helpers = p;
		ws->helpers_cap = cap;
	}
	h = calloc(1, sizeof(*h) + ws->per * sizeof(struct slot));
	if (!h)
		return -ENOMEM;
	h->ws = ws;
	*index = ws->nhelpers;
	ws->helpers[ws->nhelpers++] = h;
	return 0;
}

int pyipc_waitset_add(pyipc_waitset *ws, uint32_t *word, uint32_t val, uint64_t token,
		      uint32_t *slot)
{
	struct helper *h;
	struct slot *s;
	unsigned hi, si;
	int rc = 0;

	if (atomic_load_explicit(&ws->orphaned, memory_order_relaxed))
		return -ECHILD;
	pthread_mutex_lock(&ws->mu);
	/* Room in the ready queue for every waiting word to fire, so that a
	 * helper never has to allocate (and never fails) to queue one. */
	if (ws->nready + ws->waiting + 1 > ws->ready_cap) {
		size_t cap = ws->ready_cap ? 2 * ws->ready_cap : 64;
		uint64_t *p;

		while (cap < ws->nready + ws->waiting + 1)
			cap *= 2;
		p = realloc(ws->ready, cap * sizeof(*p));
		if (!p) {
			rc = -ENOMEM;
			goto out;
		}
		ws->ready = p;
		ws->ready_cap = cap;
	}
	rc = pick_helper(ws, &hi);
	if (rc)
		goto out;
	h = ws->helpers[hi];
	for (si = 0; h->slots[si].state != SLOT_FREE; si++)
		;
	s = &h->slots[si];
	if (!h->running) {
		rc = start_helper(ws, h);
		if (rc) {
			rc = -EAGAIN;
			goto out;
		}
	}
	s->word = (_Atomic uint32_t *)word;
	s->val = val;
	s->token = token;
	s->state = SLOT_WAITING;
	h->used++;
	h->waiting++;
	ws->used++;
	ws->waiting++;
	*slot = hi * ws->per + si;
	atomic_fetch_add(&h->ctl, 1);
	pthread_mutex_unlock(&ws->mu);
	/* h cannot go away: its thread leaves only with no used slot, and
	 * helper structures are freed only with the whole waitset. */
	wake_private(&h->ctl);
	return 0;
out:
	pthread_mutex_unlock(&ws->mu);
	return rc;
}

int pyipc_waitset_remove(pyipc_waitset *ws, uint32_t slot, uint64_t token)
{
	_Atomic uint32_t *kick = NULL;
	struct helper *h, *idle = NULL;
	struct slot *s;
	int rc;

	if (atomic_load_explicit(&ws->orphaned, memory_order_relaxed))
		return -ECHILD;
	pthread_mutex_lock(&ws->mu);
	if (slot / ws->per >= ws->nhelpers) {
		rc = -ENOENT;
		goto out;
	}
	h = ws->helpers[slot / ws->per];
	s = &h->slots[slot % ws->per];
	if (s->state == SLOT_FREE || s->token != token) {
		rc = -ENOENT;
		goto out;
	}
	rc = s->state == SLOT_FIRED;
	if (s->state == SLOT_WAITING) {
		h->waiting--;
		ws->waiting--;
		/* The fallback's helper sleeps in FUTEX_WAIT on this very word
		 * and hears nothing else: wake it (see the file comment). */
		if (ws->mode == PYIPC_WAITSET_MODE_THREADS) {
			kick = s->word;
		} else if (h->waiting == 0) {
			/* Its last word: without a wake it would sleep on the
			 * removed ones until they move, which may be never, and
			 * never start counting its idle time to leave. */
			atomic_fetch_add(&h->ctl, 1);
			idle = h;
		}
	}
	s->state = SLOT_FREE;
	h->used--;
	ws->used--;
out:
	pthread_mutex_unlock(&ws->mu);
	/* The caller has not unmapped the word yet: that is the contract. */
	if (kick)
		futex_wake_all(kick);
	if (idle)
		wake_private(&idle->ctl); /* helpers are freed only with the waitset */
	return rc;
}

int64_t pyipc_waitset_ready(pyipc_waitset *ws, uint64_t *tokens, uint64_t max)
{
	uint64_t counter;
	size_t n;

	if (atomic_load_explicit(&ws->orphaned, memory_order_relaxed))
		return -ECHILD;
	/* Clear the counter first: a token queued after this read signals
	 * again, so none is left behind unsignalled. */
	if (read(ws->efd, &counter, sizeof(counter)) < 0 && errno != EAGAIN)
		return -errno;
	pthread_mutex_lock(&ws->mu);
	n = ws->nready < max ? ws->nready : max;
	if (n) {
		memcpy(tokens, ws->ready, n * sizeof(*tokens));
		memmove(ws->ready, ws->ready + n, (ws->nready - n) * sizeof(*tokens));
		ws->nready -= n;
	}
	pthread_mutex_unlock(&ws->mu);
	return (int64_t)n;
}

int64_t pyipc_waitset_count(pyipc_waitset *ws)
{
	int64_t n;

	if (atomic_load_explicit(&ws->orphaned, memory_order_relaxed))
		return -ECHILD;
	pthread_mutex_lock(&ws->mu);
	n = (int64_t)ws->waiting;
	pthread_mutex_unlock(&ws->mu);
	return n;
}

int64_t pyipc_waitset_threads(pyipc_waitset *ws)
{
	int64_t n;

	if (atomic_load_explicit(&ws->orphaned, memory_order_relaxed))
		return -ECHILD;
	pthread_mutex_lock(&ws->mu);
	n = ws->threads;
	pthread_mutex_unlock(&ws->mu);
	return n;
}
