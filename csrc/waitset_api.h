/* SPDX-License-Identifier: MIT */
/*
 * waitset_api.h - futex words watched for an event loop by helper threads.
 *
 * An event loop cannot sleep in futex(2): it sleeps in epoll.  A waitset
 * bridges the two.  The loop registers (word, val) pairs, each with a token
 * of its choosing; helper threads sleep on every registered word at once
 * (futex_waitv(2), up to 127 words per thread), and when a word no longer
 * holds its val they queue its token and make the waitset's eventfd
 * readable.  The loop watches that descriptor (add_reader) and collects the
 * tokens with pyipc_waitset_ready().  Nothing of this lives in shared
 * memory: the words are the ones the synchronous sleepers already use, and
 * their wakers cannot tell an async sleeper from a synchronous one.
 *
 * Memory safety: a helper reads a registered word only while holding the
 * waitset's lock, and pyipc_waitset_remove() takes that lock.  Once remove
 * returns, no helper will read that word again, so the mapping it lives in
 * may be unmapped.  Every word must be removed before its memory goes.
 *
 * Where futex_waitv is missing (Linux < 5.16: -ENOSYS, or refused by a
 * seccomp filter) the waitset falls back to one helper thread per word, each
 * in FUTEX_WAIT; see waitset.c for what that costs.
 *
 * Every function returns 0 (or a count) on success and -errno on failure.
 * Not thread-affine: any thread may call any function, but a waitset must be
 * freed only once nothing else uses it.
 */
#ifndef PYIPC_WAITSET_API_H
#define PYIPC_WAITSET_API_H

#include <stddef.h>
#include <stdint.h>

typedef struct pyipc_waitset pyipc_waitset;

/* pyipc_waitset_new() flags. */
#define PYIPC_WAITSET_THREADS 1 /* use the one-thread-per-word fallback */

/* Waitset modes, as reported by pyipc_waitset_mode(). */
#define PYIPC_WAITSET_MODE_THREADS 0 /* FUTEX_WAIT, one helper per word */
#define PYIPC_WAITSET_MODE_WAITV 1   /* futex_waitv, 127 words per helper */

/* Make an empty waitset and its eventfd (no thread yet: helpers start with
 * the first word and stop after a few idle seconds). */
int pyipc_waitset_new(int flags, pyipc_waitset **out);
/* Stop the helpers and release everything; the descriptor closes once the
 * last helper has left.  In a forked child (no helpers there) it only
 * releases memory and the child's descriptor. */
void pyipc_waitset_free(pyipc_waitset *ws);
/* The eventfd the loop watches for readability. */
int pyipc_waitset_fd(const pyipc_waitset *ws);
/* PYIPC_WAITSET_MODE_WAITV or PYIPC_WAITSET_MODE_THREADS. */
int pyipc_waitset_mode(const pyipc_waitset *ws);
/* Watch a shared futex word until *word != val; *slot gets the handle that
 * pyipc_waitset_remove() takes.  -EAGAIN if no helper thread could start. */
int pyipc_waitset_add(pyipc_waitset *ws, uint32_t *word, uint32_t val, uint64_t token,
		      uint32_t *slot);
/* Stop watching; after it returns no helper reads the word again.  1 if the
 * word had fired (its token is or was queued), 0 if it was still watched,
 * -ENOENT if slot does not hold token. */
int pyipc_waitset_remove(pyipc_waitset *ws, uint32_t slot, uint64_t token);
/* Clear the eventfd and move up to max queued tokens into tokens; returns
 * how many.  Call again while it returns max. */
int64_t pyipc_waitset_ready(pyipc_waitset *ws, uint64_t *tokens, uint64_t max);
/* Words watched now (for tests and diagnostics). */
int64_t pyipc_waitset_count(pyipc_waitset *ws);
/* Helper threads running now (for tests and diagnostics). */
int64_t pyipc_waitset_threads(pyipc_waitset *ws);

#endif
