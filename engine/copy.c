/* SPDX-License-Identifier: MIT */
/* copy.c: copy an image to another region (EC2's CopyImage).
 *
 * The copy is a new image in the destination, pending until every one of
 * its snapshots is there: for each snapshot only the chunks the
 * destination lacks move, read and verified by id in the source, written
 * as stored (no recompression). The chunk store commits every few
 * thousand chunks, then the manifest, then the snapshot row together with
 * the image's mapping that names it; the image turns available last. A crash at any
 * point leaves a failed image that the same copy command takes up again:
 * committed chunks are not moved twice, finished snapshots are kept. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define COPY_BATCH 64
#define COMMIT_EVERY 4096          /* chunks between chunk store commits */

struct copy_ctx {
	struct kiln_region *src, *dst;
	struct kiln_copy_report *rep;
	kiln_progress_fn progress;
	void *opaque;
	uint64_t done, total;       /* chunks, for progress */
	uint8_t *scratch;
	void *bufs[COPY_BATCH];
};

/* Move the chunks of manifest m that dst lacks. */
static int copy_chunks(struct copy_ctx *c, const struct manifest *m)
{
	uint8_t ids[COPY_BATCH][CHUNK_ID_SIZE];
	size_t n = 0, since_commit = 0;
	uint32_t cs = m->chunk_size;
	int r = cs_begin(c->dst->cs);

	if (r < 0)
		return r;
	for (uint64_t i = 0; i <= m->nchunks; i++) {
		bool last = i == m->nchunks;

		if (!last && !chunk_id_is_zero(m->ids[i])) {
			c->rep->chunks_total++;
			if (cs_contains(c->dst->cs, m->ids[i]))
				c->rep->chunks_present++;
			else
				memcpy(ids[n++], m->ids[i], CHUNK_ID_SIZE);
		}
		if (n == COPY_BATCH || (last && n > 0)) {
			uint64_t added = 0, stored = 0;

			r = cs_copy_many(c->src->cs, c->dst->cs, n, (const uint8_t (*)[CHUNK_ID_SIZE])ids,
					 c->bufs, cs, &added, &stored);
			if (r < 0)
				goto out_abort;
			c->rep->chunks_moved += added;
			c->rep->chunks_present += n - added;   /* twice in this manifest */
			c->rep->bytes_moved += stored;
			c->rep->raw_bytes_moved += added * cs;
			since_commit += n;
			n = 0;
			if (since_commit >= COMMIT_EVERY) {
				/* A crash from here on keeps what moved so far. */
				r = cs_commit(c->dst->cs);
				if (r == 0)
					crash_point("copy:chunks-committed");
				if (r == 0)
					r = cs_begin(c->dst->cs);
				if (r < 0)
					return r;
				since_commit = 0;
			}
		}
		c->done++;
		if (c->progress && (c->done % 1024 == 0 || last))
			c->progress(c->opaque, c->done * cs, c->total * cs);  /* bytes, as the API says */
	}
	return cs_commit(c->dst->cs);
out_abort:
	cs_abort(c->dst->cs);
	return r;
}

/* Copy one snapshot: chunks, manifest, then its row and the image's
 * mapping that names it, in one transaction: a crash between the two
 * would leave a snapshot no mapping names, and the resumed copy would
 * make another. */
