/* SPDX-License-Identifier: MIT */
/* cmd-snapshot.c: kiln snapshot create, describe, delete, export, diff and its attributes. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-tool.h"

#define DESCRIPTION_MAX (sizeof(((struct kiln_snapshot_info *)0)->description) - 1)

int cmd_snapshot_create(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *vol = args->argv[0];
	const char *desc = arg_opt(args, "description");
	struct progress *prog;
	char id[KILN_ID_MAX];
	struct json j;
	int r;

	if (!check_id("volume", vol))
		return EXIT_FAILURE;
	if (!desc)
		desc = "";
	if (strlen(desc) > DESCRIPTION_MAX) {
		errmsg("--description is too long (%zu bytes; at most %zu)", strlen(desc),
		       DESCRIPTION_MAX);
		return EXIT_FAILURE;
	}

	prog = progress_new();
	r = kiln_snapshot_create(ctx->region, ctx->account, vol, desc, progress_update,
				 prog, id);
	progress_end(prog);
	if (r < 0) {
		err_id(ctx, "volume", vol, r);
		return EXIT_FAILURE;
	}

	if (ctx->output == OUTPUT_TEXT) {
		printf("%s\n", id);
		return EXIT_SUCCESS;
	}
	/* a snapshot is all-or-nothing: once create returns, it is completed */
	json_init(&j, stdout);
	json_object_begin(&j);
	json_kv_string(&j, "SnapshotId", id);
	json_kv_string(&j, "State", snapshot_state_name(KILN_SNAPSHOT_COMPLETED));
	json_object_end(&j);
	json_finish(&j);
	return EXIT_SUCCESS;
}

struct snapshot_list {
	struct kiln_snapshot_info *v;
	size_t n;
	const struct cli_ctx *ctx;      /* only what its account may use */
};

/* The snapshot, as the caller's account sees it: one it may not use
 * (another account's, not shared with it) does not exist for it. */
static int describe_usable(const struct cli_ctx *ctx, const char *snap, struct kiln_snapshot_info *si)
{
	int r = kiln_snapshot_describe(ctx->region, snap, si);

	if (r == 0 && !kiln_snapshot_usable(ctx->region, ctx->account, snap))
		r = -ENOENT;
	return r;
}

static int add_snapshot(void *opaque, const struct kiln_snapshot_info *info)
{
	struct snapshot_list *l = opaque;

	if (l->ctx && !kiln_snapshot_usable(l->ctx->region, l->ctx->account, info->id))
		return 0;       /* another account's, not shared with this one */
	l->v = xrealloc(l->v, l->n + 1, sizeof(*l->v));
	l->v[l->n++] = *info;
	return 0;
}

static void print_snapshots_json(const struct snapshot_list *l)
{
	const struct kiln_snapshot_info *s;
	char t[ISO_TIME_MAX];
	struct json j;
	size_t i;

	json_init(&j, stdout);
	json_object_begin(&j);
	json_key(&j, "Snapshots");
	json_array_begin(&j);
	for (i = 0; i < l->n; i++) {
		s = &l->v[i];
		json_object_begin(&j);
		json_kv_string(&j, "SnapshotId", s->id);
		json_kv_string(&j, "VolumeId", s->volume_id);
		json_kv_u64(&j, "VolumeSize", gib_round_up(s->size));
		json_kv_u64(&j, "SizeBytes", s->size);
		json_kv_string(&j, "State", snapshot_state_name(s->state));
		json_kv_string(&j, "StartTime", iso_time(s->start_time, true, t));
		json_kv_string(&j, "Description", s->description);
		json_kv_string(&j, "OwnerId", s->owner);
		json_kv_string(&j, "ParentSnapshotId", s->parent_id);
		json_kv_u64(&j, "ChunkSize", s->chunk_size);
		json_kv_u64(&j, "ChunksTotal", s->chunks_total);
		json_kv_u64(&j, "ChunksData", s->chunks_data);
		json_kv_u64(&j, "ChunksChanged", s->chunks_changed);
		json_kv_u64(&j, "ChunksNew", s->chunks_new);
		json_kv_u64(&j, "BytesNewStored", s->bytes_new_stored);
		json_object_end(&j);
	}
	json_array_end(&j);
	json_object_end(&j);
	json_finish(&j);
}

