/* SPDX-License-Identifier: MIT */
/* cmd-store.c: kiln store stats, verify and gc, over every region or one. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-tool.h"

typedef int (*region_fn)(struct cli_ctx *ctx, struct kiln_region *region,
			 const char *name, void *opaque);

/* Calls fn for the region given with --region, or else for every region of
 * the store; stops at the first non-zero return and passes it up. Opening
 * a region failing is reported here and returns -1. */
static int for_each_region(struct cli_ctx *ctx, region_fn fn, void *opaque)
{
	struct kiln_region *region;
	char **names;
	size_t n, i;
	int r = 0;

	if (ctx->region_explicit) {
		names = xmalloc(sizeof(char *));
		names[0] = xstrdup(ctx->region_name);
		n = 1;
	} else {
		r = region_names(ctx->store, &names, &n);
		if (r < 0) {
			errmsg_errno(r, "cannot list the regions of %s", ctx->store_dir);
			return -1;
		}
	}
	for (i = 0; i < n && r == 0; i++) {
		r = kiln_region_open(ctx->store, names[i], &region);
		if (r < 0) {
			err_region_open(ctx->store_dir, names[i], r);
			r = -1;
			break;
		}
		r = fn(ctx, region, names[i], opaque);
		kiln_region_close(region);
	}
	strv_free(names, n);
	return r;
}

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 1.0;
}

/* ---- stats ---------------------------------------------------------- */

struct region_stats {
	char name[KILN_REGION_MAX];
	struct kiln_region_stats s;
};

struct stats_list {
	struct region_stats *v;
	size_t n;
};

static int add_stats(struct cli_ctx *ctx, struct kiln_region *region,
		     const char *name, void *opaque)
{
	struct stats_list *l = opaque;
	struct kiln_region_stats s;
	int r;

	(void)ctx;
	r = kiln_region_stats(region, &s);
	if (r < 0) {
		errmsg_errno(r, "cannot read the statistics of region %s", name);
		return -1;
	}
	l->v = xrealloc(l->v, l->n + 1, sizeof(*l->v));
	snprintf(l->v[l->n].name, sizeof(l->v[l->n].name), "%s", name);
	l->v[l->n].s = s;
	l->n++;
	return 0;
}

static void print_stats_json(const struct stats_list *l)
{
	const struct kiln_region_stats *s;
	struct json j;
	size_t i;

	json_init(&j, stdout);
	json_object_begin(&j);
	json_key(&j, "Regions");
	json_array_begin(&j);
	for (i = 0; i < l->n; i++) {
		s = &l->v[i].s;
		json_object_begin(&j);
		json_kv_string(&j, "Region", l->v[i].name);
		json_kv_u64(&j, "Volumes", s->volumes);
		json_kv_u64(&j, "Snapshots", s->snapshots);
		json_kv_u64(&j, "LogicalBytes", s->logical_bytes);
		json_kv_u64(&j, "DataBytes", s->data_bytes);
		json_kv_u64(&j, "UniqueChunks", s->unique_chunks);
		json_kv_u64(&j, "UniqueBytes", s->unique_bytes);
		json_kv_u64(&j, "StoredBytes", s->stored_bytes);
		json_kv_u64(&j, "PackBytes", s->pack_bytes);
		json_kv_u64(&j, "OverlayBytes", s->overlay_bytes);
		json_key(&j, "DedupRatio");
		if (s->data_bytes)
			json_ratio(&j, ratio(s->data_bytes, s->unique_bytes));
		else
			json_null(&j);  /* no snapshot yet: nothing to compare */
		json_key(&j, "CompressionRatio");
		json_ratio(&j, ratio(s->unique_bytes, s->stored_bytes));
		json_object_end(&j);
	}
	json_array_end(&j);
	json_object_end(&j);
	json_finish(&j);
}

