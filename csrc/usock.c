// SPDX-License-Identifier: MIT
/*
 * usock.c - UNIX domain sockets: pairs, listeners, connections.  Paths arrive
 * as raw sockaddr_un bytes (validated in Python), so the abstract namespace
 * (a leading NUL) needs no special case beyond "no file to chmod or remove".
 */
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal_chan.h"

static int sock_type(int kind)
{
	switch (kind) {
	case PYIPC_CHAN_STREAM:
		return SOCK_STREAM;
	case PYIPC_CHAN_SEQPACKET:
		return SOCK_SEQPACKET;
	case PYIPC_CHAN_DGRAM:
		return SOCK_DGRAM;
	}
	return -1;
}

static int make_addr(const char *path, size_t pathlen, struct sockaddr_un *sa, socklen_t *len)
{
	if (pathlen == 0 || pathlen >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, pathlen);
	/* Abstract names are exactly pathlen bytes; a file path ends in NUL. */
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + pathlen + (path[0] != '\0'));
	return 0;
}

int pyipc_usock_pair(int kind, int *fds)
{
	int type = sock_type(kind);

	if (type < 0)
		return -EINVAL;
	if (socketpair(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0)
		return -errno;
	return 0;
}

int pyipc_usock_listen(const char *path, size_t pathlen, int kind, uint32_t mode, int backlog,
		       int *fd, uint64_t *ino, uint64_t *dev)
{
	int type = sock_type(kind), s, rc;
	struct sockaddr_un sa;
	struct stat st;
	socklen_t len;

	if (type < 0 || type == SOCK_DGRAM)
		return -EINVAL;
	rc = make_addr(path, pathlen, &sa, &len);
	if (rc)
		return rc;
	s = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -errno;
	*ino = *dev = 0;
	if (path[0] != '\0') {
		/*
		 * bind() creates the file with the socket inode's mode less the
		 * umask: set that mode first, so the file is born no more open
		 * than `mode`, then chmod it to exactly `mode` (the umask may have
		 * taken bits away).  No window where it is more open.
		 */
		if (fchmod(s, mode & 0777) < 0)
			goto err;
	}
	if (bind(s, (struct sockaddr *)&sa, len) < 0)
		goto err;
	if (path[0] != '\0') {
		if (chmod(sa.sun_path, mode & 0777) < 0 || stat(sa.sun_path, &st) < 0) {
			rc = -errno;
			unlink(sa.sun_path);
			close(s);
			return rc;
		}
		*ino = st.st_ino;
		*dev = st.st_dev;
	}
	if (listen(s, backlog) < 0) {
		rc = -errno;
		if (path[0] != '\0')
			unlink(sa.sun_path);
		close(s);
		return rc;
	}
	*fd = s;
	return 0;
err:
	rc = -errno;
	close(s);
	return rc;
}

int pyipc_usock_accept(pyipc_chan *c, int64_t deadline, int *fd)
{
	int rc, s;

	rc = chan_enter(c);
	if (rc)
		return rc;
	for (;;) {
		s = accept4(c->rfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (s >= 0) {
			*fd = s;
			rc = 0;
			break;
		}
		/* A connection that died in the queue is not our error. */
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno != EAGAIN) {
			rc = -errno;
			break;
		}
		rc = chan_poll(c->rfd, POLLIN, deadline);
		if (rc)
			break;
	}
	chan_leave(c);
	return rc;
}

int pyipc_usock_connect(const char *path, size_t pathlen, int kind, int64_t deadline, int *fd)
{
	struct timespec pause = { 0, 2000000 }; /* 2 ms between tries */
	int type = sock_type(kind), s, rc;
	int64_t start = chan_now();
	struct sockaddr_un sa;
	socklen_t len;

	if (type < 0 || type == SOCK_DGRAM)
		return -EINVAL;
	rc = make_addr(path, pathlen, &sa, &len);
	if (rc)
		return rc;
	s = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -errno;
	/*
	 * A non-blocking UNIX connect either completes at once or fails with
	 * EAGAIN when the listener's backlog is full; there is nothing to poll
	 * for, so retry in short pauses until the deadline or the slice ends.
	 */
	for (;;) {
		if (connect(s, (struct sockaddr *)&sa, len) == 0) {
			*fd = s;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			break;
		if (deadline == CHAN_NOWAIT) {
			errno = EAGAIN;
			break;
		}
		if (deadline != CHAN_FOREVER && chan_now() >= deadline) {
			errno = ETIMEDOUT;
			break;
		}
		if (chan_now() - start >= CHAN_SLICE_NS) {
			errno = EINTR;
			break;
		}
		nanosleep(&pause, NULL);
	}
	rc = -errno;
	close(s);
	return rc;
}

int pyipc_usock_unlink(const char *path, uint64_t ino, uint64_t dev)
{
	struct stat st;

	/* Someone may have removed our file and bound another there: only
	 * remove the socket that is still ours. */
	if (lstat(path, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_ino != ino || (uint64_t)st.st_dev != dev || !S_ISSOCK(st.st_mode))
		return -ESTALE;
	if (unlink(path) < 0)
		return -errno;
	return 0;
}
