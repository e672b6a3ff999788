/* SPDX-License-Identifier: MIT */
/* cmd-instance.c: kiln instance launch|describe|boot|terminate and kiln
 * image create (EC2's RunInstances, DescribeInstances,
 * TerminateInstances, CreateImage), plus booting in qemu. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "instance-run.h"

#define WHY_LEN 512

int cmd_instance_launch(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *image = args->argv[0], *count_s = arg_opt(args, "count");
	const char *bdm = arg_opt(args, "block-device-mappings");
	struct kiln_bdm *ov = NULL;
	size_t nov = 0;
	long count = 1;
	char sock[256], why[WHY_LEN];
	int pid, rc = 0;
	struct json j;

	if (!check_id("image", image))
		return 1;
	if (count_s) {
		const char *w;

		if (parse_int(count_s, 1, 1000, &count, &w) < 0) {
			errmsg("--count %s: %s", count_s, w);
			return 1;
		}
	}
	if (bdm && parse_mappings(bdm, &ov, &nov) < 0)
		return 1;
	if (ensure_daemon(ctx, sock, sizeof sock, &pid) < 0) {
		free(ov);
		return 1;
	}
	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_key(&j, "Instances");
		json_array_begin(&j);
	}
	for (long i = 0; i < count; i++) {
		char id[KILN_ID_MAX];
		struct kiln_instance_info in;
		int r = kiln_instance_launch(ctx->region, ctx->account, image, ov, nov, id, why, sizeof why);

		if (r < 0) {
			if (why[0])
				errmsg("cannot launch %s: %s", image, why);
			else
				errmsg_errno(r, "cannot launch %s", image);
			rc = 1;
			break;
		}
		if (kiln_instance_describe(ctx->region, ctx->account, id, &in) == 0) {
			snprintf(in.nbd_socket, sizeof in.nbd_socket, "%s", sock);
			in.nbd_pid = pid;
			kiln_instance_update(ctx->region, &in);
		}
		if (ctx->output == OUTPUT_JSON) {
			json_object_begin(&j);
			json_kv_string(&j, "InstanceId", id);
			json_kv_string(&j, "ImageId", image);
			json_object_end(&j);
		} else {
			printf("%s\n", id);
		}
	}
	if (ctx->output == OUTPUT_JSON) {
		json_array_end(&j);
		json_object_end(&j);
		json_finish(&j);
	}
	free(ov);
	return rc;
}

static void json_state(struct json *j, const char *key, const char *name);

static void json_instance(struct json *j, const struct kiln_instance_info *in)
{
	char t[ISO_TIME_MAX];

	json_object_begin(j);
	json_kv_string(j, "InstanceId", in->id);
	json_kv_string(j, "ImageId", in->image_id);
	json_kv_string(j, "OwnerId", in->owner);
	json_state(j, "State", in->state);
	json_kv_string(j, "LaunchTime", iso_time(in->launch_time, true, t));
	json_kv_string(j, "Architecture", in->architecture);
	if (in->boot_mode[0])
		json_kv_string(j, "BootMode", in->boot_mode);
	json_kv_string(j, "RootDeviceName", in->root_device_name);
	json_kv_string(j, "RootDeviceType", "ebs");
	json_key(j, "BlockDeviceMappings");
	json_array_begin(j);
	/* as in EC2, a terminated instance has no devices any more: its
	 * volumes are deleted or detached */
	for (size_t i = 0; strcmp(in->state, "terminated") != 0 && i < in->ndevices; i++) {
		const struct kiln_instance_device *d = &in->devices[i];

		json_object_begin(j);
		json_kv_string(j, "DeviceName", d->device_name);
		json_key(j, d->ebs ? "Ebs" : "InstanceStore");
		json_object_begin(j);
		json_kv_string(j, "VolumeId", d->volume_id);
		json_kv_bool(j, "DeleteOnTermination", d->delete_on_termination);
		json_kv_string(j, "Status", "attached");
		json_object_end(j);
		json_object_end(j);
	}
	json_array_end(j);
	json_kv_string(j, "NbdSocket", in->nbd_socket);
	json_kv_bool(j, "Booted", in->qemu_pid > 0);
	json_object_end(j);
}

struct describe_ctx {
	struct json j;
	struct table t;
	bool json;
};

static void add_instance(struct describe_ctx *d, const struct kiln_instance_info *in)
{
	char t[ISO_TIME_MAX], devs[16];

	if (d->json) {
		json_instance(&d->j, in);
		return;
	}
	snprintf(devs, sizeof devs, "%zu", strcmp(in->state, "terminated") == 0 ? 0 : in->ndevices);
	table_add(&d->t, in->id, in->image_id, in->state, in->qemu_pid > 0 ? "yes" : "no", devs,
		  iso_time(in->launch_time, false, t));
}

static int list_instance(void *opaque, const struct kiln_instance_info *in)
{
	add_instance(opaque, in);
	return 0;
}

