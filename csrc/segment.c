// SPDX-License-Identifier: MIT
/*
 * segment.c - shared segments: create, validate, map twice, fork.
 *
 * Why the record area is mapped twice: a record that crosses the end of
 * the ring then still reads as one piece of memory, so a copy is one
 * memcpy and a lease (a view of a message in place) is always contiguous,
 * at no cost in capacity.  It needs the header and the area to be whole
 * pages, hence the rounding, and huge pages on hugetlbfs.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "internal.h"
#include "owner.h"
#include "segment.h"

#define HUGETLBFS_MAGIC 0x958458f6
#define MAX_CAPACITY (1ull << 32) /* keeps every record length in a uint32_t */
#define MAX_HDR_SIZE (1ull << 30)
#define SHM_DIR "/dev/shm" /* where glibc's shm_open puts names */

static int lock_description(struct seg *s);

/* The page size of the filesystem behind fd: its huge page on hugetlbfs. */
static uint64_t page_size(int fd)
{
	struct statfs sf;

	if (fstatfs(fd, &sf) == 0 && (unsigned long)sf.f_type == HUGETLBFS_MAGIC && sf.f_bsize > 0)
		return (uint64_t)sf.f_bsize;
	return (uint64_t)sysconf(_SC_PAGESIZE);
}

static int open_where(const char *where, int flags, int oflags, uint32_t mode)
{
	int fd;

	if (flags & PYIPC_SEG_PATH)
		fd = open(where, oflags | O_CLOEXEC, (mode_t)mode);
	else
		fd = shm_open(where, oflags, (mode_t)mode); /* O_CLOEXEC implied */
	return fd < 0 ? -errno : fd;
}

/* Remember how to reopen the file in a forked child without /proc. */
static int remember_path(struct seg *s, const char *where, int flags)
{
	const char *prefix = SHM_DIR;
	char cwd[PATH_MAX];
	size_t n;

	if (flags & PYIPC_SEG_PATH) {
		prefix = "";
		if (where[0] != '/') {
			if (!getcwd(cwd, sizeof(cwd) - 1))
				return 0; /* only a fallback: go without it */
			n = strlen(cwd);
			cwd[n] = '/';
			cwd[n + 1] = '\0';
			prefix = cwd;
		}
	}
	n = strlen(prefix) + strlen(where) + 1;
	s->path = malloc(n);
	if (!s->path)
		return -ENOMEM;
	strcpy(s->path, prefix);
	strcat(s->path, where);
	return 0;
}

/* Reserve address space for the header and two copies of the area, then
 * map the file over it: header + area, then the area once more. */
static int map_twice(struct seg *s, uint64_t page)
{
	size_t total = s->hdr_size + 2 * s->cap + page;
	unsigned char *res, *base;

	res = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		return -errno;
	/* Huge pages must be mapped at huge-page-aligned addresses. */
	base = (unsigned char *)(((uintptr_t)res + page - 1) & ~(uintptr_t)(page - 1));
	if (mmap(base, s->hdr_size + s->cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, s->fd, 0) ==
		    MAP_FAILED ||
	    mmap(base + s->hdr_size + s->cap, s->cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 s->fd, (off_t)s->hdr_size) == MAP_FAILED) {
		int rc = -errno;

		munmap(res, total);
		return rc;
	}
	s->map = res;
	s->map_len = total;
	s->hdr = (struct seg_hdr *)base;
	s->data = base + s->hdr_size;
	return 0;
}

static int identify(struct seg *s)
{
	struct stat st;

	if (fstat(s->fd, &st))
		return -errno;
	s->dev = st.st_dev;
	s->ino = st.st_ino;
	return 0;
}

