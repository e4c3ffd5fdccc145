/* SPDX-License-Identifier: MIT */
/*
 * layout.h - the bytes of a pyipc segment, layout version 2.  Not part of
 * the cdef; the offsets that tests and tools need are exported as
 * PYIPC_OFF_* in ring_api.h and checked against this file below.
 *
 * A segment is a header of hdr_size bytes (one page, or one huge page on
 * hugetlbfs) followed by `capacity` bytes of records, a power of two.  The
 * process maps the record area twice, back to back, so a record that
 * crosses the end of the ring is still one contiguous piece of memory:
 * copies are one memcpy and leases are always one view.
 *
 * Cursors are free-running 64-bit byte counts, masked on use, always
 * multiples of 8.  Producers own two:  claim (the end of all space taken by
 * puts and reservations) and tail (everything before it is published).
 * Consumers own two:  take (the next record to hand out) and free
 * (everything before it may be reused).  Always
 *
 *     free <= take <= tail <= claim,   claim - free <= capacity.
 *
 * Without leases tail == claim and free == take.  An open reservation at
 * position p holds tail at p (records put after it wait for it, so every
 * consumer sees one order); an open view at p holds free at p.
 *
 * A record is an 8-byte header and the payload padded to 8 bytes.  The
 * header is {len, ~len} for a message, or {size, ~size ^ REC_SKIP} for a
 * skip record of `size` bytes in all (a reservation that was aborted, or
 * whose producer died; a reservation is written as a skip record until its
 * commit turns it into a message).
 *
 * Everything here is untrusted input: geometry is validated at attach and
 * kept in process memory, every cursor, length and lease is checked before
 * it addresses memory.
 */
#ifndef PYIPC_LAYOUT_H
#define PYIPC_LAYOUT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "pyipc_api.h"

#define SEG_MAGIC 0x474e495243504950ull /* "PIPCRING" read little-endian */
#define LINE 128 /* two cache lines: the adjacent-line prefetcher pairs them */

/*
 * The shutdown word is 0 (open) or one of two values no stray write is
 * likely to produce, so a scribbled word reads as corruption (repairable),
 * not as a shutdown for ever.
 */
#define SHUT_DRAIN 0x53485554u     /* "SHUT": gets drain, then ShutDown */
#define SHUT_IMMEDIATE 0x4e4f5721u /* "!WON": gets raise at once */

#define REC_HDR 8u
#define REC_SKIP 0x534b4950u /* "SKIP" mixed into a skip record's check */

/* The part every segment kind shares: one cache line, read on every call
 * and written almost never. */
struct seg_hdr {
	uint64_t magic;   /* written last at creation, with release order */
	uint32_t version; /* PYIPC_LAYOUT_VERSION */
	uint32_t kind;    /* PYIPC_KIND_RING, PYIPC_KIND_TOPIC */
	uint64_t hdr_size;
	uint64_t capacity;
	uint64_t max_msg;
	uint64_t max_messages; /* rings: bound on queued messages, 0: none */
	int32_t creator_pid;
	_Atomic uint32_t shutdown;   /* 0, SHUT_DRAIN or SHUT_IMMEDIATE */
	_Atomic uint64_t recoveries; /* locks taken over from dead owners */
	_Atomic uint32_t owner_seq;  /* next owner id to try (owner.h) */
	_Atomic uint32_t epoch;      /* bumped by repair(): caches are stale */
	uint32_t params[14];         /* kind-specific settings */
};

/*
 * A one-entry redo log, so that whoever takes a lock over from a dead owner
 * can tell whether the owner's last operation reached its commit point and
 * finish its counter updates.  Written before the commit point; `seq` last.
 */
struct redo {
	_Atomic uint64_t seq; /* == side.done + 1 while an operation is open */
	uint32_t op;          /* enum redo_op */
	uint32_t slot;        /* the lease slot of OP_COMMIT / OP_VIEW */
	uint64_t cursor;      /* the cursor value the commit point stores */
	uint64_t count;       /* counters after the operation */
	uint64_t bytes;
};

enum redo_op { OP_NONE, OP_PUT, OP_RESERVE, OP_COMMIT, OP_TAKE, OP_VIEW };

/*
 * One side (producers or consumers) is two cache lines: a private one that
 * only its own members touch (the lock, the private cursor, the redo log),
 * and a published one the other side reads (the cursor it waits on).  Were
 * they one line, every lock taken would first pull the line back from the
 * other CPU.
 */
