/* SPDX-License-Identifier: MIT */
/* instance.c: instances (EC2's RunInstances, TerminateInstances,
 * CreateImage): an image's mapping made into copy-on-write volumes. The
 * processes that serve and boot an instance (kiln-nbd, qemu) are started
 * by the tool; the engine records them. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define GIB (UINT64_C(1) << 30)
#define EPHEMERAL_SIZE GIB

/* An override of one of the image's EBS mappings changes what it gives
 * (DeleteOnTermination, a larger VolumeSize, the type) and keeps the rest:
 * the snapshot, and the size when it names no other snapshot. */
static struct kiln_bdm apply_override(const struct kiln_bdm *m, const struct kiln_bdm *o)
{
	struct kiln_bdm r = *o;

	if (!o->ebs || !m->ebs || o->no_device)
		return r;
	if (!o->snapshot_id[0])
		snprintf(r.snapshot_id, sizeof r.snapshot_id, "%s", m->snapshot_id);
	if (!o->volume_size && strcmp(r.snapshot_id, m->snapshot_id) == 0)
		r.volume_size = m->volume_size;
	if (!o->volume_type[0])
		snprintf(r.volume_type, sizeof r.volume_type, "%s", m->volume_type);
	return r;
}

/* The image's mapping with the launch's overrides applied by device name;
 * NoDevice drops a device. */
static size_t merge_mappings(const struct kiln_image_info *im, const struct kiln_bdm *ov, size_t nov,
			     struct kiln_bdm *out)
{
	size_t n = 0;

	for (size_t i = 0; i < im->nmappings; i++) {
		struct kiln_bdm m = im->mappings[i];

		for (size_t j = 0; j < nov; j++)
			if (strcmp(ov[j].device_name, im->mappings[i].device_name) == 0)
				m = apply_override(&im->mappings[i], &ov[j]);
		if (!m.no_device)
			out[n++] = m;
	}
	for (size_t j = 0; j < nov && n < KILN_MAX_MAPPINGS; j++) {
		bool known = false;

		for (size_t i = 0; i < im->nmappings; i++)
			known |= strcmp(ov[j].device_name, im->mappings[i].device_name) == 0;
		if (!known && !ov[j].no_device)
			out[n++] = ov[j];
	}
	return n;
}

int kiln_instance_launch(struct kiln_region *rg, const char *caller, const char *image_id,
			 const struct kiln_bdm *ov, size_t nov, char ret_id[KILN_ID_MAX], char *wbuf,
			 size_t wlen)
{
	struct kiln_image_info *im = malloc(sizeof *im);
	struct kiln_instance_info *in = calloc(1, sizeof *in);
	struct kiln_bdm maps[KILN_MAX_MAPPINGS];
	size_t n;
	bool root = false;
	int r;

	if (!im || !in) {
		r = -ENOMEM;
		goto out;
	}
	r = kiln_image_describe(rg, caller, image_id, im);
	if (r < 0) {
		set_why(wbuf, wlen, r, "image %s does not exist in %s or account %s may not launch it", image_id,
		    rg->name, caller);
		goto out;
	}
	if (strcmp(im->state, "available") != 0) {
		r = set_why(wbuf, wlen, -EINVAL, "image %s is %s", image_id, im->state);
		goto out;
	}
	n = merge_mappings(im, ov, nov, maps);
	r = random_id("i", in->id);
	if (r < 0)
		goto out;
	r = region_lock(rg);
	if (r < 0)
		goto out;
	r = catalog_begin(rg->cat);
	if (r < 0)
		goto out_unlock;
	for (size_t i = 0; i < n; i++) {
		struct kiln_bdm *m = &maps[i];
		struct kiln_instance_device *d = &in->devices[in->ndevices];
		uint64_t size = m->volume_size * GIB;

		snprintf(d->device_name, sizeof d->device_name, "%s", m->device_name);
		d->ebs = m->ebs;
		d->delete_on_termination = m->ebs ? m->delete_on_termination : true;
		if (m->ebs && m->snapshot_id[0]) {
			struct kiln_snapshot_info snap;

			r = catalog_snapshot_get(rg->cat, m->snapshot_id, &snap);
			if (r == 0 && size < snap.size)
				size = snap.size;
			if (r == 0)
				r = volume_create_locked(rg, caller, size, m->snapshot_id, KILN_VOLUME_IN_USE,
							 NULL, d->volume_id);
		} else {
			r = volume_create_locked(rg, caller, m->ebs ? size : EPHEMERAL_SIZE, NULL,
						 KILN_VOLUME_IN_USE, NULL, d->volume_id);
		}
		if (r < 0) {
			set_why(wbuf, wlen, r, "%s: cannot make its volume: %s", m->device_name, strerror(-r));
			break;
		}
		root |= strcmp(m->device_name, im->root_device_name) == 0;
		in->ndevices++;
	}
	if (r == 0 && !root)
		r = set_why(wbuf, wlen, -EINVAL, "the launch removes the root device %s", im->root_device_name);
	if (r == 0) {
		snprintf(in->image_id, sizeof in->image_id, "%s", image_id);
		snprintf(in->owner, sizeof in->owner, "%s", caller);
		snprintf(in->state, sizeof in->state, "running");
		snprintf(in->architecture, sizeof in->architecture, "%s", im->architecture);
		snprintf(in->boot_mode, sizeof in->boot_mode, "%s", im->boot_mode);
		snprintf(in->root_device_name, sizeof in->root_device_name, "%s", im->root_device_name);
		in->launch_time = now_seconds();
		r = catalog_instance_insert(rg->cat, in);
	}
	if (r == 0)
		r = catalog_commit(rg->cat);
	if (r < 0) {
		catalog_rollback(rg->cat);
		/* the rows went with the rollback; the files are orphans gc takes */
		goto out_unlock;
	}
	memcpy(ret_id, in->id, KILN_ID_MAX);
out_unlock:
	region_unlock(rg);
out:
	free(im);
	free(in);
	return r;
}

