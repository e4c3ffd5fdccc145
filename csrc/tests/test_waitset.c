// SPDX-License-Identifier: MIT
/*
 * test_waitset.c - the waitset's own tests (and pyipc_ring_arm's), linked
 * with waitset.c and the ring's sources alone (no Python), so that they run
 * under AddressSanitizer, UndefinedBehaviorSanitizer and ThreadSanitizer.
 *
 * Usage: test_waitset [test-name...]   (no name: every test)
 * Environment: PYIPC_CTEST_PREFIX  prefix of every segment name made here.
 * Each test runs in both modes of the waitset (futex_waitv, where the
 * kernel has it, and the thread-per-word fallback).
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyipc_api.h"

static const char *current = "?";
static int flags; /* the mode under test: 0 or PYIPC_WAITSET_THREADS */

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "FAIL %s (flags %d) %s:%d: %s\n", current, flags,        \
				__FILE__, __LINE__, #cond);                                      \
			exit(1);                                                                 \
		}                                                                                \
	} while (0)

#define CHECK_RC(expr)                                                                           \
	do {                                                                                     \
		long rc_ = (long)(expr);                                                         \
		if (rc_ < 0) {                                                                   \
			fprintf(stderr, "FAIL %s (flags %d) %s:%d: %s = %ld (%s)\n", current,     \
				flags, __FILE__, __LINE__, #expr, rc_, strerror((int)-rc_));     \
			exit(1);                                                                 \
		}                                                                                \
	} while (0)

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Shared words, as a ring's are: MAP_SHARED memory. */
static _Atomic uint32_t *map_words(size_t n)
{
	void *p = mmap(NULL, n * sizeof(uint32_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
		       -1, 0);

	CHECK(p != MAP_FAILED);
	return p;
}

/* What a waker does: move the word, then wake its sleepers. */
static void bump(_Atomic uint32_t *w)
{
	atomic_fetch_add(w, 1);
	syscall(SYS_futex, w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static pyipc_waitset *new_ws(void)
{
	pyipc_waitset *ws;

	CHECK_RC(pyipc_waitset_new(flags, &ws));
	if (flags)
		CHECK(pyipc_waitset_mode(ws) == PYIPC_WAITSET_MODE_THREADS);
	return ws;
}

/* Collect tokens until `want` have come or `ms` pass; returns how many. */
static size_t collect(pyipc_waitset *ws, uint64_t *out, size_t want, int ms)
{
	int64_t end = now_ms() + ms;
	size_t got = 0;

	while (got < want) {
		struct pollfd p = { .fd = pyipc_waitset_fd(ws), .events = POLLIN };
		int64_t left = end - now_ms();
		int64_t n;

		if (left <= 0)
			break;
		poll(&p, 1, (int)left);
		n = pyipc_waitset_ready(ws, out + got, want - got);
		CHECK_RC(n);
		got += (size_t)n;
	}
	return got;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_fire_and_ready(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(2);
	uint64_t tok[4];
	uint32_t slot, slot2;

	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)&w[0], 0, 7, &slot));
	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)&w[1], 0, 8, &slot2));
	CHECK(pyipc_waitset_count(ws) == 2);
	CHECK(collect(ws, tok, 1, 50) == 0); /* nothing moved */
	bump(&w[0]);
	CHECK(collect(ws, tok, 1, 5000) == 1);
	CHECK(tok[0] == 7);
	CHECK(pyipc_waitset_count(ws) == 1);
	CHECK(pyipc_waitset_remove(ws, slot, 7) == 1);             /* it had fired */
	CHECK(pyipc_waitset_remove(ws, slot, 7) == -ENOENT);       /* once */
	CHECK(pyipc_waitset_remove(ws, slot2, 9) == -ENOENT);      /* wrong token */
	CHECK(pyipc_waitset_remove(ws, 1000000, 8) == -ENOENT);    /* no such slot */
	CHECK(pyipc_waitset_remove(ws, slot2, 8) == 0);            /* still watched */
	CHECK(pyipc_waitset_count(ws) == 0);
	pyipc_waitset_free(ws);
	munmap((void *)w, 2 * sizeof(uint32_t));
}

static void test_moved_before_add(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(1);
	uint64_t tok;
	uint32_t slot;

	atomic_store(w, 5);
	/* Registered with a stale value, with no wake to come: fires anyway. */
	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)w, 4, 1, &slot));
	CHECK(collect(ws, &tok, 1, 5000) == 1 && tok == 1);
	CHECK(pyipc_waitset_remove(ws, slot, 1) == 1);
	pyipc_waitset_free(ws);
	munmap((void *)w, sizeof(uint32_t));
}

