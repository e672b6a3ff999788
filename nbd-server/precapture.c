/* SPDX-License-Identifier: MIT */
/* precapture.c: a background thread that does the next snapshot's work
 * early. Every interval it asks each open writable export's volume to
 * capture its dirty chunks (kiln_volume_precapture: each once, and one
 * written again only when it has gone quiet), so that `kiln snapshot
 * create` only has to read the chunks written in the last moments, and
 * the volume's I/O is frozen for less time. It runs at a lower priority
 * than the threads that serve requests. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

#define CHUNKS_PER_PASS 1024    /* per volume; more waits for the next pass */

static pthread_t thread;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static bool running;
static unsigned interval_ms;

/* One pass; true if some volume had more to do than one pass allows. */
static bool pass(void)
{
	struct export **exps = NULL;
	size_t n = 0;
	bool more = false;

	if (exports_writable(&exps, &n) < 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		size_t done = 0;
		int r = kiln_volume_precapture(exps[i]->vol, CHUNKS_PER_PASS, &done);

		if (r < 0)
			debug("precapture: %s: %s", exps[i]->name, strerror(-r));
		more |= done == CHUNKS_PER_PASS;
		export_put(exps[i]);
	}
	free(exps);
	return more;
}

static void *precapture_main(void *unused)
{
	bool more = false;

	(void)unused;
	if (setpriority(PRIO_PROCESS, (id_t)gettid(), 10) < 0)
		debug("precapture: setpriority: %m");
	pthread_mutex_lock(&lock);
	while (running) {
		if (!more) {
			struct timespec until;

			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_nsec += (long)(interval_ms % 1000) * 1000000;
			until.tv_sec += interval_ms / 1000 + until.tv_nsec / 1000000000;
			until.tv_nsec %= 1000000000;
			pthread_cond_timedwait(&wake, &lock, &until);
			if (!running)
				break;
		}
		pthread_mutex_unlock(&lock);
		more = pass();
		pthread_mutex_lock(&lock);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

int precapture_start(unsigned ms)
{
	if (ms == 0)
		return 0;       /* off */
	interval_ms = ms;
	running = true;
	if (pthread_create(&thread, NULL, precapture_main, NULL) != 0) {
		running = false;
		return -EAGAIN;
	}
	return 0;
}

void precapture_stop(void)
{
	pthread_mutex_lock(&lock);
	if (!running) {
		pthread_mutex_unlock(&lock);
		return;
	}
	running = false;
	pthread_cond_signal(&wake);
	pthread_mutex_unlock(&lock);
	pthread_join(thread, NULL);
}
