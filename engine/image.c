/* SPDX-License-Identifier: MIT */
/* image.c: images (AMIs): register, describe, launch permissions,
 * deregister; and snapshot sharing. The rules are EC2's; docs/IMAGES.md
 * lists them. Copies between regions are in copy.c. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define GIB (UINT64_C(1) << 30)

bool image_name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n < 3 || n > 128)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("()[] ./-'@_", c)))
			return false;
	}
	return true;
}

static int name_taken(struct kiln_region *rg, const char *account, const char *name, char *wbuf,
		      size_t wlen)
{
	return set_why(wbuf, wlen, -EEXIST, "account %s already has an image named '%s' in %s", account,
		       name, rg->name);
}

/* A name an image of the account's may take here: -EINVAL (with why) if
 * it is malformed, -EEXIST if the account has an image of that name. */
int image_name_check(struct kiln_region *rg, const char *account, const char *name, char *wbuf,
		     size_t wlen)
{
	if (!name || !image_name_valid(name))
		return set_why(wbuf, wlen, -EINVAL, "an image name is 3 to 128 letters, digits and ( ) [ ] "
			       "space . / - ' @ _");
	if (catalog_image_name_taken(rg->cat, account, name, NULL) == 1)
		return name_taken(rg, account, name, wbuf, wlen);
	return 0;
}

static bool one_of(const char *s, const char *const *set)
{
	for (; *set; set++)
		if (strcmp(s, *set) == 0)
			return true;
	return false;
}

static const char *const architectures[] = { "x86_64", "arm64", "i386", NULL };
static const char *const boot_modes[] = { "legacy-bios", "uefi", "uefi-preferred", NULL };

bool kiln_image_can_launch(const struct kiln_image_info *im, const char *caller)
{
	if (strcmp(im->owner, caller) == 0 || im->public)
		return true;
	for (size_t i = 0; i < im->nlaunch_users; i++)
		if (strcmp(im->launch_users[i], caller) == 0)
			return true;
	return false;
}

/* Check one mapping; fills the default size of EBS ones from their snapshot. */
static int check_mapping(struct kiln_region *rg, const char *account, struct kiln_bdm *m,
			 char *wbuf, size_t wlen)
{
	struct kiln_snapshot_info snap;
	int kinds = m->ebs + (m->virtual_name[0] != 0) + m->no_device;
	int r;

	if (strncmp(m->device_name, "/dev/", 5) != 0 || strlen(m->device_name) < 6)
		return set_why(wbuf, wlen, -EINVAL, "device name '%s' must look like /dev/xvdb",
			   m->device_name);
	if (kinds != 1)
		return set_why(wbuf, wlen, -EINVAL, "%s: give exactly one of Ebs, VirtualName or NoDevice",
			   m->device_name);
	if (m->virtual_name[0]) {
		unsigned n;
		char tail;

		if (sscanf(m->virtual_name, "ephemeral%u%c", &n, &tail) != 1 || n > 23)
			return set_why(wbuf, wlen, -EINVAL, "%s: VirtualName '%s' must be ephemeral0 to ephemeral23",
				   m->device_name, m->virtual_name);
		return 0;
	}
	if (m->no_device)
		return 0;
	if (!m->volume_type[0])
		snprintf(m->volume_type, sizeof m->volume_type, "gp3");
	if (!one_of(m->volume_type, (const char *const[]){ "gp2", "gp3", "io1", "io2", "st1", "sc1",
							   "standard", NULL }))
		return set_why(wbuf, wlen, -EINVAL, "%s: unknown VolumeType '%s' (gp2, gp3, io1, io2, st1, sc1 "
			       "or standard)", m->device_name, m->volume_type);
	if (!m->snapshot_id[0]) {
		if (m->volume_size == 0)
			return set_why(wbuf, wlen, -EINVAL, "%s: an Ebs mapping without SnapshotId needs VolumeSize",
				   m->device_name);
		return 0;
	}
	if (!kiln_id_valid(m->snapshot_id, "snap"))
		return set_why(wbuf, wlen, -EINVAL, "%s: '%s' is not a snapshot id", m->device_name,
			   m->snapshot_id);
	r = catalog_snapshot_get(rg->cat, m->snapshot_id, &snap);
	if (r == -ENOENT) {
		r = region_missing_id(rg, m->snapshot_id);
		return set_why(wbuf, wlen, r, "%s: snapshot %s %s", m->device_name, m->snapshot_id,
			   r == -EXDEV ? "is in another region of the store: register the image in the "
			   "snapshot's region, then 'kiln image copy' it here" : "does not exist");
	}
	if (r < 0)
		return r;
	if (catalog_snapshot_usable(rg->cat, m->snapshot_id, account) != 1)
		/* as in EC2: another account's snapshot not shared with this
		 * one does not exist for it */
		return set_why(wbuf, wlen, -ENOENT, "%s: snapshot %s does not exist",
			   m->device_name, m->snapshot_id);
	if (snap.state != KILN_SNAPSHOT_COMPLETED)
		return set_why(wbuf, wlen, -EINVAL, "%s: snapshot %s is %s, not completed", m->device_name,
			   m->snapshot_id, kiln_snapshot_state_name(snap.state));
	if (m->volume_size == 0)
		m->volume_size = DIV_ROUND_UP(snap.size, GIB);
	else if (m->volume_size * GIB < snap.size)
		return set_why(wbuf, wlen, -EINVAL, "%s: VolumeSize %llu GiB is smaller than snapshot %s (%llu bytes)",
			   m->device_name, (unsigned long long)m->volume_size, m->snapshot_id,
			   (unsigned long long)snap.size);
	return 0;
}

