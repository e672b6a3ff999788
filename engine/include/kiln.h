/* SPDX-License-Identifier: MIT */
/* kiln.h: the one public header of libkiln, the kiln engine.
 *
 * Conventions: every action returns 0 (or a count) on success and -errno on
 * failure; out-parameters are named ret_* and written only on success;
 * every *_close() and *_free() accepts NULL. The library never prints
 * above debug level (KILN_DEBUG=1 in the environment turns debug on) and
 * never exits.
 *
 * Error codes the caller can rely on:
 *   -ENOENT   unknown id, or a store/region that does not exist
 *   -EINVAL   malformed id or argument
 *   -EXDEV    an id that belongs to another region of the store
 *   -EBUSY    a volume opened for writing by another process
 *   -EBADMSG  corrupt on-disk data (bad checksum, chunk id mismatch)
 *   -ENOSPC   disk full; nothing that was complete before is changed
 *   -ENOTEMPTY / -EEXIST  as their names say (e.g. init on a store)
 */
#ifndef KILN_H
#define KILN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_ID_MAX 32            /* room for any id and its NUL */
#define KILN_REGION_MAX 32
#define KILN_ACCOUNT_LEN 12
#define KILN_DEFAULT_CHUNK_SIZE (64u * 1024)
#define KILN_MIN_CHUNK_SIZE (4u * 1024)
#define KILN_MAX_CHUNK_SIZE (4u * 1024 * 1024)
#define KILN_DEFAULT_ACCOUNT "123456789012"

struct kiln_store;
struct kiln_region;
struct kiln_volume;

/* A callback for long work: done and total are in bytes. */
typedef void (*kiln_progress_fn)(void *opaque, uint64_t done, uint64_t total);

/* ---- store ---------------------------------------------------------- */

/* The library's version, e.g. "0.1.0". */
const char *kiln_version(void);

struct kiln_store_options {
	uint32_t chunk_size;      /* 0: KILN_DEFAULT_CHUNK_SIZE */
	int zstd_level;           /* -7 to 19; 0: the default (docs/DECISIONS.md) */
	const char *account;      /* NULL: KILN_DEFAULT_ACCOUNT */
};

/* Create a store in dir (created if missing, must be empty otherwise) with
 * the regions us-east-1 and eu-west-1. */
int kiln_store_init(const char *dir, const struct kiln_store_options *opts);
int kiln_store_open(const char *dir, struct kiln_store **ret_store);
void kiln_store_close(struct kiln_store *store);

uint32_t kiln_store_chunk_size(const struct kiln_store *store);
int kiln_store_zstd_level(const struct kiln_store *store);
const char *kiln_store_default_account(const struct kiln_store *store);
const char *kiln_store_path(const struct kiln_store *store);

/* Regions, sorted by name. Calls fn once per region; stops early on a
 * non-zero return and passes it up. */
int kiln_store_list_regions(struct kiln_store *store,
			    int (*fn)(void *opaque, const char *region), void *opaque);

int kiln_region_open(struct kiln_store *store, const char *name,
		     struct kiln_region **ret_region);
void kiln_region_close(struct kiln_region *region);
const char *kiln_region_name(const struct kiln_region *region);
struct kiln_store *kiln_region_store(struct kiln_region *region);

/* ---- ids ------------------------------------------------------------ */

/* true when id is prefix + "-" + 17 lowercase hex digits, e.g. "vol". */
bool kiln_id_valid(const char *id, const char *prefix);
/* true when account is exactly 12 decimal digits. */
bool kiln_account_valid(const char *account);

/* ---- volumes -------------------------------------------------------- */

enum kiln_volume_state {
	KILN_VOLUME_CREATING,
	KILN_VOLUME_AVAILABLE,
	KILN_VOLUME_IN_USE,
	KILN_VOLUME_DELETING,
	_KILN_VOLUME_STATE_MAX,
};

struct kiln_volume_info {
	char id[KILN_ID_MAX];
	char snapshot_id[KILN_ID_MAX];   /* "" when created blank */
	char owner[KILN_ACCOUNT_LEN + 1];
	char region[KILN_REGION_MAX];
	uint64_t size;                   /* bytes */
	uint32_t chunk_size;
	enum kiln_volume_state state;
	int64_t create_time;             /* seconds since the epoch, UTC */
	char last_snapshot_id[KILN_ID_MAX];
	uint64_t dirty_chunks;           /* changed since last_snapshot_id */
};

