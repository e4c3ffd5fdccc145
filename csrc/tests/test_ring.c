// SPDX-License-Identifier: MIT
/*
 * test_ring.c - the ring's own tests, linked with the ring's sources alone
 * (no Python), so that they run under AddressSanitizer,
 * UndefinedBehaviorSanitizer and ThreadSanitizer.  Built with
 * -DPYIPC_TEST_HOOKS, which lets a test hold a lock it has just taken.
 *
 * Usage: test_ring [test-name...]   (no name: every test)
 * Environment: PYIPC_CTEST_PREFIX  prefix of every segment name made here
 *                                  (default "pyipc-ctest-<pid>"),
 *              PYIPC_CTEST_SEED    seed of the pseudo-random choices.
 * Exit status 0 when every selected test passed, 77 when a test cannot run
 * here (it prints "skip <name>: <why>").  Every segment a test makes is
 * unlinked, on success and on failure alike.
 *
 * A few tests poke at the shared header through the offsets ring_api.h
 * exports (PYIPC_OFF_*, checked against the structures in layout.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyipc_api.h"

#define OFF_PROD PYIPC_OFF_PROD_LOCK
#define OFF_CONS PYIPC_OFF_CONS_LOCK
#define HDR_PAGE 4096
#define SKIPPED 77 /* exit status of a test that cannot run here */

#define NOWAIT 0
#define FOREVER (-1)

/* ---- failure reporting and cleanup ------------------------------------ */

static char prefix[96];
static char names[256][128];
static atomic_int nnames;
static const char *current = "?";
static uint64_t seed;

static pid_t main_pid;

static void cleanup(void)
{
	int n = atomic_load(&nnames);

	if (getpid() != main_pid)
		return; /* a forked child: the names are the test's, not its own */

	for (int i = 0; i < n && i < 256; i++)
		shm_unlink(names[i]);
}

static void failed(int line, const char *what)
{
	fprintf(stderr, "FAIL %s (line %d, seed %llu): %s\n", current, line,
		(unsigned long long)seed, what);
	cleanup();
	_exit(1);
}

#define CHECK(cond)                                   \
	do {                                          \
		if (!(cond))                          \
			failed(__LINE__, #cond);      \
	} while (0)

#define CHECK_EQ(a, b)                                                                   \
	do {                                                                             \
		long long a_ = (long long)(a), b_ = (long long)(b);                      \
		if (a_ != b_) {                                                          \
			char msg_[256];                                                  \
			snprintf(msg_, sizeof(msg_), "%s == %s: %lld != %lld", #a, #b, a_, \
				 b_);                                                    \
			failed(__LINE__, msg_);                                          \
		}                                                                        \
	} while (0)

/* A new segment name, remembered so that it is unlinked whatever happens. */
static const char *new_name(void)
{
	int i = atomic_fetch_add(&nnames, 1);

	if (i >= 256)
		failed(__LINE__, "too many names");
	snprintf(names[i], sizeof(names[i]), "/%s-%d", prefix, i);
	return names[i];
}

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: small and good enough to pick sizes. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int64_t in_ms(int ms)
{
	return now_ns() + (int64_t)ms * 1000000ll;
}

static uint64_t rec_size(uint64_t len)
{
	return 8 + ((len + 7) & ~7ull);
}

/* The byte at index i of message `id`: every message has its own pattern. */
static unsigned char pattern(uint64_t id, uint64_t i)
{
	return (unsigned char)((id * 131 + i * 7 + (i >> 8)) ^ (id >> 3));
}

static void fill(unsigned char *buf, uint64_t id, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		buf[i] = pattern(id, i);
}

static int matches(const unsigned char *buf, uint64_t id, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		if (buf[i] != pattern(id, i))
			return 0;
	return 1;
}

static pyipc_ring *make(uint64_t capacity, uint64_t max_messages)
{
	pyipc_ring *r = NULL;

	CHECK_EQ(pyipc_ring_create(new_name(), 0, capacity, max_messages, 0600, &r), 0);
	CHECK(r != NULL);
	return r;
}

/* put with a FOREVER deadline, retrying the -EINTR that ends every slice. */
static int put_forever(pyipc_ring *r, const void *data, size_t len, uint64_t *seq)
{
	int rc;

	do
		rc = pyipc_ring_put(r, data, len, FOREVER, seq);
	while (rc == -EINTR);
	return rc;
}

/* put with a deadline, retrying the -EINTR that ends every slice. */
static int put_until(pyipc_ring *r, const void *data, size_t len, int64_t deadline)
{
	int rc;

	do
		rc = pyipc_ring_put(r, data, len, deadline, NULL);
	while (rc == -EINTR);
	return rc;
}

/* Map a segment by name, read-write, to poke at its header. */
static unsigned char *map_raw(const char *name, size_t *size)
{
	struct stat st;
	void *p;
	int fd = shm_open(name, O_RDWR, 0);

	CHECK(fd >= 0);
	CHECK(fstat(fd, &st) == 0);
	*size = (size_t)st.st_size;
	p = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED);
	close(fd);
	return p;
}

static int attach_rc(const char *name)
{
	pyipc_ring *r = NULL;
	int rc = pyipc_ring_attach(name, 0, &r);

	if (rc == 0)
		pyipc_ring_free(r);
	return rc;
}

/* Make a ring of `capacity`, hand its raw mapping to `poke`, then attach. */
static int attach_after(uint64_t capacity, void (*poke)(const char *name, unsigned char *p))
{
	pyipc_ring *r = make(capacity, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	size_t size;
	unsigned char *p = map_raw(name, &size);
	int rc;

	poke(name, p);
	munmap(p, size);
	rc = attach_rc(name);
	pyipc_ring_free(r);
	return rc;
}

/* ---- create, attach, close -------------------------------------------- */

/* create rounds the capacity up to a power of two and attach sees the same geometry. */
static void test_create_attach(void)
{
	pyipc_ring *a = make(5000, 7), *b = NULL, *c = NULL;
	const char *name = names[atomic_load(&nnames) - 1];
	struct pyipc_ring_info info;

	CHECK_EQ(pyipc_ring_capacity(a), 8192);
	CHECK_EQ(pyipc_ring_max_message_size(a), 8184);
	CHECK_EQ(pyipc_ring_max_messages(a), 7);
	CHECK_EQ(pyipc_ring_attach(name, 0, &b), 0);
	CHECK_EQ(pyipc_ring_capacity(b), 8192);
	CHECK_EQ(pyipc_ring_max_message_size(b), 8184);
	CHECK_EQ(pyipc_ring_max_messages(b), 7);
	CHECK_EQ(pyipc_ring_create(name, 0, 1000, 0, 0600, &c), -EEXIST);
	CHECK_EQ(pyipc_ring_put(a, "abc", 3, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_qsize(b), 1);
	CHECK_EQ(pyipc_ring_info(b, &info), 0);
	CHECK_EQ(info.messages, 1);
	CHECK_EQ(info.puts, 1);
	CHECK_EQ(info.bytes_put, 3);
	CHECK_EQ(info.bytes_used, 16);
	CHECK_EQ(info.creator_pid, getpid());
	CHECK_EQ(info.version, PYIPC_LAYOUT_VERSION);
	CHECK_EQ(info.hdr_size, HDR_PAGE);
	CHECK(info.owner != 0 && info.owner != PYIPC_OWNER_UNKNOWN);
	pyipc_ring_free(a);
	pyipc_ring_free(b);
}

/* tiny capacities are raised to the minimum; absurd ones are refused. */
static void test_create_limits(void)
{
	pyipc_ring *r = make(1, 0), *bad = NULL;

	CHECK_EQ(pyipc_ring_capacity(r), HDR_PAGE);
	CHECK_EQ(pyipc_ring_capacity(r) & (pyipc_ring_capacity(r) - 1), 0);
	pyipc_ring_free(r);
	CHECK(pyipc_ring_create(new_name(), 0, (1ull << 40), 0, 0600, &bad) < 0);
}

/* attaching to a missing name fails with -ENOENT; unlink twice with -ENOENT. */
static void test_attach_missing(void)
{
	const char *name = new_name();
	pyipc_ring *r = NULL;

	CHECK_EQ(pyipc_ring_attach(name, 0, &r), -ENOENT);
	CHECK_EQ(pyipc_seg_unlink(name, 0), -ENOENT);
	r = make(4096, 0);
	name = names[atomic_load(&nnames) - 1];
	CHECK_EQ(pyipc_seg_unlink(name, 0), 0);
	CHECK_EQ(pyipc_seg_unlink(name, 0), -ENOENT);
	/* An unlinked ring keeps working for the handles attached to it. */
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), 0);
	pyipc_ring_free(r);
}

/* close is idempotent and every call on a closed handle returns -EBADF. */
static void test_close(void)
{
	pyipc_ring *r = make(4096, 0);
	char buf[16];
	uint64_t needed, lens[2];
	size_t done;
	struct pyipc_ring_info info;

	CHECK_EQ(pyipc_ring_close(r), 0);
	CHECK_EQ(pyipc_ring_close(r), 0);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), -EBADF);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EBADF);
	lens[0] = 1;
	CHECK_EQ(pyipc_ring_put_many(r, "x", lens, 1, NOWAIT, &done), -EBADF);
	CHECK_EQ(pyipc_ring_get_many(r, buf, sizeof(buf), lens, 2, NOWAIT, &needed), -EBADF);
	CHECK_EQ(pyipc_ring_qsize(r), -EBADF);
	CHECK_EQ(pyipc_ring_info(r, &info), -EBADF);
	CHECK_EQ(pyipc_ring_check(r), -EBADF);
	CHECK_EQ(pyipc_ring_shutdown(r, 0), -EBADF);
	CHECK_EQ(pyipc_ring_wait(r, 0, 0, NOWAIT), -EBADF);
	CHECK_EQ(pyipc_ring_wait_consumed(r, 0, NOWAIT), -EBADF);
	{
		struct pyipc_lease l;
		uint32_t *word, val;

		CHECK_EQ(pyipc_ring_reserve(r, 8, NOWAIT, &l), -EBADF);
		CHECK_EQ(pyipc_ring_view(r, NOWAIT, &l), -EBADF);
		CHECK_EQ(pyipc_ring_arm(r, 0, 0, &word, &val), -EBADF);
		CHECK_EQ(pyipc_ring_repair(r), -EBADF);
		CHECK_EQ(pyipc_ring_flush(r), -EBADF);
	}
	pyipc_ring_free(r);
	pyipc_ring_free(NULL);
}

