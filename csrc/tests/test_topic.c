// SPDX-License-Identifier: MIT
/*
 * test_topic.c - the topic's own tests, linked with the core's sources
 * alone (no Python), so that they run under AddressSanitizer,
 * UndefinedBehaviorSanitizer and ThreadSanitizer.
 *
 * Usage: test_topic [test-name...]   (no name: every test)
 * Environment: PYIPC_CTEST_PREFIX  prefix of every segment name made here,
 *              PYIPC_CTEST_SEED    seed of the pseudo-random choices.
 * Exit status 0 when every selected test passed, 77 when a test cannot run
 * here (it prints "skip <name>: <why>").  Every segment a test makes is
 * unlinked, on success and on failure alike.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyipc_api.h"

#define SKIPPED 77
#define NOWAIT 0
#define FOREVER (-1)

static char prefix[96];
static char names[64][128];
static atomic_int nnames;
static const char *current = "?";
static uint64_t seed;
static pid_t main_pid;

static void cleanup(void)
{
	if (getpid() != main_pid)
		return;
	for (int i = 0; i < atomic_load(&nnames) && i < 64; i++)
		shm_unlink(names[i]);
}

static void failed(int line, const char *what)
{
	fprintf(stderr, "FAIL %s (line %d, seed %llu): %s\n", current, line, (unsigned long long)seed,
		what);
	cleanup();
	_exit(1);
}

#define CHECK(cond)                              \
	do {                                     \
		if (!(cond))                     \
			failed(__LINE__, #cond); \
	} while (0)

#define CHECK_EQ(a, b)                                                                     \
	do {                                                                               \
		long long a_ = (long long)(a), b_ = (long long)(b);                        \
		if (a_ != b_) {                                                            \
			char msg_[256];                                                    \
			snprintf(msg_, sizeof(msg_), "%s == %s: %lld != %lld", #a, #b, a_, \
				 b_);                                                      \
			failed(__LINE__, msg_);                                            \
		}                                                                          \
	} while (0)

static const char *new_name(void)
{
	int i = atomic_fetch_add(&nnames, 1);

	if (i >= 64)
		failed(__LINE__, "too many names");
	snprintf(names[i], sizeof(names[i]), "/%s-%d", prefix, i);
	return names[i];
}

static const char *last_name(void)
{
	return names[atomic_load(&nnames) - 1];
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
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

static uint64_t rec(uint64_t len)
{
	return 16 + ((len + 7) & ~7ull);
}

/* Message `id` of `len` bytes: every byte depends on both. */
static void fill(unsigned char *b, uint64_t id, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		b[i] = (unsigned char)(id * 131 + i * 7 + (i >> 8));
}

/* Does b[from..len) hold message id's pattern? */
static int matches(const unsigned char *b, uint64_t id, uint64_t from, uint64_t len)
{
	for (uint64_t i = from; i < len; i++)
		if (b[i] != (unsigned char)(id * 131 + i * 7 + (i >> 8)))
			return 0;
	return 1;
}

static pyipc_topic *make(uint64_t cap, uint32_t subs, int overflow)
{
	pyipc_topic *t = NULL;

	CHECK_EQ(pyipc_topic_create(new_name(), 0, cap, subs, overflow, 0600, &t), 0);
	return t;
}

static pyipc_topic *sub(const char *name, int start)
{
	pyipc_topic *s = NULL;

	CHECK_EQ(pyipc_topic_attach(name, 0, &s), 0);
	CHECK_EQ(pyipc_topic_subscribe(s, start), 0);
	return s;
}

/* A message with its id in its first 8 bytes, the rest a pattern. */
static int publish_id(pyipc_topic *t, uint64_t id, uint64_t len, int64_t deadline)
{
	unsigned char buf[8192];
	int rc;

	fill(buf, id, len);
	if (len >= 8)
		memcpy(buf, &id, 8);
	do
		rc = pyipc_topic_publish(t, buf, len, deadline);
	while (rc == -EINTR);
	return rc;
}

static int64_t recv_until(pyipc_topic *s, void *buf, uint64_t cap, int64_t deadline)
{
	uint64_t needed;
	int64_t n;

	do
		n = pyipc_topic_recv(s, buf, cap, deadline, &needed);
	while (n == -EINTR);
	return n;
}

