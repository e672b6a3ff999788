/* SPDX-License-Identifier: MIT */
/* packstream.c: a thread's in-order reads of a pack, in large O_DIRECT windows.
 *
 * Notes on the design: a sequential read of a volume made from a snapshot
 * reads that snapshot's records one after another, in pack order. Read
 * through the page cache, each record costs a copy out of freshly filled
 * page cache, and fresh pages are dear: on the 2-core bench machine (a VM
 * whose host takes freed memory back) a cold buffered read of 1 GiB costs
 * 0.4 to 1.2 CPU-s in that copy, against 0.08 s with O_DIRECT, and the
 * cost varies from run to run with the host. So a thread whose reads of
 * one pack go forward reads the pack itself, with O_DIRECT, in windows of
 * PS_WINDOW bytes (at multiples of PS_WINDOW, which O_DIRECT's alignment
 * asks no more of) into PS_WINDOWS buffers of its own: the windows after
 * the current one are in flight while the records of the current one are
 * decoded. A record that spans two windows is copied together.
 *
 * - Until a thread has read PS_RUN records back to back, and for any read
 *   that does not go forward, records are left to the caller's buffered
 *   read; a read that does not go forward also drops the windows. So
 *   bytes are served from a window only to a reader moving forward
 *   through it, shortly after they were read.
 * - Windows the page cache holds already (cachestat()) are left to the
 *   caller too, so packs that are warm stay as fast as they were.
 * - Read twice, a window goes through the page cache: the first pass
 *   through a pack reads it direct, a second one (fio's loops over a
 *   volume, several volumes made from one snapshot) reads it buffered
 *   and leaves it in the page cache for the passes after it. A table of
 *   windows read (PS_SEEN of them, direct-mapped) remembers which way
 *   each went last; a window read buffered and later evicted is read
 *   direct again.
 * - Windows are keyed by a pack's number and the generation of the chunk
 *   store's pack descriptors (which changes whenever gc may have reused a
 *   number), and every byte served from them is checked by the caller
 *   (record header, chunk id) like any other read.
 * - A thread gets its windows when it first streams, and keeps them
 *   (PS_WINDOWS * PS_WINDOW bytes and a ring per window) until it ends;
 *   at most PS_STREAMS threads hold them at a time, others read buffered. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef PS_WINDOW
#define PS_WINDOW ((uint32_t)4 << 20)
#endif
#ifndef PS_WINDOWS
#define PS_WINDOWS 4
#endif
#define PS_STREAMS 8
#define PS_SEEN 4096
/* Records read back to back before the windows start: two random reads
 * that happen to go forward must not cost PS_WINDOWS windows of reading. */
#define PS_RUN 4
/* Window buffers are made of huge pages where the kernel has them: a
 * direct read into 4 KiB pages is cut into requests of at most
 * max_segments pages (254 on virtio-blk, under 1 MiB), and the bench
 * machine's disk serves a few large requests much faster than many
 * smaller ones (cold nbdcopy with 2 MiB windows of 4 KiB pages: 814 to
 * 1045 MB/s; of huge pages: 942 to 1347). */
#define PS_HUGE ((size_t)2 << 20)

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct ps_cachestat_range {
	uint64_t off, len;
};

struct ps_cachestat {
	uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

/* One window: PS_WINDOW bytes of the pack from off, once read. */
struct ps_window {
	uint8_t *buf;
	uint64_t off;
	uint32_t len;           /* bytes read (less at the end of the pack) */
	bool valid;
	bool busy;              /* its read is in flight */
	bool dropped;           /* in flight, but no longer wanted */
	struct io_queue *q;
	struct io_req req;
};

struct packstream {
	bool enabled;           /* has its buffers (within PS_STREAMS) */
	uint64_t gen;
	uint32_t pack;
	int fd;                 /* the pack, opened O_DIRECT */
	uint64_t last_end;      /* end of the last record read, when seq */
	bool seq;
	unsigned run;           /* records read back to back, up to PS_RUN */
	uint64_t buffered_end;  /* records before this are read buffered */
	/* w[cur] is the window being read from; the ones after it (in
	 * ring order) cover the pack after it, each PS_WINDOW on. */
	struct ps_window w[PS_WINDOWS];
	int cur;
	uint8_t *span;          /* a record across two windows */
	size_t span_cap;
};

static pthread_key_t ps_key;
static pthread_once_t ps_once = PTHREAD_ONCE_INIT;
static uint64_t ps_next_gen = 1;
static unsigned ps_streams;

/* Windows read so far, and how they were read last. */
enum { PS_DIRECT = 1, PS_BUFFERED };
static struct ps_seen {
	uint64_t gen, key;
	int how;
} ps_seen[PS_SEEN];
static pthread_mutex_t ps_seen_lock = PTHREAD_MUTEX_INITIALIZER;

static struct ps_seen *ps_seen_slot(uint64_t gen, uint64_t key)
{
	uint64_t h = (key ^ gen * 0xff51afd7ed558ccdull) * 0x9e3779b97f4a7c15ull;

