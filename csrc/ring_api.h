/* SPDX-License-Identifier: MIT */
/*
 * ring_api.h - a lock-protected ring of variable-length messages in a named
 * POSIX shared-memory segment.
 *
 * Conventions: every function returns 0 (or a non-negative count or length)
 * on success and -errno on failure.  Deadlines are absolute CLOCK_MONOTONIC
 * nanoseconds, with two special values: 0 never waits (-EAGAIN) and -1 has
 * no deadline.  A wait never lasts longer than one slice (~100 ms): when the
 * slice ends before the deadline, or a signal arrives, the call returns
 * -EINTR and the caller (Python) runs its signal handlers and calls again.
 * Errors of our own: -EBADMSG the segment fails validation (corrupted),
 * -ESHUTDOWN the ring was shut down, -EMSGSIZE a message never fits or a
 * buffer is too small, -EBADF the handle is closed.
 */
#ifndef PYIPC_RING_API_H
#define PYIPC_RING_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct pyipc_ring pyipc_ring;

/* A consistent snapshot of a ring's header, for stats() and `pyipc info`. */
struct pyipc_ring_info {
	uint64_t capacity;         /* bytes of record space (a power of two) */
	uint64_t max_message_size; /* largest message that always fits */
	uint64_t max_messages;     /* bound on queued messages, 0: none */
	uint64_t messages;         /* queued now */
	uint64_t bytes_used;       /* record bytes queued now, headers included */
	uint64_t puts;
	uint64_t gets;
	uint64_t bytes_put;
	uint64_t bytes_got;
	uint64_t put_waits;        /* times a producer had to sleep */
	uint64_t get_waits;        /* times a consumer had to sleep */
	uint64_t recoveries;       /* locks recovered from a dead owner */
	uint32_t version;
	uint32_t shutdown;         /* 0 open, 1 shut down, 2 shut down at once */
	int32_t creator_pid;
};

/* Create a new segment (O_EXCL, permission bits exactly mode); capacity is
 * rounded up to a power of two; max_messages bounds the number of queued
 * messages (0: only bytes bound it). */
int pyipc_ring_create(const char *name, uint64_t capacity, uint64_t max_messages, uint32_t mode,
		      pyipc_ring **out);
/* Attach to an existing segment, validating everything in its header. */
int pyipc_ring_attach(const char *name, pyipc_ring **out);
/* Unmap; waits for calls in other threads to leave; idempotent. */
int pyipc_ring_close(pyipc_ring *r);
/* Free a (closed or open) handle; the last thing ever done with it. */
void pyipc_ring_free(pyipc_ring *r);
/* Remove a segment's name. */
int pyipc_ring_unlink(const char *name);

uint64_t pyipc_ring_capacity(const pyipc_ring *r);
uint64_t pyipc_ring_max_message_size(const pyipc_ring *r);
uint64_t pyipc_ring_max_messages(const pyipc_ring *r);

/* Enqueue one message; *seq gets its sequence number (for wait_consumed). */
int pyipc_ring_put(pyipc_ring *r, const void *data, size_t len, int64_t deadline, uint64_t *seq);
/* Enqueue n messages stored back to back in data; *done counts those queued. */
int pyipc_ring_put_many(pyipc_ring *r, const void *data, const uint64_t *lens, size_t n,
			int64_t deadline, size_t *done);
/* Wait until message seq has been taken by a consumer. */
int pyipc_ring_wait_consumed(pyipc_ring *r, uint64_t seq, int64_t deadline);
/* Dequeue one message into buf; returns its length.  -EMSGSIZE if it does not
 * fit (it stays queued), with its length in *needed. */
int64_t pyipc_ring_get(pyipc_ring *r, void *buf, uint64_t cap, int64_t deadline, uint64_t *needed);
/* Wait for one message, then dequeue up to max without waiting, back to back
 * into buf with their lengths in lens; returns how many. */
int64_t pyipc_ring_get_many(pyipc_ring *r, void *buf, uint64_t cap, uint64_t *lens, uint64_t max,
			    int64_t deadline, uint64_t *needed);
/* Wait until a get (for_space == 0) or a put of `need` bytes (for_space == 1)
 * would not block, without taking or giving anything.  For asyncio. */
int pyipc_ring_wait(pyipc_ring *r, int for_space, uint64_t need, int64_t deadline);
/* Shut the ring down for every handle; wakes every waiter. */
int pyipc_ring_shutdown(pyipc_ring *r, int immediate);
/* Messages queued now (no lock; a snapshot). */
int64_t pyipc_ring_qsize(pyipc_ring *r);
/* A snapshot of the header. */
int pyipc_ring_info(pyipc_ring *r, struct pyipc_ring_info *out);
/* Walk and validate every queued record; returns how many, or -EBADMSG,
 * or -ETIMEDOUT if the consumer lock stays held for 100 ms. */
int64_t pyipc_ring_check(pyipc_ring *r);

/* For waits owned by an event loop: 1 if a get (for_space 0), or a put of
 * a message of `need` bytes (for_space 1), would not block now, or the
 * ring is shut down.  Otherwise announce a sleeper on the event count the
 * other side bumps and return 0 with *word and *val set: sleep while
 * *word == *val (FUTEX_WAIT or futex_waitv, shared, not private).  Whoever
 * makes the ring ready (a put, a get, shutdown) moves the word and
 * wakes its sleepers; a scribbled segment may not, so a caller polls
 * readiness now and then (pyipc_ring_wait with deadline 0) as the slices of
 * the synchronous waits do.  *word points into the mapping: stop every use
 * of it before pyipc_ring_close().  Counts as a sleep in stats.
 * -EMSGSIZE if for_space and `need` exceeds max_message_size (no room ever
 * comes).  -EBADF on a closed handle. */
int pyipc_ring_arm(pyipc_ring *r, int for_space, uint64_t need, uint32_t **word, uint32_t *val);

#endif