/* ---- put and get against a model -------------------------------------- */

/* random puts and gets of random sizes, across many wraps, agree with a FIFO model. */
static void test_model_roundtrip(void)
{
	enum { CAP = 4096, MAXQ = 1024 };
	pyipc_ring *r = make(CAP, 0);
	uint64_t ids[MAXQ], lens[MAXQ];
	unsigned head = 0, count = 0, next_id = 1;
	uint64_t used = 0, max = pyipc_ring_max_message_size(r);
	static unsigned char in[CAP], out[CAP];

	for (int step = 0; step < 20000; step++) {
		if (rnd() % 2) {
			/* Sizes skewed small, sometimes up to the largest. */
			uint64_t len = rnd() % 4 ? rnd() % 64 : rnd() % (max + 1);
			int fits = used + rec_size(len) <= CAP;
			int rc;

			fill(in, next_id, len);
			rc = pyipc_ring_put(r, in, len, NOWAIT, NULL);
			if (fits) {
				CHECK_EQ(rc, 0);
				CHECK(count < MAXQ);
				ids[(head + count) % MAXQ] = next_id++;
				lens[(head + count) % MAXQ] = len;
				count++;
				used += rec_size(len);
			} else {
				CHECK_EQ(rc, -EAGAIN);
			}
		} else {
			uint64_t needed = 0;
			int64_t n = pyipc_ring_get(r, out, sizeof(out), NOWAIT, &needed);

			if (!count) {
				CHECK_EQ(n, -EAGAIN);
				continue;
			}
			CHECK_EQ(n, lens[head]);
			CHECK(matches(out, ids[head], (uint64_t)n));
			used -= rec_size(lens[head]);
			head = (head + 1) % MAXQ;
			count--;
		}
		if (step % 97 == 0) {
			struct pyipc_ring_info info;

			CHECK_EQ(pyipc_ring_qsize(r), count);
			CHECK_EQ(pyipc_ring_check(r), count);
			CHECK_EQ(pyipc_ring_info(r, &info), 0);
			CHECK_EQ(info.bytes_used, used);
			CHECK_EQ(info.puts - info.gets, count);
		}
	}
	pyipc_ring_free(r);
}

/* a message of exactly max_message_size fits an empty ring whatever the cursor position. */
static void test_max_message_any_offset(void)
{
	enum { CAP = 4096 };
	pyipc_ring *r = make(CAP, 0);
	uint64_t max = pyipc_ring_max_message_size(r), needed;
	static unsigned char in[CAP], out[CAP];

	for (uint64_t shift = 0; shift < CAP; shift += 8) {
		/* Move both cursors forward by `shift` bytes with one small record. */
		if (shift >= 8) {
			CHECK_EQ(pyipc_ring_put(r, in, shift - 8, NOWAIT, NULL), 0);
			CHECK_EQ(pyipc_ring_get(r, out, sizeof(out), NOWAIT, &needed), (int64_t)(shift - 8));
		}
		fill(in, shift, max);
		CHECK_EQ(pyipc_ring_put(r, in, max, NOWAIT, NULL), 0);
		CHECK_EQ(pyipc_ring_put(r, in, 0, NOWAIT, NULL), -EAGAIN);
		memset(out, 0, sizeof(out));
		CHECK_EQ(pyipc_ring_get(r, out, sizeof(out), NOWAIT, &needed), (int64_t)max);
		CHECK(matches(out, shift, max));
	}
	pyipc_ring_free(r);
}

/* empty messages are real messages: queued, counted, delivered as length 0. */
static void test_empty_messages(void)
{
	pyipc_ring *r = make(64, 0);
	uint64_t needed;
	char buf[8];
	int n = 0;

	while (pyipc_ring_put(r, "", 0, NOWAIT, NULL) == 0)
		n++;
	CHECK_EQ(n, pyipc_ring_capacity(r) / 8); /* a bare 8-byte record header each */
	CHECK_EQ(pyipc_ring_qsize(r), n);
	CHECK_EQ(pyipc_ring_check(r), n);
	for (int i = 0; i < n; i++)
		CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EAGAIN);
	pyipc_ring_free(r);
}

/* an empty message moves through NULL buffers of size 0, as C allows for zero-length data. */
static void test_empty_message_null_buffer(void)
{
	pyipc_ring *r = make(64, 0);
	uint64_t needed, len = 0, lens[2];
	size_t done;

	CHECK_EQ(pyipc_ring_put(r, NULL, 0, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_put_many(r, NULL, &len, 1, NOWAIT, &done), 0);
	CHECK_EQ(done, 1);
	CHECK_EQ(pyipc_ring_get(r, NULL, 0, NOWAIT, &needed), 0);
	CHECK_EQ(pyipc_ring_get_many(r, NULL, 0, lens, 2, NOWAIT, &needed), 1);
	CHECK_EQ(lens[0], 0);
	pyipc_ring_free(r);
}

/* a message longer than max_message_size is refused with -EMSGSIZE, at once. */
static void test_put_too_large(void)
{
	pyipc_ring *r = make(1024, 0);
	static unsigned char big[2 * HDR_PAGE];
	uint64_t max = pyipc_ring_max_message_size(r);
	uint64_t lens[3] = { 5, max + 1, 5 };
	size_t done = 99;

	CHECK_EQ(pyipc_ring_put(r, big, max + 1, FOREVER, NULL), -EMSGSIZE);
	CHECK_EQ(pyipc_ring_put(r, big, sizeof(big), NOWAIT, NULL), -EMSGSIZE);
	CHECK_EQ(pyipc_ring_qsize(r), 0);
	/* put_many queues the items before the bad one and stops there. */
	CHECK_EQ(pyipc_ring_put_many(r, big, lens, 3, FOREVER, &done), -EMSGSIZE);
	CHECK_EQ(done, 1);
	CHECK_EQ(pyipc_ring_qsize(r), 1);
	pyipc_ring_free(r);
}

/* a get buffer too small fails with -EMSGSIZE, reports the length and keeps the message. */
static void test_get_buffer_too_small(void)
{
	pyipc_ring *r = make(1024, 0);
	unsigned char in[100], out[100];
	uint64_t needed = 0, lens[4];

	fill(in, 42, 100);
	CHECK_EQ(pyipc_ring_put(r, in, 100, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_get(r, out, 99, NOWAIT, &needed), -EMSGSIZE);
	CHECK_EQ(needed, 100);
	needed = 0;
	CHECK_EQ(pyipc_ring_get_many(r, out, 10, lens, 4, NOWAIT, &needed), -EMSGSIZE);
	CHECK_EQ(needed, 100);
	CHECK_EQ(pyipc_ring_qsize(r), 1);
	CHECK_EQ(pyipc_ring_get(r, out, 100, NOWAIT, &needed), 100);
	CHECK(matches(out, 42, 100));
	pyipc_ring_free(r);
}

/* put_many queues what fits and reports how many; NOWAIT stops with -EAGAIN. */
static void test_put_many_partial(void)
{
	enum { LEN = 800 }; /* 808-byte records: 5 fit in 4096 */
	pyipc_ring *r = make(4096, 0);
	static unsigned char data[10 * LEN], out[LEN];
	uint64_t lens[10], needed;
	size_t done = 0;

	for (int i = 0; i < 10; i++) {
		lens[i] = LEN;
		fill(data + LEN * i, 100 + i, LEN);
	}
	CHECK_EQ(pyipc_ring_put_many(r, data, lens, 10, NOWAIT, &done), -EAGAIN);
	CHECK_EQ(done, 5);
	CHECK_EQ(pyipc_ring_put_many(r, data, lens, 10, in_ms(20), &done), -ETIMEDOUT);
	CHECK_EQ(done, 0);
	for (int i = 0; i < 5; i++) {
		CHECK_EQ(pyipc_ring_get(r, out, sizeof(out), NOWAIT, &needed), LEN);
		CHECK(matches(out, 100 + i, LEN));
	}
	/* The rest goes in a second call, in order. */
	CHECK_EQ(pyipc_ring_put_many(r, data + 5 * LEN, lens + 5, 5, NOWAIT, &done), 0);
	CHECK_EQ(done, 5);
	for (int i = 5; i < 10; i++) {
		CHECK_EQ(pyipc_ring_get(r, out, sizeof(out), NOWAIT, &needed), LEN);
		CHECK(matches(out, 100 + i, LEN));
	}
	CHECK_EQ(pyipc_ring_put_many(r, data, lens, 0, NOWAIT, &done), 0);
	CHECK_EQ(done, 0);
	pyipc_ring_free(r);
}

/* get_many returns up to max messages, stops before one that would overflow the buffer. */
static void test_get_many_partial(void)
{
	pyipc_ring *r = make(4096, 0);
	unsigned char in[64], out[256];
	uint64_t lens[8], needed;
	int64_t n;

	for (int i = 0; i < 6; i++) {
		fill(in, 200 + i, 10 * (i + 1));
		CHECK_EQ(pyipc_ring_put(r, in, 10 * (i + 1), NOWAIT, NULL), 0);
	}
	/* max bounds the batch. */
	n = pyipc_ring_get_many(r, out, sizeof(out), lens, 2, NOWAIT, &needed);
	CHECK_EQ(n, 2);
	CHECK_EQ(lens[0], 10);
	CHECK_EQ(lens[1], 20);
	CHECK(matches(out, 200, 10));
	CHECK(matches(out + 10, 201, 20));
	/* The buffer bounds the batch: 30 + 40 fit in 75 bytes, 50 more do not. */
	n = pyipc_ring_get_many(r, out, 75, lens, 8, NOWAIT, &needed);
	CHECK_EQ(n, 2);
	CHECK_EQ(lens[0], 30);
	CHECK_EQ(lens[1], 40);
	CHECK(matches(out, 202, 30));
	CHECK(matches(out + 30, 203, 40));
	/* Never waits for more once one is there. */
	n = pyipc_ring_get_many(r, out, sizeof(out), lens, 8, FOREVER, &needed);
	CHECK_EQ(n, 2);
	CHECK(matches(out, 204, 50));
	CHECK(matches(out + 50, 205, 60));
	CHECK_EQ(pyipc_ring_get_many(r, out, sizeof(out), lens, 0, NOWAIT, &needed), -EINVAL);
	CHECK_EQ(pyipc_ring_get_many(r, out, sizeof(out), lens, 8, NOWAIT, &needed), -EAGAIN);
	pyipc_ring_free(r);
}

/* NOWAIT returns -EAGAIN, a near deadline -ETIMEDOUT, a far one -EINTR after one slice. */
static void test_nowait_and_timeouts(void)
{
	pyipc_ring *r = make(64, 0);
	static unsigned char buf[HDR_PAGE];
	uint64_t needed, max = pyipc_ring_max_message_size(r);
	int64_t t0;

	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EAGAIN);
	t0 = now_ns();
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(30), &needed), -ETIMEDOUT);
	CHECK(now_ns() - t0 >= 30 * 1000000ll);
	/* A deadline already passed (but not NOWAIT's 0) times out too. */
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), 1, &needed), -ETIMEDOUT);
	/* FOREVER still comes back after a slice, so Python can run handlers. */
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), FOREVER, &needed), -EINTR);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(10000), &needed), -EINTR);

	CHECK_EQ(pyipc_ring_put(r, buf, max, NOWAIT, NULL), 0); /* full now */
	CHECK_EQ(pyipc_ring_put(r, buf, 0, NOWAIT, NULL), -EAGAIN);
	CHECK_EQ(pyipc_ring_put(r, buf, 0, in_ms(30), NULL), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_put(r, buf, 0, FOREVER, NULL), -EINTR);
	CHECK_EQ(pyipc_ring_wait(r, 1, 0, NOWAIT), -EAGAIN);
	CHECK_EQ(pyipc_ring_wait(r, 1, 0, in_ms(20)), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_wait(r, 0, 0, NOWAIT), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), (int64_t)max);
	CHECK_EQ(pyipc_ring_wait(r, 0, 0, in_ms(20)), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_wait(r, 1, max, NOWAIT), 0);
	pyipc_ring_free(r);
}

