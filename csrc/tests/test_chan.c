// SPDX-License-Identifier: MIT
/*
 * test_chan.c - the channel core's own tests, linked with the channel
 * sources alone (no Python), so that they run under AddressSanitizer,
 * UndefinedBehaviorSanitizer and ThreadSanitizer.
 *
 * Usage: test_chan [test-name...]   (no name: every test)
 * Environment: PYIPC_CTEST_PREFIX  prefix of every queue name made here
 *                                  (default "pyipc-ctest-<pid>"),
 *              PYIPC_CTEST_SEED    seed of the pseudo-random choices
 *                                  (default: the clock; printed either way).
 * Exit status: 0 when every selected test passed, 1 on a failure (the
 * message names the test, the line and the seed), 2 when no test matched,
 * 77 (SKIP_EXIT) when the only selected test cannot run here (it prints
 * "skip <name>: <why>").  Every queue a test makes is unlinked, on success
 * and on failure alike.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyipc_api.h"

#define NOWAIT 0
#define FOREVER (-1)
#define SKIP_EXIT 77

/* ---- failure reporting and cleanup ------------------------------------ */

static char prefix[96];
static char names[64][128];
static atomic_int nnames;
static const char *current = "?";
static uint64_t seed;

static void cleanup(void)
{
	int n = atomic_load(&nnames);

	for (int i = 0; i < n && i < 64; i++)
		mq_unlink(names[i]);
}

