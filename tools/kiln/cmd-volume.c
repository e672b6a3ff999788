/* SPDX-License-Identifier: MIT */
/* cmd-volume.c: kiln volume create, import, export, describe and delete. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln-tool.h"

static void print_volume_id(const struct cli_ctx *ctx, const char *id,
			    const uint64_t *changed)
{
	struct json j;

	if (ctx->output == OUTPUT_TEXT) {
		printf("%s\n", id);
		return;
	}
	json_init(&j, stdout);
	json_object_begin(&j);
	json_kv_string(&j, "VolumeId", id);
	if (changed)
		json_kv_u64(&j, "ChangedChunks", *changed);
	json_object_end(&j);
	json_finish(&j);
}

int cmd_volume_create(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *size_arg = arg_opt(args, "size");
	const char *snap = arg_opt(args, "snapshot-id");
	struct kiln_snapshot_info si;
	char id[KILN_ID_MAX], h1[HUMAN_SIZE_MAX], h2[HUMAN_SIZE_MAX];
	const char *why;
	uint64_t size = 0;
	int r;

	if (!size_arg && !snap) {
		errmsg("volume create: give --size, or --snapshot-id");
		return EXIT_FAILURE;
	}
	if (size_arg && parse_size(size_arg, GIB, &size, &why) < 0) {
		errmsg("invalid --size '%s': %s", size_arg, why);
		return EXIT_FAILURE;
	}
	if (snap) {
		if (!check_id("snapshot", snap))
			return EXIT_FAILURE;
		r = kiln_snapshot_describe(ctx->region, snap, &si);
		/* as in EC2: another account's snapshot not shared with this
		 * one does not exist for it, not even its state or size */
		if (r == 0 && !kiln_snapshot_usable(ctx->region, ctx->account, snap))
			r = -ENOENT;
		if (r < 0) {
			err_id(ctx, "snapshot", snap, r);
			return EXIT_FAILURE;
		}
		if (si.state != KILN_SNAPSHOT_COMPLETED) {
			errmsg("snapshot %s is %s, not completed", snap,
			       snapshot_state_name(si.state));
			return EXIT_FAILURE;
		}
		if (size && size < si.size) {
			errmsg("--size %s is smaller than snapshot %s (%s)",
			       human_size(size, h1), snap, human_size(si.size, h2));
			return EXIT_FAILURE;
		}
		if (!size)
			size = si.size;
	}

	r = kiln_volume_create(ctx->region, ctx->account, size, snap, id);
	if (r < 0) {
		/* as in EC2: another account's snapshot not shared with this
		 * one (EACCES) does not exist for it */
		if (snap && (r == -ENOENT || r == -EXDEV || r == -EBADMSG || r == -EACCES))
			err_id(ctx, "snapshot", snap, r == -EACCES ? -ENOENT : r);
		else if (size)
			errmsg_errno(r, "cannot create a volume of %s", human_size(size, h1));
		else
			errmsg_errno(r, "cannot create a volume");
		return EXIT_FAILURE;
	}
	print_volume_id(ctx, id, NULL);
	return EXIT_SUCCESS;
}

/* The volume, if it is the caller's account's; not_mine (-ENOENT: it is
 * not there for it; -EPERM: only the owner may) otherwise. */
static int describe_own(const struct cli_ctx *ctx, const char *vol, struct kiln_volume_info *vi,
			int not_mine)
{
	int r = kiln_volume_describe(ctx->region, vol, vi);

	if (r == 0 && strcmp(vi->owner, ctx->account) != 0)
		r = not_mine;
	return r;
}

/* The size of an import's source: a file's, or a block device's. */
static uint64_t input_size(const char *path, const struct stat *st)
{
	uint64_t n = 0;
	int fd;

	if (S_ISREG(st->st_mode))
		return (uint64_t)st->st_size;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (ioctl(fd, BLKGETSIZE64, &n) < 0)
			n = 0;
		close(fd);
	}
	return n;
}

/* Fail early, with the file's name, on what the engine would report as a
 * bare errno that could as well be about the volume. */