/* the counters count: puts, gets, bytes, and sleeps on each side. */
static void test_stats(void)
{
	pyipc_ring *r = make(1024, 0);
	struct pyipc_ring_info info;
	unsigned char buf[128];
	uint64_t needed;

	CHECK_EQ(pyipc_ring_put(r, buf, 100, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_put(r, buf, 28, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 100);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(20), &needed), 28);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(20), &needed), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.puts, 2);
	CHECK_EQ(info.gets, 2);
	CHECK_EQ(info.bytes_put, 128);
	CHECK_EQ(info.bytes_got, 128);
	CHECK_EQ(info.messages, 0);
	CHECK_EQ(info.bytes_used, 0);
	CHECK(info.get_waits >= 1);
	CHECK_EQ(info.put_waits, 0);
	CHECK_EQ(info.recoveries, 0);
	CHECK_EQ(info.shutdown, 0);
	pyipc_ring_free(r);
}

/* max_messages bounds the queue by count even when bytes remain. */
static void test_max_messages(void)
{
	pyipc_ring *r = make(4096, 3);
	unsigned char buf[16] = { 0 };
	uint64_t lens[5] = { 1, 1, 1, 1, 1 }, needed;
	size_t done;

	for (int i = 0; i < 3; i++)
		CHECK_EQ(pyipc_ring_put(r, buf, 1, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_put(r, buf, 1, NOWAIT, NULL), -EAGAIN);
	CHECK_EQ(pyipc_ring_put(r, buf, 1, in_ms(20), NULL), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_wait(r, 1, 1, NOWAIT), -EAGAIN);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1);
	CHECK_EQ(pyipc_ring_put_many(r, buf, lens, 5, NOWAIT, &done), -EAGAIN);
	CHECK_EQ(done, 1);
	CHECK_EQ(pyipc_ring_qsize(r), 3);
	pyipc_ring_free(r);
}

/* ---- shutdown --------------------------------------------------------- */

/* after shutdown puts fail, gets drain what is queued and then fail, NOWAIT too. */
static void test_shutdown_drains(void)
{
	pyipc_ring *r = make(1024, 0), *late = NULL;
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[16];
	uint64_t needed;
	struct pyipc_ring_info info;

	CHECK_EQ(pyipc_ring_put(r, "one", 3, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_put(r, "two", 3, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_shutdown(r, 0), 0);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), -ESHUTDOWN);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, FOREVER, NULL), -ESHUTDOWN);
	/* A handle attached later sees the shutdown too. */
	CHECK_EQ(pyipc_ring_attach(name, 0, &late), 0);
	CHECK_EQ(pyipc_ring_info(late, &info), 0);
	CHECK_EQ(info.shutdown, 1);
	CHECK_EQ(pyipc_ring_get(late, buf, sizeof(buf), NOWAIT, &needed), 3);
	CHECK(memcmp(buf, "one", 3) == 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), FOREVER, &needed), 3);
	CHECK(memcmp(buf, "two", 3) == 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -ESHUTDOWN);
	CHECK_EQ(pyipc_ring_get(late, buf, sizeof(buf), FOREVER, &needed), -ESHUTDOWN);
	CHECK_EQ(pyipc_ring_wait(r, 0, 0, FOREVER), 0);
	/* Escalating to immediate is allowed; going back is not. */
	CHECK_EQ(pyipc_ring_shutdown(r, 1), 0);
	CHECK_EQ(pyipc_ring_shutdown(r, 0), 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.shutdown, 2);
	pyipc_ring_free(late);
	pyipc_ring_free(r);
}

/* an immediate shutdown discards what is queued: gets fail at once and qsize is 0. */
static void test_shutdown_immediate(void)
{
	pyipc_ring *r = make(1024, 0);
	unsigned char buf[16];
	uint64_t needed, lens[4];

	CHECK_EQ(pyipc_ring_put(r, "one", 3, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_shutdown(r, 1), 0);
	CHECK_EQ(pyipc_ring_qsize(r), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -ESHUTDOWN);
	CHECK_EQ(pyipc_ring_get_many(r, buf, sizeof(buf), lens, 4, FOREVER, &needed), -ESHUTDOWN);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), -ESHUTDOWN);
	pyipc_ring_free(r);
}

struct blocked {
	pyipc_ring *r;
	int op; /* 0 get, 1 put, 2 wait_consumed */
	uint64_t seq;
	atomic_int started;
	int64_t rc;
};

static void *blocked_call(void *arg)
{
	struct blocked *b = arg;
	unsigned char buf[64] = { 0 };
	uint64_t needed;
	int64_t rc;

	atomic_store(&b->started, 1);
	do {
		if (b->op == 0)
			rc = pyipc_ring_get(b->r, buf, sizeof(buf), FOREVER, &needed);
		else if (b->op == 1)
			rc = pyipc_ring_put(b->r, buf, 8, FOREVER, NULL);
		else
			rc = pyipc_ring_wait_consumed(b->r, b->seq, FOREVER);
	} while (rc == -EINTR);
	b->rc = rc;
	return NULL;
}

static void start_blocked(pthread_t *t, struct blocked *b)
{
	CHECK_EQ(pthread_create(t, NULL, blocked_call, b), 0);
	while (!atomic_load(&b->started))
		usleep(1000);
	usleep(20000); /* let it get past its spin and asleep (not required) */
}

/* shutdown wakes a get blocked on an empty ring and a put blocked on a full one. */
static void test_shutdown_wakes_blocked(void)
{
	pyipc_ring *empty = make(64, 0), *full = make(64, 0);
	struct blocked g = { .r = empty, .op = 0 }, p = { .r = full, .op = 1 };
	pthread_t tg, tp;
	static unsigned char buf[HDR_PAGE];

	CHECK_EQ(pyipc_ring_put(full, buf, pyipc_ring_max_message_size(full), NOWAIT, NULL), 0);
	start_blocked(&tg, &g);
	start_blocked(&tp, &p);
	CHECK_EQ(pyipc_ring_shutdown(empty, 0), 0);
	CHECK_EQ(pyipc_ring_shutdown(full, 0), 0);
	pthread_join(tg, NULL);
	pthread_join(tp, NULL);
	CHECK_EQ(g.rc, -ESHUTDOWN);
	CHECK_EQ(p.rc, -ESHUTDOWN);
	pyipc_ring_free(empty);
	pyipc_ring_free(full);
}

