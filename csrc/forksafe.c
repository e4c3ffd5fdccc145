// SPDX-License-Identifier: MIT
/*
 * forksafe.c - the list of handles to put right in a forked child.
 *
 * The only mutable global state of the core, and necessarily so: fork()
 * acts on the whole process, so the handles it affects must be findable
 * from one place.  The list's mutex is taken in the atfork "prepare"
 * handler, so no other thread can be half-way through changing the list
 * when the child's copy of it is made.
 */
#include <errno.h>
#include <pthread.h>

#include "forksafe.h"

static struct fork_hook hooks = { .prev = &hooks, .next = &hooks };
static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int atfork_rc; /* what pthread_atfork said, set once */

static void before_fork(void)
{
	pthread_mutex_lock(&hooks_lock);
}

static void after_fork_parent(void)
{
	pthread_mutex_unlock(&hooks_lock);
}

static void after_fork_child(void)
{
	struct fork_hook *h;

	for (h = hooks.next; h != &hooks; h = h->next)
		h->in_child(h);
	/* The forking thread locked it in before_fork(); it is that thread. */
	pthread_mutex_unlock(&hooks_lock);
}

static void register_handlers(void)
{
	atfork_rc = pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

int forksafe_add(struct fork_hook *hook)
{
	int rc = pthread_once(&once, register_handlers);

	if (rc)
		return -rc;
	if (atfork_rc)
		return -atfork_rc;
	pthread_mutex_lock(&hooks_lock);
	hook->next = &hooks;
	hook->prev = hooks.prev;
	hooks.prev->next = hook;
	hooks.prev = hook;
	pthread_mutex_unlock(&hooks_lock);
	return 0;
}

void forksafe_remove(struct fork_hook *hook)
{
	/* Under the lock even the check: adding a hook after this one writes
	 * this one's next pointer, in whatever thread adds it. */
	pthread_mutex_lock(&hooks_lock);
	if (!hook->next) {
		pthread_mutex_unlock(&hooks_lock);
		return;
	}
	hook->prev->next = hook->next;
	hook->next->prev = hook->prev;
	hook->next = hook->prev = NULL;
	pthread_mutex_unlock(&hooks_lock);
}
