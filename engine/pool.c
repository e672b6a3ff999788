/* SPDX-License-Identifier: MIT */
/* pool.c: a process-wide pool of worker threads, one per core less the
 * caller, for hashing and (de)compression. Work is a parallel for-loop:
 * an atomic counter hands out indices, the caller takes part, and
 * pool_run() returns when every index is done. pool_start() and
 * pool_join() split it, so the caller can do serial work of its own
 * while the workers begin. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

struct pool {
	pthread_mutex_t lock;       /* guards job and generation */
	pthread_cond_t wake;
	pthread_cond_t idle;
	pthread_mutex_t run_lock;   /* one pool_run() at a time */
	unsigned nworkers;
	unsigned busy;              /* workers still on the current job */
	uint64_t generation;
	void (*fn)(void *arg, size_t i);
	void *arg;
	size_t n;
	atomic_size_t next;
};

static struct pool pool = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.wake = PTHREAD_COND_INITIALIZER,
	.idle = PTHREAD_COND_INITIALIZER,
	.run_lock = PTHREAD_MUTEX_INITIALIZER,
};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void work(void)
{
	size_t i;

	while ((i = atomic_fetch_add(&pool.next, 1)) < pool.n)
		pool.fn(pool.arg, i);
}

static void *worker(void *unused)
{
	uint64_t seen = 0;

	(void)unused;
	for (;;) {
		pthread_mutex_lock(&pool.lock);
		while (pool.generation == seen)
			pthread_cond_wait(&pool.wake, &pool.lock);
		seen = pool.generation;
		pthread_mutex_unlock(&pool.lock);

		work();

		pthread_mutex_lock(&pool.lock);
		if (--pool.busy == 0)
			pthread_cond_signal(&pool.idle);
		pthread_mutex_unlock(&pool.lock);
	}
	return NULL;
}

static void pool_start_workers(void)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	const char *env = getenv("KILN_THREADS");

	if (env && atoi(env) > 0)
		cores = atoi(env);
	if (cores < 1)
		cores = 1;
	if (cores > 64)
		cores = 64;
	for (long i = 0; i < cores - 1; i++) {
		pthread_t t;
		pthread_attr_t attr;

		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &attr, worker, NULL) == 0)
			pool.nworkers++;
		pthread_attr_destroy(&attr);
	}
	debug("pool: %u worker threads plus the caller", pool.nworkers);
}

unsigned pool_threads(void)
{
	pthread_once(&pool_once, pool_start_workers);
	return pool.nworkers + 1;
}

/* The thread between pool_start() and pool_join(), which runs any
 * pool_run() of its own inline rather than wait for itself. */
static __thread bool holding_job;

void pool_start(void (*fn)(void *arg, size_t i), void *arg, size_t n)
{
	pthread_once(&pool_once, pool_start_workers);
	pthread_mutex_lock(&pool.run_lock);
	holding_job = true;
	pthread_mutex_lock(&pool.lock);
	pool.fn = fn;
	pool.arg = arg;
	pool.n = n;
	atomic_store(&pool.next, 0);
	if (n > 1 && pool.nworkers > 0) {
		pool.busy = pool.nworkers;
		pool.generation++;
		pthread_cond_broadcast(&pool.wake);
	}
	pthread_mutex_unlock(&pool.lock);
}

void pool_join(void)
{
	work();         /* the caller takes what is left */
	pthread_mutex_lock(&pool.lock);
	while (pool.busy > 0)
		pthread_cond_wait(&pool.idle, &pool.lock);
	pthread_mutex_unlock(&pool.lock);
	holding_job = false;
	pthread_mutex_unlock(&pool.run_lock);
}

void pool_run(void (*fn)(void *arg, size_t i), void *arg, size_t n)
{
	pthread_once(&pool_once, pool_start_workers);
	if (n <= 1 || pool.nworkers == 0 || holding_job) {
		for (size_t i = 0; i < n; i++)
			fn(arg, i);
		return;
	}
	pool_start(fn, arg, n);
	pool_join();
}