/* close() in one thread makes a call blocked in another return -EBADF. */
static void test_close_wakes_blocked(void)
{
	pyipc_ring *r = make(64, 0);
	struct blocked g = { .r = r, .op = 0 };
	pthread_t t;

	start_blocked(&t, &g);
	CHECK_EQ(pyipc_ring_close(r), 0);
	pthread_join(t, NULL);
	CHECK_EQ(g.rc, -EBADF);
	pyipc_ring_free(r);
}

/* ---- wait_consumed ---------------------------------------------------- */

/* wait_consumed returns once a consumer took that very message, not an earlier one. */
static void test_wait_consumed(void)
{
	pyipc_ring *r = make(1024, 0);
	uint64_t s1 = 99, s2 = 99, needed;
	unsigned char buf[16];
	struct blocked w = { .r = r, .op = 2 };
	pthread_t t;

	CHECK_EQ(pyipc_ring_put(r, "a", 1, NOWAIT, &s1), 0);
	CHECK_EQ(pyipc_ring_put(r, "b", 1, NOWAIT, &s2), 0);
	CHECK_EQ(s2, s1 + rec_size(1)); /* a ticket is where the record ends */
	CHECK_EQ(pyipc_ring_wait_consumed(r, s1, NOWAIT), -EAGAIN);
	CHECK_EQ(pyipc_ring_wait_consumed(r, s1, in_ms(20)), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1);
	CHECK_EQ(pyipc_ring_wait_consumed(r, s1, NOWAIT), 0);
	CHECK_EQ(pyipc_ring_wait_consumed(r, s2, NOWAIT), -EAGAIN);
	/* A waiter in another thread wakes when the message is taken. */
	w.seq = s2;
	start_blocked(&t, &w);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1);
	CHECK(buf[0] == 'b');
	pthread_join(t, NULL);
	CHECK_EQ(w.rc, 0);
	/* And a waiter wakes with -ESHUTDOWN when the ring shuts down. */
	CHECK_EQ(pyipc_ring_put(r, "c", 1, NOWAIT, &w.seq), 0);
	start_blocked(&t, &w);
	CHECK_EQ(pyipc_ring_shutdown(r, 0), 0);
	pthread_join(t, NULL);
	CHECK_EQ(w.rc, -ESHUTDOWN);
	pyipc_ring_free(r);
}

/* ---- attach validation ------------------------------------------------ */

static void poke_version(const char *name, unsigned char *p)
{
	uint32_t v = 1;

	memcpy(p + PYIPC_OFF_VERSION, &v, 4);
}

static void poke_kind(const char *name, unsigned char *p)
{
	uint32_t v = PYIPC_KIND_TOPIC;

	memcpy(p + PYIPC_OFF_KIND, &v, 4);
}

static void poke_hdr_size(const char *name, unsigned char *p)
{
	uint64_t v = 8192;

	memcpy(p + PYIPC_OFF_HDR_SIZE, &v, 8);
}

static void poke_capacity_double(const char *name, unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p + PYIPC_OFF_CAPACITY, 8);
	v *= 2;
	memcpy(p + PYIPC_OFF_CAPACITY, &v, 8);
}

static void poke_capacity_not_pow2(const char *name, unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p + PYIPC_OFF_CAPACITY, 8);
	v -= 8;
	memcpy(p + PYIPC_OFF_CAPACITY, &v, 8);
}

static void poke_max_msg(const char *name, unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p + PYIPC_OFF_MAX_MSG, 8);
	v += 8;
	memcpy(p + PYIPC_OFF_MAX_MSG, &v, 8);
}

static void poke_magic(const char *name, unsigned char *p)
{
	p[PYIPC_OFF_MAGIC + 3] ^= 0x20;
}

static void poke_truncate(const char *name, unsigned char *p)
{
	int fd = shm_open(name, O_RDWR, 0);

	CHECK(fd >= 0);
	CHECK(ftruncate(fd, HDR_PAGE + 2048) == 0);
	close(fd);
}

static void poke_grow(const char *name, unsigned char *p)
{
	int fd = shm_open(name, O_RDWR, 0);

	CHECK(fd >= 0);
	CHECK(ftruncate(fd, HDR_PAGE + 8192) == 0);
	close(fd);
}

static void poke_nothing(const char *name, unsigned char *p)
{
}

/* attach refuses, with -EBADMSG, every header that disagrees with a ring of its size. */
static void test_attach_validation(void)
{
	CHECK_EQ(attach_after(4096, poke_nothing), 0);
	CHECK_EQ(attach_after(4096, poke_version), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_kind), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_hdr_size), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_capacity_double), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_capacity_not_pow2), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_max_msg), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_magic), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_truncate), -EBADMSG);
	CHECK_EQ(attach_after(4096, poke_grow), -EBADMSG);
}

/* Make a file in /dev/shm of `size` bytes filled by `byte` (or random). */
static const char *raw_file(size_t size, int byte)
{
	const char *name = new_name();
	int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	unsigned char *buf = malloc(size ? size : 1);

	CHECK(fd >= 0 && buf);
	for (size_t i = 0; i < size; i++)
		buf[i] = byte >= 0 ? (unsigned char)byte : (unsigned char)rnd();
	CHECK(write(fd, buf, size) == (ssize_t)size);
	free(buf);
	close(fd);
	return name;
}

/* a file that is not a ring (random, empty, zero-filled, odd-sized) is -EBADMSG, quickly. */
static void test_attach_not_a_ring(void)
{
	int64_t t0 = now_ns();

	CHECK_EQ(attach_rc(raw_file(4096 + 8192, -1)), -EBADMSG);
	CHECK_EQ(attach_rc(raw_file(100, -1)), -EBADMSG);
	CHECK_EQ(attach_rc(raw_file(5000, 0xff)), -EBADMSG);
	CHECK(now_ns() - t0 < 2000000000ll);
	/* Empty or zero-filled looks like a ring being made: wait ~100 ms, no more. */
	t0 = now_ns();
	CHECK_EQ(attach_rc(raw_file(0, 0)), -EBADMSG);
	CHECK_EQ(attach_rc(raw_file(4096 + 4096, 0)), -EBADMSG);
	CHECK(now_ns() - t0 < 5000000000ll);
}

/* ---- corruption after attach ------------------------------------------ */

/* a scribbled record header makes get and check fail with -EBADMSG, never read outside. */
static void test_scribbled_record(void)
{
	pyipc_ring *r = make(1024, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[1024];
	uint64_t needed, lens[4];
	size_t size;
	unsigned char *p;

	CHECK_EQ(pyipc_ring_put(r, "good", 4, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_put(r, "evil", 4, NOWAIT, NULL), 0);
	p = map_raw(name, &size);
	/* The second record's length becomes huge (its check word untouched). */
	p[HDR_PAGE + 16 + 2] = 0x7f;
	CHECK_EQ(pyipc_ring_check(r), -EBADMSG);
	/* get_many delivers the good record and stops before the bad one. */
	CHECK_EQ(pyipc_ring_get_many(r, buf, sizeof(buf), lens, 4, NOWAIT, &needed), 1);
	CHECK_EQ(lens[0], 4);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EBADMSG);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(10), &needed), -EBADMSG);
	/* A length that agrees with its check word but exceeds what is queued. */
	{
		uint32_t rh[2] = { 1000, ~1000u };

		memcpy(p + HDR_PAGE + 16, rh, 8);
	}
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EBADMSG);
	munmap(p, size);
	pyipc_ring_free(r);
}

/*
 * scribbled cursors make calls fail or succeed within bounds, never touch memory outside the map.
 * (Each side caches the other's cursor, so a scribble may be noticed only when the cache is
 * refreshed; until then calls work on positions that are masked and bounds-checked all the same.)
 */
static void test_scribbled_cursors(void)
{
	static const uint64_t bad[] = { 1, 7, 8192, 1ull << 40, ~0ull, 0x8000000000000000ull };
	static const int where[] = { PYIPC_OFF_PROD_TAIL, PYIPC_OFF_PROD_CLAIM, PYIPC_OFF_CONS_FREE,
				     PYIPC_OFF_CONS_TAKE };
	pyipc_ring *r = make(4096, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	static unsigned char buf[8192];
	uint64_t needed, lens[4];
	size_t size, done;
	unsigned char *p;
	struct pyipc_ring_info info;

	p = map_raw(name, &size);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		for (int w = 0; w < 4; w++) {
			uint64_t zero = 0;
			int64_t rc;

			for (int k = 0; k < 4; k++)
				memcpy(p + where[k], &zero, 8);
			memcpy(p + where[w], &bad[i], 8);
			rc = pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed);
			CHECK(rc == -EBADMSG || rc == -EAGAIN || (rc >= 0 && rc <= 4096 - 8));
			rc = pyipc_ring_get_many(r, buf, sizeof(buf), lens, 4, in_ms(5), &needed);
			CHECK(rc == -EBADMSG || rc == -ETIMEDOUT || (rc >= 1 && rc <= 4));
			rc = pyipc_ring_put(r, buf, 100, NOWAIT, NULL);
			CHECK(rc == -EBADMSG || rc == -EAGAIN || rc == 0);
			lens[0] = lens[1] = 10;
			rc = pyipc_ring_put_many(r, buf, lens, 2, in_ms(5), &done);
			CHECK(rc == -EBADMSG || rc == -ETIMEDOUT || rc == 0);
			rc = pyipc_ring_check(r);
			CHECK(rc == -EBADMSG || rc >= 0);
			rc = pyipc_ring_qsize(r);
			CHECK(rc >= 0 && rc <= 4096 / 8);
			CHECK_EQ(pyipc_ring_info(r, &info), 0);
			CHECK(info.bytes_used <= 4096);
		}
	}
	munmap(p, size);
	pyipc_ring_free(r);
}

/* ---- lock holders: live, dead, elsewhere ------------------------------ */

