// SPDX-License-Identifier: MIT
/*
 * chan.c - the channel handle and its I/O: stream framing (pipes, FIFOs,
 * SOCK_STREAM), packets (SOCK_SEQPACKET, SOCK_DGRAM) and descriptor passing.
 *
 * Every descriptor is non-blocking: an operation tries its system call
 * first (the common case costs exactly one), and only on EAGAIN waits with
 * ppoll for at most one slice, so the GIL is never held (cffi releases it)
 * and Ctrl-C is seen within ~100 ms.  A message interrupted half-way keeps
 * its progress in the handle: Python calls again with the same buffer.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal_chan.h"

/* SOCK_SEQPACKET messages carry one leading tag byte: an empty message is
 * then a 1-byte packet, never confused with the 0 that means end of file. */
#define SEQ_TAG 0x50u

static int is_socket(const struct pyipc_chan *c)
{
	return c->kind == PYIPC_CHAN_STREAM || c->kind == PYIPC_CHAN_SEQPACKET ||
	       c->kind == PYIPC_CHAN_DGRAM;
}

static void close_fds(struct pyipc_chan *c)
{
	unsigned i;

	/* Exactly once, whoever (close() or the last call to leave) gets here. */
	if (atomic_exchange(&c->fds_done, 1))
		return;
	if (c->rfd >= 0)
		close(c->rfd);
	if (c->wfd >= 0 && c->wfd != c->rfd)
		close(c->wfd);
	for (i = 0; i < c->ncur; i++)
		close(c->cur_fds[i]);
	for (i = 0; i < c->nnext; i++)
		close(c->next_fds[i]);
	c->ncur = c->nnext = 0;
}

/* Every call brackets its use of the descriptors with enter/leave. */
int chan_enter(struct pyipc_chan *c)
{
	atomic_fetch_add(&c->users, 1);
	if (atomic_load(&c->closed)) {
		if (atomic_fetch_sub(&c->users, 1) == 1)
			close_fds(c);
		return -EBADF;
	}
	return 0;
}

void chan_leave(struct pyipc_chan *c)
{
	if (atomic_fetch_sub(&c->users, 1) == 1 && atomic_load(&c->closed))
		close_fds(c);
}

/* Take one side's lock, waiting in slices like any other wait. */
static int lock_side(struct pyipc_chan *c, pthread_mutex_t *m, int64_t deadline)
{
	struct timespec ts;
	int64_t wait, until;
	int last, rc;

	rc = pthread_mutex_trylock(m);
	if (rc != EBUSY)
		return -rc;
	rc = chan_slice(deadline, &wait, &last);
	if (rc)
		return rc;
	until = chan_now() + wait;
	ts.tv_sec = until / 1000000000ll;
	ts.tv_nsec = until % 1000000000ll;
	rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
	if (rc == ETIMEDOUT)
		return last ? -ETIMEDOUT : -EINTR;
	return -rc;
}

