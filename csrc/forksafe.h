/* SPDX-License-Identifier: MIT */
/*
 * forksafe.h - putting handles right in a child made by fork().
 *
 * fork() copies one thread and every byte of the process: a handle that
 * another thread of the parent was using at that instant arrives in the
 * child with that thread's in-call count, a pthread mutex it held, or a
 * descriptor whose kernel object (a lock, a description) the child must not
 * share.  A handle that registers a fork_hook gets its in_child() called in
 * the child, inside fork(), before fork() returns there: the child is then
 * single-threaded, so in_child() may only make async-signal-safe calls and
 * must not add or remove hooks.  Not part of the cdef.
 */
#ifndef PYIPC_FORKSAFE_H
#define PYIPC_FORKSAFE_H

struct fork_hook {
	struct fork_hook *prev, *next;
	void (*in_child)(struct fork_hook *hook);
};

/* Register a hook; 0 or -errno (pthread_atfork could not register). */
int forksafe_add(struct fork_hook *hook);
/* Unregister a hook added before (a no-op for one never added). */
void forksafe_remove(struct fork_hook *hook);

#endif
