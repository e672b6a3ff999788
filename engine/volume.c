/* SPDX-License-Identifier: MIT */
/* volume.c: copy-on-write volumes.
 *
 * A volume is three files in the region's volumes/ directory:
 *   vol-X.map     the volume map (vmap.c): per chunk ZERO, LOCAL or BASE,
 *                 plus a dirty bit (changed since the last snapshot);
 *   vol-X.data    the sparse overlay: LOCAL chunks at their own offsets;
 *   vol-X.parent  a hard link to the manifest BASE chunks read through to
 *                 (the source snapshot, then the volume's last snapshot).
 *                 Manifests never change, so the link is as good as a copy,
 *                 and it keeps the chunks alive for gc after the snapshot
 *                 it came from is deleted.
 *
 * The first write to a BASE chunk copies it up whole into the overlay
 * (like a qcow2 cluster over a backing file). Writes to a ZERO chunk go
 * straight to the overlay, whose range is a hole. Whenever a chunk turns
 * ZERO its overlay range is punched, so a ZERO chunk's range reads as
 * zeroes.
 *
 * Locking: io_lock is taken shared by every I/O call and exclusively by
 * snapshot, which so sees a frozen volume. flush_lock lets one flush at a
 * time write the map. map_lock guards the map's
 * entries. A stripe of chunk locks serialises copy-up of one chunk. */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define CHUNK_LOCKS 64

char *volume_file(const char *volume_id, const char *suffix)
{
	char *s;

	if (asprintf(&s, "%s.%s", volume_id, suffix) < 0)
		return NULL;
	return s;
}

static int lookup_error(struct kiln_region *rg, const char *id, int r)
{
	return r == -ENOENT ? region_missing_id(rg, id) : r;
}

/* ---- create / delete ------------------------------------------------- */

