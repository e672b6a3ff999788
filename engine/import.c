/* SPDX-License-Identifier: MIT */
/* import.c: raw image file or block device -> volume.
 *
 * Into a new volume, the image's chunks go straight into the chunk store
 * (zero chunks skipped, the rest hashed and compressed on the pool) and
 * the volume is born with every chunk BASE on an "import manifest" that
 * is not a snapshot. Its first snapshot then has nothing dirty to read:
 * import + snapshot reads the image once and writes each chunk once.
 *
 * Into an existing volume, each chunk of the image is compared with the
 * volume's: by id against the parent manifest for chunks that are clean,
 * by bytes for chunks already dirty. Only chunks that differ are written
 * (and so become dirty); the volume past the image's end is zeroed, so
 * afterwards the volume reads exactly as the image padded with zeroes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static int source_size(int fd, uint64_t *ret_size)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		uint64_t n;

		if (ioctl(fd, BLKGETSIZE64, &n) < 0)
			return -errno;
		*ret_size = n;
		return 0;
	}
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	*ret_size = (uint64_t)st.st_size;
	return 0;
}

/* Where the image has holes (a sparse file), chunks that lie wholly in
 * one are zero without being read. A cursor caches the data extent found
 * by the last SEEK_DATA/SEEK_HOLE. */
struct holes {
	int fd;
	uint64_t size;
	uint64_t data_start, data_end;  /* next data extent at or after the last look */
	bool unsupported;
};

static bool in_hole(struct holes *h, uint64_t off, uint64_t len)
{
	if (h->unsupported)
		return false;
	if (off >= h->data_end) {
		off_t d = lseek(h->fd, (off_t)off, SEEK_DATA);

		if (d < 0 && errno == ENXIO) {
			h->data_start = h->data_end = h->size;  /* a hole to the end */
		} else if (d < 0) {
			h->unsupported = true;
			return false;
		} else {
			off_t e = lseek(h->fd, d, SEEK_HOLE);

			h->data_start = (uint64_t)d;
			h->data_end = e < 0 ? h->size : (uint64_t)e;
			if (h->data_end <= h->data_start)
				h->data_end = h->size;
		}
		if (h->data_start == h->size)
			h->data_end = UINT64_MAX;
	}
	return off + len <= h->data_start;
}

/* Lay out batch b in a set of slots and start reading it. Chunks wholly
 * in a hole are not read: their slot is skipped, with a zero id. */
static int start_reads(struct capture *c, int fd, uint64_t size, struct holes *h, uint64_t b,
		       int set, struct io_req *reqs, size_t *ret_n)
{
	uint32_t cs = c->chunk_size;
	uint64_t nchunks = DIV_ROUND_UP(size, cs);
	size_t n = (size_t)MIN((uint64_t)CAPTURE_BATCH, nchunks - b * CAPTURE_BATCH), nreqs = 0;

	for (size_t k = 0; k < n; k++) {
		uint64_t i = b * CAPTURE_BATCH + k;
		struct capture_slot *s = &c->slots[set][k];

		s->index = i;
		s->skip = in_hole(h, i * cs, MIN((uint64_t)cs, size - i * cs));
		if (s->skip) {
			memset(s->id, 0, CHUNK_ID_SIZE);
			continue;
		}
		reqs[nreqs++] = (struct io_req){ .fd = fd, .op = IO_READ, .buf = s->data, .len = cs,
						 .off = i * cs };
	}
	*ret_n = nreqs;
	return io_start(reqs, nreqs);
}

static int check_reads(struct io_req *reqs, size_t n, uint64_t size, uint32_t cs)
{
	for (size_t k = 0; k < n; k++) {
		struct io_req *q = &reqs[k];
		uint64_t want = MIN((uint64_t)cs, size - q->off);

		if (q->res < 0)
			return q->res;
		if ((uint64_t)q->res < want)
			return -ESTALE; /* the image shrank under us */
		if ((uint32_t)q->res < cs)
			memset((uint8_t *)q->buf + q->res, 0, cs - (uint32_t)q->res);
	}
	return 0;
}

/* Read the image a batch at a time, as a pipeline over three sets of
 * slots: while the pool hashes and compresses batch b, the caller reads
 * batch b+1 and stores batch b-1 (then hands it to fn), and then joins
 * the pool on b. */
