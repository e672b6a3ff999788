/* SPDX-License-Identifier: MIT */
/* main.c: the kiln tool's command table, option parsing and dispatch.
 *
 * Command lines are "kiln NOUN VERB [ARGS]" (or "kiln init"), like the AWS
 * CLI. Global options may come before, between or after the command words;
 * a command's own options may come anywhere after its words. Options are
 * "--name value" or "--name=value"; "--" ends them. Help at every level is
 * made from the one table below.
 *
 * An OPT_MULTI option takes its values as the AWS CLI does: every word
 * after it up to the next word that starts with "--" (or "-h"), so
 * "--image-ids a b c"; given again, it adds to what it has, so "--tag K=V
 * --tag K2=V2" and "--tag K=V K2=V2" are the same. "--name=value" gives
 * exactly one value, and the words after it are positional again.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-tool.h"

static const struct cli_option no_options[] = {
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option init_options[] = {
	{ "chunk-size", "SIZE",
	  "a power of two from 4K to 4M (default 64K);\n"
	  "a bare number is bytes" },
	{ "zstd-level", "N", "zstd level, -7 (fastest) to 19 (default: 1)" },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option store_recompress_options[] = {
	{ "zstd-level", "N", "the zstd level to reach, -7 to 19 (default: 9)" },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option volume_create_options[] = {
	{ "size", "SIZE", "K, M, G or T suffix; a bare number is GiB" },
	{ "snapshot-id", "SNAPSHOT-ID", "make a copy-on-write volume of this snapshot" },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option volume_import_options[] = {
	{ "volume-id", "VOLUME-ID", "write into this existing volume, not a new one" },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option snapshot_create_options[] = {
	{ "description", "TEXT", "a description (at most 255 bytes)" },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option snapshot_modify_attribute_options[] = {
	{ "create-volume-permission", "JSON|file://PATH",
	  "{\"Add\":[{\"UserId\":\"ACCOUNT\"}|{\"Group\":\"all\"}],\n"
	  "\"Remove\":[...]}", OPT_REQUIRED },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option snapshot_describe_attribute_options[] = {
	{ "attribute", "createVolumePermission", "the attribute to show", OPT_REQUIRED },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_register_options[] = {
	{ "name", "NAME", "3 to 128 characters, unique for the owner\nin the region",
	  OPT_REQUIRED },
	{ "root-device-name", "DEVICE", "the root device, e.g. /dev/xvda", OPT_REQUIRED },
	{ "block-device-mappings", "JSON|file://PATH",
	  "the mappings: a JSON array of objects with\n"
	  "DeviceName and one of Ebs {SnapshotId,\n"
	  "VolumeSize, DeleteOnTermination, VolumeType},\n"
	  "VirtualName or NoDevice", OPT_REQUIRED },
	{ "architecture", "ARCH", "x86_64, arm64 or i386 (default: what the\n"
	  "root snapshot's contents tell)", 0 },
	{ "boot-mode", "MODE", "legacy-bios, uefi or uefi-preferred\n"
	  "(default: what the root snapshot's contents tell)", 0 },
	{ "virtualization-type", "hvm", "the only type there is (default)", 0 },
	{ "description", "TEXT", "a description (at most 255 bytes)", 0 },
	{ "tag", "KEY=VALUE", "a tag; several may follow one --tag", OPT_MULTI },
	{ "no-verify-boot", NULL, "register even when the root snapshot does\n"
	  "not look bootable", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_describe_options[] = {
	{ "image-ids", "IMAGE-ID", "only these images; each must exist", OPT_MULTI },
	{ "owners", "self|ACCOUNT", "only images of these owners", OPT_MULTI },
	{ "executable-users", "self|all|ACCOUNT",
	  "only images these may launch by a permission:\n"
	  "self: shared with the caller, or public;\n"
	  "all: public; ACCOUNT: shared with it", OPT_MULTI },
	{ "filters", "Name=N,Values=V1,V2",
	  "only images matching every filter (one of its\n"
	  "values, with * and ? wildcards); see kiln(1)", OPT_MULTI },
	{ "image-type", "mine|shared|community",
	  "mine: the caller owns them; shared: shared\n"
	  "with the caller; community: public", OPT_MULTI },
	{ "include-deprecated", NULL, "also deprecated images (kiln deprecates\n"
	  "none, so this changes nothing)", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_describe_attribute_options[] = {
	{ "attribute", "NAME", "launchPermission, description, bootMode\n"
	  "or blockDeviceMapping", OPT_REQUIRED },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_modify_attribute_options[] = {
	{ "launch-permission", "JSON|file://PATH",
	  "{\"Add\":[{\"UserId\":\"ACCOUNT\"}|{\"Group\":\"all\"}],\n"
	  "\"Remove\":[...]}", 0 },
	{ "description", "TEXT", "the new description (at most 255 bytes)", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_reset_attribute_options[] = {
	{ "attribute", "launchPermission", "the attribute to reset", OPT_REQUIRED },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_deregister_options[] = {
	{ "delete-associated-snapshots", NULL,
	  "also delete the image's snapshots that no\nother image uses", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_copy_options[] = {
	{ "source-region", "REGION", "the region the image is in", OPT_REQUIRED },
	{ "source-image-id", "IMAGE-ID", "the image to copy", OPT_REQUIRED },
	{ "name", "NAME", "the new image's name", OPT_REQUIRED },
	{ "description", "TEXT", "its description (default: none)", 0 },
	{ "copy-image-tags", NULL, "copy the image's tags too", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option instance_launch_options[] = {
	{ "count", "N", "how many instances (default 1)", 0 },
	{ "block-device-mappings", "JSON", "override the image's mappings by device name\n"
	  "(JSON or file://PATH; NoDevice removes one)", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option instance_boot_options[] = {
	{ "timeout", "SECONDS", "stop qemu after this long (default: none)", 0 },
	{ "expect", "TEXT", "exit 0 once TEXT appears on the console", 0 },
	{ "memory", "MIB", "guest memory in MiB (default 256)", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option image_create_options[] = {
	{ "instance-id", "INSTANCE-ID", "the instance to image", OPT_REQUIRED },
	{ "name", "NAME", "the new image's name", OPT_REQUIRED },
	{ "description", "TEXT", "its description", 0 },
	{ "no-reboot", NULL, "do not stop a running instance for it", 0 },
	{ NULL, NULL, NULL, 0 },
};

static const struct cli_option wait_options[] = {
	{ "timeout", "SECONDS", "give up after this long (default: 600)", 0 },
	{ NULL, NULL, NULL, 0 },
};

/* Every command: its help at every level comes from here. */
static const struct cli_command commands[] = {
	{ "init", NULL, cmd_init, 0,
	  "", "create a store (regions us-east-1 and eu-west-1)",
	  "Creates the store directory (--store, $KILN_STORE or ./.kiln), which\n"
	  "must be missing or empty. --account (or $KILN_ACCOUNT) sets the\n"
	  "store's default account.",
	  init_options, 0, 0 },
	{ "region", "list", cmd_region_list, CMD_STORE,
	  "", "list the regions of the store", NULL, no_options, 0, 0 },
	{ "volume", "create", cmd_volume_create, CMD_STORE | CMD_REGION,
	  "", "create a blank volume or one from a snapshot",
	  "Give --size for a blank volume, or --snapshot-id (and optionally a\n"
	  "larger --size) for a volume with the snapshot's contents. Prints the\n"
	  "new volume's id.",
	  volume_create_options, 0, 0 },
	{ "volume", "import", cmd_volume_import, CMD_STORE | CMD_REGION,
	  "FILE", "import a raw image or block device into a volume",
	  "Without --volume-id, creates a volume of the file's size. With it,\n"
	  "writes the file into that volume (at least the file's size); only\n"
	  "chunks whose contents differ change. Prints the volume's id.",
	  volume_import_options, 1, 1 },
	{ "volume", "export", cmd_volume_export, CMD_STORE | CMD_REGION,
	  "VOLUME-ID FILE", "write a volume to a sparse raw image file",
	  NULL, no_options, 2, 2 },
	{ "volume", "describe", cmd_volume_describe, CMD_STORE | CMD_REGION,
	  "[VOLUME-ID...]", "describe volumes, or all in the region",
	  NULL, no_options, 0, 1000 },
	{ "volume", "delete", cmd_volume_delete, CMD_STORE | CMD_REGION,
	  "VOLUME-ID", "delete a volume", NULL, no_options, 1, 1 },
	{ "snapshot", "create", cmd_snapshot_create, CMD_STORE | CMD_REGION,
	  "VOLUME-ID", "take an incremental snapshot of a volume",
	  "Reads and hashes only the chunks changed since the volume's last\n"
	  "snapshot. Prints the new snapshot's id.",
	  snapshot_create_options, 1, 1 },
	{ "snapshot", "describe", cmd_snapshot_describe, CMD_STORE | CMD_REGION,
	  "[SNAPSHOT-ID...]", "describe snapshots, or all in the region",
	  NULL, no_options, 0, 1000 },
	{ "snapshot", "delete", cmd_snapshot_delete, CMD_STORE | CMD_REGION,
	  "SNAPSHOT-ID", "delete a snapshot", NULL, no_options, 1, 1 },
	{ "snapshot", "export", cmd_snapshot_export, CMD_STORE | CMD_REGION,
	  "SNAPSHOT-ID FILE", "write a snapshot to a sparse raw image file",
	  NULL, no_options, 2, 2 },
	{ "snapshot", "diff", cmd_snapshot_diff, CMD_STORE | CMD_REGION,
	  "SNAPSHOT-A SNAPSHOT-B", "list the byte ranges that differ between two snapshots",
	  "Prints one \"OFFSET LENGTH\" line (in bytes) per run of changed chunks,\n"
	  "like EBS ListChangedBlocks.",
	  no_options, 2, 2 },
	{ "snapshot", "modify-attribute", cmd_snapshot_modify_attribute, CMD_STORE | CMD_REGION,
	  "SNAPSHOT-ID", "share a snapshot with accounts, or with everyone",
	  "Adds and removes create-volume permissions: accounts (\"UserId\") or\n"
	  "the group \"all\" (public). Only the snapshot's owner may.",
	  snapshot_modify_attribute_options, 1, 1 },
	{ "snapshot", "describe-attribute", cmd_snapshot_describe_attribute,
	  CMD_STORE | CMD_REGION,
	  "SNAPSHOT-ID", "show whom a snapshot is shared with",
	  "Only the snapshot's owner may.",
	  snapshot_describe_attribute_options, 1, 1 },
	{ "image", "register", cmd_image_register, CMD_STORE | CMD_REGION,
	  "", "register an image (AMI) made of snapshots",
	  "Every snapshot mapped must be completed, in the region and usable by\n"
	  "the caller; the root device must be mapped. The root snapshot is\n"
	  "probed and an image that cannot boot is refused, unless\n"
	  "--no-verify-boot. Prints the new image's id (ami-...). Example:\n"
	  "  --block-device-mappings '[{\"DeviceName\":\"/dev/xvda\",\n"
	  "     \"Ebs\":{\"SnapshotId\":\"snap-...\",\"VolumeSize\":8}}]'",
	  image_register_options, 0, 0 },
	{ "image", "describe", cmd_image_describe, CMD_STORE | CMD_REGION,
	  "", "describe the images the caller may launch",
	  "Lists the caller's images, those shared with it and public ones, by\n"
	  "creation date. Filters given together must all match. Filter names:\n"
	  "architecture, block-device-mapping.delete-on-termination,\n"
	  "block-device-mapping.device-name, block-device-mapping.snapshot-id,\n"
	  "block-device-mapping.volume-size, block-device-mapping.volume-type,\n"
	  "boot-mode, creation-date, description, image-id, image-type,\n"
	  "is-public, name, owner-id, root-device-name, root-device-type,\n"
	  "source-image-id, source-image-region, state, tag:KEY, tag-key,\n"
	  "virtualization-type.",
	  image_describe_options, 0, 0 },
	{ "image", "describe-attribute", cmd_image_describe_attribute, CMD_STORE | CMD_REGION,
	  "IMAGE-ID", "show one attribute of an image",
	  "Only the owner may see launchPermission.",
	  image_describe_attribute_options, 1, 1 },
	{ "image", "modify-attribute", cmd_image_modify_attribute, CMD_STORE | CMD_REGION,
	  "IMAGE-ID", "change who may launch an image, or its description",
	  "Give --launch-permission or --description. Launch permissions are\n"
	  "accounts (\"UserId\") and the group \"all\" (public). Only the\n"
	  "owner may.",
	  image_modify_attribute_options, 1, 1 },
	{ "image", "reset-attribute", cmd_image_reset_attribute, CMD_STORE | CMD_REGION,
	  "IMAGE-ID", "make an image private to its owner again",
	  "Removes every launch permission. Only the owner may.",
	  image_reset_attribute_options, 1, 1 },
	{ "image", "deregister", cmd_image_deregister, CMD_STORE | CMD_REGION,
	  "IMAGE-ID", "deregister an image",
	  "Only the owner may. With --delete-associated-snapshots, prints for\n"
	  "each snapshot of the image \"SNAPSHOT-ID: deleted\" or why it was kept.",
	  image_deregister_options, 1, 1 },
	{ "image", "copy", cmd_image_copy, CMD_STORE | CMD_REGION,
	  "", "copy an image from another region into this one",
	  "Copies the image --source-image-id from --source-region into the\n"
	  "region given with --region, with new snapshots, owned by the caller.\n"
	  "Only the chunks that region lacks move, each verified; running an\n"
	  "interrupted copy again resumes it. Prints the new image's id.",
	  image_copy_options, 0, 0 },
	{ "image", "create", cmd_image_create, CMD_STORE | CMD_REGION,
	  "", "make an image from an instance (CreateImage)",
	  "Snapshots every EBS volume of the instance at one point in time\n"
	  "(incrementally: only what changed since launch is read) and registers\n"
	  "an image with the instance's mapping. Without --no-reboot a booted\n"
	  "instance is stopped for it and booted again in the background.",
	  image_create_options, 0, 0 },
	{ "instance", "launch", cmd_instance_launch, CMD_STORE | CMD_REGION,
	  "IMAGE-ID", "launch instances of an image",
	  "Makes one copy-on-write volume per EBS mapping (instant, no chunk\n"
	  "bytes copied) and a blank one per ephemeral mapping, served by the\n"
	  "region's kiln-nbd as i-…/xvda (started if need be). Prints each id.",
	  instance_launch_options, 1, 1 },
	{ "instance", "describe", cmd_instance_describe, CMD_STORE | CMD_REGION,
	  "[INSTANCE-ID...]", "describe instances", NULL, no_options, 0, 1000 },
	{ "instance", "boot", cmd_instance_boot, CMD_STORE | CMD_REGION,
	  "INSTANCE-ID", "boot an instance in qemu from its devices over NBD",
	  "KVM when a guest really runs here, TCG otherwise (KILN_ACCEL=tcg\n"
	  "forces it); SeaBIOS for legacy-bios, OVMF for uefi. The serial console\n"
	  "goes to stdout and to a log in the store. With --expect, exits 0 once\n"
	  "the text appears, 1 on timeout or when qemu exits first.",
	  instance_boot_options, 1, 1 },
	{ "instance", "terminate", cmd_instance_terminate, CMD_STORE | CMD_REGION,
	  "INSTANCE-ID...", "terminate instances",
	  "Stops qemu if it runs, deletes the volumes marked DeleteOnTermination\n"
	  "and keeps the others as available volumes.",
	  no_options, 1, 1000 },
	{ "wait", "image-available", cmd_wait_image_available, CMD_STORE | CMD_REGION,
	  "IMAGE-ID", "wait until an image is available",
	  "Exits 0 once the image is available, 1 if it failed (with the\n"
	  "reason), 2 when --timeout passes first.",
	  wait_options, 1, 1 },
	{ "store", "stats", cmd_store_stats, CMD_STORE,
	  "", "sizes, dedup and compression ratios per region",
	  "Covers every region, or only the one given with --region.",
	  no_options, 0, 0 },
	{ "store", "verify", cmd_store_verify, CMD_STORE,
	  "", "check every chunk; exit 1 if any is corrupt",
	  "Covers every region, or only the one given with --region. Names each\n"
	  "corrupt chunk and the snapshots that use it.",
	  no_options, 0, 0 },
	{ "store", "gc", cmd_store_gc, CMD_STORE,
	  "", "remove the chunks that nothing references",
	  "Covers every region, or only the one given with --region.",
	  no_options, 0, 0 },
	{ "store", "recompress", cmd_store_recompress, CMD_STORE,
	  "", "compress stored chunks again at a stronger zstd level",
	  "Snapshots compress at the store's level (1 unless kiln init said\n"
	  "otherwise), which keeps them fast. This rewrites the packs holding\n"
	  "chunks compressed at a weaker level: each such chunk is verified,\n"
	  "compressed again, and the smaller payload kept. It removes unreferenced\n"
	  "chunks as gc does. Chunks already at the level are left alone, so a\n"
	  "later run works only on what is new. On a Debian image, level 9 stores\n"
	  "6% less than level 1 at about 120 MB/s of data on two cores; 19 stores\n"
	  "9% less at 8 MB/s. Reads are as fast at any level.\n"
	  "Covers every region, or only the one given with --region.",
	  store_recompress_options, 0, 0 },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

enum global_opt {
	G_STORE,
	G_REGION,
	G_ACCOUNT,
	G_OUTPUT,
	G_DEBUG,
	_G_MAX,
};

static const struct cli_option global_options[] = {
	[G_STORE] = { "store", "DIR", "the store (default: $KILN_STORE, else ./.kiln)" },
	[G_REGION] = { "region", "REGION",
		       "the region (default: $KILN_REGION, else us-east-1)" },
	[G_ACCOUNT] = { "account", "ACCOUNT",
			"the 12-digit acting account (default: $KILN_ACCOUNT,\n"
			"else the store's default account)" },
	[G_OUTPUT] = { "output", "text|json", "output format (default: text)" },
	[G_DEBUG] = { "debug", NULL, "engine debug messages on stderr (KILN_DEBUG=1)" },
	[_G_MAX] = { NULL, NULL, NULL, 0 },
};

/* ---- help ----------------------------------------------------------- */

#define HELP_COLUMN 24             /* where the help texts start */

static bool noun_has_verbs(const char *noun)
{
	size_t i;

	for (i = 0; i < NCOMMANDS; i++) {
		if (strcmp(commands[i].noun, noun) == 0)
			return commands[i].verb != NULL;
	}
	return false;
}

/* "--name METAVAR", with " ..." when it takes several values */
static int option_words(char *buf, size_t size, const struct cli_option *o)
{
	return snprintf(buf, size, "--%s%s%s%s", o->name, o->metavar ? " " : "",
			o->metavar ? o->metavar : "", o->flags & OPT_MULTI ? " ..." : "");
}

static void print_option(FILE *f, const struct cli_option *o)
{
	char left[96];
	const char *h, *nl;
	int n;

	n = option_words(left, sizeof(left), o);
	if (n > HELP_COLUMN - 4)
		fprintf(f, "  %s\n%*s", left, HELP_COLUMN, "");
	else
		fprintf(f, "  %-*s", HELP_COLUMN - 2, left);
	/* continuation lines of the help line up under its first line */
	for (h = o->help; (nl = strchr(h, '\n')); h = nl + 1)
		fprintf(f, "%.*s\n%*s", (int)(nl - h), h, HELP_COLUMN, "");
	fprintf(f, "%s\n", h);
}

static void print_global_options(FILE *f)
{
	const struct cli_option *o;

	fputs("Global options (before or after the command words):\n", f);
	for (o = global_options; o->name; o++)
		print_option(f, o);
	fprintf(f, "  %-*s%s\n", HELP_COLUMN - 2, "-h, --help", "show help, at every level");
	fprintf(f, "  %-*s%s\n", HELP_COLUMN - 2, "--version", "print the version");
}

#define USAGE_WIDTH 79

/* The usage line, wrapped before USAGE_WIDTH with its continuation lines
 * indented under the first argument; required options without brackets. */
static void print_usage_line(FILE *f, const struct cli_command *c)
{
	const struct cli_option *o;
	char words[112];
	int col, indent;

	col = fprintf(f, "Usage: kiln %s%s%s", c->noun, c->verb ? " " : "",
		      c->verb ? c->verb : "");
	indent = col + 1;
	if (*c->synopsis)
		col += fprintf(f, " %s", c->synopsis);
	for (o = c->options; o->name; o++) {
		char opt[96];

		option_words(opt, sizeof(opt), o);
		snprintf(words, sizeof(words), o->flags & OPT_REQUIRED ? "%s" : "[%s]", opt);
		if (col + 1 + (int)strlen(words) > USAGE_WIDTH && col > indent) {
			fprintf(f, "\n%*s", indent - 1, "");
			col = indent - 1;
		}
		col += fprintf(f, " %s", words);
	}
	fputc('\n', f);
}

/* The width of the first column of a command list: at least two spaces
 * between the words and the summary. */
static int words_width(const char *noun)
{
	size_t i, n, w = HELP_COLUMN - 2;

	for (i = 0; i < NCOMMANDS; i++) {
		const struct cli_command *c = &commands[i];

		if (noun && (strcmp(c->noun, noun) != 0 || !c->verb))
			continue;
		n = noun ? strlen(c->verb) :
		    strlen(c->noun) + (c->verb ? 1 + strlen(c->verb) : 0);
		if (n + 2 > w)
			w = n + 2;
	}
	return (int)w;
}

static void help_top(void)
{
	int width = words_width(NULL);
	char words[64];
	size_t i;

	printf("Usage: kiln [OPTIONS] COMMAND [ARGS]\n\n"
	       "kiln manages a local store of copy-on-write volumes, incremental,\n"
	       "deduplicated snapshots, and machine images made of snapshots.\n\n"
	       "Commands:\n");
	for (i = 0; i < NCOMMANDS; i++) {
		snprintf(words, sizeof(words), "%s%s%s", commands[i].noun,
			 commands[i].verb ? " " : "", commands[i].verb ? commands[i].verb : "");
		printf("  %-*s%s\n", width, words, commands[i].summary);
	}
	putchar('\n');
	print_global_options(stdout);
	printf("\nRun 'kiln COMMAND --help' for a command's arguments. See kiln(1).\n");
}

static void help_noun(const char *noun)
{
	int width = words_width(noun);
	size_t i;

	printf("Usage: kiln %s COMMAND [ARGS]\n\nCommands:\n", noun);
	for (i = 0; i < NCOMMANDS; i++) {
		if (strcmp(commands[i].noun, noun) == 0)
			printf("  %-*s%s\n", width, commands[i].verb, commands[i].summary);
	}
	printf("\nRun 'kiln %s COMMAND --help' for a command's arguments;\n"
	       "'kiln --help' for the global options.\n", noun);
}

static void help_command(const struct cli_command *c)
{
	const struct cli_option *o;

	print_usage_line(stdout, c);
	printf("\n%c%s.\n", toupper((unsigned char)c->summary[0]), c->summary + 1);
	if (c->description)
		printf("\n%s\n", c->description);
	if (c->options[0].name) {
		printf("\nOptions:\n");
		for (o = c->options; o->name; o++)
			print_option(stdout, o);
	}
	putchar('\n');
	print_global_options(stdout);
}

/* ---- parsing -------------------------------------------------------- */

struct parsed {
	const char *noun;              /* a known noun, or NULL */
	const struct cli_command *cmd;
	const char *globals[_G_MAX];
	struct cli_args args;
	bool help, version;
	char error[256];               /* the first error, not yet printed */
};

static void parse_error(struct parsed *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Recorded, not printed: a --help after the error still wins. */
static void parse_error(struct parsed *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->error, sizeof(p->error), fmt, ap);
	va_end(ap);
}

static const struct cli_option *find_option(const struct cli_option *opts,
					    const char *name, size_t len)
{
	const struct cli_option *o;

	for (o = opts; o->name; o++) {
		if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
			return o;
	}
	return NULL;
}

const char *arg_opt(const struct cli_args *args, const char *name)
{
	const struct cli_option *o = find_option(args->cmd->options, name, strlen(name));

	assert(o && !(o->flags & OPT_MULTI));
	return args->values[o - args->cmd->options];
}

bool arg_flag(const struct cli_args *args, const char *name)
{
	const struct cli_option *o = find_option(args->cmd->options, name, strlen(name));

	assert(o && !o->metavar);
	return args->values[o - args->cmd->options] != NULL;
}

const char *const *arg_list(const struct cli_args *args, const char *name, size_t *ret_n)
{
	const struct cli_option *o = find_option(args->cmd->options, name, strlen(name));
	const struct cli_list *l;

	assert(o && (o->flags & OPT_MULTI));
	l = &args->lists[o - args->cmd->options];
	*ret_n = l->n;
	return l->v;
}

/* "volume create: " or "" for messages about a command's arguments */
static void cmd_prefix(const struct cli_command *c, char *buf, size_t size)
{
	if (c)
		snprintf(buf, size, "%s%s%s: ", c->noun, c->verb ? " " : "",
			 c->verb ? c->verb : "");
	else
		buf[0] = '\0';
}

#define VERB_LIST_MAX 256

static void verb_list(const char *noun, char *buf, size_t size)
{
	size_t i, n = 0;

	buf[0] = '\0';
	for (i = 0; i < NCOMMANDS && n < size; i++) {
		if (strcmp(commands[i].noun, noun) == 0)
			n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? ", " : "",
					      commands[i].verb);
	}
}

