// SPDX-License-Identifier: MIT
/*
 * ring.c - a ring of variable-length messages in POSIX shared memory.
 *
 * Design in one paragraph.  The segment is a header page followed by a
 * power-of-two byte ring.  Producers and consumers are two classes, each with
 * its own futex lock and its own cache line (a "two-lock queue"): producers serialise among themselves on `plock` and own `tail`,
 * consumers serialise on `clock` and own `head`, so a producer copies in
 * while a consumer copies out.  Cursors are free-running 64-bit byte counts,
 * masked on use.  A record is an 8-byte header (length and its complement)
 * and the payload padded to 8 bytes; a record is published by one store of
 * the cursor after its bytes are written, so a process that dies mid-copy
 * leaves nothing half-visible.  Sleepers wait on futex words ("event
 * counts") with a waiter bit, so a wake costs a system call only when someone
 * sleeps, and a dead sleeper cannot leave a stale count behind.
 *
 * Why not glibc's robust pthread mutex: it keeps the links of the owner's
 * robust list inside the mutex, i.e. in the shared segment, and unlocking
 * writes through them, so any process that can write the segment could make
 * a lock holder write to an address of its choosing.  Our lock word holds
 * only the owner's thread id; a waiter that finds the owner dead (gone, a
 * zombie, or its thread id reused) takes the lock over and repairs.
 *
 * The segment is untrusted: geometry is validated at attach and kept in the
 * process-local handle; every cursor and length read from the segment is
 * checked before it is used to address memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "pyipc_api.h"

#define RING_MAGIC 0x474e495243504950ull /* "PIPCRING" read little-endian */
#define RING_VERSION 1u
#define HDR_SIZE 4096u /* the data starts on its own page */
#define LINE 128       /* two cache lines: the adjacent-line prefetcher pairs them */
#define REC_HDR 8u
#define MIN_CAPACITY 64ull
#define MAX_CAPACITY (1ull << 32) /* keeps every length within a uint32_t */

#define SLICE_NS 100000000ll /* longest single wait: 100 ms, for Ctrl-C */
#define SPIN_NS 50000ll      /* spin this long before sleeping */
#define WAITERS 1u           /* low bit of an event count: someone sleeps */

#define NOWAIT 0
#define FOREVER (-1)

/*
 * The shared header.  Only fixed-size types; both sides must agree on it.
 *
 * Each side is two cache lines: a private one that only its own threads
 * touch (the lock and the redo log), and a published one that the other
 * side reads on every call (the cursor).  Were they one line, every lock
 * taken would first have to pull the line back from the other CPU.
 */
struct side {
	/* private */
	_Atomic uint32_t lock;        /* 0 free, else owner tid | LOCK_WAITERS */
	uint32_t pad;
	_Atomic uint64_t owner_start; /* owner thread's start time: tid reuse */
	_Atomic uint64_t waits;       /* times this side went to sleep */
	/*
	 * A one-entry redo log for the published fields: written before the
	 * cursor is published, so a lock recovered from a dead owner can tell
	 * whether its last commit happened (cursor == pend_cursor) and finish it.
	 */
	uint64_t pend_cursor;
	uint64_t pend_count;
	uint64_t pend_bytes;
	/*
	 * The other side's cursor as last read.  Reading the real one pulls its
	 * cache line over from the other CPU, so a producer re-reads the head
	 * only when the cached one says "full", a consumer the tail only when
	 * the cached one says "empty".  A stale value is always a safe one.
	 */
	uint64_t other_cursor;
	/* published */
	alignas(LINE) _Atomic uint64_t cursor; /* producers: tail; consumers: head */
	_Atomic uint64_t count;                /* messages ever put / got */
	_Atomic uint64_t bytes;                /* payload bytes ever put / got */
	/* The event count the *other* side sleeps on, bumped by this side. */
	_Atomic uint32_t wake_evt;
};

struct shm_hdr {
	uint64_t magic; /* written last at creation, with release order */
	uint32_t version;
	uint32_t hdr_size;
	uint64_t capacity;
	uint64_t max_msg;
	uint64_t max_messages;
	int32_t creator_pid;
	_Atomic uint32_t shutdown;
	_Atomic uint64_t recoveries;
	alignas(LINE) struct side prod;
	alignas(LINE) struct side cons;
};

_Static_assert(sizeof(struct shm_hdr) <= HDR_SIZE, "header must fit its page");

/* The process-local handle: geometry copied out of the segment once. */
struct pyipc_ring {
	struct shm_hdr *hdr;
	unsigned char *data;
	uint64_t cap;
	uint64_t mask;
	uint64_t max_msg;
	uint64_t max_messages;
	size_t map_size;
	int proc_ok; /* /proc works here, so dead lock owners can be found */
	_Atomic int users;
	_Atomic int closing;
};

struct rec_hdr {
	uint32_t len;
	uint32_t check; /* ~len: catches a scribbled or stale length */
};

