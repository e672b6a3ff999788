/* SPDX-License-Identifier: MIT */
/* internal.h: declarations shared by the engine's modules, one section per
 * file. Nothing outside engine/ includes this. */
#ifndef KILN_INTERNAL_H
#define KILN_INTERNAL_H

#include <endian.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kiln.h"
#include "common/cleanup.h"
#include "common/minmax.h"

#define CHUNK_ID_SIZE 16
#define SECRET_SIZE 192          /* XXH3 secret; >= XXH3_SECRET_SIZE_MIN */
#define DEFAULT_ZSTD_LEVEL 1     /* see docs/DECISIONS.md */

/* ---- util.c --------------------------------------------------------- */

extern bool kiln_debug_enabled;
void kiln_debug_init(void);
void debug_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define debug(fmt, ...) \
	do { if (unlikely(kiln_debug_enabled)) debug_msg(fmt, ##__VA_ARGS__); } while (0)

int random_bytes(void *buf, size_t len);
int random_id(const char *prefix, char ret_id[KILN_ID_MAX]);
/* Write a whole file atomically: temp file, fsync, rename, fsync dir. */
int write_file_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode);
int read_file(int dirfd, const char *name, size_t max, void **ret_buf, size_t *ret_len);
int fsync_dir(int dirfd);
int pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
int pread_all(int fd, void *buf, size_t len, uint64_t off);
bool buf_is_zero(const void *buf, size_t len);
void hex_encode(const uint8_t *in, size_t len, char *out);
int hex_decode(const char *in, uint8_t *out, size_t len);
int64_t now_seconds(void);
/* Fault injection for crash tests: when KILN_CRASH_POINT names this point,
 * the process kills itself with SIGKILL right here; KILN_STALL_POINT=
 * name:seconds makes it wait here instead, as behind a slow disk. */
void crash_point(const char *name);
/* Write a reason into buf (len bytes, may be NULL) and return r: for the
 * calls that explain a refusal to a person. */
int set_why(char *buf, size_t len, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- io.c: all volume and pack I/O (io_uring, or pread/pwrite) ------- */

enum io_op { IO_READ, IO_WRITE };

struct io_req {
	int fd;
	enum io_op op;
	void *buf;
	uint32_t len;
	uint64_t off;
	int res;            /* after completion: bytes done or -errno */
};

/* Run n requests with queue depth > 1 and wait for all of them. Short
 * transfers are resumed; a read that hits end of file stops there (res
 * tells how much). Returns 0 or the first -errno. */
int io_run(struct io_req *reqs, size_t n);
/* Start n requests now; io_finish() waits for them. One batch in flight
 * per thread. reqs must stay valid until io_finish() returns. */
int io_start(struct io_req *reqs, size_t n);
int io_finish(void);
/* A queue that belongs to its owner, not to a thread: for requests left
 * in flight across calls, such as the write of a full pack buffer while
 * the next one fills. Its owner serialises the calls; after a failed
 * io_queue_start() the queue must be freed, not finished. */
struct io_queue;
struct io_queue *io_queue_new(void);
void io_queue_free(struct io_queue *q);
int io_queue_start(struct io_queue *q, struct io_req *reqs, size_t n);
int io_queue_finish(struct io_queue *q);
const char *io_backend_name(void);

/* ---- packstream.c: in-order reads of a pack, with O_DIRECT ---------- */

/* A new generation for a chunk store's pack descriptors. */
uint64_t packstream_new_gen(void);
/* Serve the record [off, off + len) of a pack (its number, the store's
 * descriptor generation, and the pack opened O_DIRECT, or -1) from this
 * thread's windows, when the thread reads that pack in order and the page
 * cache does not hold it. Returns 1 with *ret_rec (valid until the
 * thread's next read), 0 when the caller should read the record itself,
 * or -errno. */
int packstream_read(uint64_t gen, uint32_t pack, int fd, uint64_t off, uint32_t len, uint8_t **ret_rec);

/* ---- pool.c: a small pool of worker threads sized to the cores ------- */

/* Call fn(arg, i) for i in [0, n) on the pool; the caller works too. */
void pool_run(void (*fn)(void *arg, size_t i), void *arg, size_t n);
/* pool_run() in two halves: the workers start on fn now; pool_join() has
 * the caller take part and returns when all is done. One job at a time:
 * other threads' pool_run() waits, the caller's own runs inline. */
void pool_start(void (*fn)(void *arg, size_t i), void *arg, size_t n);
void pool_join(void);
unsigned pool_threads(void);

/* ---- compress.c: the only zstd user --------------------------------- */

size_t compress_bound(size_t len);
/* Returns the compressed length, 0 when the chunk does not compress well
 * enough to be worth it (store raw), or -errno. */
ssize_t compress_chunk(const void *src, size_t len, void *dst, size_t cap, int level);
int decompress_chunk(const void *src, size_t slen, void *dst, size_t raw_len);

/* ---- store.c -------------------------------------------------------- */

struct kiln_store {
	char *path;
	int dirfd;
	uint32_t chunk_size;
	int zstd_level;
	char account[KILN_ACCOUNT_LEN + 1];
	uint8_t secret[SECRET_SIZE];
};

struct catalog;
struct chunkstore;

struct kiln_region {
	struct kiln_store *store;
	char name[KILN_REGION_MAX];
	int dirfd;              /* regions/NAME */
	int volumes_dirfd;      /* regions/NAME/volumes */
	int manifests_dirfd;    /* regions/NAME/manifests */
	struct catalog *cat;
	struct chunkstore *cs;
	int lock_fd;            /* regions/NAME/lock: flock for chunk store writers */
	/* The same lock between the threads of this process (kiln-nbd's
	 * control requests run on threads of their own): recursive, held
	 * as long as the flock; lock_depth counts under it. */
	pthread_mutex_t lock_mutex;
	int lock_depth;
};

void chunk_hash(const struct kiln_store *store, const void *buf, size_t len,
		uint8_t id[CHUNK_ID_SIZE]);

/* The region's writer lock: snapshot, gc and copy hold it exclusively.
 * Taking it also clears what a crashed writer left pending. */
int region_lock(struct kiln_region *region);
void region_unlock(struct kiln_region *region);
void region_reap_if_idle(struct kiln_region *region);
/* Give back the region's reserve after an ENOSPC; true if there was one. */
bool region_release_reserve(struct kiln_region *region);
/* -EXDEV when id exists in another region of the store, else -ENOENT. */
int region_missing_id(struct kiln_region *region, const char *id);

/* ---- manifest.c ----------------------------------------------------- */

struct manifest {
	uint32_t chunk_size;
	uint64_t size;
	uint64_t nchunks;
	char snapshot_id[KILN_ID_MAX];
	char parent_id[KILN_ID_MAX];
	uint8_t (*ids)[CHUNK_ID_SIZE];
};

static inline bool chunk_id_is_zero(const uint8_t id[CHUNK_ID_SIZE])
{
	static const uint8_t zero[CHUNK_ID_SIZE];
	return __builtin_memcmp(id, zero, CHUNK_ID_SIZE) == 0;
}

struct manifest *manifest_new(uint64_t size, uint32_t chunk_size);
void manifest_free(struct manifest *m);
int manifest_write(int dirfd, const char *name, const struct manifest *m);
int manifest_read(int dirfd, const char *name, struct manifest **ret_m);
char *manifest_name(const char *snapshot_id);   /* "snap-….manifest", malloc'd */
/* The manifest of a completed snapshot of the region. */
int snapshot_manifest(struct kiln_region *region, const char *snapshot_id, struct manifest **ret_m);

/* ---- vmap.c: the volume map (chunk states + dirty bits) ------------- */

enum chunk_state {
	CHUNK_ZERO = 0,     /* reads as zero; nothing allocated */
	CHUNK_LOCAL = 1,    /* in the overlay file */
	CHUNK_BASE = 2,     /* read through to the parent manifest's chunk */
};
#define VMAP_STATE_MASK 0x03
#define VMAP_DIRTY 0x80

struct vmap {
	int fd;
	uint64_t size;
	uint32_t chunk_size;
	uint64_t nchunks;
	char volume_id[KILN_ID_MAX];
	char parent_id[KILN_ID_MAX];    /* the volume's last snapshot, or "" */
	bool writable;
	bool was_unclean;               /* opened after a crash: all LOCAL made dirty */
	uint8_t *entries;
	uint8_t *page_dirty;            /* one flag per 4 KiB page of entries */
	bool header_dirty;
	uint8_t *staged;                /* vmap_stage's copy of changed pages */
	uint8_t *page_staged;
};

static inline enum chunk_state vmap_state(const struct vmap *m, uint64_t i)
{
	return (enum chunk_state)(m->entries[i] & VMAP_STATE_MASK);
}
static inline bool vmap_dirty(const struct vmap *m, uint64_t i)
{
	return m->entries[i] & VMAP_DIRTY;
}
void vmap_set(struct vmap *m, uint64_t i, enum chunk_state s, bool dirty);

/* Create name with every chunk ZERO, or BASE where base has a non-zero id. */
int vmap_create(int dirfd, const char *name, const char *volume_id, uint64_t size,
		uint32_t chunk_size, const struct manifest *base);
/* A writable open takes the volume's owner lock (an OFD write lock on the
 * map file): -EBUSY while another open file description holds it. */
int vmap_open(int dirfd, const char *name, bool writable, struct vmap **ret_map);
int vmap_lock(int fd);
/* A read-only map in memory, not backed by a file: a snapshot's view. */
struct vmap *vmap_from_manifest(const struct manifest *base);
/* true when some open file description holds the owner lock of fd's map. */
bool vmap_locked(int fd);
/* Write what changed and fdatasync. */
int vmap_sync(struct vmap *m);
/* A flush writes the map in two steps around the overlay's fdatasync:
 * vmap_stage copies the pages changed since the last write (under the
 * caller's map lock), vmap_write_staged writes that copy. A state set
 * after the copy waits for the next flush, since its bytes may have
 * missed the fdatasync between. Callers run one pair at a time; after a
 * failed write, vmap_unstage (map lock held) marks the pages changed again. */
int vmap_stage(struct vmap *m);
int vmap_write_staged(struct vmap *m);
void vmap_unstage(struct vmap *m);
/* Close; when writable, sync and mark the map clean. */
int vmap_close(struct vmap *m);

/* ---- chunkstore.c --------------------------------------------------- */

#define CS_FLAG_ZSTD 0x0001

/* Bits 8-15 of a record's flags: the strongest zstd level its chunk has
 * been compressed with, as a signed byte; 0 when not recorded. The payload
 * is the smallest of those tries (raw when none saved enough). */
static inline uint16_t cs_flags_with_level(uint16_t flags, int level)
{
	return (uint16_t)((flags & 0xff) | (uint16_t)((uint8_t)(int8_t)level << 8));
}

static inline int cs_flags_level(uint16_t flags)
{
	return (int8_t)(uint8_t)(flags >> 8);
}

struct chunk_loc {
	uint32_t pack;
	uint32_t stored_len;
	uint64_t offset;        /* of the record header in the pack */
	uint32_t raw_len;
	uint16_t flags;
};

#define PACK_HEADER_SIZE 16
#define RECORD_HEADER_SIZE 40
#define INDEX_HEADER_SIZE 16
#define INDEX_RECORD_SIZE 40

int cs_open(struct kiln_region *region, struct chunkstore **ret_cs);
void cs_close(struct chunkstore *cs);
/* Look a chunk up; rereads the index when another process added to it. */
int cs_lookup(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], struct chunk_loc *ret_loc);
/* Catch up with what other processes wrote to the index, or a new index
 * (gc): for a reader that listed the chunks some time ago. */
int cs_refresh(struct chunkstore *cs);
bool cs_contains(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE]);
/* Read, decompress and verify one chunk into buf (raw_len bytes). */
int cs_read(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], void *buf, size_t raw_len);
/* The same for n chunks at once, I/O batched and decoding on the pool. */
int cs_read_many(struct chunkstore *cs, size_t n, const uint8_t (*ids)[CHUNK_ID_SIZE],
		 void *const *bufs, size_t raw_len);

