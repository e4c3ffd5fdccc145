/*
 * The kernel's own ceiling for 64-byte UNIX packet sockets, with no Python:
 * a sender pinned to CPU 1 and a receiver pinned to CPU 0 move 2 M
 * messages, one send()/recv() per message or sendmmsg()/recvmmsg() of 64.
 * The README's channel section quotes it beside the Python baselines.
 *
 *   cc -O2 -o /tmp/packet_ceiling benches/c/packet_ceiling.c
 *   /tmp/packet_ceiling seqpacket 0     # 0: one call per message, 1: batches
 *   /tmp/packet_ceiling dgram 1
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define SIZE 64
#define COUNT 2000000L

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set); /* best effort: one CPU is fine */
}

int main(int argc, char **argv)
{
	static char buf[BATCH][SIZE];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	int sv[2], type, batch, i;
	long moved = 0;
	double t0;
	pid_t child;

	if (argc != 3 || (strcmp(argv[1], "seqpacket") && strcmp(argv[1], "dgram"))) {
		fprintf(stderr, "usage: %s seqpacket|dgram 0|1\n", argv[0]);
		return 2;
	}
	type = strcmp(argv[1], "dgram") ? SOCK_SEQPACKET : SOCK_DGRAM;
	batch = atoi(argv[2]);
	if (socketpair(AF_UNIX, type, 0, sv) < 0) {
		perror("socketpair");
		return 1;
	}
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		iov[i].iov_base = buf[i];
		iov[i].iov_len = SIZE;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		long sent = 0;

		pin(1);
		while (sent < COUNT) {
			int r = batch ? sendmmsg(sv[0], msgs, BATCH, 0)
				      : (int)(send(sv[0], buf[0], SIZE, 0) == SIZE);
			if (r > 0)
				sent += r;
		}
		_exit(0);
	}
	pin(0);
	t0 = now();
	while (moved < COUNT) {
		int r = batch ? recvmmsg(sv[1], msgs, BATCH, 0, NULL)
			      : (int)(recv(sv[1], buf[0], SIZE, 0) > 0);
		if (r > 0)
			moved += r;
	}
	printf("%s, %s: %.0f k messages/s\n", argv[1],
	       batch ? "sendmmsg/recvmmsg of 64" : "one send/recv per message",
	       (double)moved / (now() - t0) / 1e3);
	waitpid(child, NULL, 0);
	return 0;
}