static void print_snapshots_text(const struct snapshot_list *l)
{
	static const char *const headers[] = {
		"SNAPSHOT ID", "VOLUME ID", "SIZE", "STATE", "STARTED", "ADDED", "DESCRIPTION",
	};
	char size[HUMAN_SIZE_MAX], added[HUMAN_SIZE_MAX], t[ISO_TIME_MAX];
	const struct kiln_snapshot_info *s;
	struct table tab;
	size_t i;

	if (l->n == 0)
		return;
	table_init(&tab, 7, headers, 1u << 2 | 1u << 5);
	for (i = 0; i < l->n; i++) {
		s = &l->v[i];
		table_add(&tab, s->id, s->volume_id, human_size(s->size, size),
			  snapshot_state_name(s->state), iso_time(s->start_time, false, t),
			  human_size(s->bytes_new_stored, added), s->description);
	}
	table_print(&tab, stdout);
	table_free(&tab);
}

int cmd_snapshot_describe(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct snapshot_list l = { .ctx = ctx };
	struct kiln_snapshot_info one;
	int r;

	/* the ids given, in their order; one that does not exist (for this
	 * account) fails the whole describe, as in EC2 */
	for (int i = 0; i < args->argc; i++) {
		const char *snap = args->argv[i];

		if (!check_id("snapshot", snap)) {
			free(l.v);
			return EXIT_FAILURE;
		}
		r = describe_usable(ctx, snap, &one);
		if (r < 0) {
			err_id(ctx, "snapshot", snap, r);
			free(l.v);
			return EXIT_FAILURE;
		}
		add_snapshot(&l, &one);
	}
	if (args->argc == 0) {
		r = kiln_snapshot_list(ctx->region, add_snapshot, &l);
		if (r < 0) {
			errmsg_errno(r, "cannot list the snapshots of region %s",
				     ctx->region_name);
			free(l.v);
			return EXIT_FAILURE;
		}
	}
	if (ctx->output == OUTPUT_JSON)
		print_snapshots_json(&l);
	else
		print_snapshots_text(&l);
	free(l.v);
	return EXIT_SUCCESS;
}

/* The snapshot, which must be the caller's (as EC2 has it for deleting
 * it and for its attributes); -1 after a message. */
static int check_owner(const struct cli_ctx *ctx, const char *snap)
{
	struct kiln_snapshot_info si;
	int r;

	if (!check_id("snapshot", snap))
		return -1;
	r = kiln_snapshot_describe(ctx->region, snap, &si);
	if (r < 0) {
		err_id(ctx, "snapshot", snap, r);
		return -1;
	}
	if (strcmp(si.owner, ctx->account) != 0) {
		err_id(ctx, "snapshot", snap, -EPERM);
		return -1;
	}
	return 0;
}