/* Copy n chunks from src into dst (in a write session of dst), each
 * verified by its id on the way; the stored bytes are not recompressed.
 * scratch: n buffers of raw_len. Counts what dst did not have. */
int cs_copy_many(struct chunkstore *src, struct chunkstore *dst, size_t n,
		 const uint8_t (*ids)[CHUNK_ID_SIZE], void *const *scratch, size_t raw_len,
		 uint64_t *ret_added, uint64_t *ret_stored);

/* Writing (the caller holds the region lock): begin, add, commit|abort. */
int cs_begin(struct chunkstore *cs);
/* Queue a record. When the id is already stored, does nothing and sets
 * *ret_added false. stored is compressed when flags has CS_FLAG_ZSTD. */
int cs_add(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], const void *stored,
	   uint32_t stored_len, uint32_t raw_len, uint16_t flags, bool *ret_added);
/* Make the queued records durable: pack fdatasync, then index append. */
int cs_commit(struct chunkstore *cs);
void cs_abort(struct chunkstore *cs);

/* Iterate the index (a snapshot of it taken at the call). */
int cs_foreach(struct chunkstore *cs,
	       int (*fn)(void *opaque, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc),
	       void *opaque);
uint64_t cs_count(struct chunkstore *cs);
/* Verify one record in place: header, decompression, id. */
int cs_verify_chunk(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc,
		    void *scratch);
