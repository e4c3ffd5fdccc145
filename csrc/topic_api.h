/* SPDX-License-Identifier: MIT */
/*
 * topic_api.h - a topic: a ring in a shared segment whose every message
 * goes to every subscriber (broadcast).  Publishers write each message
 * once; each subscriber is a slot in the segment with its own cursor.
 *
 * Conventions as in ring_api.h: 0 (or a non-negative count or length) on
 * success, -errno on failure; deadlines are absolute CLOCK_MONOTONIC
 * nanoseconds, 0 never waits (-EAGAIN), -1 has no deadline; a wait lasts
 * at most one slice (~100 ms) and then returns -EINTR.  Errors of our own:
 * -EBADMSG the segment fails validation, -ESHUTDOWN shut down (and, for a
 * subscriber, drained), -EMSGSIZE a message never fits or a buffer is too
 * small, -EBADF the handle is closed, -EUSERS max_subscribers are attached
 * already, -ENOSPC too many leases open, -ESTALE a lease that no longer
 * exists, -EPERM a subscriber-only call on a handle that is not one.
 */
#ifndef PYIPC_TOPIC_API_H
#define PYIPC_TOPIC_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct pyipc_topic pyipc_topic;

/* A snapshot of a topic's header, for `pyipc info` and stats. */
struct pyipc_topic_info {
	uint64_t capacity;         /* bytes of record space (a power of two) */
	uint64_t max_message_size; /* largest message that always fits */
	uint64_t hdr_size;
	uint64_t published;        /* messages ever published */
	uint64_t bytes_published;
	uint64_t oldest_seq;       /* number of the oldest message still in the ring */
	uint64_t retained;         /* messages still in the ring (published - oldest_seq) */
	uint64_t bytes_used;       /* record bytes between the oldest record and claim */
	uint64_t publish_waits;    /* times a publisher had to sleep */
	uint64_t recoveries;       /* locks taken over from dead owners */
	uint32_t max_subscribers;
	uint32_t subscribers;      /* slots taken now (dead ones included until reaped) */
	uint32_t overflow;         /* 0 "block", 1 "overwrite" */
	uint32_t reserves;         /* reservations open now */
	uint32_t views;            /* subscribers with a view open (overwrite topics) */
	uint32_t version;
	uint32_t shutdown;         /* 0 open, 1 shut down, 3 a damaged word */
	int32_t creator_pid;
	uint32_t owner;            /* this handle's owner id */
};

/* One subscriber slot, for `pyipc info`. */
struct pyipc_topic_sub_info {
	uint32_t slot;
	uint32_t owner;
	uint32_t alive;    /* 1 alive, 0 dead (not yet detached), 2 no evidence */
	uint32_t views;    /* its open views */
	uint64_t lag;      /* messages published that it has not read yet */
	uint64_t received;
	uint64_t bytes;
	uint64_t missed;   /* lost to overwriting */
	uint64_t waits;    /* times it slept */
	uint64_t behind;   /* record bytes between its cursor and the tail */
};

/* Create a topic (O_EXCL, exactly `mode`, space allocated now).  capacity
 * is rounded up to a power of two of at least one page; max_subscribers is
 * 1 .. PYIPC_TOPIC_MAX_SUBSCRIBERS; overflow is 0 ("block") or 1
 * ("overwrite").  The handle publishes. */
int pyipc_topic_create(const char *where, int flags, uint64_t capacity, uint32_t max_subscribers,
		       int overflow, uint32_t mode, pyipc_topic **out);
/* Attach to an existing topic, validating its header.  The handle
 * publishes; pyipc_topic_subscribe makes it a subscriber.  With
 * PYIPC_SEG_REPAIR, a damaged header is accepted so repair() can fix it. */
int pyipc_topic_attach(const char *where, int flags, pyipc_topic **out);
/* Take a subscriber slot: start 0 reads what is published from now on,
 * 1 from the oldest message still in the ring.  -EUSERS if every slot is
 * taken by a live subscriber; -EALREADY if this handle subscribed. */
int pyipc_topic_subscribe(pyipc_topic *t, int start);
/* Detach (a subscriber gives its slot back at once); waits for calls in
 * other threads to leave; idempotent.  Leases keep the mapping (and a
 * subscriber's slot) until they end. */