/* A command word: a noun, then (for nouns with verbs) a verb. */
static int parse_word(struct parsed *p, const char *word)
{
	char verbs[VERB_LIST_MAX];
	size_t i;

	for (i = 0; i < NCOMMANDS; i++) {
		const struct cli_command *c = &commands[i];

		if (!p->noun && strcmp(c->noun, word) == 0) {
			p->noun = c->noun;
			if (!c->verb)
				p->cmd = c;
			return 0;
		}
		if (p->noun && c->verb && strcmp(c->noun, p->noun) == 0 &&
		    strcmp(c->verb, word) == 0) {
			p->cmd = c;
			return 0;
		}
	}
	if (!p->noun) {
		parse_error(p, "unknown command '%s' (see 'kiln --help')", word);
	} else {
		verb_list(p->noun, verbs, sizeof(verbs));
		parse_error(p, "unknown %s command '%s' (one of: %s)", p->noun, word, verbs);
	}
	return -EINVAL;
}

/* Where the values of an OPT_MULTI option end: at an option, "--" or -h. */
static bool ends_values(const char *a)
{
	return (a[0] == '-' && a[1] == '-') || strcmp(a, "-h") == 0;
}

static void list_add(struct cli_list *l, const char *value)
{
	l->v = xrealloc(l->v, l->n + 1, sizeof(*l->v));
	l->v[l->n++] = value;
}

