/* SPDX-License-Identifier: MIT */
/* snapshot.c: snapshots of volumes, and what can be done with them.
 *
 * A snapshot reads and hashes only the chunks dirty since the volume's
 * last snapshot; every other chunk keeps the id its parent manifest
 * gives it, so the new manifest is complete on its own. The order of
 * durability is DESIGN rule 1: chunk records (pack fdatasync) -> index
 * -> manifest (atomic rename) -> catalog row "completed". Only then does
 * the volume take the new manifest as its parent and forget its dirty
 * bits; a crash before that leaves the volume as it was, so the next
 * snapshot reads those chunks again (wasted work, never a lost change). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static int lookup_error(struct kiln_region *rg, const char *id, int r)
{
	return r == -ENOENT ? region_missing_id(rg, id) : r;
}

/* Hash and store the dirty LOCAL chunks listed in pending, filling their
 * ids into m. Reads of batch k+1 overlap the work on batch k. */
static int capture_dirty(struct kiln_volume *v, const uint64_t *pending, size_t npending,
			 struct manifest *m, struct capture *c, kiln_progress_fn progress, void *opaque)
{
	uint32_t cs = v->map->chunk_size;
	struct io_req reqs[2][CAPTURE_BATCH];
	size_t nb = DIV_ROUND_UP(npending, CAPTURE_BATCH);
	int r = 0;

	if (npending == 0)
		return 0;
	for (size_t b = 0; b <= nb; b++) {
		int set = (int)(b & 1);

		if (b > 0) {
			r = io_finish();
			if (r < 0)
				return r;
		}
		if (b < nb) {
			size_t n = MIN((size_t)CAPTURE_BATCH, npending - b * CAPTURE_BATCH);

			for (size_t k = 0; k < n; k++) {
				uint64_t i = pending[b * CAPTURE_BATCH + k];
				struct capture_slot *s = &c->slots[set][k];

				s->index = i;
				s->skip = false;
				reqs[set][k] = (struct io_req){ .fd = v->overlay_fd, .op = IO_READ,
								.buf = s->data, .len = cs, .off = i * cs };
			}
			r = io_start(reqs[set], n);
			if (r < 0) {
				io_finish();
				return r;
			}
		}
		if (b > 0) {
			int prev = 1 - set;
			size_t n = MIN((size_t)CAPTURE_BATCH, npending - (b - 1) * CAPTURE_BATCH);

			for (size_t k = 0; k < n; k++) {
				struct io_req *q = &reqs[prev][k];

				if (q->res < 0)
					r = q->res;
				else if ((uint32_t)q->res < cs)   /* the volume's last chunk */
					memset((uint8_t *)q->buf + q->res, 0, cs - (uint32_t)q->res);
			}
			if (r == 0)
				r = capture_batch(c, prev, n);
			if (r < 0) {
				if (b < nb)
					io_finish();
				return r;
			}
			for (size_t k = 0; k < n; k++)
				memcpy(m->ids[c->slots[prev][k].index], c->slots[prev][k].id, CHUNK_ID_SIZE);
			if (progress)
				progress(opaque, (uint64_t)MIN(b * CAPTURE_BATCH, npending) * cs, (uint64_t)npending * cs);
		}
	}
	return 0;
}

/* Point the volume at its new parent manifest: a hard link renamed over
 * vol-X.parent, then the map's parent id. */
static int adopt_parent(struct kiln_volume *v, const char *mname, struct manifest *m)
{
	struct kiln_region *rg = v->region;
	CLEANUP_FREE char *par = volume_file(v->id, "parent");
	char tmp[128];
	int r;

	if (!par)
		return -ENOMEM;
	snprintf(tmp, sizeof tmp, ".%s.tmp", par);
	unlinkat(rg->volumes_dirfd, tmp, 0);
	if (linkat(rg->manifests_dirfd, mname, rg->volumes_dirfd, tmp, 0) < 0)
		return -errno;
	if (renameat(rg->volumes_dirfd, tmp, rg->volumes_dirfd, par) < 0) {
		r = -errno;
		unlinkat(rg->volumes_dirfd, tmp, 0);
		return r;
	}
	r = fsync_dir(rg->volumes_dirfd);
	if (r < 0)
		return r;
	manifest_free(v->parent);
	v->parent = m;
	return 0;
}