int cmd_instance_describe(struct cli_ctx *ctx, const struct cli_args *args)
{
	static const char *const headers[] = { "INSTANCE ID", "IMAGE", "STATE", "BOOTED", "DEVICES",
					       "LAUNCHED" };
	struct describe_ctx d = { .json = ctx->output == OUTPUT_JSON };
	struct kiln_instance_info *in = xmalloc(sizeof *in);
	int rc = 0, r;

	for (int i = 0; i < args->argc; i++)
		if (!check_id("instance", args->argv[i])) {
			free(in);
			return 1;
		}
	if (d.json) {
		json_init(&d.j, stdout);
		json_object_begin(&d.j);
		json_key(&d.j, "Reservations");
		json_array_begin(&d.j);
		json_object_begin(&d.j);
		json_key(&d.j, "Instances");
		json_array_begin(&d.j);
	} else {
		table_init(&d.t, 6, headers, 1u << 4);
	}
	if (args->argc == 0) {
		r = kiln_instance_list(ctx->region, ctx->account, list_instance, &d);
		if (r < 0) {
			errmsg_errno(r, "cannot list instances");
			rc = 1;
		}
	}
	for (int i = 0; i < args->argc && rc == 0; i++) {
		r = kiln_instance_describe(ctx->region, ctx->account, args->argv[i], in);
		if (r < 0) {
			err_id(ctx, "instance", args->argv[i], r);
			rc = 1;
			break;
		}
		add_instance(&d, in);
	}
	if (d.json) {
		json_array_end(&d.j);
		json_object_end(&d.j);
		json_array_end(&d.j);
		json_object_end(&d.j);
		if (rc == 0)
			json_finish(&d.j);
	} else {
		if (rc == 0)
			table_print(&d.t, stdout);
		table_free(&d.t);
	}
	free(in);
	return rc;
}

static void console_log(struct cli_ctx *ctx, const char *id, char *out, size_t cap)
{
	snprintf(out, cap, "%s/regions/%s/instances", ctx->store_dir, ctx->region_name);
	mkdir(out, 0755);
	snprintf(out, cap, "%s/regions/%s/instances/%s.console.log", ctx->store_dir, ctx->region_name, id);
}

/* Make sure the daemon that serves the instance is up (it may have been
 * stopped, or the machine restarted). */
static int serve_instance(struct cli_ctx *ctx, struct kiln_instance_info *in)
{
	char sock[256];
	int pid;

	if (ensure_daemon(ctx, sock, sizeof sock, &pid) < 0)
		return -1;
	if (strcmp(sock, in->nbd_socket) != 0 || pid != in->nbd_pid) {
		snprintf(in->nbd_socket, sizeof in->nbd_socket, "%s", sock);
		in->nbd_pid = pid;
		kiln_instance_update(ctx->region, in);
	}
	return 0;
}

int cmd_instance_boot(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *id = args->argv[0], *t = arg_opt(args, "timeout"), *m = arg_opt(args, "memory");
	struct kiln_instance_info in;
	long timeout = 0, memory = 256;
	char log[4096];
	const char *w;
	int r;

	if (!check_id("instance", id))
		return 1;
	if (t && parse_int(t, 1, 86400, &timeout, &w) < 0) {
		errmsg("--timeout %s: %s", t, w);
		return 1;
	}
	if (m && parse_int(m, 32, 65536, &memory, &w) < 0) {
		errmsg("--memory %s: %s", m, w);
		return 1;
	}
	r = kiln_instance_describe(ctx->region, ctx->account, id, &in);
	if (r < 0) {
		err_id(ctx, "instance", id, r);
		return 1;
	}
	if (strcmp(in.state, "terminated") == 0) {
		errmsg("instance %s is terminated: there is nothing to boot", id);
		return 1;
	}
	if (in.qemu_pid > 0) {
		errmsg("instance %s is already booted (qemu pid %d)", id, in.qemu_pid);
		return 1;
	}
	/* qemu-system-x86_64 runs x86_64 and i386 guests; an arm64 one would
	 * sit in firmware until the timeout */
	if (strcmp(in.architecture, "x86_64") != 0 && strcmp(in.architecture, "i386") != 0) {
		errmsg("instance %s is %s: instance boot runs x86_64 and i386 guests only", id,
		       in.architecture);
		return 1;
	}
	if (serve_instance(ctx, &in) < 0)
		return 1;
	console_log(ctx, id, log, sizeof log);
	return run_qemu(ctx->region, &in, (double)timeout, arg_opt(args, "expect"), (unsigned)memory, log,
			false);
}

/* What terminate did to one instance's volumes, for the JSON report. */
struct terminated {
	const struct cli_ctx *ctx;
	size_t n;
	char volume_id[KILN_MAX_MAPPINGS][KILN_ID_MAX];
	bool deleted[KILN_MAX_MAPPINGS];
};