/* ---- time, futexes ---------------------------------------------------- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static struct timespec to_timespec(int64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000ll, .tv_nsec = ns % 1000000000ll };
	return ts;
}

/* The end of this call's wait: the deadline, or the slice if sooner. */
static int64_t wait_until(int64_t deadline, int64_t start)
{
	int64_t slice = start + SLICE_NS;

	return (deadline == FOREVER || deadline > slice) ? slice : deadline;
}

/* A wait ended at `until`: was it the caller's deadline or just a slice? */
static int timeout_code(int64_t deadline, int64_t until)
{
	if (deadline == NOWAIT)
		return -EAGAIN;
	return (deadline != FOREVER && until >= deadline) ? -ETIMEDOUT : -EINTR;
}

/* Shared (not private) futex: the word lives in memory other processes map. */
static int futex_wait(_Atomic uint32_t *word, uint32_t val, int64_t until)
{
	struct timespec ts = to_timespec(until);

	/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
	if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET, val, &ts, NULL, FUTEX_BITSET_MATCH_ANY) == 0)
		return 0;
	return -errno;
}

static void futex_wake_all(_Atomic uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Wake the sleepers on evt, if any: one system call only when one sleeps. */
static void wake_sleepers(_Atomic uint32_t *evt)
{
	uint32_t v = atomic_load_explicit(evt, memory_order_relaxed);

	while (v & WAITERS) {
		/* v + 1 clears the waiter bit and advances the count by one step. */
		if (atomic_compare_exchange_weak(evt, &v, v + 1)) {
			futex_wake_all(evt);
			return;
		}
	}
}

/* Announce a sleeper on evt; returns the value to sleep on. */
static uint32_t announce_sleeper(_Atomic uint32_t *evt)
{
	return atomic_fetch_or(evt, WAITERS) | WAITERS;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* ---- handle lifetime: calls in flight vs close() ----------------------- */

static int enter(struct pyipc_ring *r)
{
	atomic_fetch_add(&r->users, 1);
	/* seq_cst on both sides: either close() sees us, or we see close(). */
	if (atomic_load(&r->closing)) {
		atomic_fetch_sub(&r->users, 1);
		return -EBADF;
	}
	return 0;
}

static void leave(struct pyipc_ring *r)
{
	atomic_fetch_sub(&r->users, 1);
}

/* ---- geometry and validation ------------------------------------------ */

static uint64_t rec_size(uint64_t len)
{
	return REC_HDR + ((len + 7) & ~7ull);
}

static void copy_in(struct pyipc_ring *r, uint64_t pos, const void *src, uint64_t len)
{
	uint64_t off = pos & r->mask;
	uint64_t first = len < r->cap - off ? len : r->cap - off;

	if (!len)
		return; /* src may be NULL, and memcpy(NULL, ...) is undefined */
	memcpy(r->data + off, src, first);
	memcpy(r->data, (const unsigned char *)src + first, len - first);
}

static void copy_out(struct pyipc_ring *r, uint64_t pos, void *dst, uint64_t len)
{
	uint64_t off = pos & r->mask;
	uint64_t first = len < r->cap - off ? len : r->cap - off;

	if (!len)
		return;
	memcpy(dst, r->data + off, first);
	memcpy((unsigned char *)dst + first, r->data, len - first);
}

/* Bytes queued between two cursors read from the segment, or -EBADMSG. */
static int64_t used_bytes(struct pyipc_ring *r, uint64_t head, uint64_t tail)
{
	uint64_t used = tail - head;

	if (used > r->cap || (used & 7) || (head & 7))
		return -EBADMSG;
	return (int64_t)used;
}

/*
 * Read and check the record header at head; returns the payload length or
 * -EBADMSG.  `used` is what used_bytes() allowed.  A record header never
 * straddles the wrap: positions are multiples of 8 and so is the capacity.
 */
static int64_t record_at(struct pyipc_ring *r, uint64_t head, uint64_t used)
{
	struct rec_hdr rh;

	memcpy(&rh, r->data + (head & r->mask), sizeof(rh));
	if (rh.check != ~rh.len || rh.len > r->max_msg || rec_size(rh.len) > used)
		return -EBADMSG;
	return rh.len;
}

/* Walk the records in [head, tail); returns how many, or -EBADMSG. */
static int64_t count_records(struct pyipc_ring *r, uint64_t head, uint64_t tail)
{
	int64_t n = 0;
	int64_t used = used_bytes(r, head, tail);

	if (used < 0)
		return used;
	while (head != tail) {
		int64_t len = record_at(r, head, tail - head);

		if (len < 0)
			return len;
		head += rec_size(len);
		n++;
	}
	return n;
}

/* ---- locks ------------------------------------------------------------ */

/*
 * Who this thread is, for the lock word: its kernel thread id and start
 * time.  Cached per thread; a forked child is a new thread with a new id, so
 * the cache is forgotten in the child (pthread_atfork).
 */
struct self_id {
	uint32_t tid;
	uint64_t start;
};

static __thread struct self_id self_id;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_self(void)
{
	self_id.tid = 0;
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, forget_self);
}

/* State letter and start time of task tid, from /proc/<tid>/stat. */
static int task_stat(uint32_t tid, char *state, uint64_t *start)
{
	char path[40], buf[1024], *p;
	ssize_t n;
	int fd, field;

	snprintf(path, sizeof(path), "/proc/%u/stat", tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return n < 0 ? -errno : -ESRCH;
	buf[n] = '\0';
	/* The command name may hold anything, so fields count from its last ')'. */
	p = strrchr(buf, ')');
	if (!p || p[1] != ' ')
		return -EIO;
	*state = p[2];
	/* p + 2 is field 3 (state); the start time is field 22. */
	for (p += 2, field = 3; field < 22 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (!p)
		return -EIO;
	*start = strtoull(p, NULL, 10);
	return 0;
}

static const struct self_id *whoami(void)
{
	if (!self_id.tid) {
		char state;

		pthread_once(&atfork_once, register_atfork);
		self_id.tid = (uint32_t)syscall(SYS_gettid);
		if (task_stat(self_id.tid, &state, &self_id.start))
			self_id.start = 0;
	}
	return &self_id;
}

#define LOCK_WAITERS 0x80000000u
#define LOCK_TID 0x3fffffffu
#define LOCK_SPINS 200
#define LOCK_CHECK_NS 5000000ll /* check the owner's health this often */

enum owner { OWNER_ALIVE, OWNER_DEAD, OWNER_SUSPECT };

/* Is the thread named by lock word v dead?  OWNER_SUSPECT: its id is alive
 * but its start time differs, which is either a reused id or an owner that
 * has not yet written its start time: only a second look can tell. */
static enum owner owner_health(struct pyipc_ring *r, struct side *s, uint32_t v,
			       const struct self_id *me)
{
	uint32_t tid = v & LOCK_TID;
	uint64_t start;
	char state;
	int rc;

	if (tid == me->tid)
		return OWNER_DEAD; /* we never lock twice: the word is garbage */
	if (!r->proc_ok)
		return OWNER_ALIVE; /* no way to tell: never steal */
	rc = task_stat(tid, &state, &start);
	if (rc == -ENOENT || rc == -ESRCH)
		return OWNER_DEAD;
	if (rc)
		return OWNER_ALIVE;
	if (state == 'Z' || state == 'X')
		return OWNER_DEAD; /* killed, not yet reaped by its parent */
	if (start != atomic_load_explicit(&s->owner_start, memory_order_relaxed))
		return OWNER_SUSPECT;
	return OWNER_ALIVE;
}

/*
 * Finish or drop the last commit of a side whose lock owner died.  The
 * cursor itself is always consistent (it is published by one store after the
 * bytes); only the counters may lag behind it.
 */
static void repair_side(struct side *s)
{
	if (atomic_load(&s->cursor) == s->pend_cursor) {
		atomic_store(&s->count, s->pend_count);
		atomic_store(&s->bytes, s->pend_bytes);
	}
}

static int lock_slow(struct pyipc_ring *r, struct side *s, const struct self_id *me,
		     int64_t deadline)
{
	/* Even a NOWAIT call waits for the lock: it is held only for a copy.
	 * Bounded by a slice so a lock scribbled into a "held" state cannot
	 * hang us. */
	int64_t until = wait_until(deadline == NOWAIT ? FOREVER : deadline, now_ns());
	uint32_t mine = me->tid, suspect = 0;
	int i;

	for (i = 0;; i++) {
		uint32_t v = atomic_load_explicit(&s->lock, memory_order_relaxed);
		int64_t t, wake_at;
		int rc;

		if (v == 0) {
			/* Once we have slept, others may sleep too: keep the bit
			 * so that our unlock wakes the next one. */
			if (atomic_compare_exchange_weak_explicit(&s->lock, &v, mine, memory_order_acquire,
								  memory_order_relaxed))
				return 0;
			continue;
		}
		if (i < LOCK_SPINS) {
			cpu_relax();
			continue;
		}
		if (!(v & LOCK_WAITERS) &&
		    !atomic_compare_exchange_weak(&s->lock, &v, v | LOCK_WAITERS))
			continue;
		v |= LOCK_WAITERS;
		mine = me->tid | LOCK_WAITERS;
		t = now_ns();
		if (t >= until)
			return timeout_code(deadline, until);
		wake_at = until < t + LOCK_CHECK_NS ? until : t + LOCK_CHECK_NS;
		rc = futex_wait(&s->lock, v, wake_at);
		if (rc == -EINTR)
			return -EINTR;
		if (rc != -ETIMEDOUT || wake_at == until)
			continue;
		/* The owner held it for 5 ms: is it still alive? */
		v = atomic_load(&s->lock);
		if (v == 0)
			continue;
		switch (owner_health(r, s, v, me)) {
		case OWNER_ALIVE:
			suspect = 0;
			break;
		case OWNER_SUSPECT:
			if (suspect != v) {
				suspect = v;
				break;
			}
			/* the same suspect word 5 ms later: dead */
			__attribute__((fallthrough));
		case OWNER_DEAD:
			if (atomic_compare_exchange_strong(&s->lock, &v, me->tid | (v & LOCK_WAITERS))) {
				atomic_store_explicit(&s->owner_start, me->start, memory_order_relaxed);
				repair_side(s);
				atomic_fetch_add(&r->hdr->recoveries, 1);
				return 0;
			}
			suspect = 0;
			break;
		}
	}
}

static int lock_side(struct pyipc_ring *r, struct side *s, int64_t deadline)
{
	const struct self_id *me = whoami();
	uint32_t v = 0;
	int rc = 0;

	if (!atomic_compare_exchange_strong_explicit(&s->lock, &v, me->tid, memory_order_acquire,
						     memory_order_relaxed))
		rc = lock_slow(r, s, me, deadline);
	if (!rc)
		atomic_store_explicit(&s->owner_start, me->start, memory_order_relaxed);
	return rc;
}

static void unlock_side(struct side *s)
{
	if (atomic_exchange_explicit(&s->lock, 0, memory_order_release) & LOCK_WAITERS)
		syscall(SYS_futex, &s->lock, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/*
 * Publish `n` records of `bytes` payload bytes ending at new_cursor, then
 * wake the other side if it sleeps.  The caller holds the side's lock.
 */
static void commit(struct side *s, uint64_t new_cursor, uint64_t n, uint64_t bytes)
{
	uint64_t count = atomic_load_explicit(&s->count, memory_order_relaxed) + n;
	uint64_t total = atomic_load_explicit(&s->bytes, memory_order_relaxed) + bytes;

	s->pend_cursor = new_cursor;
	s->pend_count = count;
	s->pend_bytes = total;
	/* Release: the record bytes (or our reads of them) come before this. */
	atomic_store_explicit(&s->cursor, new_cursor, memory_order_release);
	atomic_store_explicit(&s->count, count, memory_order_relaxed);
	atomic_store_explicit(&s->bytes, total, memory_order_relaxed);
}

/* After commit() and unlock: pairs with the fence in sleep_on() so that
 * either the sleeper sees our cursor or we see its waiter bit. */
static void wake_other(struct side *s)
{
	atomic_thread_fence(memory_order_seq_cst);
	wake_sleepers(&s->wake_evt);
}

/* ---- waiting ---------------------------------------------------------- */

/* What a waiter waits for; each returns nonzero when it may proceed. */
struct want {
	int (*ready)(struct pyipc_ring *r, const struct want *w);
	uint64_t need; /* bytes of room, or a message sequence number */
};

static int has_data(struct pyipc_ring *r, const struct want *w)
{
	struct shm_hdr *h = r->hdr;

	return atomic_load(&h->prod.cursor) != atomic_load(&h->cons.cursor);
}

static int has_room(struct pyipc_ring *r, const struct want *w)
{
	struct shm_hdr *h = r->hdr;
	uint64_t used = atomic_load(&h->prod.cursor) - atomic_load(&h->cons.cursor);

	if (used > r->cap)
		return 1; /* garbage: let the caller lock and report it */
	if (r->max_messages &&
	    atomic_load(&h->prod.count) - atomic_load(&h->cons.count) >= r->max_messages)
		return 0;
	return r->cap - used >= w->need;
}

static int was_consumed(struct pyipc_ring *r, const struct want *w)
{
	return atomic_load(&r->hdr->cons.count) > w->need;
}

static int stop_waiting(struct pyipc_ring *r)
{
	return atomic_load(&r->hdr->shutdown) || atomic_load_explicit(&r->closing, memory_order_relaxed);
}

/*
 * Wait, without holding any lock, until w->ready(), shutdown, close, the
 * deadline or the end of this call's slice.  `evt` is the event count the
 * other side bumps; `waits` counts our sleeps.  Returns 0 to retry, or
 * -ETIMEDOUT / -EINTR / -EAGAIN (NOWAIT).
 *
 * First spin for a little while: a peer on another CPU usually answers in a
 * few microseconds, far less than the ~30 us a cross-CPU wake-up costs.
 */
static int sleep_on(struct pyipc_ring *r, _Atomic uint32_t *evt, _Atomic uint64_t *waits,
		    const struct want *w, int64_t deadline, int *spun)
{
	int64_t start, until;
	uint32_t v;
	int rc;

	if (deadline == NOWAIT)
		return -EAGAIN;
	start = now_ns();
	until = wait_until(deadline, start);
	if (!*spun) {
		*spun = 1;
		for (int i = 0;; i++) {
			if (w->ready(r, w) || stop_waiting(r))
				return 0;
			cpu_relax();
			if ((i & 63) == 63 && now_ns() - start > SPIN_NS)
				break;
		}
	}
	v = announce_sleeper(evt);
	/* Pairs with wake_other(): see the comment there. */
	atomic_thread_fence(memory_order_seq_cst);
	if (w->ready(r, w) || stop_waiting(r))
		return 0;
	if (now_ns() >= until)
		return timeout_code(deadline, until);
	atomic_fetch_add_explicit(waits, 1, memory_order_relaxed);
	rc = futex_wait(evt, v, until);
	if (rc == -ETIMEDOUT)
		return timeout_code(deadline, until);
	if (rc == -EINTR)
		return -EINTR; /* a signal: let Python run its handlers */
	return 0;          /* woken, or the count moved before we slept */
}

/* ---- create, attach, close -------------------------------------------- */

static int handle_new(struct pyipc_ring **out)
{
	struct pyipc_ring *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->proc_ok = access("/proc/self/stat", R_OK) == 0;
	*out = r;
	return 0;
}

static void handle_map(struct pyipc_ring *r, void *base, size_t size, const struct shm_hdr *h)
{
	r->hdr = base;
	r->data = (unsigned char *)base + HDR_SIZE;
	r->map_size = size;
	r->cap = h->capacity;
	r->mask = h->capacity - 1;
	r->max_msg = h->max_msg;
	r->max_messages = h->max_messages;
}

int pyipc_ring_create(const char *name, uint64_t capacity, uint64_t max_messages, uint32_t mode,
		      pyipc_ring **out)
{
	struct pyipc_ring *r;
	struct shm_hdr *h;
	uint64_t cap = MIN_CAPACITY;
	size_t size;
	void *base;
	int fd, rc;

	if (capacity > MAX_CAPACITY)
		return -EINVAL;
	while (cap < capacity)
		cap <<= 1;
	size = HDR_SIZE + cap;

	rc = handle_new(&r);
	if (rc)
		return rc;
	fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, mode & 07777);
	if (fd < 0) {
		rc = -errno;
		goto err_free;
	}
	/* shm_open applied the umask; the contract is "exactly mode". */
	if (fchmod(fd, mode & 07777) || ftruncate(fd, (off_t)size)) {
		rc = -errno;
		goto err_unlink;
	}
	base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		rc = -errno;
		goto err_unlink;
	}
	h = base;
	h->version = RING_VERSION;
	h->hdr_size = HDR_SIZE;
	h->capacity = cap;
	h->max_msg = cap - REC_HDR;
	h->max_messages = max_messages;
	h->creator_pid = getpid();
	/* Attachers treat a ring without magic as not yet a ring. */
	atomic_store_explicit((_Atomic uint64_t *)&h->magic, RING_MAGIC, memory_order_release);
	close(fd);
	handle_map(r, base, size, h);
	*out = r;
	return 0;

err_unlink:
	shm_unlink(name);
	close(fd);
err_free:
	free(r);
	return rc;
}

/* Check a segment's header against its real size; 0 or -EBADMSG. */
static int validate_header(const struct shm_hdr *h, size_t size)
{
	uint64_t cap = h->capacity;

	if (h->version != RING_VERSION || h->hdr_size != HDR_SIZE)
		return -EBADMSG;
	if (cap < MIN_CAPACITY || cap > MAX_CAPACITY || (cap & (cap - 1)))
		return -EBADMSG;
	if (HDR_SIZE + cap != size || h->max_msg != cap - REC_HDR)
		return -EBADMSG;
	return 0;
}

int pyipc_ring_attach(const char *name, pyipc_ring **out)
{
	struct pyipc_ring *r;
	struct stat st;
	void *base = MAP_FAILED;
	size_t size = 0;
	int fd, rc, tries;

	rc = handle_new(&r);
	if (rc)
		return rc;
	fd = shm_open(name, O_RDWR, 0);
	if (fd < 0) {
		rc = -errno;
		goto err_free;
	}
	/*
	 * A creator sizes, maps and initialises the segment after making its
	 * name; give one that is mid-way a moment (up to ~100 ms) to finish.
	 */
	for (tries = 0;; tries++) {
		uint64_t magic;

		rc = -EBADMSG;
		if (fstat(fd, &st)) {
			rc = -errno;
			goto err_close;
		}
		if (st.st_size >= (off_t)HDR_SIZE && (uint64_t)st.st_size <= HDR_SIZE + MAX_CAPACITY) {
			size = (size_t)st.st_size;
			base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (base == MAP_FAILED) {
				rc = -errno;
				goto err_close;
			}
			magic = atomic_load_explicit((_Atomic uint64_t *)base, memory_order_acquire);
			if (magic == RING_MAGIC)
				break;
			munmap(base, size);
			base = MAP_FAILED;
			if (magic != 0)
				goto err_close; /* something else lives here */
		} else if (st.st_size != 0) {
			goto err_close; /* no ring has this size */
		}
		if (tries == 20)
			goto err_close;
		usleep(5000);
	}
	/* Copy the geometry out once; later reads of it could be scribbled. */
	{
		struct shm_hdr snap;

		memcpy(&snap, base, sizeof(snap));
		rc = validate_header(&snap, size);
		if (rc)
			goto err_unmap;
		handle_map(r, base, size, &snap);
	}
	close(fd);
	*out = r;
	return 0;

err_unmap:
	munmap(base, size);
err_close:
	close(fd);
err_free:
	free(r);
	return rc;
}

int pyipc_ring_close(pyipc_ring *r)
{
	if (atomic_exchange(&r->closing, 1))
		return 0;
	/* Let calls in other threads notice and leave, then unmap under none. */
	while (atomic_load(&r->users) > 0) {
		wake_sleepers(&r->hdr->prod.wake_evt);
		wake_sleepers(&r->hdr->cons.wake_evt);
		usleep(1000);
	}
	munmap(r->hdr, r->map_size);
	return 0;
}

void pyipc_ring_free(pyipc_ring *r)
{
	if (!r)
		return;
	pyipc_ring_close(r);
	free(r);
}

int pyipc_ring_unlink(const char *name)
{
	return shm_unlink(name) ? -errno : 0;
}

uint64_t pyipc_ring_capacity(const pyipc_ring *r)
{
	return r->cap;
}

uint64_t pyipc_ring_max_message_size(const pyipc_ring *r)
{
	return r->max_msg;
}

uint64_t pyipc_ring_max_messages(const pyipc_ring *r)
{
	return r->max_messages;
}

/* ---- put -------------------------------------------------------------- */

/*
 * Append the records data[0..n) (lengths in lens) that fit now; the caller
 * holds plock.  Returns how many were appended, or -EMSGSIZE / -EBADMSG for
 * the first item if it cannot be appended at all.
 */
static int64_t append(struct pyipc_ring *r, const unsigned char *data, const uint64_t *lens,
		      size_t n, uint64_t *first_seq)
{
	struct shm_hdr *h = r->hdr;
	uint64_t tail = atomic_load_explicit(&h->prod.cursor, memory_order_relaxed);
	uint64_t head = h->prod.other_cursor;
	uint64_t puts = atomic_load_explicit(&h->prod.count, memory_order_relaxed);
	uint64_t pos = tail, bytes = 0;
	int fresh = 0;
	size_t i;

	if (used_bytes(r, head, tail) < 0)
		head = tail + r->cap; /* a scribbled cache: "full", so refresh below */
	if (first_seq)
		*first_seq = puts;
	for (i = 0; i < n; i++) {
		uint64_t len = lens[i];
		struct rec_hdr rh = { .len = (uint32_t)len, .check = ~(uint32_t)len };

		if (len > r->max_msg) {
			if (i == 0)
				return -EMSGSIZE;
			break;
		}
		if ((pos - head) + rec_size(len) > r->cap) {
			/* Full by the cached head: read the consumers' real one. */
			if (fresh)
				break;
			fresh = 1;
			head = atomic_load_explicit(&h->cons.cursor, memory_order_acquire);
			h->prod.other_cursor = head;
			if (used_bytes(r, head, tail) < 0) {
				if (i)
					break;
				return -EBADMSG;
			}
			if ((pos - head) + rec_size(len) > r->cap)
				break;
		}
		if (r->max_messages &&
		    puts + i - atomic_load_explicit(&h->cons.count, memory_order_acquire) >= r->max_messages)
			break;
		memcpy(r->data + (pos & r->mask), &rh, sizeof(rh));
		copy_in(r, pos + REC_HDR, data, len);
		data += len;
		bytes += len;
		pos += rec_size(len);
	}
	if (i)
		commit(&h->prod, pos, i, bytes);
	return (int64_t)i;
}

/* put and put_many: append records, waiting for room as the deadline allows. */
static int put_records(pyipc_ring *r, const unsigned char *p, const uint64_t *lens, size_t n,
		       int64_t deadline, size_t *done, uint64_t *first_seq)
{
	struct shm_hdr *h;
	int spun = 0, rc = enter(r);

	*done = 0;
	if (rc)
		return rc;
	h = r->hdr;
	while (*done < n) {
		struct want w = { .ready = has_room, .need = rec_size(lens[*done]) };
		int64_t k;

		if (atomic_load(&h->shutdown)) {
			rc = -ESHUTDOWN;
			break;
		}
		if (lens[*done] > r->max_msg) {
			rc = -EMSGSIZE;
			break;
		}
		rc = lock_side(r, &h->prod, deadline);
		if (rc)
			break;
		k = append(r, p, lens + *done, n - *done, *done ? NULL : first_seq);
		unlock_side(&h->prod);
		if (k < 0) {
			rc = (int)k;
			break;
		}
		if (k > 0) {
			wake_other(&h->prod);
			for (int64_t i = 0; i < k; i++)
				p += lens[*done + i];
			*done += (size_t)k;
			continue;
		}
		rc = sleep_on(r, &h->cons.wake_evt, &h->prod.waits, &w, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
	}
	leave(r);
	return rc;
}

int pyipc_ring_put_many(pyipc_ring *r, const void *data, const uint64_t *lens, size_t n,
			int64_t deadline, size_t *done)
{
	return put_records(r, data, lens, n, deadline, done, NULL);
}

int pyipc_ring_put(pyipc_ring *r, const void *data, size_t len, int64_t deadline, uint64_t *seq)
{
	uint64_t len64 = len;
	size_t done;

	return put_records(r, data, &len64, 1, deadline, &done, seq);
}

int pyipc_ring_wait_consumed(pyipc_ring *r, uint64_t seq, int64_t deadline)
{
	struct want w = { .ready = was_consumed, .need = seq };
	struct shm_hdr *h;
	int spun = 0, rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	for (;;) {
		if (was_consumed(r, &w)) {
			rc = 0;
			break;
		}
		if (atomic_load(&h->shutdown)) {
			rc = -ESHUTDOWN;
			break;
		}
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
		rc = sleep_on(r, &h->cons.wake_evt, &h->prod.waits, &w, deadline, &spun);
		if (rc)
			break;
	}
	leave(r);
	return rc;
}

/* ---- get -------------------------------------------------------------- */

/*
 * Take up to max records into buf (cap bytes), lengths into lens; the caller
 * holds clock.  Returns how many (0: empty), or -EMSGSIZE with *needed set
 * when the first does not fit, or -EBADMSG.
 */
static int64_t take(struct pyipc_ring *r, unsigned char *buf, uint64_t cap, uint64_t *lens,
		    uint64_t max, uint64_t *needed)
{
	struct shm_hdr *h = r->hdr;
	uint64_t head = atomic_load_explicit(&h->cons.cursor, memory_order_relaxed);
	uint64_t tail = h->cons.other_cursor;
	uint64_t pos = head, off = 0, bytes = 0, i;
	int fresh = 0;

	if (used_bytes(r, head, tail) < 0)
		tail = head; /* a scribbled cache: "empty", so refresh below */
	for (i = 0; i < max; i++) {
		int64_t len;

		if (pos == tail) {
			/* Empty by the cached tail: read the producers' real one. */
			if (fresh)
				break;
			fresh = 1;
			tail = atomic_load_explicit(&h->prod.cursor, memory_order_acquire);
			h->cons.other_cursor = tail;
			if (used_bytes(r, head, tail) < 0) {
				if (i)
					break;
				return -EBADMSG;
			}
			if (pos == tail)
				break;
		}
		len = record_at(r, pos, tail - pos);
		if (len < 0) {
			if (i)
				break; /* deliver the good ones; the next call reports it */
			return len;
		}
		if ((uint64_t)len > cap - off) {
			if (i)
				break;
			*needed = (uint64_t)len;
			return -EMSGSIZE;
		}
		copy_out(r, pos + REC_HDR, buf + off, (uint64_t)len);
		lens[i] = (uint64_t)len;
		off += (uint64_t)len;
		bytes += (uint64_t)len;
		pos += rec_size((uint64_t)len);
	}
	if (i)
		commit(&h->cons, pos, i, bytes);
	return (int64_t)i;
}

int64_t pyipc_ring_get_many(pyipc_ring *r, void *buf, uint64_t cap, uint64_t *lens, uint64_t max,
			    int64_t deadline, uint64_t *needed)
{
	struct want w = { .ready = has_data };
	struct shm_hdr *h;
	int64_t rc = enter(r);
	int spun = 0;

	if (rc)
		return rc;
	h = r->hdr;
	if (max == 0) {
		rc = -EINVAL;
		goto out;
	}
	for (;;) {
		uint32_t shut = atomic_load(&h->shutdown);

		/* An immediate shutdown discards what is queued. */
		if (shut == 2) {
			rc = -ESHUTDOWN;
			break;
		}
		rc = lock_side(r, &h->cons, deadline);
		if (rc)
			break;
		rc = take(r, buf, cap, lens, max, needed);
		unlock_side(&h->cons);
		if (rc) {
			if (rc > 0)
				wake_other(&h->cons);
			break;
		}
		if (shut) {
			rc = -ESHUTDOWN;
			break;
		}
		rc = sleep_on(r, &h->prod.wake_evt, &h->cons.waits, &w, deadline, &spun);
		if (rc)
			break;
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
	}
out:
	leave(r);
	return rc;
}

int64_t pyipc_ring_get(pyipc_ring *r, void *buf, uint64_t cap, int64_t deadline, uint64_t *needed)
{
	uint64_t len;
	int64_t rc = pyipc_ring_get_many(r, buf, cap, &len, 1, deadline, needed);

	return rc == 1 ? (int64_t)len : rc;
}

int pyipc_ring_wait(pyipc_ring *r, int for_space, uint64_t need, int64_t deadline)
{
	struct want w = { .ready = for_space ? has_room : has_data, .need = rec_size(need) };
	struct shm_hdr *h;
	int spun = 0, rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	for (;;) {
		if (w.ready(r, &w) || atomic_load(&h->shutdown)) {
			rc = 0;
			break;
		}
		if (atomic_load(&r->closing)) {
			rc = -EBADF;
			break;
		}
		if (for_space)
			rc = sleep_on(r, &h->cons.wake_evt, &h->prod.waits, &w, deadline, &spun);
		else
			rc = sleep_on(r, &h->prod.wake_evt, &h->cons.waits, &w, deadline, &spun);
		if (rc)
			break;
	}
	leave(r);
	return rc;
}

/* ---- shutdown and inspection ------------------------------------------ */

int pyipc_ring_shutdown(pyipc_ring *r, int immediate)
{
	struct shm_hdr *h;
	uint32_t want = immediate ? 2 : 1, cur;
	int rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	/* Only ever escalate: 0 -> 1 -> 2. */
	cur = atomic_load(&h->shutdown);
	while (cur < want && !atomic_compare_exchange_weak(&h->shutdown, &cur, want))
		;
	/* Wake every sleeper, flagged or not: all must see the new state. */
	atomic_fetch_add(&h->prod.wake_evt, 2);
	atomic_fetch_add(&h->cons.wake_evt, 2);
	futex_wake_all(&h->prod.wake_evt);
	futex_wake_all(&h->cons.wake_evt);
	leave(r);
	return 0;
}

int64_t pyipc_ring_qsize(pyipc_ring *r)
{
	struct shm_hdr *h;
	uint64_t n;
	int rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	if (atomic_load(&h->shutdown) == 2) {
		n = 0; /* discarded: no get will ever return them */
	} else {
		/* gets first: a put landing in between can only make n larger. */
		uint64_t gets = atomic_load(&h->cons.count);

		n = atomic_load(&h->prod.count) - gets;
		if (n > r->cap / REC_HDR)
			n = 0; /* a transient or scribbled value: never report garbage */
	}
	leave(r);
	return (int64_t)n;
}

int pyipc_ring_info(pyipc_ring *r, struct pyipc_ring_info *out)
{
	struct shm_hdr *h;
	int64_t n;
	int rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	memset(out, 0, sizeof(*out));
	out->capacity = r->cap;
	out->max_message_size = r->max_msg;
	out->max_messages = r->max_messages;
	out->gets = atomic_load(&h->cons.count);
	out->bytes_got = atomic_load(&h->cons.bytes);
	out->get_waits = atomic_load(&h->cons.waits);
	out->puts = atomic_load(&h->prod.count);
	out->bytes_put = atomic_load(&h->prod.bytes);
	out->put_waits = atomic_load(&h->prod.waits);
	out->bytes_used = atomic_load(&h->prod.cursor) - atomic_load(&h->cons.cursor);
	if (out->bytes_used > r->cap)
		out->bytes_used = 0;
	out->recoveries = atomic_load(&h->recoveries);
	out->version = RING_VERSION;
	out->shutdown = atomic_load(&h->shutdown);
	out->creator_pid = h->creator_pid;
	leave(r);
	n = pyipc_ring_qsize(r);
	out->messages = n > 0 ? (uint64_t)n : 0;
	return 0;
}

int64_t pyipc_ring_check(pyipc_ring *r)
{
	struct shm_hdr *h;
	int64_t rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	/* Bounded: a lock scribbled into a held state must not hang a check. */
	rc = lock_side(r, &h->cons, now_ns() + SLICE_NS);
	if (!rc) {
		rc = count_records(r, atomic_load(&h->cons.cursor),
				   atomic_load_explicit(&h->prod.cursor, memory_order_acquire));
		unlock_side(&h->cons);
	}
	leave(r);
	return rc;
}

/* ---- waits owned by an event loop -------------------------------------- */

/*
 * Readiness is checked as in sleep_on(), without its spin: an event loop
 * must not spin.  The waiter bit is set before the second check, with a
 * seq_cst fence between them that pairs with wake_other(): either that check
 * sees what the other side published, or the other side sees the bit and
 * makes its wake call, which moves the count away from *val.  Counts as a
 * sleep in the side's waits counter, as sleep_on() does.
 */
int pyipc_ring_arm(pyipc_ring *r, int for_space, uint64_t need, uint32_t **word, uint32_t *val)
{
	struct want w = { .ready = for_space ? has_room : has_data, .need = rec_size(need) };
	_Atomic uint32_t *evt;
	_Atomic uint64_t *waits;
	struct shm_hdr *h;
	uint32_t v;
	int rc = enter(r);

	if (rc)
		return rc;
	h = r->hdr;
	if (for_space && need > r->max_msg) {
		rc = -EMSGSIZE; /* no room ever comes */
		goto out;
	}
	rc = 1;
	if (w.ready(r, &w) || atomic_load(&h->shutdown))
		goto out;
	evt = for_space ? &h->cons.wake_evt : &h->prod.wake_evt;
	waits = for_space ? &h->prod.waits : &h->cons.waits;
	v = announce_sleeper(evt);
	atomic_thread_fence(memory_order_seq_cst);
	if (w.ready(r, &w) || atomic_load(&h->shutdown))
		goto out;
	atomic_fetch_add_explicit(waits, 1, memory_order_relaxed);
	*word = (uint32_t *)evt;
	*val = v;
	rc = 0;
out:
	leave(r);
	return rc;
}
