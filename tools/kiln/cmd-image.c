/* SPDX-License-Identifier: MIT */
/* cmd-image.c: kiln image register, describe, its attributes, deregister and copy; kiln wait.
 *
 * The options take EC2's shapes, as the AWS CLI spells them: block device
 * mappings and permission changes are JSON (or file://PATH), checked here
 * for shape and types with messages that name the entry and the field; the
 * rules about what may be registered are the engine's, and its reasons
 * are printed as they come. describe filters what kiln_image_list gives
 * the caller, as DescribeImages does: values of one filter are ORed, the
 * filters and the other options ANDed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln-tool.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define IMAGE_DESCRIPTION_MAX (sizeof(((struct kiln_image_info *)0)->description) - 1)
#define WAIT_INTERVAL_NS 200000000L
#define WAIT_DEFAULT_TIMEOUT 600
#define WAIT_MAX_TIMEOUT (365L * 24 * 3600)
#define EXIT_TIMEOUT 2

/* ---- errors --------------------------------------------------------- */

/* Why the engine refused to act on image id (in region, for the caller). */
static void err_image(const char *region, const char *id, int r, const char *why)
{
	switch (r) {
	case -ENOENT:
		errmsg("image %s does not exist or is not yours to launch (in region %s)", id,
		       region);
		break;
	case -EPERM:
		errmsg("only the owner of %s may do that", id);
		break;
	case -EXDEV:
		errmsg("image %s belongs to another region, not %s", id, region);
		break;
	case -EBADMSG:
		errmsg("image %s: corrupt data in the store (run 'kiln store verify')", id);
		break;
	default:
		if (why && *why)
			errmsg("image %s: %s: %s", id, strerror(-r), why);
		else
			errmsg_errno(r, "image %s", id);
		break;
	}
}

/* ---- permission changes ----------------------------------------------- */

