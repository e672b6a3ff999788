/* SPDX-License-Identifier: MIT */
/* chunkstore.c: a region's chunks: append-only pack files of
 * self-describing records, and an index chunk id -> (pack, offset,
 * lengths) kept as an append-only file and loaded into a hash table.
 * Formats in docs/FORMAT.md ("Pack file", "Chunk index").
 *
 * Notes on the design:
 * - Writers hold the region lock (region_lock()), so one process appends
 *   at a time. Each write session makes its own new pack file: no two
 *   processes ever write one pack, and a crashed session leaves only a
 *   pack that no index record names, which gc deletes.
 * - DESIGN rule 1: records reach the pack and are fdatasync'ed before the
 *   index records that name them are appended (and fdatasync'ed).
 * - Readers in other processes notice new records by reading the index
 *   tail on a lookup miss, and a compacted index (gc renames a new one in
 *   place) by its inode; a pack that gc deleted under them makes them
 *   reload the whole index and retry.
 * - Every read checks the record header against the index and the chunk
 *   id against the decompressed bytes: damage is -EBADMSG, never garbage. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "internal.h"

#define PACK_MAGIC "KILNPACK"
#define PACK_VERSION 1
#define RECORD_MAGIC 0x4b48434bu     /* the bytes "KCHK" read as a little-endian u32 */
#define RECORD_VERSION 1
#define INDEX_MAGIC "KILNINDX"
#define INDEX_VERSION 1
#define INDEX_NAME "index"
#define PACK_LIMIT ((uint64_t)1 << 30)       /* start a new pack past 1 GiB */
#define WBUF_SIZE ((size_t)8 << 20)
#define DIRECT_ALIGN ((size_t)4096)     /* O_DIRECT offsets, lengths, buffers */
#define MERGED_READ_MAX ((uint32_t)16 << 20)
#define PACK_READAHEAD ((uint64_t)2 << 20)

struct cs_entry {
	uint8_t id[CHUNK_ID_SIZE];
	struct chunk_loc loc;
	bool used;
};

struct pending {
	uint8_t id[CHUNK_ID_SIZE];
	struct chunk_loc loc;
};

struct chunkstore {
	struct kiln_region *region;
	int packs_dirfd;
	pthread_mutex_t lock;           /* table, index state, pack fds, writer */

	struct cs_entry *table;         /* open addressing; cap is a power of 2 */
	size_t cap, count;
	uint64_t index_size;            /* bytes of the index consumed */
	/* The index file those bytes came from, held open: gc replaces the
	 * index by rename, and while this descriptor lives the old file's
	 * inode number cannot be handed to a new index, so a different
	 * number always means a new index. */
	int index_fd;
	dev_t index_dev;
	ino_t index_ino;

	int *pack_fds;                  /* by pack number; -1 when not open */
	int *pack_dfds;                 /* the same, O_DIRECT (packstream.c); -2: refused */
	size_t npack_fds;
	uint64_t fd_gen;                /* changes whenever the descriptors are forgotten */

	/* the write session */
	bool writing;
	int wfd;
	uint32_t wpack;
	uint64_t wsize;                 /* bytes in the pack, buffered included */
	uint8_t *wbufs[2];              /* one fills while the other is written */
	uint8_t *wbuf;                  /* the one filling */
	size_t wbuf_len;
	uint64_t wbuf_off;              /* pack offset of wbuf[0] */
	bool wdirect;                   /* wfd is O_DIRECT */
	struct io_queue *wq;            /* the pack write in flight */
	struct io_req wreq;
	bool wbusy;
	uint32_t *wpacks;               /* packs made in this session */
	size_t nwpacks;
	struct pending *pending;
	size_t npending, pending_cap;
};

static char *pack_name(uint32_t n, char buf[32])
{
	snprintf(buf, 32, "%08x.pack", n);
	return buf;
}

static uint64_t id_hash(const uint8_t id[CHUNK_ID_SIZE])
{
	uint64_t h;

	memcpy(&h, id, 8);      /* ids are already uniformly random */
	return h;
}

static struct cs_entry *table_find(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE])
{
	size_t mask = cs->cap - 1;

	if (!cs->cap)
		return NULL;
	for (size_t i = id_hash(id) & mask;; i = (i + 1) & mask) {
		struct cs_entry *e = &cs->table[i];

		if (!e->used)
			return NULL;
		if (memcmp(e->id, id, CHUNK_ID_SIZE) == 0)
			return e;
	}
}

static int table_grow(struct chunkstore *cs)
{
	size_t ncap = cs->cap ? cs->cap * 2 : 1024;
	struct cs_entry *nt = calloc(ncap, sizeof *nt);

	if (!nt)
		return -ENOMEM;
	for (size_t i = 0; i < cs->cap; i++) {
		struct cs_entry *e = &cs->table[i];

		if (!e->used)
			continue;
		for (size_t j = id_hash(e->id) & (ncap - 1);; j = (j + 1) & (ncap - 1)) {
			if (!nt[j].used) {
				nt[j] = *e;
				break;
			}
		}
	}
	free(cs->table);
	cs->table = nt;
	cs->cap = ncap;
	return 0;
}

/* Insert or replace (a later index record for the same id wins). */
static int table_put(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc)
{
	struct cs_entry *e = table_find(cs, id);

	if (e) {
		e->loc = *loc;
		return 0;
	}
	if ((cs->count + 1) * 4 > cs->cap * 3) {
		int r = table_grow(cs);

		if (r < 0)
			return r;
	}
	for (size_t i = id_hash(id) & (cs->cap - 1);; i = (i + 1) & (cs->cap - 1)) {
		e = &cs->table[i];
		if (!e->used) {
			memcpy(e->id, id, CHUNK_ID_SIZE);
			e->loc = *loc;
			e->used = true;
			cs->count++;
			return 0;
		}
	}
}

static void table_clear(struct chunkstore *cs)
{
	free(cs->table);
	cs->table = NULL;
	cs->cap = cs->count = 0;
}

static void forget_pack_fds(struct chunkstore *cs);

/* ---- index file ------------------------------------------------------ */

static void index_encode(uint8_t *rec, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc)
{
	uint32_t v32;
	uint64_t v64;
	uint16_t v16;

	memcpy(rec, id, CHUNK_ID_SIZE);
	v32 = htole32(loc->pack);
	memcpy(rec + 16, &v32, 4);
	v32 = htole32(loc->stored_len);
	memcpy(rec + 20, &v32, 4);
	v64 = htole64(loc->offset);
	memcpy(rec + 24, &v64, 8);
	v32 = htole32(loc->raw_len);
	memcpy(rec + 32, &v32, 4);
	v16 = htole16(loc->flags);
	memcpy(rec + 36, &v16, 2);
	v16 = htole16((uint16_t)XXH32(rec, 38, 0));
	memcpy(rec + 38, &v16, 2);
}