static void reap_killed(pid_t pid)
{
	int status;

	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* ---- tests ---------------------------------------------------------------- */

/* create rounds the capacity up; attach sees the same settings; bad settings are refused. */
static void test_create_attach(void)
{
	pyipc_topic *t = make(5000, 3, 1), *a = NULL, *bad = NULL;
	struct pyipc_topic_info info;

	CHECK_EQ(pyipc_topic_capacity(t), 8192);
	CHECK_EQ(pyipc_topic_max_message_size(t), 8192 - 16);
	CHECK_EQ(pyipc_topic_attach(last_name(), 0, &a), 0);
	CHECK_EQ(pyipc_topic_max_subscribers(a), 3);
	CHECK_EQ(pyipc_topic_overflow(a), 1);
	CHECK_EQ(pyipc_topic_create(last_name(), 0, 4096, 1, 0, 0600, &bad), -EEXIST);
	CHECK_EQ(pyipc_topic_create(new_name(), 0, 4096, 0, 0, 0600, &bad), -EINVAL);
	CHECK_EQ(pyipc_topic_create(new_name(), 0, 4096, 2000, 0, 0600, &bad), -EINVAL);
	CHECK_EQ(pyipc_topic_create(new_name(), 0, 4096, 1, 7, 0600, &bad), -EINVAL);
	CHECK_EQ(pyipc_topic_info(a, &info), 0);
	CHECK_EQ(info.max_subscribers, 3);
	CHECK_EQ(info.creator_pid, getpid());
	CHECK_EQ(info.version, PYIPC_LAYOUT_VERSION);
	pyipc_topic_free(a);
	pyipc_topic_free(t);
}

/* a ring is not a topic and a topic is not a ring: both attaches fail with -EBADMSG. */
static void test_kinds_told_apart(void)
{
	pyipc_ring *r = NULL;
	pyipc_topic *t = NULL;

	CHECK_EQ(pyipc_ring_create(new_name(), 0, 4096, 0, 0600, &r), 0);
	CHECK_EQ(pyipc_topic_attach(last_name(), 0, &t), -EBADMSG);
	pyipc_ring_free(r);
	t = make(4096, 1, 0);
	CHECK_EQ(pyipc_ring_attach(last_name(), 0, &r), -EBADMSG);
	pyipc_topic_free(t);
}

/* every call on a closed handle returns -EBADF; a publisher is not a subscriber. */
static void test_close(void)
{
	pyipc_topic *t = make(4096, 1, 0);
	unsigned char buf[16];
	uint64_t needed;

	CHECK_EQ(pyipc_topic_recv(t, buf, sizeof(buf), NOWAIT, &needed), -EPERM);
	CHECK_EQ(pyipc_topic_close(t), 0);
	CHECK_EQ(pyipc_topic_close(t), 0);
	CHECK_EQ(pyipc_topic_publish(t, "x", 1, NOWAIT), -EBADF);
	CHECK_EQ(pyipc_topic_recv(t, buf, sizeof(buf), NOWAIT, &needed), -EBADF);
	CHECK_EQ(pyipc_topic_subscribe(t, 0), -EBADF);
	CHECK_EQ(pyipc_topic_subscribers(t), -EBADF);
	CHECK_EQ(pyipc_topic_shutdown(t), -EBADF);
	CHECK_EQ(pyipc_topic_check(t), -EBADF);
	pyipc_topic_free(t);
	pyipc_topic_free(NULL);
}

/* random sizes across many wraps: three subscribers each get every message, whole and in order. */
static void test_broadcast_order(void)
{
	pyipc_topic *t = make(4096, 4, 0), *s[3];
	static unsigned char buf[4096];
	uint64_t id = 0, got[3] = { 0 };

	for (int i = 0; i < 3; i++)
		s[i] = sub(last_name(), 0);
	for (int round = 0; round < 3000; round++) {
		uint64_t len = 8 + rnd() % 600;

		if (publish_id(t, id, len, NOWAIT) == 0)
			id++;
		for (int i = 0; i < 3; i++) {
			int64_t n;

			if (rnd() % 3 == 0)
				continue;
			n = pyipc_topic_recv(s[i], buf, sizeof(buf), NOWAIT, &len);
			if (n == -EAGAIN)
				continue;
			CHECK(n >= 8);
			CHECK(memcmp(buf, &got[i], 8) == 0);
			got[i]++;
		}
	}
	for (int i = 0; i < 3; i++) {
		while (recv_until(s[i], buf, sizeof(buf), NOWAIT) >= 0)
			got[i]++;
		CHECK_EQ(got[i], id);
		pyipc_topic_free(s[i]);
	}
	CHECK(id > 1000);
	pyipc_topic_free(t);
}

/* "block": a full ring refuses a publish until the slowest subscriber reads. */
static void test_block_back_pressure(void)
{
	pyipc_topic *t = make(4096, 2, 0), *fast = sub(last_name(), 0), *slow = sub(last_name(), 0);
	unsigned char buf[256];
	int n = 0;

	while (publish_id(t, (uint64_t)n, 100, NOWAIT) == 0) {
		CHECK_EQ(recv_until(fast, buf, sizeof(buf), NOWAIT), 100);
		n++;
	}
	CHECK_EQ(n, 4096 / rec(100));
	CHECK_EQ(publish_id(t, 0, 100, in_ms(20)), -ETIMEDOUT);
	CHECK_EQ(pyipc_topic_pending(slow), n);
	CHECK_EQ(recv_until(slow, buf, sizeof(buf), NOWAIT), 100);
	CHECK_EQ(publish_id(t, 0, 100, NOWAIT), 0);
	pyipc_topic_free(slow);
	/* The slow one gone, the fast one is all that counts. */
	CHECK_EQ(recv_until(fast, buf, sizeof(buf), NOWAIT), 100);
	CHECK_EQ(publish_id(t, 0, 100, NOWAIT), 0);
	pyipc_topic_free(fast);
	pyipc_topic_free(t);
}

/* "overwrite": never waits; a subscriber a ring behind counts the messages it missed. */
static void test_overwrite_missed(void)
{
	pyipc_topic *t = make(4096, 1, 1), *s = sub(last_name(), 0);
	unsigned char buf[256];
	uint64_t got = 0, first = UINT64_MAX, id;

	for (id = 0; id < 1000; id++)
		CHECK_EQ(publish_id(t, id, 8 + id % 64, NOWAIT), 0);
	while (recv_until(s, buf, sizeof(buf), NOWAIT) >= 0) {
		uint64_t m;

		memcpy(&m, buf, 8);
		if (first == UINT64_MAX)
			first = m;
		CHECK_EQ(m, first + got);
		got++;
	}
	CHECK_EQ(pyipc_topic_missed(s), first);
	CHECK_EQ(got + (uint64_t)pyipc_topic_missed(s), 1000);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* start 1 begins at the oldest whole record; start 0 at the tail. */
static void test_start_oldest(void)
{
	pyipc_topic *t = make(4096, 2, 0), *old, *nxt;
	unsigned char buf[256];

	for (uint64_t id = 0; id < 100; id++)
		CHECK_EQ(publish_id(t, id, 100, NOWAIT), 0);
	old = sub(last_name(), 1);
	nxt = sub(last_name(), 0);
	CHECK_EQ(pyipc_topic_pending(old), 4096 / rec(100));
	CHECK_EQ(pyipc_topic_pending(nxt), 0);
	CHECK_EQ(recv_until(old, buf, sizeof(buf), NOWAIT), 100);
	CHECK_EQ(*(uint64_t *)buf, 100 - 4096 / rec(100));
	CHECK_EQ(recv_until(nxt, buf, sizeof(buf), NOWAIT), -EAGAIN);
	pyipc_topic_free(old);
	pyipc_topic_free(nxt);
	pyipc_topic_free(t);
}

/* max_subscribers live subscribers at once; the next gets -EUSERS; a close frees a slot. */
static void test_max_subscribers(void)
{
	pyipc_topic *t = make(4096, 2, 0), *a = sub(last_name(), 0), *b = sub(last_name(), 0), *c = NULL;

	CHECK_EQ(pyipc_topic_attach(last_name(), 0, &c), 0);
	CHECK_EQ(pyipc_topic_subscribe(c, 0), -EUSERS);
	CHECK_EQ(pyipc_topic_subscribe(a, 0), -EALREADY);
	CHECK_EQ(pyipc_topic_subscribers(t), 2);
	pyipc_topic_free(a);
	CHECK_EQ(pyipc_topic_subscribe(c, 0), 0);
	CHECK_EQ(pyipc_topic_subscribers(t), 2);
	pyipc_topic_free(b);
	pyipc_topic_free(c);
	CHECK_EQ(pyipc_topic_subscribers(t), 0);
	pyipc_topic_free(t);
}

/* a buffer too small: -EMSGSIZE with the length, and the message stays next. */
static void test_buffer_too_small(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	unsigned char buf[64];
	uint64_t needed = 0, lens[4];

	CHECK_EQ(publish_id(t, 1, 50, NOWAIT), 0);
	CHECK_EQ(pyipc_topic_recv(s, buf, 10, NOWAIT, &needed), -EMSGSIZE);
	CHECK_EQ(needed, 50);
	CHECK_EQ(pyipc_topic_recv_many(s, buf, 10, lens, 4, NOWAIT, &needed), -EMSGSIZE);
	CHECK_EQ(pyipc_topic_recv(s, buf, sizeof(buf), NOWAIT, &needed), 50);
	CHECK_EQ(pyipc_topic_publish(t, buf, 4096, NOWAIT), -EMSGSIZE);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* a reservation publishes on commit, in ring order; an aborted one leaves nothing. */
static void test_reserve_commit_abort(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	struct pyipc_lease a, b;
	unsigned char buf[64];

	CHECK_EQ(pyipc_topic_reserve(t, 5, NOWAIT, &a), 0);
	CHECK_EQ(a.len, 5);
	CHECK_EQ(pyipc_topic_publish(t, "after", 5, NOWAIT), 0);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), -EAGAIN);
	memcpy(a.ptr, "first", 5);
	CHECK_EQ(pyipc_topic_reserve(t, 3, NOWAIT, &b), 0);
	CHECK_EQ(pyipc_topic_commit(t, &a, 1), 0);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 5);
	CHECK(memcmp(buf, "first", 5) == 0);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 5);
	CHECK(memcmp(buf, "after", 5) == 0);
	CHECK_EQ(pyipc_topic_commit(t, &b, 0), 0);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), -EAGAIN);
	CHECK_EQ(pyipc_topic_commit(t, &b, 0), -ESTALE);
	CHECK_EQ(pyipc_topic_check(t), 2);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* a view's record is never overwritten while open, on either kind of topic. */
