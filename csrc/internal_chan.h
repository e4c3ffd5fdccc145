/* SPDX-License-Identifier: MIT */
/*
 * internal_chan.h - what the channel sources share: the handle, the table of
 * operations every kind fills in, the close protocol, and waiting for a
 * descriptor.  Not part of the cdef.
 *
 * The files, each one concept, each depending only on those above it:
 *
 *     chan.c     the handle: lifetime, close protocol, locks, fork, dispatch
 *     fdpass.c   SCM_RIGHTS control messages (descriptor passing)
 *     stream.c   framed byte streams: pipes, FIFOs, SOCK_STREAM
 *     packet.c   one message per packet: SOCK_SEQPACKET, SOCK_DGRAM
 *     mq.c       POSIX message queues
 *     pipe.c     pipes and FIFOs: make stream channels over them
 *     usock.c    UNIX sockets: pairs, listeners, connections
 *
 * A kind's handle is a struct that starts with struct pyipc_chan; chan.c
 * knows kinds only through their chan_ops.
 */
#ifndef PYIPC_INTERNAL_CHAN_H
#define PYIPC_INTERNAL_CHAN_H

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "forksafe.h"
#include "internal.h"
#include "pyipc_api.h"

#define CHAN_MAXFDS PYIPC_CHAN_MAX_FDS

struct pyipc_chan;

/*
 * What a kind does.  Every I/O entry is called between chan_enter and
 * chan_leave, with the handle's send (or receive) lock held, and follows the
 * API's conventions (0 or -errno, one slice at most).  A NULL entry means
 * the kind cannot do that (-EBADF, as for a closed direction).
 */
struct chan_ops {
	int (*send)(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		    const int *fds, size_t nfds, int64_t deadline);
	int64_t (*recv)(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int *fds,
			size_t maxfds, size_t *nfds, int64_t deadline);
	int (*send_many)(struct pyipc_chan *c, const char *data, const uint64_t *lens, size_t n,
			 size_t *sent, int64_t deadline);
	int64_t (*recv_many)(struct pyipc_chan *c, char *buf, uint64_t cap, uint64_t *lens,
			     size_t max, int64_t deadline);
	/* The buffer recv_many needs for max messages. */
	uint64_t (*many_bufsize)(const struct pyipc_chan *c, size_t max);
	/* A whole message held by the handle (poll cannot see it). */
	int (*pending)(const struct pyipc_chan *c);
	/* A message half sent (dir 1) or half received (dir 0). */
	int (*midframe)(const struct pyipc_chan *c, int dir);
	/* In a forked child (see forksafe.h): async-signal-safe calls only. */
	void (*in_child)(struct pyipc_chan *c);
	/* The descriptors are being closed: close any received ones held. */
	void (*drop_fds)(struct pyipc_chan *c);
	/* Free what the kind allocated (the handle itself excepted). */
	void (*release)(struct pyipc_chan *c);
	/* 1 if messages may carry descriptors (UNIX sockets). */
	int passes_fds;
};

struct pyipc_chan {
	const struct chan_ops *ops;
	int rfd; /* receives (and accepts); -1 if none */
	int wfd; /* sends; -1 if none; may equal rfd */
	/* The close protocol (chan_enter/chan_leave). */
	atomic_int users;    /* calls in progress */
	atomic_int closed;   /* close() was called */
	atomic_int fds_done; /* the descriptors are closed (exactly once) */
	/* One sender and one receiver at a time: a message's bytes never
	 * interleave with another's, and the kind's state has one writer. */
	pthread_mutex_t rlock;
	pthread_mutex_t wlock;
	uint64_t bufsize;     /* what pyipc_chan_bufsize says */
	_Atomic uint64_t need; /* length of the message -EMSGSIZE refused */
	struct fork_hook hook;
};

/* chan.c: set up the common part of a handle that owns rfd and wfd. */
int chan_init(struct pyipc_chan *c, const struct chan_ops *ops, int rfd, int wfd);
/* chan.c: undo chan_init for a handle never handed out (closes nothing). */
void chan_fini(struct pyipc_chan *c);