static bool index_decode(const uint8_t *rec, uint8_t id[CHUNK_ID_SIZE], struct chunk_loc *loc)
{
	uint32_t v32;
	uint64_t v64;
	uint16_t v16;

	memcpy(&v16, rec + 38, 2);
	if (le16toh(v16) != (uint16_t)XXH32(rec, 38, 0))
		return false;
	memcpy(id, rec, CHUNK_ID_SIZE);
	memcpy(&v32, rec + 16, 4);
	loc->pack = le32toh(v32);
	memcpy(&v32, rec + 20, 4);
	loc->stored_len = le32toh(v32);
	memcpy(&v64, rec + 24, 8);
	loc->offset = le64toh(v64);
	memcpy(&v32, rec + 32, 4);
	loc->raw_len = le32toh(v32);
	memcpy(&v16, rec + 36, 2);
	loc->flags = le16toh(v16);
	return true;
}

static void index_header(uint8_t h[INDEX_HEADER_SIZE])
{
	uint32_t v32;

	memcpy(h, INDEX_MAGIC, 8);
	v32 = htole32(INDEX_VERSION);
	memcpy(h + 8, &v32, 4);
	v32 = htole32(INDEX_RECORD_SIZE);
	memcpy(h + 12, &v32, 4);
}

static void index_forget(struct chunkstore *cs)
{
	if (cs->index_fd >= 0)
		close(cs->index_fd);
	cs->index_fd = -1;
	cs->index_size = 0;
}

/* Hold fd's file as the index that cs->index_size counts bytes of. */
static void index_hold(struct chunkstore *cs, int fd, const struct stat *st)
{
	if (cs->index_fd >= 0)
		close(cs->index_fd);
	cs->index_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);   /* if it fails, every load is a full one */
	cs->index_dev = st->st_dev;
	cs->index_ino = st->st_ino;
}

/* Read index records from cs->index_size to the end. A torn record at
 * the end (a crash during append) is ignored, and so is a record whose
 * checksum fails: the chunk it named is then reported by verify. */
static int index_load_tail(struct chunkstore *cs, bool full)
{
	CLEANUP_CLOSE int fd = openat(cs->region->dirfd, INDEX_NAME, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint64_t off;
	CLEANUP_FREE uint8_t *buf = NULL;
	const size_t bufrecs = 16384;

	if (fd < 0) {
		if (errno != ENOENT)
			return -errno;
		/* No index yet: nothing is stored, whatever the table held. */
		if (full) {
			table_clear(cs);
			index_forget(cs);
		}
		return 0;
	}
	if (fstat(fd, &st) < 0)
		return -errno;
	if (full || cs->index_fd < 0 || st.st_dev != cs->index_dev || st.st_ino != cs->index_ino ||
	    (uint64_t)st.st_size < cs->index_size) {
		uint8_t h[INDEX_HEADER_SIZE], want[INDEX_HEADER_SIZE];
		int r;

		/* A new index (gc) may name packs by numbers that were
		 * reused: cached descriptors could be of deleted files. */
		forget_pack_fds(cs);
		table_clear(cs);
		index_hold(cs, fd, &st);
		cs->index_size = 0;
		if (st.st_size == 0)
			return 0;
		r = pread_all(fd, h, sizeof h, 0);
		if (r < 0)
			return r;
		index_header(want);
		if (memcmp(h, want, sizeof h) != 0)
			return -EBADMSG;
		cs->index_size = INDEX_HEADER_SIZE;
	}
	buf = malloc(bufrecs * INDEX_RECORD_SIZE);
	if (!buf)
		return -ENOMEM;
	off = cs->index_size;
	while (off + INDEX_RECORD_SIZE <= (uint64_t)st.st_size) {
		size_t want = MIN((size_t)(((uint64_t)st.st_size - off) / INDEX_RECORD_SIZE), bufrecs);
		int r = pread_all(fd, buf, want * INDEX_RECORD_SIZE, off);

		if (r < 0)
			return r;
		for (size_t i = 0; i < want; i++) {
			uint8_t id[CHUNK_ID_SIZE];
			struct chunk_loc loc;

			if (!index_decode(buf + i * INDEX_RECORD_SIZE, id, &loc)) {
				debug("index: bad record at offset %llu skipped",
				      (unsigned long long)(off + i * INDEX_RECORD_SIZE));
				continue;
			}
			r = table_put(cs, id, &loc);
			if (r < 0)
				return r;
		}
		off += want * INDEX_RECORD_SIZE;
	}
	cs->index_size = off;
	return 0;
}

/* ---- open / close ---------------------------------------------------- */

int cs_open(struct kiln_region *region, struct chunkstore **ret_cs)
{
	struct chunkstore *cs = calloc(1, sizeof *cs);
	int r;

	if (!cs)
		return -ENOMEM;
	cs->region = region;
	cs->wfd = -1;
	cs->index_fd = -1;
	cs->fd_gen = packstream_new_gen();
	pthread_mutex_init(&cs->lock, NULL);
	cs->packs_dirfd = openat(region->dirfd, "packs", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cs->packs_dirfd < 0) {
		r = errno == ENOENT ? -EBADMSG : -errno;
		goto out_free;
	}
	r = index_load_tail(cs, true);
	if (r < 0)
		goto out_free;
	debug("chunkstore %s: %zu chunks in the index", region->name, cs->count);
	*ret_cs = cs;
	return 0;
out_free:
	cs_close(cs);
	return r;
}

void cs_close(struct chunkstore *cs)
{
	if (!cs)
		return;
	if (cs->writing)
		cs_abort(cs);
	forget_pack_fds(cs);
	free(cs->pack_fds);
	free(cs->pack_dfds);
	if (cs->packs_dirfd >= 0)
		close(cs->packs_dirfd);
	table_clear(cs);
	index_forget(cs);
	free(cs->wbufs[0]);
	free(cs->wbufs[1]);
	io_queue_free(cs->wq);
	free(cs->wpacks);
	free(cs->pending);
	pthread_mutex_destroy(&cs->lock);
	free(cs);
}

int cs_packs_dirfd(struct chunkstore *cs)
{
	return cs->packs_dirfd;
}

uint64_t cs_count(struct chunkstore *cs)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
	return cs->count;
}

static void forget_pack_fds(struct chunkstore *cs)
{
	for (size_t i = 0; i < cs->npack_fds; i++) {
		if (cs->pack_fds[i] >= 0)
			close(cs->pack_fds[i]);
		if (cs->pack_dfds[i] >= 0)
			close(cs->pack_dfds[i]);
		cs->pack_fds[i] = cs->pack_dfds[i] = -1;
	}
	cs->fd_gen = packstream_new_gen();
}