static void test_view_holds(void)
{
	for (int overflow = 0; overflow < 2; overflow++) {
		pyipc_topic *t = make(4096, 1, overflow), *s = sub(last_name(), 0);
		struct pyipc_lease l;
		const unsigned char *v;
		unsigned char buf[1024];
		uint64_t needed;
		int n = 0;

		CHECK_EQ(publish_id(t, 42, 500, NOWAIT), 0);
		CHECK_EQ(pyipc_topic_view(s, NOWAIT, &l), 500);
		v = (const unsigned char *)l.ptr;
		while (publish_id(t, 7, 500, NOWAIT) == 0) {
			pyipc_topic_recv(s, buf, sizeof(buf), NOWAIT, &needed);
			CHECK(++n < 100);
		}
		CHECK(matches(v, 42, 8, 500));
		CHECK_EQ(*(const uint64_t *)v, 42);
		CHECK_EQ(pyipc_topic_release(s, &l), 0);
		CHECK_EQ(pyipc_topic_release(s, &l), -ESTALE);
		CHECK_EQ(publish_id(t, 7, 500, NOWAIT), 0);
		pyipc_topic_free(s);
		pyipc_topic_free(t);
	}
}

/* a subscriber SIGKILLed while it holds the publisher back is detached at the next look. */
static void test_dead_subscriber(void)
{
	pyipc_topic *t = make(4096, 2, 0);
	const char *name = last_name();
	int fds[2];
	pid_t pid;
	char c;

	CHECK(pipe(fds) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_topic *s = NULL;

		if (pyipc_topic_attach(name, 0, &s) || pyipc_topic_subscribe(s, 0))
			_exit(2);
		if (write(fds[1], "k", 1) != 1)
			_exit(3);
		pause();
		_exit(0);
	}
	CHECK(read(fds[0], &c, 1) == 1);
	while (publish_id(t, 0, 100, NOWAIT) == 0)
		;
	CHECK_EQ(pyipc_topic_subscribers(t), 1);
	kill(pid, SIGKILL);
	/* Blocked when it dies: the publisher's poll finds it. */
	CHECK_EQ(publish_id(t, 0, 100, in_ms(2000)), 0);
	reap_killed(pid);
	CHECK_EQ(pyipc_topic_subscribers(t), 0);
	close(fds[0]);
	close(fds[1]);
	pyipc_topic_free(t);
}