int pyipc_chan_open(int rfd, int wfd, int kind, pyipc_chan **out)
{
	struct pyipc_chan *c;
	int fd, fl, i;

	if (kind < PYIPC_CHAN_PIPE || kind > PYIPC_CHAN_LISTENER)
		return -EINVAL;
	/* Non-blocking descriptors are what lets every wait be a bounded poll.
	 * A message queue descriptor stays blocking: mq.c uses timed calls. */
	for (i = 0; i < 2 && kind != PYIPC_CHAN_MQ; i++) {
		fd = i ? wfd : rfd;
		if (fd < 0)
			continue;
		fl = fcntl(fd, F_GETFL);
		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
			return -errno;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->rfd = rfd;
	c->wfd = wfd;
	c->kind = kind;
	c->max_packet = 1u << 16;
	if (kind == PYIPC_CHAN_SEQPACKET || kind == PYIPC_CHAN_DGRAM) {
		/* A UNIX datagram never exceeds the sender's SO_SNDBUF, which an
		 * unprivileged peer can raise to twice net.core.wmem_max. */
		long wmem = 212992;
		FILE *f = fopen("/proc/sys/net/core/wmem_max", "re");

		if (f) {
			if (fscanf(f, "%ld", &wmem) != 1 || wmem <= 0)
				wmem = 212992;
			fclose(f);
		}
		c->max_packet = 2 * (uint64_t)wmem;
	}
	if (kind == PYIPC_CHAN_STREAM && rfd >= 0) {
		/* Allocated now, so receiving never allocates. */
		c->pk = malloc(CHAN_PEEK);
		if (!c->pk) {
			free(c);
			return -ENOMEM;
		}
	}
	pthread_mutex_init(&c->rlock, NULL);
	pthread_mutex_init(&c->wlock, NULL);
	*out = c;
	return 0;
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
	pthread_mutex_destroy(&c->rlock);
	pthread_mutex_destroy(&c->wlock);
	free(c->pk);
	free(c);
}

int pyipc_chan_midframe(pyipc_chan *c, int dir)
{
	return dir ? c->wpos != 0 : c->rpos != 0;
}

uint64_t pyipc_chan_need(pyipc_chan *c)
{
	return atomic_load(&c->need);
}

int pyipc_chan_pending(pyipc_chan *c)
{
	/* Only a zero-length message can be wholly held by the handle: the
	 * read-ahead never takes a frame's magic byte (see FRAME_MAGIC). */
	return c->rh == FRAME_HDR && c->hdr[0] == 0 && !memcmp(c->hdr, c->hdr + 1, 6);
}

uint64_t pyipc_chan_bufsize(pyipc_chan *c)
{
	return c->max_packet;
}

/* ---- stream send ---- */

/*
 * Write to a pipe without dying of SIGPIPE and without touching the process's
 * signal dispositions.  When SIGPIPE is ignored (CPython's default) a write
 * cannot raise it, so one query of the disposition (one cheap system call)
 * spares the full dance.  Otherwise: block SIGPIPE in this thread around the
 * write, and if the write raised one (EPIPE), consume it before unblocking.
 * If the thread already blocked SIGPIPE, a pending one may be the caller's:
 * leave it be.
 */
static ssize_t pipe_write(int fd, const void *buf, size_t len, const struct iovec *iov, int n)
{
	static const struct timespec zero = { 0, 0 };
	struct sigaction sa;
	sigset_t pipe_set, old;
	ssize_t w;
	int err;

	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN &&
	    !(sa.sa_flags & SA_SIGINFO))
		return iov ? writev(fd, iov, n) : write(fd, buf, len);
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old))
		return -EINVAL;
	w = iov ? writev(fd, iov, n) : write(fd, buf, len);
	err = errno;
	if (w < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = err;
	return w;
}