const char *kiln_volume_state_name(enum kiln_volume_state s);

/* Create a volume. snapshot_id NULL or "": blank volume of size bytes.
 * Otherwise a copy-on-write volume of the snapshot; size 0 means the
 * snapshot's size, a smaller size than the snapshot's is -EINVAL. No chunk
 * bytes are copied. */
int kiln_volume_create(struct kiln_region *region, const char *account,
		       uint64_t size, const char *snapshot_id,
		       char ret_id[KILN_ID_MAX]);

/* Delete a volume: -EBUSY while another process has it open. */
int kiln_volume_delete(struct kiln_region *region, const char *volume_id);

int kiln_volume_describe(struct kiln_region *region, const char *volume_id,
			 struct kiln_volume_info *ret_info);
/* All volumes in creation order. fn's non-zero return stops and is passed up. */
int kiln_volume_list(struct kiln_region *region,
		     int (*fn)(void *opaque, const struct kiln_volume_info *info),
		     void *opaque);

#define KILN_OPEN_READONLY 0u
#define KILN_OPEN_WRITE    1u    /* take the volume's owner lock */

int kiln_volume_open(struct kiln_region *region, const char *volume_id,
		     unsigned flags, struct kiln_volume **ret_volume);
/* Close flushes when opened for writing; returns the flush's error. */
int kiln_volume_close(struct kiln_volume *volume);

uint64_t kiln_volume_size(const struct kiln_volume *volume);
uint32_t kiln_volume_chunk_size(const struct kiln_volume *volume);
const char *kiln_volume_id(const struct kiln_volume *volume);

/* Byte-granular I/O. Requests beyond the end of the volume are -EINVAL.
 * Thread-safe: any number of threads may call these on one handle. */
int kiln_volume_read(struct kiln_volume *volume, void *buf, uint64_t count,
		     uint64_t offset);
int kiln_volume_write(struct kiln_volume *volume, const void *buf,
		      uint64_t count, uint64_t offset);
/* Deallocate: the range reads back as zeroes. */
int kiln_volume_trim(struct kiln_volume *volume, uint64_t count, uint64_t offset);
int kiln_volume_write_zeroes(struct kiln_volume *volume, uint64_t count,
			     uint64_t offset);
/* Several reads and writes at once: their file I/O goes to the kernel as
 * one batch. Requests in one batch are unordered among themselves (as
 * NBD requests in flight are). At most KILN_IO_BATCH_MAX; each gets its
 * own result (0 or -errno); returns 0 or -E2BIG/-ENOMEM. */
#define KILN_IO_READ 0
#define KILN_IO_WRITE 1
#define KILN_IO_BATCH_MAX 64
struct kiln_io {
	int op;                 /* KILN_IO_READ or KILN_IO_WRITE */
	void *buf;
	uint64_t count, offset;
	int result;
};
int kiln_volume_submit(struct kiln_volume *volume, struct kiln_io *ios, size_t n);

/* A write whose payload is handed over in parts as it arrives, from
 * memory or through a pipe. kiln-nbd splices a large write's payload from
 * its socket into a pipe, and the engine splices it on into the overlay,
 * so the bytes are copied once (into the page cache) instead of twice.
 *
 * begin checks the whole range first: a write over a chunk still in the
 * base snapshot is -EOPNOTSUPP (it may need the chunk's old bytes, and
 * must not race a copy-up of it), as are a read-only volume and a range
 * outside it; nothing is taken then, and the write goes through
 * kiln_volume_write. The parts come in order
 * and add up to count. After a part fails to reach the overlay the later
 * ones are still taken and dropped, so the caller's stream stays in step;
 * end returns the first error, or -EIO if the parts fell short. Call end
 * whenever begin succeeded, also when the stream was lost: the chunks the
 * write reached change state (and are dirty) there. */