/* One "--name[=value]" at argv[*i]; may consume the next argument, or for
 * an OPT_MULTI option every argument up to the next option. */
static int parse_option(struct parsed *p, int argc, char **argv, int *i)
{
	const char *arg = argv[*i] + 2, *eq = strchr(arg, '='), *value = NULL;
	size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
	const struct cli_option *o;
	struct cli_list *list = NULL;
	const char **slot;
	char pre[64];

	cmd_prefix(p->cmd, pre, sizeof(pre));
	o = find_option(global_options, arg, len);
	if (o) {
		slot = &p->globals[o - global_options];
	} else if (p->cmd && (o = find_option(p->cmd->options, arg, len))) {
		assert(o - p->cmd->options < CLI_MAX_OPTIONS);
		slot = &p->args.values[o - p->cmd->options];
		if (o->flags & OPT_MULTI)
			list = &p->args.lists[o - p->cmd->options];
	} else {
		parse_error(p, "%sunknown option '--%.*s'", pre, (int)len, arg);
		return -EINVAL;
	}

	if (!o->metavar) {
		if (eq) {
			parse_error(p, "%soption --%s takes no value", pre, o->name);
			return -EINVAL;
		}
		*slot = "";
		return 0;
	}
	if (list) {
		if (eq) {
			list_add(list, eq + 1);
			return 0;
		}
		if (*i + 1 >= argc || ends_values(argv[*i + 1])) {
			parse_error(p, "%soption --%s needs a value (%s)", pre, o->name,
				    o->metavar);
			return -EINVAL;
		}
		while (*i + 1 < argc && !ends_values(argv[*i + 1]))
			list_add(list, argv[++*i]);
		return 0;
	}
	if (eq) {
		value = eq + 1;
	} else if (*i + 1 < argc && !(argv[*i + 1][0] == '-' && argv[*i + 1][1] == '-' &&
				      argv[*i + 1][2] != '\0')) {
		value = argv[++*i];
	} else {
		parse_error(p, "%soption --%s needs a value (%s)", pre, o->name, o->metavar);
		return -EINVAL;
	}
	*slot = value;
	return 0;
}

