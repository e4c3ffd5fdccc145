/* SPDX-License-Identifier: MIT */
/*
 * internal_chan.h - what the channel sources share: the handle layout, the
 * wait-in-slices helper and the per-kind entry points.  Not part of the cdef.
 */
#ifndef PYIPC_INTERNAL_CHAN_H
#define PYIPC_INTERNAL_CHAN_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "pyipc_api.h"

#define CHAN_SLICE_NS 100000000ll /* longest single wait: 100 ms, for Ctrl-C */
#define CHAN_NOWAIT 0
#define CHAN_FOREVER (-1)
#define CHAN_MAXFDS 64 /* descriptors one message may carry */
#define CHAN_SMALL 1024 /* messages up to this size are copied via the handle */
#define CHAN_PEEK 65536 /* stream sockets: bytes looked at in one peek */
#define CHAN_SPIN_NS 50000ll /* poll without sleeping this long first */

/*
 * Stream wire format (pipes, FIFOs, SOCK_STREAM), one frame per message:
 *
 *     bytes 0..6   payload length, little-endian (at most 2^56 - 1)
 *     byte  7      FRAME_MAGIC
 *     bytes 8..    payload
 *
 * The magic is last on purpose.  After a message the reader also asks for
 * the next frame's first 7 bytes in the same system call (one read per
 * message instead of two), but never for its magic: so whenever a frame has
 * started, at least one of its bytes is still in the kernel and the
 * descriptor stays readable for select/poll/asyncio.  A frame cut short by
 * EOF is reported (-ECONNRESET), never returned.
 */
#define FRAME_HDR 8u
#define FRAME_AHEAD 7u
#define FRAME_MAGIC 0xa5u
#define FRAME_MAXLEN ((1ull << 56) - 1)

struct pyipc_chan {
	int rfd; /* receives (and accepts); -1 if none */
	int wfd; /* sends; -1 if none; may equal rfd */
	int kind;
	atomic_int users;    /* calls in progress */
	atomic_int closed;   /* close() was called */
	atomic_int fds_done; /* the descriptors are closed (exactly once) */
	pthread_mutex_t rlock; /* one receiver at a time: framing state */
	pthread_mutex_t wlock; /* one sender at a time: frames never interleave */
	uint64_t max_packet;   /* packet kinds: largest message; mq: msgsize */

	/* receive side, under rlock */
	uint8_t hdr[FRAME_HDR];
	uint8_t rsmall[1 + CHAN_SMALL + FRAME_AHEAD]; /* see stream_recv */
	uint8_t *pk;     /* stream sockets: peeked bytes (CHAN_PEEK of them) */
	uint32_t pk_len; /* bytes peeked */
	uint32_t pk_off; /* ... of which handed out as messages */
	unsigned rh;   /* header bytes held */
	uint64_t rpos; /* payload bytes already in the caller's buffer */
	char *rbuf;    /* ... which is this one: only it may resume the frame */
	_Atomic uint64_t need;
	int cur_fds[CHAN_MAXFDS]; /* descriptors that came with this frame */
	unsigned ncur;
	int next_fds[CHAN_MAXFDS]; /* ... and with the next one (read ahead) */
	unsigned nnext;

	/* send side, under wlock */
	uint8_t whdr[FRAME_HDR];
	uint64_t wpos; /* frame bytes already written */
	const char *wdata; /* the message being written: only it may resume */
	/* A small frame is copied here and written with one write(): cheaper
	 * than writev of two pieces.  Large ones go straight from the caller. */
	uint8_t wsmall[FRAME_HDR + CHAN_SMALL];
	size_t wlen;
};

static inline int64_t chan_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Length of the next wait: the rest of the deadline or one slice.  *last is
 * set when the deadline falls within it (then its end is -ETIMEDOUT, not
 * -EINTR).  Returns -EAGAIN for NOWAIT, -ETIMEDOUT if already past. */
static inline int chan_slice(int64_t deadline, int64_t *wait, int *last)
{
	int64_t left;

	*last = 0;
	*wait = CHAN_SLICE_NS;
	if (deadline == CHAN_NOWAIT)
		return -EAGAIN;
	if (deadline == CHAN_FOREVER)
		return 0;
	left = deadline - chan_now();
	if (left <= 0)
		return -ETIMEDOUT;
	if (left <= CHAN_SLICE_NS) {
		*wait = left;
		*last = 1;
	}
	return 0;
}

/*
 * Before sleeping, poll without sleeping for a short while.  Waking a
 * process that sleeps on another CPU costs tens of microseconds on both
 * sides; a peer that is merely a little behind is usually back sooner than
 * that.  Returns 1 if fd became ready.
 */
static inline int chan_spin(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };
	int64_t start = chan_now();
	int i;

	do {
		if (poll(&p, 1, 0) > 0)
			return 1;
		for (i = 0; i < 32; i++)
			__builtin_ia32_pause();
	} while (chan_now() - start < CHAN_SPIN_NS);
	return 0;
}

/* Wait for events on fd for at most one slice: 0 when something happened
 * (the caller retries its I/O and sees what), -EAGAIN, -ETIMEDOUT, or -EINTR
 * (slice over or a signal: return to Python, which calls again). */
static inline int chan_poll(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	struct timespec ts;
	int64_t wait;
	int last, rc, n;

	rc = chan_slice(deadline, &wait, &last);
	if (rc)
		return rc;
	if (chan_spin(fd, events))
		return 0;
	ts.tv_sec = wait / 1000000000ll;
	ts.tv_nsec = wait % 1000000000ll;
	n = ppoll(&p, 1, &ts, NULL);
	if (n < 0)
		return -errno;
	if (n == 0)
		return last ? -ETIMEDOUT : -EINTR;
	return 0;
}

/* chan.c: bracket every use of a handle's descriptors (see close_fds). */
int chan_enter(struct pyipc_chan *c);
void chan_leave(struct pyipc_chan *c);

/* mq.c */
int mq_chan_send(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		 int64_t deadline);
int64_t mq_chan_recv(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
		     int64_t deadline);

#endif
