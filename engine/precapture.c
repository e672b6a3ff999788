/* SPDX-License-Identifier: MIT */
/* precapture.c: capture a served volume's dirty chunks ahead of its
 * snapshot.
 *
 * A snapshot reads, hashes and compresses every chunk dirty since the
 * last one, with the volume's I/O frozen. A server that holds a volume
 * open for long can do most of that work earlier: it keeps in memory each
 * dirty chunk's id and compressed record, together with the chunk's
 * write generation when it was read. Every change to a chunk bumps its
 * generation once the new data is in the overlay (set_state() in
 * volume.c), so the snapshot takes a record only if no write completed
 * on its chunk since it was read; a record read while a write was in
 * flight is never taken. Nothing reaches the disk before the snapshot
 * does it, so a crash or a gc has nothing to clean up, and the dirty bits
 * stay the only truth about what changed.
 *
 * A chunk is captured the first time a pass finds it dirty. Written again
 * after that, it waits until it has gone quiet (no write between two
 * passes): a chunk the guest keeps rewriting costs one capture per
 * snapshot, not one per pass. A chunk whose bytes the store holds already
 * (a guest writing back what a snapshot has, as a copy of a whole new
 * version of an image does for most of its chunks) costs only a hash: its
 * record is its id, and the snapshot checks, under the region lock that
 * keeps gc away, that the store still has it.
 *
 * Locks, always in this order: the volume's io_lock, then precap.lock,
 * then map_lock. Compression runs with none of them held, so a snapshot
 * never waits for it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PRECAP_BUDGET ((size_t)64 << 20)      /* bytes of records kept */

struct precap_entry {
	uint32_t gen;
	uint32_t stored_len;            /* 0: a zero chunk, or one the store has */
	uint16_t flags;                 /* CS_FLAG_ZSTD, or 0 for raw */
	bool stored;                    /* the store had the id: no record kept */
	uint8_t id[CHUNK_ID_SIZE];
	uint8_t data[];
};

struct precap {
	pthread_mutex_t lock;           /* entries, bytes, epoch */
	struct precap_entry **entries;  /* by chunk */
	uint64_t nchunks;
	uint32_t *seen;                 /* generation at the last pass */
	uint8_t *tried;                 /* captured once since the snapshot */
	size_t bytes;
	uint64_t epoch;                 /* snapshots taken: older reads are void */
	uint8_t *data, *out;            /* one batch of chunks, one record */
};

static void drop(struct precap *p, uint64_t i)
{
	if (p->entries[i]) {
		p->bytes -= p->entries[i]->stored_len;
		free(p->entries[i]);
		p->entries[i] = NULL;
	}
}

static int precap_setup(struct kiln_volume *v)
{
	uint64_t n = v->map->nchunks ? v->map->nchunks : 1;
	uint32_t cs = v->map->chunk_size;
	struct precap *p;
	uint32_t *gen;

	if (v->precap)
		return 0;
	p = calloc(1, sizeof *p);
	gen = calloc(n, sizeof *gen);
	if (p) {
		p->entries = calloc(n, sizeof *p->entries);
		p->seen = malloc(n * sizeof *p->seen);
		p->tried = calloc(n, 1);
		p->data = malloc((size_t)CAPTURE_BATCH * cs);
		p->out = malloc(compress_bound(cs));
	}
	if (!p || !gen || !p->entries || !p->seen || !p->tried || !p->data || !p->out) {
		if (p) {
			free(p->entries);
			free(p->seen);
			free(p->tried);
			free(p->data);
			free(p->out);
		}
		free(p);
		free(gen);
		return -ENOMEM;
	}
	/* Nothing counts as quiet before a pass has seen it. */
	memset(p->seen, 0xff, n * sizeof *p->seen);
	p->nchunks = v->map->nchunks;
	pthread_mutex_init(&p->lock, NULL);
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
	v->write_gen = gen;
	v->precap = p;
	return 0;
}

void precap_free(struct kiln_volume *v)
{
	struct precap *p = v->precap;

	if (!p)
		return;
	for (uint64_t i = 0; i < p->nchunks; i++)
		free(p->entries[i]);
	free(p->entries);
	free(p->seen);
	free(p->tried);
	free(p->data);
	free(p->out);
	pthread_mutex_destroy(&p->lock);
	free(p);
	free(v->write_gen);
	v->precap = NULL;
	v->write_gen = NULL;
}

/* Choose up to max dirty LOCAL chunks from *cursor on that have no valid
 * record, and were either never captured since the snapshot or not
 * written since the last pass. */
static size_t choose(struct kiln_volume *v, uint64_t *cursor, size_t max, uint64_t *idx,
		     uint32_t *gen)
{
	struct precap *p = v->precap;
	size_t n = 0;

	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&v->map_lock);
	for (; *cursor < v->map->nchunks && n < max; (*cursor)++) {
		uint64_t i = *cursor;
		uint32_t g = v->write_gen[i];
		bool quiet;

		if (!vmap_dirty(v->map, i) || vmap_state(v->map, i) != CHUNK_LOCAL) {
			p->seen[i] = g;
			continue;
		}
		if (p->entries[i] && p->entries[i]->gen == g)
			continue;
		quiet = p->seen[i] == g;
		p->seen[i] = g;
		if (!quiet && p->tried[i])
			continue;
		idx[n] = i;
		gen[n] = g;
		n++;
	}
	return n;
}

