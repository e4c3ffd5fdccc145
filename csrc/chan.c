// SPDX-License-Identifier: MIT
/*
 * chan.c - the channel handle: its lifetime, the close protocol, the one
 * sender / one receiver locks, what a forked child must put right, and the
 * public entry points, which hand each call to the kind's chan_ops.
 *
 * Every descriptor is non-blocking (message queues excepted, see mq.c): an
 * operation tries its system call first (the common case costs exactly
 * one), and only then waits, in slices (internal.h), so that the GIL is never
 * held (cffi releases it) and Ctrl-C is seen within ~100 ms.  A message
 * interrupted half-way keeps its progress in the handle: the caller calls
 * again with the same buffer.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal_chan.h"

/* Close the descriptors, exactly once, whoever (close() or the last call to
 * leave) gets here first. */
static void close_fds(struct pyipc_chan *c)
{
	if (atomic_exchange(&c->fds_done, 1))
		return;
	if (c->ops->drop_fds)
		c->ops->drop_fds(c);
	if (c->rfd >= 0)
		close(c->rfd);
	if (c->wfd >= 0 && c->wfd != c->rfd)
		close(c->wfd);
}

int chan_enter(struct pyipc_chan *c)
{
	atomic_fetch_add(&c->users, 1);
	if (unlikely(atomic_load(&c->closed))) {
		chan_leave(c);
		return -EBADF;
	}
	return 0;
}

void chan_leave(struct pyipc_chan *c)
{
	if (atomic_fetch_sub(&c->users, 1) == 1 && atomic_load(&c->closed))
		close_fds(c);
}

/*
 * In a child made by fork(): only the forking thread exists, so no call is
 * in progress, whatever the count says, and no lock is held by anyone, even
 * if a parent thread was blocked in recv or send (holding its side's lock)
 * at that instant.  Assigning the initializer, rather than calling
 * pthread_mutex_init, is what is allowed here (async-signal-safe).
 */
static void chan_in_child(struct fork_hook *hook)
{
	struct pyipc_chan *c = (struct pyipc_chan *)((char *)hook - offsetof(struct pyipc_chan, hook));
	static const pthread_mutex_t unlocked = PTHREAD_MUTEX_INITIALIZER;

	atomic_store(&c->users, 0);
	memcpy(&c->rlock, &unlocked, sizeof(unlocked));
	memcpy(&c->wlock, &unlocked, sizeof(unlocked));
	if (c->ops->in_child)
		c->ops->in_child(c);
}

int chan_init(struct pyipc_chan *c, const struct chan_ops *ops, int rfd, int wfd)
{
	int rc;

	c->ops = ops;
	c->rfd = rfd;
	c->wfd = wfd;
	atomic_init(&c->users, 0);
	atomic_init(&c->closed, 0);
	atomic_init(&c->fds_done, 0);
	atomic_init(&c->need, 0);
	rc = -pthread_mutex_init(&c->rlock, NULL);
	if (rc)
		return rc;
	rc = -pthread_mutex_init(&c->wlock, NULL);
	if (rc)
		goto err_wlock;
	c->hook.in_child = chan_in_child;
	c->hook.next = c->hook.prev = NULL;
	rc = forksafe_add(&c->hook);
	if (rc)
		goto err_hook;
	return 0;
err_hook:
	pthread_mutex_destroy(&c->wlock);
err_wlock:
	pthread_mutex_destroy(&c->rlock);
	return rc;
}

void chan_fini(struct pyipc_chan *c)
{
	forksafe_remove(&c->hook);
	pthread_mutex_destroy(&c->rlock);
	pthread_mutex_destroy(&c->wlock);
}

int pyipc_chan_close(pyipc_chan *c)
{
	atomic_store(&c->closed, 1);
	if (atomic_load(&c->users) == 0)
		close_fds(c);
	return 0;
}

void pyipc_chan_free(pyipc_chan *c)
{
	if (!c)
		return;
	pyipc_chan_close(c);
	/* Nobody uses the handle any more (the caller's promise): whatever
	 * the count says, the descriptors go now. */
	close_fds(c);
	if (c->ops->release)
		c->ops->release(c);
	chan_fini(c);
	free(c);
}

/*
 * Wait for a mutex until the absolute CLOCK_MONOTONIC instant `until`.
 * ThreadSanitizer (as in GCC 12) does not intercept pthread_mutex_clocklock
 * and would not see the lock taken; under it, take the realtime form, whose
 * wait a clock step may stretch or shrink (one slice at most).
 */