/* a publisher that died inside a reservation loses that message only; later ones arrive. */
static void test_dead_reserver(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	const char *name = last_name();
	unsigned char buf[64];
	pid_t pid = fork();

	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_topic *p = NULL;
		struct pyipc_lease l;

		if (pyipc_topic_attach(name, 0, &p) || pyipc_topic_reserve(p, 8, NOWAIT, &l))
			_exit(2);
		memcpy(l.ptr, "partial!", 8);
		kill(getpid(), SIGKILL);
	}
	reap_killed(pid);
	CHECK_EQ(pyipc_topic_publish(t, "later", 5, NOWAIT), 0);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), in_ms(2000)), 5);
	CHECK(memcmp(buf, "later", 5) == 0);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* a publisher that died holding the lock is taken over: the next publish works, recoveries counts it. */
static void test_dead_lock_holder(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	const char *name = last_name();
	struct pyipc_topic_info info;
	unsigned char buf[64];
	pid_t pid = fork();

	CHECK(pid >= 0);
	if (pid == 0) {
		pyipc_topic *p = NULL;
		struct stat st;
		_Atomic uint32_t *lock;
		uint32_t free_word = 0;
		int fd;
		unsigned char *m;

		if (pyipc_topic_attach(name, 0, &p) || pyipc_topic_info(p, &info))
			_exit(2);
		fd = shm_open(name, O_RDWR, 0);
		if (fd < 0 || fstat(fd, &st))
			_exit(3);
		m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		lock = (_Atomic uint32_t *)(m + PYIPC_OFF_TOPIC_LOCK);
		if (!atomic_compare_exchange_strong(lock, &free_word, info.owner))
			_exit(4);
		kill(getpid(), SIGKILL);
	}
	reap_killed(pid);
	CHECK_EQ(pyipc_topic_publish(t, "on", 2, NOWAIT), 0);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 2);
	CHECK_EQ(pyipc_topic_info(t, &info), 0);
	CHECK_EQ(info.recoveries, 1);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* a forked child's copy of a subscriber takes a slot of its own where the parent was. */