static void perm_err(const char *opt, const char *list, size_t entry, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void perm_err(const char *opt, const char *list, size_t entry, const char *fmt, ...)
{
	char what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (list)
		errmsg("--%s: %s entry %zu: %s", opt, list, entry, what);
	else
		errmsg("--%s: %s", opt, what);
}

/* One of "Add" or "Remove": an array of {"UserId": ACCOUNT} or {"Group": "all"}. */
static int perm_list(const char *opt, const char *name, const struct json_node *arr,
		     const char ***ret_users, size_t *ret_n, bool *ret_all)
{
	const struct json_node *e, *v;
	const char **users = NULL;
	size_t i, k, n = 0;
	bool all = false;

	if (arr->type != JSON_ARRAY) {
		perm_err(opt, NULL, 0, "%s must be an array, not %s", name,
			 json_type_name(arr->type));
		return -1;
	}
	for (i = 0; i < arr->n; i++) {
		e = arr->items[i];
		if (e->type != JSON_OBJECT) {
			perm_err(opt, name, i + 1, "must be an object ({\"UserId\": \"ACCOUNT\"} or "
				 "{\"Group\": \"all\"}), not %s", json_type_name(e->type));
			goto fail;
		}
		for (k = 0; k < e->n; k++) {
			if (strcmp(e->keys[k], "UserId") != 0 && strcmp(e->keys[k], "Group") != 0) {
				perm_err(opt, name, i + 1, "unknown key \"%s\" (expected UserId or "
					 "Group)", e->keys[k]);
				goto fail;
			}
		}
		if (e->n != 1) {
			perm_err(opt, name, i + 1, "give exactly one of UserId or Group");
			goto fail;
		}
		v = e->items[0];
		if (v->type != JSON_STRING) {
			perm_err(opt, name, i + 1, "%s must be a string, not %s", e->keys[0],
				 json_type_name(v->type));
			goto fail;
		}
		if (strcmp(e->keys[0], "Group") == 0) {
			if (strcmp(v->text, "all") != 0) {
				perm_err(opt, name, i + 1, "unknown Group \"%s\" (the only group "
					 "is \"all\")", v->text);
				goto fail;
			}
			all = true;
			continue;
		}
		if (!account_valid(v->text)) {
			perm_err(opt, name, i + 1, "UserId \"%s\" is not an account (expected "
				 "exactly %d digits)", v->text, KILN_ACCOUNT_LEN);
			goto fail;
		}
		users = xrealloc(users, n + 1, sizeof(*users));
		users[n++] = v->text;
	}
	*ret_users = users;
	*ret_n = n;
	*ret_all = all;
	return 0;

fail:
	free(users);
	return -1;
}

void perm_change_free(struct perm_change *pc)
{
	free(pc->add);
	free(pc->remove);
	json_node_free(pc->root);
	memset(pc, 0, sizeof(*pc));
}

int perm_change_parse(const char *opt, const char *arg, struct perm_change *ret_change)
{
	struct perm_change pc = { 0 };
	const struct json_node *add, *remove;
	size_t i, k;

	if (json_parse_arg(opt, arg, &pc.root) < 0)
		return -1;
	if (pc.root->type != JSON_OBJECT) {
		perm_err(opt, NULL, 0, "expected an object {\"Add\": [...], \"Remove\": [...]}, "
			 "not %s", json_type_name(pc.root->type));
		goto fail;
	}
	for (i = 0; i < pc.root->n; i++) {
		if (strcmp(pc.root->keys[i], "Add") != 0 && strcmp(pc.root->keys[i], "Remove") != 0) {
			perm_err(opt, NULL, 0, "unknown key \"%s\" (expected Add or Remove)",
				 pc.root->keys[i]);
			goto fail;
		}
	}
	add = json_node_get(pc.root, "Add");
	remove = json_node_get(pc.root, "Remove");
	if (add && perm_list(opt, "Add", add, &pc.add, &pc.nadd, &pc.add_all) < 0)
		goto fail;
	if (remove && perm_list(opt, "Remove", remove, &pc.remove, &pc.nremove,
				&pc.remove_all) < 0)
		goto fail;
	if (!pc.nadd && !pc.nremove && !pc.add_all && !pc.remove_all) {
		perm_err(opt, NULL, 0, "nothing to change: Add and Remove are %s",
			 add || remove ? "empty" : "missing");
		goto fail;
	}
	if (pc.add_all && pc.remove_all) {
		perm_err(opt, NULL, 0, "the group \"all\" is in both Add and Remove");
		goto fail;
	}
	for (i = 0; i < pc.nadd; i++) {
		for (k = 0; k < pc.nremove; k++) {
			if (strcmp(pc.add[i], pc.remove[k]) == 0) {
				perm_err(opt, NULL, 0, "account %s is in both Add and Remove",
					 pc.add[i]);
				goto fail;
			}
		}
	}
	*ret_change = pc;
	return 0;

fail:
	perm_change_free(&pc);
	return -1;
}

void json_permissions(struct json *j, const char *key, bool group_all,
		      const char *const *users, size_t nusers)
{
	size_t i;

	json_key(j, key);
	json_array_begin(j);
	if (group_all) {
		json_object_begin(j);
		json_kv_string(j, "Group", "all");
		json_object_end(j);
	}
	for (i = 0; i < nusers; i++) {
		json_object_begin(j);
		json_kv_string(j, "UserId", users[i]);
		json_object_end(j);
	}
	json_array_end(j);
}

void print_permissions_text(bool group_all, const char *const *users, size_t nusers)
{
	static const char *const headers[] = { "PERMISSION", "VALUE" };
	struct table tab;
	size_t i;

	if (!group_all && nusers == 0)
		return;
	table_init(&tab, 2, headers, 0);
	if (group_all)
		table_add(&tab, "Group", "all");
	for (i = 0; i < nusers; i++)
		table_add(&tab, "UserId", users[i]);
	table_print(&tab, stdout);
	table_free(&tab);
}

/* ---- block device mappings -------------------------------------------- */

#define BDM_OPT "block-device-mappings"

static void bdm_err(size_t entry, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bdm_err(size_t entry, const char *fmt, ...)
{
	char what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	errmsg("--%s: entry %zu: %s", BDM_OPT, entry, what);
}

/* A string member into dst[size]: 0, or -1 after a message. */
static int bdm_string(size_t entry, const char *field, const struct json_node *v, char *dst,
		      size_t size, bool nonempty)
{
	if (v->type != JSON_STRING) {
		bdm_err(entry, "%s must be a string, not %s", field, json_type_name(v->type));
		return -1;
	}
	if (nonempty && !*v->text) {
		bdm_err(entry, "%s must not be empty", field);
		return -1;
	}
	if (strlen(v->text) >= size) {
		bdm_err(entry, "%s \"%.40s%s\" is too long (at most %zu bytes)", field, v->text,
			strlen(v->text) > 40 ? "..." : "", size - 1);
		return -1;
	}
	snprintf(dst, size, "%s", v->text);
	return 0;
}

static bool one_of(const char *s, const char *const *names, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (strcmp(s, names[i]) == 0)
			return true;
	}
	return false;
}

static int bdm_ebs(size_t entry, const struct json_node *ebs, struct kiln_bdm *m)
{
	static const char *const keys[] = {
		"SnapshotId", "VolumeSize", "DeleteOnTermination", "VolumeType",
	};
	const struct json_node *v;
	uint64_t size;
	size_t i;

	if (ebs->type != JSON_OBJECT) {
		bdm_err(entry, "Ebs must be an object, not %s", json_type_name(ebs->type));
		return -1;
	}
	for (i = 0; i < ebs->n; i++) {
		if (!one_of(ebs->keys[i], keys, ARRAY_SIZE(keys))) {
			bdm_err(entry, "unknown key \"Ebs.%s\" (kiln knows Ebs.SnapshotId, "
				"Ebs.VolumeSize, Ebs.DeleteOnTermination and Ebs.VolumeType)",
				ebs->keys[i]);
			return -1;
		}
	}
	m->ebs = true;
	m->delete_on_termination = true;
	snprintf(m->volume_type, sizeof(m->volume_type), "gp3");
	v = json_node_get(ebs, "SnapshotId");
	if (v) {
		if (bdm_string(entry, "Ebs.SnapshotId", v, m->snapshot_id,
			       sizeof(m->snapshot_id), true) < 0)
			return -1;
		if (!kiln_id_valid(m->snapshot_id, "snap")) {
			bdm_err(entry, "Ebs.SnapshotId \"%s\" is not a snapshot id (snap- followed "
				"by 17 lowercase hex digits)", m->snapshot_id);
			return -1;
		}
	}
	v = json_node_get(ebs, "VolumeSize");
	if (v) {
		if (v->type == JSON_NUMBER && v->integer && v->text[0] != '-' &&
		    (!json_node_u64(v, &size) || size > UINT64_MAX / GIB)) {
			bdm_err(entry, "Ebs.VolumeSize %s GiB is too large", v->text);
			return -1;
		}
		if (!json_node_u64(v, &size) || size == 0) {
			bdm_err(entry, "Ebs.VolumeSize must be a positive integer (GiB), not %s",
				v->type == JSON_NUMBER ? v->text : json_type_name(v->type));
			return -1;
		}
		if (size > UINT64_MAX / GIB) {
			bdm_err(entry, "Ebs.VolumeSize %s GiB is too large", v->text);
			return -1;
		}
		m->volume_size = size;
	}
	v = json_node_get(ebs, "DeleteOnTermination");
	if (v) {
		if (v->type != JSON_BOOL) {
			bdm_err(entry, "Ebs.DeleteOnTermination must be true or false, not %s",
				json_type_name(v->type));
			return -1;
		}
		m->delete_on_termination = v->boolean;
	}
	v = json_node_get(ebs, "VolumeType");
	if (v && bdm_string(entry, "Ebs.VolumeType", v, m->volume_type,
			    sizeof(m->volume_type), true) < 0)
		return -1;
	return 0;
}

/* --block-device-mappings: a JSON array of EC2 BlockDeviceMapping objects. */
int parse_mappings(const char *arg, struct kiln_bdm **ret_v, size_t *ret_n)
{
	static const char *const keys[] = { "DeviceName", "VirtualName", "NoDevice", "Ebs" };
	const struct json_node *root = NULL, *e, *v;
	struct json_node *tree;
	struct kiln_bdm *v_out = NULL, *m;
	size_t i, k, kinds;

	if (json_parse_arg(BDM_OPT, arg, &tree) < 0)
		return -1;
	root = tree;
	if (root->type != JSON_ARRAY) {
		errmsg("--%s: expected an array of mappings [{\"DeviceName\": ..., ...}, ...], "
		       "not %s", BDM_OPT, json_type_name(root->type));
		goto fail;
	}
	if (root->n == 0) {
		errmsg("--%s: no mappings (the root device must be mapped)", BDM_OPT);
		goto fail;
	}
	if (root->n > KILN_MAX_MAPPINGS) {
		errmsg("--%s: %zu mappings (at most %d)", BDM_OPT, root->n, KILN_MAX_MAPPINGS);
		goto fail;
	}
	v_out = xmalloc(root->n * sizeof(*v_out));
	memset(v_out, 0, root->n * sizeof(*v_out));
	for (i = 0; i < root->n; i++) {
		e = root->items[i];
		m = &v_out[i];
		if (e->type != JSON_OBJECT) {
			bdm_err(i + 1, "must be an object, not %s", json_type_name(e->type));
			goto fail;
		}
		for (k = 0; k < e->n; k++) {
			if (!one_of(e->keys[k], keys, ARRAY_SIZE(keys))) {
				bdm_err(i + 1, "unknown key \"%s\" (kiln knows DeviceName, "
					"VirtualName, NoDevice and Ebs)", e->keys[k]);
				goto fail;
			}
		}
		v = json_node_get(e, "DeviceName");
		if (!v) {
			bdm_err(i + 1, "DeviceName is missing");
			goto fail;
		}
		if (bdm_string(i + 1, "DeviceName", v, m->device_name, sizeof(m->device_name),
			       true) < 0)
			goto fail;
		kinds = (json_node_get(e, "Ebs") != NULL) + (json_node_get(e, "VirtualName") != NULL) +
			(json_node_get(e, "NoDevice") != NULL);
		if (kinds != 1) {
			bdm_err(i + 1, "give exactly one of Ebs, VirtualName or NoDevice for %s",
				m->device_name);
			goto fail;
		}
		v = json_node_get(e, "VirtualName");
		if (v && bdm_string(i + 1, "VirtualName", v, m->virtual_name,
				    sizeof(m->virtual_name), true) < 0)
			goto fail;
		v = json_node_get(e, "NoDevice");
		if (v) {
			if (v->type != JSON_STRING) {
				bdm_err(i + 1, "NoDevice must be a string (e.g. \"\"), not %s",
					json_type_name(v->type));
				goto fail;
			}
			m->no_device = true;
		}
		v = json_node_get(e, "Ebs");
		if (v && bdm_ebs(i + 1, v, m) < 0)
			goto fail;
	}
	*ret_n = root->n;
	*ret_v = v_out;
	json_node_free(tree);
	return 0;

fail:
	free(v_out);
	json_node_free(tree);
	return -1;
}

/* ---- register ------------------------------------------------------- */

static const char *const architectures[] = { "x86_64", "arm64", "i386" };
static const char *const boot_modes[] = { "legacy-bios", "uefi", "uefi-preferred" };
static const char *const virtualization_types[] = { "hvm" };

/* --opt, if given, must be one of names (n of them, listed in messages). */
static bool check_choice(const char *opt, const char *value, const char *const *names, size_t n)
{
	char list[128];
	size_t i, len = 0;

	if (!value || one_of(value, names, n))
		return true;
	list[0] = '\0';
	for (i = 0; i < n && len < sizeof(list); i++)
		len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s",
					i == 0 ? "" : i + 1 == n ? " or " : ", ", names[i]);
	errmsg("invalid --%s '%s': expected %s", opt, value, list);
	return false;
}