struct kiln_stream_write {
	struct kiln_volume *volume;
	uint64_t offset, count, done;
	int result;
};
int kiln_volume_stream_begin(struct kiln_volume *volume, uint64_t count,
			     uint64_t offset, struct kiln_stream_write *ret_write);
void kiln_volume_stream_buf(struct kiln_stream_write *w, const void *buf, size_t len);
/* Take len bytes from pipe_fd, which holds them already. 0, or -errno if
 * the pipe could not be read (the stream is lost). */
int kiln_volume_stream_pipe(struct kiln_stream_write *w, int pipe_fd, size_t len);
int kiln_volume_stream_end(struct kiln_stream_write *w);

/* Put the count bytes at offset into a pipe (pipe[1] its write end),
 * empty and with room for them, as references to the page cache
 * (splice(2)): only when every chunk of the range is LOCAL, in the
 * overlay. Otherwise -EOPNOTSUPP; after any error the pipe holds nothing
 * of the read, and kiln_volume_read says what the error is. */
int kiln_volume_splice_read(struct kiln_volume *volume, const int pipe[2], uint64_t count,
			    uint64_t offset);

/* Make every write that completed before the call durable. */
int kiln_volume_flush(struct kiln_volume *volume);

/* Allocation status of a range, chunk by chunk. */
enum kiln_extent_type {
	KILN_EXTENT_DATA,        /* bytes that may be non-zero */
	KILN_EXTENT_ZERO,        /* reads as zero, backed by the base snapshot */
	KILN_EXTENT_HOLE,        /* reads as zero, nothing allocated */
};
/* Calls fn with maximal runs of one type covering [offset, offset+count),
 * clipped to that range. */
int kiln_volume_map_status(struct kiln_volume *volume, uint64_t count,
			   uint64_t offset,
			   int (*fn)(void *opaque, uint64_t offset, uint64_t length,
				     enum kiln_extent_type type),
			   void *opaque);

/* Import a raw file (or block device) into a volume. volume_id NULL or "":
 * a new volume of the file's size (rounded up to 512 bytes is not done:
 * the size is the file's). Otherwise overwrite an existing volume of at
 * least the file's size: only chunks whose contents differ become dirty.
 * ret_id gets the volume's id; ret_changed (may be NULL) the number of
 * chunks that changed. */
int kiln_volume_import(struct kiln_region *region, const char *account,
		       const char *path, const char *volume_id,
		       kiln_progress_fn progress, void *opaque,
		       char ret_id[KILN_ID_MAX], uint64_t *ret_changed);

/* Write the volume to path as a sparse raw file (created or truncated). */
int kiln_volume_export(struct kiln_region *region, const char *volume_id,
		       const char *path, kiln_progress_fn progress, void *opaque);

/* ---- snapshots ------------------------------------------------------ */

enum kiln_snapshot_state {
	KILN_SNAPSHOT_PENDING,
	KILN_SNAPSHOT_COMPLETED,
	KILN_SNAPSHOT_ERROR,
	_KILN_SNAPSHOT_STATE_MAX,
};

struct kiln_snapshot_info {
	char id[KILN_ID_MAX];
	char volume_id[KILN_ID_MAX];
	char parent_id[KILN_ID_MAX];     /* previous snapshot of the volume, or "" */
	char owner[KILN_ACCOUNT_LEN + 1];
	char region[KILN_REGION_MAX];
	char description[256];
	uint64_t size;                   /* volume size in bytes */
	uint32_t chunk_size;
	enum kiln_snapshot_state state;
	int64_t start_time;
	uint64_t chunks_total;           /* chunks in the volume */
	uint64_t chunks_data;            /* non-zero chunks */
	uint64_t chunks_changed;         /* dirty chunks read and hashed */
	uint64_t chunks_new;             /* chunks this snapshot added to the store */
	uint64_t bytes_new_stored;       /* stored (compressed) bytes it added */
};

const char *kiln_snapshot_state_name(enum kiln_snapshot_state s);

/* The control socket of a volume this process owns (opened with
 * KILN_OPEN_WRITE): listen returns a listening socket fd; serve answers
 * one request from a connection accepted on it (and leaves it open);
 * close stops listening and removes the socket. */