static ssize_t sock_send(int fd, const struct iovec *iov, int n, const int *fds, size_t nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * CHAN_MAXFDS)];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = n };
	struct cmsghdr *cm;

	if (nfds) {
		memset(&u, 0, sizeof(u));
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	/* MSG_NOSIGNAL: EPIPE instead of SIGPIPE, with no mask juggling. */
	return sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int stream_send(struct pyipc_chan *c, const char *data, size_t len, const int *fds,
		       size_t nfds, int64_t deadline)
{
	uint64_t total = FRAME_HDR + (uint64_t)len;
	struct iovec iov[2];
	ssize_t w;
	int n, rc, i;

	if ((uint64_t)len > FRAME_MAXLEN)
		return -EMSGSIZE;
	/* Half a frame is out: only the call that started it (same message)
	 * may finish it, or the stream would interleave two messages. */
	if (c->wpos && (c->wdata != data || c->wlen != len))
		return -EBUSY;
	if (c->wpos == 0) {
		c->wdata = data;
		c->wlen = len;
		for (i = 0; i < 7; i++)
			c->whdr[i] = (uint8_t)((uint64_t)len >> (8 * i));
		c->whdr[7] = FRAME_MAGIC;
	}
	if (c->wpos == 0 && nfds == 0 && len <= sizeof(c->wsmall) - FRAME_HDR) {
		memcpy(c->wsmall, c->whdr, FRAME_HDR);
		memcpy(c->wsmall + FRAME_HDR, data, len);
		if (c->kind == PYIPC_CHAN_PIPE)
			w = pipe_write(c->wfd, c->wsmall, total, NULL, 0);
		else
			w = send(c->wfd, c->wsmall, total, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w == (ssize_t)total)
			return 0;
		if (w > 0)
			c->wpos = (uint64_t)w;
		/* else fall through: the loop below sorts out errors and waits */
	}
	while (c->wpos < total) {
		n = 0;
		if (c->wpos < FRAME_HDR) {
			iov[n].iov_base = c->whdr + c->wpos;
			iov[n++].iov_len = FRAME_HDR - c->wpos;
		}
		if (len) {
			uint64_t off = c->wpos > FRAME_HDR ? c->wpos - FRAME_HDR : 0;

			iov[n].iov_base = (char *)data + off;
			iov[n++].iov_len = len - off;
		}
		if (c->kind == PYIPC_CHAN_PIPE)
			w = pipe_write(c->wfd, NULL, 0, iov, n);
		else
			w = sock_send(c->wfd, iov, n, c->wpos ? NULL : fds, c->wpos ? 0 : nfds);
		if (w > 0) {
			c->wpos += (uint64_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN) {
			rc = -errno;
			if (rc == -ECONNRESET || rc == -ENOTCONN)
				rc = -EPIPE;
			return rc;
		}
		rc = chan_poll(c->wfd, POLLOUT, deadline);
		if (rc)
			return rc;
	}
	c->wpos = 0;
	return 0;
}

/* ---- stream receive ---- */

/* Keep descriptors that arrived with a frame; close what does not fit. */
static void stash_fds(int *dst, unsigned *n, const int *src, unsigned k)
{
	unsigned i;

	for (i = 0; i < k; i++) {
		if (*n < CHAN_MAXFDS)
			dst[(*n)++] = src[i];
		else
			close(src[i]);
	}
}

/* Read into iov; sockets also collect SCM_RIGHTS descriptors into got. */
static ssize_t chan_readv(struct pyipc_chan *c, struct iovec *iov, int n, int *got, unsigned *ngot)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * CHAN_MAXFDS)];
		struct cmsghdr align;
	} u;
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = n };
	struct cmsghdr *cm;
	ssize_t r;

	*ngot = 0;
	if (c->kind == PYIPC_CHAN_PIPE)
		return n == 1 ? read(c->rfd, iov[0].iov_base, iov[0].iov_len) : readv(c->rfd, iov, n);
	msg.msg_control = u.buf;
	msg.msg_controllen = sizeof(u.buf);
	r = recvmsg(c->rfd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (r < 0)
		return r;
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			unsigned k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			int tmp[CHAN_MAXFDS];
			unsigned i;

			memcpy(tmp, CMSG_DATA(cm), sizeof(int) * (k < CHAN_MAXFDS ? k : CHAN_MAXFDS));
			for (i = 0; i < k && i < CHAN_MAXFDS; i++)
				got[(*ngot)++] = tmp[i];
		}
	}
	return r;
}

/* End of data with nothing held: is it really the end?  A FIFO whose writer
 * has not come yet also reads 0; only POLLHUP (a writer came and went) or
 * pipe(2)'s closed write end means EOF.  Then -EPIPE, else keep waiting. */
static int stream_eof(struct pyipc_chan *c)
{
	struct pollfd p = { .fd = c->rfd, .events = POLLIN };

	if (c->kind != PYIPC_CHAN_PIPE)
		return -EPIPE;
	if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLIN | POLLERR)))
		return (p.revents & POLLIN) ? 0 : -EPIPE;
	return -EAGAIN;
}

static void hand_out_fds(struct pyipc_chan *c, int *fds, size_t maxfds, size_t *nfds)
{
	unsigned i, k = 0;

	for (i = 0; i < c->ncur; i++) {
		if (fds && k < maxfds)
			fds[k++] = c->cur_fds[i];
		else
			close(c->cur_fds[i]); /* unwanted: never leak them */
	}
	if (nfds)
		*nfds = k;
	memcpy(c->cur_fds, c->next_fds, sizeof(int) * c->nnext);
	c->ncur = c->nnext;
	c->nnext = 0;
}