int pyipc_topic_close(pyipc_topic *t);
void pyipc_topic_free(pyipc_topic *t);

uint64_t pyipc_topic_capacity(const pyipc_topic *t);
uint64_t pyipc_topic_max_message_size(const pyipc_topic *t);
uint32_t pyipc_topic_max_subscribers(const pyipc_topic *t);
int pyipc_topic_overflow(const pyipc_topic *t);

/* Publish one message, or n stored back to back in data (*done counts
 * those published), waiting for room as the deadline allows ("block"
 * topics wait for the slowest live subscriber; every topic waits for open
 * views and reservations in the way). */
int pyipc_topic_publish(pyipc_topic *t, const void *data, size_t len, int64_t deadline);
int pyipc_topic_publish_many(pyipc_topic *t, const void *data, const uint64_t *lens, size_t n,
			     int64_t deadline, size_t *done);
/* Reserve a record for a message of len bytes; *out says where to write
 * it (struct pyipc_lease of ring_api.h).  Commit publishes it (publish 1)
 * or drops it (0); -ESTALE if the lease no longer exists. */
int pyipc_topic_reserve(pyipc_topic *t, uint64_t len, int64_t deadline, struct pyipc_lease *out);
int pyipc_topic_commit(pyipc_topic *t, const struct pyipc_lease *l, int publish);

/* Subscribers: receive the next message into buf; returns its length.
 * -EMSGSIZE if it does not fit (it stays next), its length in *needed. */
int64_t pyipc_topic_recv(pyipc_topic *t, void *buf, uint64_t cap, int64_t deadline,
			 uint64_t *needed);
/* Wait for one message, then take up to max without waiting, back to back
 * into buf, lengths in lens; returns how many. */
int64_t pyipc_topic_recv_many(pyipc_topic *t, void *buf, uint64_t cap, uint64_t *lens,
			      uint64_t max, int64_t deadline, uint64_t *needed);
/* Take the next message in place: *out says where it is (read it, never
 * write it) until pyipc_topic_release(t, out); returns its length.  While
 * the view is open its record is never overwritten. */
int64_t pyipc_topic_view(pyipc_topic *t, int64_t deadline, struct pyipc_lease *out);
int pyipc_topic_release(pyipc_topic *t, const struct pyipc_lease *l);

/* For waits owned by an event loop, with pyipc_ring_arm's contract: 1 if a
 * receive (for_space 0, subscribers) or a publish of `need` bytes
 * (for_space 1) would not block now, or the topic is shut down; else
 * announce a sleeper and return 0, or 2 when something whose holder may die
 * is in the way (arm again within 10 ms), with *word and *val set: sleep
 * while *word == *val (shared futex).  -EBADF on a closed handle. */
int pyipc_topic_arm(pyipc_topic *t, int for_space, uint64_t need, uint32_t **word, uint32_t *val);
/* Wait until a receive (for_space 0) or a publish of `need` bytes (1) would
 * not block, without taking or giving anything. */
int pyipc_topic_wait(pyipc_topic *t, int for_space, uint64_t need, int64_t deadline);

/* Shut the topic down: publishes fail, subscribers drain then fail. */
int pyipc_topic_shutdown(pyipc_topic *t);
/* Live subscribers now; slots of dead ones are given back first. */
int pyipc_topic_subscribers(pyipc_topic *t);
/* This subscriber's messages published and not yet read (those lost to
 * overwriting excluded), and messages it lost to overwriting. */
int64_t pyipc_topic_pending(pyipc_topic *t);
int64_t pyipc_topic_missed(pyipc_topic *t);
int pyipc_topic_info(pyipc_topic *t, struct pyipc_topic_info *out);
/* Slot i (0 .. max_subscribers - 1); -ENOENT if it is free. */
int pyipc_topic_sub_info(pyipc_topic *t, uint32_t i, struct pyipc_topic_sub_info *out);
/* Walk and validate every retained record and slot; returns how many
 * messages are retained, or -EBADMSG. */
int64_t pyipc_topic_check(pyipc_topic *t);
/* Make a topic that fails validation usable again: keep the records that
 * validate up to the first damaged one, drop the rest and every slot that
 * cannot be right; returns how many messages were dropped. */
int64_t pyipc_topic_repair(pyipc_topic *t);
int pyipc_topic_flush(pyipc_topic *t);

#endif
