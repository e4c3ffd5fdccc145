/* SPDX-License-Identifier: MIT */
/*
 * ring_api.h - a ring of variable-length messages in a shared segment: a
 * named POSIX shared-memory object or a regular file.
 *
 * Conventions: every function returns 0 (or a non-negative count or length)
 * on success and -errno on failure.  Deadlines are absolute CLOCK_MONOTONIC
 * nanoseconds, with two special values: 0 never waits (-EAGAIN) and -1 has
 * no deadline.  A wait never lasts longer than one slice (~100 ms): when the
 * slice ends before the deadline, or a signal arrives, the call returns
 * -EINTR and the caller (Python) runs its signal handlers and calls again.
 * Errors of our own: -EBADMSG the segment fails validation (corrupted),
 * -ESHUTDOWN the ring was shut down, -EMSGSIZE a message never fits or a
 * buffer is too small, -EBADF the handle is closed, -ESTALE a lease that no
 * longer exists (repair() dropped it).
 */
#ifndef PYIPC_RING_API_H
#define PYIPC_RING_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct pyipc_ring pyipc_ring;

/* Numbers of the shared layout (checked against the C structures in
 * layout.h), for tests and tools that read a segment's bytes. */
enum pyipc_layout {
	PYIPC_LAYOUT_VERSION = 2,
	PYIPC_KIND_RING = 1,
	PYIPC_KIND_TOPIC = 2,
	PYIPC_REC_HDR = 8,
	PYIPC_MAX_LEASES = 64, /* open reservations (and views) per ring */
	PYIPC_LEASE_SIZE = 24,
	PYIPC_OFF_MAGIC = 0,
	PYIPC_OFF_VERSION = 8,
	PYIPC_OFF_KIND = 12,
	PYIPC_OFF_HDR_SIZE = 16,
	PYIPC_OFF_CAPACITY = 24,
	PYIPC_OFF_MAX_MSG = 32,
	PYIPC_OFF_MAX_MESSAGES = 40,
	PYIPC_OFF_SHUTDOWN = 52,
	PYIPC_OFF_OWNER_SEQ = 64,
	PYIPC_OFF_PROD_LOCK = 128,
	PYIPC_OFF_PROD_CLAIM = 136,
	PYIPC_OFF_PROD_TAIL = 256,
	PYIPC_OFF_PROD_COUNT = 264,
	PYIPC_OFF_PROD_WAKE = 280,
	PYIPC_OFF_CONS_LOCK = 384,
	PYIPC_OFF_CONS_TAKE = 392,
	PYIPC_OFF_CONS_FREE = 512,
	PYIPC_OFF_CONS_COUNT = 520,
	PYIPC_OFF_CONS_WAKE = 536,
	PYIPC_OFF_RESERVES = 640,
	PYIPC_OFF_VIEWS = 2176,
	/* Topics (topic_api.h): the record header, the settings kept in
	 * seg_hdr.params[], the publishers' cache lines and the subscriber
	 * slots, one per max_subscribers, from PYIPC_OFF_TOPIC_SLOTS on. */
	PYIPC_TOPIC_REC_HDR = 16,
	PYIPC_TOPIC_MAX_SUBSCRIBERS = 1024,
	PYIPC_OFF_TOPIC_MAX_SUBS = 72,
	PYIPC_OFF_TOPIC_OVERFLOW = 76,
	PYIPC_OFF_TOPIC_LOCK = 128,
	PYIPC_OFF_TOPIC_CLAIM = 136,
	PYIPC_OFF_TOPIC_TAIL = 256,
	PYIPC_OFF_TOPIC_TAIL_SEQ = 264,
	PYIPC_OFF_TOPIC_OLDEST = 272,
	PYIPC_OFF_TOPIC_DATA_EVT = 296,
	PYIPC_OFF_TOPIC_SLOTS = 2048,
	PYIPC_TOPIC_SLOT_SIZE = 128,
	PYIPC_OFF_SLOT_OWNER = 0,
	PYIPC_OFF_SLOT_GATE = 8,
	PYIPC_OFF_SLOT_READ = 16,
	/* A lock word: the holder's owner id, and this bit once someone sleeps. */
	PYIPC_LOCK_WAITERS = 0x80000000,
	PYIPC_OWNER_UNKNOWN = 0x7fffffff,
	/* `flags` of create/attach/probe/unlink: `where` is a file path, not a
	 * shared-memory name. */
	PYIPC_SEG_PATH = 1,
	/* attach only: take the geometry from the file's size, not from a header
	 * that may be damaged, so that repair() can put the header right. */
	PYIPC_SEG_REPAIR = 2
};