static void print_stats_text(const struct stats_list *l)
{
	static const char *const headers[] = {
		"REGION", "VOLUMES", "SNAPSHOTS", "LOGICAL", "DATA", "UNIQUE", "STORED",
		"PACKS", "OVERLAYS", "DEDUP", "COMPRESSION",
	};
	char vols[24], snaps[24], logical[HUMAN_SIZE_MAX], data[HUMAN_SIZE_MAX];
	char unique[HUMAN_SIZE_MAX], stored[HUMAN_SIZE_MAX], packs[HUMAN_SIZE_MAX];
	char overlays[HUMAN_SIZE_MAX], dedup[24], comp[24];
	const struct kiln_region_stats *s;
	struct table tab;
	size_t i;

	table_init(&tab, 11, headers, 0x7feu);
	for (i = 0; i < l->n; i++) {
		s = &l->v[i].s;
		snprintf(vols, sizeof(vols), "%" PRIu64, s->volumes);
		snprintf(snaps, sizeof(snaps), "%" PRIu64, s->snapshots);
		if (s->data_bytes)
			snprintf(dedup, sizeof(dedup), "%.2fx", ratio(s->data_bytes, s->unique_bytes));
		else
			snprintf(dedup, sizeof(dedup), "-");
		snprintf(comp, sizeof(comp), "%.2fx", ratio(s->unique_bytes, s->stored_bytes));
		table_add(&tab, l->v[i].name, vols, snaps, human_size(s->logical_bytes, logical),
			  human_size(s->data_bytes, data), human_size(s->unique_bytes, unique),
			  human_size(s->stored_bytes, stored), human_size(s->pack_bytes, packs),
			  human_size(s->overlay_bytes, overlays), dedup, comp);
	}
	table_print(&tab, stdout);
	table_free(&tab);
}

int cmd_store_stats(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct stats_list l = { NULL, 0 };

	(void)args;
	if (for_each_region(ctx, add_stats, &l) != 0) {
		free(l.v);
		return EXIT_FAILURE;
	}
	if (ctx->output == OUTPUT_JSON)
		print_stats_json(&l);
	else
		print_stats_text(&l);
	free(l.v);
	return EXIT_SUCCESS;
}

/* ---- verify --------------------------------------------------------- */

struct problem {
	char region[KILN_REGION_MAX];
	char chunk_id[33];
	char *what;
	char **snapshots;
	size_t nsnapshots;
};

struct verify_state {
	const struct cli_ctx *ctx;
	const char *region;            /* the one being verified */
	struct progress *prog;
	struct kiln_verify_result total;
	struct problem *problems;      /* kept for JSON only */
	size_t nproblems;
};

static void report_problem(void *opaque, const struct kiln_verify_problem *kp)
{
	struct verify_state *vs = opaque;
	struct problem *p;
	const char *s;

	if (vs->ctx->output == OUTPUT_TEXT) {
		progress_clear(vs->prog);
		if (!kp->chunk_id[0]) {
			/* not a chunk's problem: a manifest's or the catalog's */
			printf("region %s: %s", vs->region, kp->what);
			for (s = kp->snapshots; s && *s; s += strlen(s) + 1)
				printf("%s%s", s == kp->snapshots ? ": " : ", ", s);
			putchar('\n');
			fflush(stdout);
			return;
		}
		printf("corrupt chunk %s: %s; used by ", kp->chunk_id,
		       kp->what ? kp->what : "corrupt");
		if (!kp->snapshots || !*kp->snapshots)
			fputs("no snapshot", stdout);
		for (s = kp->snapshots; s && *s; s += strlen(s) + 1)
			printf("%s%s", s == kp->snapshots ? "" : ", ", s);
		putchar('\n');
		fflush(stdout);
		return;
	}

	vs->problems = xrealloc(vs->problems, vs->nproblems + 1, sizeof(*vs->problems));
	p = &vs->problems[vs->nproblems++];
	snprintf(p->region, sizeof(p->region), "%s", vs->region);
	snprintf(p->chunk_id, sizeof(p->chunk_id), "%s", kp->chunk_id);
	p->what = xstrdup(kp->what ? kp->what : "corrupt");
	p->snapshots = NULL;
	p->nsnapshots = 0;
	for (s = kp->snapshots; s && *s; s += strlen(s) + 1) {
		p->snapshots = xrealloc(p->snapshots, p->nsnapshots + 1, sizeof(char *));
		p->snapshots[p->nsnapshots++] = xstrdup(s);
	}
}