struct kiln_control_ops {
	/* Another volume this process owns, for a request that names several
	 * (an instance's image): NULL if not ours. release gives it back. */
	struct kiln_volume *(*acquire)(void *opaque, const char *volume_id);
	void (*release)(void *opaque, struct kiln_volume *volume);
	/* Around the work of a request, when set: begin waits for the owner's
	 * turn and returns false when it is stopping (the request is then
	 * refused with EAGAIN and its client tries again). */
	bool (*begin)(void *opaque);
	void (*end)(void *opaque);
	void *opaque;
};
int kiln_volume_control_listen(struct kiln_volume *volume, int *ret_fd);
int kiln_volume_control_serve(struct kiln_volume *volume, int client_fd,
			      const struct kiln_control_ops *ops);
void kiln_volume_control_close(struct kiln_volume *volume, int fd);

/* Snapshot an open (KILN_OPEN_WRITE) volume at this point: every write that
 * completed before the call is in it, none that starts after it returns.
 * Only chunks dirty since the volume's last snapshot are read and hashed. */
int kiln_volume_snapshot(struct kiln_volume *volume, const char *account,
			 const char *description,
			 kiln_progress_fn progress, void *opaque,
			 char ret_id[KILN_ID_MAX]);

/* Do part of the next snapshot's work now: read, hash and compress up to
 * max dirty chunks of an open volume that were not written since the
 * previous call, and keep them in memory (64 MiB at most) until the
 * snapshot, which takes each one only if its chunk was not written
 * since. For a server that holds volumes open; *ret_done says how many
 * were captured. */
int kiln_volume_precapture(struct kiln_volume *volume, size_t max, size_t *ret_done);

/* Snapshot several open volumes at one point in time: all are frozen
 * before the first snapshot starts (one barrier), so the set is
 * consistent, as EC2's multi-volume snapshots of an instance are. All or
 * nothing. ret_ids[i] is volume i's snapshot. */
int kiln_volumes_snapshot(struct kiln_volume *const *volumes, size_t n, const char *account,
			  const char *description, char (*ret_ids)[KILN_ID_MAX]);

/* Convenience: open the volume for writing, snapshot, close. When another
 * process owns the volume and listens on its control socket (kiln-nbd
 * does), the snapshot is taken by that process, at a consistent point of
 * its I/O. */
int kiln_snapshot_create(struct kiln_region *region, const char *account,
			 const char *volume_id, const char *description,
			 kiln_progress_fn progress, void *opaque,
			 char ret_id[KILN_ID_MAX]);

int kiln_snapshot_describe(struct kiln_region *region, const char *snapshot_id,
			   struct kiln_snapshot_info *ret_info);
int kiln_snapshot_list(struct kiln_region *region,
		       int (*fn)(void *opaque, const struct kiln_snapshot_info *info),
		       void *opaque);
int kiln_snapshot_delete(struct kiln_region *region, const char *snapshot_id);
int kiln_snapshot_export(struct kiln_region *region, const char *snapshot_id,
			 const char *path, kiln_progress_fn progress, void *opaque);

/* Open a completed snapshot as a read-only volume handle: read and
 * map_status work on it as on a volume; writes are -EROFS. Close it with
 * kiln_volume_close(). */
int kiln_snapshot_open(struct kiln_region *region, const char *snapshot_id,
		       struct kiln_volume **ret_volume);

/* Read from a completed snapshot (e.g. to probe it without exporting). */
int kiln_snapshot_read(struct kiln_region *region, const char *snapshot_id,
		       void *buf, uint64_t count, uint64_t offset);

/* Changed ranges between two snapshots of one chunk size: fn is called
 * for each maximal run of chunks whose ids differ, in order. */
int kiln_snapshot_diff(struct kiln_region *region, const char *snapshot_a,
		       const char *snapshot_b,
		       int (*fn)(void *opaque, uint64_t offset, uint64_t length),
		       void *opaque);

/* ---- images --------------------------------------------------------- */

#define KILN_MAX_MAPPINGS 32
#define KILN_MAX_TAGS 50
#define KILN_MAX_LAUNCH_USERS 128
#define KILN_NAME_MAX 129          /* image names: 3 to 128 characters */