/* A crash between a snapshot's catalog commit and adopt_parent() leaves
 * the volume on its older parent. The newer one is as good a base: it
 * has the same ids for every chunk not dirty since the older one, and
 * after the crash every LOCAL chunk counts as dirty. Take it now, so the
 * next snapshot names the right parent. */
static void catch_up_parent(struct kiln_volume *v)
{
	struct kiln_volume_info info;
	struct manifest *m;
	CLEANUP_FREE char *mname = NULL;

	if (catalog_volume_get(v->region->cat, v->id, &info) < 0 || !info.last_snapshot_id[0] ||
	    strcmp(info.last_snapshot_id, v->map->parent_id) == 0)
		return;
	mname = manifest_name(info.last_snapshot_id);
	if (!mname || snapshot_manifest(v->region, info.last_snapshot_id, &m) < 0)
		return;
	if (m->nchunks != v->map->nchunks || adopt_parent(v, mname, m) < 0) {
		manifest_free(m);
		return;
	}
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
	snprintf(v->map->parent_id, sizeof v->map->parent_id, "%s", info.last_snapshot_id);
	v->map->header_dirty = true;
	debug("volume %s: parent caught up to %s", v->id, info.last_snapshot_id);
}

/* The snapshot itself. Called with the region lock and the volume's I/O
 * lock held exclusively: the volume is frozen at the point in time. */
static int snapshot_locked(struct kiln_volume *v, const char *account, const char *description,
			   kiln_progress_fn progress, void *opaque, char ret_id[KILN_ID_MAX])
{
	struct kiln_region *rg = v->region;
	struct kiln_snapshot_info info = { 0 };
	struct manifest *m = NULL;
	struct capture c = { 0 };
	CLEANUP_FREE uint64_t *pending = NULL;
	CLEANUP_FREE char *mname = NULL;
	size_t npending = 0;
	bool inserted = false, writing = false, manifest_written = false;
	int r;

	catch_up_parent(v);

	m = manifest_new(v->map->size, v->map->chunk_size);
	pending = malloc((v->map->nchunks ? v->map->nchunks : 1) * sizeof *pending);
	if (!m || !pending) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < v->map->nchunks; i++) {
		bool have_parent = v->parent && i < v->parent->nchunks;

		if (!vmap_dirty(v->map, i)) {
			if (have_parent)
				memcpy(m->ids[i], v->parent->ids[i], CHUNK_ID_SIZE);
			if (vmap_state(v->map, i) == CHUNK_LOCAL && !have_parent) {
				r = -EBADMSG;   /* clean data with no id to inherit */
				goto out;
			}
		} else if (vmap_state(v->map, i) == CHUNK_LOCAL) {
			pending[npending++] = i;
		} else if (vmap_state(v->map, i) == CHUNK_BASE && have_parent) {
			memcpy(m->ids[i], v->parent->ids[i], CHUNK_ID_SIZE);
		}
	}

	r = random_id("snap", info.id);
	if (r < 0)
		goto out;
	mname = manifest_name(info.id);
	if (!mname) {
		r = -ENOMEM;
		goto out;
	}
	snprintf(m->snapshot_id, sizeof m->snapshot_id, "%s", info.id);
	snprintf(m->parent_id, sizeof m->parent_id, "%s", v->map->parent_id);
	snprintf(info.volume_id, sizeof info.volume_id, "%s", v->id);
	snprintf(info.parent_id, sizeof info.parent_id, "%s", v->map->parent_id);
	snprintf(info.owner, sizeof info.owner, "%s", account);
	snprintf(info.description, sizeof info.description, "%s", description ? description : "");
	info.size = v->map->size;
	info.chunk_size = v->map->chunk_size;
	info.state = KILN_SNAPSHOT_PENDING;
	info.start_time = now_seconds();
	info.chunks_total = v->map->nchunks;
	info.chunks_changed = npending;
	r = catalog_snapshot_insert(rg->cat, &info);
	if (r < 0)
		goto out;
	inserted = true;

	r = capture_init(&c, rg, true);
	if (r < 0)
		goto out;
	r = cs_begin(rg->cs);
	if (r < 0)
		goto out;
	writing = true;
	crash_point("snapshot:capture");
	r = precap_take(v, pending, &npending, m, &c);
	if (r == 0)
		r = capture_dirty(v, pending, npending, m, &c, progress, opaque);
	if (r < 0)
		goto out;
	r = cs_commit(rg->cs);
	if (r < 0)
		goto out;
	writing = false;

	r = manifest_write(rg->manifests_dirfd, mname, m);
	if (r < 0)
		goto out;
	manifest_written = true;
	crash_point("snapshot:manifest-written");

	/* Changed: dirty chunks whose id is not the parent's any more (a
	 * chunk written back to what it was, or zeroed, counts as it should). */
	info.chunks_changed = 0;
	for (uint64_t i = 0; i < m->nchunks; i++) {
		static const uint8_t zero[CHUNK_ID_SIZE];
		const uint8_t *old = v->parent && i < v->parent->nchunks ? v->parent->ids[i] : zero;

		info.chunks_data += !chunk_id_is_zero(m->ids[i]);
		if (vmap_dirty(v->map, i) && memcmp(old, m->ids[i], CHUNK_ID_SIZE) != 0)
			info.chunks_changed++;
	}
	info.chunks_new = c.chunks_new;
	info.bytes_new_stored = c.bytes_new_stored;
	info.state = KILN_SNAPSHOT_COMPLETED;
	r = catalog_begin(rg->cat);
	if (r == 0)
		r = catalog_snapshot_finish(rg->cat, &info);
	if (r == 0)
		r = catalog_volume_set_last_snapshot(rg->cat, v->id, info.id);
	if (r == 0)
		r = catalog_commit(rg->cat);
	if (r < 0) {
		catalog_rollback(rg->cat);
		goto out;
	}
	crash_point("snapshot:completed");

	/* The snapshot exists. From here a failure leaves the volume
	 * pointing at its old parent with its dirty bits: still correct. */
	precap_forget(v);
	if (adopt_parent(v, mname, m) == 0) {
		ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
		m = NULL;
		snprintf(v->map->parent_id, sizeof v->map->parent_id, "%s", info.id);
		v->map->header_dirty = true;
		for (uint64_t i = 0; i < v->map->nchunks; i++)
			if (vmap_dirty(v->map, i))
				vmap_set(v->map, i, vmap_state(v->map, i), false);
		/* The map names chunks LOCAL whose bytes may not be on disk
		 * yet; a state never claims data that is not durable. Else
		 * the next flush writes it, after its own fdatasync. */
		if (fdatasync(v->overlay_fd) == 0)
			vmap_sync(v->map);
	}
	memcpy(ret_id, info.id, KILN_ID_MAX);
	debug("snapshot %s of %s: %zu chunks read, %llu new, %llu bytes stored", info.id, v->id, npending,
	      (unsigned long long)info.chunks_new, (unsigned long long)info.bytes_new_stored);
	r = 0;
