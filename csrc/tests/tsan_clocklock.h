/* SPDX-License-Identifier: MIT */
/*
 * tsan_clocklock.h - forced into ring.c (gcc -include) for the
 * ThreadSanitizer build only.
 *
 * Why: GCC 12's libtsan intercepts pthread_mutex_timedlock but not
 * pthread_mutex_clocklock, so a lock taken through clocklock is invisible to
 * it and every access under that lock is reported as a race.  Here clocklock
 * becomes timedlock with the same deadline moved to CLOCK_REALTIME: the same
 * lock, a clock TSan understands.
 */
#ifndef PYIPC_TSAN_CLOCKLOCK_H
#define PYIPC_TSAN_CLOCKLOCK_H

#include <pthread.h>
#include <time.h>

static inline int pyipc_tsan_clocklock(pthread_mutex_t *m, clockid_t clock,
				       const struct timespec *abstime)
{
	struct timespec now_c, now_r, rt;
	long long ns;

	clock_gettime(clock, &now_c);
	clock_gettime(CLOCK_REALTIME, &now_r);
	ns = (abstime->tv_sec - now_c.tv_sec) * 1000000000ll + (abstime->tv_nsec - now_c.tv_nsec);
	if (ns < 0)
		ns = 0;
	ns += now_r.tv_sec * 1000000000ll + now_r.tv_nsec;
	rt.tv_sec = ns / 1000000000ll;
	rt.tv_nsec = ns % 1000000000ll;
	return pthread_mutex_timedlock(m, &rt);
}

#define pthread_mutex_clocklock pyipc_tsan_clocklock

#endif