static int check_input(const char *path, struct stat *ret_st)
{
	int fd;

	/* O_NONBLOCK: opening a FIFO would wait for a writer (it is refused
	 * below, as anything that is not a file or a block device is). */
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		errmsg_errno(-errno, "%s", path);
		return -1;
	}
	if (fstat(fd, ret_st) < 0) {
		errmsg_errno(-errno, "%s", path);
		close(fd);
		return -1;
	}
	close(fd);
	if (S_ISDIR(ret_st->st_mode)) {
		errmsg("%s is a directory, not an image file", path);
		return -1;
	}
	if (!S_ISREG(ret_st->st_mode) && !S_ISBLK(ret_st->st_mode)) {
		errmsg("%s is not a regular file or a block device", path);
		return -1;
	}
	if (S_ISREG(ret_st->st_mode) && ret_st->st_size == 0) {
		errmsg("%s is empty", path);
		return -1;
	}
	return 0;
}

/* An export writes a regular file (created or truncated) or a block
 * device; refuse anything else before the engine gets a bare errno. */
int check_output(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;        /* created by the export */
		errmsg_errno(-errno, "%s", path);
		return -1;
	}
	if (S_ISDIR(st.st_mode)) {
		errmsg("%s is a directory, not an image file", path);
		return -1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		errmsg("%s is not a regular file or a block device", path);
		return -1;
	}
	return 0;
}

int cmd_volume_import(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *path = args->argv[0];
	const char *vol = arg_opt(args, "volume-id");
	struct kiln_volume_info vi;
	struct progress *prog;
	struct stat st;
	char id[KILN_ID_MAX];
	uint64_t changed = 0;
	int r;

	if (vol && !check_id("volume", vol))
		return EXIT_FAILURE;
	if (check_input(path, &st) < 0)
		return EXIT_FAILURE;
	if (vol) {
		r = kiln_volume_describe(ctx->region, vol, &vi);
		if (r < 0) {
			err_id(ctx, "volume", vol, r);
			return EXIT_FAILURE;
		}
		uint64_t size = input_size(path, &st);

		if (size > vi.size) {
			errmsg("%s (%" PRIu64 " bytes) is larger than volume %s (%" PRIu64 " bytes)", path,
			       size, vol, vi.size);
			return EXIT_FAILURE;
		}
	}

	prog = progress_new();
	r = kiln_volume_import(ctx->region, ctx->account, path, vol, progress_update,
			       prog, id, &changed);
	progress_end(prog);
	if (r < 0) {
		if (vol && (r == -ENOENT || r == -EXDEV || r == -EBUSY))
			err_id(ctx, "volume", vol, r);
		else if (r == -ESTALE && vol)
			errmsg("%s shrank while it was read: volume %s now holds part of it; "
			       "import it again once it is still", path, vol);
		else if (r == -ESTALE)
			errmsg("%s shrank while it was read: nothing was imported", path);
		else
			errmsg_errno(r, "cannot import %s", path);
		return EXIT_FAILURE;
	}
	print_volume_id(ctx, id, &changed);
	return EXIT_SUCCESS;
}

