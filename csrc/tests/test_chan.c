// SPDX-License-Identifier: MIT
/*
 * test_chan.c - the channel core on its own, for the sanitizers: framing of
 * many sizes through a pipe and a stream socket with a writer thread, EOF
 * and torn frames, too-small buffers, packets, fd passing, message queues,
 * and close() racing a blocked receive.  Built and run by
 * tests/test_channel_c.py; prints "N passed, 0 failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pyipc_api.h"

#define FOREVER (-1)

static int passed, failed;

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (cond) {                                                                \
			passed++;                                                          \
		} else {                                                                   \
			failed++;                                                          \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
		}                                                                          \
	} while (0)

static int64_t recv_all(pyipc_chan *c, char *buf, uint64_t cap, int64_t deadline)
{
	int64_t n;

	/* -EINTR is a slice ending: call again, as Python does. */
	while ((n = pyipc_chan_recv(c, buf, cap, NULL, deadline)) == -EINTR)
		;
	return n;
}

static int send_all(pyipc_chan *c, const char *data, size_t len)
{
	int rc;

	while ((rc = pyipc_chan_send(c, data, len, 0, FOREVER)) == -EINTR)
		;
	return rc;
}

static const size_t sizes[] = { 0, 1, 7, 8, 9, 1023, 1024, 1025, 65536, 200000, 3 << 20, 5 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static void fill(char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (char)(seed * 31 + i * 7);
}

struct writer {
	pyipc_chan *c;
	int rc;
};

static void *write_sizes(void *arg)
{
	struct writer *w = arg;
	char *p = malloc(3 << 20);

	w->rc = 0;
	for (unsigned i = 0; i < NSIZES && !w->rc; i++) {
		fill(p, sizes[i], i);
		w->rc = send_all(w->c, p, sizes[i]);
	}
	free(p);
	return NULL;
}

static void check_sizes(pyipc_chan *tx, pyipc_chan *rx)
{
	char *buf = malloc(3 << 20), *want = malloc(3 << 20);
	struct writer w = { .c = tx };
	pthread_t t;

	pthread_create(&t, NULL, write_sizes, &w);
	for (unsigned i = 0; i < NSIZES; i++) {
		int64_t n = recv_all(rx, buf, 3 << 20, FOREVER);

		fill(want, sizes[i], i);
		CHECK(n == (int64_t)sizes[i]);
		CHECK(n >= 0 && memcmp(buf, want, (size_t)n) == 0);
	}
	pthread_join(t, NULL);
	CHECK(w.rc == 0);
	free(buf);
	free(want);
}

static void test_pipe(void)
{
	int fds[2];
	pyipc_chan *r, *w;
	char buf[16];

	CHECK(pyipc_pipe_make(fds) == 0);
	CHECK(pyipc_chan_open(fds[0], -1, PYIPC_CHAN_PIPE, &r) == 0);
	CHECK(pyipc_chan_open(-1, fds[1], PYIPC_CHAN_PIPE, &w) == 0);
	check_sizes(w, r);
	CHECK(pyipc_chan_recv(r, buf, sizeof(buf), NULL, 0) == -EAGAIN);
	/* too small: refused, kept */
	CHECK(send_all(w, "0123456789abcdefXYZ", 19) == 0);
	CHECK(recv_all(r, buf, 4, FOREVER) == -EMSGSIZE);
	CHECK(pyipc_chan_need(r) == 19);
	CHECK(pyipc_chan_send(r, "x", 1, 0, 0) == -EBADF); /* receive-only */
	pyipc_chan_close(w);
	pyipc_chan_free(w);
	{
		char big[32];

		CHECK(recv_all(r, big, sizeof(big), FOREVER) == 19);
	}
	CHECK(recv_all(r, buf, sizeof(buf), FOREVER) == -EPIPE);
	pyipc_chan_free(r);
}

static void test_torn(void)
{
	int fds[2];
	pyipc_chan *r;
	char buf[64];
	uint8_t hdr[8] = { 100, 0, 0, 0, 0, 0, 0, 0xa5 };

	CHECK(pyipc_pipe_make(fds) == 0);
	CHECK(write(fds[1], hdr, 8) == 8 && write(fds[1], "abc", 3) == 3);
	close(fds[1]);
	CHECK(pyipc_chan_open(fds[0], -1, PYIPC_CHAN_PIPE, &r) == 0);
	CHECK(recv_all(r, buf, sizeof(buf), FOREVER) == -EMSGSIZE);
	{
		char big[128];

		CHECK(recv_all(r, big, sizeof(big), FOREVER) == -ECONNRESET);
	}
	pyipc_chan_free(r);
	/* garbage */
	CHECK(pyipc_pipe_make(fds) == 0);
	CHECK(write(fds[1], "garbage!garbage!", 16) == 16);
	CHECK(pyipc_chan_open(fds[0], -1, PYIPC_CHAN_PIPE, &r) == 0);
	CHECK(recv_all(r, buf, sizeof(buf), FOREVER) == -EBADMSG);
	close(fds[1]);
	pyipc_chan_free(r);
}

static void test_sockets(void)
{
	int fds[2], kinds[] = { PYIPC_CHAN_STREAM, PYIPC_CHAN_SEQPACKET, PYIPC_CHAN_DGRAM };
	pyipc_chan *a, *b;
	char buf[256];

	for (unsigned k = 0; k < 3; k++) {
		CHECK(pyipc_usock_pair(kinds[k], fds) == 0);
		CHECK(pyipc_chan_open(fds[0], fds[0], kinds[k], &a) == 0);
		CHECK(pyipc_chan_open(fds[1], fds[1], kinds[k], &b) == 0);
		if (kinds[k] == PYIPC_CHAN_STREAM) {
			check_sizes(a, b);
		}
		/* many small ones queued: the batched path */
		for (int i = 0; i < 50; i++)
			CHECK(send_all(a, buf, (size_t)i) == 0);
		for (int i = 0; i < 50; i++)
			CHECK(recv_all(b, buf, sizeof(buf), FOREVER) == i);
		/* descriptors */
		{
			int p[2], got[4];
			size_t n = 9;

			CHECK(pipe(p) == 0);
			CHECK(pyipc_chan_send_fds(a, "fd", 2, p, 2, FOREVER) == 0);
			CHECK(pyipc_chan_recv_fds(b, buf, sizeof(buf), got, 4, &n, FOREVER) == 2);
			CHECK(n == 2);
			for (size_t i = 0; i < n && i < 4; i++)
				close(got[i]);
			close(p[0]);
			close(p[1]);
		}
		pyipc_chan_free(a);
		if (kinds[k] != PYIPC_CHAN_DGRAM)
			CHECK(recv_all(b, buf, sizeof(buf), FOREVER) == -EPIPE);
		pyipc_chan_free(b);
	}
}

static void test_mq(void)
{
	char name[64], buf[8192];
	unsigned prio = 0;
	int64_t mm, ms, cur;
	pyipc_chan *q;
	int fd;

	snprintf(name, sizeof(name), "/pyipc-ctest-%d", (int)getpid());
	CHECK(pyipc_mq_open(name, 1, 0600, 4, 8192, &fd) == 0);
	CHECK(pyipc_chan_open(fd, fd, PYIPC_CHAN_MQ, &q) == 0);
	CHECK(pyipc_mq_attr(q, &mm, &ms, &cur) == 0 && mm == 4 && ms == 8192 && cur == 0);
	CHECK(pyipc_chan_send(q, "lo", 2, 1, FOREVER) == 0);
	CHECK(pyipc_chan_send(q, "hi", 2, 7, FOREVER) == 0);
	CHECK(pyipc_chan_recv(q, buf, sizeof(buf), &prio, FOREVER) == 2 && prio == 7);
	CHECK(pyipc_chan_recv(q, buf, 16, &prio, FOREVER) == -EMSGSIZE);
	CHECK(pyipc_chan_send(q, buf, 8193, 0, FOREVER) == -EMSGSIZE);
	for (int i = 0; i < 3; i++)
		CHECK(pyipc_chan_send(q, "f", 1, 0, 0) == 0);
	CHECK(pyipc_chan_send(q, "f", 1, 0, 0) == -EAGAIN);
	CHECK(pyipc_mq_unlink(name) == 0);
	CHECK(pyipc_mq_unlink(name) == -ENOENT);
	pyipc_chan_free(q);
}

static void *blocked_recv(void *arg)
{
	char buf[8];
	int64_t *rc = arg;

	*rc = recv_all(*(pyipc_chan **)(rc + 1), buf, sizeof(buf), FOREVER);
	return NULL;
}

static void test_close_while_blocked(void)
{
	int fds[2];
	int64_t slot[2];
	pyipc_chan *r, *w;
	pthread_t t;

	CHECK(pyipc_pipe_make(fds) == 0);
	CHECK(pyipc_chan_open(fds[0], -1, PYIPC_CHAN_PIPE, &r) == 0);
	CHECK(pyipc_chan_open(-1, fds[1], PYIPC_CHAN_PIPE, &w) == 0);
	memcpy(&slot[1], &r, sizeof(r));
	pthread_create(&t, NULL, blocked_recv, slot);
	usleep(150000);
	CHECK(pyipc_chan_close(r) == 0);
	pthread_join(t, NULL);
	CHECK(slot[0] == -EBADF);
	pyipc_chan_free(r);
	pyipc_chan_free(w);
}

int main(void)
{
	test_pipe();
	test_torn();
	test_sockets();
	test_mq();
	test_close_while_blocked();
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}