static int copy_snapshot(struct copy_ctx *c, const char *caller, const char *src_snap,
			 const char *dst_image, int position, const char *src_image)
{
	struct kiln_snapshot_info info = { 0 }, sinfo;
	struct manifest *m;
	CLEANUP_FREE char *mname = NULL;
	int r = kiln_snapshot_describe(c->src, src_snap, &sinfo);

	if (r < 0)
		return r;
	r = snapshot_manifest(c->src, src_snap, &m);
	if (r < 0)
		return r;
	r = copy_chunks(c, m);
	if (r < 0)
		goto out;
	r = random_id("snap", info.id);
	if (r < 0)
		goto out;
	mname = manifest_name(info.id);
	if (!mname) {
		r = -ENOMEM;
		goto out;
	}
	snprintf(m->snapshot_id, sizeof m->snapshot_id, "%s", info.id);
	m->parent_id[0] = '\0';
	r = manifest_write(c->dst->manifests_dirfd, mname, m);
	if (r < 0)
		goto out;
	crash_point("copy:manifest-written");
	snprintf(info.volume_id, sizeof info.volume_id, "vol-ffffffff");
	snprintf(info.owner, sizeof info.owner, "%s", caller);
	snprintf(info.description, sizeof info.description, "Copied for DestinationAmi %s from SourceAmi %s",
		 dst_image, src_image);
	info.size = m->size;
	info.chunk_size = m->chunk_size;
	info.state = KILN_SNAPSHOT_COMPLETED;
	info.start_time = now_seconds();
	info.chunks_total = m->nchunks;
	for (uint64_t i = 0; i < m->nchunks; i++)
		info.chunks_data += !chunk_id_is_zero(m->ids[i]);
	r = catalog_begin(c->dst->cat);
	if (r < 0) {
		unlinkat(c->dst->manifests_dirfd, mname, 0);
		goto out;
	}
	r = catalog_snapshot_insert(c->dst->cat, &info);
	if (r == 0)
		crash_point("copy:snapshot-inserted");
	if (r == 0)
		r = catalog_image_set_mapping_snapshot(c->dst->cat, dst_image, position, info.id);
	if (r == 0)
		r = catalog_commit(c->dst->cat);
	if (r < 0) {
		catalog_rollback(c->dst->cat);
		unlinkat(c->dst->manifests_dirfd, mname, 0);
		goto out;
	}
	c->rep->snapshots++;
out:
	manifest_free(m);
	return r;
}

int kiln_image_copy(struct kiln_region *src, struct kiln_region *dst, const char *caller,
		    const char *source_image_id, const char *name, const char *description,
		    bool copy_tags, kiln_progress_fn progress, void *opaque,
		    struct kiln_copy_report *ret_report, char ret_id[KILN_ID_MAX], char *wbuf, size_t wlen)
{
	struct kiln_image_info *im = calloc(1, sizeof *im), *cp = calloc(1, sizeof *cp);
	struct kiln_copy_report rep = { 0 };
	struct copy_ctx c = { .src = src, .dst = dst, .rep = &rep, .progress = progress, .opaque = opaque };
	uint32_t cs = kiln_store_chunk_size(src->store);
	bool locked = false;
	int r;

	if (wbuf && wlen)
		wbuf[0] = '\0';
	if (!im || !cp) {
		r = -ENOMEM;
		goto out;
	}
	if (!kiln_account_valid(caller)) {
		r = set_why(wbuf, wlen, -EINVAL, "'%s' is not an account", caller ? caller : "");
		goto out;
	}
	if (!name || !image_name_valid(name)) {
		r = set_why(wbuf, wlen, -EINVAL, "invalid name '%s': 3 to 128 letters, digits and "
			    "( ) [ ] space . / - ' @ _", name ? name : "");
		goto out;
	}
	if (description && strlen(description) > 255) {
		r = set_why(wbuf, wlen, -EINVAL, "the description is %zu bytes, more than 255",
			    strlen(description));
		goto out;
	}
	r = kiln_image_describe(src, caller, source_image_id, im);
	if (r < 0) {
		if (r == -ENOENT)
			set_why(wbuf, wlen, r, "image %s does not exist in %s or account %s may not launch it",
			    source_image_id, src->name, caller);
		goto out;
	}
	if (strcmp(im->state, "available") != 0) {
		r = set_why(wbuf, wlen, -EINVAL, "image %s is %s, not available", source_image_id, im->state);
		goto out;
	}
	c.scratch = malloc((size_t)COPY_BATCH * cs);
	if (!c.scratch) {
		r = -ENOMEM;
		goto out;
	}
	for (int i = 0; i < COPY_BATCH; i++)
		c.bufs[i] = c.scratch + (size_t)i * cs;

