/* SPDX-License-Identifier: MIT */
/*
 * owner.h - who holds a lock or a lease in a shared segment, and whether
 * they still live, from evidence the kernel keeps.  Not part of the cdef.
 *
 * Every handle attached to a segment gets an owner id, a number unique
 * among the segment's live handles, and holds an open-file-description lock
 * (F_OFD_SETLK) on byte OWNER_LOCK_BASE + id of the segment's file, through
 * the descriptor it keeps open for as long as it is attached.  Lock words
 * and leases in the segment name their holder by that id.  Another process
 * asks the kernel (F_OFD_GETLK) whether that byte is still locked:
 *
 *  - the kernel drops the lock only when the last descriptor of that open
 *    file description is closed, which for a dead process happens once all
 *    its threads are gone, so "unlocked" means no thread of the owner can
 *    still be running, and it is never a guess;
 *  - the lock belongs to the file, not to a pid: it means the same thing in
 *    every PID namespace (containers of one pod sharing /dev/shm) and cannot
 *    be confused by a reused pid or thread id;
 *  - a live owner keeps it however long it holds the segment's lock: stopped
 *    by SIGSTOP, throttled by its cgroup, or copying a GiB.
 *
 * Ids are handed out from a counter in the segment.  The counter is
 * untrusted like the rest of the segment, so a claim also takes the byte
 * lock, which fails while another live handle holds the same id: two live
 * handles never share an id, whatever the counter says.
 *
 * A descriptor shared with a forked child would make the parent's death
 * invisible while the child lives, so a forked child must get a description
 * of its own (see segment.c).  A handle that cannot get evidence (a
 * filesystem without locks) uses OWNER_UNKNOWN: locks held under it are
 * never taken over, waiters only time out.
 */
#ifndef PYIPC_OWNER_H
#define PYIPC_OWNER_H

#include <stdatomic.h>
#include <stdint.h>

#define OWNER_ID_MASK 0x7fffffffu /* an id fits a lock word beside one flag bit */
#define OWNER_UNKNOWN OWNER_ID_MASK /* a holder whose liveness nobody can check */
#define OWNER_LOCK_BASE (1ll << 62) /* byte locks far past any real data */

enum liveness { OWNER_ALIVE, OWNER_DEAD, OWNER_NO_EVIDENCE };

/* Claim an owner id for the handle whose descriptor is fd: 0 with *id set
 * (OWNER_UNKNOWN if the filesystem keeps no locks), or -errno. */
int owner_claim(int fd, _Atomic uint32_t *counter, uint32_t *id);

/* Give up owner id `id`, claimed through fd. */
void owner_release(int fd, uint32_t id);

/* Is the holder of owner id `id` alive?  `fd` is the asking handle's own
 * descriptor and `self` its own id (a holder with our own id is another
 * thread of this handle: alive). */
enum liveness owner_liveness(int fd, uint32_t self, uint32_t id);

#endif
