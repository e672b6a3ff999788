/* SPDX-License-Identifier: MIT */
/* capture.c: turn batches of raw chunks into chunk ids and stored
 * records. The CPU work (zero check first, since it is the cheapest and
 * most common answer; then the keyed hash; then compression only for
 * chunks the store lacks) runs on the pool; adding records to the pack
 * stays on the caller's thread, in order. Three sets of slots let the
 * caller read one batch and store another while the pool works on a
 * third. */
#include <errno.h>
#include <string.h>

#include "internal.h"

int capture_init(struct capture *c, struct kiln_region *region, bool store)
{
	uint32_t cs = kiln_store_chunk_size(region->store);
	size_t outcap = compress_bound(cs);
	size_t per = (size_t)cs + (store ? outcap : 0);

	memset(c, 0, sizeof *c);
	c->region = region;
	c->chunk_size = cs;
	c->store = store;
	c->space = aligned_alloc(4096, CAPTURE_SETS * CAPTURE_BATCH * ((per + 4095) & ~(size_t)4095));
	if (!c->space)
		return -ENOMEM;
	per = (per + 4095) & ~(size_t)4095;
	for (int s = 0; s < CAPTURE_SETS; s++)
		for (int i = 0; i < CAPTURE_BATCH; i++) {
			uint8_t *p = c->space + ((size_t)s * CAPTURE_BATCH + (size_t)i) * per;

			c->slots[s][i].data = p;
			c->slots[s][i].out = store ? p + cs : NULL;
		}
	return 0;
}

void capture_free(struct capture *c)
{
	free(c->space);
	c->space = NULL;
}

static void process_slot(void *arg, size_t i)
{
	struct capture_job *b = arg;
	struct capture *c = b->c;
	struct capture_slot *s = &b->slots[i];
	ssize_t n;

	s->known = false;
	s->out_len = 0;
	if (s->skip)
		return;
	if (buf_is_zero(s->data, c->chunk_size)) {
		memset(s->id, 0, CHUNK_ID_SIZE);
		return;
	}
	chunk_hash(c->region->store, s->data, c->chunk_size, s->id);
	if (!c->store)
		return;
	if (cs_contains(c->region->cs, s->id)) {
		s->known = true;
		return;
	}
	n = compress_chunk(s->data, c->chunk_size, s->out, compress_bound(c->chunk_size), b->level);
	if (n < 0)
		b->error = (int)n;
	else
		s->out_len = n;
}

void capture_start(struct capture *c, int set, size_t n)
{
	size_t work = 0;

	c->job = (struct capture_job){ c, c->slots[set], kiln_store_zstd_level(c->region->store), 0 };
	for (size_t i = 0; i < n; i++)
		work += !c->slots[set][i].skip;
	/* A batch of holes has nothing to do: no worker needs waking. */
	pool_start(process_slot, &c->job, work ? n : 0);
}

int capture_join(struct capture *c)
{
	pool_join();
	return c->job.error;
}

/* In order, on the caller's thread: the records go to the pack in the
 * order of the volume's chunks, which keeps a volume's chunks together. */
int capture_add(struct capture *c, int set, size_t n)
{
	int level = kiln_store_zstd_level(c->region->store);

	for (size_t i = 0; i < n; i++) {
		struct capture_slot *s = &c->slots[set][i];
		bool added = false;
		int r;

		if (s->skip || chunk_id_is_zero(s->id))
			continue;
		c->chunks_data++;
		if (!c->store || s->known)
			continue;
		if (s->out_len > 0)
			r = cs_add(c->region->cs, s->id, s->out, (uint32_t)s->out_len, c->chunk_size,
				   cs_flags_with_level(CS_FLAG_ZSTD, level), &added);
		else
			r = cs_add(c->region->cs, s->id, s->data, c->chunk_size, c->chunk_size,
				   cs_flags_with_level(0, level), &added);
		if (r < 0)
			return r;
		if (added) {
			c->chunks_new++;
			c->bytes_new_stored += RECORD_HEADER_SIZE +
				(uint64_t)(s->out_len > 0 ? (uint64_t)s->out_len : c->chunk_size);
		}
	}
	return 0;
}

int capture_batch(struct capture *c, int set, size_t n)
{
	int r;

	capture_start(c, set, n);
	r = capture_join(c);
	return r < 0 ? r : capture_add(c, set, n);
}