int volume_create_locked(struct kiln_region *rg, const char *account, uint64_t size,
			 const char *snapshot_id, enum kiln_volume_state state,
			 const struct manifest *parent, char ret_id[KILN_ID_MAX])
{
	struct kiln_volume_info info = { 0 };
	struct manifest *base = NULL;
	CLEANUP_FREE char *map = NULL, *data = NULL, *par = NULL, *mname = NULL;
	uint32_t chunk_size = kiln_store_chunk_size(rg->store);
	int fd, r;

	if (!kiln_account_valid(account))
		return -EINVAL;
	if (snapshot_id && *snapshot_id) {
		struct kiln_snapshot_info snap;

		if (!kiln_id_valid(snapshot_id, "snap"))
			return -EINVAL;
		r = catalog_snapshot_get(rg->cat, snapshot_id, &snap);
		if (r < 0)
			return lookup_error(rg, snapshot_id, r);
		if (snap.state != KILN_SNAPSHOT_COMPLETED)
			return -EAGAIN;
		if (size == 0)
			size = snap.size;
		if (size < snap.size)
			return -EINVAL;
		chunk_size = snap.chunk_size;
		mname = manifest_name(snapshot_id);
		if (!mname)
			return -ENOMEM;
		r = manifest_read(rg->manifests_dirfd, mname, &base);
		if (r < 0)
			return r == -ENOENT ? -EBADMSG : r;
		snprintf(info.snapshot_id, sizeof info.snapshot_id, "%s", snapshot_id);
	} else if (parent) {
		chunk_size = parent->chunk_size;
	}
	if (size == 0)
		return -EINVAL;

	r = random_id("vol", info.id);
	if (r < 0)
		goto out;
	map = volume_file(info.id, "map");
	data = volume_file(info.id, "data");
	par = volume_file(info.id, "parent");
	if (!map || !data || !par) {
		r = -ENOMEM;
		goto out;
	}
	fd = openat(rg->volumes_dirfd, data, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	r = ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
	close(fd);
	if (r < 0)
		goto out_unlink;
	if (base) {
		if (linkat(rg->manifests_dirfd, mname, rg->volumes_dirfd, par, 0) < 0) {
			r = -errno;
			goto out_unlink;
		}
	} else if (parent) {
		r = manifest_write(rg->volumes_dirfd, par, parent);
		if (r < 0)
			goto out_unlink;
	}
	r = vmap_create(rg->volumes_dirfd, map, info.id, size, chunk_size, base ? base : parent);
	if (r < 0)
		goto out_unlink;
	r = fsync_dir(rg->volumes_dirfd);
	if (r < 0)
		goto out_unlink;

	snprintf(info.owner, sizeof info.owner, "%s", account);
	info.size = size;
	info.chunk_size = chunk_size;
	info.state = state;
	info.create_time = now_seconds();
	r = catalog_volume_insert(rg->cat, &info);
	if (r < 0)
		goto out_unlink;
	memcpy(ret_id, info.id, KILN_ID_MAX);
	goto out;

out_unlink:
	unlinkat(rg->volumes_dirfd, map, 0);
	unlinkat(rg->volumes_dirfd, data, 0);
	unlinkat(rg->volumes_dirfd, par, 0);
out:
	manifest_free(base);
	return r;
}

int kiln_volume_create(struct kiln_region *rg, const char *account, uint64_t size,
		       const char *snapshot_id, char ret_id[KILN_ID_MAX])
{
	int r;

	if ((!snapshot_id || !*snapshot_id) && size == 0)
		return -EINVAL;
	r = region_lock(rg);
	if (r < 0)
		return r;
	/* From a snapshot: the caller's own, public, or shared with it. */
	if (snapshot_id && *snapshot_id && catalog_snapshot_usable(rg->cat, snapshot_id, account) == 0) {
		struct kiln_snapshot_info si;

		if (catalog_snapshot_get(rg->cat, snapshot_id, &si) == 0) {
			region_unlock(rg);
			return -EACCES;
		}
	}
	r = volume_create_locked(rg, account, size, snapshot_id, KILN_VOLUME_AVAILABLE, NULL, ret_id);
	region_unlock(rg);
	return r;
}

static void unlink_volume_files(struct kiln_region *rg, const char *id)
{
	static const char *const suffixes[] = { "map", "data", "parent" };

	for (size_t i = 0; i < ARRAY_SIZE(suffixes); i++) {
		CLEANUP_FREE char *name = volume_file(id, suffixes[i]);

		if (name)
			unlinkat(rg->volumes_dirfd, name, 0);
	}
	fsync_dir(rg->volumes_dirfd);
}

/* true when nobody has the volume open for writing. */
static bool volume_idle(struct kiln_region *rg, const char *id);

bool volume_in_use(struct kiln_region *rg, const char *id)
{
	return !volume_idle(rg, id);
}

static bool volume_idle(struct kiln_region *rg, const char *id)
{
	CLEANUP_FREE char *map = volume_file(id, "map");
	CLEANUP_CLOSE int fd = map ? openat(rg->volumes_dirfd, map, O_RDONLY | O_CLOEXEC) : -1;

	if (fd < 0)
		return true;
	return !vmap_locked(fd);
}

static int volume_delete(struct kiln_region *rg, const char *id)
{
	struct kiln_volume_info info;
	CLEANUP_FREE char *map = NULL;
	CLEANUP_CLOSE int fd = -1;
	int r;

	if (!kiln_id_valid(id, "vol"))
		return -EINVAL;
	r = catalog_volume_get(rg->cat, id, &info);
	if (r < 0)
		return lookup_error(rg, id, r);
	if (info.state == KILN_VOLUME_IN_USE)
		return -EBUSY;          /* a device of an instance: terminate it */
	map = volume_file(id, "map");
	if (!map)
		return -ENOMEM;
	/* Hold the owner lock while the volume goes, so nobody opens it. */
	fd = openat(rg->volumes_dirfd, map, O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		r = vmap_lock(fd);
		if (r < 0)
			return r;
	}
	r = region_lock(rg);
	if (r < 0)
		return r;
	r = catalog_volume_delete(rg->cat, id);
	if (r == 0)
		unlink_volume_files(rg, id);
	region_unlock(rg);
	return r;
}

int kiln_volume_delete(struct kiln_region *rg, const char *id)
{
	int r = volume_delete(rg, id);

	if (r == -ENOSPC && region_release_reserve(rg))
		r = volume_delete(rg, id);
	return r;
}

static int reap_one(void *opaque, const struct kiln_volume_info *v)
{
	struct kiln_region *rg = opaque;

	if (v->state == KILN_VOLUME_CREATING && volume_idle(rg, v->id)) {
		debug("volume %s: its creator died; removing it", v->id);
		if (catalog_volume_delete(rg->cat, v->id) == 0)
			unlink_volume_files(rg, v->id);
	}
	return 0;
}

void volume_reap_creating(struct kiln_region *rg)
{
	catalog_volume_list(rg->cat, reap_one, rg);
}

int kiln_volume_describe(struct kiln_region *rg, const char *id, struct kiln_volume_info *ret_info)
{
	struct kiln_volume_info info;
	int r;

	if (!kiln_id_valid(id, "vol"))
		return -EINVAL;
	r = catalog_volume_get(rg->cat, id, &info);
	if (r < 0)
		return lookup_error(rg, id, r);
	info.state = info.state == KILN_VOLUME_AVAILABLE && !volume_idle(rg, id)
		? KILN_VOLUME_IN_USE : info.state;
	{
		CLEANUP_FREE char *map = volume_file(id, "map");
		struct vmap *m;

		if (map && vmap_open(rg->volumes_dirfd, map, false, &m) == 0) {
			for (uint64_t i = 0; i < m->nchunks; i++)
				info.dirty_chunks += vmap_dirty(m, i);
			vmap_close(m);
		}
	}
	*ret_info = info;
	return 0;
}

struct list_ctx {
	struct kiln_region *rg;
	int (*fn)(void *opaque, const struct kiln_volume_info *info);
	void *opaque;
};

static int list_one(void *opaque, const struct kiln_volume_info *v)
{
	struct list_ctx *l = opaque;
	struct kiln_volume_info info;

	if (kiln_volume_describe(l->rg, v->id, &info) < 0)
		info = *v;
	return l->fn(l->opaque, &info);
}

int kiln_volume_list(struct kiln_region *rg,
		     int (*fn)(void *opaque, const struct kiln_volume_info *info), void *opaque)
{
	struct list_ctx l = { rg, fn, opaque };

	return catalog_volume_list(rg->cat, list_one, &l);
}

/* ---- open / close ---------------------------------------------------- */

static int punch(struct kiln_volume *v, uint64_t off, uint64_t len);

/* After a crash the overlay may hold bytes a writer never flushed, under
 * chunks the map still calls ZERO. Writes into a ZERO chunk trust its
 * range to be a hole, so make it one again. */
static int punch_zero_chunks(struct kiln_volume *v)
{
	uint32_t cs = v->map->chunk_size;

	for (uint64_t i = 0; i < v->map->nchunks;) {
		uint64_t j = i;
		int r;

		while (j < v->map->nchunks && vmap_state(v->map, j) == CHUNK_ZERO)
			j++;
		if (j > i) {
			r = punch(v, i * cs, MIN(j * (uint64_t)cs, v->map->size) - i * cs);
			if (r < 0)
				return r;
			i = j;
		} else {
			i++;
		}
	}
	return 0;
}

int kiln_volume_open(struct kiln_region *rg, const char *id, unsigned flags,
		     struct kiln_volume **ret_volume)
{
	struct kiln_volume *v;
	struct kiln_volume_info info;
	CLEANUP_FREE char *map = NULL, *data = NULL, *par = NULL;
	bool writable = flags & KILN_OPEN_WRITE;
	int r;

	if (!kiln_id_valid(id, "vol"))
		return -EINVAL;
	r = catalog_volume_get(rg->cat, id, &info);
	if (r < 0)
		return lookup_error(rg, id, r);
	map = volume_file(id, "map");
	data = volume_file(id, "data");
	par = volume_file(id, "parent");
	v = calloc(1, sizeof *v);
	if (!map || !data || !par || !v) {
		free(v);
		return -ENOMEM;
	}
	v->region = rg;
	v->overlay_fd = -1;
	v->writable = writable;
	snprintf(v->id, sizeof v->id, "%s", id);
	snprintf(v->source_snapshot, sizeof v->source_snapshot, "%s", info.snapshot_id);
	pthread_rwlock_init(&v->io_lock, NULL);
	pthread_mutex_init(&v->map_lock, NULL);
	pthread_mutex_init(&v->flush_lock, NULL);
	for (int i = 0; i < CHUNK_LOCKS; i++)
		pthread_mutex_init(&v->chunk_locks[i], NULL);

	r = vmap_open(rg->volumes_dirfd, map, writable, &v->map);
	if (r < 0)
		goto out_close;
	v->overlay_fd = openat(rg->volumes_dirfd, data, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (v->overlay_fd < 0) {
		r = errno == ENOENT ? -EBADMSG : -errno;
		goto out_close;
	}
	r = manifest_read(rg->volumes_dirfd, par, &v->parent);
	if (r == -ENOENT) {
		v->parent = NULL;
	} else if (r < 0) {
		goto out_close;
	} else if (v->parent->chunk_size != v->map->chunk_size) {
		r = -EBADMSG;
		goto out_close;
	}
	for (uint64_t i = 0; i < v->map->nchunks; i++) {
		if (vmap_state(v->map, i) == CHUNK_BASE &&
		    (!v->parent || i >= v->parent->nchunks || chunk_id_is_zero(v->parent->ids[i]))) {
			r = -EBADMSG;       /* BASE with nothing to read through to */
			goto out_close;
		}
	}
	v->zero_chunk = calloc(1, v->map->chunk_size);
	if (!v->zero_chunk) {
		r = -ENOMEM;
		goto out_close;
	}
	if (v->map->was_unclean) {
		r = punch_zero_chunks(v);
		if (r < 0)
			goto out_close;
	}
	*ret_volume = v;
	return 0;
out_close:
	kiln_volume_close(v);
	return r;
}

int kiln_snapshot_open(struct kiln_region *rg, const char *snapshot_id, struct kiln_volume **ret_volume)
{
	struct kiln_volume *v = calloc(1, sizeof *v);
	int r;

	if (!v)
		return -ENOMEM;
	v->region = rg;
	v->overlay_fd = -1;
	snprintf(v->id, sizeof v->id, "%s", snapshot_id);
	pthread_rwlock_init(&v->io_lock, NULL);
	pthread_mutex_init(&v->map_lock, NULL);
	pthread_mutex_init(&v->flush_lock, NULL);
	for (int i = 0; i < CHUNK_LOCKS; i++)
		pthread_mutex_init(&v->chunk_locks[i], NULL);
	r = snapshot_manifest(rg, snapshot_id, &v->parent);
	if (r < 0)
		goto out_close;
	v->map = vmap_from_manifest(v->parent);
	v->zero_chunk = calloc(1, v->parent->chunk_size);
	if (!v->map || !v->zero_chunk) {
		r = -ENOMEM;
		goto out_close;
	}
	*ret_volume = v;
	return 0;
out_close:
	kiln_volume_close(v);
	return r;
}

int kiln_volume_close(struct kiln_volume *v)
{
	int r = 0;

	if (!v)
		return 0;
	if (v->writable && v->overlay_fd >= 0 && fdatasync(v->overlay_fd) < 0)
		r = -errno;
	if (v->map) {
		int r2 = vmap_close(v->map);     /* syncs and marks clean */

		if (r == 0)
			r = r2;
	}
	if (v->overlay_fd >= 0)
		close(v->overlay_fd);
	precap_free(v);
	manifest_free(v->parent);
	free(v->zero_chunk);
	pthread_rwlock_destroy(&v->io_lock);
	pthread_mutex_destroy(&v->map_lock);
	pthread_mutex_destroy(&v->flush_lock);
	for (int i = 0; i < CHUNK_LOCKS; i++)
		pthread_mutex_destroy(&v->chunk_locks[i]);
	free(v);
	return r;
}

uint64_t kiln_volume_size(const struct kiln_volume *v)
{
	return v->map->size;
}

uint32_t kiln_volume_chunk_size(const struct kiln_volume *v)
{
	return v->map->chunk_size;
}

const char *kiln_volume_id(const struct kiln_volume *v)
{
	return v->id;
}

/* ---- I/O ------------------------------------------------------------- */

/* An I/O plan: the file requests that serve one or more volume requests,
 * run as one batch on the ring. Each thread keeps its own plan and
 * scratch buffer, so the steady state allocates nothing. */
struct io_plan {
	struct io_req *reqs;
	size_t *owner;          /* which volume request each file request serves */
	uint64_t *chunk;        /* writes: the chunk that becomes LOCAL, else UINT64_MAX */
	size_t n, cap;
	uint8_t *scratch;       /* one chunk, for BASE reads and copy-up */
	size_t scratch_len;
};

static pthread_key_t plan_key;
static pthread_once_t plan_once = PTHREAD_ONCE_INIT;

static void free_plan(void *p)
{
	struct io_plan *pl = p;

	free(pl->reqs);
	free(pl->owner);
	free(pl->chunk);
	free(pl->scratch);
	free(pl);
}

static void make_plan_key(void)
{
	pthread_key_create(&plan_key, free_plan);
}

static struct io_plan *get_plan(uint32_t chunk_size)
{
	struct io_plan *pl;

	pthread_once(&plan_once, make_plan_key);
	pl = pthread_getspecific(plan_key);
	if (!pl) {
		pl = calloc(1, sizeof *pl);
		if (!pl)
			return NULL;
		pthread_setspecific(plan_key, pl);
	}
	if (pl->scratch_len < chunk_size) {
		uint8_t *s = realloc(pl->scratch, chunk_size);

		if (!s)
			return NULL;
		pl->scratch = s;
		pl->scratch_len = chunk_size;
	}
	pl->n = 0;
	return pl;
}

static int plan_add(struct io_plan *pl, const struct io_req *q, size_t owner, uint64_t chunk)
{
	if (pl->n == pl->cap) {
		size_t ncap = pl->cap ? pl->cap * 2 : 64;
		struct io_req *r = realloc(pl->reqs, ncap * sizeof *r);
		size_t *o;
		uint64_t *c;

		if (!r)
			return -ENOMEM;
		pl->reqs = r;
		o = realloc(pl->owner, ncap * sizeof *o);
		if (!o)
			return -ENOMEM;
		pl->owner = o;
		c = realloc(pl->chunk, ncap * sizeof *c);
		if (!c)
			return -ENOMEM;
		pl->chunk = c;
		pl->cap = ncap;
	}
	pl->reqs[pl->n] = *q;
	pl->owner[pl->n] = owner;
	pl->chunk[pl->n] = chunk;
	pl->n++;
	return 0;
}

int volume_check_range(const struct kiln_volume *v, uint64_t count, uint64_t offset)
{
	if (offset > v->map->size || count > v->map->size - offset)
		return -EINVAL;
	return 0;
}

enum chunk_state volume_chunk_state(struct kiln_volume *v, uint64_t i)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
	return vmap_state(v->map, i);
}

void volume_set_state(struct kiln_volume *v, uint64_t i, enum chunk_state s, bool dirty)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
	vmap_set(v->map, i, s, dirty);
	/* The change is in the overlay: a record captured before is stale. */
	if (v->write_gen && dirty)
		v->write_gen[i]++;
}