/* The record of one chunk read at generation gen. */
static struct precap_entry *make_entry(struct kiln_volume *v, const uint8_t *data, uint32_t gen,
				       int *ret_error)
{
	struct kiln_store *store = v->region->store;
	uint32_t cs = v->map->chunk_size;
	struct precap *p = v->precap;
	struct precap_entry *e;
	int level = kiln_store_zstd_level(store);
	uint16_t flags = cs_flags_with_level(CS_FLAG_ZSTD, level);
	const uint8_t *stored = p->out;
	uint8_t id[CHUNK_ID_SIZE] = { 0 };
	bool zero = buf_is_zero(data, cs), have = false;
	ssize_t len = 0;

	*ret_error = 0;
	if (!zero) {
		chunk_hash(store, data, cs, id);
		have = cs_contains(v->region->cs, id);
	}
	if (!zero && !have) {
		len = compress_chunk(data, cs, p->out, compress_bound(cs), level);
		if (len < 0) {
			*ret_error = (int)len;
			return NULL;
		}
		if (len == 0) {         /* incompressible: stored raw */
			stored = data;
			len = cs;
			flags = cs_flags_with_level(0, level);
		}
	}
	e = malloc(sizeof *e + (size_t)len);
	if (!e) {
		*ret_error = -ENOMEM;
		return NULL;
	}
	e->gen = gen;
	e->stored_len = (uint32_t)len;
	e->flags = flags;
	e->stored = have;
	memcpy(e->id, id, CHUNK_ID_SIZE);
	memcpy(e->data, stored, (size_t)len);
	return e;
}

int kiln_volume_precapture(struct kiln_volume *v, size_t max, size_t *ret_done)
{
	uint32_t cs;
	uint64_t cursor = 0;
	size_t done = 0;
	struct precap *p;
	int r;

	*ret_done = 0;
	if (!v->writable)
		return -EROFS;
	cs = v->map->chunk_size;
	r = precap_setup(v);
	if (r < 0)
		return r;
	p = v->precap;
	while (done < max) {
		uint64_t idx[CAPTURE_BATCH];
		uint32_t gen[CAPTURE_BATCH];
		struct io_req reqs[CAPTURE_BATCH];
		uint64_t epoch;
		size_t n;

		pthread_rwlock_rdlock(&v->io_lock);
		pthread_mutex_lock(&p->lock);
		n = p->bytes < PRECAP_BUDGET ? choose(v, &cursor, MIN(max - done, (size_t)CAPTURE_BATCH),
						      idx, gen) : 0;
		for (size_t k = 0; k < n; k++)
			reqs[k] = (struct io_req){ .fd = v->overlay_fd, .op = IO_READ,
						   .buf = p->data + k * cs, .len = cs, .off = idx[k] * cs };
		epoch = p->epoch;
		pthread_mutex_unlock(&p->lock);
		r = n ? io_run(reqs, n) : 0;
		pthread_rwlock_unlock(&v->io_lock);
		if (r < 0 || n == 0)
			break;
		for (size_t k = 0; k < n; k++) {
			struct precap_entry *e;

			if (reqs[k].res < 0 || (uint32_t)reqs[k].res > cs) {
				r = reqs[k].res < 0 ? reqs[k].res : -EIO;
				break;
			}
			/* the volume's last chunk reads short */
			memset(p->data + k * cs + reqs[k].res, 0, cs - (uint32_t)reqs[k].res);
			e = make_entry(v, p->data + k * cs, gen[k], &r);
			if (!e)
				break;
			pthread_mutex_lock(&p->lock);
			if (p->epoch == epoch) {
				p->tried[idx[k]] = 1;
				drop(p, idx[k]);
				p->entries[idx[k]] = e;
				p->bytes += e->stored_len;
				e = NULL;
				done++;
			}
			pthread_mutex_unlock(&p->lock);
			free(e);
		}
		if (r < 0)
			break;
	}
	*ret_done = done;
	if (done)
		debug("volume %s: %zu chunks captured ahead of the snapshot, %zu bytes held", v->id, done,
		      p->bytes);
	return r;
}

int precap_take(struct kiln_volume *v, uint64_t *pending, size_t *npending, struct manifest *m,
		struct capture *c)
{
	struct precap *p = v->precap;
	uint32_t cs = v->map->chunk_size;
	size_t kept = 0;
	int r = 0;

	if (!p)
		return 0;
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&p->lock);
	for (size_t k = 0; k < *npending; k++) {
		uint64_t i = pending[k];
		struct precap_entry *e = p->entries[i];
		bool valid;

		pthread_mutex_lock(&v->map_lock);
		valid = e && e->gen == v->write_gen[i];
		pthread_mutex_unlock(&v->map_lock);
		/* The caller holds the region lock: no gc can take it after this. */
		if (valid && e->stored)
			valid = cs_contains(v->region->cs, e->id);
		if (!valid || r < 0) {
			pending[kept++] = i;
			continue;
		}
		memcpy(m->ids[i], e->id, CHUNK_ID_SIZE);
		if (e->stored) {
			c->chunks_data++;
		} else if (e->stored_len) {
			bool added = false;

			c->chunks_data++;
			r = cs_add(v->region->cs, e->id, e->data, e->stored_len, cs, e->flags, &added);
			if (r == 0 && added) {
				c->chunks_new++;
				c->bytes_new_stored += RECORD_HEADER_SIZE + (uint64_t)e->stored_len;
			}
			if (r < 0)
				pending[kept++] = i;
		}
	}
	if (kept < *npending)
		debug("volume %s: %zu of %zu dirty chunks were captured ahead", v->id, *npending - kept,
		      *npending);
	*npending = kept;
	return r;
}

void precap_forget(struct kiln_volume *v)
{
	struct precap *p = v->precap;

	if (!p)
		return;
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&p->lock);
	for (uint64_t i = 0; i < p->nchunks; i++)
		drop(p, i);
	memset(p->tried, 0, p->nchunks);
	p->epoch++;
}