/* Called with the lock held. */
static int pack_fd(struct chunkstore *cs, uint32_t pack)
{
	char name[32];
	int fd;

	if (pack >= cs->npack_fds) {
		size_t n = (size_t)pack + 16;
		int *p = realloc(cs->pack_fds, n * sizeof *p);
		int *d;

		if (!p)
			return -ENOMEM;
		cs->pack_fds = p;
		d = realloc(cs->pack_dfds, n * sizeof *d);
		if (!d)
			return -ENOMEM;
		cs->pack_dfds = d;
		for (size_t i = cs->npack_fds; i < n; i++)
			p[i] = d[i] = -1;
		cs->npack_fds = n;
	}
	if (cs->pack_fds[pack] >= 0)
		return cs->pack_fds[pack];
	fd = openat(cs->packs_dirfd, pack_name(pack, name), O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	cs->pack_fds[pack] = fd;
	return fd;
}

/* The pack opened O_DIRECT, for packstream_read(); -1 where the
 * filesystem refuses it. Called with the lock held, after pack_fd(). */
static int pack_dfd(struct chunkstore *cs, uint32_t pack)
{
	char name[32];

	if (cs->pack_dfds[pack] == -1) {
		int fd = openat(cs->packs_dirfd, pack_name(pack, name), O_RDONLY | O_DIRECT | O_CLOEXEC);

		cs->pack_dfds[pack] = fd >= 0 ? fd : -2;
	}
	return cs->pack_dfds[pack] >= 0 ? cs->pack_dfds[pack] : -1;
}

int cs_lookup(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], struct chunk_loc *ret_loc)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
	struct cs_entry *e = table_find(cs, id);

	if (!e && !cs->writing) {
		int r = index_load_tail(cs, false);

		if (r < 0)
			return r;
		e = table_find(cs, id);
	}
	if (!e)
		return -ENOENT;
	*ret_loc = e->loc;
	return 0;
}

int cs_refresh(struct chunkstore *cs)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);

	return cs->writing ? 0 : index_load_tail(cs, false);
}

bool cs_contains(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE])
{
	struct chunk_loc loc;

	return cs_lookup(cs, id, &loc) == 0;
}

/* ---- records --------------------------------------------------------- */

static void record_encode(uint8_t *h, const uint8_t id[CHUNK_ID_SIZE], uint32_t raw_len,
			  uint32_t stored_len, uint16_t flags)
{
	uint32_t v32;
	uint16_t v16;

	v32 = htole32(RECORD_MAGIC);
	memcpy(h, &v32, 4);
	v16 = htole16(RECORD_VERSION);
	memcpy(h + 4, &v16, 2);
	v16 = htole16(flags);
	memcpy(h + 6, &v16, 2);
	memcpy(h + 8, id, CHUNK_ID_SIZE);
	v32 = htole32(raw_len);
	memcpy(h + 24, &v32, 4);
	v32 = htole32(stored_len);
	memcpy(h + 28, &v32, 4);
	memset(h + 32, 0, 4);
	v32 = htole32(XXH32(h, 36, 0));
	memcpy(h + 36, &v32, 4);
}

/* Check a record read from a pack against its index entry, decode it
 * into out and verify the chunk id. rec holds header and payload. */
static int record_decode(const struct kiln_store *store, const uint8_t *rec,
			 const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc, void *out,
			 const char **ret_what)
{
	uint32_t magic, sum, raw_len, stored_len;
	uint16_t version, flags;
	uint8_t got[CHUNK_ID_SIZE];
	int r;

	memcpy(&magic, rec, 4);
	memcpy(&version, rec + 4, 2);
	memcpy(&flags, rec + 6, 2);
	memcpy(&raw_len, rec + 24, 4);
	memcpy(&stored_len, rec + 28, 4);
	memcpy(&sum, rec + 36, 4);
	if (le32toh(magic) != RECORD_MAGIC || le32toh(sum) != XXH32(rec, 36, 0)) {
		*ret_what = "bad record header";
		return -EBADMSG;
	}
	if (le16toh(version) != RECORD_VERSION || memcmp(rec + 8, id, CHUNK_ID_SIZE) != 0 ||
	    le32toh(raw_len) != loc->raw_len || le32toh(stored_len) != loc->stored_len ||
	    le16toh(flags) != loc->flags) {
		*ret_what = "record does not match the index";
		return -EBADMSG;
	}
	if (loc->flags & CS_FLAG_ZSTD) {
		r = decompress_chunk(rec + RECORD_HEADER_SIZE, loc->stored_len, out, loc->raw_len);
		if (r < 0) {
			*ret_what = "cannot decompress";
			return r;
		}
	} else {
		if (loc->stored_len != loc->raw_len) {
			*ret_what = "bad raw length";
			return -EBADMSG;
		}
		memcpy(out, rec + RECORD_HEADER_SIZE, loc->raw_len);
	}
	chunk_hash(store, out, loc->raw_len, got);
	if (memcmp(got, id, CHUNK_ID_SIZE) != 0) {
		*ret_what = "id mismatch";
		return -EBADMSG;
	}
	return 0;
}

/* One record buffer per thread, grown as needed: reading a chunk
 * allocates nothing in the steady state. */
static pthread_key_t recbuf_key;
static pthread_once_t recbuf_once = PTHREAD_ONCE_INIT;

struct recbuf {
	uint8_t *p;
	size_t cap;
};

static void free_recbuf(void *p)
{
	struct recbuf *b = p;

	free(b->p);
	free(b);
}

static void make_recbuf_key(void)
{
	pthread_key_create(&recbuf_key, free_recbuf);
}

static uint8_t *record_buffer(size_t need)
{
	struct recbuf *b;

	pthread_once(&recbuf_once, make_recbuf_key);
	b = pthread_getspecific(recbuf_key);
	if (!b) {
		b = calloc(1, sizeof *b);
		if (!b)
			return NULL;
		pthread_setspecific(recbuf_key, b);
	}
	if (b->cap < need) {
		uint8_t *p = realloc(b->p, need);

		if (!p)
			return NULL;
		b->p = p;
		b->cap = need;
	}
	return b->p;
}

/* A volume's chunks lie in order in its packs, so a read that enters a
 * new 2 MiB window of a pack asks the kernel for the window after it: a
 * sequential reader of a cold pack then finds its next records coming
 * in, whichever thread reads them. Stateless, so it costs no lock. */
static void pack_readahead(int fd, uint64_t off, uint64_t len)
{
	uint64_t w = (off + len) / PACK_READAHEAD;

	if (off / PACK_READAHEAD != w)
		readahead(fd, (off64_t)((w + 1) * PACK_READAHEAD), PACK_READAHEAD);
}

/* Read the record of one entry into this thread's record buffer (valid
 * until its next read); on a pack that vanished (gc in another process),
 * reload the index once and retry. */