/* One block device mapping, in EC2's shape: an EBS volume (from a
 * snapshot, or empty with a size), an instance store ("ephemeralN"), or
 * NoDevice (suppress a mapping, at launch). */
struct kiln_bdm {
	char device_name[32];            /* "/dev/xvda" */
	char virtual_name[32];           /* "ephemeral0", or "" */
	bool no_device;
	bool ebs;
	char snapshot_id[KILN_ID_MAX];   /* Ebs.SnapshotId, or "" */
	uint64_t volume_size;            /* Ebs.VolumeSize in GiB; 0: the snapshot's */
	bool delete_on_termination;      /* Ebs.DeleteOnTermination (default true) */
	char volume_type[16];            /* Ebs.VolumeType, default "gp3" */
};

struct kiln_tag {
	char key[129];
	char value[257];
};

/* What register found in the root snapshot (libblkid). */
struct kiln_probe {
	char partition_table[16];        /* "dos", "gpt" or "" */
	int partitions;
	bool boot_signature;             /* 0x55AA at the end of sector 0 */
	bool boot_code;                  /* sector 0's boot code is not all zero */
	bool bootable_partition;         /* an MBR partition marked active */
	bool esp;                        /* an EFI system partition with a FAT filesystem */
	char architecture[16];           /* what the partitions tell, or "" */
	char filesystems[128];           /* e.g. "p1:ext4 p2:vfat", or "disk:ext4" */
	char json[4096];                 /* all of it, as a JSON object */
};

struct kiln_image_spec {
	const char *name;
	const char *description;         /* NULL: none */
	const char *root_device_name;    /* "/dev/xvda" */
	const char *architecture;        /* x86_64, arm64, i386; NULL: from the probe */
	const char *boot_mode;           /* legacy-bios, uefi, uefi-preferred; NULL: from the probe */
	const char *virtualization_type; /* NULL or "hvm" */
	const struct kiln_bdm *mappings;
	size_t nmappings;
	const struct kiln_tag *tags;
	size_t ntags;
	bool no_verify_boot;
};

struct kiln_image_info {
	char id[KILN_ID_MAX];
	char name[KILN_NAME_MAX];
	char owner[KILN_ACCOUNT_LEN + 1];
	char region[KILN_REGION_MAX];
	char state[16];                  /* pending, available, failed */
	char state_reason[256];
	char description[256];
	char architecture[16];
	char boot_mode[24];
	char virtualization_type[8];
	char root_device_name[32];
	int64_t creation_time;
	char source_image_id[KILN_ID_MAX];
	char source_image_region[KILN_REGION_MAX];
	bool public;
	struct kiln_bdm mappings[KILN_MAX_MAPPINGS];
	size_t nmappings;
	struct kiln_tag tags[KILN_MAX_TAGS];
	size_t ntags;
	char launch_users[KILN_MAX_LAUNCH_USERS][KILN_ACCOUNT_LEN + 1];
	size_t nlaunch_users;
	char probe[4096];                /* JSON object from kiln_probe, or "{}" */
};

/* Register an image owned by account. Checks every rule of EC2's
 * RegisterImage (see docs/IMAGES.md); on refusal returns -EINVAL (bad
 * argument), -EEXIST (name taken), -ENOENT/-EXDEV (snapshot unknown or in
 * another region), -EACCES (snapshot not usable by account), -ENOEXEC
 * (the root cannot boot), and writes the reason into why (why_len bytes). */
int kiln_image_register(struct kiln_region *region, const char *account,
			const struct kiln_image_spec *spec, char ret_id[KILN_ID_MAX],
			char *why, size_t why_len);

/* The image as caller sees it: -ENOENT when it does not exist or caller
 * may not launch it (the same answer, on purpose). */
int kiln_image_describe(struct kiln_region *region, const char *caller, const char *image_id,
			struct kiln_image_info *ret_info);
/* Every image caller may launch (its own, shared with it, public), in
 * creation order then id. */
int kiln_image_list(struct kiln_region *region, const char *caller,
		    int (*fn)(void *opaque, const struct kiln_image_info *info), void *opaque);
bool kiln_image_can_launch(const struct kiln_image_info *info, const char *caller);

/* Launch permissions: add and remove are sets of account ids; add_all or
 * remove_all is the group "all". Only the owner may change them (-EPERM). */