/* A write into [off, off + len) failed or stopped part way, so some of
 * it may be in the overlay. Chunks that were ZERO or LOCAL become LOCAL
 * and dirty: the overlay holds what landed and their old bytes elsewhere
 * (a ZERO chunk's range is a hole), so each byte reads old or new, and
 * the next snapshot reads what the volume reads. A BASE chunk stays BASE:
 * its overlay range is not read until a copy-up or a whole-chunk write
 * replaces all of it, or it turns ZERO, which punches it. */
void volume_mark_failed_write(struct kiln_volume *v, uint64_t off, uint64_t len)
{
	uint32_t cs = v->map->chunk_size;

	for (uint64_t i = off / cs; len > 0 && i <= (off + len - 1) / cs; i++)
		if (volume_chunk_state(v, i) != CHUNK_BASE)
			volume_set_state(v, i, CHUNK_LOCAL, true);
}

/* Bytes of chunk i that lie inside the volume. */
uint32_t volume_chunk_len(const struct kiln_volume *v, uint64_t i)
{
	uint64_t start = i * v->map->chunk_size;

	return (uint32_t)MIN((uint64_t)v->map->chunk_size, v->map->size - start);
}

/* Plan a read: zero and BASE chunks are served now, overlay reads join
 * the plan. */
static int plan_read(struct kiln_volume *v, struct io_plan *pl, void *buf, uint64_t count,
		     uint64_t offset, size_t owner)
{
	uint32_t cs = v->map->chunk_size;
	uint8_t *out = buf;

	for (uint64_t pos = offset; pos < offset + count;) {
		uint64_t i = pos / cs, cstart = i * cs;
		uint64_t e = MIN(offset + count, cstart + cs);
		uint8_t *dst = out + (pos - offset);
		int r;

		switch (volume_chunk_state(v, i)) {
		case CHUNK_ZERO:
			memset(dst, 0, e - pos);
			break;
		case CHUNK_LOCAL: {
			struct io_req q = { .fd = v->overlay_fd, .op = IO_READ, .buf = dst,
					    .len = (uint32_t)(e - pos), .off = pos };

			/* Adjacent LOCAL chunks make one request. */
			if (pl->n > 0 && pl->owner[pl->n - 1] == owner &&
			    pl->reqs[pl->n - 1].off + pl->reqs[pl->n - 1].len == pos &&
			    (uint8_t *)pl->reqs[pl->n - 1].buf + pl->reqs[pl->n - 1].len == dst &&
			    pl->reqs[pl->n - 1].len + q.len <= (1u << 30)) {
				pl->reqs[pl->n - 1].len += q.len;
				break;
			}
			r = plan_add(pl, &q, owner, UINT64_MAX);
			if (r < 0)
				return r;
			break;
		}
		case CHUNK_BASE:
			/* A whole chunk is decoded in place, part of one by way
			 * of the scratch buffer. */
			if (pos == cstart && e - pos == cs)
				r = cs_read(v->region->cs, v->parent->ids[i], dst, cs);
			else
				r = cs_read(v->region->cs, v->parent->ids[i], pl->scratch, cs);
			if (r < 0)
				return r;
			if (!(pos == cstart && e - pos == cs))
				memcpy(dst, pl->scratch + (pos - cstart), e - pos);
			break;
		}
		pos = e;
	}
	return 0;
}

