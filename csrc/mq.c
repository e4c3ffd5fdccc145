// SPDX-License-Identifier: MIT
/*
 * mq.c - POSIX message queues.  On Linux an mqd_t is a file descriptor, which
 * is what makes a queue usable with poll, selectors and asyncio.
 *
 * mq_timedsend/mq_timedreceive take CLOCK_REALTIME deadlines; ours are
 * monotonic.  Each call waits at most one slice, converted to a realtime
 * instant just before the call: a clock step can then stretch or shrink one
 * slice, never the whole timeout, which is still counted monotonically.
 * One blocking call per message (not try, poll, retry) keeps the hot path at
 * one system call even when the queue is full or empty.
 */
#include <fcntl.h>
#include <mqueue.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal_chan.h"

/* The realtime instant at which this call's wait must end. */
static int slice_end(int64_t deadline, struct timespec *abs, int *last)
{
	int64_t wait, t;
	int rc;

	rc = chan_slice(deadline, &wait, last);
	if (rc == -EAGAIN) {
		/* An instant in the past: the call fails at once if it would
		 * block (the documented behaviour of the timed calls). */
		abs->tv_sec = 0;
		abs->tv_nsec = 0;
		return 0;
	}
	if (rc)
		return rc;
	clock_gettime(CLOCK_REALTIME, abs);
	t = abs->tv_nsec + wait;
	abs->tv_sec += t / 1000000000ll;
	abs->tv_nsec = t % 1000000000ll;
	return 0;
}

static int timed_out(int64_t deadline, int last)
{
	if (deadline == CHAN_NOWAIT)
		return -EAGAIN;
	return last ? -ETIMEDOUT : -EINTR;
}

int mq_chan_send(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		 int64_t deadline)
{
	struct timespec abs;
	int last, rc;

	if (len > c->max_packet)
		return -EMSGSIZE;
	for (;;) {
		rc = slice_end(deadline, &abs, &last);
		if (rc)
			return rc;
		if (mq_timedsend(c->wfd, data, len, prio, &abs) == 0)
			return 0;
		if (errno == ETIMEDOUT)
			return timed_out(deadline, last);
		return -errno; /* EINTR included: Python runs handlers, retries */
	}
}

int64_t mq_chan_recv(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
		     int64_t deadline)
{
	struct timespec abs;
	ssize_t r;
	int last, rc;

	/* The kernel refuses any buffer below mq_msgsize, even for a short
	 * message; say how much is needed instead. */
	if (cap < c->max_packet) {
		atomic_store(&c->need, c->max_packet);
		return -EMSGSIZE;
	}
	rc = slice_end(deadline, &abs, &last);
	if (rc)
		return rc;
	r = mq_timedreceive(c->rfd, buf, cap, prio, &abs);
	if (r >= 0)
		return r;
	if (errno == ETIMEDOUT)
		return timed_out(deadline, last);
	return -errno;
}

int pyipc_mq_open(const char *name, int create, uint32_t mode, int64_t max_messages,
		  int64_t max_message_size, int *fd)
{
	struct mq_attr attr;
	mqd_t q;

	memset(&attr, 0, sizeof(attr));
	attr.mq_maxmsg = max_messages;
	attr.mq_msgsize = max_message_size;
	if (create)
		q = mq_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777, &attr);
	else
		q = mq_open(name, O_RDWR | O_CLOEXEC);
	if (q == (mqd_t)-1)
		return -errno;
	/* The umask may have removed bits from mode (never added any): now
	 * make them exactly mode. */
	if (create && fchmod(q, mode & 0777) < 0) {
		int rc = -errno;

		mq_close(q);
		mq_unlink(name);
		return rc;
	}
	*fd = q;
	return 0;
}

int pyipc_mq_attr(pyipc_chan *c, int64_t *max_messages, int64_t *max_message_size,
		  int64_t *current)
{
	struct mq_attr attr;
	int rc;

	rc = chan_enter(c);
	if (rc)
		return rc;
	if (mq_getattr(c->rfd, &attr) < 0) {
		rc = -errno;
	} else {
		*max_messages = attr.mq_maxmsg;
		*max_message_size = attr.mq_msgsize;
		*current = attr.mq_curmsgs;
		/* Kept in the handle: send and recv check sizes against it. */
		c->max_packet = (uint64_t)attr.mq_msgsize;
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