int kiln_image_modify_launch_permission(struct kiln_region *region, const char *caller,
					const char *image_id,
					const char *const *add, size_t nadd, bool add_all,
					const char *const *remove, size_t nremove, bool remove_all);
int kiln_image_reset_launch_permission(struct kiln_region *region, const char *caller,
				       const char *image_id);
int kiln_image_set_description(struct kiln_region *region, const char *caller,
			       const char *image_id, const char *description);

/* Deregister (owner only). With delete_snapshots, each snapshot of the
 * mapping is deleted unless another image still uses it; report is told
 * per snapshot: "deleted", or why not. */
int kiln_image_deregister(struct kiln_region *region, const char *caller, const char *image_id,
			  bool delete_snapshots,
			  void (*report)(void *opaque, const char *snapshot_id, const char *result),
			  void *opaque);

/* Copy an image caller may launch from src to dst: a new image id and new
 * snapshot ids in dst, owned by caller; only chunks dst lacks move, each
 * verified by its id. Running the same copy again after a crash resumes
 * it. */
struct kiln_copy_report {
	uint64_t snapshots;
	uint64_t chunks_total;      /* non-zero chunks of the image's snapshots */
	uint64_t chunks_moved;      /* copied into dst */
	uint64_t chunks_present;    /* already in dst */
	uint64_t bytes_moved;       /* stored bytes written to dst */
	uint64_t raw_bytes_moved;   /* their raw size */
	bool resumed;
};
int kiln_image_copy(struct kiln_region *src, struct kiln_region *dst, const char *caller,
		    const char *source_image_id, const char *name, const char *description,
		    bool copy_tags, kiln_progress_fn progress, void *opaque,
		    struct kiln_copy_report *ret_report, char ret_id[KILN_ID_MAX],
		    char *why, size_t why_len);

/* Snapshot sharing (createVolumePermission); owner only. */
int kiln_snapshot_modify_create_volume_permission(struct kiln_region *region, const char *caller,
						  const char *snapshot_id,
						  const char *const *add, size_t nadd, bool add_all,
						  const char *const *remove, size_t nremove,
						  bool remove_all);
/* true if account owns the snapshot, or it is public or shared with it:
 * whether the account may see it and make volumes of it. */
bool kiln_snapshot_usable(struct kiln_region *region, const char *account, const char *snapshot_id);
/* Accounts (and "all") a snapshot is shared with: fn per entry. */
int kiln_snapshot_list_create_volume_permission(struct kiln_region *region,
						const char *snapshot_id,
						int (*fn)(void *opaque, const char *who), void *opaque);

/* Probe a completed snapshot's partition table and filesystems. */
int kiln_snapshot_probe(struct kiln_region *region, const char *snapshot_id,
			struct kiln_probe *ret_probe);

/* ---- instances ------------------------------------------------------ */

struct kiln_instance_device {
	char device_name[32];            /* "/dev/xvda" */
	char volume_id[KILN_ID_MAX];
	bool ebs;                        /* false: an instance store (ephemeral) volume */
	bool delete_on_termination;
};

struct kiln_instance_info {
	char id[KILN_ID_MAX];            /* "i-" + 17 hex */
	char image_id[KILN_ID_MAX];
	char owner[KILN_ACCOUNT_LEN + 1];
	char region[KILN_REGION_MAX];
	char state[16];                  /* running, stopped, terminated */
	int64_t launch_time;
	char architecture[16];
	char boot_mode[24];
	char root_device_name[32];
	char nbd_socket[256];            /* the kiln-nbd that serves its devices */
	int nbd_pid;
	int qemu_pid;                    /* 0 when not booted */
	struct kiln_instance_device devices[KILN_MAX_MAPPINGS];
	size_t ndevices;
};

/* Launch one instance of an image caller may launch: one copy-on-write
 * volume per EBS mapping (instant, no chunk bytes copied), a blank one
 * per ephemeral mapping. overrides replace the image's mappings by device
 * name; NoDevice removes one. */
int kiln_instance_launch(struct kiln_region *region, const char *caller, const char *image_id,
			 const struct kiln_bdm *overrides, size_t noverrides,
			 char ret_id[KILN_ID_MAX], char *why, size_t why_len);