static int parse_tags(const char *const *words, size_t n, struct kiln_tag **ret_tags)
{
	struct kiln_tag *tags;
	const char *eq;
	size_t i, k, klen;

	if (n > KILN_MAX_TAGS) {
		errmsg("--tag: %zu tags (at most %d)", n, KILN_MAX_TAGS);
		return -1;
	}
	tags = xmalloc((n ? n : 1) * sizeof(*tags));
	for (i = 0; i < n; i++) {
		eq = strchr(words[i], '=');
		if (!eq) {
			errmsg("--tag '%s': expected KEY=VALUE", words[i]);
			goto fail;
		}
		klen = (size_t)(eq - words[i]);
		if (klen == 0) {
			errmsg("--tag '%s': the key is empty", words[i]);
			goto fail;
		}
		if (klen >= sizeof(tags[i].key)) {
			errmsg("--tag: the key '%.*s...' is too long (at most %zu bytes)", 20,
			       words[i], sizeof(tags[i].key) - 1);
			goto fail;
		}
		if (strlen(eq + 1) >= sizeof(tags[i].value)) {
			errmsg("--tag: the value of '%.*s' is too long (at most %zu bytes)",
			       (int)klen, words[i], sizeof(tags[i].value) - 1);
			goto fail;
		}
		snprintf(tags[i].key, sizeof(tags[i].key), "%.*s", (int)klen, words[i]);
		snprintf(tags[i].value, sizeof(tags[i].value), "%s", eq + 1);
		for (k = 0; k < i; k++) {
			if (strcmp(tags[k].key, tags[i].key) == 0) {
				errmsg("--tag: the key '%s' is given twice", tags[i].key);
				goto fail;
			}
		}
	}
	*ret_tags = tags;
	return 0;

fail:
	free(tags);
	return -1;
}

static void print_image_id(const struct cli_ctx *ctx, const char *id)
{
	struct json j;

	if (ctx->output == OUTPUT_TEXT) {
		printf("%s\n", id);
		return;
	}
	json_init(&j, stdout);
	json_object_begin(&j);
	json_kv_string(&j, "ImageId", id);
	json_object_end(&j);
	json_finish(&j);
}

int cmd_image_register(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct kiln_image_spec spec = { 0 };
	struct kiln_bdm *mappings = NULL;
	struct kiln_tag *tags = NULL;
	const char *const *tag_words;
	char id[KILN_ID_MAX], why[512];
	size_t ntags;
	int r, status = EXIT_FAILURE;

	spec.name = arg_opt(args, "name");
	spec.root_device_name = arg_opt(args, "root-device-name");
	spec.architecture = arg_opt(args, "architecture");
	spec.boot_mode = arg_opt(args, "boot-mode");
	spec.virtualization_type = arg_opt(args, "virtualization-type");
	spec.description = arg_opt(args, "description");
	spec.no_verify_boot = arg_flag(args, "no-verify-boot");
	tag_words = arg_list(args, "tag", &ntags);

	if (!check_choice("architecture", spec.architecture, architectures,
			  ARRAY_SIZE(architectures)) ||
	    !check_choice("boot-mode", spec.boot_mode, boot_modes, ARRAY_SIZE(boot_modes)) ||
	    !check_choice("virtualization-type", spec.virtualization_type,
			  virtualization_types, ARRAY_SIZE(virtualization_types)))
		return EXIT_FAILURE;
	if (spec.description && strlen(spec.description) > IMAGE_DESCRIPTION_MAX) {
		errmsg("--description is too long (%zu bytes; at most %zu)",
		       strlen(spec.description), IMAGE_DESCRIPTION_MAX);
		return EXIT_FAILURE;
	}
	if (parse_tags(tag_words, ntags, &tags) < 0)
		return EXIT_FAILURE;
	if (parse_mappings(arg_opt(args, "block-device-mappings"), &mappings,
			   &spec.nmappings) < 0)
		goto out;
	spec.mappings = mappings;
	spec.tags = tags;
	spec.ntags = ntags;

	why[0] = '\0';
	r = kiln_image_register(ctx->region, ctx->account, &spec, id, why, sizeof(why));
	if (r < 0) {
		if (why[0])
			errmsg("cannot register image: %s", why);
		else if (r == -EEXIST)
			errmsg("cannot register image: account %s already has an image named "
			       "'%s' in region %s", ctx->account, spec.name, ctx->region_name);
		else
			errmsg_errno(r, "cannot register image");
		goto out;
	}
	print_image_id(ctx, id);
	status = EXIT_SUCCESS;
out:
	free(mappings);
	free(tags);
	return status;
}

/* ---- an image as shown -------------------------------------------------- */

struct image {
	struct kiln_image_info info;
	uint64_t gib[KILN_MAX_MAPPINGS];     /* each EBS mapping's size; 0: unknown */
};

/* Sizes in GiB as EC2 shows them: a mapping without Ebs.VolumeSize has its
 * snapshot's size. */
static void resolve_sizes(struct kiln_region *region, struct image *im)
{
	const struct kiln_bdm *m;
	struct kiln_snapshot_info si;
	size_t i;

	for (i = 0; i < im->info.nmappings && i < KILN_MAX_MAPPINGS; i++) {
		m = &im->info.mappings[i];
		im->gib[i] = 0;
		if (!m->ebs)
			continue;
		if (m->volume_size)
			im->gib[i] = m->volume_size;
		else if (m->snapshot_id[0] && kiln_snapshot_describe(region, m->snapshot_id, &si) == 0)
			im->gib[i] = gib_round_up(si.size);
	}
}

static const char *virtualization_type(const struct kiln_image_info *info)
{
	return info->virtualization_type[0] ? info->virtualization_type : "hvm";
}

static bool launch_user(const struct kiln_image_info *info, const char *account)
{
	size_t i;

	for (i = 0; i < info->nlaunch_users; i++) {
		if (strcmp(info->launch_users[i], account) == 0)
			return true;
	}
	return false;
}

static void json_mapping(struct json *j, const struct kiln_bdm *m, uint64_t gib)
{
	json_object_begin(j);
	json_kv_string(j, "DeviceName", m->device_name);
	if (m->ebs) {
		json_key(j, "Ebs");
		json_object_begin(j);
		if (m->snapshot_id[0])
			json_kv_string(j, "SnapshotId", m->snapshot_id);
		if (gib)
			json_kv_u64(j, "VolumeSize", gib);
		json_kv_bool(j, "DeleteOnTermination", m->delete_on_termination);
		json_kv_string(j, "VolumeType", m->volume_type[0] ? m->volume_type : "gp3");
		json_object_end(j);
	} else if (m->no_device) {
		json_kv_string(j, "NoDevice", "");
	} else {
		json_kv_string(j, "VirtualName", m->virtual_name);
	}
	json_object_end(j);
}

static void json_mappings(struct json *j, const struct image *im)
{
	size_t i;

	json_key(j, "BlockDeviceMappings");
	json_array_begin(j);
	for (i = 0; i < im->info.nmappings && i < KILN_MAX_MAPPINGS; i++)
		json_mapping(j, &im->info.mappings[i], im->gib[i]);
	json_array_end(j);
}