static void test_fork_resubscribes(void)
{
	pyipc_topic *t = make(4096, 4, 0), *s = sub(last_name(), 0);
	unsigned char buf[64];
	int status;
	pid_t pid;

	CHECK_EQ(publish_id(t, 1, 8, NOWAIT), 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		if (pyipc_topic_recv(s, buf, sizeof(buf), in_ms(1000), &(uint64_t){ 0 }) != 8 ||
		    *(uint64_t *)buf != 1)
			_exit(2);
		_exit(pyipc_topic_subscribers(t) == 2 ? 0 : 3);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	/* The parent still has its own message, and its slot. */
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 8);
	CHECK_EQ(pyipc_topic_subscribers(t), 1);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* arm: 1 when ready, else 0 (or 2) with a word that a publish moves. */
static void test_arm(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	uint32_t *word, val;
	unsigned char buf[256];

	CHECK_EQ(pyipc_topic_arm(s, 0, 0, &word, &val), 0);
	CHECK_EQ(*word, val);
	CHECK_EQ(pyipc_topic_publish(t, "w", 1, NOWAIT), 0);
	CHECK(*word != val);
	CHECK_EQ(pyipc_topic_arm(s, 0, 0, &word, &val), 1);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 1);
	while (publish_id(t, 0, 200, NOWAIT) == 0)
		;
	/* Held back by a subscriber that may die: armed, poll again. */
	CHECK_EQ(pyipc_topic_arm(t, 1, 200, &word, &val), 2);
	CHECK_EQ(*word, val);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 200);
	CHECK(*word != val);
	CHECK_EQ(pyipc_topic_arm(t, 1, 200, &word, &val), 1);
	CHECK_EQ(pyipc_topic_arm(t, 1, 5000, &word, &val), -EMSGSIZE);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

