/* SPDX-License-Identifier: MIT */
/*
 * segment.h - a shared segment: a POSIX shared-memory object or a regular
 * file (tmpfs, hugetlbfs, a disk), created, validated, mapped, and put
 * right in a forked child.  Every kind of segment (ring, topic) is a
 * struct seg_hdr, a header of kind-specific fields, and a record area that
 * is mapped twice, back to back.  Not part of the cdef.
 */
#ifndef PYIPC_SEGMENT_H
#define PYIPC_SEGMENT_H

#include <stdint.h>
#include <sys/types.h>

#include "layout.h"

struct seg {
	struct seg_hdr *hdr;  /* the header, at the start of the mapping */
	unsigned char *data;  /* the records, mapped twice: data[0 .. 2 * cap) */
	uint64_t hdr_size;
	uint64_t cap;
	void *map;            /* the whole reservation, for munmap */
	size_t map_len;
	/* Kept open while attached: the owner-id lock (owner.h) lives on its
	 * open file description. */
	int fd;
	uint32_t owner;       /* this handle's owner id */
	/* A segment with no name (a memfd): a descriptor, with no lock on its
	 * description, to hand to other processes; else -1. */
	int share_fd;
	dev_t dev;            /* which file: a forked child reopens it and */
	ino_t ino;            /* checks it is the same one */
	char *path;           /* how to reopen it without /proc, or NULL */
};

/*
 * Create a new segment for a header of at least hdr_min bytes and a record
 * area of at least `capacity` bytes, both rounded up to the page size of the
 * filesystem (a huge page on hugetlbfs), the area to a power of two; map it
 * and claim an owner id.  The header is all zeros except the geometry; the
 * caller fills its kind's fields, then calls seg_publish().
 */
int seg_create(struct seg *s, const char *where, int flags, uint64_t capacity, uint64_t hdr_min,
	       uint32_t mode);
/* Create a segment with no name (memfd, sealed against resizing), passed
 * to other processes by descriptor (share_fd). */
int seg_create_anon(struct seg *s, uint64_t capacity, uint64_t hdr_min);
/* Make a created segment visible to attachers: version, kind, then magic. */
void seg_publish(struct seg *s, uint32_t kind);
/* Attach: wait briefly for a creator to publish, validate the shared
 * geometry against the file (-EBADMSG), map, and claim an owner id. */
int seg_attach(struct seg *s, const char *where, int flags, uint32_t kind, uint64_t hdr_min);
/* Read a segment's first line without attaching (for repair, and for
 * messages that say what a segment is). */
int seg_peek(const char *where, int flags, struct seg_hdr *out);
/* Attach through a descriptor another process passed us (duplicated: the
 * caller keeps fd). */
int seg_attach_fd(struct seg *s, int fd, uint32_t kind, uint64_t hdr_min);
/* Unmap and close; idempotent. */
void seg_detach(struct seg *s);
/* Claim another owner id and give up the one this handle has
 * (async-signal-safe); 0 or -errno. */
int seg_claim_again(struct seg *s);
/* In a forked child (async-signal-safe): get a file description of our own
 * and a new owner id, so the parent's death shows and ours does too. */
void seg_after_fork(struct seg *s);

#endif
