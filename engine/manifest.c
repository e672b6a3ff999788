/* SPDX-License-Identifier: MIT */
/* manifest.c: snapshot manifests, one chunk id (or zero) per chunk index.
 * Format in docs/FORMAT.md ("Manifest"). Written whole and atomically;
 * the trailing XXH64 catches any damage. Runs of zero ids take no room,
 * so a sparse 2 GiB volume's manifest is ~50 KiB, not 512 KiB. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "internal.h"

#define MANIFEST_MAGIC "KILNMANI"
#define MANIFEST_VERSION 2     /* 1 (a plain id array) is still read */
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

/* The ids of v2: runs of (le32 zeros, le32 n, n ids). Zero chunks, most
 * of a sparse volume, cost nothing; a run never covers more than 2^32-1
 * of either. Returns the body's length; with out NULL, only counts. */
static size_t encode_runs(const struct manifest *m, uint8_t *out)
{
	size_t len = 0;

	for (uint64_t i = 0; i < m->nchunks;) {
		uint32_t zeros = 0, n = 0, v;

		while (i < m->nchunks && zeros < UINT32_MAX && chunk_id_is_zero(m->ids[i])) {
			zeros++;
			i++;
		}
		while (i + n < m->nchunks && n < UINT32_MAX && !chunk_id_is_zero(m->ids[i + n]))
			n++;
		if (out) {
			v = htole32(zeros);
			memcpy(out + len, &v, 4);
			v = htole32(n);
			memcpy(out + len + 4, &v, 4);
			memcpy(out + len + 8, m->ids[i], (size_t)n * CHUNK_ID_SIZE);
		}
		len += 8 + (size_t)n * CHUNK_ID_SIZE;
		i += n;
	}
	return len;
}

static int decode_runs(struct manifest *m, const uint8_t *p, size_t len)
{
	uint64_t i = 0;
	size_t pos = 0;

	while (i < m->nchunks) {
		uint32_t zeros, n;

		if (len - pos < 8)
			return -EBADMSG;
		memcpy(&zeros, p + pos, 4);
		memcpy(&n, p + pos + 4, 4);
		zeros = le32toh(zeros);
		n = le32toh(n);
		pos += 8;
		if ((zeros == 0 && n == 0) || zeros > m->nchunks - i || n > m->nchunks - i - zeros ||
		    (len - pos) / CHUNK_ID_SIZE < n)
			return -EBADMSG;
		i += zeros;                     /* manifest_new() zeroed them */
		memcpy(m->ids[i], p + pos, (size_t)n * CHUNK_ID_SIZE);
		for (uint32_t k = 0; k < n; k++)
			if (chunk_id_is_zero(m->ids[i + k]))
				return -EBADMSG;    /* a zero id belongs in a run of zeros */
		i += n;
		pos += (size_t)n * CHUNK_ID_SIZE;
	}
	return pos == len ? 0 : -EBADMSG;
}

int manifest_write(int dirfd, const char *name, const struct manifest *m)
{
	size_t body = encode_runs(m, NULL);
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
	encode_runs(m, buf + MANIFEST_HEADER_SIZE);
	XXH64_canonicalFromHash(&sum, XXH64(buf, len - MANIFEST_TRAILER_SIZE, 0));
	memcpy(buf + len - MANIFEST_TRAILER_SIZE, &sum, 8);
	return write_file_atomic(dirfd, name, buf, len, 0644);
}

int manifest_read(int dirfd, const char *name, struct manifest **ret_m)
{
	CLEANUP_FREE uint8_t *buf = NULL;
	size_t len, body;
	XXH64_canonical_t sum;
	uint32_t v32, version;
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
	memcpy(&version, buf + 8, 4);
	version = le32toh(version);
	if (version != 1 && version != MANIFEST_VERSION)
		return -EPROTONOSUPPORT;
	memcpy(&size, buf + 16, 8);
	memcpy(&nchunks, buf + 24, 8);
	memcpy(&v32, buf + 12, 4);
	size = le64toh(size);
	nchunks = le64toh(nchunks);
	v32 = le32toh(v32);
	body = len - MANIFEST_HEADER_SIZE - MANIFEST_TRAILER_SIZE;
	if (v32 < KILN_MIN_CHUNK_SIZE || v32 > KILN_MAX_CHUNK_SIZE || (v32 & (v32 - 1)) ||
	    nchunks != size / v32 + (size % v32 != 0) ||
	    (version == 1 && body != nchunks * CHUNK_ID_SIZE) ||
	    (version == 2 && body < 8 * (nchunks > 0)) || nchunks > body * (uint64_t)UINT32_MAX)
		return -EBADMSG;
	m = manifest_new(size, v32);
	if (!m)
		return -ENOMEM;
	memcpy(m->snapshot_id, buf + 32, 31);
	memcpy(m->parent_id, buf + 64, 31);
	if (version == 1) {
		memcpy(m->ids, buf + MANIFEST_HEADER_SIZE, nchunks * CHUNK_ID_SIZE);
	} else {
		r = decode_runs(m, buf + MANIFEST_HEADER_SIZE, body);
		if (r < 0) {
			manifest_free(m);
			return r;
		}
	}
	*ret_m = m;
	return 0;
}