struct blocked {
	pyipc_topic *t;
	int64_t rc;
};

static void *recv_forever(void *arg)
{
	struct blocked *b = arg;
	unsigned char buf[64];

	b->rc = recv_until(b->t, buf, sizeof(buf), FOREVER);
	return NULL;
}

/* shutdown: subscribers drain, then -ESHUTDOWN; a blocked one wakes; publishes fail. */
static void test_shutdown(void)
{
	pyipc_topic *t = make(4096, 2, 0), *s = sub(last_name(), 0), *w = sub(last_name(), 0);
	struct blocked b = { .t = w };
	unsigned char buf[64];
	pthread_t th;

	CHECK_EQ(pyipc_topic_publish(t, "last", 4, NOWAIT), 0);
	CHECK_EQ(recv_until(w, buf, sizeof(buf), NOWAIT), 4);
	CHECK_EQ(pthread_create(&th, NULL, recv_forever, &b), 0);
	usleep(20000);
	CHECK_EQ(pyipc_topic_shutdown(t), 0);
	pthread_join(th, NULL);
	CHECK_EQ(b.rc, -ESHUTDOWN);
	CHECK_EQ(pyipc_topic_publish(t, "x", 1, NOWAIT), -ESHUTDOWN);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 4);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), -ESHUTDOWN);
	pyipc_topic_free(s);
	pyipc_topic_free(w);
	pyipc_topic_free(t);
}