/*
 * The close protocol.  Every call that uses a handle's descriptors brackets
 * that use with chan_enter (which fails with -EBADF once close() was called)
 * and chan_leave.  close() marks the handle; the descriptors are closed by
 * close() itself if no call is in progress, else by the last call to leave,
 * so no call ever uses a descriptor number that was closed (and maybe reused
 * for something else) under it.
 */
int chan_enter(struct pyipc_chan *c);
void chan_leave(struct pyipc_chan *c);

/* chan.c: send and receive with a priority (message queues). */
int chan_send_prio(struct pyipc_chan *c, const char *data, size_t len, unsigned prio,
		   int64_t deadline);
int64_t chan_recv_prio(struct pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio,
		       int64_t deadline);

/* Refuse a message too large for the caller's buffer: it stays queued. */
static inline int chan_too_large(struct pyipc_chan *c, uint64_t len)
{
	atomic_store_explicit(&c->need, len, memory_order_relaxed);
	return -EMSGSIZE;
}

/*
 * Before sleeping, poll without sleeping for a short while.  Waking a
 * process that sleeps on another CPU costs tens of microseconds on both
 * sides; a peer that is merely a little behind is usually back sooner than
 * that.  poll() for POLLIN or POLLOUT does not take the lock the peer's I/O
 * takes (pipes, UNIX sockets, queues), and between polls the CPU is told it
 * is spinning.  Returns 1 if fd became ready (or poll failed: the caller's
 * I/O will say why), 0 at `until` or after SPIN_NS.
 */
static inline int chan_spin(int fd, short events, int64_t until)
{
	struct pollfd p = { .fd = fd, .events = events };
	int64_t end = now_ns() + SPIN_NS;
	int i;

	if (end > until)
		end = until;
	while (poll(&p, 1, 0) == 0) {
		for (i = 0; i < 64; i++)
			cpu_relax();
		if (now_ns() >= end)
			return 0;
	}
	return 1;
}

/*
 * Wait for events on fd for at most one slice: 0 when something happened
 * (the caller retries its I/O and sees what), -EAGAIN (NOWAIT), -ETIMEDOUT,
 * or -EINTR (the slice ended or a signal came: back to Python, which runs
 * its signal handlers and calls again).
 */
static inline int chan_wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	struct timespec ts;
	int64_t until, left;
	int rc, n;

	rc = slice_begin(deadline, &until);
	if (rc)
		return rc;
	if (chan_spin(fd, events, until))
		return 0;
	left = until - now_ns();
	ts = ns_to_timespec(left > 0 ? left : 0);
	n = ppoll(&p, 1, &ts, NULL);
	if (n < 0)
		return -errno;
	if (n == 0)
		return slice_end(deadline, until);
	return 0;
}

/* fdpass.c: sendmsg/recvmsg with SCM_RIGHTS descriptors. */
ssize_t fd_sendmsg(int fd, const struct iovec *iov, int n, const int *fds, size_t nfds);
/* Receive into iov; up to CHAN_MAXFDS passed descriptors land in got
 * (close-on-exec), any more are closed.  flags: extra MSG_* flags. */
ssize_t fd_recvmsg(int fd, struct iovec *iov, int n, int *got, unsigned *ngot, int flags);
/* Close n descriptors, keeping errno. */
void fds_close(const int *fds, unsigned n);

/* stream.c: a framed stream channel over a pipe or FIFO (is_socket 0) or
 * a SOCK_STREAM socket (1); rfd/wfd already non-blocking. */
int stream_chan_new(int rfd, int wfd, int is_socket, struct pyipc_chan **out);

/* packet.c: a SOCK_SEQPACKET (seqpacket 1) or SOCK_DGRAM socket channel. */
int packet_chan_new(int fd, int seqpacket, struct pyipc_chan **out);

#endif