out:
	if (r < 0) {
		if (writing)
			cs_abort(rg->cs);
		if (manifest_written)
			unlinkat(rg->manifests_dirfd, mname, 0);
		if (inserted)
			catalog_snapshot_delete(rg->cat, info.id);
	}
	capture_free(&c);
	manifest_free(m);
	return r;
}

int kiln_volume_snapshot(struct kiln_volume *v, const char *account, const char *description,
			 kiln_progress_fn progress, void *opaque, char ret_id[KILN_ID_MAX])
{
	int r;

	if (!v->writable)
		return -EROFS;
	if (!kiln_account_valid(account) || (description && strlen(description) > 255))
		return -EINVAL;
	r = region_lock(v->region);
	if (r < 0)
		return r;
	pthread_rwlock_wrlock(&v->io_lock);     /* the point in time */
	r = snapshot_locked(v, account, description, progress, opaque, ret_id);
	pthread_rwlock_unlock(&v->io_lock);
	region_unlock(v->region);
	return r;
}

static int cmp_volume_ptr(const void *a, const void *b)
{
	const struct kiln_volume *x = *(struct kiln_volume *const *)a, *y = *(struct kiln_volume *const *)b;

	return strcmp(x->id, y->id);
}

int kiln_volumes_snapshot(struct kiln_volume *const *vols, size_t n, const char *account,
			  const char *description, char (*ret_ids)[KILN_ID_MAX])
{
	CLEANUP_FREE struct kiln_volume **sorted = calloc(n ? n : 1, sizeof *sorted);
	struct kiln_region *rg = n ? vols[0]->region : NULL;
	size_t done = 0;
	int r = 0;

	if (!sorted)
		return -ENOMEM;
	if (!kiln_account_valid(account) || (description && strlen(description) > 255))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (!vols[i]->writable)
			return -EROFS;
		if (vols[i]->region != rg)
			return -EXDEV;
		sorted[i] = vols[i];
	}
	if (n == 0)
		return 0;
	r = region_lock(rg);
	if (r < 0)
		return r;
	/* One barrier: every volume frozen before the first snapshot starts;
	 * locks taken in id order, so two barriers never deadlock. */
	qsort(sorted, n, sizeof *sorted, cmp_volume_ptr);
	for (size_t i = 0; i < n; i++)
		pthread_rwlock_wrlock(&sorted[i]->io_lock);
	for (; done < n && r == 0; done++)
		r = snapshot_locked(vols[done], account, description, NULL, NULL, ret_ids[done]);
	for (size_t i = 0; i < n; i++)
		pthread_rwlock_unlock(&sorted[i]->io_lock);
	if (r < 0) {
		/* All or nothing: take back the ones that were made. */
		for (size_t i = 0; i + 1 < done; i++)
			kiln_snapshot_delete(rg, ret_ids[i]);
	}
	region_unlock(rg);
	return r;
}

