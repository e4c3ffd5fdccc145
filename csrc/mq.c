// SPDX-License-Identifier: MIT
/*
 * mq.c - POSIX message queues as channels.  On Linux an mqd_t is a file
 * descriptor, which is what makes a queue usable with poll, selectors and
 * asyncio; the kernel keeps message boundaries and priorities.
 *
 * mq_timedsend/mq_timedreceive take CLOCK_REALTIME deadlines; ours are
 * monotonic.  Each call waits at most one slice, converted to a realtime
 * instant just before the call: a clock step can then stretch or shrink one
 * slice, never the whole timeout, which is still counted monotonically.
 * The descriptor stays blocking: "try now" is a timed call with a deadline in
 * the past, so the hot path is one system call and no fcntl is ever needed.
 */
#include <fcntl.h>
#include <limits.h>
#include <mqueue.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal_chan.h"

_Static_assert(PYIPC_MQ_PRIO_MAX == MQ_PRIO_MAX, "channel_api.h's MQ_PRIO_MAX");

struct mq_chan {
	struct pyipc_chan c;
	uint64_t msgsize; /* the queue's mq_msgsize: every receive needs this much */
	/* A message taken for a buffer it did not fit, kept for the next
	 * receive on this handle (under c.rlock). */
	char *held;       /* msgsize bytes, allocated when first needed */
	uint64_t held_len;
	unsigned held_prio;
	int has_held;
};

#define Q(c) ((struct mq_chan *)(c))

/* One queue operation: send (buf is the message) or receive into buf. */
static ssize_t mq_op(int fd, int for_send, char *buf, size_t len, unsigned prio,
		     unsigned *prio_out, const struct timespec *abs)
{
	if (for_send)
		return mq_timedsend(fd, buf, len, prio, abs);
	return mq_timedreceive(fd, buf, len, prio_out, abs);
}

/*
 * Try at once (a deadline in the past never blocks); then spin a little
 * (see chan_spin); then block in the kernel for at most one slice.  The
 * common case is one system call.
 */
static ssize_t mq_wait_op(struct pyipc_chan *c, int for_send, char *buf, size_t len,
			  unsigned prio, unsigned *prio_out, int64_t deadline)
{
	static const struct timespec past = { 0, 0 };
	int fd = for_send ? c->wfd : c->rfd;
	struct timespec abs;
	int64_t until, left;
	int rc, spun = 0;
	ssize_t r;

	for (;;) {
		r = mq_op(fd, for_send, buf, len, prio, prio_out, &past);
		if (r >= 0)
			return r;
		if (errno != ETIMEDOUT)
			return -errno; /* EINTR included: Python runs handlers */
		rc = slice_begin(deadline, &until);
		if (rc)
			return rc;
		if (!spun) {
			spun = 1;
			if (chan_spin(fd, for_send ? POLLOUT : POLLIN, until))
				continue;
		}
		left = until - now_ns();
		clock_gettime(CLOCK_REALTIME, &abs);
		abs = ns_to_timespec((int64_t)abs.tv_sec * 1000000000ll + abs.tv_nsec +
				     (left > 0 ? left : 0));
		r = mq_op(fd, for_send, buf, len, prio, prio_out, &abs);
		if (r >= 0)
			return r;
		if (errno == ETIMEDOUT)
			return slice_end(deadline, until);
		return -errno;
	}
}

static int mq_send_op(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		      const int *fds, size_t nfds, int64_t deadline)
{
	ssize_t r;

	if (len > Q(c)->msgsize)
		return -EMSGSIZE;
	r = mq_wait_op(c, 1, (char *)data, len, prio, NULL, deadline);
	return r < 0 ? (int)r : 0;
}

/* Hand out the held message into buf if it fits (else -EMSGSIZE). */
static int64_t take_held(struct mq_chan *q, char *buf, uint64_t cap, unsigned *prio)
{
	if (q->held_len > cap)
		return chan_too_large(&q->c, q->held_len);
	memcpy(buf, q->held, q->held_len);
	if (prio)
		*prio = q->held_prio;
	q->has_held = 0;
	return (int64_t)q->held_len;
}

static int64_t mq_recv_op(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int *fds,
			  size_t maxfds, size_t *nfds, int64_t deadline)
{
	struct mq_chan *q = Q(c);
	ssize_t r;

	if (q->has_held)
		return take_held(q, buf, cap, prio);
	if (likely(cap >= q->msgsize))
		return mq_wait_op(c, 0, buf, cap, 0, prio, deadline);
	/* The kernel refuses a buffer below mq_msgsize even for a short
	 * message: take the message into the handle, then hand it out if it
	 * fits, else keep it for the next receive. */
	if (!q->held && !(q->held = malloc(q->msgsize)))
		return -ENOMEM;
	r = mq_wait_op(c, 0, q->held, q->msgsize, 0, &q->held_prio, deadline);
	if (r < 0)
		return r;
	q->held_len = (uint64_t)r;
	q->has_held = 1;
	return take_held(q, buf, cap, prio);
}