static int read_record(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], struct chunk_loc *loc,
		       uint8_t **ret_rec)
{
	for (int attempt = 0;; attempt++) {
		int fd, dfd = -1, r;
		uint64_t gen;
		uint8_t *rec;

		{
			ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
			fd = pack_fd(cs, loc->pack);
			if (fd >= 0)
				dfd = pack_dfd(cs, loc->pack);
			gen = cs->fd_gen;
		}
		if (fd == -ENOENT && attempt == 0) {
			ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
			struct cs_entry *e;

			forget_pack_fds(cs);
			r = index_load_tail(cs, true);
			if (r < 0)
				return r;
			e = table_find(cs, id);
			if (!e)
				return -EBADMSG;
			*loc = e->loc;
			continue;
		}
		if (fd < 0)
			return fd == -ENOENT ? -EBADMSG : fd;
		/* A reader going through the pack in order reads it itself. */
		r = packstream_read(gen, loc->pack, dfd, loc->offset, RECORD_HEADER_SIZE + loc->stored_len,
				    ret_rec);
		if (r != 0)
			return r < 0 ? r : 0;
		rec = record_buffer(RECORD_HEADER_SIZE + (size_t)loc->stored_len);
		if (!rec)
			return -ENOMEM;
		{
			struct io_req q = { .fd = fd, .op = IO_READ, .buf = rec,
					    .len = RECORD_HEADER_SIZE + loc->stored_len, .off = loc->offset };

			pack_readahead(fd, q.off, q.len);
			r = io_run(&q, 1);
			if (r == 0 && (uint32_t)q.res != q.len)
				r = -EBADMSG;   /* truncated pack */
		}
		if (r < 0)
			return r;
		*ret_rec = rec;
		return 0;
	}
}

int cs_read(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], void *buf, size_t raw_len)
{
	struct chunk_loc loc;
	uint8_t *rec = NULL;
	const char *what = NULL;
	int r = cs_lookup(cs, id, &loc);

	if (r == -ENOENT) {
		debug("chunkstore: a manifest names a chunk the store lacks");
		return -EBADMSG;
	}
	if (r < 0)
		return r;
	if (loc.raw_len != raw_len)
		return -EBADMSG;
	r = read_record(cs, id, &loc, &rec);
	if (r < 0)
		return r;
	r = record_decode(cs->region->store, rec, id, &loc, buf, &what);
	if (r == -EBADMSG && !cs->writing) {
		/* Perhaps gc moved it under us: look again with a fresh index. */
		struct chunk_loc again;
		bool moved;

		{
			ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
			struct cs_entry *e;

			index_load_tail(cs, true);
			e = table_find(cs, id);
			moved = e && (e->loc.pack != loc.pack || e->loc.offset != loc.offset);
			if (e)
				again = e->loc;
		}
		if (moved) {
			rec = NULL;
			loc = again;
			r = read_record(cs, id, &loc, &rec);
			if (r == 0)
				r = record_decode(cs->region->store, rec, id, &loc, buf, &what);
		}
	}
	if (r < 0)
		debug("chunkstore: pack %08x offset %llu: %s", loc.pack,
		      (unsigned long long)loc.offset, what);
	return r;
}

struct read_many {
	struct chunkstore *cs;
	const uint8_t (*ids)[CHUNK_ID_SIZE];
	void *const *bufs;
	struct chunk_loc *locs;
	uint8_t **recs;
	int *results;
};

static void decode_one(void *arg, size_t i)
{
	struct read_many *rm = arg;
	const char *what = NULL;

	rm->results[i] = record_decode(rm->cs->region->store, rm->recs[i], rm->ids[i], &rm->locs[i],
				       rm->bufs[i], &what);
	if (rm->results[i] < 0)
		debug("chunkstore: pack %08x offset %llu: %s", rm->locs[i].pack,
		      (unsigned long long)rm->locs[i].offset, what);
}

/* Read and decode n records at once: lookups, one batch of reads, decoding
 * and id checks on the pool. locs and recs (pointing into *ret_space) are
 * filled. -EAGAIN when a pack vanished (gc): the caller goes one by one. */
static int fetch_many(struct chunkstore *cs, size_t n, const uint8_t (*ids)[CHUNK_ID_SIZE],
		      void *const *bufs, size_t raw_len, struct chunk_loc *locs, uint8_t **recs,
		      uint8_t **ret_space)
{
	CLEANUP_FREE struct io_req *reqs = calloc(n, sizeof *reqs);
	CLEANUP_FREE int *results = calloc(n, sizeof *results);
	CLEANUP_FREE uint8_t *space = NULL;
	size_t total = 0, pos = 0, nreqs = 0;
	struct read_many rm;
	int r = 0;

	if (!reqs || !results)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		r = cs_lookup(cs, ids[i], &locs[i]);
		if (r < 0)
			return r == -ENOENT ? -EBADMSG : r;
		if (locs[i].raw_len != raw_len)
			return -EBADMSG;
		total += RECORD_HEADER_SIZE + locs[i].stored_len;
	}
	space = malloc(total ? total : 1);
	if (!space)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		uint32_t len = RECORD_HEADER_SIZE + locs[i].stored_len;
		struct io_req *last = nreqs ? &reqs[nreqs - 1] : NULL;
		int fd;

		{
			ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
			fd = pack_fd(cs, locs[i].pack);
		}
		if (fd < 0)
			return fd == -ENOENT ? -EAGAIN : fd;
		recs[i] = space + pos;
		pos += len;
		/* Records that follow one another in a pack (a volume's chunks
		 * usually do) are read as one: fewer, larger reads, which is
		 * what a cold pack on disk wants. */
		if (last && last->fd == fd && last->off + last->len == locs[i].offset &&
		    last->len <= MERGED_READ_MAX - len) {
			last->len += len;
			continue;
		}
		reqs[nreqs++] = (struct io_req){ .fd = fd, .op = IO_READ, .buf = recs[i],
						 .len = len, .off = locs[i].offset };
	}
	for (size_t i = 0; i < nreqs; i++)
		pack_readahead(reqs[i].fd, reqs[i].off, reqs[i].len);
	r = io_run(reqs, nreqs);
	if (r < 0)
		return r;
	for (size_t i = 0; i < nreqs; i++)
		if ((uint32_t)reqs[i].res != reqs[i].len)
			return -EBADMSG;      /* truncated pack */
	rm = (struct read_many){ cs, ids, bufs, locs, recs, results };
	pool_run(decode_one, &rm, n);
	for (size_t i = 0; i < n; i++)
		if (results[i] < 0)
			return results[i];
	*ret_space = TAKE_PTR(space);
	return 0;
}

