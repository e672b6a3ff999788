/* SPDX-License-Identifier: MIT */
/* gc.c: remove chunks nothing references, and files nothing names.
 *
 * The roots are every manifest in manifests/ that the catalog knows as a
 * completed snapshot, and every volume's parent manifest. gc holds the
 * region lock, so no snapshot, import or copy runs beside it (DESIGN
 * rule 6), and it first removes what crashed writers left: manifests and
 * volume files that no catalog row names. A catalog that cannot answer,
 * or a live chunk the index lacks, stops it before anything else is
 * removed: damage is not garbage. The chunk store then rewrites
 * the packs that hold dead chunks (see cs_compact()), and for recompress
 * those that hold chunks compressed at a weaker level. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct idset {
	uint8_t (*ids)[CHUNK_ID_SIZE];
	uint8_t *used;
	size_t cap, count;
};

static uint64_t slot_of(const uint8_t id[CHUNK_ID_SIZE])
{
	uint64_t h;

	memcpy(&h, id, 8);
	return h;
}

static bool idset_has(const struct idset *s, const uint8_t id[CHUNK_ID_SIZE])
{
	if (!s->cap)
		return false;
	for (size_t i = slot_of(id) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (!s->used[i])
			return false;
		if (memcmp(s->ids[i], id, CHUNK_ID_SIZE) == 0)
			return true;
	}
}

static int idset_add(struct idset *s, const uint8_t id[CHUNK_ID_SIZE])
{
	if ((s->count + 1) * 2 > s->cap) {
		struct idset n = { 0 };

		n.cap = s->cap ? s->cap * 2 : 4096;
		n.ids = malloc(n.cap * CHUNK_ID_SIZE);
		n.used = calloc(n.cap, 1);
		if (!n.ids || !n.used) {
			free(n.ids);
			free(n.used);
			return -ENOMEM;
		}
		for (size_t i = 0; i < s->cap; i++)
			if (s->used[i])
				idset_add(&n, s->ids[i]);
		free(s->ids);
		free(s->used);
		*s = n;
	}
	for (size_t i = slot_of(id) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (!s->used[i]) {
			memcpy(s->ids[i], id, CHUNK_ID_SIZE);
			s->used[i] = 1;
			s->count++;
			return 0;
		}
		if (memcmp(s->ids[i], id, CHUNK_ID_SIZE) == 0)
			return 0;
	}
}

static int add_manifest(struct idset *live, int dirfd, const char *name)
{
	struct manifest *m;
	int r = manifest_read(dirfd, name, &m);

	if (r < 0)
		return r;
	for (uint64_t i = 0; i < m->nchunks && r == 0; i++)
		if (!chunk_id_is_zero(m->ids[i]))
			r = idset_add(live, m->ids[i]);
	manifest_free(m);
	return r;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a > b && strcmp(s + a - b, suffix) == 0;
}

/* Walk a directory; fn gets each entry name. */
static int walk(int dirfd, int (*fn)(void *opaque, const char *name), void *opaque)
{
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	int r = 0;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	rewinddir(d);
	while (r == 0 && (de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			r = fn(opaque, de->d_name);
	closedir(d);
	return r;
}

struct gc_ctx {
	struct kiln_region *rg;
	struct idset live;
};

static int manifest_root(void *opaque, const char *name)
{
	struct gc_ctx *g = opaque;
	char id[KILN_ID_MAX];
	struct kiln_snapshot_info info;
	int r;

	if (!ends_with(name, ".manifest"))
		return 0;
	snprintf(id, sizeof id, "%.*s", (int)(strlen(name) - strlen(".manifest")), name);
	r = catalog_snapshot_get(g->rg->cat, id, &info);
	if (r == -ENOENT) {
		/* A crash between manifest and catalog row, or between row
		 * deletion and unlink: nothing names it. */
		debug("gc: removing orphan manifest %s", name);
		unlinkat(g->rg->manifests_dirfd, name, 0);
		return 0;
	}
	if (r < 0)
		return r;       /* a catalog that cannot answer says nothing is garbage */
	return add_manifest(&g->live, g->rg->manifests_dirfd, name);
}

static int volume_root(void *opaque, const char *name)
{
	struct gc_ctx *g = opaque;
	char id[KILN_ID_MAX];
	struct kiln_volume_info info;
	const char *dot = strchr(name, '.');
	int r;

	if (!dot || (size_t)(dot - name) >= sizeof id)
		return 0;
	snprintf(id, sizeof id, "%.*s", (int)(dot - name), name);
	r = catalog_volume_get(g->rg->cat, id, &info);
	if (r == -ENOENT) {
		debug("gc: removing orphan volume file %s", name);
		unlinkat(g->rg->volumes_dirfd, name, 0);
		return 0;
	}
	if (r < 0)
		return r;
	if (ends_with(name, ".parent"))
		return add_manifest(&g->live, g->rg->volumes_dirfd, name);
	return 0;
}

/* Every chunk a root names must be in the chunk store before anything is
 * compacted: an index that lost records (truncated, removed, a record
 * that fails its check) would otherwise make their packs look dead. */
static int check_live(struct kiln_region *rg, const struct idset *live)
{
	for (size_t i = 0; i < live->cap; i++)
		if (live->used[i] && !cs_contains(rg->cs, live->ids[i])) {
			char hex[CHUNK_ID_SIZE * 2 + 1];

			hex_encode(live->ids[i], CHUNK_ID_SIZE, hex);
			debug("gc: live chunk %s is not in the index", hex);
			return -EBADMSG;
		}
	return 0;
}

static bool keep_live(void *opaque, const uint8_t id[CHUNK_ID_SIZE])
{
	return idset_has(opaque, id);
}

static int region_gc(struct kiln_region *rg, int level, struct kiln_gc_result *ret_result)
{
	struct gc_ctx g = { .rg = rg };
	struct kiln_gc_result res = { 0 };
	int r = region_lock(rg);

	if (r < 0)
		return r;
	/* The catalog decides what is garbage: a damaged one, whose lookups
	 * may miss rows that are there, decides nothing. */
	r = catalog_check(rg->cat);
	if (r == 0)
		r = walk(rg->manifests_dirfd, manifest_root, &g);
	if (r == 0)
		r = walk(rg->volumes_dirfd, volume_root, &g);
	if (r == 0) {
		fsync_dir(rg->manifests_dirfd);
		fsync_dir(rg->volumes_dirfd);
		r = check_live(rg, &g.live);
	}
	if (r == 0)
		r = cs_compact(rg->cs, level, keep_live, &g.live, &res);
	region_unlock(rg);
	free(g.live.ids);
	free(g.live.used);
	if (r == 0)
		*ret_result = res;
	return r;
}

static int gc_with_reserve(struct kiln_region *rg, int level, struct kiln_gc_result *ret_result)
{
	int r = region_gc(rg, level, ret_result);

	if (r == -ENOSPC && region_release_reserve(rg))
		r = region_gc(rg, level, ret_result);
	return r;
}

int kiln_region_gc(struct kiln_region *rg, struct kiln_gc_result *ret_result)
{
	return gc_with_reserve(rg, 0, ret_result);
}

int kiln_region_recompress(struct kiln_region *rg, int zstd_level, struct kiln_gc_result *ret_result)
{
	if (zstd_level < -7 || zstd_level > 19 || zstd_level == 0)
		return -EINVAL;
	return gc_with_reserve(rg, zstd_level, ret_result);
}