	r = region_lock(dst);
	if (r < 0)
		goto out;
	locked = true;
	/* The same copy, interrupted earlier? Take it up again. */
	if (catalog_image_find_copy(dst->cat, caller, name, source_image_id, src->name, cp->id) == 0 &&
	    catalog_image_get(dst->cat, cp->id, cp) == 0) {
		rep.resumed = true;
		r = catalog_image_set_state(dst->cat, cp->id, "pending", "");
		if (r < 0)
			goto out;
	} else {
		if (catalog_image_name_taken(dst->cat, caller, name, NULL) == 1) {
			r = set_why(wbuf, wlen, -EEXIST, "account %s already has an image named '%s' in %s", caller,
				name, dst->name);
			goto out;
		}
		*cp = *im;
		r = random_id("ami", cp->id);
		if (r < 0)
			goto out;
		snprintf(cp->name, sizeof cp->name, "%s", name);
		snprintf(cp->owner, sizeof cp->owner, "%s", caller);
		snprintf(cp->state, sizeof cp->state, "pending");
		cp->state_reason[0] = '\0';
		/* As CopyImage: the description is the one given, or none. */
		snprintf(cp->description, sizeof cp->description, "%s", description ? description : "");
		snprintf(cp->source_image_id, sizeof cp->source_image_id, "%s", source_image_id);
		snprintf(cp->source_image_region, sizeof cp->source_image_region, "%s", src->name);
		cp->creation_time = now_seconds();
		cp->public = false;             /* launch permissions do not travel */
		cp->nlaunch_users = 0;
		if (!copy_tags)
			cp->ntags = 0;
		for (size_t i = 0; i < cp->nmappings; i++)
			cp->mappings[i].snapshot_id[0] = '\0';  /* named as each arrives */
		r = catalog_image_insert(dst->cat, cp);
		if (r < 0)
			goto out;
	}
	crash_point("copy:image-pending");

	for (size_t i = 0; i < im->nmappings; i++)
		if (im->mappings[i].ebs && im->mappings[i].snapshot_id[0] && !cp->mappings[i].snapshot_id[0]) {
			struct kiln_snapshot_info s;

			if (kiln_snapshot_describe(src, im->mappings[i].snapshot_id, &s) == 0)
				c.total += s.chunks_total;
		}
	for (size_t i = 0; i < im->nmappings && i < cp->nmappings; i++) {
		if (!im->mappings[i].ebs || !im->mappings[i].snapshot_id[0] || cp->mappings[i].snapshot_id[0])
			continue;       /* nothing to copy, or copied before a crash */
		r = copy_snapshot(&c, caller, im->mappings[i].snapshot_id, cp->id, (int)i, source_image_id);
		if (r < 0) {
			char reason[256];

			snprintf(reason, sizeof reason, "copying snapshot %s failed: %s",
				 im->mappings[i].snapshot_id, strerror(-r));
			catalog_image_set_state(dst->cat, cp->id, "failed", reason);
			set_why(wbuf, wlen, r, "%s", reason);
			goto out;
		}
	}
	r = catalog_image_set_state(dst->cat, cp->id, "available", "");
	if (r < 0)
		goto out;
	memcpy(ret_id, cp->id, KILN_ID_MAX);
	if (ret_report)
		*ret_report = rep;
	debug("copy %s -> %s/%s: %llu of %llu chunks moved, %llu bytes", source_image_id, dst->name, cp->id,
	      (unsigned long long)rep.chunks_moved, (unsigned long long)rep.chunks_total,
	      (unsigned long long)rep.bytes_moved);
out:
	if (locked)
		region_unlock(dst);
	free(c.scratch);
	free(im);
	free(cp);
	return r;
}