static int scan_image(int fd, uint64_t size, struct capture *c,
		      int (*fn)(void *opaque, struct capture_slot *slots, size_t n), void *opaque,
		      kiln_progress_fn progress, void *popaque)
{
	uint32_t cs = c->chunk_size;
	uint64_t nchunks = DIV_ROUND_UP(size, cs);
	uint64_t nb = DIV_ROUND_UP(nchunks, CAPTURE_BATCH);
	struct io_req reqs[CAPTURE_SETS][CAPTURE_BATCH];
	size_t nreqs[CAPTURE_SETS] = { 0 };
	struct holes h = { .fd = fd, .size = size };
	bool reading = false, on_pool = false;
	struct stat st = { 0 };
	int r = 0;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		h.unsupported = true;
	if (nb > 0) {
		r = start_reads(c, fd, size, &h, 0, 0, reqs[0], &nreqs[0]);
		reading = true;
	}
	for (uint64_t b = 0; r == 0 && b <= nb; b++) {
		int set = (int)(b % CAPTURE_SETS), prev = (int)((b + CAPTURE_SETS - 1) % CAPTURE_SETS);

		if (b < nb) {
			r = io_finish();
			reading = false;
			if (r == 0)
				r = check_reads(reqs[set], nreqs[set], size, cs);
		}
		if (on_pool) {
			int r2 = capture_join(c);

			on_pool = false;
			if (r == 0)
				r = r2;
		}
		if (r < 0)
			break;
		if (b < nb) {
			capture_start(c, set, (size_t)MIN((uint64_t)CAPTURE_BATCH, nchunks - b * CAPTURE_BATCH));
			on_pool = true;
		}
		if (b + 1 < nb) {
			int next = (int)((b + 1) % CAPTURE_SETS);

			r = start_reads(c, fd, size, &h, b + 1, next, reqs[next], &nreqs[next]);
			reading = true;
		}
		if (r == 0 && b > 0) {
			size_t n = (size_t)MIN((uint64_t)CAPTURE_BATCH, nchunks - (b - 1) * CAPTURE_BATCH);

			r = capture_add(c, prev, n);
			if (r == 0)
				r = fn(opaque, c->slots[prev], n);
			if (progress)
				progress(popaque, MIN(b * CAPTURE_BATCH * (uint64_t)cs, size), size);
			if (b == nb / 2)
				crash_point("import:half");
		}
	}
	/* after an error: nothing may be left running into our slots */
	if (on_pool)
		capture_join(c);
	if (reading)
		io_finish();
	/* A file cut short while it was read: where it was sparse, the
	 * chunks past its new end read as holes, not as short reads. */
	if (r == 0 && S_ISREG(st.st_mode) && (fstat(fd, &st) < 0 || (uint64_t)st.st_size < size))
		r = -ESTALE;
	return r;
}

/* ---- into a new volume ----------------------------------------------- */

static int collect_ids(void *opaque, struct capture_slot *slots, size_t n)
{
	struct manifest *m = opaque;

	for (size_t k = 0; k < n; k++)
		memcpy(m->ids[slots[k].index], slots[k].id, CHUNK_ID_SIZE);
	return 0;
}

static int import_new(struct kiln_region *rg, const char *account, int fd, uint64_t size,
		      kiln_progress_fn progress, void *opaque, char ret_id[KILN_ID_MAX])
{
	struct manifest *m = manifest_new(size, kiln_store_chunk_size(rg->store));
	struct capture c;
	int r;

	if (!m)
		return -ENOMEM;
	r = capture_init(&c, rg, true);
	if (r < 0) {
		manifest_free(m);
		return r;
	}
	r = region_lock(rg);
	if (r < 0)
		goto out_free;
	r = cs_begin(rg->cs);
	if (r < 0)
		goto out_unlock;
	r = scan_image(fd, size, &c, collect_ids, m, progress, opaque);
	if (r == 0)
		r = cs_commit(rg->cs);
	if (r < 0) {
		cs_abort(rg->cs);
		goto out_unlock;
	}
	crash_point("import:chunks-stored");
	/* Chunks are durable and indexed; the volume that names them comes
	 * last, so a crash before it leaves only garbage for gc. */
	r = volume_create_locked(rg, account, size, NULL, KILN_VOLUME_AVAILABLE, m, ret_id);
	debug("import: %llu data chunks, %llu new, %llu bytes stored", (unsigned long long)c.chunks_data,
	      (unsigned long long)c.chunks_new, (unsigned long long)c.bytes_new_stored);
out_unlock:
	region_unlock(rg);
out_free:
	capture_free(&c);
	manifest_free(m);
	return r;
}