#ifdef PYIPC_TEST_HOOKS
extern void (*pyipc_test_after_lock)(_Atomic uint32_t *word);
#endif

/*
 * A child process that attaches to `name` through a handle of its own and
 * takes the lock words of `sides` (1 producers, 2 consumers) the way the
 * ring does, with its owner id; it tells us through a pipe, then dies by
 * SIGKILL (die) or waits to be killed.
 */
static pid_t spawn_holder(const char *name, int sides, int die)
{
	int fds[2];
	char c;
	pid_t pid;

	CHECK(pipe(fds) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_ring *r = NULL;
		struct pyipc_ring_info info;
		size_t size;
		unsigned char *p;

		close(fds[0]);
		if (pyipc_ring_attach(name, 0, &r) || pyipc_ring_info(r, &info))
			_exit(2);
		p = map_raw(name, &size);
		for (int side = 0; side < 2; side++) {
			_Atomic uint32_t *lock = (_Atomic uint32_t *)(p + (side ? OFF_CONS : OFF_PROD));
			uint32_t free_word = 0;

			if ((sides >> side) & 1 &&
			    !atomic_compare_exchange_strong(lock, &free_word, info.owner))
				_exit(3);
		}
		if (write(fds[1], "x", 1) != 1)
			_exit(4);
		if (die)
			kill(getpid(), SIGKILL);
		pause();
		_exit(0);
	}
	close(fds[1]);
	CHECK(read(fds[0], &c, 1) == 1);
	close(fds[0]);
	return pid;
}

static void reap_killed(pid_t pid)
{
	int status;

	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* a lock whose holder died is taken over: the next call works and recoveries counts it. */
static void test_dead_lock_owner(void)
{
	pyipc_ring *r = make(1024, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[64];
	uint64_t needed;
	struct pyipc_ring_info info;

	CHECK_EQ(pyipc_ring_put(r, "kept", 4, NOWAIT, NULL), 0);
	reap_killed(spawn_holder(name, 3, 1));
	/* Even a call that never waits takes a dead holder's lock over. */
	CHECK_EQ(pyipc_ring_put(r, "more", 4, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 4);
	CHECK(memcmp(buf, "kept", 4) == 0);
	CHECK_EQ(pyipc_ring_check(r), 1);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 2);
	CHECK_EQ(info.puts, 2);
	CHECK_EQ(info.gets, 1);
	pyipc_ring_free(r);
}

/* a killed holder not yet reaped (a zombie) counts as dead: its descriptors are closed. */
static void test_zombie_lock_owner(void)
{
	pyipc_ring *r = make(1024, 0);
	struct pyipc_ring_info info;
	pid_t pid = spawn_holder(names[atomic_load(&nnames) - 1], 1, 0);

	kill(pid, SIGKILL);
	/* Not reaped until the end: the holder stays a zombie meanwhile. */
	CHECK_EQ(put_until(r, "z", 1, in_ms(2000)), 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 1);
	reap_killed(pid);
	pyipc_ring_free(r);
}

/* Short calls against a held lock for `ms`: none may succeed or take it over. */
static void hammer_held(pyipc_ring *r, int ms)
{
	unsigned char buf[64];
	uint64_t needed;
	int64_t end = in_ms(ms);
	struct pyipc_ring_info info;

	while (now_ns() < end) {
		CHECK_EQ(pyipc_ring_put(r, "x", 1, in_ms(2), NULL), -ETIMEDOUT);
		CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(2), &needed), -ETIMEDOUT);
		CHECK_EQ(pyipc_ring_info(r, &info), 0);
		CHECK_EQ(info.recoveries, 0);
	}
}

/* a lock held by a live holder is never taken, however long; calls with deadlines return; its death frees it. */
static void test_lock_stuck_held(void)
{
	pyipc_ring *r = make(1024, 0);
	unsigned char buf[64];
	uint64_t needed;
	struct pyipc_ring_info info;
	pid_t pid = spawn_holder(names[atomic_load(&nnames) - 1], 3, 0);

	hammer_held(r, 300);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), -EAGAIN);
	CHECK_EQ(pyipc_ring_check(r), -ETIMEDOUT);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 0);
	kill(pid, SIGKILL);
	reap_killed(pid);
	CHECK_EQ(put_until(r, "x", 1, in_ms(1000)), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(1000), &needed), 1);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 2);
	pyipc_ring_free(r);
}

/* a holder in another PID namespace, whose pid means nothing here, is alive while it lives and dead once killed. */
static void test_lock_holder_other_pid_namespace(void)
{
	pyipc_ring *r = make(1024, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	struct pyipc_ring_info info;
	int fds[2], status;
	pid_t mid, holder;

	CHECK(pipe(fds) == 0);
	mid = fork();
	CHECK(mid >= 0);
	if (mid == 0) {
		close(fds[0]);
		if (unshare(CLONE_NEWPID)) {
			holder = 0; /* cannot: tell the parent to skip */
			_exit(write(fds[1], &holder, sizeof(holder)) == sizeof(holder) ? 5 : 6);
		}
		/* Our next child is pid 1 of the new namespace. */
		holder = spawn_holder(name, 3, 0);
		if (write(fds[1], &holder, sizeof(holder)) != sizeof(holder))
			_exit(6);
		pause();
		_exit(0);
	}
	close(fds[1]);
	CHECK(read(fds[0], &holder, sizeof(holder)) == sizeof(holder));
	close(fds[0]);
	if (holder == 0) {
		CHECK(waitpid(mid, &status, 0) == mid);
		printf("skip lock_holder_other_pid_namespace: unshare(CLONE_NEWPID) is not allowed here\n");
		pyipc_ring_free(r);
		cleanup();
		exit(SKIPPED);
	}
	hammer_held(r, 300);
	kill(holder, SIGKILL); /* its pid as seen from here */
	CHECK_EQ(put_until(r, "x", 1, in_ms(2000)), 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 1);
	kill(mid, SIGKILL);
	reap_killed(mid);
	pyipc_ring_free(r);
}

#ifdef PYIPC_TEST_HOOKS
static int hold_fd = -1;

/* Hold a lock just taken for 300 ms, once: an owner preempted right after its CAS. */
static void hold_after_cas(_Atomic uint32_t *word)
{
	if (hold_fd >= 0) {
		CHECK(write(hold_fd, "x", 1) == 1);
		close(hold_fd);
		hold_fd = -1;
		usleep(300000);
	}
}
#endif

/* a holder stalled right after the compare-and-swap that took the lock is never robbed. */
static void test_lock_stalled_after_cas(void)
{
#ifdef PYIPC_TEST_HOOKS
	pyipc_ring *r = make(1024, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[64];
	uint64_t needed;
	struct pyipc_ring_info info;
	int fds[2], status;
	char c;
	pid_t pid;

	CHECK(pipe(fds) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_ring *mine = NULL;

		close(fds[0]);
		if (pyipc_ring_attach(name, 0, &mine))
			_exit(2);
		hold_fd = fds[1];
		pyipc_test_after_lock = hold_after_cas;
		_exit(pyipc_ring_put(mine, "late", 4, FOREVER, NULL) ? 3 : 0);
	}
	close(fds[1]);
	CHECK(read(fds[0], &c, 1) == 1);
	close(fds[0]);
	hammer_held(r, 200);
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(1000), &needed), 4);
	CHECK(memcmp(buf, "late", 4) == 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 0);
	pyipc_ring_free(r);
#else
	printf("skip lock_stalled_after_cas: built without PYIPC_TEST_HOOKS\n");
	cleanup();
	exit(SKIPPED);
#endif
}

/* a forked child's inherited handle does not vouch for its parent: the parent dying under a lock is seen. */
static void test_fork_child_does_not_vouch_for_parent(void)
{
	pyipc_ring *r = make(1024, 0);
	const char *name = names[atomic_load(&nnames) - 1];
	struct pyipc_ring_info info;
	int fds[2];
	pid_t parent, child = 0;
	char c;

	CHECK(pipe(fds) == 0);
	parent = fork();
	CHECK(parent >= 0);
	if (parent == 0) {
		pyipc_ring *h = NULL;
		_Atomic uint32_t *lock;
		uint32_t free_word = 0;

		close(fds[0]);
		if (pyipc_ring_attach(name, 0, &h) || pyipc_ring_info(h, &info))
			_exit(2);
		child = fork();
		if (child == 0) {
			/* Alive, holding the inherited handle, doing nothing. */
			pause();
			_exit(0);
		}
		lock = (_Atomic uint32_t *)((unsigned char *)map_raw(name, &(size_t){ 0 }) + OFF_PROD);
		if (!atomic_compare_exchange_strong(lock, &free_word, info.owner))
			_exit(3);
		if (write(fds[1], &child, sizeof(child)) != sizeof(child))
			_exit(4);
		kill(getpid(), SIGKILL);
		_exit(5);
	}
	close(fds[1]);
	CHECK(read(fds[0], &child, sizeof(child)) == sizeof(child));
	close(fds[0]);
	reap_killed(parent);
	CHECK_EQ(put_until(r, "x", 1, in_ms(2000)), 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 1);
	kill(child, SIGKILL);
	(void)c;
	pyipc_ring_free(r);
}

/* fork while another thread is blocked in a call: the child can get, put and close its copy. */
static void test_fork_while_blocked(void)
{
	pyipc_ring *r = make(4096, 0);
	struct blocked g = { .r = r, .op = 0 };
	pthread_t t;
	int status;
	pid_t pid;

	start_blocked(&t, &g);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		unsigned char buf[16];
		uint64_t needed;

		if (pyipc_ring_put(r, "kid", 3, in_ms(1000), NULL))
			_exit(2);
		/* The blocked parent thread may take it first: put two. */
		if (pyipc_ring_put(r, "kid", 3, in_ms(1000), NULL))
			_exit(3);
		if (pyipc_ring_get(r, buf, sizeof(buf), in_ms(1000), &needed) != 3)
			_exit(4);
		if (pyipc_ring_close(r))
			_exit(5);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	pthread_join(t, NULL);
	CHECK_EQ(g.rc, 3);
	pyipc_ring_free(r);
}