/* A queue has no call for several messages: a loop here, in C, still
 * spares the caller one Python round trip per message. */
static int mq_send_many(struct pyipc_chan *c, const char *data, const uint64_t *lens, size_t n,
			size_t *sent, int64_t deadline)
{
	int rc;

	for (*sent = 0; *sent < n; (*sent)++) {
		rc = mq_send_op(c, data, lens[*sent], 0, NULL, 0, deadline);
		if (rc)
			return rc;
		data += lens[*sent];
	}
	return 0;
}

static int64_t mq_recv_many(struct pyipc_chan *c, char *buf, uint64_t cap, uint64_t *lens,
			    size_t max, int64_t deadline)
{
	struct mq_chan *q = Q(c);
	uint64_t msgsize = q->msgsize, off = 0;
	size_t count = 0;
	int64_t r;

	if (q->has_held) {
		r = take_held(q, buf, cap, NULL);
		if (r < 0)
			return r;
		lens[count++] = (uint64_t)r;
		off = (uint64_t)r;
	} else if (cap < msgsize) {
		return chan_too_large(c, msgsize);
	}
	while (count < max && cap - off >= msgsize) {
		r = mq_wait_op(c, 0, buf + off, cap - off, 0, NULL, count ? NOWAIT : deadline);
		if (r < 0) {
			if (count)
				break;
			return r;
		}
		lens[count++] = (uint64_t)r;
		off += (uint64_t)r;
	}
	return (int64_t)count;
}

static int mq_pending(const struct pyipc_chan *c)
{
	return ((const struct mq_chan *)c)->has_held;
}

static void mq_release(struct pyipc_chan *c)
{
	free(Q(c)->held);
}

static uint64_t mq_many_bufsize(const struct pyipc_chan *c, size_t max)
{
	if (max > PYIPC_CHAN_BATCH)
		max = PYIPC_CHAN_BATCH;
	return (max ? max : 1) * Q(c)->msgsize;
}

static const struct chan_ops mq_ops = {
	.send = mq_send_op,
	.recv = mq_recv_op,
	.send_many = mq_send_many,
	.recv_many = mq_recv_many,
	.many_bufsize = mq_many_bufsize,
	.pending = mq_pending,
	.release = mq_release,
};

int pyipc_mq_open(const char *name, int create, uint32_t mode, int64_t max_messages,
		  int64_t max_message_size, pyipc_chan **out)
{
	struct mq_attr attr;
	struct mq_chan *q;
	mqd_t fd;
	int rc;

	memset(&attr, 0, sizeof(attr));
	attr.mq_maxmsg = max_messages;
	attr.mq_msgsize = max_message_size;
	if (create)
		fd = mq_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777, &attr);
	else
		fd = mq_open(name, O_RDWR | O_CLOEXEC);
	if (fd == (mqd_t)-1)
		return -errno;
	/* The umask may have removed bits from mode (never added any): now
	 * make them exactly mode. */
	if (create && fchmod(fd, mode & 07777) < 0)
		goto err_errno;
	if (mq_getattr(fd, &attr) < 0)
		goto err_errno;
	q = calloc(1, sizeof(*q));
	if (!q) {
		rc = -ENOMEM;
		goto err;
	}
	q->msgsize = (uint64_t)attr.mq_msgsize;
	rc = chan_init(&q->c, &mq_ops, fd, fd);
	if (rc) {
		free(q);
		goto err;
	}
	q->c.bufsize = q->msgsize;
	*out = &q->c;
	return 0;
err_errno:
	rc = -errno;
err:
	mq_close(fd);
	if (create)
		mq_unlink(name);
	return rc;
}

int pyipc_mq_send(pyipc_chan *c, const void *data, size_t len, unsigned prio, int64_t deadline)
{
	if (c->ops != &mq_ops)
		return -EOPNOTSUPP;
	return chan_send_prio(c, data, len, prio, deadline);
}

int64_t pyipc_mq_recv(pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int64_t deadline)
{
	if (c->ops != &mq_ops)
		return -EOPNOTSUPP;
	return chan_recv_prio(c, buf, cap, prio, deadline);
}

int pyipc_mq_attr(pyipc_chan *c, int64_t *max_messages, int64_t *max_message_size,
		  int64_t *current)
{
	struct mq_attr attr;
	int rc;

	if (c->ops != &mq_ops)
		return -EOPNOTSUPP;
	rc = chan_enter(c);
	if (rc)
		return rc;
	if (mq_getattr(c->rfd, &attr) < 0) {
		rc = -errno;
	} else {
		*max_messages = attr.mq_maxmsg;
		*max_message_size = attr.mq_msgsize;
		*current = attr.mq_curmsgs;
	}
	chan_leave(c);
	return rc;
}

int pyipc_mq_unlink(const char *name)
{
	if (mq_unlink(name) < 0)
		return -errno;
	return 0;
}
