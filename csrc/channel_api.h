/* SPDX-License-Identifier: MIT */
/* channel_api.h - message passing over pipes, UNIX sockets and POSIX queues. */
/*
 * One opaque handle, pyipc_chan, wraps the descriptors of every kind of
 * channel (and of a listening socket), so that a close() racing with a call
 * blocked in another thread is safe: the descriptors are closed by whoever
 * leaves last, never under a call that still uses them.
 *
 * Conventions as in ring_api.h: 0 (or a length) on success, -errno on
 * failure; deadlines are absolute CLOCK_MONOTONIC nanoseconds, 0 never waits
 * (-EAGAIN), -1 never expires; no wait lasts longer than ~100 ms: then the
 * call returns -EINTR and Python calls again with the same arguments (a
 * message half sent or half received is resumed, see pyipc_chan_midframe).
 * Codes with a channel meaning: -EPIPE on send, the peer is gone; -EPIPE on
 * receive, end of stream (-ECONNRESET: it ended inside a message); -EMSGSIZE
 * a message too large (for the buffer: it stays queued, its length is
 * pyipc_chan_need); -EBADMSG the stream is not pyipc framing; -EBADF closed;
 * -EBUSY another caller's message is half sent/received: retry later.
 */
#ifndef PYIPC_CHANNEL_API_H
#define PYIPC_CHANNEL_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct pyipc_chan pyipc_chan;

enum pyipc_chan_kind {
	PYIPC_CHAN_PIPE = 0,      /* pipe or FIFO: framed byte stream */
	PYIPC_CHAN_STREAM = 1,    /* SOCK_STREAM: framed byte stream */
	PYIPC_CHAN_SEQPACKET = 2, /* SOCK_SEQPACKET: one packet per message */
	PYIPC_CHAN_DGRAM = 3,     /* SOCK_DGRAM: one datagram per message */
	PYIPC_CHAN_MQ = 4,        /* POSIX message queue descriptor */
	PYIPC_CHAN_LISTENER = 5   /* listening UNIX socket (accept only) */
};

/* Take ownership of rfd/wfd (either may be -1; both may be equal). */
int pyipc_chan_open(int rfd, int wfd, int kind, pyipc_chan **out);
/* Close: the descriptors go now, or when the last call in progress leaves. */
int pyipc_chan_close(pyipc_chan *c);
/* Free a handle no thread uses any more (the last thing done with it). */
void pyipc_chan_free(pyipc_chan *c);
/* 1 if a message is half sent (dir 1) or half received (dir 0). */
int pyipc_chan_midframe(pyipc_chan *c, int dir);
/* Length of the message a receive refused with -EMSGSIZE. */
uint64_t pyipc_chan_need(pyipc_chan *c);
/* A receive buffer size that fits every message (packets, queues). */
uint64_t pyipc_chan_bufsize(pyipc_chan *c);
/* 1 if a whole message is already held by the handle (not in the kernel). */
int pyipc_chan_pending(pyipc_chan *c);

/* Send one message; prio is used by message queues only. */
int pyipc_chan_send(pyipc_chan *c, const char *data, size_t len, unsigned prio, int64_t deadline);
/* Receive one message into buf; returns its length.  prio may be NULL. */
int64_t pyipc_chan_recv(pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int64_t deadline);
/* Wait until a receive (for_send 0) or a send (1) would not block. */
int pyipc_chan_wait(pyipc_chan *c, int for_send, int64_t deadline);

/* Sockets only: a message with descriptors attached (SCM_RIGHTS). */
int pyipc_chan_send_fds(pyipc_chan *c, const char *data, size_t len, const int *fds, size_t nfds,
			int64_t deadline);
/* Receive one message and up to maxfds descriptors (more are closed). */
int64_t pyipc_chan_recv_fds(pyipc_chan *c, char *buf, uint64_t cap, int *fds, size_t maxfds,
			    size_t *nfds, int64_t deadline);
/* SO_PEERCRED of a connected socket channel. */
int pyipc_chan_peercred(pyipc_chan *c, int32_t *pid, uint32_t *uid, uint32_t *gid);

/* pipe(2) with O_CLOEXEC; fds[0] reads, fds[1] writes. */
int pyipc_pipe_make(int *fds);
/* mkfifo with permission bits exactly mode (not widened by the umask). */
int pyipc_fifo_make(const char *path, uint32_t mode);
/* Open a FIFO end; a writer waits (slices, -EINTR) until a reader exists. */
int pyipc_fifo_open(const char *path, int for_write, int64_t deadline, int *fd);

/* socketpair(AF_UNIX) of a kind (PYIPC_CHAN_STREAM/SEQPACKET/DGRAM). */
int pyipc_usock_pair(int kind, int *fds);
/* Bind and listen; path is sockaddr_un bytes (a leading NUL: abstract).
 * The file never has more permission bits than mode; *ino, *dev identify it. */
int pyipc_usock_listen(const char *path, size_t pathlen, int kind, uint32_t mode, int backlog,
		       int *fd, uint64_t *ino, uint64_t *dev);
/* Accept one connection on a listener handle. */
int pyipc_usock_accept(pyipc_chan *c, int64_t deadline, int *fd);
/* Connect to a listening socket, retrying while its backlog is full. */
int pyipc_usock_connect(const char *path, size_t pathlen, int kind, int64_t deadline, int *fd);
/* Remove a socket file only if it is still the one (ino, dev) we bound. */
int pyipc_usock_unlink(const char *path, uint64_t ino, uint64_t dev);

/* mq_open; create: 0 attach, 1 create exclusively; mode exact. */
int pyipc_mq_open(const char *name, int create, uint32_t mode, int64_t max_messages,
		  int64_t max_message_size, int *fd);
/* Current attributes of a queue handle. */
int pyipc_mq_attr(pyipc_chan *c, int64_t *max_messages, int64_t *max_message_size,
		  int64_t *current);
int pyipc_mq_unlink(const char *name);

#endif