/* ---- leases ----------------------------------------------------------- */

static void reserve_ok(pyipc_ring *r, uint64_t len, uint64_t id, struct pyipc_lease *l)
{
	CHECK_EQ(pyipc_ring_reserve(r, len, NOWAIT, l), 0);
	CHECK_EQ(l->len, len);
	fill((unsigned char *)l->ptr, id, len);
}

/* a reservation publishes on commit, in ring order: puts after it wait for it; an abort leaves nothing. */
static void test_lease_reserve_commit_abort(void)
{
	pyipc_ring *r = make(4096, 0);
	static unsigned char buf[4096];
	uint64_t needed;
	struct pyipc_lease a, b;
	struct pyipc_ring_info info;

	reserve_ok(r, 100, 1, &a);
	fill(buf, 2, 50);
	CHECK_EQ(pyipc_ring_put(r, buf, 50, NOWAIT, NULL), 0);
	/* The put is queued but not visible before the open reservation. */
	CHECK_EQ(pyipc_ring_qsize(r), 1);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EAGAIN);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.reserves, 1);
	CHECK_EQ(pyipc_ring_commit(r, &a, 1), 0);
	CHECK_EQ(pyipc_ring_commit(r, &a, 1), -ESTALE); /* once only */
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 100);
	CHECK(matches(buf, 1, 100));
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 50);
	CHECK(matches(buf, 2, 50));
	/* An abort becomes a skip record that gets pass over. */
	reserve_ok(r, 300, 3, &b);
	CHECK_EQ(pyipc_ring_put(r, "after", 5, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_commit(r, &b, 0), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 5);
	CHECK(memcmp(buf, "after", 5) == 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EAGAIN);
	CHECK_EQ(pyipc_ring_check(r), 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.puts, 3);
	CHECK_EQ(info.gets, 3);
	CHECK_EQ(info.reserves, 0);
	CHECK_EQ(info.bytes_used, 0);
	/* A lease that does not match the table is refused. */
	reserve_ok(r, 10, 4, &a);
	a.len = 20;
	CHECK_EQ(pyipc_ring_commit(r, &a, 1), -ESTALE);
	pyipc_ring_free(r);
}

/* an aborted reservation gives its space back at once, with no consumer around. */
static void test_lease_abort_frees_space(void)
{
	pyipc_ring *r = make(4096, 0);
	struct pyipc_lease a;
	uint64_t max = pyipc_ring_max_message_size(r);

	reserve_ok(r, max, 5, &a);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), -EAGAIN);
	CHECK_EQ(pyipc_ring_commit(r, &a, 0), 0);
	reserve_ok(r, max, 6, &a);
	CHECK_EQ(pyipc_ring_commit(r, &a, 1), 0);
	CHECK_EQ(pyipc_ring_check(r), 1);
	pyipc_ring_free(r);
}

/* a view takes its message at once; later messages go to others; its space returns at release, oldest first. */
static void test_lease_view_release(void)
{
	pyipc_ring *r = make(4096, 0);
	static unsigned char buf[4096];
	struct pyipc_lease v1, v2;
	uint64_t needed, used;
	struct pyipc_ring_info info;
	int n;

	for (int i = 0; i < 3; i++) {
		fill(buf, 10 + i, 1000);
		CHECK_EQ(pyipc_ring_put(r, buf, 1000, NOWAIT, NULL), 0);
	}
	CHECK_EQ(pyipc_ring_view(r, NOWAIT, &v1), 1000);
	CHECK(matches((unsigned char *)v1.ptr, 10, 1000));
	CHECK_EQ(pyipc_ring_view(r, NOWAIT, &v2), 1000);
	CHECK(matches((unsigned char *)v2.ptr, 11, 1000));
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1000);
	CHECK(matches(buf, 12, 1000));
	CHECK_EQ(pyipc_ring_qsize(r), 0);
	/* Producers may use only what lies before the oldest open view. */
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.views, 2);
	used = info.bytes_used;
	CHECK_EQ(used, 3 * rec_size(1000));
	for (n = 0; pyipc_ring_put(r, buf, 1000, NOWAIT, NULL) == 0; n++)
		;
	CHECK_EQ(n, 1); /* 4096 - 3 * 1008 = 1072 bytes free */
	/* Releasing the younger view frees nothing yet; the older one frees both. */
	CHECK_EQ(pyipc_ring_release(r, &v2), 0);
	CHECK_EQ(pyipc_ring_put(r, buf, 1000, NOWAIT, NULL), -EAGAIN);
	CHECK_EQ(pyipc_ring_release(r, &v1), 0);
	CHECK_EQ(pyipc_ring_release(r, &v1), -ESTALE);
	CHECK_EQ(pyipc_ring_put(r, buf, 1000, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_put(r, buf, 1000, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.views, 0);
	CHECK_EQ(info.gets, 3);
	pyipc_ring_free(r);
}

/* a lease across the end of the ring is one contiguous piece of memory (the ring is mapped twice). */
static void test_lease_wraps_contiguously(void)
{
	pyipc_ring *r = make(4096, 0);
	static unsigned char buf[4096];
	struct pyipc_lease l;
	uint64_t needed;

	/* Move the cursors to 1000 bytes before the end. */
	CHECK_EQ(pyipc_ring_put(r, buf, 4096 - 1000 - 8, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 4096 - 1000 - 8);
	reserve_ok(r, 3000, 77, &l);
	CHECK_EQ(pyipc_ring_commit(r, &l, 1), 0);
	CHECK_EQ(pyipc_ring_view(r, NOWAIT, &l), 3000);
	CHECK(matches((unsigned char *)l.ptr, 77, 3000));
	CHECK_EQ(pyipc_ring_release(r, &l), 0);
	pyipc_ring_free(r);
}

/* at most PYIPC_MAX_LEASES reservations are open at once: then -ENOSPC, never corruption. */
static void test_lease_table_full(void)
{
	pyipc_ring *r = make(1 << 16, 0);
	struct pyipc_lease l[PYIPC_MAX_LEASES], extra;

	for (int i = 0; i < PYIPC_MAX_LEASES; i++)
		reserve_ok(r, 8, (uint64_t)i, &l[i]);
	CHECK_EQ(pyipc_ring_reserve(r, 8, NOWAIT, &extra), -ENOSPC);
	for (int i = PYIPC_MAX_LEASES - 1; i >= 0; i--)
		CHECK_EQ(pyipc_ring_commit(r, &l[i], 1), 0);
	CHECK_EQ(pyipc_ring_check(r), PYIPC_MAX_LEASES);
	pyipc_ring_free(r);
}

/* a handle closed while a lease is open stays mapped until the lease ends. */
static void test_lease_outlives_close(void)
{
	pyipc_ring *r = make(4096, 0), *other = NULL;
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[64];
	struct pyipc_lease l;
	uint64_t needed;

	CHECK_EQ(pyipc_ring_attach(name, 0, &other), 0);
	CHECK_EQ(pyipc_ring_reserve(r, 16, NOWAIT, &l), 0);
	CHECK_EQ(pyipc_ring_close(r), 0);
	memcpy(l.ptr, "written in place", 16); /* still mapped: ASan would say otherwise */
	CHECK_EQ(pyipc_ring_commit(r, &l, 1), 0);
	CHECK_EQ(pyipc_ring_get(other, buf, sizeof(buf), NOWAIT, &needed), 16);
	CHECK(memcmp(buf, "written in place", 16) == 0);
	pyipc_ring_free(r);
	pyipc_ring_free(other);
}

/* A child that attaches, takes a lease (0 reserve, 1 view), tells us, and dies. */
static void die_holding_lease(const char *name, int view)
{
	int fds[2];
	char c;
	pid_t pid;

	CHECK(pipe(fds) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_ring *r = NULL;
		struct pyipc_lease l;

		close(fds[0]);
		if (pyipc_ring_attach(name, 0, &r))
			_exit(2);
		if (view ? pyipc_ring_view(r, NOWAIT, &l) < 0 : pyipc_ring_reserve(r, 500, NOWAIT, &l) < 0)
			_exit(3);
		if (!view)
			memset(l.ptr, 0xee, 500);
		if (write(fds[1], "x", 1) != 1)
			_exit(4);
		kill(getpid(), SIGKILL);
		_exit(5);
	}
	close(fds[1]);
	CHECK(read(fds[0], &c, 1) == 1);
	close(fds[0]);
	reap_killed(pid);
}

/* a producer killed inside a reservation: nothing of it appears, and messages after it flow. */
static void test_lease_dead_reserver(void)
{
	pyipc_ring *r = make(4096, 0);
	unsigned char buf[600];
	uint64_t needed;
	int64_t t0;

	die_holding_lease(names[atomic_load(&nnames) - 1], 0);
	CHECK_EQ(pyipc_ring_put(r, "after", 5, NOWAIT, NULL), 0);
	t0 = now_ns();
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), in_ms(2000), &needed), 5);
	CHECK(memcmp(buf, "after", 5) == 0);
	CHECK(now_ns() - t0 < 1000000000ll);
	CHECK_EQ(pyipc_ring_check(r), 0);
	pyipc_ring_free(r);
}

