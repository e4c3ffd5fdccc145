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

static int lock_description(struct seg *s, int keep_fd);

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

static void seg_reset(struct seg *s)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->share_fd = -1;
}

/* Size, allocate and map a new segment on s->fd, then claim an owner id.
 * On failure s->fd is still open (the caller undoes what it made). */
static int make_on_fd(struct seg *s, uint64_t capacity, uint64_t hdr_min, int keep_fd)
{
	uint64_t page = page_size(s->fd), cap;
	int rc;

	for (cap = page; cap < capacity; cap <<= 1)
		;
	s->cap = cap;
	s->hdr_size = (hdr_min + page - 1) & ~(page - 1);
	if (ftruncate(s->fd, (off_t)(s->hdr_size + cap)))
		return -errno;
	/* Allocate the space now: on a full tmpfs (a container's small
	 * /dev/shm) a page first touched later would kill with SIGBUS. */
	rc = -posix_fallocate(s->fd, 0, (off_t)(s->hdr_size + cap));
	if (rc && rc != -EOPNOTSUPP && rc != -EINVAL)
		return rc;
	rc = identify(s);
	if (!rc)
		rc = map_twice(s, page);
	if (rc)
		return rc;
	s->hdr->hdr_size = s->hdr_size;
	s->hdr->capacity = cap;
	s->hdr->creator_pid = getpid();
	atomic_store(&s->hdr->owner_seq, 1);
	rc = lock_description(s, keep_fd);
	if (rc)
		munmap(s->map, s->map_len);
	return rc;
}

int seg_create(struct seg *s, const char *where, int flags, uint64_t capacity, uint64_t hdr_min,
	       uint32_t mode)
{
	int rc;

	seg_reset(s);
	if (capacity > MAX_CAPACITY)
		return -EINVAL;
	rc = open_where(where, flags, O_RDWR | O_CREAT | O_EXCL, mode & 07777);
	if (rc < 0)
		return rc;
	s->fd = rc;
	/* open() applied the umask; the contract is "exactly mode". */
	rc = fchmod(s->fd, mode & 07777) ? -errno : remember_path(s, where, flags);
	if (!rc)
		rc = make_on_fd(s, capacity, hdr_min, 0);
	if (!rc)
		return 0;
	if (flags & PYIPC_SEG_PATH)
		unlink(where);
	else
		shm_unlink(where);
	if (s->fd >= 0)
		close(s->fd);
	free(s->path);
	seg_reset(s);
	return rc;
}