int cs_packs_dirfd(struct chunkstore *cs);
/* Replace the index with exactly the entries for which keep() is true,
 * moving records out of packs that hold anything else. See gc.c. With a
 * zstd level, packs holding chunks compressed at a weaker (or unrecorded)
 * level are rewritten too, each such chunk verified and compressed again
 * at that level; 0 leaves payloads as they are. */
int cs_compact(struct chunkstore *cs, int level,
	       bool (*keep)(void *opaque, const uint8_t id[CHUNK_ID_SIZE]), void *opaque,
	       struct kiln_gc_result *res);

/* ---- catalog.c: the region's SQLite catalog ------------------------- */

/* create: a new region's catalog. Otherwise a missing or empty catalog
 * is -EBADMSG: never made again over a region's data. */
int catalog_open(int dirfd, const char *region, bool create, struct catalog **ret_cat);
void catalog_close(struct catalog *cat);
int catalog_begin(struct catalog *cat);
int catalog_commit(struct catalog *cat);
void catalog_rollback(struct catalog *cat);

int catalog_volume_insert(struct catalog *cat, const struct kiln_volume_info *info);
int catalog_volume_get(struct catalog *cat, const char *id, struct kiln_volume_info *ret_info);
int catalog_volume_set_state(struct catalog *cat, const char *id, enum kiln_volume_state s);
int catalog_volume_set_last_snapshot(struct catalog *cat, const char *id, const char *snap_id);
int catalog_volume_delete(struct catalog *cat, const char *id);
int catalog_volume_list(struct catalog *cat,
			int (*fn)(void *opaque, const struct kiln_volume_info *info), void *opaque);