static void test_removed_never_fires(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(1);
	uint64_t tok;
	uint32_t slot;

	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)w, 0, 3, &slot));
	CHECK(pyipc_waitset_remove(ws, slot, 3) == 0);
	bump(w);
	CHECK(collect(ws, &tok, 1, 200) == 0);
	pyipc_waitset_free(ws);
	munmap((void *)w, sizeof(uint32_t));
}

/* Remove, then unmap while helpers may still be asleep on the words: no
 * helper may read them again (ASan, or a SIGSEGV, would say so). */
static void test_remove_then_unmap(void)
{
	pyipc_waitset *ws = new_ws();
	enum { N = 40 };
	uint32_t slots[N];
	uint64_t tok[N];

	for (int round = 0; round < 20; round++) {
		_Atomic uint32_t *w = map_words(N);

		for (int i = 0; i < N; i++)
			CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)&w[i], 0, (uint64_t)(round * N + i),
						   &slots[i]));
		/* Let the helpers go to sleep on them (or not: both must work). */
		if (round & 1)
			usleep(2000);
		bump(&w[0]);
		for (int i = 0; i < N; i++)
			CHECK(pyipc_waitset_remove(ws, slots[i], (uint64_t)(round * N + i)) >= 0);
		munmap((void *)w, N * sizeof(uint32_t));
		collect(ws, tok, N, 5); /* drain whatever fired */
	}
	/* Still working afterwards. */
	{
		_Atomic uint32_t *w = map_words(1);
		uint32_t slot;

		CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)w, 0, 99, &slot));
		bump(w);
		CHECK(collect(ws, tok, 1, 5000) == 1 && tok[0] == 99);
		CHECK(pyipc_waitset_remove(ws, slot, 99) == 1);
		munmap((void *)w, sizeof(uint32_t));
	}
	pyipc_waitset_free(ws);
}

static void test_many_words(void)
{
	enum { N = 300 };
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(N);
	static uint64_t tok[N];
	static uint32_t slots[N];
	static char seen[N];
	int64_t threads;

	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < N; i++)
		CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)&w[i], 0, (uint64_t)i, &slots[i]));
	threads = pyipc_waitset_threads(ws);
	if (pyipc_waitset_mode(ws) == PYIPC_WAITSET_MODE_WAITV)
		CHECK(threads == (N + 126) / 127); /* 127 words per helper */
	else
		CHECK(threads == N); /* the fallback's cost: one per word */
	for (int i = 0; i < N; i++)
		bump(&w[i]);
	CHECK(collect(ws, tok, N, 10000) == N);
	for (int i = 0; i < N; i++) {
		CHECK(tok[i] < N && !seen[tok[i]]);
		seen[tok[i]] = 1;
	}
	for (int i = 0; i < N; i++)
		CHECK(pyipc_waitset_remove(ws, slots[i], (uint64_t)i) == 1);
	pyipc_waitset_free(ws);
	munmap((void *)w, N * sizeof(uint32_t));
}

struct churn {
	pyipc_waitset *ws;
	_Atomic uint32_t *words;
	int base;
	_Atomic int *stop;
};

static void *churner(void *arg)
{
	struct churn *c = arg;
	uint64_t token = (uint64_t)c->base << 32;

	while (!atomic_load(c->stop)) {
		uint32_t slot[4];

		for (int i = 0; i < 4; i++)
			CHECK_RC(pyipc_waitset_add(c->ws, (uint32_t *)&c->words[c->base + i],
						   atomic_load(&c->words[c->base + i]), token + i,
						   &slot[i]));
		for (int i = 0; i < 4; i++)
			CHECK(pyipc_waitset_remove(c->ws, slot[i], token + i) >= 0);
		token += 4;
	}
	return NULL;
}

static void *waker(void *arg)
{
	struct churn *c = arg;

	while (!atomic_load(c->stop)) {
		for (int i = 0; i < 16; i++)
			bump(&c->words[i]);
		usleep(100);
	}
	return NULL;
}