static void failed(int line, const char *what)
{
	fprintf(stderr, "FAIL %s (line %d, seed %llu): %s\n", current, line,
		(unsigned long long)seed, what);
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

/* A new queue name, remembered so that it is unlinked whatever happens. */
static const char *new_name(void)
{
	int i = atomic_fetch_add(&nnames, 1);

	if (i >= 64)
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

/* The byte at index i of message `id`: every message has its own pattern. */
static char pattern(uint64_t id, uint64_t i)
{
	return (char)((id * 131 + i * 7 + (i >> 8)) ^ (id >> 3));
}

static void fill(char *buf, uint64_t id, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		buf[i] = pattern(id, i);
}

static int matches(const char *buf, uint64_t id, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		if (buf[i] != pattern(id, i))
			return 0;
	return 1;
}

/* -EINTR is a slice ending: call again, as Python does. */
static int64_t recv_all(pyipc_chan *c, char *buf, uint64_t cap, int64_t deadline)
{
	int64_t n;

	while ((n = pyipc_chan_recv(c, buf, cap, deadline)) == -EINTR)
		;
	return n;
}

static int send_all(pyipc_chan *c, const char *data, size_t len, int64_t deadline)
{
	int rc;

	while ((rc = pyipc_chan_send(c, data, len, deadline)) == -EINTR)
		;
	return rc;
}

/* send_many, going on from the first message not sent after each -EINTR
 * (a half-sent one is resumed: same address, same length). */
static int send_many_all(pyipc_chan *c, const char *data, const uint64_t *lens, size_t n,
			 int64_t deadline)
{
	size_t sent;
	int rc;

	while ((rc = pyipc_chan_send_many(c, data, lens, n, &sent, deadline)) == -EINTR) {
		for (size_t i = 0; i < sent; i++)
			data += lens[i];
		lens += sent;
		n -= sent;
	}
	return rc;
}

/* A pair of channels of each kind: [0] sends to [1]. */
enum kind { K_PIPE, K_DUPLEX, K_STREAM, K_SEQPACKET, K_DGRAM, K_MQ, NKINDS };
static const char *const kind_names[NKINDS] = { "pipe",      "duplex", "stream",
						"seqpacket", "dgram",  "mq" };

static void make_pair(enum kind k, pyipc_chan **tx, pyipc_chan **rx)
{
	const char *name;

	switch (k) {
	case K_PIPE:
		CHECK_EQ(pyipc_pipe_open(0, rx, tx), 0);
		return;
	case K_DUPLEX:
		CHECK_EQ(pyipc_pipe_open(1, tx, rx), 0);
		return;
	case K_STREAM:
		CHECK_EQ(pyipc_usock_pair(PYIPC_SOCK_STREAM, tx, rx), 0);
		return;
	case K_SEQPACKET:
		CHECK_EQ(pyipc_usock_pair(PYIPC_SOCK_SEQPACKET, tx, rx), 0);
		return;
	case K_DGRAM:
		CHECK_EQ(pyipc_usock_pair(PYIPC_SOCK_DGRAM, tx, rx), 0);
		return;
	case K_MQ:
		name = new_name();
		CHECK_EQ(pyipc_mq_open(name, 1, 0600, 10, 8192, tx), 0);
		CHECK_EQ(pyipc_mq_open(name, 0, 0, 0, 0, rx), 0);
		CHECK_EQ(pyipc_mq_unlink(name), 0);
		return;
	default:
		failed(__LINE__, "no such kind");
	}
}

static void free_pair(pyipc_chan *tx, pyipc_chan *rx)
{
	pyipc_chan_free(tx);
	pyipc_chan_free(rx);
}

static uint64_t max_size(enum kind k)
{
	if (k == K_MQ)
		return 8192;
	if (k == K_SEQPACKET || k == K_DGRAM)
		return 100000;
	return 3 << 20;
}

static int readable(pyipc_chan *c)
{
	struct pollfd p = { .fd = pyipc_chan_fileno(c, 0), .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* ---- messages of every size, from a writer thread ---------------------- */

static const uint64_t sizes[] = { 0,    1,     7,     8,     9,     1023,   1024, 1025,
				  4095, 4096,  4097,  16384, 65536, 200000, 3 << 20, 5 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

struct writer {
	pyipc_chan *c;
	enum kind k;
	int rc;
};

static void *write_sizes(void *arg)
{
	struct writer *w = arg;
	char *p = malloc(3 << 20);

	w->rc = 0;
	for (uint64_t i = 0; i < NSIZES && !w->rc; i++) {
		if (sizes[i] > max_size(w->k))
			continue;
		fill(p, i, sizes[i]);
		w->rc = send_all(w->c, p, sizes[i], FOREVER);
	}
	free(p);
	return NULL;
}

static void check_sizes(enum kind k)
{
	char *buf = malloc(3 << 20);
	pyipc_chan *tx, *rx;
	struct writer w;
	pthread_t t;

	make_pair(k, &tx, &rx);
	w.c = tx;
	w.k = k;
	CHECK_EQ(pthread_create(&t, NULL, write_sizes, &w), 0);
	for (uint64_t i = 0; i < NSIZES; i++) {
		if (sizes[i] > max_size(k))
			continue;
		int64_t n = recv_all(rx, buf, 3 << 20, in_ms(30000));

		CHECK_EQ(n, sizes[i]);
		CHECK(matches(buf, i, (uint64_t)n));
	}
	CHECK_EQ(pthread_join(t, NULL), 0);
	CHECK_EQ(w.rc, 0);
	CHECK_EQ(pyipc_chan_recv(rx, buf, 3 << 20, NOWAIT), -EAGAIN);
	free_pair(tx, rx);
	free(buf);
}

static void test_sizes_pipe(void)
{
	check_sizes(K_PIPE);
}

static void test_sizes_stream(void)
{
	check_sizes(K_STREAM);
}

static void test_sizes_packets(void)
{
	check_sizes(K_SEQPACKET);
	check_sizes(K_DGRAM);
	check_sizes(K_MQ);
}

/* ---- single cases ---------------------------------------------------- */

/* A buffer too small refuses the message and keeps it; the wrong direction
 * is -EBADF; end of stream is -EPIPE once everything was received. */
static void test_too_small_and_eof(void)
{
	pyipc_chan *tx, *rx;
	char buf[16], big[32];

	for (enum kind k = K_PIPE; k <= K_SEQPACKET; k++) {
		current = kind_names[k];
		make_pair(k, &tx, &rx);
		CHECK_EQ(pyipc_chan_recv(rx, buf, sizeof(buf), NOWAIT), -EAGAIN);
		CHECK_EQ(send_all(tx, "0123456789abcdefXYZ", 19, FOREVER), 0);
		CHECK_EQ(recv_all(rx, buf, 4, FOREVER), -EMSGSIZE);
		CHECK_EQ(pyipc_chan_need(rx), 19);
		if (k == K_PIPE)
			CHECK_EQ(pyipc_chan_send(rx, "x", 1, NOWAIT), -EBADF);
		CHECK_EQ(send_all(tx, "", 0, FOREVER), 0);
		pyipc_chan_free(tx);
		CHECK_EQ(recv_all(rx, big, sizeof(big), FOREVER), 19);
		CHECK(memcmp(big, "0123456789abcdefXYZ", 19) == 0);
		CHECK_EQ(recv_all(rx, big, sizeof(big), FOREVER), 0);
		CHECK_EQ(recv_all(rx, big, sizeof(big), FOREVER), -EPIPE);
		CHECK_EQ(recv_all(rx, big, sizeof(big), NOWAIT), -EPIPE);
		pyipc_chan_free(rx);
	}
}

/* A writer that dies inside a frame leaves -ECONNRESET, for good; bytes
 * that are not frames, -EBADMSG. */
static void test_torn_and_garbage(void)
{
	uint8_t hdr[8] = { 100, 0, 0, 0, 0, 0, 0, 0xa5 };
	pyipc_chan *tx, *rx;
	char buf[64], big[128];
	int fd;

	make_pair(K_PIPE, &tx, &rx);
	fd = pyipc_chan_fileno(tx, 1);
	CHECK(write(fd, hdr, 8) == 8 && write(fd, "abc", 3) == 3);
	pyipc_chan_free(tx);
	CHECK_EQ(recv_all(rx, buf, sizeof(buf), FOREVER), -EMSGSIZE);
	CHECK_EQ(pyipc_chan_need(rx), 100);
	CHECK_EQ(recv_all(rx, big, sizeof(big), FOREVER), -ECONNRESET);
	CHECK_EQ(recv_all(rx, big, sizeof(big), FOREVER), -ECONNRESET);
	pyipc_chan_free(rx);

	make_pair(K_STREAM, &tx, &rx);
	CHECK(write(pyipc_chan_fileno(tx, 1), "garbage!garbage!", 16) == 16);
	CHECK_EQ(recv_all(rx, buf, sizeof(buf), FOREVER), -EBADMSG);
	free_pair(tx, rx);

	/* A length too large for the buffer is believed only with its magic. */
	make_pair(K_PIPE, &tx, &rx);
	CHECK(write(pyipc_chan_fileno(tx, 1), "\xff\xff\xff\xff\xff\xff\x0f!", 8) == 8);
	CHECK_EQ(recv_all(rx, buf, sizeof(buf), FOREVER), -EBADMSG);
	free_pair(tx, rx);
}

/* Deadlines: NOWAIT never waits, a deadline in the past times out, a short
 * one times out about when it should. */
static void test_timeouts(void)
{
	pyipc_chan *tx, *rx;
	char buf[8192];
	int64_t t0;

	for (enum kind k = K_PIPE; k < NKINDS; k++) {
		current = kind_names[k];
		make_pair(k, &tx, &rx);
		CHECK_EQ(pyipc_chan_recv(rx, buf, sizeof(buf), NOWAIT), -EAGAIN);
		CHECK_EQ(pyipc_chan_recv(rx, buf, sizeof(buf), 1), -ETIMEDOUT);
		t0 = now_ns();
		CHECK_EQ(recv_all(rx, buf, sizeof(buf), in_ms(50)), -ETIMEDOUT);
		CHECK(now_ns() - t0 >= 45000000ll);
		if (k == K_MQ) /* smaller than the queue's message size */
			CHECK_EQ(pyipc_chan_recv(rx, buf, 16, NOWAIT), -EAGAIN);
		free_pair(tx, rx);
	}
}

/* A full channel: a sender with NOWAIT gets -EAGAIN, with a deadline
 * -ETIMEDOUT. */
static void test_send_full(void)
{
	pyipc_chan *tx, *rx;
	char msg[512] = { 0 };
	int rc = 0, i;

	for (enum kind k = K_PIPE; k < NKINDS; k++) {
		if (k == K_DUPLEX)
			continue;
		current = kind_names[k];
		make_pair(k, &tx, &rx);
		for (i = 0; i < 100000 && !rc; i++)
			rc = pyipc_chan_send(tx, msg, sizeof(msg), NOWAIT);
		CHECK_EQ(rc, -EAGAIN);
		CHECK_EQ(send_all(tx, msg, sizeof(msg), in_ms(30)), -ETIMEDOUT);
		rc = 0;
		free_pair(tx, rx);
	}
}

/* Descriptors ride with their message, also when a read ahead took the
 * first bytes of the message that carries them. */
static void test_fd_passing(void)
{
	enum kind kinds[] = { K_STREAM, K_SEQPACKET, K_DGRAM };
	pyipc_chan *tx, *rx;
	char buf[256];
	int p[2], got[4];
	size_t n;

	for (unsigned j = 0; j < 3; j++) {
		current = kind_names[kinds[j]];
		make_pair(kinds[j], &tx, &rx);
		CHECK_EQ(pipe(p), 0);
		CHECK_EQ(send_all(tx, "plain", 5, FOREVER), 0);
		CHECK_EQ(pyipc_chan_send_fds(tx, "fd", 2, p, 2, FOREVER), 0);
		CHECK_EQ(recv_all(rx, buf, sizeof(buf), FOREVER), 5);
		n = 9;
		CHECK_EQ(pyipc_chan_recv_fds(rx, buf, sizeof(buf), got, 4, &n, FOREVER), 2);
		CHECK_EQ(n, 2);
		/* They are the same pipe. */
		CHECK(write(got[1], "!", 1) == 1 && read(p[0], buf, 1) == 1 && buf[0] == '!');
		close(got[0]);
		close(got[1]);
		/* Unwanted ones are closed, never leaked. */
		CHECK_EQ(pyipc_chan_send_fds(tx, "fd", 2, p, 2, FOREVER), 0);
		CHECK_EQ(recv_all(rx, buf, sizeof(buf), FOREVER), 2);
		CHECK_EQ(pyipc_chan_send_fds(tx, "fd", 2, p, 2, FOREVER), 0);
		n = 9;
		CHECK_EQ(pyipc_chan_recv_fds(rx, buf, sizeof(buf), got, 1, &n, FOREVER), 2);
		CHECK_EQ(n, 1);
		close(got[0]);
		close(p[0]);
		close(p[1]);
		free_pair(tx, rx);
	}
	make_pair(K_PIPE, &tx, &rx);
	CHECK_EQ(pyipc_chan_send_fds(tx, "x", 1, p, 0, FOREVER), -EOPNOTSUPP);
	free_pair(tx, rx);
}

/* More descriptors than one message keeps (PYIPC_CHAN_MAX_FDS) are
 * closed: the process's descriptor count comes back where it was. */
static void test_fd_overflow(void)
{
	int fds[100], p[2], before = 0, after = 0, got[PYIPC_CHAN_MAX_FDS];
	pyipc_chan *tx, *rx;
	struct iovec iov = { .iov_base = "\x50" "x", .iov_len = 2 };
	union {
		char b[CMSG_SPACE(sizeof(fds))];
		struct cmsghdr a;
	} u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	char buf[16];
	size_t n;

	make_pair(K_SEQPACKET, &tx, &rx);
	CHECK_EQ(pipe(p), 0);
	for (int i = 0; i < 100; i++)
		fds[i] = p[i % 2];
	msg.msg_control = u.b;
	msg.msg_controllen = sizeof(u.b);
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	for (int fd = 0; fd < 1024; fd++)
		before += fcntl(fd, F_GETFD) >= 0;
	CHECK_EQ(sendmsg(pyipc_chan_fileno(tx, 1), &msg, 0), 2);
	CHECK_EQ(pyipc_chan_recv_fds(rx, buf, sizeof(buf), got, PYIPC_CHAN_MAX_FDS, &n, FOREVER), 1);
	CHECK_EQ(n, PYIPC_CHAN_MAX_FDS);
	for (size_t i = 0; i < n; i++)
		close(got[i]);
	for (int fd = 0; fd < 1024; fd++)
		after += fcntl(fd, F_GETFD) >= 0;
	CHECK_EQ(after, before);
	close(p[0]);
	close(p[1]);
	free_pair(tx, rx);
}

/* Queues: priorities, sizes, attributes, unlink. */
static void test_mq(void)
{
	const char *name = new_name();
	char buf[8192];
	unsigned prio = 0;
	int64_t mm, ms, cur;
	pyipc_chan *q;

	CHECK_EQ(pyipc_mq_open(name, 1, 0600, 4, 8192, &q), 0);
	CHECK_EQ(pyipc_mq_attr(q, &mm, &ms, &cur), 0);
	CHECK(mm == 4 && ms == 8192 && cur == 0);
	CHECK_EQ(pyipc_mq_send(q, "lo", 2, 1, FOREVER), 0);
	CHECK_EQ(pyipc_mq_send(q, "hi", 2, 7, FOREVER), 0);
	CHECK_EQ(pyipc_mq_recv(q, buf, sizeof(buf), &prio, FOREVER), 2);
	CHECK_EQ(prio, 7);
	/* A buffer below the queue's message size: a message that fits it is
	 * received; one that does not is kept, with its priority. */
	CHECK_EQ(pyipc_mq_recv(q, buf, 16, &prio, FOREVER), 2);
	CHECK_EQ(prio, 1);
	CHECK_EQ(pyipc_mq_send(q, buf, 100, 3, FOREVER), 0);
	CHECK_EQ(pyipc_mq_recv(q, buf, 16, &prio, FOREVER), -EMSGSIZE);
	CHECK_EQ(pyipc_chan_need(q), 100);
	CHECK_EQ(pyipc_chan_pending(q), 1);
	prio = 0;
	CHECK_EQ(pyipc_mq_recv(q, buf, sizeof(buf), &prio, FOREVER), 100);
	CHECK_EQ(prio, 3);
	CHECK_EQ(pyipc_chan_pending(q), 0);
	CHECK_EQ(pyipc_chan_send(q, buf, 8193, FOREVER), -EMSGSIZE);
	CHECK_EQ(pyipc_mq_send(q, buf, 1, PYIPC_MQ_PRIO_MAX, FOREVER), -EINVAL);
	for (int i = 0; i < 4; i++) /* max_messages */
		CHECK_EQ(pyipc_chan_send(q, "f", 1, NOWAIT), 0);
	CHECK_EQ(pyipc_chan_send(q, "f", 1, NOWAIT), -EAGAIN);
	CHECK_EQ(pyipc_mq_unlink(name), 0);
	CHECK_EQ(pyipc_mq_unlink(name), -ENOENT);
	pyipc_chan_free(q);
}

/* ---- batches ----------------------------------------------------------- */

/* Random batches of random sizes through every kind come out in order,
 * whole, each recv_many returning at least one and at most max. */
static void test_batches(void)
{
	static uint64_t lens[200], got_lens[8192];
	char *data = malloc(200 * 6000), *buf;
	pyipc_chan *tx, *rx;
	uint64_t id_sent, id_got;

	for (enum kind k = K_PIPE; k < NKINDS; k++) {
		current = kind_names[k];
		make_pair(k, &tx, &rx);
		buf = pyipc_buf_alloc(pyipc_chan_many_bufsize(rx, 64));
		CHECK(buf != NULL);
		id_sent = id_got = 0;
		for (int round = 0; round < 30; round++) {
			size_t n = 1 + rnd() % 8, off = 0;
			uint64_t cap = pyipc_chan_many_bufsize(rx, 64);
			/* At most 8 x 6000 bytes: a batch fits in the kernel. */
			uint64_t limit = 6000;

			if (k == K_MQ && n > 8)
				n = 8;
			for (size_t i = 0; i < n; i++) {
				lens[i] = rnd() % 4 ? rnd() % 100 : rnd() % limit;
				fill(data + off, id_sent + i, lens[i]);
				off += lens[i];
			}
			CHECK_EQ(send_many_all(tx, data, lens, n, in_ms(10000)), 0);
			id_sent += n;
			while (id_got < id_sent) {
				size_t max = 1 + rnd() % 70;
				int64_t r;
				uint64_t o = 0;

				while ((r = pyipc_chan_recv_many(rx, buf, cap, got_lens, max,
								 in_ms(10000))) == -EINTR)
					;
				CHECK(r >= 1 && (size_t)r <= max);
				for (int64_t i = 0; i < r; i++) {
					CHECK(matches(buf + o, id_got, got_lens[i]));
					o += got_lens[i];
					id_got++;
				}
			}
			CHECK_EQ(id_got, id_sent);
		}
		CHECK_EQ(pyipc_chan_recv_many(rx, buf, pyipc_chan_many_bufsize(rx, 64), got_lens, 4,
					      NOWAIT),
			 -EAGAIN);
		free_pair(tx, rx);
		pyipc_buf_free(buf);
	}
	free(data);
}

struct batch_writer {
	pyipc_chan *c;
	int rc;
};

/* 20 batches of 10 messages of up to 100000 bytes: far more than a pipe or
 * socket buffer holds, so batches go out in parts. */
static void *write_batches(void *arg)
{
	struct batch_writer *w = arg;
	char *data = malloc(10 * 100000);
	uint64_t lens[10], id = 0;

	w->rc = 0;
	for (int b = 0; b < 20 && !w->rc; b++) {
		size_t off = 0;

		for (int i = 0; i < 10; i++, id++) {
			lens[i] = (id * 7919) % 100000;
			fill(data + off, id, lens[i]);
			off += lens[i];
		}
		w->rc = send_many_all(w->c, data, lens, 10, FOREVER);
	}
	free(data);
	return NULL;
}

/* A send_many that has to wait, even for longer than a slice (-EINTR),
 * goes on where it stopped, in the middle of a frame included: every
 * message arrives whole and in order. */
static void test_send_many_resumes(void)
{
	enum kind kinds[] = { K_PIPE, K_STREAM };
	char *buf = malloc(100000);

	for (unsigned j = 0; j < 2; j++) {
		struct batch_writer w;
		pyipc_chan *tx, *rx;
		pthread_t t;

		current = kind_names[kinds[j]];
		make_pair(kinds[j], &tx, &rx);
		w.c = tx;
		CHECK_EQ(pthread_create(&t, NULL, write_batches, &w), 0);
		for (uint64_t id = 0; id < 200; id++) {
			if (id % 50 == 25)
				usleep(150000); /* the writer waits more than a slice */
			CHECK_EQ(recv_all(rx, buf, 100000, in_ms(30000)), (id * 7919) % 100000);
			CHECK(matches(buf, id, (id * 7919) % 100000));
		}
		CHECK_EQ(pthread_join(t, NULL), 0);
		CHECK_EQ(w.rc, 0);
		free_pair(tx, rx);
	}
	free(buf);
}

/* recv_many gets every message already there with one call, up to max. */
static void test_recv_many_takes_all_there(void)
{
	uint64_t lens[64], got[64];
	char data[64 * 64], *buf;
	pyipc_chan *tx, *rx;
	size_t sent;

	for (enum kind k = K_PIPE; k < NKINDS; k++) {
		size_t n = k == K_MQ ? 10 : 64;

		current = kind_names[k];
		make_pair(k, &tx, &rx);
		buf = pyipc_buf_alloc(pyipc_chan_many_bufsize(rx, 64));
		CHECK(buf != NULL);
		for (size_t i = 0; i < n; i++)
			lens[i] = 64;
		memset(data, 'd', sizeof(data));
		CHECK_EQ(pyipc_chan_send_many(tx, data, lens, n, &sent, FOREVER), 0);
		CHECK_EQ(pyipc_chan_recv_many(rx, buf, pyipc_chan_many_bufsize(rx, 64), got, 64,
					      FOREVER),
			 n);
		CHECK_EQ(pyipc_chan_recv_many(rx, buf, pyipc_chan_many_bufsize(rx, 64), got, 64,
					      NOWAIT),
			 -EAGAIN);
		CHECK_EQ(pyipc_chan_send_many(tx, data, lens, n, &sent, FOREVER), 0);
		CHECK_EQ(pyipc_chan_recv_many(rx, buf, pyipc_chan_many_bufsize(rx, 64), got, 5,
					      FOREVER),
			 5);
		free_pair(tx, rx);
		pyipc_buf_free(buf);
	}
}

/* ---- readiness ---------------------------------------------------------- */

/* With any backlog, read in any way: poll() says readable exactly while a
 * whole message remains to be received. */
static void test_readiness_exact(void)
{
	char msg[6000], buf[65536];
	uint64_t lens[64];
	pyipc_chan *tx, *rx;

	memset(msg, 'r', sizeof(msg));
	for (enum kind k = K_PIPE; k < NKINDS; k++) {
		current = kind_names[k];
		make_pair(k, &tx, &rx);
		for (int round = 0; round < 40; round++) {
			int queued = 1 + (int)(rnd() % 9), left;

			/* At most 9 x 6000 bytes: it all fits in the kernel. */
			for (int i = 0; i < queued; i++) {
				size_t len = rnd() % 3 ? rnd() % 100 : rnd() % 6000;

				CHECK_EQ(send_all(tx, msg, len, NOWAIT), 0);
			}
			left = queued;
			while (left) {
				CHECK(readable(rx));
				if (rnd() % 2) {
					CHECK(recv_all(rx, buf, sizeof(buf), NOWAIT) >= 0);
					left--;
				} else {
					int64_t r = pyipc_chan_recv_many(rx, buf, sizeof(buf), lens,
									 1 + rnd() % 4, NOWAIT);
					CHECK(r >= 1);
					left -= (int)r;
				}
				CHECK(left >= 0);
			}
			CHECK(!readable(rx));
			CHECK(!pyipc_chan_pending(rx));
		}
		free_pair(tx, rx);
	}
}

/* ---- threads and close -------------------------------------------------- */

struct blocked {
	pyipc_chan *c;
	int64_t rc;
	atomic_int started;
};

static void *blocked_recv(void *arg)
{
	struct blocked *b = arg;
	char buf[8192];

	atomic_store(&b->started, 1);
	b->rc = recv_all(b->c, buf, sizeof(buf), FOREVER);
	return NULL;
}

/* close() while another thread is blocked in recv: that recv returns
 * -EBADF and the descriptors are closed once it left. */
static void test_close_while_blocked(void)
{
	struct blocked b = { 0 };
	pyipc_chan *tx, *rx;
	pthread_t t;

	make_pair(K_PIPE, &tx, &rx);
	b.c = rx;
	CHECK_EQ(pthread_create(&t, NULL, blocked_recv, &b), 0);
	while (!atomic_load(&b.started))
		sched_yield();
	usleep(20000); /* in its wait (if not, close() comes first: also fine) */
	CHECK_EQ(pyipc_chan_close(rx), 0);
	CHECK_EQ(pthread_join(t, NULL), 0);
	CHECK_EQ(b.rc, -EBADF);
	CHECK_EQ(pyipc_chan_recv(rx, NULL, 0, NOWAIT), -EBADF);
	CHECK_EQ(pyipc_chan_fileno(rx, 0), -EBADF);
	free_pair(tx, rx);
}

/* Several sender and receiver threads on one pair of handles: every
 * message arrives whole, exactly once. */
struct mt {
	pyipc_chan *c;
	int id;
	atomic_int *got;
};

#define MT_PER 400
#define MT_SENDERS 3

static void *mt_send(void *arg)
{
	struct mt *m = arg;
	char buf[30000];

	for (int i = 0; i < MT_PER; i++) {
		uint64_t id = (uint64_t)m->id * MT_PER + (uint64_t)i;
		size_t len = 8 + (size_t)(id % 5 == 0 ? 20000 : id % 300);

		memcpy(buf, &id, 8);
		fill(buf + 8, id, len - 8);
		CHECK_EQ(send_all(m->c, buf, len, in_ms(30000)), 0);
	}
	return NULL;
}

static void *mt_recv(void *arg)
{
	struct mt *m = arg;
	char buf[30000];
	int64_t n;
	uint64_t id;

	while ((n = recv_all(m->c, buf, sizeof(buf), in_ms(500))) >= 0) {
		CHECK(n >= 8);
		memcpy(&id, buf, 8);
		CHECK(id < MT_SENDERS * MT_PER);
		CHECK(matches(buf + 8, id, (uint64_t)n - 8));
		atomic_fetch_add(&m->got[id], 1);
	}
	CHECK_EQ(n, -ETIMEDOUT);
	return NULL;
}

static void test_threads_share_handles(void)
{
	static atomic_int got[MT_SENDERS * MT_PER];
	enum kind kinds[] = { K_PIPE, K_STREAM, K_SEQPACKET };
	struct mt s[MT_SENDERS], r[2];
	pthread_t ts[MT_SENDERS], tr[2];
	pyipc_chan *tx, *rx;

	for (unsigned j = 0; j < 3; j++) {
		current = kind_names[kinds[j]];
		make_pair(kinds[j], &tx, &rx);
		for (int i = 0; i < MT_SENDERS * MT_PER; i++)
			atomic_store(&got[i], 0);
		for (int i = 0; i < 2; i++) {
			r[i] = (struct mt){ rx, i, got };
			CHECK_EQ(pthread_create(&tr[i], NULL, mt_recv, &r[i]), 0);
		}
		for (int i = 0; i < MT_SENDERS; i++) {
			s[i] = (struct mt){ tx, i, got };
			CHECK_EQ(pthread_create(&ts[i], NULL, mt_send, &s[i]), 0);
		}
		for (int i = 0; i < MT_SENDERS; i++)
			CHECK_EQ(pthread_join(ts[i], NULL), 0);
		for (int i = 0; i < 2; i++)
			CHECK_EQ(pthread_join(tr[i], NULL), 0);
		for (int i = 0; i < MT_SENDERS * MT_PER; i++)
			CHECK_EQ(atomic_load(&got[i]), 1);
		free_pair(tx, rx);
	}
}

/* ---- fork -------------------------------------------------------------- */

/* Wait until every thread of process pid is stopped (kill() does not). */
static int wait_stopped(pid_t pid)
{
	char path[64], buf[512], *p;
	int64_t end = in_ms(5000);
	int all;

	while (now_ns() < end) {
		DIR *d;
		struct dirent *e;

		snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
		d = opendir(path);
		if (!d)
			return 0;
		all = 1;
		while ((e = readdir(d))) {
			FILE *f;

			if (e->d_name[0] == '.')
				continue;
			snprintf(buf, sizeof(buf), "%s/%s/stat", path, e->d_name);
			f = fopen(buf, "re");
			if (!f)
				continue;
			p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
			fclose(f);
			if (!p || (p[2] != 'T' && p[2] != 't'))
				all = 0;
		}
		closedir(d);
		if (all)
			return 1;
		usleep(1000);
	}
	return 0;
}

/*
 * fork() while another thread is blocked in recv on a handle (holding its
 * receive lock and counted as a call in progress): the child receives what
 * is sent, with a timeout and without, and can close the handle.  The child
 * stops the parent meanwhile, so that the parent's thread (which shares the
 * descriptor) cannot take the child's messages.  Not for queues: there the
 * kernel hands a message to a receiver blocked in it, stopped or not.
 */
static void test_fork_while_blocked(void)
{
	for (enum kind k = K_PIPE; k < K_MQ; k++) {
		struct blocked b = { 0 };
		pyipc_chan *tx, *rx;
		pthread_t t;
		int status;
		pid_t pid;

		current = kind_names[k];
		make_pair(k, &tx, &rx);
		b.c = rx;
		CHECK_EQ(pthread_create(&t, NULL, blocked_recv, &b), 0);
		while (!atomic_load(&b.started))
			sched_yield();
		usleep(20000);
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			char buf[8192];
			int ok = kill(getppid(), SIGSTOP) == 0 && wait_stopped(getppid());

			ok &= send_all(tx, "child", 5, in_ms(5000)) == 0;
			ok &= recv_all(rx, buf, sizeof(buf), in_ms(5000)) == 5;
			ok &= send_all(tx, "again", 5, in_ms(5000)) == 0;
			ok &= recv_all(rx, buf, sizeof(buf), FOREVER) == 5;
			ok &= pyipc_chan_close(rx) == 0;
			ok &= pyipc_chan_recv(rx, buf, sizeof(buf), NOWAIT) == -EBADF;
			kill(getppid(), SIGCONT);
			_exit(ok ? 0 : 3);
		}
		CHECK_EQ(waitpid(pid, &status, 0), pid);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		/* The parent's blocked thread is still there and still works. */
		CHECK_EQ(send_all(tx, "parent", 6, FOREVER), 0);
		CHECK_EQ(pthread_join(t, NULL), 0);
		CHECK_EQ(b.rc, 6);
		free_pair(tx, rx);
	}
}

/* ---- driver ----------------------------------------------------------- */

struct test {
	const char *name;
	void (*fn)(void);
};

#define T(x) { #x, test_##x }
static const struct test tests[] = {
	T(sizes_pipe),
	T(sizes_stream),
	T(sizes_packets),
	T(too_small_and_eof),
	T(torn_and_garbage),
	T(timeouts),
	T(send_full),
	T(fd_passing),
	T(fd_overflow),
	T(mq),
	T(batches),
	T(send_many_resumes),
	T(recv_many_takes_all_there),
	T(readiness_exact),
	T(close_while_blocked),
	T(threads_share_handles),
	T(fork_while_blocked),
};

/* Can this machine make POSIX message queues?  Every test uses them. */
static const char *cannot_run(void)
{
	const char *name = new_name();
	mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, NULL);

	if (q == (mqd_t)-1)
		return "POSIX message queues are not available here (mq_open failed)";
	mq_close(q);
	mq_unlink(name);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *env = getenv("PYIPC_CTEST_PREFIX");
	const char *s = getenv("PYIPC_CTEST_SEED");
	const char *why;
	int ran = 0;

	snprintf(prefix, sizeof(prefix), "%s", env && *env ? env : "pyipc-ctest");
	if (!env || !*env)
		snprintf(prefix + strlen(prefix), sizeof(prefix) - strlen(prefix), "-%d", (int)getpid());
	seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)now_ns();
	printf("seed %llu\n", (unsigned long long)seed);
	fflush(stdout);
	/* SIGPIPE at its default, as for a C program: pipe writes must not
	 * die of it. */
	signal(SIGPIPE, SIG_DFL);
	atexit(cleanup);
	why = cannot_run();
	if (why) {
		printf("skip %s: %s\n", argc == 2 ? argv[1] : "all", why);
		return SKIP_EXIT;
	}
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