/* "Probe": the engine's probe object, parsed and written again so that it
 * is indented with the rest; {} (and a warning) if it is not an object. */
static void json_probe(struct json *j, const struct kiln_image_info *info)
{
	struct json_node *probe = NULL;
	char err[256];
	size_t len = strnlen(info->probe, sizeof(info->probe));

	json_key(j, "Probe");
	if (len == 0) {
		json_object_begin(j);
		json_object_end(j);
		return;
	}
	if (len == sizeof(info->probe)) {
		errmsg("warning: image %s: the probe record is not terminated; shown as {}",
		       info->id);
	} else if (json_parse(info->probe, len, JSON_MAX_DEPTH - j->depth, &probe, err,
			      sizeof(err)) < 0) {
		errmsg("warning: image %s: the probe record is not valid JSON (%s); shown as {}",
		       info->id, err);
	} else if (probe->type != JSON_OBJECT) {
		errmsg("warning: image %s: the probe record is %s, not an object; shown as {}",
		       info->id, json_type_name(probe->type));
	} else {
		json_write_node(j, probe);
		json_node_free(probe);
		return;
	}
	json_node_free(probe);
	json_object_begin(j);
	json_object_end(j);
}

static void json_image(struct json *j, const struct image *im)
{
	const struct kiln_image_info *info = &im->info;
	char t[ISO_TIME_MAX];
	size_t i;

	json_object_begin(j);
	json_kv_string(j, "ImageId", info->id);
	json_kv_string(j, "Name", info->name);
	json_kv_string(j, "OwnerId", info->owner);
	json_kv_string(j, "State", info->state);
	if (strcmp(info->state, "failed") == 0) {
		json_key(j, "StateReason");
		json_object_begin(j);
		json_kv_string(j, "Code", "Client.InvalidImage");
		json_kv_string(j, "Message", info->state_reason);
		json_object_end(j);
	}
	json_kv_bool(j, "Public", info->public);
	json_kv_string(j, "Architecture", info->architecture);
	if (info->boot_mode[0])         /* EC2 leaves it out when unset */
		json_kv_string(j, "BootMode", info->boot_mode);
	json_kv_string(j, "VirtualizationType", virtualization_type(info));
	json_kv_string(j, "RootDeviceName", info->root_device_name);
	json_kv_string(j, "RootDeviceType", "ebs");
	json_kv_string(j, "ImageType", "machine");
	json_mappings(j, im);
	json_kv_string(j, "Description", info->description);
	json_kv_string(j, "CreationDate", iso_time(info->creation_time, true, t));
	if (info->source_image_id[0])
		json_kv_string(j, "SourceImageId", info->source_image_id);
	if (info->source_image_region[0])
		json_kv_string(j, "SourceImageRegion", info->source_image_region);
	json_key(j, "Tags");
	json_array_begin(j);
	for (i = 0; i < info->ntags && i < KILN_MAX_TAGS; i++) {
		json_object_begin(j);
		json_kv_string(j, "Key", info->tags[i].key);
		json_kv_string(j, "Value", info->tags[i].value);
		json_object_end(j);
	}
	json_array_end(j);
	json_probe(j, info);
	json_object_end(j);
}

/* ---- describe: filters ---------------------------------------------- */

enum filter_kind {
	F_ARCHITECTURE,
	F_BDM_DELETE_ON_TERMINATION,
	F_BDM_DEVICE_NAME,
	F_BDM_SNAPSHOT_ID,
	F_BDM_VOLUME_SIZE,
	F_BDM_VOLUME_TYPE,
	F_BOOT_MODE,
	F_CREATION_DATE,
	F_DESCRIPTION,
	F_IMAGE_ID,
	F_IMAGE_TYPE,
	F_IS_PUBLIC,
	F_NAME,
	F_OWNER_ID,
	F_ROOT_DEVICE_NAME,
	F_ROOT_DEVICE_TYPE,
	F_SOURCE_IMAGE_ID,
	F_SOURCE_IMAGE_REGION,
	F_STATE,
	F_TAG,                 /* tag:KEY */
	F_TAG_KEY,
	F_VIRTUALIZATION_TYPE,
	_F_MAX,
};

static const char *const filter_names[] = {
	[F_ARCHITECTURE] = "architecture",
	[F_BDM_DELETE_ON_TERMINATION] = "block-device-mapping.delete-on-termination",
	[F_BDM_DEVICE_NAME] = "block-device-mapping.device-name",
	[F_BDM_SNAPSHOT_ID] = "block-device-mapping.snapshot-id",
	[F_BDM_VOLUME_SIZE] = "block-device-mapping.volume-size",
	[F_BDM_VOLUME_TYPE] = "block-device-mapping.volume-type",
	[F_BOOT_MODE] = "boot-mode",
	[F_CREATION_DATE] = "creation-date",
	[F_DESCRIPTION] = "description",
	[F_IMAGE_ID] = "image-id",
	[F_IMAGE_TYPE] = "image-type",
	[F_IS_PUBLIC] = "is-public",
	[F_NAME] = "name",
	[F_OWNER_ID] = "owner-id",
	[F_ROOT_DEVICE_NAME] = "root-device-name",
	[F_ROOT_DEVICE_TYPE] = "root-device-type",
	[F_SOURCE_IMAGE_ID] = "source-image-id",
	[F_SOURCE_IMAGE_REGION] = "source-image-region",
	[F_STATE] = "state",
	[F_TAG] = "tag:KEY",
	[F_TAG_KEY] = "tag-key",
	[F_VIRTUALIZATION_TYPE] = "virtualization-type",
};

struct filter {
	enum filter_kind kind;
	char *name;                    /* as given */
	const char *tag_key;           /* F_TAG: what follows "tag:" in name */
	char **values;
	size_t nvalues;
};

struct filters {
	struct filter *v;
	size_t n;
};

static void filters_free(struct filters *fs)
{
	size_t i, k;

	for (i = 0; i < fs->n; i++) {
		for (k = 0; k < fs->v[i].nvalues; k++)
			free(fs->v[i].values[k]);
		free(fs->v[i].values);
		free(fs->v[i].name);
	}
	free(fs->v);
	fs->v = NULL;
	fs->n = 0;
}

/* Bytes of the character at s (1 for a byte that is not UTF-8). */
static size_t char_len(const char *s)
{
	size_t n = utf8_len((const unsigned char *)s);

	return n ? n : 1;
}

/* EC2's filter wildcards: '*' any run of characters, '?' one character,
 * '\' makes the next character literal. Nothing else is special. */
static bool wildcard_match(const char *p, const char *s)
{
	const char *star_p = NULL, *star_s = NULL;
	size_t plen;

	while (*s) {
		if (*p == '*') {
			star_p = ++p;
			star_s = s;
			continue;
		}
		if (*p == '?') {
			p++;
			s += char_len(s);
			continue;
		}
		plen = *p == '\\' && p[1] ? 2 : 1;
		if (*p && p[plen - 1] == *s) {
			p += plen;
			s++;
			continue;
		}
		if (!star_p)
			return false;
		/* the last '*' takes one character more */
		star_s += char_len(star_s);
		s = star_s;
		p = star_p;
	}
	while (*p == '*')
		p++;
	return *p == '\0';
}

static bool any_value(const struct filter *f, const char *s)
{
	size_t i;

	for (i = 0; i < f->nvalues; i++) {
		if (wildcard_match(f->values[i], s))
			return true;
	}
	return false;
}

