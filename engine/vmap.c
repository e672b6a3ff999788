/* SPDX-License-Identifier: MIT */
/* vmap.c: the volume map, one byte per chunk: its state (ZERO, LOCAL,
 * BASE) and whether it changed since the volume's last snapshot.
 * Format in docs/FORMAT.md ("Volume map").
 *
 * Notes on durability (DESIGN rules 2 and 3): the map is written back on
 * flush, after the overlay's data, so a state never claims data that is
 * not durable. Dirty bits may change between flushes without being
 * written, so the header carries a CLEAN flag: it is cleared (and made
 * durable) when the map is opened for writing and set again only by a
 * clean close. A map opened without CLEAN set comes from a crash, and
 * then every LOCAL chunk is counted as dirty. While open for writing the
 * file carries an OFD write lock: one owner per volume, and others can
 * test for it (F_OFD_GETLK) without taking it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "internal.h"

#define VMAP_MAGIC "KILNVMAP"
#define VMAP_VERSION 1
#define VMAP_HEADER_SIZE 4096
#define VMAP_PAGE 4096
#define VMAP_FLAG_CLEAN 0x1

int vmap_lock(int fd)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

	if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
		return errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
	return 0;
}

bool vmap_locked(int fd)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return false;
	return fl.l_type != F_UNLCK;
}

void vmap_set(struct vmap *m, uint64_t i, enum chunk_state s, bool dirty)
{
	uint8_t v = (uint8_t)s | (dirty ? VMAP_DIRTY : 0);

	if (m->entries[i] != v) {
		m->entries[i] = v;
		m->page_dirty[i / VMAP_PAGE] = 1;
	}
}

static void encode_header(const struct vmap *m, bool clean, uint8_t *h)
{
	uint32_t v32;
	uint64_t v64;
	XXH64_canonical_t sum;

	memset(h, 0, VMAP_HEADER_SIZE);
	memcpy(h, VMAP_MAGIC, 8);
	v32 = htole32(VMAP_VERSION);
	memcpy(h + 8, &v32, 4);
	v32 = htole32(clean ? VMAP_FLAG_CLEAN : 0);
	memcpy(h + 12, &v32, 4);
	v64 = htole64(m->size);
	memcpy(h + 16, &v64, 8);
	v32 = htole32(m->chunk_size);
	memcpy(h + 24, &v32, 4);
	v64 = htole64(m->nchunks);
	memcpy(h + 32, &v64, 8);
	memcpy(h + 40, m->volume_id, strnlen(m->volume_id, 31));
	memcpy(h + 72, m->parent_id, strnlen(m->parent_id, 31));
	XXH64_canonicalFromHash(&sum, XXH64(h, VMAP_HEADER_SIZE - 8, 0));
	memcpy(h + VMAP_HEADER_SIZE - 8, &sum, 8);
}

static int decode_header(struct vmap *m, const uint8_t *h, bool *ret_clean)
{
	uint32_t v32, flags;
	uint64_t v64;
	XXH64_canonical_t sum;

	if (memcmp(h, VMAP_MAGIC, 8) != 0)
		return -EBADMSG;
	memcpy(&sum, h + VMAP_HEADER_SIZE - 8, 8);
	if (XXH64_hashFromCanonical(&sum) != XXH64(h, VMAP_HEADER_SIZE - 8, 0))
		return -EBADMSG;
	memcpy(&v32, h + 8, 4);
	if (le32toh(v32) != VMAP_VERSION)
		return -EPROTONOSUPPORT;
	memcpy(&flags, h + 12, 4);
	*ret_clean = le32toh(flags) & VMAP_FLAG_CLEAN;
	memcpy(&v64, h + 16, 8);
	m->size = le64toh(v64);
	memcpy(&v32, h + 24, 4);
	m->chunk_size = le32toh(v32);
	memcpy(&v64, h + 32, 8);
	m->nchunks = le64toh(v64);
	memcpy(m->volume_id, h + 40, 31);
	memcpy(m->parent_id, h + 72, 31);
	if (m->chunk_size < KILN_MIN_CHUNK_SIZE || m->chunk_size > KILN_MAX_CHUNK_SIZE ||
	    (m->chunk_size & (m->chunk_size - 1)) ||
	    m->nchunks != m->size / m->chunk_size + (m->size % m->chunk_size != 0))
		return -EBADMSG;
	return 0;
}

static struct vmap *vmap_alloc(uint64_t nchunks)
{
	struct vmap *m = calloc(1, sizeof *m);

	if (!m)
		return NULL;
	m->fd = -1;
	m->entries = calloc(nchunks ? nchunks : 1, 1);
	m->page_dirty = calloc(nchunks / VMAP_PAGE + 1, 1);
	if (!m->entries || !m->page_dirty) {
		free(m->entries);
		free(m->page_dirty);
		free(m);
		return NULL;
	}
	return m;
}

static void vmap_free(struct vmap *m)
{
	if (!m)
		return;
	if (m->fd >= 0)
		close(m->fd);
	free(m->entries);
	free(m->page_dirty);
	free(m->staged);
	free(m->page_staged);
	free(m);
}

struct vmap *vmap_from_manifest(const struct manifest *base)
{
	struct vmap *m = vmap_alloc(base->nchunks);

	if (!m)
		return NULL;
	m->size = base->size;
	m->chunk_size = base->chunk_size;
	m->nchunks = base->nchunks;
	snprintf(m->parent_id, sizeof m->parent_id, "%s", base->snapshot_id);
	for (uint64_t i = 0; i < base->nchunks; i++)
		if (!chunk_id_is_zero(base->ids[i]))
			m->entries[i] = CHUNK_BASE;
	return m;
}

static int write_header(struct vmap *m, bool clean)
{
	uint8_t h[VMAP_HEADER_SIZE];

	encode_header(m, clean, h);
	return pwrite_all(m->fd, h, sizeof h, 0);
}

int vmap_create(int dirfd, const char *name, const char *volume_id, uint64_t size,
		uint32_t chunk_size, const struct manifest *base)
{
	uint64_t nchunks = DIV_ROUND_UP(size, chunk_size);
	struct vmap *m = vmap_alloc(nchunks);
	char tmp[256];
	int r;

	if (!m)
		return -ENOMEM;
	m->size = size;
	m->chunk_size = chunk_size;
	m->nchunks = nchunks;
	snprintf(m->volume_id, sizeof m->volume_id, "%s", volume_id);
	if (base) {
		snprintf(m->parent_id, sizeof m->parent_id, "%s", base->snapshot_id);
		for (uint64_t i = 0; i < base->nchunks && i < nchunks; i++)
			if (!chunk_id_is_zero(base->ids[i]))
				m->entries[i] = CHUNK_BASE;
	}
	snprintf(tmp, sizeof tmp, ".%s.tmp", name);
	m->fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (m->fd < 0) {
		r = -errno;
		goto out_free;
	}
	r = write_header(m, true);
	if (r == 0)
		r = pwrite_all(m->fd, m->entries, nchunks, VMAP_HEADER_SIZE);
	if (r == 0 && fsync(m->fd) < 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(dirfd, tmp, 0);
	else
		r = fsync_dir(dirfd);
out_free:
	vmap_free(m);
	return r;
}

int vmap_open(int dirfd, const char *name, bool writable, struct vmap **ret_map)
{
	uint8_t h[VMAP_HEADER_SIZE];
	struct vmap probe = { 0 };
	struct vmap *m;
	bool clean;
	CLEANUP_CLOSE int fd = openat(dirfd, name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	int r;

	if (fd < 0)
		return -errno;
	if (writable) {
		r = vmap_lock(fd);
		if (r < 0)
			return r;
	}
	r = pread_all(fd, h, sizeof h, 0);
	if (r < 0)
		return r;
	r = decode_header(&probe, h, &clean);
	if (r < 0)
		return r;
	m = vmap_alloc(probe.nchunks);
	if (!m)
		return -ENOMEM;
	free(m->entries);
	free(m->page_dirty);
	*m = probe;
	m->entries = calloc(probe.nchunks ? probe.nchunks : 1, 1);
	m->page_dirty = calloc(probe.nchunks / VMAP_PAGE + 1, 1);
	m->fd = TAKE_FD(fd);
	m->writable = writable;
	if (!m->entries || !m->page_dirty) {
		vmap_free(m);
		return -ENOMEM;
	}
	r = pread_all(m->fd, m->entries, m->nchunks, VMAP_HEADER_SIZE);
	if (r < 0)
		goto out_free;
	for (uint64_t i = 0; i < m->nchunks; i++) {
		if ((m->entries[i] & VMAP_STATE_MASK) > CHUNK_BASE ||
		    (m->entries[i] & ~(VMAP_STATE_MASK | VMAP_DIRTY))) {
			r = -EBADMSG;
			goto out_free;
		}
	}
	if (!clean && writable) {
		/* Rule 3: after a crash, anything in the overlay may have
		 * changed without its dirty bit reaching the disk. */
		m->was_unclean = true;
		for (uint64_t i = 0; i < m->nchunks; i++)
			if (vmap_state(m, i) == CHUNK_LOCAL)
				vmap_set(m, i, CHUNK_LOCAL, true);
		debug("vmap: %s was not closed cleanly: every LOCAL chunk counts as dirty", name);
	}
	if (writable) {
		/* Written back with the entries made dirty above, before
		 * the header says "not clean". */
		r = vmap_sync(m);
		if (r == 0)
			r = write_header(m, false);
		if (r == 0 && fdatasync(m->fd) < 0)
			r = -errno;
		if (r < 0)
			goto out_free;
	}
	*ret_map = m;
	return 0;