/* a consumer killed inside a view: that message is lost, and its space comes back. */
static void test_lease_dead_viewer(void)
{
	pyipc_ring *r = make(4096, 0);
	static unsigned char buf[4096];
	uint64_t needed, max = pyipc_ring_max_message_size(r);
	struct pyipc_ring_info info;

	CHECK_EQ(pyipc_ring_put(r, buf, max, NOWAIT, NULL), 0);
	die_holding_lease(names[atomic_load(&nnames) - 1], 1);
	/* The ring was full; the dead view held all of it. */
	CHECK_EQ(put_until(r, buf, max, in_ms(2000)), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), (int64_t)max);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.views, 0);
	pyipc_ring_free(r);
}

/* ---- repair ----------------------------------------------------------- */

/* repair keeps the records before a damaged one, drops the rest, and the ring works again. */
static void test_repair_scribbled_record(void)
{
	pyipc_ring *r = make(4096, 0), *other = NULL;
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[64];
	uint64_t needed;
	size_t size;
	unsigned char *p;

	CHECK_EQ(pyipc_ring_attach(name, 0, &other), 0);
	for (int i = 0; i < 5; i++) {
		fill(buf, (uint64_t)i, 8);
		CHECK_EQ(pyipc_ring_put(r, buf, 8, NOWAIT, NULL), 0);
	}
	p = map_raw(name, &size);
	p[HDR_PAGE + 2 * 16] ^= 0x5a; /* the third record's length */
	CHECK_EQ(pyipc_ring_check(r), -EBADMSG);
	CHECK_EQ(pyipc_ring_repair(other), 3);
	CHECK_EQ(pyipc_ring_check(r), 2);
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 8);
		CHECK(matches(buf, (uint64_t)i, 8));
	}
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EAGAIN);
	CHECK_EQ(pyipc_ring_put(r, "new", 3, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_get(other, buf, sizeof(buf), NOWAIT, &needed), 3);
	CHECK_EQ(pyipc_ring_qsize(r), 0);
	CHECK_EQ(pyipc_ring_repair(r), 0); /* a healthy ring loses nothing */
	munmap(p, size);
	pyipc_ring_free(other);
	pyipc_ring_free(r);
}

/* a scribbled shutdown word or cursor is corruption, not a state for ever: repair undoes it. */
static void test_repair_words(void)
{
	pyipc_ring *r = make(4096, 0), *late = NULL;
	const char *name = names[atomic_load(&nnames) - 1];
	unsigned char buf[64];
	uint64_t needed, v;
	uint32_t w = 1;
	size_t size;
	unsigned char *p = map_raw(name, &size);

	CHECK_EQ(pyipc_ring_put(r, "a", 1, NOWAIT, NULL), 0);
	memcpy(p + PYIPC_OFF_SHUTDOWN, &w, 4);
	CHECK_EQ(pyipc_ring_put(r, "b", 1, NOWAIT, NULL), -EBADMSG);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EBADMSG);
	CHECK_EQ(pyipc_ring_repair(r), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1);
	/* The consumers' cursor knocked off its alignment. */
	CHECK_EQ(pyipc_ring_put(r, "c", 1, NOWAIT, NULL), 0);
	memcpy(&v, p + PYIPC_OFF_CONS_TAKE, 8);
	v += 3;
	memcpy(p + PYIPC_OFF_CONS_TAKE, &v, 8);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), -EBADMSG);
	CHECK(pyipc_ring_repair(r) >= 0);
	CHECK_EQ(pyipc_ring_put(r, "d", 1, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1);
	CHECK(buf[0] == 'd');
	/* The shared copy of the geometry: new handles cannot attach, until repair. */
	v = 1 << 20;
	memcpy(p + PYIPC_OFF_CAPACITY, &v, 8);
	CHECK_EQ(pyipc_ring_attach(name, 0, &late), -EBADMSG);
	CHECK_EQ(pyipc_ring_check(r), -EBADMSG);
	CHECK_EQ(pyipc_ring_repair(r), 0);
	CHECK_EQ(pyipc_ring_attach(name, 0, &late), 0);
	pyipc_ring_free(late);
	munmap(p, size);
	pyipc_ring_free(r);
}

/* a lock held under the "unknown" owner id (no evidence) is never taken over: calls time out, repair says busy. */
static void test_owner_unknown_is_never_taken_over(void)
{
	pyipc_ring *r = make(4096, 0);
	size_t size;
	unsigned char *p = map_raw(names[atomic_load(&nnames) - 1], &size);
	uint32_t unknown = PYIPC_OWNER_UNKNOWN, zero = 0;
	struct pyipc_ring_info info;

	memcpy(p + OFF_PROD, &unknown, 4);
	hammer_held(r, 100);
	CHECK_EQ(pyipc_ring_repair(r), -EBUSY);
	CHECK_EQ(pyipc_ring_info(r, &info), 0);
	CHECK_EQ(info.recoveries, 0);
	memcpy(p + OFF_PROD, &zero, 4);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), 0);
	munmap(p, size);
	pyipc_ring_free(r);
}

/* a child forked where /proc is not mounted, after the ring's name was removed, has no evidence: owner "unknown". */
static void test_fork_without_proc_has_no_evidence(void)
{
	pyipc_ring *r = make(4096, 0);
	struct pyipc_ring_info info;
	int status;
	pid_t pid;

	CHECK_EQ(pyipc_seg_unlink(names[atomic_load(&nnames) - 1], 0), 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pid_t kid;

		/* A mount namespace of our own, without /proc. */
		if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
		    umount2("/proc", MNT_DETACH))
			_exit(SKIPPED);
		kid = fork();
		if (kid == 0) {
			if (pyipc_ring_info(r, &info))
				_exit(2);
			_exit(info.owner == PYIPC_OWNER_UNKNOWN ? 0 : 3);
		}
		if (kid < 0 || waitpid(kid, &status, 0) != kid || !WIFEXITED(status))
			_exit(4);
		_exit(WEXITSTATUS(status));
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status));
	if (WEXITSTATUS(status) == SKIPPED) {
		printf("skip fork_without_proc_has_no_evidence: cannot unmount /proc in a mount namespace\n");
		pyipc_ring_free(r);
		cleanup();
		exit(SKIPPED);
	}
	CHECK_EQ(WEXITSTATUS(status), 0);
	pyipc_ring_free(r);
}

/* ---- event-loop waits ------------------------------------------------- */

/* arm says "ready" when it is, else hands out a futex word that the other side's next call moves. */
static void test_arm(void)
{
	pyipc_ring *r = make(4096, 0);
	static unsigned char buf[4096];
	uint32_t *word = NULL, val = 0;
	uint64_t needed;

	CHECK_EQ(pyipc_ring_arm(r, 1, 100, &word, &val), 1);
	CHECK_EQ(pyipc_ring_arm(r, 0, 0, &word, &val), 0);
	CHECK(word != NULL && *word == val);
	CHECK_EQ(pyipc_ring_put(r, "x", 1, NOWAIT, NULL), 0);
	CHECK(*word != val);
	CHECK_EQ(pyipc_ring_arm(r, 0, 0, &word, &val), 1);
	CHECK_EQ(pyipc_ring_put(r, buf, 4000, NOWAIT, NULL), 0);
	CHECK_EQ(pyipc_ring_arm(r, 1, 100, &word, &val), 0);
	CHECK_EQ(pyipc_ring_get(r, buf, sizeof(buf), NOWAIT, &needed), 1);
	CHECK(*word != val);
	CHECK_EQ(pyipc_ring_shutdown(r, 0), 0);
	CHECK_EQ(pyipc_ring_arm(r, 1, 100, &word, &val), 1);
	pyipc_ring_free(r);
}

struct scribbler {
	unsigned char *p;
	atomic_int stop;
};

static void *scribble_lock_words(void *arg)
{
	struct scribbler *s = arg;
	uint64_t x = 88172645463325252ull;

	while (!atomic_load(&s->stop)) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		/* The lock word and the lease count of each side. */
		memcpy(s->p + OFF_PROD + 4 * (x & 1), &x, 4);
		memcpy(s->p + OFF_CONS + 4 * ((x >> 1) & 1), &x, 4);
		usleep(50);
	}
	return NULL;
}

/* another process scribbling on the lock words while we hold them cannot crash us. */
static void test_scribbled_lock_words(void)
{
	enum { MSG = 1 << 20 };
	pyipc_ring *r = make(2 * MSG, 0);
	struct scribbler s = { 0 };
	unsigned char *buf = malloc(MSG);
	uint64_t needed;
	size_t size;
	pthread_t t;

	CHECK(buf != NULL);
	/* A second mapping plays the other process: ASan must not see it as ours. */
	s.p = map_raw(names[atomic_load(&nnames) - 1], &size);
	CHECK_EQ(pthread_create(&t, NULL, scribble_lock_words, &s), 0);
	for (int i = 0; i < 200; i++) {
		int rc = pyipc_ring_put(r, buf, MSG, in_ms(20), NULL);
		int64_t n = pyipc_ring_get(r, buf, MSG, in_ms(20), &needed);

		CHECK(rc == 0 || rc == -EBADMSG || rc == -ETIMEDOUT || rc == -EAGAIN || rc == -EINTR);
		CHECK((n >= 0 && n <= MSG) || n == -EBADMSG || n == -ETIMEDOUT || n == -EAGAIN ||
		      n == -EMSGSIZE || n == -EINTR);
	}
	atomic_store(&s.stop, 1);
	pthread_join(t, NULL);
	munmap(s.p, size);
	free(buf);
	pyipc_ring_free(r);
}

/* ---- concurrency ------------------------------------------------------ */

enum { NPROD = 4, NCONS = 4 };

struct msg_hdr {
	uint32_t producer;
	uint32_t seq;
	uint32_t len; /* payload bytes after this header */
	uint32_t sum;
};