int cs_read_many(struct chunkstore *cs, size_t n, const uint8_t (*ids)[CHUNK_ID_SIZE],
		 void *const *bufs, size_t raw_len)
{
	CLEANUP_FREE struct chunk_loc *locs = calloc(n, sizeof *locs);
	CLEANUP_FREE uint8_t **recs = calloc(n, sizeof *recs);
	CLEANUP_FREE uint8_t *space = NULL;
	int r;

	if (!locs || !recs)
		return -ENOMEM;
	r = fetch_many(cs, n, ids, bufs, raw_len, locs, recs, &space);
	if (r == -EAGAIN) {
		/* gc moved some: the slow path, which follows it */
		for (size_t j = 0; j < n; j++) {
			r = cs_read(cs, ids[j], bufs[j], raw_len);
			if (r < 0)
				return r;
		}
		return 0;
	}
	return r;
}

/* Copy one chunk, verified, through read_record() (which follows gc). */
static int copy_one(struct chunkstore *src, struct chunkstore *dst, const uint8_t id[CHUNK_ID_SIZE],
		    void *scratch, uint64_t *ret_added, uint64_t *ret_stored)
{
	struct chunk_loc loc;
	uint8_t *rec = NULL;
	const char *what;
	bool added;
	int r = cs_lookup(src, id, &loc);

	if (r == 0)
		r = read_record(src, id, &loc, &rec);
	if (r == 0)
		r = record_decode(src->region->store, rec, id, &loc, scratch, &what);
	if (r == 0)
		r = cs_add(dst, id, rec + RECORD_HEADER_SIZE, loc.stored_len, loc.raw_len, loc.flags, &added);
	if (r == 0 && added) {
		(*ret_added)++;
		*ret_stored += RECORD_HEADER_SIZE + loc.stored_len;
	}
	return r;
}

int cs_copy_many(struct chunkstore *src, struct chunkstore *dst, size_t n,
		 const uint8_t (*ids)[CHUNK_ID_SIZE], void *const *scratch, size_t raw_len,
		 uint64_t *ret_added, uint64_t *ret_stored)
{
	CLEANUP_FREE struct chunk_loc *locs = calloc(n, sizeof *locs);
	CLEANUP_FREE uint8_t **recs = calloc(n, sizeof *recs);
	CLEANUP_FREE uint8_t *space = NULL;
	int r;

	if (!locs || !recs)
		return -ENOMEM;
	r = fetch_many(src, n, ids, scratch, raw_len, locs, recs, &space);
	if (r == -EAGAIN) {
		/* gc moved some: one by one, through its moves */
		for (size_t i = 0; i < n; i++) {
			r = copy_one(src, dst, ids[i], scratch[i], ret_added, ret_stored);
			if (r < 0)
				return r;
		}
		return 0;
	}
	if (r < 0)
		return r;
	/* Verified: the stored bytes go across as they are, compressed. */
	for (size_t i = 0; i < n; i++) {
		bool added;

		r = cs_add(dst, ids[i], recs[i] + RECORD_HEADER_SIZE, locs[i].stored_len, locs[i].raw_len,
			   locs[i].flags, &added);
		if (r < 0)
			return r;
		if (added) {
			(*ret_added)++;
			*ret_stored += RECORD_HEADER_SIZE + locs[i].stored_len;
		}
	}
	return 0;
}

int cs_verify_chunk(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc,
		    void *scratch)
{
	struct chunk_loc l = *loc;
	uint8_t *rec = NULL;
	const char *what = NULL;
	int r = read_record(cs, id, &l, &rec);

	if (r < 0)
		return r;
	return record_decode(cs->region->store, rec, id, &l, scratch, &what);
}

int cs_foreach(struct chunkstore *cs,
	       int (*fn)(void *opaque, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc),
	       void *opaque)
{
	CLEANUP_FREE struct pending *copy = NULL;
	size_t n = 0;

	{
		ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
		int r = index_load_tail(cs, false);

		if (r < 0)
			return r;
		copy = malloc((cs->count ? cs->count : 1) * sizeof *copy);
		if (!copy)
			return -ENOMEM;
		for (size_t i = 0; i < cs->cap; i++) {
			if (!cs->table[i].used)
				continue;
			memcpy(copy[n].id, cs->table[i].id, CHUNK_ID_SIZE);
			copy[n].loc = cs->table[i].loc;
			n++;
		}
	}
	for (size_t i = 0; i < n; i++) {
		int r = fn(opaque, copy[i].id, &copy[i].loc);

		if (r)
			return r;
	}
	return 0;
}

/* ---- writing --------------------------------------------------------- */

static int max_pack_number(struct chunkstore *cs, uint32_t *ret_max)
{
	int fd = dup(cs->packs_dirfd);
	DIR *d;
	struct dirent *de;
	uint32_t max = 0;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		unsigned n;
		char tail[8];

		if (sscanf(de->d_name, "%8x.%5s", &n, tail) == 2 && strcmp(tail, "pack") == 0 && n > max)
			max = n;
	}
	closedir(d);
	*ret_max = max;
	return 0;
}

