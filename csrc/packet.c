// SPDX-License-Identifier: MIT
/*
 * packet.c - one message per packet: SOCK_SEQPACKET and SOCK_DGRAM UNIX
 * sockets.  The kernel keeps the boundaries, so there is no framing and
 * nothing held in the handle: a receive takes one packet out of the kernel,
 * and poll() is exact by construction.
 *
 * A SOCK_SEQPACKET message carries one leading tag byte: an empty message is
 * then a 1-byte packet, never confused with the 0 that means end of file.
 * Datagrams need none (they have no end of file).
 *
 * Receive buffers of bufsize (the largest packet the kernel lets any sender
 * make) take every packet with one recv(); smaller ones first learn the
 * packet's length with a peek, so that one too large stays queued.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal_chan.h"

#define SEQ_TAG 0x50u
#define COPY_MAX 1024u /* tagged payloads up to this are copied, sent whole */

struct packet_chan {
	struct pyipc_chan c;
	unsigned tagn;       /* 1 for SOCK_SEQPACKET (the tag), 0 for datagrams */
	uint64_t max_packet; /* the largest packet, tag included */
	uint8_t tx[1 + COPY_MAX];
};

#define P(c) ((struct packet_chan *)(c))

/* A peer gone shows as one of these, by socket type and timing. */
static int send_error(int err)
{
	if (err == ECONNREFUSED || err == ECONNRESET || err == ENOTCONN)
		return -EPIPE;
	return -err;
}