int catalog_snapshot_insert(struct catalog *cat, const struct kiln_snapshot_info *info);
/* Record counters and the final state in one statement. */
int catalog_snapshot_finish(struct catalog *cat, const struct kiln_snapshot_info *info);
int catalog_snapshot_get(struct catalog *cat, const char *id, struct kiln_snapshot_info *ret_info);
int catalog_snapshot_delete(struct catalog *cat, const char *id);
int catalog_snapshot_list(struct catalog *cat,
			  int (*fn)(void *opaque, const struct kiln_snapshot_info *info), void *opaque);
/* Remove rows a crashed writer left pending; returns how many. */
int catalog_drop_pending(struct catalog *cat);
int catalog_exists(struct catalog *cat, const char *id);
/* SQLite's integrity check: 0, or -EBADMSG for a damaged catalog. */
int catalog_check(struct catalog *cat);

int catalog_image_insert(struct catalog *cat, const struct kiln_image_info *im);
int catalog_image_get(struct catalog *cat, const char *id, struct kiln_image_info *ret_info);
int catalog_image_list(struct catalog *cat, int (*fn)(void *opaque, const struct kiln_image_info *info),
		       void *opaque);
int catalog_image_set_state(struct catalog *cat, const char *id, const char *state, const char *reason);
int catalog_image_set_description(struct catalog *cat, const char *id, const char *description);
int catalog_image_set_mapping_snapshot(struct catalog *cat, const char *id, int position,
				       const char *snapshot_id);
/* set_public: 1 or 0 to set, -1 to leave; clear: drop every user first */
int catalog_image_permissions(struct catalog *cat, const char *id, const char *const *add, size_t nadd,
			      int set_public, const char *const *remove, size_t nremove, bool clear);
int catalog_image_delete(struct catalog *cat, const char *id);
int catalog_image_name_taken(struct catalog *cat, const char *owner, const char *name,
			     const char *except_id);