static bool filter_match(const struct filter *f, const struct image *im)
{
	const struct kiln_image_info *info = &im->info;
	char buf[ISO_TIME_MAX];
	size_t i;

	switch (f->kind) {
	case F_ARCHITECTURE:
		return any_value(f, info->architecture);
	case F_BOOT_MODE:
		return any_value(f, info->boot_mode);
	case F_CREATION_DATE:
		return any_value(f, iso_time(info->creation_time, true, buf));
	case F_DESCRIPTION:
		return any_value(f, info->description);
	case F_IMAGE_ID:
		return any_value(f, info->id);
	case F_IMAGE_TYPE:
		return any_value(f, "machine");
	case F_IS_PUBLIC:
		return any_value(f, info->public ? "true" : "false");
	case F_NAME:
		return any_value(f, info->name);
	case F_OWNER_ID:
		return any_value(f, info->owner);
	case F_ROOT_DEVICE_NAME:
		return any_value(f, info->root_device_name);
	case F_ROOT_DEVICE_TYPE:
		return any_value(f, "ebs");
	case F_SOURCE_IMAGE_ID:
		return any_value(f, info->source_image_id);
	case F_SOURCE_IMAGE_REGION:
		return any_value(f, info->source_image_region);
	case F_STATE:
		return any_value(f, info->state);
	case F_VIRTUALIZATION_TYPE:
		return any_value(f, virtualization_type(info));
	case F_TAG:
		for (i = 0; i < info->ntags && i < KILN_MAX_TAGS; i++) {
			if (strcmp(info->tags[i].key, f->tag_key) == 0 &&
			    any_value(f, info->tags[i].value))
				return true;
		}
		return false;
	case F_TAG_KEY:
		for (i = 0; i < info->ntags && i < KILN_MAX_TAGS; i++) {
			if (any_value(f, info->tags[i].key))
				return true;
		}
		return false;
	default:
		break;
	}
	/* the block device mapping filters: any one mapping matches */
	for (i = 0; i < info->nmappings && i < KILN_MAX_MAPPINGS; i++) {
		const struct kiln_bdm *m = &info->mappings[i];

		switch (f->kind) {
		case F_BDM_DEVICE_NAME:
			if (any_value(f, m->device_name))
				return true;
			break;
		case F_BDM_SNAPSHOT_ID:
			if (m->ebs && any_value(f, m->snapshot_id))
				return true;
			break;
		case F_BDM_VOLUME_SIZE:
			snprintf(buf, sizeof(buf), "%" PRIu64, im->gib[i]);
			if (m->ebs && im->gib[i] && any_value(f, buf))
				return true;
			break;
		case F_BDM_VOLUME_TYPE:
			if (m->ebs && any_value(f, m->volume_type[0] ? m->volume_type : "gp3"))
				return true;
			break;
		case F_BDM_DELETE_ON_TERMINATION:
			if (m->ebs && any_value(f, m->delete_on_termination ? "true" : "false"))
				return true;
			break;
		default:
			break;
		}
	}
	return false;
}

static int filter_add(struct filters *fs, const char *name, char **values, size_t nvalues)
{
	struct filter f = { 0 };
	char known[1024];
	size_t i, len = 0;

	if (strncmp(name, "tag:", 4) == 0) {
		if (!name[4]) {
			errmsg("--filters: 'tag:' needs a tag key after it, as in tag:Name");
			return -1;
		}
		f.kind = F_TAG;
	} else {
		for (i = 0; i < _F_MAX; i++) {
			if (i != F_TAG && strcmp(name, filter_names[i]) == 0)
				break;
		}
		if (i == _F_MAX) {
			for (i = 0; i < _F_MAX; i++)
				len += (size_t)snprintf(known + len, sizeof(known) - len, "%s%s",
							i ? ", " : "", filter_names[i]);
			errmsg("--filters: unknown filter name '%s' (known: %s)", name, known);
			return -1;
		}
		f.kind = (enum filter_kind)i;
	}
	if (nvalues == 0) {
		errmsg("--filters: filter '%s' has no values", name);
		return -1;
	}
	f.name = xstrdup(name);
	if (f.kind == F_TAG)
		f.tag_key = f.name + 4;
	f.values = values;
	f.nvalues = nvalues;
	fs->v = xrealloc(fs->v, fs->n + 1, sizeof(*fs->v));
	fs->v[fs->n++] = f;
	return 0;
}

static void strs_free(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* "Name=N,Values=V1,V2" (keys in either order; a word after Values= that
 * is not a key is one more value). */
static int filter_shorthand(struct filters *fs, const char *word)
{
	char *copy = xstrdup(word), *tok, *save = NULL, *name = NULL;
	char **values = NULL;
	size_t n = 0;
	bool in_values = false, had_values = false;
	int r = -1;

	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (strncmp(tok, "Name=", 5) == 0) {
			if (name) {
				errmsg("--filters '%s': Name= given twice", word);
				goto out;
			}
			name = tok + 5;
			in_values = false;
		} else if (strncmp(tok, "Values=", 7) == 0) {
			if (had_values) {
				errmsg("--filters '%s': Values= given twice", word);
				goto out;
			}
			had_values = in_values = true;
			values = xrealloc(values, n + 1, sizeof(*values));
			values[n++] = xstrdup(tok + 7);
		} else if (in_values) {
			values = xrealloc(values, n + 1, sizeof(*values));
			values[n++] = xstrdup(tok);
		} else {
			errmsg("--filters '%s': expected Name=NAME,Values=VALUE1,VALUE2", word);
			goto out;
		}
	}
	if (!name || !*name) {
		errmsg("--filters '%s': no Name= (expected Name=NAME,Values=VALUE1,VALUE2)", word);
		goto out;
	}
	if (filter_add(fs, name, values, n) < 0)
		goto out;
	values = NULL;
	n = 0;
	r = 0;
out:
	strs_free(values, n);
	free(copy);
	return r;
}

/* {"Name": N, "Values": [V1, V2]} */
static int filter_json_one(struct filters *fs, const struct json_node *o, size_t entry)
{
	const struct json_node *name, *vals;
	char **values = NULL;
	size_t i, n = 0;

	if (o->type != JSON_OBJECT) {
		errmsg("--filters: filter %zu must be an object {\"Name\": ..., \"Values\": [...]}, "
		       "not %s", entry, json_type_name(o->type));
		return -1;
	}
	for (i = 0; i < o->n; i++) {
		if (strcmp(o->keys[i], "Name") != 0 && strcmp(o->keys[i], "Values") != 0) {
			errmsg("--filters: filter %zu: unknown key \"%s\" (expected Name and Values)",
			       entry, o->keys[i]);
			return -1;
		}
	}
	name = json_node_get(o, "Name");
	vals = json_node_get(o, "Values");
	if (!name || name->type != JSON_STRING) {
		errmsg("--filters: filter %zu: Name must be a string", entry);
		return -1;
	}
	if (!vals || vals->type != JSON_ARRAY) {
		errmsg("--filters: filter %zu: Values must be an array of strings", entry);
		return -1;
	}
	for (i = 0; i < vals->n; i++) {
		if (vals->items[i]->type != JSON_STRING) {
			errmsg("--filters: filter %zu: value %zu must be a string, not %s", entry,
			       i + 1, json_type_name(vals->items[i]->type));
			strs_free(values, n);
			return -1;
		}
		values = xrealloc(values, n + 1, sizeof(*values));
		values[n++] = xstrdup(vals->items[i]->text);
	}
	if (filter_add(fs, name->text, values, n) < 0) {
		strs_free(values, n);
		return -1;
	}
	return 0;
}

