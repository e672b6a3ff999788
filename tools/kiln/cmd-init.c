/* SPDX-License-Identifier: MIT */
/* cmd-init.c: kiln init, which creates a store. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-tool.h"

/* "64 KiB", "1 MiB": chunk sizes are powers of two from 4 KiB up */
static const char *exact_size(uint64_t n, char buf[HUMAN_SIZE_MAX])
{
	if (n >= MIB && n % MIB == 0)
		snprintf(buf, HUMAN_SIZE_MAX, "%" PRIu64 " MiB", n / MIB);
	else if (n >= KIB && n % KIB == 0)
		snprintf(buf, HUMAN_SIZE_MAX, "%" PRIu64 " KiB", n / KIB);
	else
		snprintf(buf, HUMAN_SIZE_MAX, "%" PRIu64 " bytes", n);
	return buf;
}

int cmd_init(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct kiln_store_options opts = { 0 };
	struct kiln_store *store;
	const char *v, *why;
	char size[HUMAN_SIZE_MAX], **names;
	size_t n, i;
	long level;
	int r;

	v = arg_opt(args, "chunk-size");
	if (v && parse_chunk_size(v, &opts.chunk_size, &why) < 0) {
		errmsg("invalid --chunk-size '%s': %s", v, why);
		return EXIT_FAILURE;
	}
	v = arg_opt(args, "zstd-level");
	if (v) {
		/* the engine's range: zstd's fast levels down to -7, up to 19 */
		if (parse_int(v, -7, 19, &level, &why) < 0) {
			errmsg("invalid --zstd-level '%s': %s (expected -7 to 19)", v, why);
			return EXIT_FAILURE;
		}
		opts.zstd_level = (int)level;
	}
	opts.account = ctx->account;

	r = kiln_store_init(ctx->store_dir, &opts);
	if (r == -EEXIST || r == -ENOTEMPTY) {
		errmsg("%s already exists and is not empty", ctx->store_dir);
		return EXIT_FAILURE;
	}
	if (r < 0) {
		errmsg_errno(r, "cannot create a store in %s", ctx->store_dir);
		return EXIT_FAILURE;
	}

	/* report what the store says it is, not what was asked for */
	r = kiln_store_open(ctx->store_dir, &store);
	if (r < 0) {
		errmsg_errno(r, "cannot open the new store %s", ctx->store_dir);
		return EXIT_FAILURE;
	}
	r = region_names(store, &names, &n);
	if (r < 0) {
		errmsg_errno(r, "cannot list the regions of %s", ctx->store_dir);
		kiln_store_close(store);
		return EXIT_FAILURE;
	}
	fprintf(stderr, "initialized kiln store in %s (chunk size %s, regions:",
		ctx->store_dir, exact_size(kiln_store_chunk_size(store), size));
	for (i = 0; i < n; i++)
		fprintf(stderr, " %s", names[i]);
	fputs(")\n", stderr);
	strv_free(names, n);
	kiln_store_close(store);
	return EXIT_SUCCESS;
}
