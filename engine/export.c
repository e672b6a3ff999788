/* SPDX-License-Identifier: MIT */
/* export.c: write a volume or a snapshot out as a raw image. Zero chunks
 * become holes in a regular file (written as zeroes on a block device).
 * Stored chunks are read a batch at a time and decoded on the pool.
 * With KILN_EXPORT_DIRECT=1 whole chunks go out with O_DIRECT, which
 * skips filling fresh page cache (slow on some virtual machines); it is
 * not the default until a benchmark shows it wins. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define EXPORT_BATCH 64

static int export_to(struct kiln_region *rg, uint64_t size, uint32_t chunk_size,
		     void (*classify)(void *opaque, uint64_t i, struct chunk_source *src),
		     void *opaque, int fd, bool blockdev, kiln_progress_fn progress, void *popaque);

int export_raw(struct kiln_region *rg, uint64_t size, uint32_t chunk_size,
	       void (*classify)(void *opaque, uint64_t i, struct chunk_source *src),
	       void *opaque, const char *path, kiln_progress_fn progress, void *popaque)
{
	struct replacement rp;
	struct stat st;
	int r;

	/* A block device is written in place; anything else that is there
	 * and not a regular file (/dev/null) too, as before. */
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		int fd = open(path, O_WRONLY | O_CLOEXEC);

		if (fd < 0)
			return -errno;
		r = export_to(rg, size, chunk_size, classify, opaque, fd, S_ISBLK(st.st_mode), progress,
			      popaque);
		close(fd);
		return r;
	}
	/* A regular file is replaced once the export is complete, so one
	 * that fails (a corrupt chunk, a full disk) leaves what was there. */
	r = replacement_open(&rp, path);
	if (r < 0)
		return r;
	r = export_to(rg, size, chunk_size, classify, opaque, rp.fd, false, progress, popaque);
	if (r == 0)
		r = replacement_commit(&rp);
	if (r < 0)
		replacement_abort(&rp);
	replacement_close(&rp);
	return r;
}

/* Write the export into fd: a regular file (empty, so every hole reads as
 * zero) or a block device. */
static int export_to(struct kiln_region *rg, uint64_t size, uint32_t chunk_size,
		     void (*classify)(void *opaque, uint64_t i, struct chunk_source *src),
		     void *opaque, int fd, bool blockdev, kiln_progress_fn progress, void *popaque)
{
	uint64_t nchunks = DIV_ROUND_UP(size, chunk_size);
	CLEANUP_FREE uint8_t *space = aligned_alloc(4096, (size_t)EXPORT_BATCH * chunk_size);
	CLEANUP_CLOSE int dfd = -1;
	int r;

	if (!space)
		return -ENOMEM;
	if (blockdev) {
		uint64_t dev_size;

		/* Too small: refuse before writing a byte of it. */
		if (ioctl(fd, BLKGETSIZE64, &dev_size) < 0)
			return -errno;
		if (dev_size < size)
			return -EFBIG;
	} else {
		const char *direct = getenv("KILN_EXPORT_DIRECT");

		/* Empty first, so every hole we leave reads as zero. */
		if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)size) < 0)
			return -errno;
		if (direct && strcmp(direct, "1") == 0 && chunk_size % 4096 == 0) {
			char proc[64];

			snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
			dfd = open(proc, O_WRONLY | O_DIRECT | O_CLOEXEC);
		}
	}

	for (uint64_t b = 0; b < nchunks; b += EXPORT_BATCH) {
		size_t n = (size_t)MIN((uint64_t)EXPORT_BATCH, nchunks - b);
		uint8_t ids[EXPORT_BATCH][CHUNK_ID_SIZE];
		void *bufs[EXPORT_BATCH];
		struct io_req reads[EXPORT_BATCH], writes[EXPORT_BATCH];
		size_t nids = 0, nreads = 0, nwrites = 0;
		bool write_it[EXPORT_BATCH];

		for (size_t k = 0; k < n; k++) {
			struct chunk_source src = { 0 };
			uint64_t i = b + k;
			uint8_t *buf = space + k * (size_t)chunk_size;

			classify(opaque, i, &src);
			write_it[k] = src.kind != SRC_ZERO || blockdev;
			if (src.kind == SRC_ZERO) {
				if (blockdev)
					memset(buf, 0, chunk_size);
			} else if (src.kind == SRC_STORED) {
				memcpy(ids[nids], src.id, CHUNK_ID_SIZE);
				bufs[nids++] = buf;
			} else {
				reads[nreads++] = (struct io_req){ .fd = src.fd, .op = IO_READ, .buf = buf,
								   .len = chunk_size, .off = i * chunk_size };
			}
		}
		r = io_run(reads, nreads);
		if (r < 0)
			return r;
		for (size_t k = 0; k < nreads; k++)
			if ((uint32_t)reads[k].res < chunk_size)
				memset((uint8_t *)reads[k].buf + reads[k].res, 0,
				       chunk_size - (uint32_t)reads[k].res);
		if (nids) {
			r = cs_read_many(rg->cs, nids, (const uint8_t (*)[CHUNK_ID_SIZE])ids, bufs, chunk_size);
			if (r < 0)
				return r;
		}
		for (size_t k = 0; k < n; k++) {
			uint64_t off = (b + k) * chunk_size;
			uint8_t *buf = space + k * (size_t)chunk_size;
			uint32_t len = (uint32_t)MIN((uint64_t)chunk_size, size - off);

			if (!write_it[k] || (!blockdev && buf_is_zero(buf, len)))
				continue;
			writes[nwrites++] = (struct io_req){ .fd = dfd >= 0 && len == chunk_size ? dfd : fd,
							     .op = IO_WRITE, .buf = buf, .len = len, .off = off };
		}
		r = io_run(writes, nwrites);
		if (r < 0)
			return r;
		for (size_t k = 0; k < nwrites; k++)
			if ((uint32_t)writes[k].res != writes[k].len)
				return -EIO;
		if (progress)
			progress(popaque, MIN((b + n) * chunk_size, size), size);
	}
	if (fsync(fd) < 0 && errno != EINVAL)
		return -errno;
	if (dfd >= 0 && fsync(dfd) < 0 && errno != EINVAL)
		return -errno;
	return 0;
}


static void classify_volume(void *opaque, uint64_t i, struct chunk_source *src)
{
	struct kiln_volume *v = opaque;

	switch (vmap_state(v->map, i)) {
	case CHUNK_ZERO:
		src->kind = SRC_ZERO;
		break;
	case CHUNK_LOCAL:
		src->kind = SRC_OVERLAY;
		src->fd = v->overlay_fd;
		break;
	case CHUNK_BASE:
		src->kind = SRC_STORED;
		src->id = v->parent->ids[i];
		break;
	}
}

int kiln_volume_export(struct kiln_region *rg, const char *volume_id, const char *path,
		       kiln_progress_fn progress, void *opaque)
{
	struct kiln_volume *v;
	int r = kiln_volume_open(rg, volume_id, KILN_OPEN_READONLY, &v);

	if (r < 0)
		return r;
	r = export_raw(rg, v->map->size, v->map->chunk_size, classify_volume, v, path, progress, opaque);
	kiln_volume_close(v);
	return r;
}