int cmd_volume_export(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *vol = args->argv[0], *path = args->argv[1];
	struct kiln_volume_info vi;
	struct progress *prog;
	int r;

	if (!check_id("volume", vol))
		return EXIT_FAILURE;
	r = describe_own(ctx, vol, &vi, -ENOENT);
	if (r < 0) {
		err_id(ctx, "volume", vol, r);
		return EXIT_FAILURE;
	}
	if (check_output(path) < 0)
		return EXIT_FAILURE;

	prog = progress_new();
	r = kiln_volume_export(ctx->region, vol, path, progress_update, prog);
	progress_end(prog);
	if (r < 0) {
		if (r == -EXDEV || r == -EBUSY || r == -EBADMSG)
			err_id(ctx, "volume", vol, r);
		else
			errmsg_errno(r, "cannot export volume %s to %s%s", vol, path,
				     r == -EFBIG ? " (a device smaller than the volume; nothing was written)" : "");
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

struct volume_list {
	struct kiln_volume_info *v;
	size_t n;
	const char *account;            /* only this account's volumes */
};

static int add_volume(void *opaque, const struct kiln_volume_info *info)
{
	struct volume_list *l = opaque;

	if (l->account && strcmp(info->owner, l->account) != 0)
		return 0;       /* another account's */
	l->v = xrealloc(l->v, l->n + 1, sizeof(*l->v));
	l->v[l->n++] = *info;
	return 0;
}

static void print_volumes_json(const struct cli_ctx *ctx, const struct volume_list *l)
{
	char az[KILN_REGION_MAX + 1], t[ISO_TIME_MAX];
	const struct kiln_volume_info *v;
	struct json j;
	size_t i;

	json_init(&j, stdout);
	json_object_begin(&j);
	json_key(&j, "Volumes");
	json_array_begin(&j);
	for (i = 0; i < l->n; i++) {
		v = &l->v[i];
		/* one zone per region: the region's first, as in EC2 */
		snprintf(az, sizeof(az), "%sa", v->region[0] ? v->region : ctx->region_name);
		json_object_begin(&j);
		json_kv_string(&j, "VolumeId", v->id);
		json_kv_u64(&j, "Size", gib_round_up(v->size));
		json_kv_u64(&j, "SizeBytes", v->size);
		json_kv_string(&j, "SnapshotId", v->snapshot_id);
		json_kv_string(&j, "AvailabilityZone", az);
		json_kv_string(&j, "State", volume_state_name(v->state));
		json_kv_string(&j, "CreateTime", iso_time(v->create_time, true, t));
		json_kv_string(&j, "OwnerId", v->owner);
		json_kv_u64(&j, "ChunkSize", v->chunk_size);
		json_kv_string(&j, "LastSnapshotId", v->last_snapshot_id);
		json_kv_u64(&j, "DirtyChunks", v->dirty_chunks);
		json_object_end(&j);
	}
	json_array_end(&j);
	json_object_end(&j);
	json_finish(&j);
}

static void print_volumes_text(const struct volume_list *l)
{
	static const char *const headers[] = {
		"VOLUME ID", "SIZE", "SNAPSHOT", "STATE", "CREATED",
	};
	char size[HUMAN_SIZE_MAX], t[ISO_TIME_MAX];
	const struct kiln_volume_info *v;
	struct table tab;
	size_t i;

	if (l->n == 0)
		return;
	table_init(&tab, 5, headers, 1u << 1);
	for (i = 0; i < l->n; i++) {
		v = &l->v[i];
		table_add(&tab, v->id, human_size(v->size, size),
			  v->snapshot_id[0] ? v->snapshot_id : "-",
			  volume_state_name(v->state), iso_time(v->create_time, false, t));
	}
	table_print(&tab, stdout);
	table_free(&tab);
}

int cmd_volume_describe(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct volume_list l = { .account = ctx->account };
	struct kiln_volume_info one;
	int r;

	/* the ids given, in their order; one that does not exist (for this
	 * account) fails the whole describe, as in EC2 */
	for (int i = 0; i < args->argc; i++) {
		const char *vol = args->argv[i];

		if (!check_id("volume", vol)) {
			free(l.v);
			return EXIT_FAILURE;
		}
		r = describe_own(ctx, vol, &one, -ENOENT);      /* as EC2 */
		if (r < 0) {
			err_id(ctx, "volume", vol, r);
			free(l.v);
			return EXIT_FAILURE;
		}
		add_volume(&l, &one);
	}
	if (args->argc == 0) {
		r = kiln_volume_list(ctx->region, add_volume, &l);
		if (r < 0) {
			errmsg_errno(r, "cannot list the volumes of region %s", ctx->region_name);
			free(l.v);
			return EXIT_FAILURE;
		}
	}
	if (ctx->output == OUTPUT_JSON)
		print_volumes_json(ctx, &l);
	else
		print_volumes_text(&l);
	free(l.v);
	return EXIT_SUCCESS;
}

int cmd_volume_delete(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *vol = args->argv[0];
	struct kiln_volume_info vi;
	int r;

	if (!check_id("volume", vol))
		return EXIT_FAILURE;
	r = describe_own(ctx, vol, &vi, -EPERM);
	if (r == 0)
		r = kiln_volume_delete(ctx->region, vol);
	if (r < 0) {
		err_id(ctx, "volume", vol, r);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}
