// SPDX-License-Identifier: MIT
/*
 * pipe.c - anonymous pipes and named FIFOs.  Their I/O is the stream framing
 * of chan.c; here is only how the descriptors come to be.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal_chan.h"

int pyipc_pipe_make(int *fds)
{
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	return 0;
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

int pyipc_fifo_open(const char *path, int for_write, int64_t deadline, int *fd)
{
	struct timespec ts = { 0, 5000000 }; /* 5 ms between tries */
	struct stat st;
	int64_t start = chan_now();
	int f;

	/*
	 * Both ends open non-blocking, so no open ever sleeps inside the kernel
	 * where Ctrl-C and timeouts cannot reach it.  A reader opens at once
	 * (chan.c tells "no writer yet" from end of file by POLLHUP); a writer
	 * gets ENXIO while there is no reader, and polls for one here.
	 */
	for (;;) {
		f = open(path, (for_write ? O_WRONLY : O_RDONLY) | O_NONBLOCK | O_CLOEXEC);
		if (f >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != ENXIO || !for_write)
			return -errno;
		if (deadline == CHAN_NOWAIT)
			return -EAGAIN;
		if (deadline != CHAN_FOREVER && chan_now() >= deadline)
			return -ETIMEDOUT;
		if (chan_now() - start >= CHAN_SLICE_NS)
			return -EINTR;
		nanosleep(&ts, NULL);
	}
	if (fstat(f, &st) < 0 || !S_ISFIFO(st.st_mode)) {
		close(f);
		return -EINVAL; /* not a FIFO: refuse rather than frame a file */
	}
	*fd = f;
	return 0;
}