int seg_create(struct seg *s, const char *where, int flags, uint64_t capacity, uint64_t hdr_min,
	       uint32_t mode)
{
	uint64_t page, cap;
	int rc;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	if (capacity > MAX_CAPACITY)
		return -EINVAL;
	rc = open_where(where, flags, O_RDWR | O_CREAT | O_EXCL, mode & 07777);
	if (rc < 0)
		return rc;
	s->fd = rc;
	page = page_size(s->fd);
	for (cap = page; cap < capacity; cap <<= 1)
		;
	s->cap = cap;
	s->hdr_size = (hdr_min + page - 1) & ~(page - 1);
	/* open() applied the umask; the contract is "exactly mode". */
	if (fchmod(s->fd, mode & 07777) || ftruncate(s->fd, (off_t)(s->hdr_size + cap))) {
		rc = -errno;
		goto err_unlink;
	}
	/* Allocate the space now: on a full tmpfs (a container's small
	 * /dev/shm) a page first touched later would kill with SIGBUS. */
	rc = -posix_fallocate(s->fd, 0, (off_t)(s->hdr_size + cap));
	if (rc && rc != -EOPNOTSUPP && rc != -EINVAL)
		goto err_unlink;
	rc = remember_path(s, where, flags);
	if (!rc)
		rc = identify(s);
	if (!rc)
		rc = map_twice(s, page);
	if (rc)
		goto err_unlink;
	s->hdr->hdr_size = s->hdr_size;
	s->hdr->capacity = cap;
	s->hdr->creator_pid = getpid();
	atomic_store(&s->hdr->owner_seq, 1);
	rc = lock_description(s);
	if (rc)
		goto err_unmap;
	return 0;

err_unmap:
	munmap(s->map, s->map_len);
err_unlink:
	if (flags & PYIPC_SEG_PATH)
		unlink(where);
	else
		shm_unlink(where);
	if (s->fd >= 0)
		close(s->fd);
	free(s->path);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	return rc;
}

void seg_publish(struct seg *s, uint32_t kind)
{
	s->hdr->version = PYIPC_LAYOUT_VERSION;
	s->hdr->kind = kind;
	/* Attachers treat a segment without magic as one still being made. */
	atomic_store_explicit((_Atomic uint64_t *)&s->hdr->magic, SEG_MAGIC, memory_order_release);
}

/* Check the shared geometry against the file; copies it into s.  With
 * PYIPC_SEG_REPAIR the geometry comes from the file's size instead, and
 * only a segment that says it is of another layout or kind is refused. */
static int validate(struct seg *s, const struct seg_hdr *h, uint64_t size, uint64_t page,
		    uint32_t kind, uint64_t hdr_min, int flags)
{
	uint64_t cap = h->capacity, hs = h->hdr_size;

	if (flags & PYIPC_SEG_REPAIR) {
		if (h->version == 1 || (h->kind != kind && h->kind >= PYIPC_KIND_RING &&
					h->kind <= PYIPC_KIND_TOPIC))
			return -EBADMSG;
		hs = (hdr_min + page - 1) & ~(page - 1);
		cap = size > hs ? size - hs : 0;
	} else if (h->version != PYIPC_LAYOUT_VERSION || h->kind != kind) {
		return -EBADMSG;
	}
	if (hs < hdr_min || hs > MAX_HDR_SIZE || hs % page)
		return -EBADMSG;
	if (cap < page || cap > MAX_CAPACITY || (cap & (cap - 1)) || cap % page)
		return -EBADMSG;
	if (hs + cap != size)
		return -EBADMSG;
	s->hdr_size = hs;
	s->cap = cap;
	return 0;
}

int seg_attach(struct seg *s, const char *where, int flags, uint32_t kind, uint64_t hdr_min)
{
	struct seg_hdr snap;
	struct stat st;
	uint64_t page;
	int rc, tries;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	rc = open_where(where, flags, O_RDWR, 0);
	if (rc < 0)
		return rc;
	s->fd = rc;
	page = page_size(s->fd);
	/*
	 * A creator sizes, maps and initialises the segment after making its
	 * name; give one that is mid-way a moment (up to ~100 ms) to finish.
	 */
	for (tries = 0;; tries++) {
		unsigned char *first;
		uint64_t magic;

		if (fstat(s->fd, &st)) {
			rc = -errno;
			goto err;
		}
		rc = -EBADMSG;
		if ((uint64_t)st.st_size >= page) {
			first = mmap(NULL, page, PROT_READ, MAP_SHARED, s->fd, 0);
			if (first == MAP_FAILED) {
				rc = -errno;
				goto err;
			}
			magic = atomic_load_explicit((_Atomic uint64_t *)first, memory_order_acquire);
			memcpy(&snap, first, sizeof(snap));
			munmap(first, page);
			if (magic == SEG_MAGIC)
				break;
			if (magic != 0)
				goto err; /* something else lives here */
		} else if (st.st_size != 0) {
			goto err; /* no segment has this size */
		}
		if (tries == 20)
			goto err;
		usleep(5000);
	}
	/* Copy the geometry out once; later reads of it could be scribbled. */
	rc = validate(s, &snap, (uint64_t)st.st_size, page, kind, hdr_min, flags);
	if (!rc)
		rc = remember_path(s, where, flags);
	if (!rc)
		rc = identify(s);
	if (!rc)
		rc = map_twice(s, page);
	if (rc)
		goto err;
	rc = lock_description(s);
	if (rc) {
		munmap(s->map, s->map_len);
		goto err;
	}
	return 0;

err:
	if (s->fd >= 0)
		close(s->fd);
	free(s->path);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	return rc;
}