/* Threads adding and removing while words move and the loop drains. */
static void test_concurrent(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(16);
	_Atomic int stop = 0;
	struct churn c[4];
	pthread_t t[5];
	uint64_t tok[64];
	int64_t end = now_ms() + 500;

	for (int i = 0; i < 4; i++) {
		c[i] = (struct churn){ .ws = ws, .words = w, .base = 4 * i, .stop = &stop };
		CHECK(pthread_create(&t[i], NULL, churner, &c[i]) == 0);
	}
	CHECK(pthread_create(&t[4], NULL, waker, &c[0]) == 0);
	while (now_ms() < end)
		collect(ws, tok, 64, 10);
	atomic_store(&stop, 1);
	for (int i = 0; i < 5; i++)
		pthread_join(t[i], NULL);
	CHECK(pyipc_waitset_count(ws) == 0);
	pyipc_waitset_free(ws);
	munmap((void *)w, 16 * sizeof(uint32_t));
}

/* Helpers leave once idle, and come back for the next word. */
static void test_idle_helpers_leave(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(1);
	uint64_t tok;
	uint32_t slot;
	int64_t end;

	CHECK(pyipc_waitset_threads(ws) == 0); /* none before the first word */
	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)w, 0, 1, &slot));
	CHECK(pyipc_waitset_threads(ws) == 1);
	usleep(20000); /* asleep on the word, which then never moves */
	CHECK(pyipc_waitset_remove(ws, slot, 1) == 0);
	end = now_ms() + 10000;
	while (pyipc_waitset_threads(ws) > 0 && now_ms() < end)
		usleep(50000);
	CHECK(pyipc_waitset_threads(ws) == 0);
	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)w, 0, 2, &slot));
	bump(w);
	CHECK(collect(ws, &tok, 1, 5000) == 1 && tok == 2);
	CHECK(pyipc_waitset_remove(ws, slot, 2) == 1);
	pyipc_waitset_free(ws);
	munmap((void *)w, sizeof(uint32_t));
}

/* Freed with words still registered (a loop dropped with waits pending):
 * the helpers leave without reading them, nothing leaks. */
static void test_free_while_waiting(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(8);
	uint32_t slot;

	for (int i = 0; i < 8; i++)
		CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)&w[i], 0, (uint64_t)i, &slot));
	usleep(1000);
	pyipc_waitset_free(ws);
	/* Fallback helpers sleep on the words until a wake or their recheck:
	 * keep the words mapped until they have gone (LeakSanitizer checks
	 * at exit that they freed everything). */
	for (int i = 0; i < 8; i++)
		bump(&w[i]);
	usleep(200000);
	munmap((void *)w, 8 * sizeof(uint32_t));
}

/* A forked child frees its copy (no helper came along) and makes a new one. */
static void test_fork(void)
{
	pyipc_waitset *ws = new_ws();
	_Atomic uint32_t *w = map_words(2);
	uint32_t slot;
	uint64_t tok;
	pid_t pid;
	int status;

	CHECK_RC(pyipc_waitset_add(ws, (uint32_t *)&w[0], 0, 1, &slot));
	/* Let the helper finish starting: AddressSanitizer's allocator (unlike
	 * glibc's malloc) is not locked around fork(), so a thread inside it
	 * at that instant leaves the child's copy locked for good. */
	usleep(100000);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_waitset *mine;
		uint32_t s2;

		current = "fork (child)";
		CHECK(pyipc_waitset_add(ws, (uint32_t *)&w[1], 0, 2, &s2) == -ECHILD);
		pyipc_waitset_free(ws);
		mine = new_ws();
		CHECK_RC(pyipc_waitset_add(mine, (uint32_t *)&w[1], 0, 3, &s2));
		bump(&w[1]);
		CHECK(collect(mine, &tok, 1, 5000) == 1 && tok == 3);
		CHECK(pyipc_waitset_remove(mine, s2, 3) == 1);
		pyipc_waitset_free(mine);
		/* Its helper frees the rest on its way out: give it the time,
		 * so that LeakSanitizer at exit finds nothing. */
		usleep(300000);
		exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* The parent's waitset is unaffected. */
	bump(&w[0]);
	CHECK(collect(ws, &tok, 1, 5000) == 1 && tok == 1);
	CHECK(pyipc_waitset_remove(ws, slot, 1) == 1);
	pyipc_waitset_free(ws);
	munmap((void *)w, 2 * sizeof(uint32_t));
}

/* ---- pyipc_ring_arm with a real ring -------------------------------------- */

static char ring_name[160];

static void *put_later(void *arg)
{
	pyipc_ring *r = arg;
	uint64_t seq;

	usleep(20000);
	CHECK_RC(pyipc_ring_put(r, "hello", 5, -1, &seq));
	return NULL;
}