struct side {
	/* private */
	_Atomic uint32_t lock; /* 0 free, else owner id | LOCK_WAITERS */
	_Atomic uint32_t leases; /* open leases of this side */
	_Atomic uint64_t own;  /* producers: claim; consumers: take */
	_Atomic uint64_t waits;
	_Atomic uint64_t done; /* sequence number of the last finished op */
	struct redo log;
	/* published */
	alignas(LINE) _Atomic uint64_t cursor; /* producers: tail; consumers: free */
	_Atomic uint64_t count;                /* messages ever put / taken */
	_Atomic uint64_t bytes;                /* payload bytes ever put / taken */
	_Atomic uint32_t wake_evt; /* event count the *other* side sleeps on */
};

/* A reservation (producers) or a view (consumers) in progress.  Written
 * with owner last; owner 0 marks a free slot. */
struct lease {
	_Atomic uint64_t pos; /* where its record starts */
	uint64_t end;         /* where it ends: pos + record size */
	_Atomic uint32_t owner;
	uint32_t check; /* lease_check(pos, end, owner): catches stray writes */
};

struct ring_hdr {
	struct seg_hdr seg;
	alignas(LINE) struct side prod;
	alignas(LINE) struct side cons;
	alignas(LINE) struct lease reserves[PYIPC_MAX_LEASES]; /* under prod.lock */
	struct lease views[PYIPC_MAX_LEASES];                  /* under cons.lock */
};

#define CHECK_OFF(field, value) _Static_assert(offsetof(struct ring_hdr, field) == (value), #field)
CHECK_OFF(seg.magic, PYIPC_OFF_MAGIC);
CHECK_OFF(seg.version, PYIPC_OFF_VERSION);
CHECK_OFF(seg.kind, PYIPC_OFF_KIND);
CHECK_OFF(seg.hdr_size, PYIPC_OFF_HDR_SIZE);
CHECK_OFF(seg.capacity, PYIPC_OFF_CAPACITY);
CHECK_OFF(seg.max_msg, PYIPC_OFF_MAX_MSG);
CHECK_OFF(seg.max_messages, PYIPC_OFF_MAX_MESSAGES);
CHECK_OFF(seg.shutdown, PYIPC_OFF_SHUTDOWN);
CHECK_OFF(seg.owner_seq, PYIPC_OFF_OWNER_SEQ);
CHECK_OFF(prod.lock, PYIPC_OFF_PROD_LOCK);
CHECK_OFF(prod.own, PYIPC_OFF_PROD_CLAIM);
CHECK_OFF(prod.cursor, PYIPC_OFF_PROD_TAIL);
CHECK_OFF(prod.count, PYIPC_OFF_PROD_COUNT);
CHECK_OFF(prod.wake_evt, PYIPC_OFF_PROD_WAKE);
CHECK_OFF(cons.lock, PYIPC_OFF_CONS_LOCK);
CHECK_OFF(cons.own, PYIPC_OFF_CONS_TAKE);
CHECK_OFF(cons.cursor, PYIPC_OFF_CONS_FREE);
CHECK_OFF(cons.count, PYIPC_OFF_CONS_COUNT);
CHECK_OFF(cons.wake_evt, PYIPC_OFF_CONS_WAKE);
CHECK_OFF(reserves, PYIPC_OFF_RESERVES);
CHECK_OFF(views, PYIPC_OFF_VIEWS);
_Static_assert(sizeof(struct lease) == PYIPC_LEASE_SIZE, "lease size");
_Static_assert(sizeof(struct seg_hdr) == LINE, "the shared line is one line");
_Static_assert(sizeof(struct ring_hdr) <= 4096, "a ring header fits the smallest page");
#undef CHECK_OFF

/*
 * Topics (topic.c): one ring of records that every subscriber reads through
 * its own cursor.  The record area holds records of a 16-byte header
 * {len, check, seq} and the payload padded to 8 bytes; `seq` is the
 * message's number in publication order (a skip record carries the number
 * of the next message), stamped before the record becomes visible.
 *
 * Publishers own, under their lock:  claim (the end of all space taken),
 * tail (everything before it is published), oldest (the first record still
 * intact: space before it has been, or is being, overwritten), and the
 * reservation table.  Always
 *
 *     oldest <= tail <= claim,   claim - oldest <= capacity,
 *
 * and oldest <= gate of every subscriber on a "block" topic, oldest <= hold
 * of every subscriber on an "overwrite" one.  A publisher moves oldest past
 * what it is about to overwrite before it writes there (so a subscriber that
 * copies a record and then finds oldest past it knows the copy may be torn).
 */
