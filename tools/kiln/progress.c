/* SPDX-License-Identifier: MIT */
/* progress.c: a progress bar on stderr for long work, only on a terminal.
 *
 * The bar is drawn only when stderr is a terminal and the work is at least
 * PROGRESS_MIN_TOTAL bytes, at most every PROGRESS_INTERVAL_NS, and always
 * once more when the work is complete. The engine may call the callback
 * from several threads, so drawing takes a lock.
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "kiln-tool.h"

#define PROGRESS_MIN_TOTAL (64 * MIB)
#define PROGRESS_INTERVAL_NS 100000000LL
#define PROGRESS_BAR_WIDTH 30

struct progress {
	pthread_mutex_t lock;
	bool tty;
	bool drawn;                    /* a line is on screen, not yet ended */
	bool complete;                 /* 100% has been drawn */
	int64_t start_ns, last_ns;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct progress *progress_new(void)
{
	struct progress *p = xmalloc(sizeof(*p));

	pthread_mutex_init(&p->lock, NULL);
	p->tty = isatty(STDERR_FILENO);
	p->drawn = false;
	p->complete = false;
	p->start_ns = now_ns();
	p->last_ns = 0;
	return p;
}

/* "\r[#####     ] 42%  1.2 GiB / 2.0 GiB  350 MiB/s" */
static void progress_draw(struct progress *p, uint64_t done, uint64_t total,
			  int64_t now)
{
	char bar[PROGRESS_BAR_WIDTH + 1];
	char sdone[HUMAN_SIZE_MAX], stotal[HUMAN_SIZE_MAX], srate[HUMAN_SIZE_MAX];
	double frac = (double)done / (double)total;
	double secs = (double)(now - p->start_ns) / 1e9;
	size_t filled = (size_t)(frac * PROGRESS_BAR_WIDTH), i;

	for (i = 0; i < PROGRESS_BAR_WIDTH; i++)
		bar[i] = i < filled ? '#' : ' ';
	bar[PROGRESS_BAR_WIDTH] = '\0';
	human_size(done, sdone);
	human_size(total, stotal);
	if (secs >= 0.05)
		human_size((uint64_t)((double)done / secs), srate);
	else
		snprintf(srate, sizeof(srate), "-");
	/* \033[K clears what a longer previous line left behind */
	fprintf(stderr, "\r[%s] %3d%%  %s / %s  %s/s\033[K", bar, (int)(frac * 100),
		sdone, stotal, srate);
	fflush(stderr);
	p->drawn = true;
}

void progress_update(void *opaque, uint64_t done, uint64_t total)
{
	struct progress *p = opaque;
	int64_t now;

	if (!p || !p->tty || total < PROGRESS_MIN_TOTAL)
		return;
	if (done > total)
		done = total;
	pthread_mutex_lock(&p->lock);
	now = now_ns();
	if (done == total ? !p->complete : now - p->last_ns >= PROGRESS_INTERVAL_NS) {
		progress_draw(p, done, total, now);
		p->last_ns = now;
		p->complete = done == total;
	}
	pthread_mutex_unlock(&p->lock);
}

void progress_clear(struct progress *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->drawn) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
		p->drawn = false;
		p->last_ns = 0;
	}
	pthread_mutex_unlock(&p->lock);
}

void progress_end(struct progress *p)
{
	if (!p)
		return;
	if (p->drawn)
		fputc('\n', stderr);
	pthread_mutex_destroy(&p->lock);
	free(p);
}