/* Overlay writes run as pwrite() on the calling thread, not on the ring:
 * ext4 cannot do a buffered write without blocking, so io_uring hands
 * each one to a kernel worker, and the worker runs the writes to one
 * file one at a time anyway. Its wakeups cost kiln-nbd a quarter of its
 * random 4 KiB write rate (60k against 80k IOPS on the bench machine).
 * Reads stay on the ring, where page cache hits complete inline. */
static int write_now(struct io_req *q)
{
	int r = pwrite_all(q->fd, q->buf, q->len, q->off);

	q->res = r < 0 ? r : (int)q->len;
	return r;
}

/* Write len bytes at off into the overlay now, in OVERLAY_PIECE pieces. */
int volume_write_pieces(struct kiln_volume *v, const uint8_t *buf, uint32_t len, uint64_t off)
{
	for (uint32_t done = 0; done < len;) {
		uint64_t pos = off + done;
		uint32_t piece = (uint32_t)MIN((uint64_t)len - done, OVERLAY_PIECE - pos % OVERLAY_PIECE);
		int r = pwrite_all(v->overlay_fd, buf + done, piece, pos);

		if (r < 0)
			return r;
		done += piece;
	}
	return 0;
}

/* First write to a BASE chunk: read it whole, lay the new bytes over it
 * and write it whole into the overlay. Called with the chunk's lock. */
