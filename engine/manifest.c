/* SPDX-License-Identifier: MIT */
/* manifest.c: snapshot manifests, one chunk id (or zero) per chunk index.
 * Format in docs/FORMAT.md ("Manifest"). Written whole and atomically;
 * the trailing XXH64 catches any damage. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "internal.h"

#define MANIFEST_MAGIC "KILNMANI"
#define MANIFEST_VERSION 1
#define MANIFEST_HEADER_SIZE 96
#define MANIFEST_TRAILER_SIZE 8

struct manifest *manifest_new(uint64_t size, uint32_t chunk_size)
{
	struct manifest *m = calloc(1, sizeof *m);

	if (!m)
		return NULL;
	m->size = size;
	m->chunk_size = chunk_size;
	m->nchunks = DIV_ROUND_UP(size, chunk_size);
	m->ids = calloc(m->nchunks ? m->nchunks : 1, CHUNK_ID_SIZE);
	if (!m->ids) {
		free(m);
		return NULL;
	}
	return m;
}

void manifest_free(struct manifest *m)
{
	if (!m)
		return;
	free(m->ids);
	free(m);
}

char *manifest_name(const char *snapshot_id)
{
	char *s;

	if (asprintf(&s, "%s.manifest", snapshot_id) < 0)
		return NULL;
	return s;
}

int manifest_write(int dirfd, const char *name, const struct manifest *m)
{
	size_t body = (size_t)m->nchunks * CHUNK_ID_SIZE;
	size_t len = MANIFEST_HEADER_SIZE + body + MANIFEST_TRAILER_SIZE;
	CLEANUP_FREE uint8_t *buf = calloc(1, len);
	XXH64_canonical_t sum;
	uint32_t v32;
	uint64_t v64;

	if (!buf)
		return -ENOMEM;
	memcpy(buf, MANIFEST_MAGIC, 8);
	v32 = htole32(MANIFEST_VERSION);
	memcpy(buf + 8, &v32, 4);
	v32 = htole32(m->chunk_size);
	memcpy(buf + 12, &v32, 4);
	v64 = htole64(m->size);
	memcpy(buf + 16, &v64, 8);
	v64 = htole64(m->nchunks);
	memcpy(buf + 24, &v64, 8);
	memcpy(buf + 32, m->snapshot_id, strnlen(m->snapshot_id, 31));
	memcpy(buf + 64, m->parent_id, strnlen(m->parent_id, 31));
	memcpy(buf + MANIFEST_HEADER_SIZE, m->ids, body);
	XXH64_canonicalFromHash(&sum, XXH64(buf, len - MANIFEST_TRAILER_SIZE, 0));
	memcpy(buf + len - MANIFEST_TRAILER_SIZE, &sum, 8);
	return write_file_atomic(dirfd, name, buf, len, 0644);
}

int manifest_read(int dirfd, const char *name, struct manifest **ret_m)
{
	CLEANUP_FREE uint8_t *buf = NULL;
	size_t len;
	XXH64_canonical_t sum;
	uint32_t v32;
	uint64_t size, nchunks;
	struct manifest *m;
	int r;

	r = read_file(dirfd, name, (size_t)1 << 36, (void **)&buf, &len);
	if (r < 0)
		return r;
	if (len < MANIFEST_HEADER_SIZE + MANIFEST_TRAILER_SIZE || memcmp(buf, MANIFEST_MAGIC, 8) != 0)
		return -EBADMSG;
	memcpy(&sum, buf + len - MANIFEST_TRAILER_SIZE, 8);
	if (XXH64_hashFromCanonical(&sum) != XXH64(buf, len - MANIFEST_TRAILER_SIZE, 0))
		return -EBADMSG;
	memcpy(&v32, buf + 8, 4);
	if (le32toh(v32) != MANIFEST_VERSION)
		return -EPROTONOSUPPORT;
	memcpy(&size, buf + 16, 8);
	memcpy(&nchunks, buf + 24, 8);
	memcpy(&v32, buf + 12, 4);
	size = le64toh(size);
	nchunks = le64toh(nchunks);
	v32 = le32toh(v32);
	if (v32 < KILN_MIN_CHUNK_SIZE || v32 > KILN_MAX_CHUNK_SIZE || (v32 & (v32 - 1)) ||
	    nchunks != size / v32 + (size % v32 != 0) ||
	    len != MANIFEST_HEADER_SIZE + nchunks * CHUNK_ID_SIZE + MANIFEST_TRAILER_SIZE)
		return -EBADMSG;
	m = manifest_new(size, v32);
	if (!m)
		return -ENOMEM;
	memcpy(m->snapshot_id, buf + 32, 31);
	memcpy(m->parent_id, buf + 64, 31);
	memcpy(m->ids, buf + MANIFEST_HEADER_SIZE, nchunks * CHUNK_ID_SIZE);
	*ret_m = m;
	return 0;
}