static int mutex_lock_until(pthread_mutex_t *m, int64_t until)
{
#if defined(__SANITIZE_THREAD__)
	struct timespec ts;
	int64_t left = until - now_ns();

	clock_gettime(CLOCK_REALTIME, &ts);
	ts = ns_to_timespec((int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec + (left > 0 ? left : 0));
	return pthread_mutex_timedlock(m, &ts);
#else
	struct timespec ts = ns_to_timespec(until);

	return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
#endif
}

/* Take one side's lock, waiting in slices like any other wait. */
static int lock_side(pthread_mutex_t *m, int64_t deadline)
{
	int64_t until;
	int rc;

	rc = pthread_mutex_trylock(m);
	if (likely(rc != EBUSY))
		return -rc;
	rc = slice_begin(deadline, &until);
	if (rc)
		return rc;
	rc = mutex_lock_until(m, until);
	if (rc == ETIMEDOUT)
		return slice_end(deadline, until);
	return -rc;
}

/* Enter, check the direction, take its lock: 0, or -errno with nothing
 * held.  `leave_side` undoes it. */
static int enter_side(struct pyipc_chan *c, int for_send, const void *op, int64_t deadline)
{
	int rc = chan_enter(c);

	if (unlikely(rc))
		return rc;
	if (unlikely((for_send ? c->wfd : c->rfd) < 0 || !op)) {
		rc = -EBADF;
		goto err;
	}
	rc = lock_side(for_send ? &c->wlock : &c->rlock, deadline);
	if (unlikely(rc))
		goto err;
	return 0;
err:
	chan_leave(c);
	return rc;
}

static void leave_side(struct pyipc_chan *c, int for_send)
{
	pthread_mutex_unlock(for_send ? &c->wlock : &c->rlock);
	chan_leave(c);
}

static int do_send(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		   const int *fds, size_t nfds, int64_t deadline)
{
	int rc = enter_side(c, 1, c->ops->send, deadline);

	if (unlikely(rc))
		return rc;
	rc = c->ops->send(c, data, len, prio, fds, nfds, deadline);
	leave_side(c, 1);
	return rc;
}

static int64_t do_recv(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int *fds,
		       size_t maxfds, size_t *nfds, int64_t deadline)
{
	int64_t rc;

	if (nfds)
		*nfds = 0;
	rc = enter_side(c, 0, c->ops->recv, deadline);
	if (unlikely(rc))
		return rc;
	rc = c->ops->recv(c, buf, cap, prio, fds, maxfds, nfds, deadline);
	leave_side(c, 0);
	return rc;
}

int pyipc_chan_send(pyipc_chan *c, const void *data, size_t len, int64_t deadline)
{
	return do_send(c, data, len, 0, NULL, 0, deadline);
}

int64_t pyipc_chan_recv(pyipc_chan *c, char *buf, uint64_t cap, int64_t deadline)
{
	return do_recv(c, buf, cap, NULL, NULL, 0, NULL, deadline);
}

int pyipc_chan_send_many(pyipc_chan *c, const void *data, const uint64_t *lens, size_t n,
			 size_t *sent, int64_t deadline)
{
	int rc;

	*sent = 0;
	if (n == 0)
		return 0;
	rc = enter_side(c, 1, c->ops->send_many, deadline);
	if (unlikely(rc))
		return rc;
	rc = c->ops->send_many(c, data, lens, n, sent, deadline);
	leave_side(c, 1);
	return rc;
}

int64_t pyipc_chan_recv_many(pyipc_chan *c, char *buf, uint64_t cap, uint64_t *lens, size_t max,
			     int64_t deadline)
{
	int64_t rc;

	if (max == 0)
		return -EINVAL;
	rc = enter_side(c, 0, c->ops->recv_many, deadline);
	if (unlikely(rc))
		return rc;
	rc = c->ops->recv_many(c, buf, cap, lens, max, deadline);
	leave_side(c, 0);
	return rc;
}

int pyipc_chan_send_fds(pyipc_chan *c, const void *data, size_t len, const int *fds, size_t nfds,
			int64_t deadline)
{
	if (!c->ops->passes_fds)
		return -EOPNOTSUPP;
	if (nfds > CHAN_MAXFDS)
		return -EINVAL;
	return do_send(c, data, len, 0, fds, nfds, deadline);
}

int64_t pyipc_chan_recv_fds(pyipc_chan *c, char *buf, uint64_t cap, int *fds, size_t maxfds,
			    size_t *nfds, int64_t deadline)
{
	if (!c->ops->passes_fds)
		return -EOPNOTSUPP;
	return do_recv(c, buf, cap, NULL, fds, maxfds, nfds, deadline);
}

/* For mq.c, whose calls carry a priority. */
int chan_send_prio(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		   int64_t deadline)
{
	return do_send(c, data, len, prio, NULL, 0, deadline);
}

int64_t chan_recv_prio(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
		       int64_t deadline)
{
	return do_recv(c, buf, cap, prio, NULL, 0, NULL, deadline);
}

int pyipc_chan_fileno(pyipc_chan *c, int for_send)
{
	int fd = for_send ? c->wfd : c->rfd;

	if (atomic_load(&c->closed) || fd < 0)
		return -EBADF;
	return fd;
}

int pyipc_chan_midframe(pyipc_chan *c, int dir)
{
	return c->ops->midframe ? c->ops->midframe(c, dir) : 0;
}

uint64_t pyipc_chan_need(pyipc_chan *c)
{
	return atomic_load_explicit(&c->need, memory_order_relaxed);
}

uint64_t pyipc_chan_bufsize(pyipc_chan *c)
{
	return c->bufsize;
}

uint64_t pyipc_chan_many_bufsize(pyipc_chan *c, size_t max)
{
	return c->ops->many_bufsize ? c->ops->many_bufsize(c, max) : c->bufsize;
}

int pyipc_chan_pending(pyipc_chan *c)
{
	return c->ops->pending ? c->ops->pending(c) : 0;
}

int pyipc_chan_calls(pyipc_chan *c)
{
	return atomic_load(&c->users);
}

/* The mapping's length is kept in front of the buffer, a cache line away. */
#define BUF_HDR 64

char *pyipc_buf_alloc(uint64_t size)
{
	uint64_t total = size + BUF_HDR;
	char *p;

	if (total < size)
		return NULL;
	p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	memcpy(p, &total, sizeof(total));
	return p + BUF_HDR;
}

void pyipc_buf_free(char *buf)
{
	uint64_t total;

	if (!buf)
		return;
	memcpy(&total, buf - BUF_HDR, sizeof(total));
	munmap(buf - BUF_HDR, total);
}