int kiln_instance_describe(struct kiln_region *rg, const char *caller, const char *id,
			   struct kiln_instance_info *ret_info)
{
	int r;

	if (!kiln_id_valid(id, "i"))
		return -EINVAL;
	r = catalog_instance_get(rg->cat, id, ret_info);
	if (r == 0 && strcmp(ret_info->owner, caller) != 0)
		r = -ENOENT;
	if (r == 0 && ret_info->qemu_pid > 0 && kill(ret_info->qemu_pid, 0) < 0 && errno == ESRCH)
		ret_info->qemu_pid = 0;     /* it has exited */
	return r;
}

int kiln_instance_list(struct kiln_region *rg, const char *caller,
		       int (*fn)(void *opaque, const struct kiln_instance_info *info), void *opaque)
{
	char (*ids)[KILN_ID_MAX] = NULL;
	struct kiln_instance_info *in = malloc(sizeof *in);
	size_t n = 0;
	int r = in ? catalog_instance_ids(rg->cat, &ids, &n) : -ENOMEM;

	for (size_t i = 0; r == 0 && i < n; i++)
		if (kiln_instance_describe(rg, caller, ids[i], in) == 0)
			r = fn(opaque, in);
	free(ids);
	free(in);
	return r;
}

int kiln_instance_update(struct kiln_region *rg, const struct kiln_instance_info *info)
{
	return catalog_instance_update(rg->cat, info);
}

int kiln_instance_device_volume(struct kiln_region *rg, const char *name, char ret_volume_id[KILN_ID_MAX])
{
	char id[KILN_ID_MAX];
	const char *slash = strchr(name, '/');

	if (!slash || (size_t)(slash - name) >= sizeof id)
		return -ENOENT;
	snprintf(id, sizeof id, "%.*s", (int)(slash - name), name);
	if (!kiln_id_valid(id, "i"))
		return -ENOENT;
	return catalog_instance_device_volume(rg->cat, id, slash + 1, ret_volume_id);
}

int kiln_instance_terminate(struct kiln_region *rg, const char *caller, const char *id,
			    void (*report)(void *opaque, const char *volume_id, bool deleted), void *opaque)
{
	struct kiln_instance_info *in = malloc(sizeof *in);
	int r = in ? kiln_instance_describe(rg, caller, id, in) : -ENOMEM;

	if (r < 0)
		goto out;
	if (strcmp(in->state, "terminated") == 0)
		goto out;               /* as EC2: terminating twice is no error */
	/* A client still on a device that goes: not yet (the caller retries
	 * once qemu's connections have closed), and nothing changed. */
	for (size_t i = 0; i < in->ndevices; i++)
		if (in->devices[i].delete_on_termination && volume_in_use(rg, in->devices[i].volume_id)) {
			r = -EBUSY;
			goto out;
		}
	/* The instance stays, terminated, as EC2 shows it; its devices are
	 * no longer exported (the lookup skips terminated instances). */
	snprintf(in->state, sizeof in->state, "terminated");
	in->qemu_pid = 0;
	r = catalog_instance_update(rg->cat, in);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < in->ndevices; i++) {
		struct kiln_instance_device *d = &in->devices[i];
		bool deleted = false;

		catalog_volume_set_state(rg->cat, d->volume_id, KILN_VOLUME_AVAILABLE);
		if (d->delete_on_termination)
			deleted = kiln_volume_delete(rg, d->volume_id) == 0;
		if (report)
			report(opaque, d->volume_id, deleted);
	}
out:
	free(in);
	return r;
}