int cmd_snapshot_delete(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *snap = args->argv[0];
	int r;

	if (check_owner(ctx, snap) < 0)
		return EXIT_FAILURE;
	r = kiln_snapshot_delete(ctx->region, snap);
	if (r < 0) {
		err_id(ctx, "snapshot", snap, r);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

int cmd_snapshot_export(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *snap = args->argv[0], *path = args->argv[1];
	struct kiln_snapshot_info si;
	struct progress *prog;
	int r;

	if (!check_id("snapshot", snap))
		return EXIT_FAILURE;
	r = describe_usable(ctx, snap, &si);
	if (r < 0) {
		err_id(ctx, "snapshot", snap, r);
		return EXIT_FAILURE;
	}
	if (si.state != KILN_SNAPSHOT_COMPLETED) {
		errmsg("snapshot %s is %s, not completed", snap, snapshot_state_name(si.state));
		return EXIT_FAILURE;
	}
	if (check_output(path) < 0)
		return EXIT_FAILURE;

	prog = progress_new();
	r = kiln_snapshot_export(ctx->region, snap, path, progress_update, prog);
	progress_end(prog);
	if (r < 0) {
		if (r == -EXDEV || r == -EBADMSG)
			err_id(ctx, "snapshot", snap, r);
		else
			errmsg_errno(r, "cannot export snapshot %s to %s%s", snap, path,
				     r == -EFBIG ? " (a device smaller than the snapshot; nothing was written)" : "");
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

struct diff_out {
	const struct cli_ctx *ctx;
	struct json j;
};

static int print_range(void *opaque, uint64_t offset, uint64_t length)
{
	struct diff_out *d = opaque;

	if (d->ctx->output == OUTPUT_TEXT) {
		printf("%" PRIu64 " %" PRIu64 "\n", offset, length);
		return 0;
	}
	json_object_begin(&d->j);
	json_kv_u64(&d->j, "Offset", offset);
	json_kv_u64(&d->j, "Length", length);
	json_object_end(&d->j);
	return 0;
}

int cmd_snapshot_diff(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *a = args->argv[0], *b = args->argv[1];
	struct kiln_snapshot_info ia, ib;
	struct diff_out d = { .ctx = ctx };
	char *buf = NULL;
	size_t len = 0;
	FILE *mem = NULL;
	int r;

	if (!check_id("snapshot", a) || !check_id("snapshot", b))
		return EXIT_FAILURE;
	r = describe_usable(ctx, a, &ia);
	if (r < 0) {
		err_id(ctx, "snapshot", a, r);
		return EXIT_FAILURE;
	}
	r = describe_usable(ctx, b, &ib);
	if (r < 0) {
		err_id(ctx, "snapshot", b, r);
		return EXIT_FAILURE;
	}
	if (ia.chunk_size != ib.chunk_size) {
		errmsg("snapshots %s and %s have different chunk sizes (%" PRIu32 " and %"
		       PRIu32 " bytes)", a, b, ia.chunk_size, ib.chunk_size);
		return EXIT_FAILURE;
	}

	/* JSON is built in memory so that a failure prints none of it */
	if (ctx->output == OUTPUT_JSON) {
		mem = open_memstream(&buf, &len);
		if (!mem) {
			errmsg_errno(-errno, "open_memstream");
			return EXIT_FAILURE;
		}
		json_init(&d.j, mem);
		json_object_begin(&d.j);
		json_key(&d.j, "ChangedBlocks");
		json_array_begin(&d.j);
	}
	r = kiln_snapshot_diff(ctx->region, a, b, print_range, &d);
	if (r < 0) {
		if (mem)
			fclose(mem);
		free(buf);
		errmsg_errno(r, "cannot compare snapshots %s and %s", a, b);
		return EXIT_FAILURE;
	}
	if (mem) {
		json_array_end(&d.j);
		json_kv_u64(&d.j, "BlockSize", ib.chunk_size);
		json_kv_u64(&d.j, "VolumeSize", ib.size);
		json_object_end(&d.j);
		json_finish(&d.j);
		if (fclose(mem) != 0) {
			errmsg_errno(-errno, "cannot buffer the output");
			free(buf);
			return EXIT_FAILURE;
		}
		fwrite(buf, 1, len, stdout);
		free(buf);
	}
	return EXIT_SUCCESS;
}

/* ---- createVolumePermission ------------------------------------------ */

int cmd_snapshot_modify_attribute(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *snap = args->argv[0];
	struct perm_change pc;
	int r;

	if (!check_id("snapshot", snap))
		return EXIT_FAILURE;
	if (perm_change_parse("create-volume-permission", arg_opt(args, "create-volume-permission"),
			      &pc) < 0)
		return EXIT_FAILURE;
	r = kiln_snapshot_modify_create_volume_permission(ctx->region, ctx->account, snap,
							  pc.add, pc.nadd, pc.add_all,
							  pc.remove, pc.nremove, pc.remove_all);
	perm_change_free(&pc);
	if (r < 0) {
		err_id(ctx, "snapshot", snap, r);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

struct permission_list {
	bool all;
	char **users;
	size_t n;
};

static int add_permission(void *opaque, const char *who)
{
	struct permission_list *l = opaque;

	if (strcmp(who, "all") == 0) {
		l->all = true;
		return 0;
	}
	l->users = xrealloc(l->users, l->n + 1, sizeof(*l->users));
	l->users[l->n++] = xstrdup(who);
	return 0;
}

int cmd_snapshot_describe_attribute(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *snap = args->argv[0], *attr = arg_opt(args, "attribute");
	struct permission_list l = { false, NULL, 0 };
	struct json j;
	size_t i;
	int r, status = EXIT_FAILURE;

	if (strcmp(attr, "createVolumePermission") != 0) {
		errmsg("invalid --attribute '%s': expected createVolumePermission", attr);
		return EXIT_FAILURE;
	}
	if (check_owner(ctx, snap) < 0)
		return EXIT_FAILURE;
	r = kiln_snapshot_list_create_volume_permission(ctx->region, snap, add_permission, &l);
	if (r < 0) {
		err_id(ctx, "snapshot", snap, r);
		goto out;
	}
	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_kv_string(&j, "SnapshotId", snap);
		json_permissions(&j, "CreateVolumePermissions", l.all,
				 (const char *const *)l.users, l.n);
		json_object_end(&j);
		json_finish(&j);
	} else {
		print_permissions_text(l.all, (const char *const *)l.users, l.n);
	}
	status = EXIT_SUCCESS;
out:
	for (i = 0; i < l.n; i++)
		free(l.users[i]);
	free(l.users);
	return status;
}