/* Decide boot mode and architecture from the probe and the request;
 * refuse what cannot boot unless told not to check. */
static int check_boot(const struct kiln_image_spec *spec, const char *root_snap, const struct kiln_probe *p,
		      struct kiln_image_info *im, char *wbuf, size_t wlen)
{
	bool bios = p->boot_signature && p->boot_code;
	bool uefi = p->esp;
	const char *mode = spec->boot_mode;

	if (!mode)
		mode = uefi && bios ? "uefi-preferred" : uefi ? "uefi" : bios ? "legacy-bios" : NULL;
	if (!spec->no_verify_boot) {
		if (!mode || (strcmp(mode, "legacy-bios") == 0 && !bios) ||
		    (strcmp(mode, "uefi") == 0 && !uefi) ||
		    (strcmp(mode, "uefi-preferred") == 0 && !uefi && !bios)) {
			const char *fs = p->filesystems[0] ? p->filesystems : "no filesystem";

			if (!p->boot_signature && !p->partition_table[0] && !p->filesystems[0])
				return set_why(wbuf, wlen, -ENOEXEC, "root snapshot %s cannot boot: sector 0 has no "
					   "boot signature (0x55AA), so no partition table either, and there is no "
					   "filesystem on the whole disk", root_snap);
			if (mode && strcmp(mode, "uefi") == 0)
				return set_why(wbuf, wlen, -ENOEXEC, "root snapshot %s cannot boot with uefi: no EFI "
					   "system partition with a FAT filesystem (found: %s %s)", root_snap,
					   p->partition_table[0] ? p->partition_table : "no partition table", fs);
			if (!p->boot_signature && uefi)
				return set_why(wbuf, wlen, -ENOEXEC, "root snapshot %s cannot boot with legacy-bios: "
					   "sector 0 has no boot signature (0x55AA); it has an EFI system partition: "
					   "use uefi", root_snap);
			if (!p->boot_signature)
				return set_why(wbuf, wlen, -ENOEXEC, "root snapshot %s cannot boot: sector 0 has no "
					   "boot signature (0x55AA) and there is no EFI system partition "
					   "(found: %s %s)", root_snap,
					   p->partition_table[0] ? p->partition_table : "no partition table", fs);
			if (mode && strcmp(mode, "legacy-bios") == 0 && uefi)
				return set_why(wbuf, wlen, -ENOEXEC, "root snapshot %s cannot boot with legacy-bios: "
					   "sector 0 has no boot code (it has an EFI system partition: use uefi)",
					   root_snap);
			return set_why(wbuf, wlen, -ENOEXEC, "root snapshot %s cannot boot: sector 0 has a boot "
				   "signature but no boot code, and there is no EFI system partition", root_snap);
		}
	}
	snprintf(im->boot_mode, sizeof im->boot_mode, "%s", mode ? mode : "");
	if (spec->architecture)
		snprintf(im->architecture, sizeof im->architecture, "%s", spec->architecture);
	else if (p->architecture[0])
		snprintf(im->architecture, sizeof im->architecture, "%s", p->architecture);
	else
		return set_why(wbuf, wlen, -EINVAL, "cannot tell the architecture of root snapshot %s "
			   "(no partition type says it): give --architecture x86_64, arm64 or i386", root_snap);
	return 0;
}