/* ---- into an existing volume ----------------------------------------- */

struct update {
	struct kiln_volume *v;
	uint8_t *tmp;
	uint64_t changed;
};

static int update_chunks(void *opaque, struct capture_slot *slots, size_t n)
{
	struct update *u = opaque;
	struct kiln_volume *v = u->v;
	uint32_t cs = v->map->chunk_size;

	for (size_t k = 0; k < n; k++) {
		struct capture_slot *s = &slots[k];
		uint64_t i = s->index, off = i * cs;
		uint32_t len = (uint32_t)MIN((uint64_t)cs, v->map->size - off);
		enum chunk_state st = vmap_state(v->map, i);
		bool zero = s->skip || chunk_id_is_zero(s->id), same;
		int r;

		if (st == CHUNK_ZERO) {
			same = zero;
		} else if (!vmap_dirty(v->map, i) && v->parent && i < v->parent->nchunks) {
			same = memcmp(s->id, v->parent->ids[i], CHUNK_ID_SIZE) == 0;
		} else {
			r = volume_read_locked(v, u->tmp, len, off);
			if (r < 0)
				return r;
			/* a skipped slot was never read: it is zero */
			same = zero ? buf_is_zero(u->tmp, len) : memcmp(u->tmp, s->data, len) == 0;
		}
		if (same)
			continue;
		r = volume_write_locked(v, zero ? NULL : s->data, len, off);
		if (r < 0)
			return r;
		u->changed++;
	}
	return 0;
}

static int import_existing(struct kiln_region *rg, const char *volume_id, int fd, uint64_t size,
			   kiln_progress_fn progress, void *opaque, uint64_t *ret_changed)
{
	struct kiln_volume *v;
	struct capture c;
	struct update u = { 0 };
	int r, r2;

	r = kiln_volume_open(rg, volume_id, KILN_OPEN_WRITE, &v);
	if (r < 0)
		return r;
	if (v->map->size < size) {
		kiln_volume_close(v);
		return -EFBIG;
	}
	r = capture_init(&c, rg, false);
	if (r < 0) {
		kiln_volume_close(v);
		return r;
	}
	u.v = v;
	u.tmp = malloc(v->map->chunk_size);
	if (!u.tmp) {
		r = -ENOMEM;
		goto out;
	}
	pthread_rwlock_rdlock(&v->io_lock);
	r = scan_image(fd, size, &c, update_chunks, &u, progress, opaque);
	if (r == 0 && size < v->map->size) {
		/* Past the image: zero, chunk by chunk, counting changes. */
		uint32_t cs = v->map->chunk_size;
		uint64_t first_whole = DIV_ROUND_UP(size, cs);

		for (uint64_t i = first_whole; i < v->map->nchunks && r == 0; i++) {
			if (vmap_state(v->map, i) == CHUNK_ZERO)
				continue;
			r = volume_write_locked(v, NULL, MIN((uint64_t)cs, v->map->size - i * cs), i * cs);
			u.changed++;
		}
	}
	if (r == 0)
		r = volume_flush_locked(v);
	pthread_rwlock_unlock(&v->io_lock);
	if (ret_changed)
		*ret_changed = u.changed;
out:
	free(u.tmp);
	capture_free(&c);
	r2 = kiln_volume_close(v);
	return r < 0 ? r : r2;
}

int kiln_volume_import(struct kiln_region *rg, const char *account, const char *path,
		       const char *volume_id, kiln_progress_fn progress, void *opaque,
		       char ret_id[KILN_ID_MAX], uint64_t *ret_changed)
{
	CLEANUP_CLOSE int fd = -1;
	uint64_t size = 0, changed = 0;
	int r;

	if (!kiln_account_valid(account))
		return -EINVAL;
	if (volume_id && *volume_id && !kiln_id_valid(volume_id, "vol"))
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	r = source_size(fd, &size);
	if (r < 0)
		return r;
	if (size == 0)
		return -EINVAL;
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (volume_id && *volume_id) {
		r = import_existing(rg, volume_id, fd, size, progress, opaque, &changed);
		if (r == 0)
			snprintf(ret_id, KILN_ID_MAX, "%s", volume_id);
	} else {
		r = import_new(rg, account, fd, size, progress, opaque, ret_id);
		changed = DIV_ROUND_UP(size, kiln_store_chunk_size(rg->store));
	}
	if (r == 0 && ret_changed)
		*ret_changed = changed;
	return r;
}
