/* SPDX-License-Identifier: MIT */
/* channel_api.h - message passing over pipes, UNIX sockets and POSIX queues. */
/*
 * One opaque handle, pyipc_chan, wraps the descriptors of every kind of
 * channel (and of a listening socket), so that a close() racing with a call
 * blocked in another thread is safe: the descriptors are closed by whoever
 * leaves last, never under a call that still uses them.  Handles are made
 * by the constructors of their kind (pyipc_pipe_open, pyipc_usock_*,
 * pyipc_mq_open), which own the descriptors from then on.
 *
 * Data to send is `const void *`, which cffi fills from bytes or a cdata
 * buffer only (a `const char *` would also take a list of 1-byte strings).
 *
 * Conventions as in ring_api.h: 0 (or a length, or a count) on success,
 * -errno on failure; deadlines are absolute CLOCK_MONOTONIC nanoseconds, 0
 * never waits (-EAGAIN), -1 never expires; no wait lasts longer than ~100 ms:
 * then the call returns -EINTR and the caller calls again with the same
 * arguments (a message half sent or half received is resumed, see
 * pyipc_chan_midframe).  Codes with a channel meaning: -EPIPE on send, the
 * peer is gone; -EPIPE on receive, end of stream (-ECONNRESET: it ended
 * inside a message); -EMSGSIZE a message too large (for the buffer: it stays
 * queued, its length is pyipc_chan_need); -EBADMSG the stream is not pyipc
 * framing; -ENOTRECOVERABLE this process was forked while another thread was
 * half-way through a stream message on the handle; -EBADF closed, or the
 * wrong direction; -EBUSY another caller's message is half sent/received:
 * retry later.
 */
#ifndef PYIPC_CHANNEL_API_H
#define PYIPC_CHANNEL_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct pyipc_chan pyipc_chan;

/* Kinds of UNIX socket (pyipc_usock_*). */
enum pyipc_sock_kind {
	PYIPC_SOCK_STREAM = 1,    /* SOCK_STREAM: framed byte stream */
	PYIPC_SOCK_SEQPACKET = 2, /* SOCK_SEQPACKET: one packet per message */
	PYIPC_SOCK_DGRAM = 3      /* SOCK_DGRAM: one datagram per message */
};

/* Limits the Python layer checks before calling (the C side asserts them
 * against the system's own constants at compile time). */
enum pyipc_chan_limits {
	PYIPC_CHAN_MAX_FDS = 64,      /* descriptors one message may carry */
	PYIPC_CHAN_BATCH = 64,        /* messages one send_many/recv_many system call takes */
	PYIPC_UNIX_PATH_MAX = 107,    /* bytes of a socket path (sun_path less its NUL) */
	PYIPC_MQ_PRIO_MAX = 32768     /* priorities are 0 .. PYIPC_MQ_PRIO_MAX - 1 */
};

/* Close: the descriptors go now, or when the last call in progress leaves. */
int pyipc_chan_close(pyipc_chan *c);
/* Free a handle no thread uses any more (the last thing done with it). */
void pyipc_chan_free(pyipc_chan *c);
/* The descriptor a channel receives on (for_send 0) or sends on (1); -EBADF
 * if it has none in that direction. */
int pyipc_chan_fileno(pyipc_chan *c, int for_send);
/* 1 if a message is half sent (dir 1) or half received (dir 0). */
int pyipc_chan_midframe(pyipc_chan *c, int dir);
/* Length of the message a receive refused with -EMSGSIZE. */
uint64_t pyipc_chan_need(pyipc_chan *c);
/* A receive buffer size that fits every message (packets, queues), or a
 * good size for streams, whose messages may be larger (-EMSGSIZE says so). */
uint64_t pyipc_chan_bufsize(pyipc_chan *c);
/* The buffer size recv_many needs to take up to max messages at once.
 * Packet channels need room for max of the largest packet: get such a
 * buffer from pyipc_buf_alloc, whose untouched pages cost nothing. */
uint64_t pyipc_chan_many_bufsize(pyipc_chan *c, size_t max);
/* size bytes of memory that costs only the pages written to (mmap with
 * MAP_NORESERVE); NULL if the address space is exhausted. */