int catalog_image_find_copy(struct catalog *cat, const char *owner, const char *name,
			    const char *source_id, const char *source_region, char ret_id[KILN_ID_MAX]);
int catalog_snapshot_images(struct catalog *cat, const char *snapshot_id,
			    int (*fn)(void *opaque, const char *image_id), void *opaque);
int catalog_fail_pending_images(struct catalog *cat);
int catalog_snapshot_permissions(struct catalog *cat, const char *id, const char *const *add, size_t nadd,
				 int set_public, const char *const *remove, size_t nremove);
int catalog_snapshot_permission_list(struct catalog *cat, const char *id,
				     int (*fn)(void *opaque, const char *who), void *opaque);
int catalog_snapshot_usable(struct catalog *cat, const char *id, const char *caller);

int catalog_instance_insert(struct catalog *cat, const struct kiln_instance_info *in);
int catalog_instance_get(struct catalog *cat, const char *id, struct kiln_instance_info *in);
int catalog_instance_ids(struct catalog *cat, char (**ret_ids)[KILN_ID_MAX], size_t *ret_n);
int catalog_instance_update(struct catalog *cat, const struct kiln_instance_info *in);
int catalog_instance_device_volume(struct catalog *cat, const char *instance_id, const char *device,
				   char ret_volume[KILN_ID_MAX]);

/* ---- image.c ------------------------------------------------------- */

bool image_name_valid(const char *name);
int image_name_check(struct kiln_region *rg, const char *account, const char *name, char *wbuf,
		     size_t wlen);

/* ---- volume.c ------------------------------------------------------ */

struct kiln_volume {
	struct kiln_region *region;
	char id[KILN_ID_MAX];
	char source_snapshot[KILN_ID_MAX];  /* created from, or "" */
	struct vmap *map;
	int overlay_fd;
	struct manifest *parent;        /* what BASE chunks read through to */
	bool writable;
	uint8_t *zero_chunk;
	pthread_rwlock_t io_lock;       /* I/O shared, snapshot exclusive */
	pthread_mutex_t map_lock;       /* map entries */
	pthread_mutex_t flush_lock;     /* one flush at a time writes the map */
	pthread_mutex_t chunk_locks[64];/* copy-up of one chunk at a time */
	/* Set up by the first precapture: per chunk, a count of completed
	 * changes (under map_lock), and the records captured ahead. */
	uint32_t *write_gen;
	struct precap *precap;
};

int volume_create_locked(struct kiln_region *region, const char *account, uint64_t size,
			 const char *snapshot_id, enum kiln_volume_state state,
			 const struct manifest *parent, char ret_id[KILN_ID_MAX]);
int volume_read_locked(struct kiln_volume *v, void *buf, uint64_t count, uint64_t offset);
int volume_write_locked(struct kiln_volume *v, const void *src, uint64_t count, uint64_t offset);
int volume_flush_locked(struct kiln_volume *v);
int volume_check_range(const struct kiln_volume *v, uint64_t count, uint64_t offset);
enum chunk_state volume_chunk_state(struct kiln_volume *v, uint64_t i);
/* dirty: the chunk changed since the last snapshot */
void volume_set_state(struct kiln_volume *v, uint64_t i, enum chunk_state s, bool dirty);
uint32_t volume_chunk_len(const struct kiln_volume *v, uint64_t i);   /* bytes inside the volume */
void volume_mark_failed_write(struct kiln_volume *v, uint64_t off, uint64_t len);
/* Into the overlay now, in OVERLAY_PIECE pieces; no chunk changes state. */
int volume_write_pieces(struct kiln_volume *v, const uint8_t *buf, uint32_t len, uint64_t off);

/* The overlay is written in pieces of at most this many bytes, each
 * aligned to its size. The page cache makes a folio as large as the write
 * that creates it, and ext4 walks every block of a folio on each later
 * write into it, so a 4 KiB write costs in proportion to the folio: on
 * the bench machine 4.9 us into a 64 KiB folio, 21 us into a 1 MiB one.
 * Small random writes are what an overlay takes most; sequential I/O
 * through 64 KiB folios still runs at several GB/s. */
#define OVERLAY_PIECE (64u * 1024)


/* Delete volumes left 'creating' by a process that died (their map lock
 * is free). Called with the region lock held. */