/* kiln_region_verify() passes its one opaque to both callbacks */
static void verify_progress(void *opaque, uint64_t done, uint64_t total)
{
	struct verify_state *vs = opaque;

	progress_update(vs->prog, done, total);
}

static int verify_region(struct cli_ctx *ctx, struct kiln_region *region,
			 const char *name, void *opaque)
{
	struct verify_state *vs = opaque;
	struct kiln_verify_result res;
	int r;

	(void)ctx;
	vs->region = name;
	vs->prog = progress_new();
	r = kiln_region_verify(region, report_problem, vs, verify_progress, &res);
	progress_end(vs->prog);
	vs->prog = NULL;
	if (r < 0) {
		errmsg_errno(r, "cannot verify region %s", name);
		return -1;
	}
	vs->total.chunks_checked += res.chunks_checked;
	vs->total.bytes_checked += res.bytes_checked;
	vs->total.corrupt_chunks += res.corrupt_chunks;
	vs->total.manifests_checked += res.manifests_checked;
	vs->total.bad_manifests += res.bad_manifests;
	vs->total.bad_catalog |= res.bad_catalog;
	return 0;
}

static void print_verify_json(const struct verify_state *vs)
{
	const struct kiln_verify_result *t = &vs->total;
	const struct problem *p;
	struct json j;
	size_t i, k;

	json_init(&j, stdout);
	json_object_begin(&j);
	json_kv_u64(&j, "ChunksChecked", t->chunks_checked);
	json_kv_u64(&j, "BytesChecked", t->bytes_checked);
	json_kv_u64(&j, "CorruptChunks", t->corrupt_chunks);
	json_kv_u64(&j, "ManifestsChecked", t->manifests_checked);
	json_kv_u64(&j, "BadManifests", t->bad_manifests);
	json_kv_bool(&j, "BadCatalog", t->bad_catalog);
	json_key(&j, "Problems");
	json_array_begin(&j);
	for (i = 0; i < vs->nproblems; i++) {
		p = &vs->problems[i];
		json_object_begin(&j);
		json_kv_string(&j, "Region", p->region);
		json_kv_string(&j, "ChunkId", p->chunk_id);
		json_kv_string(&j, "Problem", p->what);
		/* The engine names a volume whose parent manifest holds the
		 * chunk "vol-… (parent)": in JSON, such ids are listed apart. */
		for (int vols = 0; vols < 2; vols++) {
			json_key(&j, vols ? "Volumes" : "Snapshots");
			json_array_begin(&j);
			for (k = 0; k < p->nsnapshots; k++) {
				const char *u = p->snapshots[k];
				char id[64];

				if ((strncmp(u, "vol-", 4) == 0) != vols)
					continue;
				snprintf(id, sizeof id, "%.*s", (int)strcspn(u, " "), u);
				json_string(&j, id);
			}
			json_array_end(&j);
		}
		json_object_end(&j);
	}
	json_array_end(&j);
	json_object_end(&j);
	json_finish(&j);
}

static void free_problems(struct verify_state *vs)
{
	size_t i;

	for (i = 0; i < vs->nproblems; i++) {
		free(vs->problems[i].what);
		strv_free(vs->problems[i].snapshots, vs->problems[i].nsnapshots);
	}
	free(vs->problems);
}

int cmd_store_verify(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct verify_state vs = { .ctx = ctx };
	const struct kiln_verify_result *t = &vs.total;
	int status = EXIT_SUCCESS;

	(void)args;
	if (for_each_region(ctx, verify_region, &vs) != 0) {
		free_problems(&vs);
		return EXIT_FAILURE;
	}
	if (ctx->output == OUTPUT_JSON) {
		print_verify_json(&vs);
	} else {
		printf("verified %" PRIu64 " chunks (%.1f MiB) in %" PRIu64
		       " manifests: %" PRIu64 " corrupt", t->chunks_checked,
		       (double)t->bytes_checked / MIB, t->manifests_checked,
		       t->corrupt_chunks);
		if (t->bad_manifests)
			printf(", %" PRIu64 " bad manifests", t->bad_manifests);
		if (t->bad_catalog)
			printf(", a damaged catalog");
		putchar('\n');
	}
	if (t->corrupt_chunks || t->bad_manifests || t->bad_catalog) {
		fflush(stdout);
		errmsg("store verify found problems");
		status = EXIT_FAILURE;
	}
	free_problems(&vs);
	return status;
}