/* close wakes a call blocked on the same handle, which returns -EBADF. */
static void test_close_wakes_blocked(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	struct blocked b = { .t = s };
	pthread_t th;

	CHECK_EQ(pthread_create(&th, NULL, recv_forever, &b), 0);
	usleep(20000);
	CHECK_EQ(pyipc_topic_close(s), 0);
	pthread_join(th, NULL);
	CHECK_EQ(b.rc, -EBADF);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* a scribbled slot fails check(); repair() makes it valid again and the topic works. */
static void test_scribbled_slot_repair(void)
{
	pyipc_topic *t = make(4096, 1, 0), *s = sub(last_name(), 0);
	unsigned char buf[64], *m;
	struct stat st;
	int fd = shm_open(last_name(), O_RDWR, 0);

	CHECK_EQ(publish_id(t, 3, 8, NOWAIT), 0);
	CHECK_EQ(pyipc_topic_check(t), 1);
	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	CHECK(m != MAP_FAILED);
	*(uint64_t *)(m + PYIPC_OFF_TOPIC_SLOTS + PYIPC_OFF_SLOT_GATE) = 0x123456789ull;
	CHECK_EQ(pyipc_topic_check(t), -EBADMSG);
	CHECK_EQ(pyipc_topic_repair(t), 0);
	CHECK_EQ(pyipc_topic_check(t), 1);
	CHECK_EQ(recv_until(s, buf, sizeof(buf), NOWAIT), 8);
	/* A scribbled record header: repair drops it and what follows. */
	CHECK_EQ(publish_id(t, 4, 8, NOWAIT), 0);
	*(uint32_t *)(m + st.st_size - 4096 + 24) ^= 0xff; /* the second record's len */
	CHECK_EQ(pyipc_topic_check(t), -EBADMSG);
	CHECK_EQ(pyipc_topic_repair(t), 1);
	CHECK(pyipc_topic_check(t) >= 0);
	CHECK_EQ(publish_id(t, 5, 8, NOWAIT), 0);
	munmap(m, (size_t)st.st_size);
	pyipc_topic_free(s);
	pyipc_topic_free(t);
}

/* ---- threads ------------------------------------------------------------------ */

#define NPUB 2
#define NSUB 3
#define PER_PUB 20000

struct stress {
	const char *name;
	int overflow;
	atomic_int subscribed;
	atomic_int torn;
};

static void *stress_pub(void *arg)
{
	struct stress *st = arg;
	pyipc_topic *p = NULL;
	static _Thread_local uint64_t state;
	unsigned char buf[2048];

	CHECK_EQ(pyipc_topic_attach(st->name, 0, &p), 0);
	state = (uint64_t)(uintptr_t)&p ^ seed;
	while (atomic_load(&st->subscribed) < NSUB)
		sched_yield();
	for (uint64_t i = 0; i < PER_PUB; i++) {
		uint64_t len = 16 + (state = state * 6364136223846793005ull + 1) % 1500, id;
		int rc;

		id = ((uint64_t)(uintptr_t)p << 1) ^ i;
		fill(buf, id, len);
		memcpy(buf, &id, 8);
		memcpy(buf + 8, &i, 8);
		do
			rc = pyipc_topic_publish(p, buf, len, FOREVER);
		while (rc == -EINTR);
		CHECK_EQ(rc, 0);
	}
	pyipc_topic_free(p);
	return NULL;
}

static void *stress_sub(void *arg)
{
	struct stress *st = arg;
	pyipc_topic *s = sub(st->name, 0);
	static _Thread_local unsigned char buf[2048];
	uint64_t needed, n = 0;

	atomic_fetch_add(&st->subscribed, 1);
	for (;;) {
		int64_t len = pyipc_topic_recv(s, buf, sizeof(buf), FOREVER, &needed);
		uint64_t id;

		if (len == -EINTR)
			continue;
		if (len == -ESHUTDOWN)
			break;
		CHECK(len >= 16);
		memcpy(&id, buf, 8);
		if (!matches(buf, id, 16, (uint64_t)len))
			atomic_fetch_add(&st->torn, 1);
		n++;
	}
	if (!st->overflow)
		CHECK_EQ(n, NPUB * PER_PUB);
	else
		CHECK_EQ(n + (uint64_t)pyipc_topic_missed(s), NPUB * PER_PUB);
	pyipc_topic_free(s);
	return NULL;
}

static void run_stress(int overflow)
{
	pyipc_topic *t = make(1 << 15, NSUB, overflow);
	struct stress st = { .name = last_name(), .overflow = overflow };
	pthread_t tp[NPUB], ts[NSUB];

	for (int i = 0; i < NSUB; i++)
		CHECK_EQ(pthread_create(&ts[i], NULL, stress_sub, &st), 0);
	for (int i = 0; i < NPUB; i++)
		CHECK_EQ(pthread_create(&tp[i], NULL, stress_pub, &st), 0);
	for (int i = 0; i < NPUB; i++)
		pthread_join(tp[i], NULL);
	CHECK_EQ(pyipc_topic_shutdown(t), 0);
	for (int i = 0; i < NSUB; i++)
		pthread_join(ts[i], NULL);
	CHECK_EQ(atomic_load(&st.torn), 0);
	CHECK(pyipc_topic_check(t) >= 0);
	pyipc_topic_free(t);
}

/* 2 publisher threads x 3 subscriber threads on a "block" topic: every subscriber gets every message. */
static void test_threads_block(void)
{
	run_stress(0);
}

/* the same on an "overwrite" topic: received + missed == published for every subscriber. */
static void test_threads_overwrite(void)
{
	run_stress(1);
}

/* ---- driver --------------------------------------------------------------------- */

struct test {
	const char *name;
	void (*fn)(void);
};

#define T(x) { #x, test_##x }
static const struct test tests[] = {
	T(create_attach),
	T(kinds_told_apart),
	T(close),
	T(broadcast_order),
	T(block_back_pressure),
	T(overwrite_missed),
	T(start_oldest),
	T(max_subscribers),
	T(buffer_too_small),
	T(reserve_commit_abort),
	T(view_holds),
	T(dead_subscriber),
	T(dead_reserver),
	T(dead_lock_holder),
	T(fork_resubscribes),
	T(arm),
	T(shutdown),
	T(close_wakes_blocked),
	T(scribbled_slot_repair),
	T(threads_block),
	T(threads_overwrite),
};

int main(int argc, char **argv)
{
	const char *env = getenv("PYIPC_CTEST_PREFIX");
	const char *s = getenv("PYIPC_CTEST_SEED");
	int ran = 0;

	snprintf(prefix, sizeof(prefix), "%s", env && *env ? env : "pyipc-ctopic");
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