void volume_reap_creating(struct kiln_region *region);
/* Some process has the volume open for writing (kiln-nbd serving it). */
bool volume_in_use(struct kiln_region *region, const char *volume_id);
char *volume_file(const char *volume_id, const char *suffix);   /* "vol-….map" */

/* ---- control.c ----------------------------------------------------- */

int control_snapshot(struct kiln_region *region, const char *volume_id, const char *account,
		     const char *description, char ret_id[KILN_ID_MAX]);
int control_snapshot_set(struct kiln_region *region, const char *const *volume_ids, size_t n,
			 const char *account, const char *description, char (*ret_ids)[KILN_ID_MAX]);

/* ---- capture.c: hash, compress and store batches of chunks --------- */

#define CAPTURE_BATCH 64        /* chunks per batch: the I/O queue depth */
#define CAPTURE_SETS 3          /* one read, one on the pool, one being stored */

struct capture_slot {
	uint64_t index;             /* chunk index in the volume */
	uint8_t *data;              /* chunk_size bytes */
	uint8_t *out;               /* compression output */
	ssize_t out_len;            /* > 0 compressed, 0 raw */
	uint8_t id[CHUNK_ID_SIZE];  /* zero for an all-zero chunk */
	bool known;                 /* already in the chunk store */
	bool skip;                  /* caller: leave this slot alone */
};

struct capture {
	struct kiln_region *region;
	uint32_t chunk_size;
	bool store;                 /* compress and add new chunks */
	struct capture_slot slots[CAPTURE_SETS][CAPTURE_BATCH];
	struct capture_job {            /* the set on the pool */
		struct capture *c;
		struct capture_slot *slots;
		int level;
		int error;
	} job;
	uint8_t *space;
	uint64_t chunks_new, bytes_new_stored, chunks_data;
};

int capture_init(struct capture *c, struct kiln_region *region, bool store);
void capture_free(struct capture *c);
/* Zero check, hash, and (when storing) compress and add n slots of set s:
 * the CPU part runs on the pool. The caller holds the region lock and
 * a chunk store write session when storing. */
int capture_batch(struct capture *c, int set, size_t n);
/* capture_batch() in three steps, so the caller can store one set and
 * read another while the pool works on a third: start the CPU part on
 * the pool, join it (the caller helps), then add the new chunks. */
void capture_start(struct capture *c, int set, size_t n);
int capture_join(struct capture *c);
int capture_add(struct capture *c, int set, size_t n);

/* ---- precapture.c -------------------------------------------------- */

/* With v's I/O frozen and a chunk store write session open: the chunks
 * of pending[] whose record captured ahead is still valid get their id
 * in m and their record in the store; pending[] keeps the others. */
int precap_take(struct kiln_volume *v, uint64_t *pending, size_t *npending, struct manifest *m,
		struct capture *c);
/* After a snapshot: drop every record, and void captures in progress. */
void precap_forget(struct kiln_volume *v);
void precap_free(struct kiln_volume *v);

/* ---- export.c: write chunks of a volume or snapshot to a raw file ---- */

enum chunk_source_kind { SRC_ZERO, SRC_OVERLAY, SRC_STORED };

struct chunk_source {
	enum chunk_source_kind kind;
	const uint8_t *id;          /* SRC_STORED */
	int fd;                     /* SRC_OVERLAY: read at the chunk's offset */
};

/* ---- replace.c: new contents for a regular file, all at once -------- */

struct replacement {
	char path[PATH_MAX];    /* the file replaced (symbolic links followed) */
	char dir[PATH_MAX];
	char tmp[PATH_MAX + 64]; /* the named file beside it, or "" */
	int fd;                 /* write here */
	bool unnamed;           /* O_TMPFILE: named only at commit */
	bool in_place;          /* fd is the file itself (see replace.c) */
};

int replacement_open(struct replacement *rp, const char *path);
/* fd's contents are complete and synced: they take the file's name. */
int replacement_commit(struct replacement *rp);
/* Drop what was written beside the file (nothing if in place). */
void replacement_abort(struct replacement *rp);
void replacement_close(struct replacement *rp);

int export_raw(struct kiln_region *region, uint64_t size, uint32_t chunk_size,
	       void (*classify)(void *opaque, uint64_t i, struct chunk_source *src),
	       void *opaque, const char *path, kiln_progress_fn progress, void *popaque);

#endif /* KILN_INTERNAL_H */