int kiln_image_register(struct kiln_region *rg, const char *account, const struct kiln_image_spec *spec,
			char ret_id[KILN_ID_MAX], char *wbuf, size_t wlen)
{
	struct kiln_image_info *im;
	struct kiln_probe probe;
	const char *root_snap = NULL;
	int r;

	if (wbuf && wlen)
		wbuf[0] = '\0';
	if (!kiln_account_valid(account))
		return set_why(wbuf, wlen, -EINVAL, "account '%s' is not 12 digits", account);
	if (!spec->name || !image_name_valid(spec->name))
		return image_name_check(rg, account, spec->name, wbuf, wlen);
	if (!spec->root_device_name || strncmp(spec->root_device_name, "/dev/", 5) != 0)
		return set_why(wbuf, wlen, -EINVAL, "the root device name must look like /dev/xvda");
	if (spec->architecture && !one_of(spec->architecture, architectures))
		return set_why(wbuf, wlen, -EINVAL, "architecture '%s' is not x86_64, arm64 or i386",
			   spec->architecture);
	if (spec->boot_mode && !one_of(spec->boot_mode, boot_modes))
		return set_why(wbuf, wlen, -EINVAL, "boot mode '%s' is not legacy-bios, uefi or uefi-preferred",
			   spec->boot_mode);
	if (spec->virtualization_type && strcmp(spec->virtualization_type, "hvm") != 0)
		return set_why(wbuf, wlen, -EINVAL, "virtualization type '%s' is not supported: kiln images are hvm",
			   spec->virtualization_type);
	if (spec->nmappings == 0 || spec->nmappings > KILN_MAX_MAPPINGS)
		return set_why(wbuf, wlen, -EINVAL, "give 1 to %d block device mappings", KILN_MAX_MAPPINGS);
	if (spec->ntags > KILN_MAX_TAGS)
		return set_why(wbuf, wlen, -EINVAL, "at most %d tags", KILN_MAX_TAGS);
	if (spec->description && strlen(spec->description) > 255)
		return set_why(wbuf, wlen, -EINVAL, "the description is longer than 255 bytes");

	im = calloc(1, sizeof *im);
	if (!im)
		return -ENOMEM;
	for (size_t i = 0; i < spec->ntags; i++) {
		const struct kiln_tag *t = &spec->tags[i];

		if (!t->key[0] || strncmp(t->key, "aws:", 4) == 0) {
			r = set_why(wbuf, wlen, -EINVAL, "tag key '%s' is empty or reserved", t->key);
			goto out;
		}
		im->tags[im->ntags++] = *t;
	}
	for (size_t i = 0; i < spec->nmappings; i++) {
		struct kiln_bdm *m = &im->mappings[im->nmappings++];

		*m = spec->mappings[i];
		for (size_t j = 0; j < i; j++)
			if (strcmp(im->mappings[j].device_name, m->device_name) == 0) {
				r = set_why(wbuf, wlen, -EINVAL, "device %s is mapped twice", m->device_name);
				goto out;
			}
		r = check_mapping(rg, account, m, wbuf, wlen);
		if (r < 0)
			goto out;
		if (strcmp(m->device_name, spec->root_device_name) == 0) {
			if (!m->ebs || !m->snapshot_id[0]) {
				r = set_why(wbuf, wlen, -EINVAL, "the root device %s must be an Ebs mapping with a "
					"SnapshotId", m->device_name);
				goto out;
			}
			root_snap = m->snapshot_id;
		}
	}
	if (!root_snap) {
		r = set_why(wbuf, wlen, -EINVAL, "the root device %s is not in the block device mappings",
			spec->root_device_name);
		goto out;
	}
	r = image_name_check(rg, account, spec->name, wbuf, wlen);
	if (r < 0)
		goto out;
	r = kiln_snapshot_probe(rg, root_snap, &probe);
	if (r < 0) {
		set_why(wbuf, wlen, r, "cannot probe root snapshot %s: %s", root_snap, strerror(-r));
		goto out;
	}
	r = check_boot(spec, root_snap, &probe, im, wbuf, wlen);
	if (r < 0)
		goto out;

	r = random_id("ami", im->id);
	if (r < 0)
		goto out;
	snprintf(im->name, sizeof im->name, "%s", spec->name);
	snprintf(im->owner, sizeof im->owner, "%s", account);
	snprintf(im->state, sizeof im->state, "available");
	snprintf(im->description, sizeof im->description, "%s", spec->description ? spec->description : "");
	snprintf(im->virtualization_type, sizeof im->virtualization_type, "hvm");
	snprintf(im->root_device_name, sizeof im->root_device_name, "%s", spec->root_device_name);
	snprintf(im->probe, sizeof im->probe, "%s", probe.json);
	im->creation_time = now_seconds();
	crash_point("image:register-checked");
	r = catalog_image_insert(rg->cat, im);
	if (r == -EEXIST)
		r = name_taken(rg, account, spec->name, wbuf, wlen);
	else if (r == -ENOENT)
		r = set_why(wbuf, wlen, r, "a snapshot of its block device mappings was deleted while it "
			    "registered");
	if (r == 0)
		memcpy(ret_id, im->id, KILN_ID_MAX);
out:
	free(im);
	return r;
}