/* A consistent snapshot of a ring's header, for stats() and `pyipc info`. */
struct pyipc_ring_info {
	uint64_t capacity;         /* bytes of record space (a power of two) */
	uint64_t max_message_size; /* largest message that always fits */
	uint64_t max_messages;     /* bound on queued messages, 0: none */
	uint64_t messages;         /* queued now */
	uint64_t bytes_used;       /* record bytes in use now, leases included */
	uint64_t puts;
	uint64_t gets;
	uint64_t bytes_put;
	uint64_t bytes_got;
	uint64_t put_waits;        /* times a producer had to sleep */
	uint64_t get_waits;        /* times a consumer had to sleep */
	uint64_t recoveries;       /* locks taken over from dead owners */
	uint64_t hdr_size;         /* bytes before the records (a page) */
	uint32_t reserves;         /* reservations open now */
	uint32_t views;            /* views open now */
	uint32_t version;
	uint32_t shutdown;         /* 0 open, 1 shut down, 2 shut down at once */
	int32_t creator_pid;
	uint32_t owner;            /* this handle's owner id */
};

/* What a segment says it is, read without validating it (for messages). */
struct pyipc_seg_probe {
	uint64_t size;      /* the file's size */
	uint32_t magic_ok;  /* it starts with pyipc's magic */
	uint32_t version;
	uint32_t kind;
};

/* Create a new segment (O_EXCL, permission bits exactly mode, the file's
 * space allocated so a full /dev/shm is an error now, not a SIGBUS later).
 * capacity is rounded up to a power of two of at least one page (one huge
 * page on hugetlbfs); max_messages bounds the number of queued messages
 * (0: only bytes bound it). */
int pyipc_ring_create(const char *where, int flags, uint64_t capacity, uint64_t max_messages,
		      uint32_t mode, pyipc_ring **out);
/* Attach to an existing ring, validating everything in its header. */
int pyipc_ring_attach(const char *where, int flags, pyipc_ring **out);
/* Create a ring with no name (a memfd, sealed against resizing): other
 * processes attach through a descriptor passed to them (SCM_RIGHTS), so it
 * is never in /dev/shm and needs no permission to open. */
int pyipc_ring_create_anon(uint64_t capacity, uint64_t max_messages, pyipc_ring **out);
/* Attach through such a descriptor (the caller keeps its fd). */
int pyipc_ring_attach_fd(int fd, pyipc_ring **out);
/* The descriptor of a ring with no name, to pass on (borrowed: valid until
 * the handle is closed); -ENOTSUP for a named ring. */
int pyipc_ring_share_fd(const pyipc_ring *r);
/* Unmap; waits for calls in other threads to leave; idempotent.  Leases
 * still open keep the mapping until they are released. */
int pyipc_ring_close(pyipc_ring *r);
/* Free a handle (closing it first); the last thing ever done with it. */
void pyipc_ring_free(pyipc_ring *r);
/* Read what a segment says it is, without attaching. */
int pyipc_seg_probe(const char *where, int flags, struct pyipc_seg_probe *out);
/* Remove a segment's name. */
int pyipc_seg_unlink(const char *where, int flags);

uint64_t pyipc_ring_capacity(const pyipc_ring *r);
uint64_t pyipc_ring_max_message_size(const pyipc_ring *r);
uint64_t pyipc_ring_max_messages(const pyipc_ring *r);

/* Enqueue one message; *ticket (if not NULL) identifies it for
 * pyipc_ring_wait_consumed. */
int pyipc_ring_put(pyipc_ring *r, const void *data, size_t len, int64_t deadline, uint64_t *ticket);
/* Enqueue n messages stored back to back in data; *done counts those queued. */
int pyipc_ring_put_many(pyipc_ring *r, const void *data, const uint64_t *lens, size_t n,
			int64_t deadline, size_t *done);
