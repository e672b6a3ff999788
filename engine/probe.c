/* SPDX-License-Identifier: MIT */
/* probe.c: the only libblkid user. What is on a snapshot: partition
 * table, partitions, filesystems, boot signature, EFI system partition.
 *
 * libblkid reads from a file descriptor, so the probe gets a sparse
 * memfd the size of the snapshot into which only the regions blkid looks
 * at are copied from the chunk store: the first and last MiB of the disk
 * (MBR, GPT and its backup) and the first MiB of each partition
 * (superblocks). A 100 GiB image is probed by reading a few MiB. */
#include <blkid/blkid.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define PROBE_WINDOW (1u << 20)
#define MAX_PROBED_PARTITIONS 16

#define GUID_ESP "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
#define MBR_ESP 0xef

/* Discoverable Partitions root types tell the architecture. */
static const struct {
	const char *guid, *arch;
} root_types[] = {
	{ "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "x86_64" },
	{ "44479540-f297-41b2-9af7-d131d5f0458a", "i386" },
	{ "b921b045-1df0-41c3-af44-4c6f280d3fae", "arm64" },
};

struct probe_src {
	struct kiln_volume *snap;
	int fd;
	uint64_t size;
	uint8_t *buf;
};

/* Copy [off, off+len) of the snapshot into the memfd (non-zero parts). */
static int fill(struct probe_src *p, uint64_t off, uint64_t len)
{
	if (off >= p->size)
		return 0;
	len = MIN(len, p->size - off);
	while (len > 0) {
		uint32_t n = (uint32_t)MIN(len, (uint64_t)PROBE_WINDOW);
		int r = kiln_volume_read(p->snap, p->buf, n, off);

		if (r < 0)
			return r;
		if (!buf_is_zero(p->buf, n)) {
			r = pwrite_all(p->fd, p->buf, n, off);
			if (r < 0)
				return r;
		}
		off += n;
		len -= n;
	}
	return 0;
}

/* Append to dst only if all of it fits: a JSON record is never cut. */
static bool append(char *dst, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool append(char *dst, size_t cap, const char *fmt, ...)
{
	size_t n = strlen(dst);
	va_list ap;
	int k;

	if (n + 1 >= cap)
		return false;
	va_start(ap, fmt);
	k = vsnprintf(dst + n, cap - n, fmt, ap);
	va_end(ap);
	if (k < 0 || (size_t)k >= cap - n) {
		dst[n] = '\0';
		return false;
	}
	return true;
}

/* A JSON string body: only printable ASCII survives, quotes escaped. */
static void json_str(char *out, size_t cap, const char *s)
{
	size_t n = 0;

	for (; s && *s && n + 3 < cap; s++) {
		if (*s == '"' || *s == '\\')
			out[n++] = '\\';
		out[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
	}
	out[n] = '\0';
}

/* Filesystem type and label in [off, off+size). */
static void probe_fs(int fd, uint64_t off, uint64_t size, char *type, size_t tcap, char *label, size_t lcap)
{
	blkid_probe pr = blkid_new_probe();
	const char *v;

	type[0] = label[0] = '\0';
	if (!pr)
		return;
	if (blkid_probe_set_device(pr, fd, (blkid_loff_t)off, (blkid_loff_t)size) == 0) {
		blkid_probe_enable_superblocks(pr, 1);
		blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL);
		blkid_probe_enable_partitions(pr, 0);
		if (blkid_do_safeprobe(pr) == 0) {
			if (blkid_probe_lookup_value(pr, "TYPE", &v, NULL) == 0)
				snprintf(type, tcap, "%s", v);
			if (blkid_probe_lookup_value(pr, "LABEL", &v, NULL) == 0)
				json_str(label, lcap, v);
		}
	}
	blkid_free_probe(pr);
}

static int probe_partitions(struct probe_src *p, struct kiln_probe *out, char *parts_json, size_t pcap)
{
	blkid_probe pr = blkid_new_probe();
	blkid_partlist ls;
	int n, r = 0;

	if (!pr)
		return -ENOMEM;
	if (blkid_probe_set_device(pr, p->fd, 0, (blkid_loff_t)p->size) < 0) {
		blkid_free_probe(pr);
		return -EIO;
	}
	blkid_probe_enable_superblocks(pr, 0);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	ls = blkid_do_safeprobe(pr) == 0 ? blkid_probe_get_partitions(pr) : NULL;
	if (!ls || !blkid_partlist_get_table(ls)) {
		blkid_free_probe(pr);
		return 0;               /* no partition table */
	}
	snprintf(out->partition_table, sizeof out->partition_table, "%s",
		 blkid_parttable_get_type(blkid_partlist_get_table(ls)));
	n = blkid_partlist_numof_partitions(ls);
	out->partitions = n;
	for (int i = 0; i < n && i < MAX_PROBED_PARTITIONS; i++) {
		blkid_partition par = blkid_partlist_get_partition(ls, i);
		uint64_t start = (uint64_t)blkid_partition_get_start(par) * 512;
		uint64_t size = (uint64_t)blkid_partition_get_size(par) * 512;
		const char *guid = blkid_partition_get_type_string(par);
		int mbr_type = blkid_partition_get_type(par);
		bool active = strcmp(out->partition_table, "dos") == 0 &&
			      (blkid_partition_get_flags(par) & 0x80);
		bool esp_type = (guid && strcasecmp(guid, GUID_ESP) == 0) ||
				(strcmp(out->partition_table, "dos") == 0 && mbr_type == MBR_ESP);
		char type[32], label[64], typestr[48];

		r = fill(p, start, MIN(size, (uint64_t)PROBE_WINDOW));
		if (r < 0)
			break;
		probe_fs(p->fd, start, size, type, sizeof type, label, sizeof label);
		if (active)
			out->bootable_partition = true;
		if (esp_type && strcmp(type, "vfat") == 0)
			out->esp = true;
		for (size_t k = 0; guid && k < ARRAY_SIZE(root_types); k++)
			if (strcasecmp(guid, root_types[k].guid) == 0)
				snprintf(out->architecture, sizeof out->architecture, "%s", root_types[k].arch);
		if (guid)
			snprintf(typestr, sizeof typestr, "%s", guid);
		else
			snprintf(typestr, sizeof typestr, "0x%02x", mbr_type);
		append(out->filesystems, sizeof out->filesystems, "%sp%d:%s", i ? " " : "",
		       blkid_partition_get_partno(par), type[0] ? type : "none");
		append(parts_json, pcap,
		       "%s{\"Number\":%d,\"Start\":%llu,\"Size\":%llu,\"Type\":\"%s\",\"Bootable\":%s,"
		       "\"Filesystem\":\"%s\",\"Label\":\"%s\",\"EfiSystemPartition\":%s}",
		       i ? "," : "", blkid_partition_get_partno(par), (unsigned long long)start,
		       (unsigned long long)size, typestr, active ? "true" : "false", type, label,
		       esp_type ? "true" : "false");
	}
	blkid_free_probe(pr);
	return r;
}

int kiln_snapshot_probe(struct kiln_region *rg, const char *snapshot_id, struct kiln_probe *ret)
{
	struct probe_src p = { .fd = -1 };
	struct kiln_probe out = { 0 };
	char parts[3200] = "", fs[32] = "", label[64] = "";
	uint8_t sector0[512];
	int r;

	r = kiln_snapshot_open(rg, snapshot_id, &p.snap);
	if (r < 0)
		return r;
	p.size = kiln_volume_size(p.snap);
	p.buf = malloc(PROBE_WINDOW);
	p.fd = memfd_create("kiln-probe", MFD_CLOEXEC);
	if (!p.buf || p.fd < 0) {
		r = p.buf ? -errno : -ENOMEM;
		goto out;
	}
	if (ftruncate(p.fd, (off_t)p.size) < 0) {
		r = -errno;
		goto out;
	}
	r = fill(&p, 0, PROBE_WINDOW);
	if (r == 0 && p.size > PROBE_WINDOW)
		r = fill(&p, p.size - MIN(p.size - PROBE_WINDOW, (uint64_t)PROBE_WINDOW), PROBE_WINDOW);
	if (r < 0)
		goto out;
	memset(sector0, 0, sizeof sector0);
	r = kiln_volume_read(p.snap, sector0, MIN(p.size, (uint64_t)sizeof sector0), 0);
	if (r < 0)
		goto out;
	out.boot_signature = sector0[510] == 0x55 && sector0[511] == 0xaa;
	out.boot_code = !buf_is_zero(sector0, 440);

	r = probe_partitions(&p, &out, parts, sizeof parts);
	if (r < 0)
		goto out;
	if (!out.partition_table[0]) {
		/* A filesystem on the whole disk, perhaps. */
		probe_fs(p.fd, 0, p.size, fs, sizeof fs, label, sizeof label);
		if (fs[0])
			snprintf(out.filesystems, sizeof out.filesystems, "disk:%s", fs);
	}
	snprintf(out.json, sizeof out.json,
		 "{\"PartitionTable\":\"%s\",\"Partitions\":[%s],\"Filesystem\":\"%s\","
		 "\"BootSignature\":%s,\"BootCode\":%s,\"BootablePartition\":%s,"
		 "\"EfiSystemPartition\":%s,\"Architecture\":\"%s\"}",
		 out.partition_table, parts, fs, out.boot_signature ? "true" : "false",
		 out.boot_code ? "true" : "false", out.bootable_partition ? "true" : "false",
		 out.esp ? "true" : "false", out.architecture);
	*ret = out;
	r = 0;
out:
	if (p.fd >= 0)
		close(p.fd);
	free(p.buf);
	kiln_volume_close(p.snap);
	return r;
}
