// SPDX-License-Identifier: MIT
/*
 * owner.c - owner ids and the kernel's evidence of their liveness; see
 * owner.h for why open-file-description locks.
 *
 * Rejected alternatives, for the record:
 *  - /proc/<tid>/stat by number (what layout 1 did): a thread id names
 *    nobody, or somebody else, in another PID namespace, and a start time
 *    can only be stored after the lock is taken, so an owner preempted in
 *    between looked dead;
 *  - robust futex lists: the kernel walks them at thread exit, but the list
 *    links must sit at a fixed offset from the lock word, in the shared
 *    segment, and unlock writes through them: a process that scribbles on
 *    the segment could make a lock holder write anywhere.  The list head is
 *    also glibc's, per thread;
 *  - pidfds: they need the owner's pid, which means nothing across PID
 *    namespaces.
 */
#include <errno.h>
#include <fcntl.h>

#include "owner.h"

static int byte_lock(int fd, uint32_t id, short type)
{
	struct flock fl = {
		.l_type = type,
		.l_whence = SEEK_SET,
		.l_start = OWNER_LOCK_BASE + id,
		.l_len = 1,
	};

	return fcntl(fd, F_OFD_SETLK, &fl) ? -errno : 0;
}

int owner_claim(int fd, _Atomic uint32_t *counter, uint32_t *id)
{
	int tries, rc = 0;

	/* Ids held by live handles are skipped: each try is one system call,
	 * and only a counter that wrapped or was scribbled makes any fail. */
	for (tries = 0; tries < 1000; tries++) {
		uint32_t v = atomic_fetch_add(counter, 1) & OWNER_ID_MASK;

		if (v == 0 || v == OWNER_UNKNOWN)
			continue;
		rc = byte_lock(fd, v, F_WRLCK);
		if (rc == 0) {
			*id = v;
			return 0;
		}
		if (rc != -EAGAIN && rc != -EACCES)
			break; /* no locks here: ENOLCK, EINVAL, ... */
	}
	if (rc == -ENOMEM || rc == -EBADF)
		return rc;
	*id = OWNER_UNKNOWN;
	return 0;
}

void owner_release(int fd, uint32_t id)
{
	if (id != 0 && id < OWNER_UNKNOWN && fd >= 0)
		byte_lock(fd, id, F_UNLCK);
}

enum liveness owner_liveness(int fd, uint32_t self, uint32_t id)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = OWNER_LOCK_BASE + id,
		.l_len = 1,
	};

	if (id == self)
		return OWNER_ALIVE;
	if (id == 0 || id >= OWNER_UNKNOWN || fd < 0)
		return OWNER_NO_EVIDENCE;
	/* Our own description's locks never conflict with our query, and our
	 * byte is another one: F_UNLCK means nobody holds `id`'s byte. */
	if (fcntl(fd, F_OFD_GETLK, &fl))
		return OWNER_NO_EVIDENCE;
	return fl.l_type == F_UNLCK ? OWNER_DEAD : OWNER_ALIVE;
}