out_free:
	vmap_free(m);
	return r;
}


int vmap_stage(struct vmap *m)
{
	uint64_t npages = m->nchunks / VMAP_PAGE + 1;

	if (!m->staged) {
		m->staged = malloc(m->nchunks ? m->nchunks : 1);
		m->page_staged = calloc(npages, 1);
		if (!m->staged || !m->page_staged)
			return -ENOMEM;
	}
	for (uint64_t p = 0; p < npages; p++) {
		uint64_t start = p * VMAP_PAGE;
		uint64_t len = MIN((uint64_t)VMAP_PAGE, m->nchunks - start);

		if (!m->page_dirty[p] || len == 0)
			continue;
		memcpy(m->staged + start, m->entries + start, len);
		m->page_staged[p] = 1;
		m->page_dirty[p] = 0;
	}
	return 0;
}

int vmap_write_staged(struct vmap *m)
{
	bool any = false;
	int r;

	for (uint64_t p = 0; m->page_staged && p <= m->nchunks / VMAP_PAGE; p++) {
		uint64_t start = p * VMAP_PAGE;
		uint64_t len = MIN((uint64_t)VMAP_PAGE, m->nchunks - start);

		if (!m->page_staged[p])
			continue;
		r = pwrite_all(m->fd, m->staged + start, len, VMAP_HEADER_SIZE + start);
		if (r < 0)
			return r;
		any = true;
	}
	/* The header changes only under a snapshot, which no flush runs with. */
	if (m->header_dirty) {
		r = write_header(m, false);
		if (r < 0)
			return r;
		m->header_dirty = false;
		any = true;
	}
	if (any && fdatasync(m->fd) < 0)
		return -errno;
	if (m->page_staged)
		memset(m->page_staged, 0, m->nchunks / VMAP_PAGE + 1);
	return 0;
}

void vmap_unstage(struct vmap *m)
{
	for (uint64_t p = 0; m->page_staged && p <= m->nchunks / VMAP_PAGE; p++) {
		if (m->page_staged[p])
			m->page_dirty[p] = 1;
		m->page_staged[p] = 0;
	}
}

int vmap_sync(struct vmap *m)
{
	int r = vmap_stage(m);

	if (r == 0)
		r = vmap_write_staged(m);
	if (r < 0)
		vmap_unstage(m);
	return r;
}

int vmap_close(struct vmap *m)
{
	int r = 0;

	if (!m)
		return 0;
	if (m->writable) {
		r = vmap_sync(m);
		if (r == 0)
			r = write_header(m, true);
		if (r == 0 && fdatasync(m->fd) < 0)
			r = -errno;
	}
	vmap_free(m);
	return r;
}