static int parse_args(struct parsed *p, int argc, char **argv)
{
	bool options_done = false;
	const char *a;
	char pre[64];
	int i;

	p->args.argv = xmalloc((size_t)argc * sizeof(char *));
	for (i = 1; i < argc; i++) {
		a = argv[i];
		if (!options_done && a[0] == '-' && a[1] != '\0') {
			if (strcmp(a, "--") == 0) {
				options_done = true;
			} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
				p->help = true;
			} else if (strcmp(a, "--version") == 0) {
				p->version = true;
			} else if (a[1] == '-') {
				if (parse_option(p, argc, argv, &i) < 0)
					goto fail;
			} else {
				cmd_prefix(p->cmd, pre, sizeof(pre));
				parse_error(p, "%sunknown option '%s'", pre, a);
				goto fail;
			}
		} else if (!p->cmd) {
			if (parse_word(p, a) < 0)
				goto fail;
		} else {
			p->args.argv[p->args.argc++] = argv[i];
		}
	}
	return 0;

fail:
	/* an error hides nothing that asks for help after it */
	for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			p->help = true;
	}
	return -EINVAL;
}

/* The "missing" word of a synopsis such as "VOLUME-ID FILE": the n-th. */
static void missing_arg(const struct cli_command *c, int n, char *buf, size_t size)
{
	const char *s = c->synopsis, *end;

	for (; n > 0 && (s = strchr(s, ' ')); n--)
		s++;
	if (!s) {
		snprintf(buf, size, "an argument");
		return;
	}
	end = strchr(s, ' ');
	snprintf(buf, size, "%.*s", end ? (int)(end - s) : (int)strlen(s), s);
}