static int64_t stream_recv(struct pyipc_chan *c, char *buf, uint64_t cap, int *fds, size_t maxfds,
			   size_t *nfds, int64_t deadline)
{
	uint8_t next[FRAME_AHEAD];
	int got[CHAN_MAXFDS];
	struct iovec iov[3];
	/* Pipes read the next frame's length ahead (see FRAME_MAGIC); stream
	 * sockets batch with MSG_PEEK instead (sock_stream_recv). */
	unsigned ahead = c->kind == PYIPC_CHAN_PIPE ? FRAME_AHEAD : 0;
	unsigned ngot, nn, i;
	uint64_t len, take;
	int n, rc, small;
	ssize_t r;

	if (c->rpos && c->rbuf != buf)
		return -EBUSY; /* another caller's half-received message */
	c->rbuf = buf;
	for (;;) {
		if (c->rh < FRAME_AHEAD) {
			/* No length yet (first frame, or after a short read). */
			iov[0].iov_base = c->hdr + c->rh;
			iov[0].iov_len = FRAME_HDR - c->rh;
			r = chan_readv(c, iov, 1, got, &ngot);
			if (r > 0) {
				stash_fds(c->cur_fds, &c->ncur, got, ngot);
				c->rh += (unsigned)r;
				continue;
			}
			if (r == 0) {
				if (c->rh)
					return -ECONNRESET;
				rc = stream_eof(c);
				if (rc == 0)
					continue;
				if (rc != -EAGAIN)
					return rc;
			} else if (errno == EINTR) {
				continue;
			} else if (errno != EAGAIN) {
				return -errno;
			}
			rc = chan_poll(c->rfd, POLLIN, deadline);
			if (rc)
				return rc;
			continue;
		}
		len = 0;
		for (i = 0; i < FRAME_AHEAD; i++)
			len |= (uint64_t)c->hdr[i] << (8 * i);
		if (c->rh == FRAME_HDR && c->hdr[7] != FRAME_MAGIC)
			return -EBADMSG;
		if (c->rpos == 0 && len > cap) {
			atomic_store(&c->need, len);
			return -EMSGSIZE;
		}
		if (c->rh == FRAME_HDR && c->rpos == len) {
			/* An empty message whose header came whole: done, without
			 * waiting for a next frame that may never come. */
			c->rh = 0;
			hand_out_fds(c, fds, maxfds, nfds);
			return (int64_t)len;
		}
		n = 0;
		if (c->rh == FRAME_AHEAD) {
			iov[n].iov_base = c->hdr + FRAME_AHEAD;
			iov[n++].iov_len = 1;
		}
		if (len > c->rpos) {
			iov[n].iov_base = buf + c->rpos;
			iov[n++].iov_len = len - c->rpos;
		}
		iov[n].iov_base = next;
		iov[n++].iov_len = ahead;
		/* A small message (the usual case) and its neighbours come in one
		 * plain read into the handle, then are copied out: cheaper than a
		 * three-piece readv. */
		small = c->rh == FRAME_AHEAD && c->rpos == 0 && len <= CHAN_SMALL;
		if (small) {
			iov[0].iov_base = c->rsmall;
			iov[0].iov_len = 1 + len + ahead;
			n = 1;
		}
		r = chan_readv(c, iov, n, got, &ngot);
		if (small && r > 0) {
			take = (uint64_t)r - 1 < len ? (uint64_t)r - 1 : len;
			c->hdr[FRAME_AHEAD] = c->rsmall[0];
			memcpy(buf, c->rsmall + 1, take);
			if ((uint64_t)r - 1 > len)
				memcpy(next, c->rsmall + 1 + len, (uint64_t)r - 1 - len);
		}
		if (r > 0) {
			take = (uint64_t)r;
			if (c->rh == FRAME_AHEAD) {
				c->rh = FRAME_HDR;
				take--;
				if (c->hdr[7] != FRAME_MAGIC)
					return -EBADMSG;
			}
			if (take > len - c->rpos) {
				nn = (unsigned)(take - (len - c->rpos));
				c->rpos = len;
			} else {
				nn = 0;
				c->rpos += take;
			}
			/* Descriptors ride on a frame's first bytes: if this read
			 * reached into the next frame, they are the next frame's. */
			if (nn)
				stash_fds(c->next_fds, &c->nnext, got, ngot);
			else
				stash_fds(c->cur_fds, &c->ncur, got, ngot);
			if (c->rpos < len)
				continue;
			memcpy(c->hdr, next, nn);
			c->rh = nn;
			c->rpos = 0;
			hand_out_fds(c, fds, maxfds, nfds);
			return (int64_t)len;
		}
		if (r == 0)
			return -ECONNRESET; /* the writer died inside this frame */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = chan_poll(c->rfd, POLLIN, deadline);
		if (rc)
			return rc;
	}
}