/* Called by the thread in the write session. */
static int new_pack(struct chunkstore *cs)
{
	uint8_t h[PACK_HEADER_SIZE];
	uint32_t n, v32;
	char name[32];
	uint32_t *wp;
	int r = max_pack_number(cs, &n);

	if (r < 0)
		return r;
	wp = realloc(cs->wpacks, (cs->nwpacks + 1) * sizeof *wp);
	if (!wp)
		return -ENOMEM;
	cs->wpacks = wp;
	for (;;) {
		n++;
		cs->wfd = openat(cs->packs_dirfd, pack_name(n, name),
				 O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (cs->wfd >= 0)
			break;
		if (errno != EEXIST)
			return -errno;
	}
	cs->wpack = n;
	cs->wpacks[cs->nwpacks++] = n;
	/* Packs are written once and read later: O_DIRECT spares the CPU
	 * the copy into fresh page cache and leaves fdatasync little to do.
	 * Where the filesystem refuses it, the page cache it is. */
	cs->wdirect = fcntl(cs->wfd, F_SETFL, O_DIRECT) == 0;
	memcpy(h, PACK_MAGIC, 8);
	v32 = htole32(PACK_VERSION);
	memcpy(h + 8, &v32, 4);
	v32 = htole32(n);
	memcpy(h + 12, &v32, 4);
	memcpy(cs->wbuf, h, sizeof h);
	cs->wbuf_len = PACK_HEADER_SIZE;
	cs->wbuf_off = 0;
	cs->wsize = PACK_HEADER_SIZE;
	debug("chunkstore: writing pack %s", name);
	return 0;
}

/* Wait for the pack write in flight, if there is one. */
static int wait_pack_write(struct chunkstore *cs)
{
	int r;

	if (!cs->wbusy)
		return 0;
	cs->wbusy = false;
	r = io_queue_finish(cs->wq);
	if (r < 0)
		return r;
	return cs->wreq.res == (int)cs->wreq.len ? 0 : -EIO;
}

/* Start writing the whole blocks of the buffer and go on filling the
 * other one, which the tail moves to. The write stays in flight while
 * the caller compresses more; only the next flush waits for it. */
static int flush_wbuf(struct chunkstore *cs)
{
	size_t whole = cs->wbuf_len & ~(DIRECT_ALIGN - 1);
	uint8_t *next;
	int r = wait_pack_write(cs);

	if (r < 0 || whole == 0)
		return r;
	if (!cs->wq) {
		cs->wq = io_queue_new();
		if (!cs->wq)
			return -ENOMEM;
	}
	cs->wreq = (struct io_req){ .fd = cs->wfd, .op = IO_WRITE, .buf = cs->wbuf,
				    .len = (uint32_t)whole, .off = cs->wbuf_off };
	r = io_queue_start(cs->wq, &cs->wreq, 1);
	if (r < 0) {
		io_queue_free(cs->wq);
		cs->wq = NULL;
		return r;
	}
	cs->wbusy = true;
	next = cs->wbuf == cs->wbufs[0] ? cs->wbufs[1] : cs->wbufs[0];
	memcpy(next, cs->wbuf + whole, cs->wbuf_len - whole);
	cs->wbuf = next;
	cs->wbuf_len -= whole;
	cs->wbuf_off += whole;
	return 0;
}

/* The last partial block: O_DIRECT cannot write it, the page cache can. */
static int write_tail(struct chunkstore *cs)
{
	struct io_req q = { .fd = cs->wfd, .op = IO_WRITE, .buf = cs->wbuf,
			    .len = (uint32_t)cs->wbuf_len, .off = cs->wbuf_off };
	int r;

	if (cs->wbuf_len == 0)
		return 0;
	if (cs->wdirect) {
		if (fcntl(cs->wfd, F_SETFL, 0) < 0)
			return -errno;
		cs->wdirect = false;
	}
	r = io_run(&q, 1);
	if (r < 0)
		return r;
	if ((size_t)q.res != cs->wbuf_len)
		return -EIO;
	cs->wbuf_off += cs->wbuf_len;
	cs->wbuf_len = 0;
	return 0;
}

/* Flush, fdatasync and close the pack being written. */
static int finish_pack(struct chunkstore *cs)
{
	int r;

	if (cs->wfd < 0)
		return 0;
	r = flush_wbuf(cs);
	if (r == 0)
		r = wait_pack_write(cs);
	if (r == 0)
		r = write_tail(cs);
	if (r == 0 && fdatasync(cs->wfd) < 0)
		r = -errno;
	close(cs->wfd);
	cs->wfd = -1;
	return r;
}

int cs_begin(struct chunkstore *cs)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
	int r;

	if (cs->writing)
		return -EBUSY;
	for (int i = 0; i < 2; i++)
		if (!cs->wbufs[i]) {
			cs->wbufs[i] = aligned_alloc(DIRECT_ALIGN, WBUF_SIZE);
			if (!cs->wbufs[i])
				return -ENOMEM;
		}
	cs->wbuf = cs->wbufs[0];
	/* The caller holds the region lock: catch up with other writers. */
	r = index_load_tail(cs, false);
	if (r < 0)
		return r;
	cs->nwpacks = 0;
	cs->npending = 0;
	r = new_pack(cs);
	if (r < 0)
		return r;
	cs->writing = true;
	return 0;
}

/* Append one record to the pack being written, starting a new pack past
 * PACK_LIMIT; *ret_loc says where it went. Called by the thread in the
 * write session; the lock is not needed for the pack's state. */
static int append_record(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], const void *stored,
			 uint32_t stored_len, uint32_t raw_len, uint16_t flags, struct chunk_loc *ret_loc)
{
	size_t reclen = RECORD_HEADER_SIZE + (size_t)stored_len;
	int r;

	if (cs->wsize + reclen > PACK_LIMIT && cs->wsize > PACK_HEADER_SIZE) {
		r = finish_pack(cs);
		if (r == 0)
			r = new_pack(cs);
		if (r < 0)
			return r;
	}
	if (cs->wbuf_len + reclen > WBUF_SIZE) {
		r = flush_wbuf(cs);
		if (r < 0)
			return r;
	}
	*ret_loc = (struct chunk_loc){ .pack = cs->wpack, .stored_len = stored_len,
				       .offset = cs->wsize, .raw_len = raw_len, .flags = flags };
	record_encode(cs->wbuf + cs->wbuf_len, id, raw_len, stored_len, flags);
	memcpy(cs->wbuf + cs->wbuf_len + RECORD_HEADER_SIZE, stored, stored_len);
	cs->wbuf_len += reclen;
	cs->wsize += reclen;
	return 0;
}

/* Room for one more pending record. Called with the lock held. */
static int reserve_pending(struct chunkstore *cs)
{
	size_t ncap;
	struct pending *p;

	if (cs->npending < cs->pending_cap)
		return 0;
	ncap = cs->pending_cap ? cs->pending_cap * 2 : 1024;
	p = realloc(cs->pending, ncap * sizeof *p);
	if (!p)
		return -ENOMEM;
	cs->pending = p;
	cs->pending_cap = ncap;
	return 0;
}

int cs_add(struct chunkstore *cs, const uint8_t id[CHUNK_ID_SIZE], const void *stored,
	   uint32_t stored_len, uint32_t raw_len, uint16_t flags, bool *ret_added)
{
	struct chunk_loc loc;
	int r;

	/* The table is shared with lookups and reads on other threads; the
	 * pack being written belongs to the one thread in the write session.
	 * So the lock covers the table alone, and the copy into the pack
	 * buffer, and any wait for the pack's last write, run without it:
	 * the pool's lookups during a capture would otherwise sleep on it. */
	pthread_mutex_lock(&cs->lock);
	if (!cs->writing)
		r = -EINVAL;
	else
		r = table_find(cs, id) ? 1 : reserve_pending(cs);
	pthread_mutex_unlock(&cs->lock);
	if (r != 0) {
		*ret_added = false;
		return r < 0 ? r : 0;
	}
	r = append_record(cs, id, stored, stored_len, raw_len, flags, &loc);
	if (r < 0)
		return r;
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
	r = table_put(cs, id, &loc);
	if (r < 0)
		return r;
	memcpy(cs->pending[cs->npending].id, id, CHUNK_ID_SIZE);
	cs->pending[cs->npending].loc = loc;
	cs->npending++;
	*ret_added = true;
	return 0;
}

/* Append the pending records to the index file and fdatasync it. A torn
 * tail left by a crash is cut off first, so records stay aligned. */