void seg_detach(struct seg *s)
{
	if (s->map) {
		munmap(s->map, s->map_len);
		s->map = NULL;
		s->hdr = NULL;
		s->data = NULL;
	}
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
	}
	free(s->path);
	s->path = NULL;
}

/* "/proc/self/fd/<fd>" without snprintf, which is not async-signal-safe. */
static void proc_fd_path(char *buf, int fd)
{
	static const char prefix[] = "/proc/self/fd/";
	char digits[12];
	int n = 0;

	do {
		digits[n++] = (char)('0' + fd % 10);
		fd /= 10;
	} while (fd);
	memcpy(buf, prefix, sizeof(prefix) - 1);
	buf += sizeof(prefix) - 1;
	while (n)
		*buf++ = digits[--n];
	*buf = '\0';
}

static int same_file(int fd, const struct seg *s)
{
	struct stat st;

	return fstat(fd, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino;
}

/* A new open file description of the segment's file (async-signal-safe),
 * or -1.  /proc/self/fd/N opens the same file anew even if it was unlinked;
 * the path is the fallback where /proc is not mounted. */
static int reopen(const struct seg *s, int fd)
{
	char proc[32];
	int nfd;

	proc_fd_path(proc, fd);
	nfd = open(proc, O_RDWR | O_CLOEXEC);
	if (nfd >= 0 && !same_file(nfd, s)) {
		close(nfd);
		nfd = -1;
	}
	if (nfd < 0 && s->path) {
		nfd = open(s->path, O_RDWR | O_CLOEXEC);
		if (nfd >= 0 && !same_file(nfd, s)) {
			close(nfd);
			nfd = -1;
		}
	}
	return nfd;
}

/*
 * Move this handle's owner-id lock to a description of its own, replacing
 * s->fd, and claim an id on it.  The lock must never live on the
 * description the segment is mapped through: a mapping holds a reference
 * to its description, a forked child inherits the mapping, and so a lock on
 * it would outlive its dead owner for as long as any child of it lives.
 * A description that is never mapped is referenced only by descriptors,
 * which a forked child closes (seg_after_fork) and exec() closes.
 */
static int lock_description(struct seg *s)
{
	int fd = reopen(s, s->fd);

	close(s->fd);
	s->fd = fd;
	s->owner = OWNER_UNKNOWN;
	if (fd < 0)
		return 0; /* no evidence for this handle: its locks are never taken over */
	return owner_claim(fd, &s->hdr->owner_seq, &s->owner);
}

void seg_after_fork(struct seg *s)
{
	if (s->fd < 0 || !s->map) {
		s->owner = OWNER_UNKNOWN;
		return;
	}
	/* Our copy of the parent's descriptor would vouch for the parent. */
	if (lock_description(s))
		s->owner = OWNER_UNKNOWN;
}

int pyipc_seg_unlink(const char *where, int flags)
{
	if (flags & PYIPC_SEG_PATH)
		return unlink(where) ? -errno : 0;
	return shm_unlink(where) ? -errno : 0;
}

int seg_peek(const char *where, int flags, struct seg_hdr *out)
{
	ssize_t n;
	int fd = open_where(where, flags, O_RDONLY, 0);

	if (fd < 0)
		return fd;
	n = pread(fd, out, sizeof(*out), 0);
	close(fd);
	if (n < 0)
		return -errno;
	return n == (ssize_t)sizeof(*out) && out->magic == SEG_MAGIC ? 0 : -EBADMSG;
}

int pyipc_seg_probe(const char *where, int flags, struct pyipc_seg_probe *out)
{
	struct seg_hdr h;
	struct stat st;
	ssize_t n;
	int fd = open_where(where, flags, O_RDONLY, 0);

	if (fd < 0)
		return fd;
	memset(out, 0, sizeof(*out));
	if (fstat(fd, &st)) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	out->size = (uint64_t)st.st_size;
	n = pread(fd, &h, sizeof(h), 0);
	close(fd);
	if (n == (ssize_t)sizeof(h) && h.magic == SEG_MAGIC) {
		out->magic_ok = 1;
		out->version = h.version;
		out->kind = h.kind;
	}
	return 0;
}