static int check_args(const struct parsed *p)
{
	const struct cli_command *c = p->cmd;
	const struct cli_option *o;
	ptrdiff_t i;
	char verbs[VERB_LIST_MAX], name[64], pre[64];

	if (!p->noun) {
		errmsg("missing command (see 'kiln --help')");
		return -EINVAL;
	}
	if (!c) {
		verb_list(p->noun, verbs, sizeof(verbs));
		errmsg("missing %s command (one of: %s)", p->noun, verbs);
		return -EINVAL;
	}
	if (p->args.argc < c->min_args) {
		missing_arg(c, p->args.argc, name, sizeof(name));
		cmd_prefix(c, pre, sizeof(pre));
		errmsg("%smissing %s", pre, name);
		return -EINVAL;
	}
	if (p->args.argc > c->max_args) {
		cmd_prefix(c, pre, sizeof(pre));
		errmsg("%sunexpected argument '%s'", pre, p->args.argv[c->max_args]);
		return -EINVAL;
	}
	for (o = c->options; o->name; o++) {
		i = o - c->options;
		if ((o->flags & OPT_REQUIRED) && !p->args.values[i] && !p->args.lists[i].n) {
			cmd_prefix(c, pre, sizeof(pre));
			errmsg("%smissing --%s %s", pre, o->name, o->metavar);
			return -EINVAL;
		}
	}
	return 0;
}

