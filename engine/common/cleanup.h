/* SPDX-License-Identifier: MIT */
/* cleanup.h: scope-bound cleanup for locals (free, close, unlock). */
#ifndef KILN_CLEANUP_H
#define KILN_CLEANUP_H

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static inline void cleanup_free(void *ptr)
{
	free(*(void **)ptr);
}
#define CLEANUP_FREE __attribute__((cleanup(cleanup_free)))

static inline void cleanup_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
#define CLEANUP_CLOSE __attribute__((cleanup(cleanup_close)))

static inline void cleanup_unlock(pthread_mutex_t **m)
{
	pthread_mutex_unlock(*m);
}
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(m) \
	pthread_mutex_t *_lock_##__LINE__ __attribute__((cleanup(cleanup_unlock), unused)) = (m); \
	pthread_mutex_lock(_lock_##__LINE__)

/* Hand ownership of a cleanup-managed pointer to the caller. */
#define TAKE_PTR(p) ({ __typeof__(p) _p = (p); (p) = NULL; _p; })
#define TAKE_FD(fd) ({ int _fd = (fd); (fd) = -1; _fd; })

#endif