int seg_create_anon(struct seg *s, uint64_t capacity, uint64_t hdr_min)
{
	int rc;

	seg_reset(s);
	if (capacity > MAX_CAPACITY)
		return -EINVAL;
	s->fd = memfd_create("pyipc-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (s->fd < 0)
		return -errno;
	rc = make_on_fd(s, capacity, hdr_min, 1);
	/* Nobody can shrink it under the processes that map it (the SIGBUS a
	 * truncated shared file causes), nor grow it. */
	if (!rc && fcntl(s->share_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		rc = -errno;
	if (!rc)
		return 0;
	if (s->map)
		munmap(s->map, s->map_len);
	if (s->fd >= 0)
		close(s->fd);
	if (s->share_fd >= 0)
		close(s->share_fd);
	seg_reset(s);
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

/* Validate and map the existing segment on s->fd, then claim an owner id. */
static int join_on_fd(struct seg *s, uint32_t kind, uint64_t hdr_min, int flags, int keep_fd)
{
	uint64_t page = page_size(s->fd);
	struct seg_hdr snap;
	struct stat st;
	int rc, tries;

	/*
	 * A creator sizes, maps and initialises the segment after making its
	 * name; give one that is mid-way a moment (up to ~100 ms) to finish.
	 */
	for (tries = 0;; tries++) {
		unsigned char *first;
		uint64_t magic;

		if (fstat(s->fd, &st))
			return -errno;
		if ((uint64_t)st.st_size >= page) {
			first = mmap(NULL, page, PROT_READ, MAP_SHARED, s->fd, 0);
			if (first == MAP_FAILED)
				return -errno;
			magic = atomic_load_explicit((_Atomic uint64_t *)first, memory_order_acquire);
			memcpy(&snap, first, sizeof(snap));
			munmap(first, page);
			if (magic == SEG_MAGIC)
				break;
			if (magic != 0)
				return -EBADMSG; /* something else lives here */
		} else if (st.st_size != 0) {
			return -EBADMSG; /* no segment has this size */
		}
		if (tries == 20)
			return -EBADMSG;
		usleep(5000);
	}
	/* Copy the geometry out once; later reads of it could be scribbled. */
	rc = validate(s, &snap, (uint64_t)st.st_size, page, kind, hdr_min, flags);
	if (!rc)
		rc = identify(s);
	if (!rc)
		rc = map_twice(s, page);
	if (rc)
		return rc;
	rc = lock_description(s, keep_fd);
	if (rc)
		munmap(s->map, s->map_len);
	return rc;
}

int seg_attach(struct seg *s, const char *where, int flags, uint32_t kind, uint64_t hdr_min)
{
	int rc;

	seg_reset(s);
	rc = open_where(where, flags, O_RDWR, 0);
	if (rc < 0)
		return rc;
	s->fd = rc;
	rc = remember_path(s, where, flags);
	if (!rc)
		rc = join_on_fd(s, kind, hdr_min, flags, 0);
	if (!rc)
		return 0;
	if (s->fd >= 0)
		close(s->fd);
	free(s->path);
	seg_reset(s);
	return rc;
}

int seg_attach_fd(struct seg *s, int fd, uint32_t kind, uint64_t hdr_min)
{
	int rc;

	seg_reset(s);
	s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (s->fd < 0)
		return -errno;
	rc = join_on_fd(s, kind, hdr_min, 0, 1);
	if (!rc)
		return 0;
	if (s->fd >= 0)
		close(s->fd);
	if (s->share_fd >= 0)
		close(s->share_fd);
	seg_reset(s);
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
	if (s->share_fd >= 0) {
		close(s->share_fd);
		s->share_fd = -1;
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
 * s->fd, and claim an id on it; the old descriptor is closed, or kept as
 * s->share_fd (keep_fd: a segment with no name, passed to other processes
 * by descriptor).  The lock must never live on the
 * description the segment is mapped through: a mapping holds a reference
 * to its description, a forked child inherits the mapping, and so a lock on
 * it would outlive its dead owner for as long as any child of it lives.
 * A description that is never mapped is referenced only by descriptors,
 * which a forked child closes (seg_after_fork) and exec() closes.
 */
static int lock_description(struct seg *s, int keep_fd)
{
	int fd = reopen(s, s->fd);

	if (keep_fd)
		s->share_fd = s->fd;
	else
		close(s->fd);
	s->fd = fd;
	s->owner = OWNER_UNKNOWN;
	if (fd < 0)
		return 0; /* no evidence for this handle: its locks are never taken over */
	return owner_claim(fd, &s->hdr->owner_seq, &s->owner);
}

int seg_claim_again(struct seg *s)
{
	uint32_t old = s->owner;
	int rc;

	if (s->fd < 0 || old == OWNER_UNKNOWN)
		return 0;
	/* The new one first: our old byte stays ours until we have another. */
	rc = owner_claim(s->fd, &s->hdr->owner_seq, &s->owner);
	if (rc) {
		s->owner = old;
		return rc;
	}
	owner_release(s->fd, old);
	return 0;
}

void seg_after_fork(struct seg *s)
{
	if (s->fd < 0 || !s->map) {
		s->owner = OWNER_UNKNOWN;
		return;
	}
	/* Our copy of the parent's descriptor would vouch for the parent.  (A
	 * share_fd carries no lock: the child may keep its copy.) */
	{
		int fd = reopen(s, s->fd);

		close(s->fd);
		s->fd = fd;
		s->owner = OWNER_UNKNOWN;
		if (fd >= 0 && owner_claim(fd, &s->hdr->owner_seq, &s->owner))
			s->owner = OWNER_UNKNOWN;
	}
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