enum topic_overflow { TOPIC_BLOCK = 0, TOPIC_OVERWRITE = 1 };
#define HOLD_NONE UINT64_MAX /* a slot with no open view */

struct topic_pub {
	/* private: publishers only (and subscribers while they attach) */
	_Atomic uint32_t lock;
	_Atomic uint32_t leases; /* open reservations */
	_Atomic uint64_t claim;
	_Atomic uint64_t waits;
	_Atomic uint64_t done;
	_Atomic uint32_t subs_gen; /* bumped whenever a subscriber comes or goes */
	_Atomic uint32_t hi;       /* slots in use all lie below this */
	struct redo log;
	/* published: what subscribers read on every receive */
	alignas(LINE) _Atomic uint64_t tail;
	_Atomic uint64_t tail_seq;   /* messages published: the number of the next one */
	_Atomic uint64_t oldest;
	_Atomic uint64_t oldest_seq; /* the number of the first message at or after oldest */
	_Atomic uint64_t bytes;      /* payload bytes published */
	_Atomic uint32_t data_evt;   /* subscribers (and publishers behind a reservation) sleep here */
};

/* One subscriber, on a line of its own that only it writes (but for the
 * waiter bit of evt, set by a publisher about to sleep on it). */
struct topic_slot {
	_Atomic uint32_t owner; /* 0: free; written last when taken, under the publishers' lock */
	_Atomic uint32_t evt;   /* publishers held back by this subscriber sleep here */
	_Atomic uint64_t gate;  /* min(read, oldest open view): "block" publishers stop here */
	_Atomic uint64_t read;  /* the next record it reads */
	_Atomic uint64_t next_seq;
	_Atomic uint64_t hold;  /* its oldest open view, or HOLD_NONE ("overwrite" topics) */
	_Atomic uint64_t count; /* messages received */
	_Atomic uint64_t bytes;
	_Atomic uint64_t missed;
	_Atomic uint64_t waits;
	_Atomic uint32_t views;
	uint32_t pad[13];
};

struct topic_hdr {
	struct seg_hdr seg; /* params[0]: max_subscribers, params[1]: overflow */
	alignas(LINE) struct topic_pub pub;
	alignas(LINE) _Atomic uint32_t views_open; /* slots with a hold */
	alignas(LINE) struct lease reserves[PYIPC_MAX_LEASES];
	alignas(LINE) struct topic_slot slots[]; /* max_subscribers of them */
};

#define CHECK_TOPIC(field, value) \
	_Static_assert(offsetof(struct topic_hdr, field) == (value), #field)
CHECK_TOPIC(seg.params[0], PYIPC_OFF_TOPIC_MAX_SUBS);
CHECK_TOPIC(seg.params[1], PYIPC_OFF_TOPIC_OVERFLOW);
CHECK_TOPIC(pub.lock, PYIPC_OFF_TOPIC_LOCK);
CHECK_TOPIC(pub.claim, PYIPC_OFF_TOPIC_CLAIM);
CHECK_TOPIC(pub.tail, PYIPC_OFF_TOPIC_TAIL);
CHECK_TOPIC(pub.tail_seq, PYIPC_OFF_TOPIC_TAIL_SEQ);
CHECK_TOPIC(pub.oldest, PYIPC_OFF_TOPIC_OLDEST);
CHECK_TOPIC(pub.data_evt, PYIPC_OFF_TOPIC_DATA_EVT);
CHECK_TOPIC(slots, PYIPC_OFF_TOPIC_SLOTS);
_Static_assert(sizeof(struct topic_slot) == PYIPC_TOPIC_SLOT_SIZE, "slot size");
_Static_assert(offsetof(struct topic_slot, owner) == PYIPC_OFF_SLOT_OWNER, "slot owner");
_Static_assert(offsetof(struct topic_slot, gate) == PYIPC_OFF_SLOT_GATE, "slot gate");
_Static_assert(offsetof(struct topic_slot, read) == PYIPC_OFF_SLOT_READ, "slot read");
#undef CHECK_TOPIC

static inline uint32_t lease_check(uint64_t pos, uint64_t end, uint32_t owner)
{
	uint64_t x = pos * 0x9e3779b97f4a7c15ull ^ end ^ ((uint64_t)owner << 17);

	return (uint32_t)(x ^ (x >> 32)) ^ 0x4c454153u;
}

#endif
