// SPDX-License-Identifier: MIT
/*
 * mq.c - POSIX message queues.  On Linux an mqd_t is a file descriptor, which
 * is what makes a queue usable with poll, selectors and asyncio.
 *
 * mq_timedsend/mq_timedreceive take CLOCK_REALTIME deadlines; ours are
 * monotonic.  Each call waits at most one slice, converted to a realtime
 * instant just before the call: a clock step can then stretch or shrink one
 * slice, never the whole timeout, which is still counted monotonically.
 * The descriptor stays blocking: "try now" is a timed call with a deadline in
 * the past, so the hot path is one system call and no fcntl is ever needed.
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

/* One queue operation: send (buf is the message) or receive into buf. */
static ssize_t mq_op(struct pyipc_chan *c, int for_send, char *buf, size_t len, unsigned prio,
		     unsigned *prio_out, const struct timespec *abs)
{
	if (for_send)
		return mq_timedsend(c->wfd, buf, len, prio, abs);
	return mq_timedreceive(c->rfd, buf, len, prio_out, abs);
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
	struct timespec abs;
	int last, rc, spun = 0;
	ssize_t r;

	for (;;) {
		r = mq_op(c, for_send, buf, len, prio, prio_out, &past);
		if (r >= 0)
			return r;
		if (errno != ETIMEDOUT)
			return -errno; /* EINTR included: Python runs handlers */
		if (deadline == CHAN_NOWAIT)
			return -EAGAIN;
		if (!spun) {
			spun = 1;
			if (chan_spin(for_send ? c->wfd : c->rfd, for_send ? POLLOUT : POLLIN))
				continue;
		}
		rc = slice_end(deadline, &abs, &last);
		if (rc)
			return rc;
		r = mq_op(c, for_send, buf, len, prio, prio_out, &abs);
		if (r >= 0)
			return r;
		if (errno == ETIMEDOUT)
			return timed_out(deadline, last);
		return -errno;
	}
}

int mq_chan_send(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		 int64_t deadline)
{
	ssize_t r;

	if (len > c->max_packet)
		return -EMSGSIZE;
	r = mq_wait_op(c, 1, (char *)data, len, prio, NULL, deadline);
	return r < 0 ? (int)r : 0;
}

int64_t mq_chan_recv(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
		     int64_t deadline)
{
	/* The kernel refuses any buffer below mq_msgsize, even for a short
	 * message; say how much is needed instead. */
	if (cap < c->max_packet) {
		atomic_store(&c->need, c->max_packet);
		return -EMSGSIZE;
	}
	return mq_wait_op(c, 0, buf, cap, 0, prio, deadline);
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