int kiln_image_describe(struct kiln_region *rg, const char *caller, const char *id,
			struct kiln_image_info *ret_info)
{
	int r;

	if (!kiln_id_valid(id, "ami"))
		return -EINVAL;
	r = catalog_image_get(rg->cat, id, ret_info);
	if (r == 0 && strcmp(ret_info->state, "pending") == 0) {
		/* A copy whose process died shows as failed, not pending. */
		region_reap_if_idle(rg);
		r = catalog_image_get(rg->cat, id, ret_info);
	}
	if (r < 0)
		return r;
	/* Not launchable and not there look the same, on purpose. */
	return kiln_image_can_launch(ret_info, caller) ? 0 : -ENOENT;
}

struct list_ctx {
	const char *caller;
	int (*fn)(void *opaque, const struct kiln_image_info *info);
	void *opaque;
};

static int list_one(void *opaque, const struct kiln_image_info *im)
{
	struct list_ctx *l = opaque;

	return kiln_image_can_launch(im, l->caller) ? l->fn(l->opaque, im) : 0;
}

int kiln_image_list(struct kiln_region *rg, const char *caller,
		    int (*fn)(void *opaque, const struct kiln_image_info *info), void *opaque)
{
	struct list_ctx l = { caller, fn, opaque };

	region_reap_if_idle(rg);
	return catalog_image_list(rg->cat, list_one, &l);
}

/* The image, if caller owns it: -ENOENT if caller cannot see it, -EPERM
 * if caller may launch it but is not the owner. */
static int owned_image(struct kiln_region *rg, const char *caller, const char *id,
		       struct kiln_image_info **ret)
{
	struct kiln_image_info *im = malloc(sizeof *im);
	int r;

	if (!im)
		return -ENOMEM;
	r = kiln_image_describe(rg, caller, id, im);
	if (r == 0 && strcmp(im->owner, caller) != 0)
		r = -EPERM;
	if (r < 0) {
		free(im);
		return r;
	}
	*ret = im;
	return 0;
}

static int check_accounts(const char *const *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!kiln_account_valid(v[i]))
			return -EINVAL;
	return 0;
}

int kiln_image_modify_launch_permission(struct kiln_region *rg, const char *caller, const char *id,
					const char *const *add, size_t nadd, bool add_all,
					const char *const *remove, size_t nremove, bool remove_all)
{
	struct kiln_image_info *im;
	int r = check_accounts(add, nadd);

	if (r == 0)
		r = check_accounts(remove, nremove);
	if (r < 0)
		return r;
	r = owned_image(rg, caller, id, &im);
	if (r < 0)
		return r;
	r = catalog_image_permissions(rg->cat, id, add, nadd, add_all ? 1 : remove_all ? 0 : -1, remove,
				      nremove, false);
	free(im);
	return r;
}

int kiln_image_reset_launch_permission(struct kiln_region *rg, const char *caller, const char *id)
{
	struct kiln_image_info *im;
	int r = owned_image(rg, caller, id, &im);

	if (r < 0)
		return r;
	r = catalog_image_permissions(rg->cat, id, NULL, 0, 0, NULL, 0, true);
	free(im);
	return r;
}