static int copy_up(struct kiln_volume *v, struct io_plan *pl, uint64_t i, const uint8_t *src,
		   uint64_t s, uint64_t e)
{
	uint32_t cs = v->map->chunk_size;
	uint64_t cstart = i * cs;
	uint32_t len = volume_chunk_len(v, i);
	uint8_t *tmp = pl->scratch;
	int r;

	if (s > cstart || e < cstart + len) {
		r = cs_read(v->region->cs, v->parent->ids[i], tmp, cs);
		if (r < 0)
			return r;
	}
	if (src)
		memcpy(tmp + (s - cstart), src, e - s);
	else
		memset(tmp + (s - cstart), 0, e - s);
	r = volume_write_pieces(v, tmp, len, cstart);
	if (r < 0)
		return r;
	volume_set_state(v, i, CHUNK_LOCAL, true);
	return 0;
}

static int punch(struct kiln_volume *v, uint64_t off, uint64_t len)
{
	if (fallocate(v->overlay_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	/* No hole punching here: write the zeroes. */
	while (len > 0) {
		uint64_t n = MIN(len, (uint64_t)v->map->chunk_size);
		int r = pwrite_all(v->overlay_fd, v->zero_chunk, n, off);

		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

/* Add a write of [off, off + len) in chunk i to the plan, in
 * OVERLAY_PIECE pieces; a piece that continues the last request of the
 * same volume request, within one piece's span, extends it. */
static int plan_overlay_write(struct kiln_volume *v, struct io_plan *pl, const uint8_t *src,
			      uint64_t len, uint64_t off, size_t owner, uint64_t i)
{
	while (len > 0) {
		uint32_t piece = (uint32_t)MIN(len, OVERLAY_PIECE - off % OVERLAY_PIECE);
		struct io_req *last = pl->n ? &pl->reqs[pl->n - 1] : NULL;
		int r;

		if (src != v->zero_chunk && last && last->op == IO_WRITE &&
		    pl->owner[pl->n - 1] == owner && last->off + last->len == off &&
		    (const uint8_t *)last->buf + last->len == src && off % OVERLAY_PIECE != 0) {
			last->len += piece;
		} else {
			struct io_req q = { .fd = v->overlay_fd, .op = IO_WRITE, .buf = (void *)src,
					    .len = piece, .off = off };

			r = plan_add(pl, &q, owner, i);
			if (r < 0)
				return r;
		}
		src += piece;
		off += piece;
		len -= piece;
	}
	return 0;
}

/* Plan a write (src) or zeroing (src NULL). Zeroing and copy-up happen
 * now; plain overlay writes join the plan, and their chunks become LOCAL
 * when they complete (plan_finish). */
static int plan_write(struct kiln_volume *v, struct io_plan *pl, const void *src, uint64_t count,
		      uint64_t offset, size_t owner)
{
	uint32_t cs = v->map->chunk_size;

	for (uint64_t pos = offset; pos < offset + count;) {
		uint64_t i = pos / cs, cstart = i * cs;
		uint64_t e = MIN(offset + count, cstart + cs);
		const uint8_t *p = src ? (const uint8_t *)src + (pos - offset) : NULL;
		bool whole = pos == cstart && e == cstart + volume_chunk_len(v, i);
		pthread_mutex_t *lock = &v->chunk_locks[i % CHUNK_LOCKS];
		enum chunk_state st;
		int r = 0;

		pthread_mutex_lock(lock);
		st = volume_chunk_state(v, i);
		if (!p && (whole || st == CHUNK_ZERO)) {
			/* Zeroing: the chunk, or a range of a zero chunk. Under
			 * a BASE chunk the overlay may hold bytes of a write
			 * that failed (volume_mark_failed_write): they go too. */
			if (st == CHUNK_LOCAL || st == CHUNK_BASE)
				r = punch(v, cstart, volume_chunk_len(v, i));
			if (r == 0 && st != CHUNK_ZERO)
				volume_set_state(v, i, CHUNK_ZERO, true);
		} else if (!p && st == CHUNK_LOCAL) {
			r = punch(v, pos, e - pos);
			if (r == 0)
				volume_set_state(v, i, CHUNK_LOCAL, true);
		} else if (st == CHUNK_BASE && !whole) {
			r = copy_up(v, pl, i, p, pos, e);
		} else if (st == CHUNK_BASE) {
			/* All of a BASE chunk: written now, under its lock, so
			 * a copy-up of the chunk by another writer cannot lay
			 * the old bytes over these; LOCAL only once all of it
			 * is there. */
			r = volume_write_pieces(v, p, (uint32_t)(e - pos), pos);
			if (r == 0)
				volume_set_state(v, i, CHUNK_LOCAL, true);
		} else {
			/* Data into a LOCAL or ZERO chunk. */
			r = plan_overlay_write(v, pl, p ? p : v->zero_chunk, e - pos, pos, owner, i);
		}
		pthread_mutex_unlock(lock);
		if (r < 0)
			return r;
		pos = e;
	}
	return 0;
}

/* Run the plan; results[owner] gets the first error of its requests. */
static void plan_swap(struct io_plan *pl, size_t a, size_t b)
{
	struct io_req q = pl->reqs[a];
	size_t o = pl->owner[a];
	uint64_t c = pl->chunk[a];

	pl->reqs[a] = pl->reqs[b];
	pl->owner[a] = pl->owner[b];
	pl->chunk[a] = pl->chunk[b];
	pl->reqs[b] = q;
	pl->owner[b] = o;
	pl->chunk[b] = c;
}

/* Do the plan's writes now and its reads as one batch on the ring (the
 * reads first in the plan, to make them one array). */
static int plan_io(struct io_plan *pl)
{
	size_t nreads = 0;
	int r = 0, r2;

	for (size_t k = 0; k < pl->n; k++)
		if (pl->reqs[k].op == IO_READ)
			plan_swap(pl, nreads++, k);
	for (size_t k = nreads; k < pl->n; k++) {
		r2 = write_now(&pl->reqs[k]);
		if (r == 0)
			r = r2;
	}
	r2 = io_run(pl->reqs, nreads);
	return r ? r : r2;
}

static int plan_run(struct kiln_volume *v, struct io_plan *pl, int *results)
{
	int r = plan_io(pl);

	for (size_t k = 0; k < pl->n; k++) {
		struct io_req *q = &pl->reqs[k];
		int *res = results ? &results[pl->owner[k]] : &r;

		if (q->op == IO_WRITE && pl->chunk[k] != UINT64_MAX &&
		    (q->res < 0 || (uint32_t)q->res != q->len))
			volume_mark_failed_write(v, q->off, q->len);
		if (q->res < 0) {
			if (*res == 0)
				*res = q->res;
		} else if (q->op == IO_READ) {
			/* past the overlay's end reads as zero */
			if ((uint32_t)q->res < q->len)
				memset((uint8_t *)q->buf + q->res, 0, q->len - (uint32_t)q->res);
		} else if ((uint32_t)q->res != q->len) {
			if (*res == 0)
				*res = -EIO;
		} else if (pl->chunk[k] != UINT64_MAX) {
			/* every chunk the (merged) write covered */
			uint32_t cs = v->map->chunk_size;

			for (uint64_t c = q->off / cs; c <= (q->off + q->len - 1) / cs; c++)
				volume_set_state(v, c, CHUNK_LOCAL, true);
		}
	}
	return results ? 0 : r;
}

int volume_read_locked(struct kiln_volume *v, void *buf, uint64_t count, uint64_t offset)
{
	struct io_plan *pl = get_plan(v->map->chunk_size);
	int r;

	if (!pl)
		return -ENOMEM;
	r = plan_read(v, pl, buf, count, offset, 0);
	if (r < 0)
		return r;
	return plan_run(v, pl, NULL);
}

int volume_write_locked(struct kiln_volume *v, const void *src, uint64_t count, uint64_t offset)
{
	struct io_plan *pl = get_plan(v->map->chunk_size);
	int r;

	if (!pl)
		return -ENOMEM;
	r = plan_write(v, pl, src, count, offset, 0);
	if (r < 0)
		return r;
	return plan_run(v, pl, NULL);
}

int kiln_volume_read(struct kiln_volume *v, void *buf, uint64_t count, uint64_t offset)
{
	int r = volume_check_range(v, count, offset);

	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&v->io_lock);
	r = volume_read_locked(v, buf, count, offset);
	pthread_rwlock_unlock(&v->io_lock);
	return r;
}

static int do_write(struct kiln_volume *v, const void *buf, uint64_t count, uint64_t offset)
{
	int r = volume_check_range(v, count, offset);

	if (r < 0)
		return r;
	if (!v->writable)
		return -EROFS;
	pthread_rwlock_rdlock(&v->io_lock);
	r = volume_write_locked(v, buf, count, offset);
	pthread_rwlock_unlock(&v->io_lock);
	return r;
}

int kiln_volume_write(struct kiln_volume *v, const void *buf, uint64_t count, uint64_t offset)
{
	if (!buf)
		return -EINVAL;
	return do_write(v, buf, count, offset);
}

int kiln_volume_trim(struct kiln_volume *v, uint64_t count, uint64_t offset)
{
	return do_write(v, NULL, count, offset);
}

int kiln_volume_write_zeroes(struct kiln_volume *v, uint64_t count, uint64_t offset)
{
	return do_write(v, NULL, count, offset);
}

int kiln_volume_submit(struct kiln_volume *v, struct kiln_io *ios, size_t n)
{
	struct io_plan *pl = get_plan(v->map->chunk_size);
	int results[KILN_IO_BATCH_MAX];

	if (!pl)
		return -ENOMEM;
	if (n > ARRAY_SIZE(results))
		return -E2BIG;
	pthread_rwlock_rdlock(&v->io_lock);
	for (size_t k = 0; k < n; k++) {
		struct kiln_io *io = &ios[k];
		int r = volume_check_range(v, io->count, io->offset);

		if (r == 0 && io->op == KILN_IO_WRITE && !v->writable)
			r = -EROFS;
		if (r == 0 && !io->buf)
			r = -EINVAL;
		if (r == 0 && (io->op == KILN_IO_READ || io->op == KILN_IO_WRITE))
			r = io->op == KILN_IO_READ ? plan_read(v, pl, io->buf, io->count, io->offset, k)
						   : plan_write(v, pl, io->buf, io->count, io->offset, k);
		else if (r == 0)
			r = -EINVAL;
		results[k] = r;
	}
	plan_run(v, pl, results);
	pthread_rwlock_unlock(&v->io_lock);
	for (size_t k = 0; k < n; k++)
		ios[k].result = results[k];
	return 0;
}

/* The map's states are taken before the overlay's fdatasync and written
 * after it: a state another writer sets in between may name bytes the
 * fdatasync missed (a state never claims bytes that are not durable). */
int volume_flush_locked(struct kiln_volume *v)
{
	int r;

	if (!v->writable)
		return 0;
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->flush_lock);
	pthread_mutex_lock(&v->map_lock);
	r = vmap_stage(v->map);
	pthread_mutex_unlock(&v->map_lock);
	if (r == 0 && fdatasync(v->overlay_fd) < 0)
		r = -errno;
	if (r == 0)
		r = vmap_write_staged(v->map);
	if (r < 0) {
		pthread_mutex_lock(&v->map_lock);
		vmap_unstage(v->map);
		pthread_mutex_unlock(&v->map_lock);
	}
	return r;
}

int kiln_volume_flush(struct kiln_volume *v)
{
	int r;

	pthread_rwlock_rdlock(&v->io_lock);
	r = volume_flush_locked(v);
	pthread_rwlock_unlock(&v->io_lock);
	return r;
}

int kiln_volume_map_status(struct kiln_volume *v, uint64_t count, uint64_t offset,
			   int (*fn)(void *opaque, uint64_t offset, uint64_t length,
				     enum kiln_extent_type type),
			   void *opaque)
{
	uint32_t cs = v->map->chunk_size;
	uint64_t pos = offset, end;
	int r = volume_check_range(v, count, offset);

	if (r < 0)
		return r;
	end = offset + count;
	while (pos < end) {
		uint64_t i = pos / cs;
		enum kiln_extent_type type = KILN_EXTENT_DATA, t;
		uint64_t run_end;

		{
			ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
			for (run_end = pos;; ) {
				enum chunk_state st = vmap_state(v->map, i);

				if (st != CHUNK_ZERO)
					t = KILN_EXTENT_DATA;
				else if (v->source_snapshot[0] && v->parent && i < v->parent->nchunks)
					t = KILN_EXTENT_ZERO;    /* zero in the base snapshot */
				else
					t = KILN_EXTENT_HOLE;
				if (run_end == pos)
					type = t;
				else if (t != type)
					break;
				run_end = MIN((i + 1) * cs, end);
				i++;
				if (run_end >= end)
					break;
			}
		}
		r = fn(opaque, pos, run_end - pos, type);
		if (r)
			return r;
		pos = run_end;
	}
	return 0;
}