static void report_volume(void *opaque, const char *volume_id, bool deleted)
{
	struct terminated *t = opaque;

	if (t->ctx->output == OUTPUT_TEXT)
		printf("%s: %s\n", volume_id, deleted ? "deleted" : "kept (available)");
	if (t->n < KILN_MAX_MAPPINGS) {
		snprintf(t->volume_id[t->n], KILN_ID_MAX, "%s", volume_id);
		t->deleted[t->n++] = deleted;
	}
}

/* EC2's state codes, as DescribeInstances and TerminateInstances have them. */
static void json_state(struct json *j, const char *key, const char *name)
{
	static const struct { const char *name; unsigned code; } codes[] = {
		{ "pending", 0 }, { "running", 16 }, { "shutting-down", 32 },
		{ "terminated", 48 }, { "stopping", 64 }, { "stopped", 80 },
	};

	json_key(j, key);
	json_object_begin(j);
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
		if (strcmp(codes[i].name, name) == 0)
			json_kv_u64(j, "Code", codes[i].code);
	json_kv_string(j, "Name", name);
	json_object_end(j);
}

int cmd_instance_terminate(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct json j;
	int rc = 0;

	for (int i = 0; i < args->argc; i++)
		if (!check_id("instance", args->argv[i]))
			return 1;
	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_key(&j, "TerminatingInstances");
		json_array_begin(&j);
	}
	for (int i = 0; i < args->argc; i++) {
		struct kiln_instance_info in;
		struct terminated t = { .ctx = ctx };
		int r = kiln_instance_describe(ctx->region, ctx->account, args->argv[i], &in);

		if (r == 0)
			r = stop_qemu(ctx->region, &in);
		/* qemu's connections close as it exits; the daemon lets go of
		 * the volumes a moment later. */
		for (int tries = 0; r == 0 || r == -EBUSY; tries++) {
			r = kiln_instance_terminate(ctx->region, ctx->account, args->argv[i], report_volume, &t);
			if (r != -EBUSY || tries == 100)
				break;
			usleep(50000);
		}
		if (r < 0) {
			err_id(ctx, "instance", args->argv[i], r);
			rc = 1;
			continue;
		}
		if (ctx->output == OUTPUT_JSON) {
			json_object_begin(&j);
			json_kv_string(&j, "InstanceId", args->argv[i]);
			json_state(&j, "CurrentState", "terminated");
			json_state(&j, "PreviousState", in.state);
			json_key(&j, "Volumes");
			json_array_begin(&j);
			for (size_t k = 0; k < t.n; k++) {
				json_object_begin(&j);
				json_kv_string(&j, "VolumeId", t.volume_id[k]);
				json_kv_bool(&j, "Deleted", t.deleted[k]);
				json_object_end(&j);
			}
			json_array_end(&j);
			json_object_end(&j);
		}
	}
	if (ctx->output == OUTPUT_JSON) {
		json_array_end(&j);
		json_object_end(&j);
		json_finish(&j);
	}
	return rc;
}

/* Boot again in the background after image create stopped it. */
static void reboot_background(struct cli_ctx *ctx, const char *id)
{
	pid_t child = fork();

	if (child == 0) {
		struct kiln_instance_info in;
		char log[4096];
		FILE *devnull;

		setsid();
		devnull = freopen("/dev/null", "w", stdout);
		(void)devnull;
		if (kiln_instance_describe(ctx->region, ctx->account, id, &in) == 0) {
			console_log(ctx, id, log, sizeof log);
			_exit(run_qemu(ctx->region, &in, 0, NULL, 256, log, true));
		}
		_exit(1);
	}
}

int cmd_image_create(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *id = arg_opt(args, "instance-id"), *name = arg_opt(args, "name");
	struct kiln_instance_info in;
	char ami[KILN_ID_MAX], why[WHY_LEN];
	bool rebooted = false;
	int r;

	if (!check_id("instance", id))
		return 1;
	r = kiln_instance_describe(ctx->region, ctx->account, id, &in);
	if (r < 0) {
		err_id(ctx, "instance", id, r);
		return 1;
	}
	if (in.qemu_pid > 0 && !arg_flag(args, "no-reboot")) {
		/* A clean point: the guest is stopped for the snapshot. */
		stop_qemu(ctx->region, &in);
		rebooted = true;
	}
	r = kiln_image_create(ctx->region, ctx->account, id, name, arg_opt(args, "description"), ami, why,
			      sizeof why);
	if (rebooted)
		reboot_background(ctx, id);
	if (r < 0) {
		if (why[0])
			errmsg("cannot create an image of %s: %s", id, why);
		else
			errmsg_errno(r, "cannot create an image of %s", id);
		return 1;
	}
	if (ctx->output == OUTPUT_JSON) {
		struct json j;

		json_init(&j, stdout);
		json_object_begin(&j);
		json_kv_string(&j, "ImageId", ami);
		json_object_end(&j);
		json_finish(&j);
	} else {
		printf("%s\n", ami);
	}
	return 0;
}
