/* SPDX-License-Identifier: MIT */
/* spliceread.c: reads handed over as page references, through a pipe.
 *
 * A range whose chunks are all LOCAL is bytes of the overlay file. Spliced
 * from the file into a pipe (and from there, by kiln-nbd, into its
 * socket) the page cache's pages travel by reference: the server copies
 * nothing, where a read into memory and a send copy each byte twice. On
 * the bench machine fio's sequential 1 MiB reads ran about 1.3x faster
 * (bench/RESULTS.md).
 *
 * The pipe holds references, not copies: a write that lands on those
 * pages before the reader takes them shows through. The reader's reply
 * is not complete until it has the bytes, so that write is concurrent
 * with the read, and either answer is one NBD allows. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "internal.h"

/* Read and forget what the pipe holds now. */
static void empty_pipe(int pipe_fd)
{
	uint8_t sink[16384];
	struct pollfd p = { .fd = pipe_fd, .events = POLLIN };

	while (poll(&p, 1, 0) == 1 && read(pipe_fd, sink, sizeof sink) > 0)
		;
}

int kiln_volume_splice_read(struct kiln_volume *v, const int pipe[2], uint64_t count, uint64_t offset)
{
	uint32_t cs = v->map->chunk_size;
	loff_t pos = (loff_t)offset;
	uint64_t left = count;
	int r = 0;

	if (count == 0 || volume_check_range(v, count, offset) < 0)
		return -EOPNOTSUPP;
	pthread_rwlock_rdlock(&v->io_lock);
	for (uint64_t i = offset / cs; i <= (offset + count - 1) / cs && r == 0; i++)
		if (volume_chunk_state(v, i) != CHUNK_LOCAL)
			r = -EOPNOTSUPP;
	while (r == 0 && left > 0) {
		/* NONBLOCK: a full pipe gives EAGAIN rather than wait for a
		 * reader that is this thread. */
		ssize_t n = splice(v->overlay_fd, &pos, pipe[1], NULL, left, SPLICE_F_NONBLOCK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			r = n < 0 ? -errno : -EIO;
		else
			left -= (uint64_t)n;
	}
	pthread_rwlock_unlock(&v->io_lock);
	if (r < 0 && left < count)
		empty_pipe(pipe[0]);
	return r;
}
