// SPDX-License-Identifier: MIT
/*
 * fdpass.c - descriptor passing over UNIX sockets: the SCM_RIGHTS control
 * messages of sendmsg and recvmsg.  Stream and packet sockets both use it.
 */
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal_chan.h"

union fd_cmsg {
	char buf[CMSG_SPACE(sizeof(int) * CHAN_MAXFDS)];
	struct cmsghdr align;
};

void fds_close(const int *fds, unsigned n)
{
	int saved = errno;
	unsigned i;

	for (i = 0; i < n; i++)
		close(fds[i]);
	errno = saved;
}

ssize_t fd_sendmsg(int fd, const struct iovec *iov, int n, const int *fds, size_t nfds)
{
	struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = n };
	union fd_cmsg u;
	struct cmsghdr *cm;

	if (nfds) {
		memset(&u, 0, sizeof(u));
		msg.msg_control = u.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	/* MSG_NOSIGNAL: EPIPE instead of SIGPIPE, with no mask juggling. */
	return sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

ssize_t fd_recvmsg(int fd, struct iovec *iov, int n, int *got, unsigned *ngot, int flags)
{
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = n };
	union fd_cmsg u;
	struct cmsghdr *cm;
	ssize_t r;

	*ngot = 0;
	msg.msg_control = u.buf;
	msg.msg_controllen = sizeof(u.buf);
	r = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | flags);
	if (r < 0)
		return r;
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		unsigned k, i;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		k = (unsigned)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (i = 0; i < k; i++) {
			int d;

			/* The data may be unaligned for an int: copy, never cast. */
			memcpy(&d, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (*ngot < CHAN_MAXFDS)
				got[(*ngot)++] = d;
			else
				fds_close(&d, 1); /* more than we keep: never leak */
		}
	}
	return r;
}
