/* SPDX-License-Identifier: MIT */
/* streamwrite.c: writes whose payload arrives in parts, through a pipe.
 *
 * A 1 MiB write read into memory and then written is copied twice on the
 * server: out of the socket and into the page cache. Spliced from the
 * socket into a pipe, the payload stays in the pages the socket received
 * it in, and splicing the pipe into the overlay is the one copy. The
 * socket also drains faster, so the client waits less on its send buffer:
 * sequential 1 MiB writes ran about 1.5x faster this way on the bench
 * machine (bench/RESULTS.md).
 *
 * The pipe side runs as splice() on the calling thread, not on a ring,
 * for the reason overlay pwrite()s do (docs/DECISIONS.md): io_uring would
 * run it on a worker thread, and measured so the whole path ran at 0.6x.
 *
 * Parts are written under the volume's I/O lock, one at a time, and the
 * chunks change state at the end: all LOCAL and dirty if the write ended
 * whole, else as after any failed write (volume_mark_failed_write: what
 * landed in a ZERO or LOCAL chunk is kept and dirty, what landed under a
 * BASE chunk is never read). A snapshot taken between parts counts what
 * had landed in chunks that were LOCAL and dirty already: the write was
 * in flight, so either answer is one a block device may give. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "internal.h"

int kiln_volume_stream_begin(struct kiln_volume *v, uint64_t count, uint64_t offset,
			     struct kiln_stream_write *w)
{
	uint32_t cs = v->map->chunk_size;
	int r = 0;

	*w = (struct kiln_stream_write){ .volume = v, .offset = offset, .count = count };
	if (!v->writable || count == 0 || volume_check_range(v, count, offset) < 0)
		return -EOPNOTSUPP;
	/* Parts go straight into the overlay, so no chunk may be BASE: a
	 * partial write needs its old bytes, and a whole one, while its parts
	 * come in, could be overtaken by another writer's copy-up of the
	 * chunk, which would lay the old bytes over the parts. Only a write
	 * turns a BASE chunk into something else, never back, so the answer
	 * holds. */
	pthread_rwlock_rdlock(&v->io_lock);
	for (uint64_t i = offset / cs; i <= (offset + count - 1) / cs && r == 0; i++)
		if (volume_chunk_state(v, i) == CHUNK_BASE)
			r = -EOPNOTSUPP;
	pthread_rwlock_unlock(&v->io_lock);
	return r;
}

/* The next len bytes of the write, or an error: EIO for parts beyond count. */
static int next_part(struct kiln_stream_write *w, size_t len, uint64_t *ret_off)
{
	if (len > w->count - w->done) {
		if (w->result == 0)
			w->result = -EIO;
		return -EIO;
	}
	*ret_off = w->offset + w->done;
	w->done += len;
	return w->result;
}

void kiln_volume_stream_buf(struct kiln_stream_write *w, const void *buf, size_t len)
{
	struct kiln_volume *v = w->volume;
	uint64_t off;

	if (len == 0 || next_part(w, len, &off) < 0)
		return;
	pthread_rwlock_rdlock(&v->io_lock);
	w->result = volume_write_pieces(v, buf, (uint32_t)len, off);
	pthread_rwlock_unlock(&v->io_lock);
}

/* Move len bytes from the pipe into the overlay at off, in OVERLAY_PIECE
 * pieces (folio size, as for every overlay write). On an error some of
 * them may still be in the pipe: *ret_left says how many. */
static int splice_pieces(struct kiln_volume *v, int pipe_fd, size_t len, uint64_t off, size_t *ret_left)
{
	while (len > 0) {
		size_t piece = MIN(len, (size_t)(OVERLAY_PIECE - off % OVERLAY_PIECE));
		loff_t pos = (loff_t)off;
		/* NONBLOCK: a pipe that holds less than the caller said must
		 * not hang the connection; it gives EAGAIN. */
		ssize_t n = splice(pipe_fd, NULL, v->overlay_fd, &pos, piece, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			*ret_left = len;
			return n < 0 ? -errno : -EIO;
		}
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	*ret_left = 0;
	return 0;
}

/* Read and forget len bytes from the pipe, which holds them already (if
 * it does not, the stream is lost: EIO rather than wait). */
static int drop(int pipe_fd, size_t len)
{
	uint8_t sink[16384];

	while (len > 0) {
		struct pollfd p = { .fd = pipe_fd, .events = POLLIN };
		ssize_t n = poll(&p, 1, 0) == 1 ? read(pipe_fd, sink, MIN(len, sizeof sink)) : 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		len -= (size_t)n;
	}
	return 0;
}

int kiln_volume_stream_pipe(struct kiln_stream_write *w, int pipe_fd, size_t len)
{
	struct kiln_volume *v = w->volume;
	size_t left = len;
	uint64_t off;
	int r;

	if (len == 0)
		return 0;
	if (next_part(w, len, &off) == 0) {
		pthread_rwlock_rdlock(&v->io_lock);
		r = splice_pieces(v, pipe_fd, len, off, &left);
		pthread_rwlock_unlock(&v->io_lock);
		if (r < 0)
			w->result = r;
	}
	return drop(pipe_fd, left);
}

int kiln_volume_stream_end(struct kiln_stream_write *w)
{
	struct kiln_volume *v = w->volume;
	uint32_t cs = v->map->chunk_size;

	if (w->result == 0 && w->done != w->count)
		w->result = -EIO;
	pthread_rwlock_rdlock(&v->io_lock);
	if (w->result < 0) {
		volume_mark_failed_write(v, w->offset, w->done);
	} else {
		for (uint64_t i = w->offset / cs; i <= (w->offset + w->count - 1) / cs; i++)
			volume_set_state(v, i, CHUNK_LOCAL, true);
	}
	pthread_rwlock_unlock(&v->io_lock);
	return w->result;
}