int kiln_image_set_description(struct kiln_region *rg, const char *caller, const char *id,
			       const char *description)
{
	struct kiln_image_info *im;
	int r;

	if (!description || strlen(description) > 255)
		return -EINVAL;
	r = owned_image(rg, caller, id, &im);
	if (r < 0)
		return r;
	r = catalog_image_set_description(rg->cat, id, description);
	free(im);
	return r;
}

struct other_user {
	const char *self;
	char found[KILN_ID_MAX];
};

static int note_other_image(void *opaque, const char *image_id)
{
	struct other_user *o = opaque;

	if (strcmp(image_id, o->self) == 0)
		return 0;
	snprintf(o->found, sizeof o->found, "%s", image_id);
	return 1;
}

int kiln_image_deregister(struct kiln_region *rg, const char *caller, const char *id, bool delete_snapshots,
			  void (*report)(void *opaque, const char *snapshot_id, const char *result),
			  void *opaque)
{
	struct kiln_image_info *im;
	int r = owned_image(rg, caller, id, &im);

	if (r < 0)
		return r;
	r = region_lock(rg);
	if (r < 0)
		goto out;
	r = catalog_image_delete(rg->cat, id);
	if (r < 0 || !delete_snapshots)
		goto out_unlock;
	for (size_t i = 0; i < im->nmappings; i++) {
		const struct kiln_bdm *m = &im->mappings[i];
		struct other_user o = { .self = id };
		char result[160];
		bool seen = false;
		int r2;

		if (!m->ebs || !m->snapshot_id[0])
			continue;
		for (size_t j = 0; j < i; j++)
			seen |= strcmp(im->mappings[j].snapshot_id, m->snapshot_id) == 0;
		if (seen)
			continue;
		struct kiln_snapshot_info snap;

		if (catalog_snapshot_get(rg->cat, m->snapshot_id, &snap) == 0 && strcmp(snap.owner, caller) != 0) {
			snprintf(result, sizeof result, "kept: owned by account %s", snap.owner);
		} else if (catalog_snapshot_images(rg->cat, m->snapshot_id, note_other_image, &o) > 0) {
			snprintf(result, sizeof result, "kept: image %s still uses it", o.found);
		} else {
			r2 = kiln_snapshot_delete(rg, m->snapshot_id);
			if (r2 == 0)
				snprintf(result, sizeof result, "deleted");
			else
				snprintf(result, sizeof result, "kept: %s", strerror(-r2));
		}
		if (report)
			report(opaque, m->snapshot_id, result);
	}
out_unlock:
	region_unlock(rg);
out:
	free(im);
	return r;
}

int kiln_snapshot_modify_create_volume_permission(struct kiln_region *rg, const char *caller,
						  const char *snapshot_id,
						  const char *const *add, size_t nadd, bool add_all,
						  const char *const *remove, size_t nremove, bool remove_all)
{
	struct kiln_snapshot_info snap;
	int r = check_accounts(add, nadd);

	if (r == 0)
		r = check_accounts(remove, nremove);
	if (r == 0)
		r = kiln_snapshot_describe(rg, snapshot_id, &snap);
	if (r < 0)
		return r;
	if (strcmp(snap.owner, caller) != 0)
		return catalog_snapshot_usable(rg->cat, snapshot_id, caller) == 1 ? -EPERM : -ENOENT;
	return catalog_snapshot_permissions(rg->cat, snapshot_id, add, nadd,
					    add_all ? 1 : remove_all ? 0 : -1, remove, nremove);
}

bool kiln_snapshot_usable(struct kiln_region *rg, const char *account, const char *snapshot_id)
{
	return catalog_snapshot_usable(rg->cat, snapshot_id, account) == 1;
}

int kiln_snapshot_list_create_volume_permission(struct kiln_region *rg, const char *snapshot_id,
						int (*fn)(void *opaque, const char *who), void *opaque)
{
	struct kiln_snapshot_info snap;
	int r = kiln_snapshot_describe(rg, snapshot_id, &snap);

	if (r < 0)
		return r;
	return catalog_snapshot_permission_list(rg->cat, snapshot_id, fn, opaque);
}