/* ---- gc and recompress ---------------------------------------------- */

/* Most of level 19's gain at 15 times its speed (docs/DECISIONS.md). */
#define RECOMPRESS_LEVEL 9

struct gc_run {
	int level;                      /* recompress to this; 0: gc only */
	struct kiln_gc_result total;
};

static int gc_region(struct cli_ctx *ctx, struct kiln_region *region,
		     const char *name, void *opaque)
{
	struct gc_run *run = opaque;
	struct kiln_gc_result *total = &run->total, res;
	int r;

	(void)ctx;
	r = run->level ? kiln_region_recompress(region, run->level, &res) : kiln_region_gc(region, &res);
	if (r < 0) {
		if (r == -EBUSY)
			errmsg("region %s is busy (a snapshot or copy is running); "
			       "try again when it is done", name);
		else if (r == -EBADMSG)
			errmsg("region %s is damaged (a corrupt chunk or manifest, a chunk the index "
			       "lacks, or a catalog that cannot be read); nothing was changed "
			       "(kiln store verify says what and where)", name);
		else
			errmsg_errno(r, "cannot %s region %s",
				     run->level ? "recompress" : "collect garbage in", name);
		return -1;
	}
	total->chunks_removed += res.chunks_removed;
	total->bytes_freed += res.bytes_freed;
	total->packs_removed += res.packs_removed;
	total->packs_written += res.packs_written;
	total->chunks_kept += res.chunks_kept;
	total->chunks_recompressed += res.chunks_recompressed;
	return 0;
}

static int run_gc(struct cli_ctx *ctx, struct gc_run *run)
{
	struct kiln_gc_result *t = &run->total;
	struct json j;

	if (for_each_region(ctx, gc_region, run) != 0)
		return EXIT_FAILURE;
	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_kv_u64(&j, "ChunksRemoved", t->chunks_removed);
		json_kv_u64(&j, "BytesFreed", t->bytes_freed);
		json_kv_u64(&j, "PacksRemoved", t->packs_removed);
		json_kv_u64(&j, "PacksWritten", t->packs_written);
		json_kv_u64(&j, "ChunksKept", t->chunks_kept);
		if (run->level)
			json_kv_u64(&j, "ChunksRecompressed", t->chunks_recompressed);
		json_object_end(&j);
		json_finish(&j);
	} else {
		if (run->level)
			printf("recompressed %" PRIu64 " chunks at zstd level %d; ",
			       t->chunks_recompressed, run->level);
		printf("removed %" PRIu64 " chunks, freed %.1f MiB (%" PRIu64
		       " packs removed, %" PRIu64 " packs written, %" PRIu64
		       " chunks kept)\n", t->chunks_removed, (double)t->bytes_freed / MIB,
		       t->packs_removed, t->packs_written, t->chunks_kept);
	}
	return EXIT_SUCCESS;
}

int cmd_store_gc(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct gc_run run = { 0 };

	(void)args;
	return run_gc(ctx, &run);
}

int cmd_store_recompress(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct gc_run run = { .level = RECOMPRESS_LEVEL };
	const char *v = arg_opt(args, "zstd-level"), *why;
	long level = 0;

	if (v) {
		if (parse_int(v, -7, 19, &level, &why) == 0 && level == 0)
			why = "0 is not a level";
		if (level == 0) {
			errmsg("invalid --zstd-level '%s': %s (expected -7 to 19, not 0)", v, why);
			return EXIT_FAILURE;
		}
		run.level = (int)level;
	}
	return run_gc(ctx, &run);
}