static int index_append(struct chunkstore *cs)
{
	CLEANUP_CLOSE int fd = -1;
	CLEANUP_FREE uint8_t *buf = NULL;
	size_t len = cs->npending * INDEX_RECORD_SIZE;
	uint64_t off = cs->index_size;
	int r;

	fd = openat(cs->region->dirfd, INDEX_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (off < INDEX_HEADER_SIZE) {
		uint8_t h[INDEX_HEADER_SIZE];
		struct stat st;

		index_header(h);
		r = pwrite_all(fd, h, sizeof h, 0);
		if (r < 0)
			return r;
		off = INDEX_HEADER_SIZE;
		if (fstat(fd, &st) < 0)
			return -errno;
		index_hold(cs, fd, &st);
	}
	if (ftruncate(fd, (off_t)off) < 0)
		return -errno;
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < cs->npending; i++)
		index_encode(buf + i * INDEX_RECORD_SIZE, cs->pending[i].id, &cs->pending[i].loc);
	r = pwrite_all(fd, buf, len, off);
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (r < 0) {
		/* Leave no partial records behind us. */
		if (ftruncate(fd, (off_t)off) == 0)
			fdatasync(fd);
		return r;
	}
	cs->index_size = off + len;
	return 0;
}

int cs_commit(struct chunkstore *cs)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
	char name[32];
	int r;

	if (!cs->writing)
		return -EINVAL;
	r = finish_pack(cs);
	if (r < 0)
		return r;
	crash_point("cs:pack-synced");
	if (cs->npending == 0) {
		/* nothing new: leave no empty pack behind */
		for (size_t i = 0; i < cs->nwpacks; i++)
			unlinkat(cs->packs_dirfd, pack_name(cs->wpacks[i], name), 0);
	} else {
		r = fsync_dir(cs->packs_dirfd);
		if (r == 0)
			r = index_append(cs);
		if (r < 0)
			return r;
	}
	crash_point("cs:index-synced");
	cs->npending = 0;
	cs->nwpacks = 0;
	cs->writing = false;
	return 0;
}

void cs_abort(struct chunkstore *cs)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&cs->lock);
	char name[32];

	if (!cs->writing)
		return;
	wait_pack_write(cs);    /* the kernel may not write into a closed pack's buffer */
	if (cs->wfd >= 0) {
		close(cs->wfd);
		cs->wfd = -1;
	}
	/* No index record names these packs: they go, and the table forgets
	 * what was pending. */
	for (size_t i = 0; i < cs->nwpacks; i++)
		unlinkat(cs->packs_dirfd, pack_name(cs->wpacks[i], name), 0);
	cs->nwpacks = 0;
	cs->npending = 0;
	cs->wbuf_len = 0;
	cs->writing = false;
	forget_pack_fds(cs);
	index_load_tail(cs, true);
}

/* ---- compaction (gc, recompress) ------------------------------------ */

struct pack_usage {
	uint64_t live, dead, weak;      /* weak: live, below the wanted level */
	bool exists;
};

static bool is_weak(const struct chunk_loc *loc, int level)
{
	int had = cs_flags_level(loc->flags);

	return level != 0 && (had == 0 || had < level);
}

/* Live records move in pack order, so a volume's chunks stay together. */
static int by_place(const void *a, const void *b)
{
	const struct chunk_loc *x = &((const struct pending *)a)->loc;
	const struct chunk_loc *y = &((const struct pending *)b)->loc;

	if (x->pack != y->pack)
		return x->pack < y->pack ? -1 : 1;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

#define MOVE_BATCH 64
#define MOVE_BUFFERS ((size_t)16 << 20)       /* chunk bytes a batch holds at most */

/* One record on its way to the new pack. */
struct move {
	struct pending *l;
	uint8_t *rec;           /* header and payload as read */
	uint8_t *raw;           /* the chunk, when it is compressed again */
	uint8_t *out;           /* its new frame */
	const uint8_t *payload; /* what the new record holds */
	uint32_t stored_len;
	uint16_t flags;
	int error;
};

struct move_batch {
	struct chunkstore *cs;
	struct move m[MOVE_BATCH];
	size_t cap;             /* of each out buffer */
	int level;
};

/* On the pool: verify a weak record and compress it at the level; keep
 * whichever payload is smaller. Others move as they are. */
static void recompress_one(void *arg, size_t i)
{
	struct move_batch *b = arg;
	struct move *m = &b->m[i];
	const struct chunk_loc *loc = &m->l->loc;
	const char *what = NULL;
	ssize_t n;

	m->payload = m->rec + RECORD_HEADER_SIZE;
	m->stored_len = loc->stored_len;
	m->flags = loc->flags;
	m->error = 0;
	if (!is_weak(loc, b->level))
		return;
	m->error = record_decode(b->cs->region->store, m->rec, m->l->id, loc, m->raw, &what);
	if (m->error < 0) {
		debug("recompress: the chunk in pack %u at offset %" PRIu64 ": %s",
		      loc->pack, loc->offset, what);
		return;
	}
	n = compress_chunk(m->raw, loc->raw_len, m->out, b->cap, b->level);
	if (n < 0) {
		m->error = (int)n;
		return;
	}
	if (n > 0 && (uint32_t)n < m->stored_len) {
		m->payload = m->out;
		m->stored_len = (uint32_t)n;
		m->flags = CS_FLAG_ZSTD;
	}
	m->flags = cs_flags_with_level(m->flags, b->level);
}

static void move_batch_free(struct move_batch *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < MOVE_BATCH; i++) {
		free(b->m[i].rec);
		free(b->m[i].raw);
		free(b->m[i].out);
	}
	free(b);
}

/* Records per batch: fewer for large chunks. */
static size_t move_batch_size(const struct chunkstore *cs)
{
	size_t n = MOVE_BUFFERS / cs->region->store->chunk_size;

	n = MIN(n, (size_t)MOVE_BATCH);
	return MAX(n, (size_t)2);
}

static struct move_batch *move_batch_new(struct chunkstore *cs, int level)
{
	uint32_t chunk = cs->region->store->chunk_size;
	struct move_batch *b = calloc(1, sizeof *b);

	if (!b)
		return NULL;
	b->cs = cs;
	b->level = level;
	b->cap = compress_bound(chunk);
	for (size_t i = 0; i < move_batch_size(cs); i++) {
		/* gc alone moves records as they are: no room to recompress */
		b->m[i].rec = malloc(RECORD_HEADER_SIZE + (size_t)chunk);
		b->m[i].raw = level ? malloc(chunk) : NULL;
		b->m[i].out = level ? malloc(b->cap) : NULL;
		if (!b->m[i].rec || (level && (!b->m[i].raw || !b->m[i].out))) {
			move_batch_free(b);
			return NULL;
		}
	}
	return b;
}

/* Append one moved record to the pack being written; its entry follows. */
static int append_moved(struct chunkstore *cs, const struct move *m)
{
	struct chunk_loc *loc = &m->l->loc;
	struct cs_entry *e;
	int r = append_record(cs, m->l->id, m->payload, m->stored_len, loc->raw_len, m->flags, loc);

	if (r < 0)
		return r;
	e = table_find(cs, m->l->id);
	if (e)
		e->loc = *loc;
	return 0;
}