/* Region names like "us-east-1": lowercase letters, digits and dashes. */
bool region_name_valid(const char *s)
{
	size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-");

	return n > 0 && s[n] == '\0' && n < KILN_REGION_MAX && s[0] != '-';
}

static const char *from_env(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

/* The global options, with their environment variables and defaults. */
static int resolve_globals(const struct parsed *p, struct cli_ctx *ctx)
{
	const char *account;

	if (p->globals[G_DEBUG] && setenv("KILN_DEBUG", "1", 1) < 0) {
		errmsg_errno(-errno, "setenv KILN_DEBUG");
		return -EINVAL;
	}

	ctx->output = OUTPUT_TEXT;
	if (p->globals[G_OUTPUT] && parse_output(p->globals[G_OUTPUT], &ctx->output) < 0) {
		errmsg("invalid --output '%s': expected text or json", p->globals[G_OUTPUT]);
		return -EINVAL;
	}

	ctx->store_dir = p->globals[G_STORE];
	ctx->store_from = "--store";
	if (ctx->store_dir && !*ctx->store_dir) {
		errmsg("--store needs a directory, not an empty string");
		return -EINVAL;
	}
	if (!ctx->store_dir) {
		ctx->store_dir = from_env("KILN_STORE");
		ctx->store_from = "KILN_STORE";
	}
	if (!ctx->store_dir) {
		ctx->store_dir = KILN_DEFAULT_STORE;
		ctx->store_from = NULL;
	}

	ctx->region_explicit = p->globals[G_REGION] != NULL;
	ctx->region_name = p->globals[G_REGION];
	if (!ctx->region_name)
		ctx->region_name = from_env("KILN_REGION");
	if (!ctx->region_name)
		ctx->region_name = KILN_DEFAULT_REGION;
	if (!region_name_valid(ctx->region_name)) {
		errmsg("invalid region '%s'%s: expected a name like us-east-1",
		       ctx->region_name, p->globals[G_REGION] ? "" : " in KILN_REGION");
		return -EINVAL;
	}

	account = p->globals[G_ACCOUNT];
	if (account && !account_valid(account)) {
		errmsg("invalid account '%s': expected exactly 12 digits", account);
		return -EINVAL;
	}
	if (!account) {
		account = from_env("KILN_ACCOUNT");
		if (account && !account_valid(account)) {
			errmsg("invalid account '%s' in KILN_ACCOUNT: expected exactly 12 digits",
			       account);
			return -EINVAL;
		}
	}
	ctx->account = account;
	ctx->account_explicit = account != NULL;
	return 0;
}

/* ---- dispatch ------------------------------------------------------- */

static int run(const struct cli_command *c, struct cli_ctx *ctx,
	       const struct cli_args *args)
{
	int r, status;

	if (!(c->flags & CMD_STORE))
		return c->run(ctx, args);

	r = kiln_store_open(ctx->store_dir, &ctx->store);
	if (r < 0) {
		err_store_open(ctx->store_dir, ctx->store_from, r);
		return EXIT_FAILURE;
	}
	if (!ctx->account)
		ctx->account = kiln_store_default_account(ctx->store);
	if (c->flags & CMD_REGION) {
		r = kiln_region_open(ctx->store, ctx->region_name, &ctx->region);
		if (r < 0) {
			err_region_open(ctx->store_dir, ctx->region_name, r);
			kiln_store_close(ctx->store);
			return EXIT_FAILURE;
		}
	}
	status = c->run(ctx, args);
	kiln_region_close(ctx->region);
	kiln_store_close(ctx->store);
	return status;
}

int main(int argc, char **argv)
{
	struct parsed p = { 0 };
	struct cli_ctx ctx = { 0 };
	int status, r;
	size_t i;

	r = parse_args(&p, argc, argv);
	if (p.help) {
		if (p.cmd)
			help_command(p.cmd);
		else if (p.noun && noun_has_verbs(p.noun))
			help_noun(p.noun);
		else
			help_top();
		status = EXIT_SUCCESS;
		goto out;
	}
	if (r < 0) {
		errmsg("%s", p.error);
		status = EXIT_FAILURE;
		goto out;
	}
	if (p.version) {
		printf("kiln %s\n", kiln_version());
		status = EXIT_SUCCESS;
		goto out;
	}
	if (check_args(&p) < 0 || resolve_globals(&p, &ctx) < 0) {
		status = EXIT_FAILURE;
		goto out;
	}
	p.args.cmd = p.cmd;
	status = run(p.cmd, &ctx, &p.args);
out:
	for (i = 0; i < CLI_MAX_OPTIONS; i++)
		free(p.args.lists[i].v);
	free(p.args.argv);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		errmsg_errno(-errno, "write error on standard output");
		status = EXIT_FAILURE;
	}
	return status;
}