	return &ps_seen[h >> 52 & (PS_SEEN - 1)];
}

/* Should the window at off (a multiple of PS_WINDOW) that the page cache
 * does not hold be read direct? Yes the first time, and after its pages
 * were seen in the page cache (a buffered read of it was evicted since,
 * or dropped); a second read is buffered. With commit unset, only a yes
 * is recorded. */
static bool ps_direct(uint64_t gen, uint32_t pack, uint64_t off, bool commit)
{
	uint64_t key = (uint64_t)pack << 32 | off / PS_WINDOW;
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&ps_seen_lock);
	struct ps_seen *e = ps_seen_slot(gen, key);
	bool known = e->gen == gen && e->key == key;

	if (known && e->how == PS_DIRECT) {
		if (commit)
			e->how = PS_BUFFERED;
		return false;
	}
	*e = (struct ps_seen){ gen, key, PS_DIRECT };
	return true;
}

/* The window at off was found in the page cache. */
static void ps_buffered(uint64_t gen, uint32_t pack, uint64_t off)
{
	uint64_t key = (uint64_t)pack << 32 | off / PS_WINDOW;
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&ps_seen_lock);

	*ps_seen_slot(gen, key) = (struct ps_seen){ gen, key, PS_BUFFERED };
}

uint64_t packstream_new_gen(void)
{
	return __atomic_fetch_add(&ps_next_gen, 1, __ATOMIC_RELAXED);
}

/* Wait for the window's read, if it is in flight. */
static void ps_wait(struct ps_window *w)
{
	if (!w->busy)
		return;
	w->busy = false;
	if (io_queue_finish(w->q) == 0 && w->req.res >= 0 && !w->dropped) {
		w->len = (uint32_t)w->req.res;
		w->valid = true;
	}
	w->dropped = false;
}

static void ps_release(struct ps_window *w)
{
	ps_wait(w);
	w->valid = false;
}

/* Forget every window; reads in flight finish when their buffers are
 * needed again. */
static void ps_drop(struct packstream *s)
{
	for (int i = 0; i < PS_WINDOWS; i++) {
		s->w[i].valid = false;
		s->w[i].dropped = s->w[i].busy;
	}
}

static void ps_free(void *p)
{
	struct packstream *s = p;

	for (int i = 0; i < PS_WINDOWS; i++) {
		ps_wait(&s->w[i]);
		io_queue_free(s->w[i].q);
		free(s->w[i].buf);
	}
	if (s->enabled)
		__atomic_fetch_sub(&ps_streams, 1, __ATOMIC_RELAXED);
	free(s->span);
	free(s);
}

static void ps_make_key(void)
{
	pthread_key_create(&ps_key, ps_free);
}

/* This thread's stream state; its buffers come with ps_enable(). */
static struct packstream *ps_get(void)
{
	struct packstream *s;

	pthread_once(&ps_once, ps_make_key);
	s = pthread_getspecific(ps_key);
	if (s)
		return s;
	s = calloc(1, sizeof *s);
	if (s && pthread_setspecific(ps_key, s) != 0) {
		free(s);
		return NULL;
	}
	return s;
}

/* Give the stream its windows, the first time it needs them: false when
 * PS_STREAMS threads hold theirs already, or memory is short. */
static bool ps_enable(struct packstream *s)
{
	bool ok = true;

	if (s->enabled)
		return true;
	if (__atomic_add_fetch(&ps_streams, 1, __ATOMIC_RELAXED) > PS_STREAMS) {
		__atomic_fetch_sub(&ps_streams, 1, __ATOMIC_RELAXED);
		return false;
	}
	for (int i = 0; i < PS_WINDOWS; i++) {
		s->w[i].buf = aligned_alloc(PS_HUGE, PS_WINDOW);
		if (s->w[i].buf)
			madvise(s->w[i].buf, PS_WINDOW, MADV_HUGEPAGE);
		s->w[i].q = io_queue_new();
		ok = ok && s->w[i].buf && s->w[i].q;
	}
	if (!ok) {
		for (int i = 0; i < PS_WINDOWS; i++) {
			io_queue_free(s->w[i].q);
			free(s->w[i].buf);
			s->w[i].q = NULL;
			s->w[i].buf = NULL;
		}
		__atomic_fetch_sub(&ps_streams, 1, __ATOMIC_RELAXED);
		return false;
	}
	s->enabled = true;
	return true;
}

/* Is most of [off, off + len) of the pack in the page cache already? */
static bool ps_cached(int fd, uint64_t off, uint64_t len)
{
	struct ps_cachestat_range range = { off, len };
	struct ps_cachestat st;

	if (syscall(__NR_cachestat, fd, &range, &st, 0) < 0)
		return false;   /* no cachestat (before Linux 6.5): read it ourselves */
	return st.nr_cache * 4096 * 2 >= len;
}

/* Start reading the window at off into w. */
static int ps_start(struct packstream *s, struct ps_window *w, uint64_t off)
{
	int r;

	ps_release(w);
	if (!w->q)
		return -ENOMEM;         /* a failed start left it without a queue */
	w->off = off;
	w->req = (struct io_req){ .fd = s->fd, .op = IO_READ, .buf = w->buf, .len = PS_WINDOW,
				  .off = off };
	r = io_queue_start(w->q, &w->req, 1);
	if (r < 0) {
		/* The queue is unusable after a failed start: a new one. */
		io_queue_free(w->q);
		w->q = io_queue_new();
		return r;
	}
	w->busy = true;
	return 0;
}