int kiln_snapshot_create(struct kiln_region *rg, const char *account, const char *volume_id,
			 const char *description, kiln_progress_fn progress, void *opaque,
			 char ret_id[KILN_ID_MAX])
{
	struct kiln_volume *v;
	int r, r2;

	if (!kiln_account_valid(account))
		return -EINVAL;
	/* Busy: its owner (kiln-nbd) takes the snapshot. An export that is
	 * closing answers nobody, and a moment later the volume is free:
	 * try both again for a while before calling the volume in use. */
	for (int tries = 0;; tries++) {
		r = kiln_volume_open(rg, volume_id, KILN_OPEN_WRITE, &v);
		if (r != -EBUSY)
			break;
		r = control_snapshot(rg, volume_id, account, description, ret_id);
		if (r != -EAGAIN)
			return r;
		if (tries == 50)
			return -EBUSY;
		usleep(20000);
	}
	if (r < 0)
		return r;
	r = kiln_volume_snapshot(v, account, description, progress, opaque, ret_id);
	r2 = kiln_volume_close(v);
	return r < 0 ? r : r2;
}

int kiln_snapshot_describe(struct kiln_region *rg, const char *id, struct kiln_snapshot_info *ret_info)
{
	int r;

	if (!kiln_id_valid(id, "snap"))
		return -EINVAL;
	r = catalog_snapshot_get(rg->cat, id, ret_info);
	if (r == 0 && ret_info->state == KILN_SNAPSHOT_PENDING) {
		region_reap_if_idle(rg);
		r = catalog_snapshot_get(rg->cat, id, ret_info);
	}
	return r < 0 ? lookup_error(rg, id, r) : 0;
}

int kiln_snapshot_list(struct kiln_region *rg,
		       int (*fn)(void *opaque, const struct kiln_snapshot_info *info), void *opaque)
{
	region_reap_if_idle(rg);
	return catalog_snapshot_list(rg->cat, fn, opaque);
}

static int first_image(void *opaque, const char *image_id)
{
	(void)opaque;
	(void)image_id;
	return 1;
}

static int snapshot_delete(struct kiln_region *rg, const char *id)
{
	struct kiln_snapshot_info info;
	CLEANUP_FREE char *mname = NULL;
	int r;

	r = kiln_snapshot_describe(rg, id, &info);
	if (r < 0)
		return r;
	mname = manifest_name(id);
	if (!mname)
		return -ENOMEM;
	/* A snapshot behind a registered image stays (EC2 does the same);
	 * catalog_snapshot_delete() checks again, in its transaction. */
	if (catalog_snapshot_images(rg->cat, id, first_image, NULL) > 0)
		return -EBUSY;
	crash_point("snapshot:delete-checked");
	r = region_lock(rg);
	if (r < 0)
		return r;
	/* Row first: a crash between the two leaves a manifest nothing
	 * names, which gc removes. Volumes made from this snapshot keep
	 * their own link to the manifest. */
	r = catalog_snapshot_delete(rg->cat, id);
	if (r == 0) {
		unlinkat(rg->manifests_dirfd, mname, 0);
		fsync_dir(rg->manifests_dirfd);
	}
	region_unlock(rg);
	return r;
}