static void test_ring_arm(void)
{
	pyipc_waitset *ws = new_ws();
	pyipc_ring *r, *other;
	uint32_t *word, val, slot;
	uint64_t tok, needed, seq, big;
	pthread_t t;
	char *buf;

	CHECK_RC(pyipc_ring_create(ring_name, 0, 4096, 0, 0600, &r));
	CHECK_RC(pyipc_ring_attach(ring_name, 0, &other));
	big = pyipc_ring_max_message_size(r);
	buf = calloc(1, big);
	CHECK(buf);
	/* Empty: a get would block, a put would not. */
	CHECK(pyipc_ring_arm(r, 1, 8, &word, &val) == 1);
	CHECK(pyipc_ring_arm(r, 0, 0, &word, &val) == 0);
	CHECK(val & 1); /* the waiter bit: the next put makes its wake call */
	CHECK_RC(pyipc_waitset_add(ws, word, val, 42, &slot));
	/* Another handle (as good as another process) puts. */
	CHECK(pthread_create(&t, NULL, put_later, other) == 0);
	CHECK(collect(ws, &tok, 1, 5000) == 1 && tok == 42);
	pthread_join(t, NULL);
	CHECK(pyipc_waitset_remove(ws, slot, 42) == 1);
	CHECK(pyipc_ring_arm(r, 0, 0, &word, &val) == 1); /* a message is there */
	CHECK(pyipc_ring_get(other, buf, big, 0, &needed) == 5);
	/* Full (one message of max_message_size): wait for room. */
	CHECK_RC(pyipc_ring_put(r, buf, big, 0, &seq));
	CHECK(pyipc_ring_arm(r, 1, 8, &word, &val) == 0);
	CHECK_RC(pyipc_waitset_add(ws, word, val, 43, &slot));
	CHECK(pyipc_ring_get(other, buf, big, 0, &needed) == (int64_t)big);
	CHECK(collect(ws, &tok, 1, 5000) == 1 && tok == 43);
	CHECK(pyipc_waitset_remove(ws, slot, 43) == 1);
	/* Shut down: ready at once, and a waiter registered before wakes. */
	CHECK(pyipc_ring_arm(r, 0, 0, &word, &val) == 0);
	CHECK_RC(pyipc_waitset_add(ws, word, val, 44, &slot));
	CHECK_RC(pyipc_ring_shutdown(other, 0));
	CHECK(collect(ws, &tok, 1, 5000) == 1 && tok == 44);
	CHECK(pyipc_waitset_remove(ws, slot, 44) == 1);
	CHECK(pyipc_ring_arm(r, 0, 0, &word, &val) == 1);
	CHECK_RC(pyipc_ring_close(other));
	CHECK(pyipc_ring_arm(other, 0, 0, &word, &val) == -EBADF);
	pyipc_ring_free(other);
	pyipc_ring_free(r);
	pyipc_seg_unlink(ring_name, 0);
	pyipc_waitset_free(ws);
	free(buf);
}

/* ---- main ------------------------------------------------------------------- */

#define T(name) { #name, test_##name }
static const struct {
	const char *name;
	void (*fn)(void);
} tests[] = {
	T(fire_and_ready),
	T(moved_before_add),
	T(removed_never_fires),
	T(remove_then_unmap),
	T(many_words),
	T(concurrent),
	T(idle_helpers_leave),
	T(free_while_waiting),
	T(fork),
	T(ring_arm),
};

int main(int argc, char **argv)
{
	const char *env = getenv("PYIPC_CTEST_PREFIX");
	int ran = 0;

	snprintf(ring_name, sizeof(ring_name), "/%s-arm-%d", env && *env ? env : "pyipc-ctest",
		 (int)getpid());
	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		int selected = argc < 2;

		for (int a = 1; a < argc; a++)
			if (strcmp(argv[a], tests[i].name) == 0)
				selected = 1;
		if (!selected)
			continue;
		current = tests[i].name;
		for (flags = 0; flags <= PYIPC_WAITSET_THREADS; flags += PYIPC_WAITSET_THREADS)
			tests[i].fn();
		printf("ok %s\n", tests[i].name);
		fflush(stdout);
		ran++;
	}
	pyipc_seg_unlink(ring_name, 0);
	if (ran == 0) {
		fprintf(stderr, "no test matched\n");
		return 2;
	}
	printf("%d tests passed\n", ran);
	return 0;
}