/*
 * Stream sockets: batch with MSG_PEEK.  One peek shows every frame already
 * in the kernel; frames are then handed out from the peeked copy with no
 * system call, and the bytes of all of them are consumed by one read when
 * the last is handed out.  So whenever a message is unreturned, its bytes
 * are still in the kernel and the socket stays readable for select/poll/
 * asyncio; a consumer that falls behind makes one or two system calls per
 * batch rather than one per message.  Anything unusual -- a frame not
 * wholly there, a large one, descriptors attached, end of file, a frame
 * half read before -- goes the exact way (stream_recv, no read-ahead).
 */
static int frame_at(const uint8_t *p, uint64_t avail, uint64_t *len)
{
	uint64_t l = 0;
	unsigned i;

	if (avail < FRAME_HDR)
		return 0;
	if (p[FRAME_AHEAD] != FRAME_MAGIC)
		return -EBADMSG;
	for (i = 0; i < FRAME_AHEAD; i++)
		l |= (uint64_t)p[i] << (8 * i);
	*len = l;
	return avail - FRAME_HDR >= l;
}

/* Drop the bytes of the frames handed out from the peeked copy. */
static int peek_consume(struct pyipc_chan *c)
{
	uint32_t done = 0;
	ssize_t r;

	while (done < c->pk_off) {
		r = recv(c->rfd, c->pk, c->pk_off - done, MSG_DONTWAIT);
		if (r > 0) {
			done += (uint32_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		/* The bytes were there a moment ago: someone else read them. */
		c->pk_off = c->pk_len = 0;
		return -EBADMSG;
	}
	c->pk_off = c->pk_len = 0;
	return 0;
}

static int64_t sock_stream_recv(struct pyipc_chan *c, char *buf, uint64_t cap, int *fds,
				size_t maxfds, size_t *nfds, int64_t deadline)
{
	struct iovec iov;
	struct msghdr msg;
	uint64_t len, nlen;
	ssize_t r;
	int rc;

	if (c->rh || c->rpos || !c->pk)
		return stream_recv(c, buf, cap, fds, maxfds, nfds, deadline);
	for (;;) {
		if (c->pk_off < c->pk_len) {
			rc = frame_at(c->pk + c->pk_off, c->pk_len - c->pk_off, &len);
			if (rc < 0)
				return rc;
			if (rc == 1) {
				if (len > cap) {
					atomic_store(&c->need, len);
					return -EMSGSIZE;
				}
				memcpy(buf, c->pk + c->pk_off + FRAME_HDR, len);
				c->pk_off += FRAME_HDR + (uint32_t)len;
				if (frame_at(c->pk + c->pk_off, c->pk_len - c->pk_off, &nlen) != 1) {
					rc = peek_consume(c);
					if (rc)
						return rc;
				}
				hand_out_fds(c, fds, maxfds, nfds);
				return (int64_t)len;
			}
		}
		if (c->pk_off) {
			rc = peek_consume(c);
			if (rc)
				return rc;
		}
		c->pk_off = c->pk_len = 0;
		memset(&msg, 0, sizeof(msg));
		iov.iov_base = c->pk;
		iov.iov_len = CHAN_PEEK;
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		r = recvmsg(c->rfd, &msg, MSG_PEEK | MSG_DONTWAIT);
		if (r > 0 && !(msg.msg_flags & MSG_CTRUNC) &&
		    frame_at(c->pk, (uint64_t)r, &len) == 1) {
			c->pk_len = (uint32_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN) {
			rc = chan_poll(c->rfd, POLLIN, deadline);
			if (rc)
				return rc;
			continue;
		}
		return stream_recv(c, buf, cap, fds, maxfds, nfds, deadline);
	}
}

/* ---- packets ---- */

static int pkt_send(struct pyipc_chan *c, const char *data, size_t len, const int *fds,
		    size_t nfds, int64_t deadline)
{
	static const uint8_t tag = SEQ_TAG;
	struct iovec iov[2];
	ssize_t w;
	int n = 0, rc;

	if (c->kind == PYIPC_CHAN_SEQPACKET) {
		iov[n].iov_base = (void *)&tag;
		iov[n++].iov_len = 1;
	}
	iov[n].iov_base = (void *)data;
	iov[n++].iov_len = len;
	for (;;) {
		/* send() is measurably cheaper than sendmsg(): use it for the
		 * common message without descriptors, in one piece. */
		if (nfds == 0 && n == 1) {
			w = send(c->wfd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		} else if (nfds == 0 && len < sizeof(c->wsmall)) {
			c->wsmall[0] = tag;
			memcpy(c->wsmall + 1, data, len);
			w = send(c->wfd, c->wsmall, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		} else {
			w = sock_send(c->wfd, iov, n, fds, nfds);
		}
		if (w >= 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			rc = -errno;
			/* A datagram pair whose peer is gone: ECONNREFUSED. */
			if (rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -ENOTCONN)
				rc = -EPIPE;
			return rc;
		}
		rc = chan_poll(c->wfd, POLLOUT, deadline);
		if (rc)
			return rc;
	}
}

static int64_t pkt_recv(struct pyipc_chan *c, char *buf, uint64_t cap, int *fds, size_t maxfds,
			size_t *nfds, int64_t deadline)
{
	unsigned tagn = c->kind == PYIPC_CHAN_SEQPACKET;
	int got[CHAN_MAXFDS];
	struct iovec iov[2];
	unsigned ngot, i;
	uint8_t tag;
	ssize_t r;
	int n, rc;

	for (;;) {
		/* A buffer smaller than the largest possible packet: learn the
		 * length first, so a message that does not fit stays queued. */
		if (cap < c->max_packet) {
			r = recv(c->rfd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
			if (r < 0)
				goto fail;
			if (r == 0 && tagn)
				return -EPIPE;
			if ((uint64_t)r - tagn > cap) {
				atomic_store(&c->need, (uint64_t)r - tagn);
				return -EMSGSIZE;
			}
		}
		if (!tagn && !fds) {
			/* A datagram whose descriptors nobody asked for: recv()
			 * (cheaper than recvmsg), and the kernel closes any. */
			r = recv(c->rfd, buf, cap, MSG_DONTWAIT | MSG_TRUNC);
			if (r < 0)
				goto fail;
			if (nfds)
				*nfds = 0;
			if ((uint64_t)r > cap) {
				atomic_store(&c->need, (uint64_t)r);
				return -EMSGSIZE;
			}
			return r;
		}
		n = 0;
		if (tagn) {
			iov[n].iov_base = &tag;
			iov[n++].iov_len = 1;
		}
		iov[n].iov_base = buf;
		iov[n++].iov_len = cap;
		{
			union {
				char b[CMSG_SPACE(sizeof(int) * CHAN_MAXFDS)];
				struct cmsghdr align;
			} u;
			struct msghdr msg = { .msg_iov = iov, .msg_iovlen = n };
			struct cmsghdr *cm;

			msg.msg_control = u.b;
			msg.msg_controllen = sizeof(u.b);
			r = recvmsg(c->rfd, &msg, MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC);
			if (r < 0)
				goto fail;
			ngot = 0;
			for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
				if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
					unsigned k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

					for (i = 0; i < k && ngot < CHAN_MAXFDS; i++)
						memcpy(&got[ngot++], CMSG_DATA(cm) + i * sizeof(int),
						       sizeof(int));
				}
			}
		}
		if (r == 0 && tagn)
			return -EPIPE;
		for (i = 0; i < ngot; i++) {
			if (fds && i < maxfds)
				fds[i] = got[i];
			else
				close(got[i]);
		}
		if (nfds)
			*nfds = ngot < maxfds ? ngot : maxfds;
		if ((uint64_t)r - tagn > cap) {
			/* Larger than any packet we were told to expect: lost. */
			atomic_store(&c->need, (uint64_t)r - tagn);
			return -EMSGSIZE;
		}
		return (int64_t)r - tagn;
fail:
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = chan_poll(c->rfd, POLLIN, deadline);
		if (rc)
			return rc;
	}
}

/* ---- public entry points ---- */

static int do_send(pyipc_chan *c, const char *data, size_t len, unsigned prio, const int *fds,
		   size_t nfds, int64_t deadline)
{
	int rc;

	rc = chan_enter(c);
	if (rc)
		return rc;
	if (c->wfd < 0) {
		rc = -EBADF;
		goto out;
	}
	rc = lock_side(c, &c->wlock, deadline);
	if (rc)
		goto out;
	switch (c->kind) {
	case PYIPC_CHAN_PIPE:
	case PYIPC_CHAN_STREAM:
		rc = stream_send(c, data, len, fds, nfds, deadline);
		break;
	case PYIPC_CHAN_SEQPACKET:
	case PYIPC_CHAN_DGRAM:
		rc = pkt_send(c, data, len, fds, nfds, deadline);
		break;
	case PYIPC_CHAN_MQ:
		rc = mq_chan_send(c, data, len, prio, deadline);
		break;
	default:
		rc = -EOPNOTSUPP;
	}
	pthread_mutex_unlock(&c->wlock);
out:
	chan_leave(c);
	return rc;
}

static int64_t do_recv(pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int *fds,
		       size_t maxfds, size_t *nfds, int64_t deadline)
{
	int64_t rc;

	if (nfds)
		*nfds = 0;
	rc = chan_enter(c);
	if (rc)
		return rc;
	if (c->rfd < 0) {
		rc = -EBADF;
		goto out;
	}
	rc = lock_side(c, &c->rlock, deadline);
	if (rc)
		goto out;
	switch (c->kind) {
	case PYIPC_CHAN_PIPE:
	case PYIPC_CHAN_STREAM:
		rc = sock_stream_recv(c, buf, cap, fds, maxfds, nfds, deadline);
		break;
	case PYIPC_CHAN_SEQPACKET:
	case PYIPC_CHAN_DGRAM:
		rc = pkt_recv(c, buf, cap, fds, maxfds, nfds, deadline);
		break;
	case PYIPC_CHAN_MQ:
		rc = mq_chan_recv(c, buf, cap, prio, deadline);
		break;
	default:
		rc = -EOPNOTSUPP;
	}
	pthread_mutex_unlock(&c->rlock);
out:
	chan_leave(c);
	return rc;
}

int pyipc_chan_send(pyipc_chan *c, const char *data, size_t len, unsigned prio, int64_t deadline)
{
	return do_send(c, data, len, prio, NULL, 0, deadline);
}

int64_t pyipc_chan_recv(pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int64_t deadline)
{
	return do_recv(c, buf, cap, prio, NULL, 0, NULL, deadline);
}

int pyipc_chan_send_fds(pyipc_chan *c, const char *data, size_t len, const int *fds, size_t nfds,
			int64_t deadline)
{
	if (!is_socket(c))
		return -EOPNOTSUPP;
	if (nfds > CHAN_MAXFDS)
		return -EINVAL;
	return do_send(c, data, len, 0, fds, nfds, deadline);
}

int64_t pyipc_chan_recv_fds(pyipc_chan *c, char *buf, uint64_t cap, int *fds, size_t maxfds,
			    size_t *nfds, int64_t deadline)
{
	if (!is_socket(c))
		return -EOPNOTSUPP;
	return do_recv(c, buf, cap, NULL, fds, maxfds, nfds, deadline);
}

int pyipc_chan_wait(pyipc_chan *c, int for_send, int64_t deadline)
{
	int fd, rc;

	rc = chan_enter(c);
	if (rc)
		return rc;
	fd = for_send ? c->wfd : c->rfd;
	if (fd < 0)
		rc = -EBADF;
	else if (!for_send && pyipc_chan_pending(c))
		rc = 0;
	else
		rc = chan_poll(fd, for_send ? POLLOUT : POLLIN, deadline);
	chan_leave(c);
	return rc;
}

int pyipc_chan_peercred(pyipc_chan *c, int32_t *pid, uint32_t *uid, uint32_t *gid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int rc;

	if (!is_socket(c))
		return -EOPNOTSUPP;
	rc = chan_enter(c);
	if (rc)
		return rc;
	if (getsockopt(c->rfd >= 0 ? c->rfd : c->wfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		rc = -errno;
	else {
		*pid = cred.pid;
		*uid = cred.uid;
		*gid = cred.gid;
	}
	chan_leave(c);
	return rc;
}