int kiln_snapshot_delete(struct kiln_region *rg, const char *id)
{
	int r = snapshot_delete(rg, id);

	if (r == -ENOSPC && region_release_reserve(rg))
		r = snapshot_delete(rg, id);
	return r;
}

int snapshot_manifest(struct kiln_region *rg, const char *id, struct manifest **ret_m)
{
	struct kiln_snapshot_info info;
	CLEANUP_FREE char *mname = NULL;
	int r = kiln_snapshot_describe(rg, id, &info);

	if (r < 0)
		return r;
	if (info.state != KILN_SNAPSHOT_COMPLETED)
		return -EAGAIN;
	mname = manifest_name(id);
	if (!mname)
		return -ENOMEM;
	r = manifest_read(rg->manifests_dirfd, mname, ret_m);
	return r == -ENOENT ? -EBADMSG : r;
}

static void classify_manifest(void *opaque, uint64_t i, struct chunk_source *src)
{
	const struct manifest *m = opaque;

	if (chunk_id_is_zero(m->ids[i])) {
		src->kind = SRC_ZERO;
	} else {
		src->kind = SRC_STORED;
		src->id = m->ids[i];
	}
}

int kiln_snapshot_export(struct kiln_region *rg, const char *id, const char *path,
			 kiln_progress_fn progress, void *opaque)
{
	struct manifest *m;
	int r = snapshot_manifest(rg, id, &m);

	if (r < 0)
		return r;
	r = export_raw(rg, m->size, m->chunk_size, classify_manifest, m, path, progress, opaque);
	manifest_free(m);
	return r;
}

int kiln_snapshot_read(struct kiln_region *rg, const char *id, void *buf, uint64_t count,
		       uint64_t offset)
{
	struct manifest *m;
	CLEANUP_FREE uint8_t *tmp = NULL;
	uint8_t *out = buf;
	int r = snapshot_manifest(rg, id, &m);

	if (r < 0)
		return r;
	if (offset > m->size || count > m->size - offset) {
		r = -EINVAL;
		goto out;
	}
	tmp = malloc(m->chunk_size);
	if (!tmp) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t pos = offset; pos < offset + count;) {
		uint64_t i = pos / m->chunk_size, cstart = i * m->chunk_size;
		uint64_t e = MIN(offset + count, cstart + m->chunk_size);

		if (chunk_id_is_zero(m->ids[i])) {
			memset(out + (pos - offset), 0, e - pos);
		} else {
			r = cs_read(rg->cs, m->ids[i], tmp, m->chunk_size);
			if (r < 0)
				goto out;
			memcpy(out + (pos - offset), tmp + (pos - cstart), e - pos);
		}
		pos = e;
	}
	r = 0;
out:
	manifest_free(m);
	return r;
}

int kiln_snapshot_diff(struct kiln_region *rg, const char *a, const char *b,
		       int (*fn)(void *opaque, uint64_t offset, uint64_t length), void *opaque)
{
	struct manifest *ma = NULL, *mb = NULL;
	static const uint8_t zero[CHUNK_ID_SIZE];
	uint64_t n, size, run_start = 0;
	bool in_run = false;
	int r;

	r = snapshot_manifest(rg, a, &ma);
	if (r == 0)
		r = snapshot_manifest(rg, b, &mb);
	if (r < 0)
		goto out;
	if (ma->chunk_size != mb->chunk_size) {
		r = -EINVAL;
		goto out;
	}
	n = MAX(ma->nchunks, mb->nchunks);
	size = MAX(ma->size, mb->size);
	for (uint64_t i = 0; i <= n && r == 0; i++) {
		bool differs = false;

		if (i < n) {
			const uint8_t *ia = i < ma->nchunks ? ma->ids[i] : zero;
			const uint8_t *ib = i < mb->nchunks ? mb->ids[i] : zero;

			differs = memcmp(ia, ib, CHUNK_ID_SIZE) != 0;
		}
		if (differs && !in_run) {
			run_start = i;
			in_run = true;
		} else if (!differs && in_run) {
			uint64_t off = run_start * ma->chunk_size;

			r = fn(opaque, off, MIN(i * (uint64_t)ma->chunk_size, size) - off);
			in_run = false;
		}
	}
out:
	manifest_free(ma);
	manifest_free(mb);
	return r;
}