/* A word of --filters: shorthand, or JSON (one filter object, or an array of them). */
static int filter_word(struct filters *fs, const char *word)
{
	struct json_node *root;
	size_t i;
	int r = 0;

	if (word[0] != '[' && word[0] != '{')
		return filter_shorthand(fs, word);
	if (json_parse_arg("filters", word, &root) < 0)
		return -1;
	if (root->type == JSON_ARRAY) {
		for (i = 0; i < root->n && r == 0; i++)
			r = filter_json_one(fs, root->items[i], i + 1);
	} else {
		r = filter_json_one(fs, root, 1);
	}
	json_node_free(root);
	return r;
}

/* ---- describe ------------------------------------------------------- */

struct image_list {
	struct kiln_region *region;
	struct image *v;
	size_t n;
};

static int add_image(void *opaque, const struct kiln_image_info *info)
{
	struct image_list *l = opaque;

	l->v = xrealloc(l->v, l->n + 1, sizeof(*l->v));
	l->v[l->n].info = *info;
	memset(l->v[l->n].gib, 0, sizeof(l->v[l->n].gib));
	l->n++;
	return 0;
}

enum image_type {
	IMAGE_MINE = 1u << 0,
	IMAGE_SHARED = 1u << 1,
	IMAGE_COMMUNITY = 1u << 2,
};

/* What describe keeps, besides --filters. */
struct selection {
	const char *caller;
	const char *const *ids;
	size_t nids;
	const char *const *owners;     /* accounts ("self" resolved) */
	size_t nowners;
	bool exec_self, exec_all;      /* --executable-users */
	const char *const *exec_accounts;
	size_t nexec_accounts;
	unsigned types;                /* enum image_type bits; 0: any */
	struct filters filters;
};

static bool in_list(const char *s, const char *const *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (strcmp(s, v[i]) == 0)
			return true;
	}
	return false;
}

static bool selected(const struct selection *sel, const struct image *im)
{
	const struct kiln_image_info *info = &im->info;
	bool exec, type;
	size_t i;

	if (sel->nids && !in_list(info->id, sel->ids, sel->nids))
		return false;
	if (sel->nowners && !in_list(info->owner, sel->owners, sel->nowners))
		return false;
	if (sel->exec_self || sel->exec_all || sel->nexec_accounts) {
		exec = (sel->exec_self && (launch_user(info, sel->caller) || info->public)) ||
		       (sel->exec_all && info->public);
		for (i = 0; !exec && i < sel->nexec_accounts; i++)
			exec = launch_user(info, sel->exec_accounts[i]);
		if (!exec)
			return false;
	}
	if (sel->types) {
		type = ((sel->types & IMAGE_MINE) && strcmp(info->owner, sel->caller) == 0) ||
		       ((sel->types & IMAGE_SHARED) && launch_user(info, sel->caller)) ||
		       ((sel->types & IMAGE_COMMUNITY) && info->public);
		if (!type)
			return false;
	}
	for (i = 0; i < sel->filters.n; i++) {
		if (!filter_match(&sel->filters.v[i], im))
			return false;
	}
	return true;
}

/* The options of describe into sel; -1 after a message. The arrays sel
 * points to are allocated and freed with it (selection_free). */
static int selection_parse(const struct cli_ctx *ctx, const struct cli_args *args,
			   struct selection *sel)
{
	const char *const *v;
	const char **owners = NULL, **exec = NULL;
	size_t n, i;

	sel->caller = ctx->account;
	sel->ids = arg_list(args, "image-ids", &sel->nids);
	for (i = 0; i < sel->nids; i++) {
		if (!check_id("image", sel->ids[i]))
			return -1;
	}

	v = arg_list(args, "owners", &n);
	if (n) {
		owners = xmalloc(n * sizeof(*owners));
		sel->owners = owners;
	}
	for (i = 0; i < n; i++) {
		if (strcmp(v[i], "self") == 0) {
			owners[i] = ctx->account;
		} else if (account_valid(v[i])) {
			owners[i] = v[i];
		} else {
			errmsg("invalid --owners '%s': expected self or a %d-digit account", v[i],
			       KILN_ACCOUNT_LEN);
			return -1;
		}
		sel->nowners++;
	}

	v = arg_list(args, "executable-users", &n);
	if (n) {
		exec = xmalloc(n * sizeof(*exec));
		sel->exec_accounts = exec;
	}
	for (i = 0; i < n; i++) {
		/* your own account is "self", as EC2 has it */
		if (strcmp(v[i], "self") == 0 || strcmp(v[i], ctx->account) == 0) {
			sel->exec_self = true;
		} else if (strcmp(v[i], "all") == 0) {
			sel->exec_all = true;
		} else if (account_valid(v[i])) {
			exec[sel->nexec_accounts++] = v[i];
		} else {
			errmsg("invalid --executable-users '%s': expected self, all or a %d-digit "
			       "account", v[i], KILN_ACCOUNT_LEN);
			return -1;
		}
	}

	v = arg_list(args, "image-type", &n);
	for (i = 0; i < n; i++) {
		if (strcmp(v[i], "mine") == 0) {
			sel->types |= IMAGE_MINE;
		} else if (strcmp(v[i], "shared") == 0) {
			sel->types |= IMAGE_SHARED;
		} else if (strcmp(v[i], "community") == 0) {
			sel->types |= IMAGE_COMMUNITY;
		} else {
			errmsg("invalid --image-type '%s': expected mine, shared or community", v[i]);
			return -1;
		}
	}

	v = arg_list(args, "filters", &n);
	for (i = 0; i < n; i++) {
		if (filter_word(&sel->filters, v[i]) < 0)
			return -1;
	}
	return 0;
}

static void selection_free(struct selection *sel)
{
	free((void *)sel->owners);
	free((void *)sel->exec_accounts);
	filters_free(&sel->filters);
}

static void print_images_text(const struct image *v, size_t n)
{
	static const char *const headers[] = {
		"IMAGE ID", "NAME", "OWNER", "STATE", "ARCH", "BOOT MODE", "PUBLIC", "CREATED",
	};
	const struct kiln_image_info *info;
	char t[ISO_TIME_MAX];
	struct table tab;
	size_t i;

	if (n == 0)
		return;
	table_init(&tab, 8, headers, 0);
	for (i = 0; i < n; i++) {
		info = &v[i].info;
		table_add(&tab, info->id, info->name, info->owner, info->state,
			  info->architecture[0] ? info->architecture : "-",
			  info->boot_mode[0] ? info->boot_mode : "-", info->public ? "yes" : "no",
			  iso_time(info->creation_time, false, t));
	}
	table_print(&tab, stdout);
	table_free(&tab);
}

int cmd_image_describe(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct selection sel = { 0 };
	struct image_list l = { ctx->region, NULL, 0 };
	struct json j;
	size_t i, k, n;
	int r, status = EXIT_FAILURE;

	/* --include-deprecated: kiln deprecates no image, so every image is listed */
	if (selection_parse(ctx, args, &sel) < 0)
		goto out;
	r = kiln_image_list(ctx->region, ctx->account, add_image, &l);
	if (r < 0) {
		errmsg_errno(r, "cannot list the images of region %s", ctx->region_name);
		goto out;
	}
	for (i = 0; i < sel.nids; i++) {
		for (k = 0; k < l.n && strcmp(l.v[k].info.id, sel.ids[i]) != 0; k++)
			;
		if (k == l.n) {
			err_image(ctx->region_name, sel.ids[i], -ENOENT, NULL);
			goto out;
		}
	}
	/* keep the selected images, in the engine's order */
	for (i = n = 0; i < l.n; i++) {
		resolve_sizes(ctx->region, &l.v[i]);
		if (selected(&sel, &l.v[i])) {
			if (n != i)
				l.v[n] = l.v[i];
			n++;
		}
	}
	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_key(&j, "Images");
		json_array_begin(&j);
		for (i = 0; i < n; i++)
			json_image(&j, &l.v[i]);
		json_array_end(&j);
		json_object_end(&j);
		json_finish(&j);
	} else {
		print_images_text(l.v, n);
	}
	status = EXIT_SUCCESS;