/* Wait until the message of `ticket` has been taken by a consumer. */
int pyipc_ring_wait_consumed(pyipc_ring *r, uint64_t ticket, int64_t deadline);
/* Dequeue one message into buf; returns its length.  -EMSGSIZE if it does not
 * fit (it stays queued), with its length in *needed. */
int64_t pyipc_ring_get(pyipc_ring *r, void *buf, uint64_t cap, int64_t deadline, uint64_t *needed);
/* Wait for one message, then dequeue up to max without waiting, back to back
 * into buf with their lengths in lens; returns how many. */
int64_t pyipc_ring_get_many(pyipc_ring *r, void *buf, uint64_t cap, uint64_t *lens, uint64_t max,
			    int64_t deadline, uint64_t *needed);

/* A lease: where its message lies in the ring, and what names it. */
struct pyipc_lease {
	char *ptr;     /* the message's first byte */
	uint64_t len;  /* its length */
	uint64_t pos;  /* where its record starts */
	uint32_t slot; /* its entry in the side's lease table */
};

/* Reserve a contiguous record for a message of len bytes, waiting for room
 * like put; *out says where to write it. */
int pyipc_ring_reserve(pyipc_ring *r, uint64_t len, int64_t deadline, struct pyipc_lease *out);
/* End a reservation: publish its message (publish 1) or drop it (0).
 * -ESTALE if the lease no longer exists (repair() dropped it). */
int pyipc_ring_commit(pyipc_ring *r, const struct pyipc_lease *l, int publish);
/* Take the oldest message in place, waiting like get; *out says where it
 * is (read it, never write it); returns its length. */
int64_t pyipc_ring_view(pyipc_ring *r, int64_t deadline, struct pyipc_lease *out);
/* End a view: its space goes back to the producers. */
int pyipc_ring_release(pyipc_ring *r, const struct pyipc_lease *l);

/* For waits owned by an event loop: 1 if a get (for_space 0), or a put of
 * a message of `need` bytes (for_space 1), would not block now, or the
 * ring is shut down.  Otherwise announce a sleeper on the event count the
 * other side bumps and return 0 with *word and *val set: sleep while
 * *word == *val (FUTEX_WAIT or futex_waitv, shared, not private).  2: the
 * same, but a lease whose holder may die is in the way, and a dead holder
 * wakes nobody: arm again within 10 ms.  A segment scribbled into a ready
 * state moves no word either: callers also poll readiness now and then
 * (pyipc_ring_wait with deadline 0), as the slices of the synchronous
 * waits do.  *word points into the mapping: stop every use of it before
 * pyipc_ring_close().  -EBADF on a closed handle. */
int pyipc_ring_arm(pyipc_ring *r, int for_space, uint64_t need, uint32_t **word, uint32_t *val);
/* Wait until a get (for_space 0) or a put of `need` bytes (for_space 1)
 * would not block, without taking or giving anything. */
int pyipc_ring_wait(pyipc_ring *r, int for_space, uint64_t need, int64_t deadline);

/* Shut the ring down for every handle; wakes every waiter. */
int pyipc_ring_shutdown(pyipc_ring *r, int immediate);
/* Messages queued now (no lock; a snapshot). */
int64_t pyipc_ring_qsize(pyipc_ring *r);
/* A snapshot of the header. */
int pyipc_ring_info(pyipc_ring *r, struct pyipc_ring_info *out);
/* Walk and validate every queued record and lease; returns how many
 * messages are queued, or -EBADMSG. */
int64_t pyipc_ring_check(pyipc_ring *r);
/* Make a ring that fails validation usable again: keep every record that
 * validates up to the first damaged one, drop the rest; returns how many
 * messages were dropped.  -EBUSY if a lock stays held for a second by a
 * holder that lives (or whose liveness cannot be checked). */
int64_t pyipc_ring_repair(pyipc_ring *r);
/* memcpy, for Python: cffi releases the GIL around it, so a large copy into
 * a reservation does not stop the process's other threads. */
void pyipc_copy(void *dst, const void *src, size_t n);
/* Write the ring's pages back to its file (msync), for rings in files. */
int pyipc_ring_flush(pyipc_ring *r);

#endif
