// SPDX-License-Identifier: MIT
/*
 * pipe.c - channels over anonymous pipes and named FIFOs: making and
 * opening them.  Their messages are stream.c's frames.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal_chan.h"

#define FIFO_RETRY_NS 5000000ll /* a FIFO writer looks for a reader this often */

int pyipc_pipe_open(int duplex, pyipc_chan **a, pyipc_chan **b)
{
	int p[2], q[2] = { -1, -1 };
	int rc;

	/* Non-blocking: every wait is then a bounded poll (chan.c). */
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	if (duplex && pipe2(q, O_CLOEXEC | O_NONBLOCK) < 0) {
		rc = -errno;
		goto err_p;
	}
	/* Simplex: a reads p, b writes p.  Duplex: a reads p and writes q,
	 * b reads q and writes p. */
	rc = stream_chan_new(p[0], duplex ? q[1] : -1, 0, a);
	if (rc)
		goto err_q;
	rc = stream_chan_new(duplex ? q[0] : -1, p[1], 0, b);
	if (rc)
		goto err_a;
	return 0;
err_a:
	pyipc_chan_free(*a); /* closes p[0] and q[1] */
	close(p[1]);
	if (duplex)
		close(q[0]);
	return rc;
err_q:
	if (duplex) {
		close(q[0]);
		close(q[1]);
	}
err_p:
	close(p[0]);
	close(p[1]);
	return rc;
}

int pyipc_fifo_make(const char *path, uint32_t mode)
{
	/* mkfifo applies the umask, which can only remove bits, so the file is
	 * never more open than mode; chmod then sets exactly mode. */
	if (mkfifo(path, mode & 07777) < 0)
		return -errno;
	if (chmod(path, mode & 07777) < 0) {
		int rc = -errno;

		unlink(path);
		return rc;
	}
	return 0;
}

int pyipc_fifo_open(const char *path, int for_write, int64_t deadline, pyipc_chan **out)
{
	struct timespec pause = ns_to_timespec(FIFO_RETRY_NS);
	struct stat st;
	int64_t until;
	int fd, rc;

	/*
	 * Both ends open non-blocking, so no open ever sleeps inside the kernel
	 * where Ctrl-C and timeouts cannot reach it.  A reader opens at once
	 * (stream.c tells "no writer yet" from end of file by POLLHUP); a writer
	 * gets ENXIO while there is no reader, and looks for one again here.
	 */
	rc = 0;
	until = 0;
	for (;;) {
		fd = open(path, (for_write ? O_WRONLY : O_RDONLY) | O_NONBLOCK | O_CLOEXEC);
		if (fd >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != ENXIO || !for_write)
			return -errno;
		if (!until) {
			rc = slice_begin(deadline, &until);
			if (rc)
				return rc;
		}
		if (now_ns() >= until)
			return slice_end(deadline, until);
		nanosleep(&pause, NULL);
	}
	if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) {
		close(fd);
		return -EINVAL; /* not a FIFO: refuse rather than frame a file */
	}
	rc = stream_chan_new(for_write ? -1 : fd, for_write ? fd : -1, 0, out);
	if (rc)
		close(fd);
	return rc;
}