out:
	free(l.v);
	selection_free(&sel);
	return status;
}

/* ---- describe-attribute ------------------------------------------- */

/* The image as the caller sees it, sizes resolved; -1 after a message. */
static int describe_one(const struct cli_ctx *ctx, const char *id, struct image *ret_im)
{
	int r;

	if (!check_id("image", id))
		return -1;
	r = kiln_image_describe(ctx->region, ctx->account, id, &ret_im->info);
	if (r < 0) {
		err_image(ctx->region_name, id, r, NULL);
		return -1;
	}
	resolve_sizes(ctx->region, ret_im);
	return 0;
}

/* pointers to the image's launch_users, for the permission printers */
static const char **launch_user_list(const struct kiln_image_info *info, size_t *ret_n)
{
	size_t i, n = info->nlaunch_users < KILN_MAX_LAUNCH_USERS ? info->nlaunch_users :
		  KILN_MAX_LAUNCH_USERS;
	const char **v = xmalloc((n ? n : 1) * sizeof(*v));

	for (i = 0; i < n; i++)
		v[i] = info->launch_users[i];
	*ret_n = n;
	return v;
}

static void print_mappings_text(const struct image *im)
{
	static const char *const headers[] = {
		"DEVICE NAME", "MAPPING", "SNAPSHOT ID", "SIZE", "TYPE", "DELETE ON TERMINATION",
	};
	const struct kiln_bdm *m;
	char size[32];
	struct table tab;
	size_t i;

	table_init(&tab, 6, headers, 1u << 3);
	for (i = 0; i < im->info.nmappings && i < KILN_MAX_MAPPINGS; i++) {
		m = &im->info.mappings[i];
		if (!m->ebs) {
			table_add(&tab, m->device_name, m->no_device ? "no-device" : m->virtual_name,
				  "-", "-", "-", "-");
			continue;
		}
		if (im->gib[i])
			snprintf(size, sizeof(size), "%" PRIu64 " GiB", im->gib[i]);
		else
			snprintf(size, sizeof(size), "-");
		table_add(&tab, m->device_name, "ebs", m->snapshot_id[0] ? m->snapshot_id : "-",
			  size, m->volume_type[0] ? m->volume_type : "gp3",
			  m->delete_on_termination ? "true" : "false");
	}
	table_print(&tab, stdout);
	table_free(&tab);
}

static void print_value_text(const char *header, const char *value)
{
	const char *const headers[] = { header };
	struct table tab;

	table_init(&tab, 1, headers, 0);
	table_add(&tab, value);
	table_print(&tab, stdout);
	table_free(&tab);
}

int cmd_image_describe_attribute(struct cli_ctx *ctx, const struct cli_args *args)
{
	static const char *const attributes[] = {
		"launchPermission", "description", "bootMode", "blockDeviceMapping",
	};
	const char *id = args->argv[0], *attr = arg_opt(args, "attribute");
	struct image *im;
	const char **users = NULL;
	size_t nusers = 0;
	struct json j;

	if (!check_choice("attribute", attr, attributes, ARRAY_SIZE(attributes)))
		return EXIT_FAILURE;
	im = xmalloc(sizeof(*im));
	if (describe_one(ctx, id, im) < 0) {
		free(im);
		return EXIT_FAILURE;
	}
	/* as in EC2: who may launch an image is for its owner to know */
	if (strcmp(attr, "launchPermission") == 0 && strcmp(im->info.owner, ctx->account) != 0) {
		err_image(ctx->region_name, id, -EPERM, NULL);
		free(im);
		return EXIT_FAILURE;
	}

	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_kv_string(&j, "ImageId", im->info.id);
	}
	if (strcmp(attr, "launchPermission") == 0) {
		users = launch_user_list(&im->info, &nusers);
		if (ctx->output == OUTPUT_JSON)
			json_permissions(&j, "LaunchPermissions", im->info.public, users, nusers);
		else
			print_permissions_text(im->info.public, users, nusers);
		free(users);
	} else if (strcmp(attr, "description") == 0 || strcmp(attr, "bootMode") == 0) {
		bool desc = strcmp(attr, "description") == 0;
		const char *value = desc ? im->info.description : im->info.boot_mode;

		if (ctx->output == OUTPUT_JSON) {
			/* an unset description or boot mode is {}, as in EC2 */
			json_key(&j, desc ? "Description" : "BootMode");
			json_object_begin(&j);
			if (*value)
				json_kv_string(&j, "Value", value);
			json_object_end(&j);
		} else {
			print_value_text(desc ? "DESCRIPTION" : "BOOT MODE", *value ? value : "-");
		}
	} else {
		if (ctx->output == OUTPUT_JSON)
			json_mappings(&j, im);
		else
			print_mappings_text(im);
	}
	if (ctx->output == OUTPUT_JSON) {
		json_object_end(&j);
		json_finish(&j);
	}
	free(im);
	return EXIT_SUCCESS;
}

/* ---- modify-attribute, reset-attribute -------------------------------- */