struct stress {
	pyipc_ring *r;
	int per_producer;
	atomic_int ids;
	atomic_uint *seen; /* [NPROD * per_producer] delivery counts */
	atomic_long received;
};

static uint32_t checksum(uint32_t p, uint32_t s, const unsigned char *b, uint32_t n)
{
	uint32_t h = 2166136261u ^ p ^ (s << 8);

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 16777619u;
	return h;
}

static size_t make_msg(unsigned char *out, uint32_t p, uint32_t s, uint64_t *state)
{
	struct msg_hdr m = { .producer = p, .seq = s };

	*state = *state * 6364136223846793005ull + 1442695040888963407ull;
	m.len = (uint32_t)((*state >> 33) % 700);
	for (uint32_t i = 0; i < m.len; i++)
		out[sizeof(m) + i] = (unsigned char)(s + i * 13 + p);
	m.sum = checksum(p, s, out + sizeof(m), m.len);
	memcpy(out, &m, sizeof(m));
	return sizeof(m) + m.len;
}

static void *producer(void *arg)
{
	struct stress *st = arg;
	uint32_t id = (uint32_t)atomic_fetch_add(&st->ids, 1);
	uint64_t state = id + 1;
	static _Thread_local unsigned char batch[4 * 800];

	for (int s = 0; s < st->per_producer;) {
		if (s % 3 == 2 && s + 4 <= st->per_producer) {
			/* A batch of four through put_many. */
			uint64_t lens[4];
			size_t off = 0, done = 0, sent = 0;
			int rc;

			for (int k = 0; k < 4; k++) {
				lens[k] = make_msg(batch + off, id, (uint32_t)(s + k), &state);
				off += lens[k];
			}
			off = 0;
			while (sent < 4) {
				rc = pyipc_ring_put_many(st->r, batch + off, lens + sent, 4 - sent, FOREVER,
							 &done);
				for (size_t k = 0; k < done; k++)
					off += lens[sent + k];
				sent += done;
				CHECK(rc == 0 || rc == -EINTR);
			}
			s += 4;
		} else {
			size_t n = make_msg(batch, id, (uint32_t)s, &state);

			CHECK_EQ(put_forever(st->r, batch, n, NULL), 0);
			s++;
		}
	}
	return NULL;
}

static void check_msg(struct stress *st, const unsigned char *b, uint64_t n, int32_t *last)
{
	struct msg_hdr m;

	CHECK(n >= sizeof(m));
	memcpy(&m, b, sizeof(m));
	CHECK(m.producer < NPROD);
	CHECK_EQ(n, sizeof(m) + m.len);
	CHECK_EQ(m.sum, checksum(m.producer, m.seq, b + sizeof(m), m.len));
	CHECK(m.seq < (uint32_t)st->per_producer);
	/* Per-producer order as seen by this consumer. */
	CHECK((int32_t)m.seq > last[m.producer]);
	last[m.producer] = (int32_t)m.seq;
	CHECK_EQ(atomic_fetch_add(&st->seen[m.producer * st->per_producer + m.seq], 1), 0);
	atomic_fetch_add(&st->received, 1);
}

static void *consumer(void *arg)
{
	struct stress *st = arg;
	int32_t last[NPROD];
	static _Thread_local unsigned char buf[8 * 800];
	uint64_t lens[8], needed;
	int round = 0;

	for (int i = 0; i < NPROD; i++)
		last[i] = -1;
	for (;;) {
		int64_t n;

		if (round++ % 2) {
			n = pyipc_ring_get_many(st->r, buf, sizeof(buf), lens, 8, FOREVER, &needed);
			if (n > 0) {
				uint64_t off = 0;

				for (int64_t k = 0; k < n; k++) {
					check_msg(st, buf + off, lens[k], last);
					off += lens[k];
				}
				continue;
			}
		} else {
			n = pyipc_ring_get(st->r, buf, sizeof(buf), FOREVER, &needed);
			if (n >= 0) {
				check_msg(st, buf, (uint64_t)n, last);
				continue;
			}
		}
		if (n == -EINTR)
			continue;
		CHECK_EQ(n, -ESHUTDOWN);
		return NULL;
	}
}

/* 4 producers x 4 consumers: every message arrives once, whole, in per-producer order. */
static void run_mpmc(uint64_t capacity, int per_producer)
{
	struct stress st = { .per_producer = per_producer };
	pthread_t tp[NPROD], tc[NCONS];
	struct pyipc_ring_info info;

	st.r = make(capacity, 0);
	st.seen = calloc((size_t)NPROD * per_producer, sizeof(*st.seen));
	CHECK(st.seen != NULL);
	for (int i = 0; i < NCONS; i++)
		CHECK_EQ(pthread_create(&tc[i], NULL, consumer, &st), 0);
	for (int i = 0; i < NPROD; i++)
		CHECK_EQ(pthread_create(&tp[i], NULL, producer, &st), 0);
	for (int i = 0; i < NPROD; i++)
		pthread_join(tp[i], NULL);
	/* Consumers drain what is left, then see -ESHUTDOWN. */
	CHECK_EQ(pyipc_ring_shutdown(st.r, 0), 0);
	for (int i = 0; i < NCONS; i++)
		pthread_join(tc[i], NULL);
	CHECK_EQ(atomic_load(&st.received), (long)NPROD * per_producer);
	for (long i = 0; i < (long)NPROD * per_producer; i++)
		CHECK_EQ(atomic_load(&st.seen[i]), 1);
	CHECK_EQ(pyipc_ring_info(st.r, &info), 0);
	CHECK_EQ(info.puts, NPROD * per_producer);
	CHECK_EQ(info.gets, NPROD * per_producer);
	CHECK_EQ(info.bytes_put, info.bytes_got);
	CHECK_EQ(pyipc_ring_check(st.r), 0);
	free(st.seen);
	pyipc_ring_free(st.r);
}

/* MPMC through a small ring: producers often wait for room. */
static void test_mpmc_small_ring(void)
{
	run_mpmc(4096, 20000);
}

/* MPMC through a larger ring: consumers often wait for data. */
static void test_mpmc_large_ring(void)
{
	run_mpmc(1 << 16, 20000);
}

/* two handles on one segment in one process behave as two processes would. */
static void test_two_handles_threads(void)
{
	pyipc_ring *a = make(4096, 0), *b = NULL;
	const char *name = names[atomic_load(&nnames) - 1];
	struct blocked g;
	pthread_t t;

	CHECK_EQ(pyipc_ring_attach(name, 0, &b), 0);
	memset(&g, 0, sizeof(g));
	g.r = b;
	start_blocked(&t, &g);
	CHECK_EQ(put_forever(a, "12345678", 8, NULL), 0);
	pthread_join(t, NULL);
	CHECK_EQ(g.rc, 8);
	pyipc_ring_free(b);
	pyipc_ring_free(a);
}

/* ---- driver ----------------------------------------------------------- */

struct test {
	const char *name;
	void (*fn)(void);
};

#define T(x) { #x, test_##x }
static const struct test tests[] = {
	T(create_attach),
	T(create_limits),
	T(attach_missing),
	T(close),
	T(model_roundtrip),
	T(max_message_any_offset),
	T(empty_messages),
	T(empty_message_null_buffer),
	T(put_too_large),
	T(get_buffer_too_small),
	T(put_many_partial),
	T(get_many_partial),
	T(nowait_and_timeouts),
	T(stats),
	T(max_messages),
	T(shutdown_drains),
	T(shutdown_immediate),
	T(shutdown_wakes_blocked),
	T(close_wakes_blocked),
	T(wait_consumed),
	T(attach_validation),
	T(attach_not_a_ring),
	T(scribbled_record),
	T(scribbled_cursors),
	T(dead_lock_owner),
	T(zombie_lock_owner),
	T(lock_stuck_held),
	T(lock_holder_other_pid_namespace),
	T(lock_stalled_after_cas),
	T(fork_child_does_not_vouch_for_parent),
	T(fork_while_blocked),
	T(lease_reserve_commit_abort),
	T(lease_abort_frees_space),
	T(lease_view_release),
	T(lease_wraps_contiguously),
	T(lease_table_full),
	T(lease_outlives_close),
	T(lease_dead_reserver),
	T(lease_dead_viewer),
	T(repair_scribbled_record),
	T(repair_words),
	T(owner_unknown_is_never_taken_over),
	T(fork_without_proc_has_no_evidence),
	T(arm),
	T(scribbled_lock_words),
	T(mpmc_small_ring),
	T(mpmc_large_ring),
	T(two_handles_threads),
};

int main(int argc, char **argv)
{
	const char *env = getenv("PYIPC_CTEST_PREFIX");
	const char *s = getenv("PYIPC_CTEST_SEED");
	int ran = 0;

	snprintf(prefix, sizeof(prefix), "%s", env && *env ? env : "pyipc-ctest");
	if (!env || !*env)
		snprintf(prefix + strlen(prefix), sizeof(prefix) - strlen(prefix), "-%d", (int)getpid());
	seed = s ? strtoull(s, NULL, 10) : (uint64_t)now_ns();
	main_pid = getpid();
	atexit(cleanup);
	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		int selected = argc < 2;

		for (int a = 1; a < argc; a++)
			if (strcmp(argv[a], tests[i].name) == 0)
				selected = 1;
		if (!selected)
			continue;
		current = tests[i].name;
		rng_state = seed ^ (0x9e3779b97f4a7c15ull * (i + 1));
		if (!rng_state)
			rng_state = 1;
		tests[i].fn();
		printf("ok %s\n", tests[i].name);
		fflush(stdout);
		ran++;
	}
	if (ran == 0) {
		fprintf(stderr, "no test matched\n");
		return 2;
	}
	printf("%d tests passed (seed %llu)\n", ran, (unsigned long long)seed);
	return 0;
}