int kiln_instance_describe(struct kiln_region *region, const char *caller, const char *instance_id,
			   struct kiln_instance_info *ret_info);
int kiln_instance_list(struct kiln_region *region, const char *caller,
		       int (*fn)(void *opaque, const struct kiln_instance_info *info), void *opaque);
/* Record what serves and runs the instance (state, nbd_socket, nbd_pid,
 * qemu_pid from info). */
int kiln_instance_update(struct kiln_region *region, const struct kiln_instance_info *info);
/* Terminate: delete the volumes marked DeleteOnTermination (report says
 * which), keep the others as available volumes, forget the instance. The
 * caller stops qemu first. */
int kiln_instance_terminate(struct kiln_region *region, const char *caller, const char *instance_id,
			    void (*report)(void *opaque, const char *volume_id, bool deleted),
			    void *opaque);
/* The volume behind an export name "i-…/xvda"; -ENOENT if none. */
int kiln_instance_device_volume(struct kiln_region *region, const char *name,
				char ret_volume_id[KILN_ID_MAX]);
/* CreateImage: snapshot every EBS volume of the instance at one point in
 * time (through its daemon when one serves them) and register an image
 * with the instance's mapping. */
int kiln_image_create(struct kiln_region *region, const char *caller, const char *instance_id,
		      const char *name, const char *description, char ret_id[KILN_ID_MAX],
		      char *why, size_t why_len);

/* ---- store maintenance ---------------------------------------------- */

struct kiln_region_stats {
	uint64_t volumes, snapshots;
	uint64_t logical_bytes;   /* sum of the snapshots' sizes */
	uint64_t data_bytes;      /* sum of the snapshots' non-zero chunk bytes */
	uint64_t unique_chunks;   /* chunks in the chunk store */
	uint64_t unique_bytes;    /* their raw bytes */
	uint64_t stored_bytes;    /* their stored (compressed) bytes */
	uint64_t pack_bytes;      /* bytes of the pack files on disk */
	uint64_t overlay_bytes;   /* bytes allocated by volume overlays */
};

int kiln_region_stats(struct kiln_region *region, struct kiln_region_stats *ret_stats);

/* One problem found by verify: a corrupt or missing chunk (chunk_id in
 * hex), or an unreadable manifest (chunk_id ""). snapshots lists who uses
 * it: snapshot ids, and "vol-… (parent)" for a volume whose parent
 * manifest names it (NUL-separated, double NUL at the end). */
struct kiln_verify_problem {
	char chunk_id[33];              /* 32 hex digits */
	const char *what;               /* e.g. "id mismatch", "missing" */
	const char *snapshots;
};

struct kiln_verify_result {
	uint64_t chunks_checked;
	uint64_t bytes_checked;
	uint64_t corrupt_chunks;
	uint64_t manifests_checked;     /* snapshots' and volumes' parent manifests */
	uint64_t bad_manifests;         /* unreadable, missing, or naming a bad chunk */
	bool bad_catalog;               /* SQLite's integrity check failed */
};

int kiln_region_verify(struct kiln_region *region,
		       void (*report)(void *opaque, const struct kiln_verify_problem *p),
		       void *opaque, kiln_progress_fn progress,
		       struct kiln_verify_result *ret_result);

struct kiln_gc_result {
	uint64_t chunks_removed;
	uint64_t bytes_freed;          /* pack bytes removed from disk */
	uint64_t packs_removed;
	uint64_t packs_written;
	uint64_t chunks_kept;
	uint64_t chunks_recompressed;  /* kiln_region_recompress() */
};

int kiln_region_gc(struct kiln_region *region, struct kiln_gc_result *ret_result);
/* gc, and every live chunk compressed at a weaker zstd level than
 * zstd_level (-7 to 19) is verified and compressed again at it; the
 * smaller payload is kept. Packs are rewritten as by gc, so a crash at any
 * point leaves the store as it was or as it will be. */
int kiln_region_recompress(struct kiln_region *region, int zstd_level,
			   struct kiln_gc_result *ret_result);

#ifdef __cplusplus
}
#endif
#endif /* KILN_H */