/* Keep the windows after w[cur] in flight, up to the end of the pack or
 * to a part of it that the page cache holds. */
static void ps_prefetch(struct packstream *s)
{
	struct ps_window *prev = &s->w[s->cur];

	for (int i = 1; i < PS_WINDOWS; i++) {
		struct ps_window *w = &s->w[(s->cur + i) % PS_WINDOWS];
		uint64_t off = prev->off + PS_WINDOW;

		if (!prev->busy && (!prev->valid || prev->len < PS_WINDOW))
			return;         /* the end of the pack, or nothing to follow */
		if (!((w->busy && !w->dropped) || w->valid) || w->off != off) {
			if (!w->q || ps_cached(s->fd, off, PS_WINDOW) ||
			    !ps_direct(s->gen, s->pack, off, false) || ps_start(s, w, off) < 0)
				return;
		}
		prev = w;
	}
}

/* The window of w[cur] onwards that holds off, waited for; NULL if none. */
static struct ps_window *ps_find(struct packstream *s, uint64_t off, int *ret_k)
{
	for (int i = 0; i < PS_WINDOWS; i++) {
		int k = (s->cur + i) % PS_WINDOWS;
		struct ps_window *w = &s->w[k];

		if (!((w->busy && !w->dropped) || w->valid) || off < w->off ||
		    off >= w->off + PS_WINDOW)
			continue;
		ps_wait(w);
		if (!w->valid || off >= w->off + w->len)
			return NULL;
		*ret_k = k;
		return w;
	}
	return NULL;
}

/* Make w[k] the current window: the ones before it are done with. */
static void ps_advance(struct packstream *s, int k)
{
	while (s->cur != k) {
		s->w[s->cur].valid = false;
		s->cur = (s->cur + 1) % PS_WINDOWS;
	}
}

int packstream_read(uint64_t gen, uint32_t pack, int fd, uint64_t off, uint32_t len, uint8_t **ret_rec)
{
	struct packstream *s;
	struct ps_window *w, *next;
	uint64_t end = off + len;
	bool forward;
	int k;

	if (fd < 0 || len > PS_WINDOW)
		return 0;
	s = ps_get();
	if (!s)
		return 0;
	if (s->gen != gen || s->pack != pack || s->fd != fd) {
		ps_drop(s);
		s->seq = false;
		s->buffered_end = 0;
		s->gen = gen;
		s->pack = pack;
		s->fd = fd;
	}
	forward = s->seq && off >= s->last_end && off - s->last_end <= PS_WINDOW;
	if (s->seq && off == s->last_end)
		s->run += s->run < PS_RUN;
	else
		s->run = 0;
	s->seq = true;
	s->last_end = end;
	if (!forward) {
		ps_drop(s);
		return 0;
	}

	w = ps_find(s, off, &k);
	if (!w) {
		/* In no window: read its window now, unless the page cache
		 * has most of it or should have it. (Asking about the record
		 * alone would keep a reader buffered behind the kernel's own
		 * readahead.) */
		uint64_t woff = off / PS_WINDOW * PS_WINDOW;

		if (off < s->buffered_end || s->run < PS_RUN)
			return 0;
		if (ps_cached(fd, woff, PS_WINDOW)) {
			/* The kernel's readahead for a buffered reader runs
			 * ahead of it: so windows of a second pass are often
			 * cached by the time the reader gets there. */
			ps_buffered(gen, pack, woff);
			s->buffered_end = woff + PS_WINDOW;
			return 0;
		}
		if (!ps_enable(s) || !ps_direct(gen, pack, woff, true)) {
			s->buffered_end = woff + PS_WINDOW;
			return 0;
		}
		ps_drop(s);
		k = s->cur;
		w = &s->w[k];
		if (ps_start(s, w, woff) < 0)
			return 0;
		ps_wait(w);
		/* An error (a filesystem that took O_DIRECT at open but not
		 * at read, say) or a record past the end of the pack: the
		 * caller's own read finds out. */
		if (!w->valid || off >= w->off + w->len)
			return 0;
	}
	ps_advance(s, k);
	ps_prefetch(s);
	if (end <= w->off + w->len) {
		*ret_rec = w->buf + (off - w->off);
		return 1;
	}
	/* Across the end of the window: the rest is in the next one, unless
	 * it was not read (the page cache has it) or the pack ends. */
	next = ps_find(s, w->off + PS_WINDOW, &k);
	if (w->len < PS_WINDOW || !next || end > next->off + next->len)
		return 0;
	if (s->span_cap < len) {
		uint8_t *p = realloc(s->span, len);

		if (!p)
			return -ENOMEM;
		s->span = p;
		s->span_cap = len;
	}
	memcpy(s->span, w->buf + (off - w->off), next->off - off);
	memcpy(s->span + (next->off - off), next->buf, end - next->off);
	*ret_rec = s->span;
	return 1;
}