static int packet_send(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		       const int *fds, size_t nfds, int64_t deadline)
{
	struct packet_chan *p = P(c);
	static const uint8_t tag = SEQ_TAG;
	struct iovec iov[2];
	ssize_t w;
	int n = 0, rc;

	if (p->tagn) {
		iov[n].iov_base = (void *)&tag;
		iov[n++].iov_len = 1;
	}
	iov[n].iov_base = (void *)data;
	iov[n++].iov_len = len;
	for (;;) {
		/* send() is measurably cheaper than sendmsg(): use it for the
		 * usual message without descriptors, in one piece. */
		if (nfds == 0 && !p->tagn) {
			w = send(c->wfd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		} else if (nfds == 0 && len <= COPY_MAX) {
			p->tx[0] = SEQ_TAG;
			memcpy(p->tx + 1, data, len);
			w = send(c->wfd, p->tx, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		} else {
			w = fd_sendmsg(c->wfd, iov, n, fds, nfds);
		}
		if (w >= 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return send_error(errno);
		rc = chan_wait_fd(c->wfd, POLLOUT, deadline);
		if (rc)
			return rc;
	}
}

static int packet_send_many(struct pyipc_chan *c, const char *data, const uint64_t *lens,
			    size_t n, size_t *sent, int64_t deadline)
{
	struct packet_chan *p = P(c);
	static const uint8_t tag = SEQ_TAG;
	struct mmsghdr msgs[PYIPC_CHAN_BATCH];
	struct iovec iov[PYIPC_CHAN_BATCH][2];
	unsigned k, i;
	int r, rc;

	*sent = 0;
	while (n) {
		const char *d = data;

		k = n < PYIPC_CHAN_BATCH ? (unsigned)n : PYIPC_CHAN_BATCH;
		memset(msgs, 0, sizeof(msgs[0]) * k);
		for (i = 0; i < k; i++) {
			unsigned m = 0;

			if (p->tagn) {
				iov[i][m].iov_base = (void *)&tag;
				iov[i][m++].iov_len = 1;
			}
			iov[i][m].iov_base = (void *)d;
			iov[i][m++].iov_len = lens[i];
			d += lens[i];
			msgs[i].msg_hdr.msg_iov = iov[i];
			msgs[i].msg_hdr.msg_iovlen = m;
		}
		/* It stops at the first that fails; a second call says why. */
		r = sendmmsg(c->wfd, msgs, k, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0) {
			for (i = 0; i < (unsigned)r; i++)
				data += lens[i];
			*sent += (size_t)r;
			lens += r;
			n -= (size_t)r;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return send_error(errno);
		rc = chan_wait_fd(c->wfd, POLLOUT, deadline);
		if (rc)
			return rc;
	}
	return 0;
}

/* The packet in buf: drop its tag; 0 length with a tag expected is EOF. */
static int64_t untag(struct packet_chan *p, char *buf, ssize_t r)
{
	if (!p->tagn)
		return r;
	if (r == 0)
		return -EPIPE;
	memmove(buf, buf + 1, (size_t)r - 1);
	return r - 1;
}

static int64_t packet_recv(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
			   int *fds, size_t maxfds, size_t *nfds, int64_t deadline)
{
	struct packet_chan *p = P(c);
	int got[CHAN_MAXFDS];
	struct iovec iov[2];
	unsigned ngot, i;
	uint8_t tag;
	ssize_t r;
	int n, rc;

	for (;;) {
		if (!fds && cap >= p->max_packet) {
			/* Room for any packet, tag and all: one plain recv().
			 * Descriptors nobody asked for are closed by the kernel. */
			r = recv(c->rfd, buf, cap, MSG_DONTWAIT | MSG_TRUNC);
			if (r >= 0) {
				if ((uint64_t)r > cap) /* beyond any packet we expected: lost */
					return chan_too_large(c, (uint64_t)r - p->tagn);
				return untag(p, buf, r);
			}
			goto fail;
		}
		/* A smaller buffer: learn the length first, so that a message
		 * that does not fit stays queued. */
		r = recv(c->rfd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
		if (r < 0)
			goto fail;
		if (r == 0 && p->tagn)
			return -EPIPE;
		if ((uint64_t)r - p->tagn > cap)
			return chan_too_large(c, (uint64_t)r - p->tagn);
		n = 0;
		if (p->tagn) {
			iov[n].iov_base = &tag;
			iov[n++].iov_len = 1;
		}
		iov[n].iov_base = buf;
		iov[n++].iov_len = cap;
		r = fd_recvmsg(c->rfd, iov, n, got, &ngot, MSG_TRUNC);
		if (r < 0)
			goto fail;
		for (i = 0; i < ngot; i++) {
			if (fds && i < maxfds)
				fds[i] = got[i];
			else
				fds_close(&got[i], 1);
		}
		if (nfds)
			*nfds = ngot < maxfds ? ngot : maxfds;
		if (r == 0 && p->tagn)
			return -EPIPE;
		if ((uint64_t)r - p->tagn > cap) /* changed since the peek: lost */
			return chan_too_large(c, (uint64_t)r - p->tagn);
		return (int64_t)r - p->tagn;
fail:
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = chan_wait_fd(c->rfd, POLLIN, deadline);
		if (rc)
			return rc;
	}
}

/*
 * recvmmsg into slots of max_packet bytes laid out in the caller's buffer
 * (pages never written cost nothing), then the payloads moved down, one
 * after another.  Slots that large are what make a truncated, hence lost,
 * packet impossible.
 */
static int64_t packet_recv_many(struct pyipc_chan *c, char *buf, uint64_t cap, uint64_t *lens,
				size_t max, int64_t deadline)
{
	struct packet_chan *p = P(c);
	struct mmsghdr msgs[PYIPC_CHAN_BATCH];
	struct iovec iov[PYIPC_CHAN_BATCH];
	uint64_t slot = p->max_packet, off = 0, len;
	size_t k, i, count = 0;
	int r, rc;

	k = cap / slot;
	if (k > max)
		k = max;
	if (k > PYIPC_CHAN_BATCH)
		k = PYIPC_CHAN_BATCH;
	if (k == 0) {
		int64_t one = packet_recv(c, buf, cap, NULL, NULL, 0, NULL, deadline);

		if (one >= 0)
			lens[0] = (uint64_t)one;
		return one < 0 ? one : 1;
	}
	memset(msgs, 0, sizeof(msgs[0]) * k);
	for (i = 0; i < k; i++) {
		iov[i].iov_base = buf + i * slot;
		iov[i].iov_len = slot;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	for (;;) {
		r = recvmmsg(c->rfd, msgs, (unsigned)k, MSG_DONTWAIT, NULL);
		if (r > 0)
			break;
		if (r == 0 || errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		rc = chan_wait_fd(c->rfd, POLLIN, deadline);
		if (rc)
			return rc;
	}
	for (i = 0; i < (size_t)r; i++) {
		len = msgs[i].msg_len;
		if (p->tagn && len == 0)
			break; /* end of file: after what came before it */
		if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
			continue; /* larger than any packet we expected: lost */
		len -= p->tagn;
		memmove(buf + off, buf + i * slot + p->tagn, len);
		lens[count++] = len;
		off += len;
	}
	if (count == 0)
		return i < (size_t)r ? -EPIPE : chan_too_large(c, slot);
	return (int64_t)count;
}

static uint64_t packet_many_bufsize(const struct pyipc_chan *c, size_t max)
{
	if (max > PYIPC_CHAN_BATCH)
		max = PYIPC_CHAN_BATCH;
	return (max ? max : 1) * P(c)->max_packet;
}

static const struct chan_ops packet_ops = {
	.send = packet_send,
	.recv = packet_recv,
	.send_many = packet_send_many,
	.recv_many = packet_recv_many,
	.many_bufsize = packet_many_bufsize,
	.passes_fds = 1,
};

/* A UNIX packet never exceeds its sender's SO_SNDBUF, which an unprivileged
 * peer can raise to twice net.core.wmem_max. */
static uint64_t largest_packet(void)
{
	long wmem = 212992;
	FILE *f = fopen("/proc/sys/net/core/wmem_max", "re");

	if (f) {
		if (fscanf(f, "%ld", &wmem) != 1 || wmem <= 0)
			wmem = 212992;
		fclose(f);
	}
	return 2 * (uint64_t)wmem;
}

int packet_chan_new(int fd, int seqpacket, struct pyipc_chan **out)
{
	struct packet_chan *p = calloc(1, sizeof(*p));
	int rc;

	if (!p)
		return -ENOMEM;
	p->tagn = seqpacket ? 1 : 0;
	p->max_packet = largest_packet();
	rc = chan_init(&p->c, &packet_ops, fd, fd);
	if (rc) {
		free(p);
		return rc;
	}
	p->c.bufsize = p->max_packet;
	*out = &p->c;
	return 0;
}