int kiln_image_create(struct kiln_region *rg, const char *caller, const char *instance_id,
		      const char *name, const char *description, char ret_id[KILN_ID_MAX], char *wbuf,
		      size_t wlen)
{
	struct kiln_instance_info *in = malloc(sizeof *in);
	struct kiln_image_info *src = malloc(sizeof *src);
	struct kiln_volume *vols[KILN_MAX_MAPPINGS] = { 0 };
	const char *ids[KILN_MAX_MAPPINGS];
	char snaps[KILN_MAX_MAPPINGS][KILN_ID_MAX];
	struct kiln_bdm maps[KILN_MAX_MAPPINGS];
	struct kiln_image_spec spec = { 0 };
	char desc[256];
	size_t nebs = 0, nopen = 0;
	bool busy = false;
	int r;

	if (!in || !src) {
		r = -ENOMEM;
		goto out;
	}
	r = kiln_instance_describe(rg, caller, instance_id, in);
	if (r < 0) {
		set_why(wbuf, wlen, r, "instance %s does not exist in %s", instance_id, rg->name);
		goto out;
	}
	if (strcmp(in->state, "terminated") == 0) {
		r = set_why(wbuf, wlen, -EINVAL, "instance %s is terminated: its volumes are gone or "
			    "detached", instance_id);
		goto out;
	}
	/* A name register would refuse takes no snapshots first. */
	r = image_name_check(rg, caller, name, wbuf, wlen);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < in->ndevices; i++)
		if (in->devices[i].ebs)
			ids[nebs++] = in->devices[i].volume_id;
	snprintf(desc, sizeof desc, "Created by CreateImage(%s) for %s", instance_id, name ? name : "");
	/* Ours to snapshot directly, or served by a daemon: then it takes
	 * the snapshots, with one barrier across all the volumes. An export
	 * that is closing (its client just left) answers nobody or refuses,
	 * and a moment later the volume is free: try both again for a while,
	 * as kiln_snapshot_create() does. */
	for (int tries = 0;; tries++) {
		busy = false;
		nopen = 0;
		for (size_t i = 0; i < nebs && r == 0; i++) {
			r = kiln_volume_open(rg, ids[i], KILN_OPEN_WRITE, &vols[i]);
			if (r == -EBUSY) {
				busy = true;
				r = 0;
			} else if (r == 0) {
				nopen++;
			}
		}
		if (r < 0 || !busy) {
			if (r == 0)
				r = kiln_volumes_snapshot(vols, nebs, caller, desc, snaps);
			break;
		}
		for (size_t i = 0; i < nebs; i++) {
			kiln_volume_close(vols[i]);
			vols[i] = NULL;
		}
		r = control_snapshot_set(rg, ids, nebs, caller, desc, snaps);
		if (r != -EAGAIN && r != -EBUSY)
			break;
		if (tries == 50) {
			r = -EBUSY;
			break;
		}
		r = 0;
		usleep(20000);
	}
	for (size_t i = 0; i < nebs; i++)
		kiln_volume_close(vols[i]);
	if (r < 0) {
		set_why(wbuf, wlen, r, "cannot snapshot the volumes of %s: %s", instance_id,
			r == -ETIMEDOUT ? "the kiln-nbd serving them has stopped answering (stopped or hung?)" :
			strerror(-r));
		goto out;
	}
	(void)nopen;

	/* The image: the instance's mapping, each volume now a snapshot. */
	for (size_t i = 0, k = 0; i < in->ndevices; i++) {
		struct kiln_instance_device *d = &in->devices[i];
		struct kiln_bdm *m = &maps[i];

		memset(m, 0, sizeof *m);
		snprintf(m->device_name, sizeof m->device_name, "%s", d->device_name);
		if (d->ebs) {
			struct kiln_volume_info v;

			m->ebs = true;
			snprintf(m->snapshot_id, sizeof m->snapshot_id, "%s", snaps[k++]);
			if (kiln_volume_describe(rg, d->volume_id, &v) == 0)
				m->volume_size = DIV_ROUND_UP(v.size, GIB);
			m->delete_on_termination = d->delete_on_termination;
			snprintf(m->volume_type, sizeof m->volume_type, "gp3");
		} else {
			snprintf(m->virtual_name, sizeof m->virtual_name, "ephemeral%zu", i - k);
		}
	}
	spec.name = name;
	spec.description = description;
	spec.root_device_name = in->root_device_name;
	spec.architecture = in->architecture[0] ? in->architecture : NULL;
	spec.boot_mode = in->boot_mode[0] ? in->boot_mode : NULL;
	spec.mappings = maps;
	spec.nmappings = in->ndevices;
	/* As EC2's CreateImage: the instance's boot mode carries over, and
	 * what it booted from is not judged again. */
	spec.no_verify_boot = true;
	r = kiln_image_register(rg, caller, &spec, ret_id, wbuf, wlen);
	if (r < 0) {
		/* All or nothing: the snapshots go with the image that failed. */
		for (size_t i = 0; i < nebs; i++)
			kiln_snapshot_delete(rg, snaps[i]);
	}
out:
	free(in);
	free(src);
	return r;
}