/* Read, recompress (on the pool) and append a batch of records. */
static int move_records(struct chunkstore *cs, struct move_batch *b, struct pending **ls, size_t n,
			uint64_t *ret_recompressed)
{
	uint32_t chunk = cs->region->store->chunk_size;
	int r;

	for (size_t i = 0; i < n; i++) {
		struct move *m = &b->m[i];
		int fd = pack_fd(cs, ls[i]->loc.pack);

		if (fd < 0)
			return fd == -ENOENT ? -EBADMSG : fd;
		/* the buffers hold a chunk; no sane record is larger */
		if (ls[i]->loc.raw_len > chunk || ls[i]->loc.stored_len > ls[i]->loc.raw_len)
			return -EBADMSG;
		m->l = ls[i];
		r = pread_all(fd, m->rec, RECORD_HEADER_SIZE + (size_t)m->l->loc.stored_len,
			      m->l->loc.offset);
		if (r < 0)
			return r;
	}
	pool_run(recompress_one, b, n);
	for (size_t i = 0; i < n; i++)
		if (b->m[i].error < 0)
			return b->m[i].error;
	for (size_t i = 0; i < n; i++) {
		if (b->m[i].flags != b->m[i].l->loc.flags)
			(*ret_recompressed)++;
		r = append_moved(cs, &b->m[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

int cs_compact(struct chunkstore *cs, int level,
	       bool (*keep)(void *opaque, const uint8_t id[CHUNK_ID_SIZE]), void *opaque,
	       struct kiln_gc_result *res)
{
	CLEANUP_FREE struct pack_usage *usage = NULL;
	CLEANUP_FREE struct pending *live = NULL;
	struct move_batch *batch = NULL;
	struct pending *ls[MOVE_BATCH];
	uint32_t maxpack, first_new;
	size_t nlive = 0, nusage, nls = 0;
	uint64_t moved = 0;
	char name[32];
	int r;

	r = cs_begin(cs);        /* catches up with the index, opens a new pack */
	if (r < 0)
		return r;
	pthread_mutex_lock(&cs->lock);
	first_new = cs->wpack;
	r = max_pack_number(cs, &maxpack);
	if (r < 0)
		goto out_abort;
	nusage = (size_t)maxpack + 1;
	usage = calloc(nusage, sizeof *usage);
	live = malloc((cs->count ? cs->count : 1) * sizeof *live);
	if (!usage || !live) {
		r = -ENOMEM;
		goto out_abort;
	}
	for (uint32_t p = 1; p < nusage; p++) {
		struct stat st;

		usage[p].exists = fstatat(cs->packs_dirfd, pack_name(p, name), &st, 0) == 0;
	}
	for (size_t i = 0; i < cs->cap; i++) {
		struct cs_entry *e = &cs->table[i];

		if (!e->used)
			continue;
		if (keep(opaque, e->id)) {
			memcpy(live[nlive].id, e->id, CHUNK_ID_SIZE);
			live[nlive].loc = e->loc;
			nlive++;
			if (e->loc.pack < nusage) {
				usage[e->loc.pack].live++;
				if (is_weak(&e->loc, level))
					usage[e->loc.pack].weak++;
			}
		} else {
			res->chunks_removed++;
			if (e->loc.pack < nusage)
				usage[e->loc.pack].dead++;
		}
	}
	res->chunks_kept = nlive;
	qsort(live, nlive, sizeof *live, by_place);

	/* Move the live records out of every pack that holds a dead or a
	 * weak one, a batch at a time so the pool compresses in parallel. */
	for (size_t i = 0; i <= nlive; i++) {
		if (i < nlive) {
			struct pack_usage *u = live[i].loc.pack < nusage ? &usage[live[i].loc.pack] : NULL;

			if (!u || (u->dead == 0 && u->weak == 0) || live[i].loc.pack >= first_new)
				continue;
			ls[nls++] = &live[i];
			if (nls < move_batch_size(cs))
				continue;
		}
		if (nls == 0)
			continue;
		if (!batch && !(batch = move_batch_new(cs, level))) {
			r = -ENOMEM;
			goto out_abort;
		}
		r = move_records(cs, batch, ls, nls, &res->chunks_recompressed);
		if (r < 0)
			goto out_abort;
		moved += nls;
		nls = 0;
	}
	move_batch_free(batch);
	batch = NULL;
	r = finish_pack(cs);
	if (r < 0)
		goto out_abort;
	if (moved == 0)
		unlinkat(cs->packs_dirfd, pack_name(cs->wpack, name), 0);
	r = fsync_dir(cs->packs_dirfd);
	if (r < 0)
		goto out_abort;
	crash_point("gc:pack-written");

	/* The new index names only live chunks, in their new places. */
	{
		size_t len = INDEX_HEADER_SIZE + nlive * INDEX_RECORD_SIZE;
		CLEANUP_FREE uint8_t *buf = malloc(len);

		if (!buf) {
			r = -ENOMEM;
			goto out_abort;
		}
		index_header(buf);
		for (size_t i = 0; i < nlive; i++)
			index_encode(buf + INDEX_HEADER_SIZE + i * INDEX_RECORD_SIZE, live[i].id,
				     &live[i].loc);
		r = write_file_atomic(cs->region->dirfd, INDEX_NAME, buf, len, 0644);
		if (r < 0)
			goto out_abort;
	}
	crash_point("gc:index-written");

	/* Now no index record names a pack that was rewritten, nor any
	 * pack a crashed writer left: delete them. */
	forget_pack_fds(cs);
	for (uint32_t p = 1; p < nusage; p++) {
		struct stat st;

		if (!usage[p].exists || p >= first_new ||
		    (usage[p].live && !usage[p].dead && !usage[p].weak))
			continue;
		if (fstatat(cs->packs_dirfd, pack_name(p, name), &st, 0) == 0 &&
		    unlinkat(cs->packs_dirfd, name, 0) == 0) {
			res->bytes_freed += (uint64_t)st.st_size;
			res->packs_removed++;
		}
		crash_point("gc:pack-removed");
	}
	fsync_dir(cs->packs_dirfd);
	for (size_t i = 0; moved && i < cs->nwpacks; i++) {
		struct stat st;

		if (fstatat(cs->packs_dirfd, pack_name(cs->wpacks[i], name), &st, 0) == 0) {
			res->bytes_freed -= MIN(res->bytes_freed, (uint64_t)st.st_size);
			res->packs_written++;
		}
	}
	cs->writing = false;
	cs->nwpacks = 0;
	cs->npending = 0;
	r = index_load_tail(cs, true);
	pthread_mutex_unlock(&cs->lock);
	return r;

out_abort:
	move_batch_free(batch);
	pthread_mutex_unlock(&cs->lock);
	cs_abort(cs);
	return r;
}
