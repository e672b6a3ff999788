/* SPDX-License-Identifier: MIT */
/* stats.c: what a region holds, logically and on disk. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static int count_snapshot(void *opaque, const struct kiln_snapshot_info *s)
{
	struct kiln_region_stats *st = opaque;

	if (s->state != KILN_SNAPSHOT_COMPLETED)
		return 0;
	st->snapshots++;
	st->logical_bytes += s->size;
	st->data_bytes += s->chunks_data * s->chunk_size;
	return 0;
}

static int count_volume(void *opaque, const struct kiln_volume_info *v)
{
	(void)v;
	((struct kiln_region_stats *)opaque)->volumes++;
	return 0;
}

static int count_chunk(void *opaque, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc)
{
	struct kiln_region_stats *st = opaque;

	(void)id;
	st->unique_chunks++;
	st->unique_bytes += loc->raw_len;
	st->stored_bytes += RECORD_HEADER_SIZE + loc->stored_len;
	return 0;
}

/* Sum of file sizes (or allocated bytes) in a directory. */
static uint64_t dir_bytes(int dirfd, const char *suffix, bool allocated)
{
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	uint64_t sum = 0;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), sl = strlen(suffix);
		struct stat st;

		if (len <= sl || strcmp(de->d_name + len - sl, suffix) != 0)
			continue;
		if (fstatat(dirfd, de->d_name, &st, 0) == 0)
			sum += allocated ? (uint64_t)st.st_blocks * 512 : (uint64_t)st.st_size;
	}
	closedir(d);
	return sum;
}

int kiln_region_stats(struct kiln_region *rg, struct kiln_region_stats *ret_stats)
{
	struct kiln_region_stats st = { 0 };
	int r;

	r = catalog_snapshot_list(rg->cat, count_snapshot, &st);
	if (r == 0)
		r = catalog_volume_list(rg->cat, count_volume, &st);
	if (r == 0)
		r = cs_foreach(rg->cs, count_chunk, &st);
	if (r < 0)
		return r;
	st.pack_bytes = dir_bytes(cs_packs_dirfd(rg->cs), ".pack", false);
	st.overlay_bytes = dir_bytes(rg->volumes_dirfd, ".data", true);
	*ret_stats = st;
	return 0;
}