char *pyipc_buf_alloc(uint64_t size);
/* Free what pyipc_buf_alloc returned (NULL is fine). */
void pyipc_buf_free(char *buf);
/* 1 if a whole message is held by the handle, where poll() cannot see it. */
int pyipc_chan_pending(pyipc_chan *c);
/* Calls in progress on the handle now (a snapshot, for tests and tools). */
int pyipc_chan_calls(pyipc_chan *c);

/* Send one message. */
int pyipc_chan_send(pyipc_chan *c, const void *data, size_t len, int64_t deadline);
/* Receive one message into buf; returns its length. */
int64_t pyipc_chan_recv(pyipc_chan *c, char *buf, uint64_t cap, int64_t deadline);
/*
 * Send n messages in order: their payloads one after another in data, their
 * lengths in lens.  0 when all went; else -errno and *sent says how many went
 * whole (a half-sent one is resumed by a call that starts with it).
 */
int pyipc_chan_send_many(pyipc_chan *c, const void *data, const uint64_t *lens, size_t n,
			 size_t *sent, int64_t deadline);
/*
 * Wait for one message, then take up to max of those already there: their
 * payloads one after another into buf, their lengths into lens.  Returns how
 * many (at least 1).  A first message larger than cap: -EMSGSIZE.
 */
int64_t pyipc_chan_recv_many(pyipc_chan *c, char *buf, uint64_t cap, uint64_t *lens, size_t max,
			     int64_t deadline);

/* Sockets only: a message with descriptors attached (SCM_RIGHTS). */
int pyipc_chan_send_fds(pyipc_chan *c, const void *data, size_t len, const int *fds, size_t nfds,
			int64_t deadline);
/* Receive one message and up to maxfds descriptors (more are closed). */
int64_t pyipc_chan_recv_fds(pyipc_chan *c, char *buf, uint64_t cap, int *fds, size_t maxfds,
			    size_t *nfds, int64_t deadline);

/* pipe(2): *a receives and *b sends; duplex: two pipes, both do both. */
int pyipc_pipe_open(int duplex, pyipc_chan **a, pyipc_chan **b);
/* mkfifo with permission bits exactly mode (not narrowed by the umask). */
int pyipc_fifo_make(const char *path, uint32_t mode);
/* Open a FIFO end; a writer waits (slices, -EINTR) until a reader exists. */
int pyipc_fifo_open(const char *path, int for_write, int64_t deadline, pyipc_chan **out);

/* socketpair(AF_UNIX) of a kind. */
int pyipc_usock_pair(int kind, pyipc_chan **a, pyipc_chan **b);
/* Bind and listen; path is sockaddr_un bytes (a leading NUL: abstract).
 * The file has exactly mode, and never more; *ino, *dev identify it. */
int pyipc_usock_listen(const char *path, size_t pathlen, int kind, uint32_t mode, int backlog,
		       pyipc_chan **out, uint64_t *ino, uint64_t *dev);
/* Accept one connection on a listener. */
int pyipc_usock_accept(pyipc_chan *listener, int64_t deadline, pyipc_chan **out);
/* Connect to a listening socket, retrying while its backlog is full. */
int pyipc_usock_connect(const char *path, size_t pathlen, int kind, int64_t deadline,
			pyipc_chan **out);
/* Remove a socket file only if it is still the one (ino, dev) we bound. */
int pyipc_usock_unlink(const char *path, uint64_t ino, uint64_t dev);
/* SO_PEERCRED of a connected socket channel. */
int pyipc_usock_peercred(pyipc_chan *c, int32_t *pid, uint32_t *uid, uint32_t *gid);

/* mq_open; create: 0 attach, 1 create exclusively; mode exact. */
int pyipc_mq_open(const char *name, int create, uint32_t mode, int64_t max_messages,
		  int64_t max_message_size, pyipc_chan **out);
/* Send with a priority (0 .. PYIPC_MQ_PRIO_MAX - 1). */
int pyipc_mq_send(pyipc_chan *c, const void *data, size_t len, unsigned prio, int64_t deadline);
/* Receive the oldest message of the highest priority, and that priority. */
int64_t pyipc_mq_recv(pyipc_chan *c, char *buf, uint64_t cap, unsigned *prio, int64_t deadline);
/* Current attributes of a queue handle. */
int pyipc_mq_attr(pyipc_chan *c, int64_t *max_messages, int64_t *max_message_size,
		  int64_t *current);
int pyipc_mq_unlink(const char *name);

#endif
