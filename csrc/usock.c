// SPDX-License-Identifier: MIT
/*
 * usock.c - channels over UNIX domain sockets: pairs, listeners,
 * connections, peer credentials.  SOCK_STREAM sockets carry stream.c's
 * frames, the others one message per packet (packet.c).  Paths arrive as
 * raw sockaddr_un bytes (validated in Python), so the abstract namespace (a
 * leading NUL) needs no special case beyond "no file to chmod or remove".
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal_chan.h"

#define CONNECT_RETRY_NS 2000000ll /* a full backlog is tried again this often */

_Static_assert(PYIPC_UNIX_PATH_MAX == sizeof(((struct sockaddr_un *)0)->sun_path) - 1,
	       "channel_api.h's PYIPC_UNIX_PATH_MAX");

static int sock_type(int kind)
{
	switch (kind) {
	case PYIPC_SOCK_STREAM:
		return SOCK_STREAM;
	case PYIPC_SOCK_SEQPACKET:
		return SOCK_SEQPACKET;
	case PYIPC_SOCK_DGRAM:
		return SOCK_DGRAM;
	}
	return -1;
}

/* A channel of `kind` that owns fd (closed here if that fails). */
static int sock_chan(int fd, int kind, pyipc_chan **out)
{
	int rc;

	if (kind == PYIPC_SOCK_STREAM)
		rc = stream_chan_new(fd, fd, 1, out);
	else
		rc = packet_chan_new(fd, kind == PYIPC_SOCK_SEQPACKET, out);
	if (rc)
		close(fd);
	return rc;
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

int pyipc_usock_pair(int kind, pyipc_chan **a, pyipc_chan **b)
{
	int type = sock_type(kind), fds[2], rc;

	if (type < 0)
		return -EINVAL;
	if (socketpair(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0)
		return -errno;
	rc = sock_chan(fds[0], kind, a);
	if (rc) {
		close(fds[1]);
		return rc;
	}
	rc = sock_chan(fds[1], kind, b);
	if (rc)
		pyipc_chan_free(*a);
	return rc;
}

/* A listener accepts, nothing else: no entry for I/O. */
static const struct chan_ops listener_ops = { 0 };

int pyipc_usock_listen(const char *path, size_t pathlen, int kind, uint32_t mode, int backlog,
		       pyipc_chan **out, uint64_t *ino, uint64_t *dev)
{
	int type = sock_type(kind), named = pathlen && path[0] != '\0', s, rc;
	struct pyipc_chan *c;
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
	/*
	 * bind() creates the file with the socket inode's mode less the umask:
	 * set that mode first, so the file is born no more open than `mode`,
	 * then chmod it to exactly `mode` (the umask may have taken bits
	 * away).  No window where it is more open.
	 */
	if (named && fchmod(s, mode & 0777) < 0)
		goto err_errno;
	if (bind(s, (struct sockaddr *)&sa, len) < 0)
		goto err_errno;
	if (named && (chmod(sa.sun_path, mode & 07777) < 0 || stat(sa.sun_path, &st) < 0))
		goto err_unlink;
	if (listen(s, backlog) < 0)
		goto err_unlink;
	c = calloc(1, sizeof(*c));
	if (!c) {
		rc = -ENOMEM;
		goto err_unlink_rc;
	}
	rc = chan_init(c, &listener_ops, s, -1);
	if (rc) {
		free(c);
		goto err_unlink_rc;
	}
	if (named) {
		*ino = st.st_ino;
		*dev = st.st_dev;
	}
	*out = c;
	return 0;
err_unlink:
	rc = -errno;
err_unlink_rc:
	if (named)
		unlink(sa.sun_path);
	close(s);
	return rc;
err_errno:
	rc = -errno;
	close(s);
	return rc;
}

int pyipc_usock_accept(pyipc_chan *listener, int64_t deadline, pyipc_chan **out)
{
	int kind = PYIPC_SOCK_STREAM, rc, s;
	int type;
	socklen_t tlen = sizeof(type);

	if (listener->ops != &listener_ops)
		return -EINVAL;
	rc = chan_enter(listener);
	if (rc)
		return rc;
	for (;;) {
		s = accept4(listener->rfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (s >= 0)
			break;
		/* A connection that died in the queue is not our error. */
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno != EAGAIN) {
			rc = -errno;
			goto out;
		}
		rc = chan_wait_fd(listener->rfd, POLLIN, deadline);
		if (rc)
			goto out;
	}
	if (getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_SEQPACKET)
		kind = PYIPC_SOCK_SEQPACKET;
	rc = sock_chan(s, kind, out);
out:
	chan_leave(listener);
	return rc;
}

int pyipc_usock_connect(const char *path, size_t pathlen, int kind, int64_t deadline,
			pyipc_chan **out)
{
	struct timespec pause = ns_to_timespec(CONNECT_RETRY_NS);
	int type = sock_type(kind), s, rc;
	struct sockaddr_un sa;
	int64_t until = 0;
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
		if (connect(s, (struct sockaddr *)&sa, len) == 0)
			return sock_chan(s, kind, out);
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			rc = -errno;
			break;
		}
		if (!until) {
			rc = slice_begin(deadline, &until);
			if (rc)
				break;
		}
		if (now_ns() >= until) {
			rc = slice_end(deadline, until);
			break;
		}
		nanosleep(&pause, NULL);
	}
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

int pyipc_usock_peercred(pyipc_chan *c, int32_t *pid, uint32_t *uid, uint32_t *gid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int rc;

	if (!c->ops->passes_fds)
		return -EOPNOTSUPP; /* not a connected UNIX socket */
	rc = chan_enter(c);
	if (rc)
		return rc;
	if (getsockopt(c->rfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		rc = -errno;
	} else {
		*pid = cred.pid;
		*uid = cred.uid;
		*gid = cred.gid;
	}
	chan_leave(c);
	return rc;
}