int cmd_image_modify_attribute(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *id = args->argv[0];
	const char *perm = arg_opt(args, "launch-permission");
	const char *desc = arg_opt(args, "description");
	struct perm_change pc;
	int r;

	if (!check_id("image", id))
		return EXIT_FAILURE;
	if (!perm == !desc) {
		errmsg("image modify-attribute: give one of --launch-permission or --description");
		return EXIT_FAILURE;
	}
	if (desc) {
		if (strlen(desc) > IMAGE_DESCRIPTION_MAX) {
			errmsg("--description is too long (%zu bytes; at most %zu)", strlen(desc),
			       IMAGE_DESCRIPTION_MAX);
			return EXIT_FAILURE;
		}
		r = kiln_image_set_description(ctx->region, ctx->account, id, desc);
	} else {
		if (perm_change_parse("launch-permission", perm, &pc) < 0)
			return EXIT_FAILURE;
		r = kiln_image_modify_launch_permission(ctx->region, ctx->account, id,
							pc.add, pc.nadd, pc.add_all,
							pc.remove, pc.nremove, pc.remove_all);
		perm_change_free(&pc);
	}
	if (r < 0) {
		err_image(ctx->region_name, id, r, NULL);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

int cmd_image_reset_attribute(struct cli_ctx *ctx, const struct cli_args *args)
{
	static const char *const attributes[] = { "launchPermission" };
	const char *id = args->argv[0], *attr = arg_opt(args, "attribute");
	int r;

	if (!check_id("image", id))
		return EXIT_FAILURE;
	if (!check_choice("attribute", attr, attributes, ARRAY_SIZE(attributes)))
		return EXIT_FAILURE;
	r = kiln_image_reset_launch_permission(ctx->region, ctx->account, id);
	if (r < 0) {
		err_image(ctx->region_name, id, r, NULL);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

/* ---- deregister ----------------------------------------------------- */

struct snapshot_report {
	char id[KILN_ID_MAX];
	char *result;                  /* "deleted", or why it was kept */
};

struct deregister_out {
	struct snapshot_report *v;
	size_t n;
};

static void add_report(void *opaque, const char *snapshot_id, const char *result)
{
	struct deregister_out *d = opaque;

	d->v = xrealloc(d->v, d->n + 1, sizeof(*d->v));
	snprintf(d->v[d->n].id, sizeof(d->v[d->n].id), "%s", snapshot_id);
	d->v[d->n].result = xstrdup(result ? result : "");
	d->n++;
}

static bool report_deleted(const struct snapshot_report *s)
{
	return strcmp(s->result, "deleted") == 0;
}

/* The reason alone: the engine may start it with "kept: ", which the
 * text output shows and the key KeptSnapshots already says. */
static const char *kept_reason(const char *result)
{
	return strncmp(result, "kept: ", 6) == 0 ? result + 6 : result;
}

static void print_reports_json(const struct deregister_out *d)
{
	struct json j;
	size_t i;

	json_init(&j, stdout);
	json_object_begin(&j);
	json_key(&j, "DeletedSnapshots");
	json_array_begin(&j);
	for (i = 0; i < d->n; i++) {
		if (report_deleted(&d->v[i]))
			json_string(&j, d->v[i].id);
	}
	json_array_end(&j);
	json_key(&j, "KeptSnapshots");
	json_array_begin(&j);
	for (i = 0; i < d->n; i++) {
		if (report_deleted(&d->v[i]))
			continue;
		json_object_begin(&j);
		json_kv_string(&j, "SnapshotId", d->v[i].id);
		json_kv_string(&j, "Reason", kept_reason(d->v[i].result));
		json_object_end(&j);
	}
	json_array_end(&j);
	json_object_end(&j);
	json_finish(&j);
}

int cmd_image_deregister(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *id = args->argv[0];
	bool delete_snapshots = arg_flag(args, "delete-associated-snapshots");
	struct deregister_out d = { NULL, 0 };
	size_t i;
	int r;

	if (!check_id("image", id))
		return EXIT_FAILURE;
	r = kiln_image_deregister(ctx->region, ctx->account, id, delete_snapshots, add_report, &d);
	if (r < 0) {
		/* what happened to the snapshots before the failure is still news */
		for (i = 0; i < d.n; i++)
			errmsg("%s: %s", d.v[i].id, d.v[i].result);
		err_image(ctx->region_name, id, r, NULL);
	} else if (delete_snapshots && ctx->output == OUTPUT_JSON) {
		print_reports_json(&d);
	} else if (delete_snapshots) {
		for (i = 0; i < d.n; i++)
			printf("%s: %s\n", d.v[i].id, d.v[i].result);
	}
	for (i = 0; i < d.n; i++)
		free(d.v[i].result);
	free(d.v);
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- copy ----------------------------------------------------------- */

static void print_copy(const struct cli_ctx *ctx, const char *id,
		       const struct kiln_copy_report *rep)
{
	struct json j;

	if (ctx->output == OUTPUT_TEXT) {
		printf("%s\n", id);
		return;
	}
	json_init(&j, stdout);
	json_object_begin(&j);
	json_kv_string(&j, "ImageId", id);
	json_key(&j, "Copy");
	json_object_begin(&j);
	json_kv_u64(&j, "Snapshots", rep->snapshots);
	json_kv_u64(&j, "ChunksTotal", rep->chunks_total);
	json_kv_u64(&j, "ChunksMoved", rep->chunks_moved);
	json_kv_u64(&j, "ChunksPresent", rep->chunks_present);
	json_kv_u64(&j, "BytesMoved", rep->bytes_moved);
	json_kv_u64(&j, "RawBytesMoved", rep->raw_bytes_moved);
	json_kv_bool(&j, "Resumed", rep->resumed);
	json_object_end(&j);
	json_object_end(&j);
	json_finish(&j);
}

int cmd_image_copy(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *src_name = arg_opt(args, "source-region");
	const char *src_id = arg_opt(args, "source-image-id");
	const char *name = arg_opt(args, "name");
	const char *desc = arg_opt(args, "description");
	bool copy_tags = arg_flag(args, "copy-image-tags");
	struct kiln_region *src = ctx->region, *opened = NULL;
	struct kiln_copy_report rep = { 0 };
	struct progress *prog;
	char id[KILN_ID_MAX], why[512];
	int r;

	if (!region_name_valid(src_name)) {
		errmsg("invalid --source-region '%s': expected a name like us-east-1", src_name);
		return EXIT_FAILURE;
	}
	if (!check_id("image", src_id))
		return EXIT_FAILURE;
	if (desc && strlen(desc) > IMAGE_DESCRIPTION_MAX) {
		errmsg("--description is too long (%zu bytes; at most %zu)", strlen(desc),
		       IMAGE_DESCRIPTION_MAX);
		return EXIT_FAILURE;
	}
	/* a copy within one region is allowed, as in EC2: one handle serves both */
	if (strcmp(src_name, ctx->region_name) != 0) {
		r = kiln_region_open(ctx->store, src_name, &opened);
		if (r < 0) {
			err_region_open(ctx->store_dir, src_name, r);
			return EXIT_FAILURE;
		}
		src = opened;
	}

	why[0] = '\0';
	prog = progress_new();
	r = kiln_image_copy(src, ctx->region, ctx->account, src_id, name, desc, copy_tags,
			    progress_update, prog, &rep, id, why, sizeof(why));
	progress_end(prog);
	kiln_region_close(opened);
	if (r < 0) {
		if (r == -ENOENT || r == -EPERM || r == -EBADMSG)
			err_image(src_name, src_id, r, NULL);
		else if ((r == -EEXIST || r == -EINVAL) && why[0])
			errmsg("cannot copy image %s: %s", src_id, why);
		else if (r == -EEXIST)
			errmsg("cannot copy image %s: account %s already has an image named '%s' "
			       "in region %s", src_id, ctx->account, name, ctx->region_name);
		else if (why[0])
			errmsg("cannot copy image %s: %s: %s", src_id, strerror(-r), why);
		else
			errmsg_errno(r, "cannot copy image %s", src_id);
		return EXIT_FAILURE;
	}
	print_copy(ctx, id, &rep);
	return EXIT_SUCCESS;
}

/* ---- wait image-available ------------------------------------------- */

static int64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int cmd_wait_image_available(struct cli_ctx *ctx, const struct cli_args *args)
{
	const char *id = args->argv[0], *timeout_arg = arg_opt(args, "timeout"), *why;
	const struct timespec interval = { 0, WAIT_INTERVAL_NS };
	struct kiln_image_info *info;
	long timeout = WAIT_DEFAULT_TIMEOUT;
	int64_t deadline;
	int r, status;

	if (!check_id("image", id))
		return EXIT_FAILURE;
	if (timeout_arg && parse_int(timeout_arg, 0, WAIT_MAX_TIMEOUT, &timeout, &why) < 0) {
		errmsg("invalid --timeout '%s': %s (seconds, 0 to %ld)", timeout_arg, why,
		       WAIT_MAX_TIMEOUT);
		return EXIT_FAILURE;
	}
	info = xmalloc(sizeof(*info));
	deadline = monotonic_ns() + (int64_t)timeout * 1000000000LL;
	for (;;) {
		r = kiln_image_describe(ctx->region, ctx->account, id, info);
		if (r < 0) {
			err_image(ctx->region_name, id, r, NULL);
			status = EXIT_FAILURE;
			break;
		}
		if (strcmp(info->state, "available") == 0) {
			status = EXIT_SUCCESS;
			break;
		}
		if (strcmp(info->state, "failed") == 0) {
			errmsg("image %s failed: %s", id,
			       info->state_reason[0] ? info->state_reason : "no reason given");
			status = EXIT_FAILURE;
			break;
		}
		if (monotonic_ns() >= deadline) {
			errmsg("image %s is still %s after %ld seconds", id, info->state, timeout);
			status = EXIT_TIMEOUT;
			break;
		}
		nanosleep(&interval, NULL);
	}
	free(info);
	return status;
}
