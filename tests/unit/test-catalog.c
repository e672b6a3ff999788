/* SPDX-License-Identifier: MIT */
/* test-catalog.c: the region catalog (engine/catalog.c): schema and its
 * version, WAL mode, volume and snapshot rows, pending rows, errors. The
 * database is also looked at directly with sqlite3. */
#include "unit.h"

#include <sqlite3.h>

#include "internal.h"

#define SCHEMA_VERSION 3        /* catalog.c: bump with the schema */
#define REGION "us-east-1"
#define VOL_A "vol-0000000000000000a"
#define VOL_B "vol-0000000000000000b"
#define VOL_C "vol-0000000000000000c"
#define SNAP_1 "snap-00000000000000001"
#define SNAP_2 "snap-00000000000000002"
#define SNAP_3 "snap-00000000000000003"
#define SNAP_4 "snap-00000000000000004"
#define NOBODY_VOL "vol-fffffffffffffffff"
#define NOBODY_SNAP "snap-fffffffffffffffff"

struct fixture {
	char dir[64];
	char db[128];
	int dirfd;
	struct catalog *cat;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	assert_non_null(f);
	unit_mkdtemp(f->dir, "catalog");
	snprintf(f->db, sizeof f->db, "%s/catalog.db", f->dir);
	f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(f->dirfd >= 0);
	assert_rc(catalog_open(f->dirfd, REGION, true, &f->cat), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	catalog_close(f->cat);
	close(f->dirfd);
	unit_rm_rf(f->dir);
	free(f);
	return 0;
}

/* ---- sqlite3 directly ----------------------------------------------- */

static sqlite3 *db_open(const char *path)
{
	sqlite3 *db = NULL;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
		fail_msg("sqlite3_open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
	sqlite3_busy_timeout(db, 10000);
	return db;
}

static int64_t db_int(const char *path, const char *sql)
{
	sqlite3 *db = db_open(path);
	sqlite3_stmt *st = NULL;
	int64_t v;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static void db_text(const char *path, const char *sql, char *out, size_t cap)
{
	sqlite3 *db = db_open(path);
	sqlite3_stmt *st = NULL;
	const unsigned char *t;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	t = sqlite3_column_text(st, 0);
	snprintf(out, cap, "%s", t ? (const char *)t : "");
	sqlite3_finalize(st);
	sqlite3_close(db);
}

static void db_exec(const char *path, const char *sql)
{
	sqlite3 *db = db_open(path);
	char *err = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", sql, err ? err : "?");
	sqlite3_close(db);
}

static void assert_catalog_db(const char *path)
{
	char mode[32];

	assert_int_equal(db_int(path, "PRAGMA user_version"), SCHEMA_VERSION);
	db_text(path, "PRAGMA journal_mode", mode, sizeof mode);
	assert_string_equal(mode, "wal");
	assert_int_equal(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
				      "AND name IN ('volumes', 'snapshots')"), 2);
	assert_int_equal(db_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' "
				      "AND name = 'snapshots_by_volume'"), 1);
}

/* ---- rows ------------------------------------------------------------ */

static struct kiln_volume_info volume(const char *id, int64_t t, enum kiln_volume_state s)
{
	struct kiln_volume_info v = { 0 };

	snprintf(v.id, sizeof v.id, "%s", id);
	snprintf(v.owner, sizeof v.owner, "%s", KILN_DEFAULT_ACCOUNT);
	v.size = ((uint64_t)3 << 40) + 4096 + (uint64_t)t;   /* beyond 32 bits */
	v.chunk_size = KILN_DEFAULT_CHUNK_SIZE;
	v.state = s;
	v.create_time = t;
	return v;
}

static struct kiln_snapshot_info snapshot(const char *id, const char *vol, int64_t t,
					  enum kiln_snapshot_state s)
{
	struct kiln_snapshot_info i = { 0 };

	snprintf(i.id, sizeof i.id, "%s", id);
	snprintf(i.volume_id, sizeof i.volume_id, "%s", vol);
	snprintf(i.owner, sizeof i.owner, "%s", "000000000042");
	snprintf(i.description, sizeof i.description, "it's \"%s\"; DROP TABLE snapshots; --", id);
	i.size = ((uint64_t)5 << 33) + 512;
	i.chunk_size = 2 * KILN_DEFAULT_CHUNK_SIZE;
	i.state = s;
	i.start_time = t;
	return i;
}

static void assert_same_volume(const struct kiln_volume_info *a, const struct kiln_volume_info *b)
{
	assert_string_equal(a->id, b->id);
	assert_string_equal(a->snapshot_id, b->snapshot_id);
	assert_string_equal(a->owner, b->owner);
	assert_string_equal(b->region, REGION);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->chunk_size, b->chunk_size);
	assert_int_equal(a->state, b->state);
	assert_int_equal(a->create_time, b->create_time);
	assert_string_equal(a->last_snapshot_id, b->last_snapshot_id);
	assert_int_equal(b->dirty_chunks, 0);
}

static void assert_same_snapshot(const struct kiln_snapshot_info *a,
				 const struct kiln_snapshot_info *b)
{
	assert_string_equal(a->id, b->id);
	assert_string_equal(a->volume_id, b->volume_id);
	assert_string_equal(a->parent_id, b->parent_id);
	assert_string_equal(a->owner, b->owner);
	assert_string_equal(b->region, REGION);
	assert_string_equal(a->description, b->description);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->chunk_size, b->chunk_size);
	assert_int_equal(a->state, b->state);
	assert_int_equal(a->start_time, b->start_time);
	assert_int_equal(a->chunks_total, b->chunks_total);
	assert_int_equal(a->chunks_data, b->chunks_data);
	assert_int_equal(a->chunks_changed, b->chunks_changed);
	assert_int_equal(a->chunks_new, b->chunks_new);
	assert_int_equal(a->bytes_new_stored, b->bytes_new_stored);
}

struct seen {
	char ids[8][KILN_ID_MAX];
	int n;
	int stop_after;         /* 0: never */
};

static int see_volume(void *opaque, const struct kiln_volume_info *v)
{
	struct seen *s = opaque;

	assert_true(s->n < 8);
	snprintf(s->ids[s->n++], KILN_ID_MAX, "%s", v->id);
	return s->n == s->stop_after ? 7 : 0;
}

static int see_snapshot(void *opaque, const struct kiln_snapshot_info *i)
{
	struct seen *s = opaque;

	assert_true(s->n < 8);
	snprintf(s->ids[s->n++], KILN_ID_MAX, "%s", i->id);
	return s->n == s->stop_after ? 7 : 0;
}

/* ---- tests ----------------------------------------------------------- */

static void test_open_creates_schema(void **state)
{
	struct fixture *f = *state;
	struct catalog *again = NULL;

	assert_true(unit_file_size(f->db) > 0);
	assert_catalog_db(f->db);
	/* a second open (another process) finds the schema and keeps it */
	assert_rc(catalog_open(f->dirfd, REGION, false, &again), 0);
	{
		struct kiln_volume_info v = volume(VOL_A, 1, KILN_VOLUME_AVAILABLE), got;

		assert_rc(catalog_volume_insert(again, &v), 0);
		assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
		assert_same_volume(&v, &got);
	}
	catalog_close(again);
	assert_catalog_db(f->db);
}

static void test_store_catalogs(void **state)
{
	char dir[64], path[256];
	static const char *const regions[] = { "us-east-1", "eu-west-1" };

	(void)state;
	unit_mkdtemp(dir, "store");
	assert_rc(kiln_store_init(dir, NULL), 0);
	for (size_t i = 0; i < ARRAY_SIZE(regions); i++) {
		snprintf(path, sizeof path, "%s/regions/%s/catalog.db", dir, regions[i]);
		assert_catalog_db(path);
	}
	unit_rm_rf(dir);
}

static void test_volume_rows(void **state)
{
	struct fixture *f = *state;
	struct kiln_volume_info a = volume(VOL_A, 200, KILN_VOLUME_AVAILABLE);
	struct kiln_volume_info b = volume(VOL_B, 100, KILN_VOLUME_IN_USE);
	struct kiln_volume_info c = volume(VOL_C, 200, KILN_VOLUME_CREATING);
	struct kiln_volume_info got, sentinel;
	struct seen seen = { 0 };

	snprintf(b.snapshot_id, sizeof b.snapshot_id, SNAP_1);
	snprintf(b.last_snapshot_id, sizeof b.last_snapshot_id, SNAP_2);
	assert_rc(catalog_volume_insert(f->cat, &a), 0);
	assert_rc(catalog_volume_insert(f->cat, &b), 0);
	assert_rc(catalog_volume_insert(f->cat, &c), 0);

	assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
	assert_same_volume(&a, &got);
	assert_rc(catalog_volume_get(f->cat, VOL_B, &got), 0);
	assert_same_volume(&b, &got);
	assert_rc(catalog_volume_get(f->cat, VOL_C, &got), 0);
	assert_same_volume(&c, &got);

	/* creation order; ties in insertion order */
	assert_rc(catalog_volume_list(f->cat, see_volume, &seen), 0);
	assert_int_equal(seen.n, 3);
	assert_string_equal(seen.ids[0], VOL_B);
	assert_string_equal(seen.ids[1], VOL_A);
	assert_string_equal(seen.ids[2], VOL_C);
	/* the callback's non-zero return stops the walk and is passed up */
	memset(&seen, 0, sizeof seen);
	seen.stop_after = 2;
	assert_rc(catalog_volume_list(f->cat, see_volume, &seen), 7);
	assert_int_equal(seen.n, 2);

	for (int s = 0; s < _KILN_VOLUME_STATE_MAX; s++) {
		assert_rc(catalog_volume_set_state(f->cat, VOL_A, (enum kiln_volume_state)s), 0);
		assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
		assert_int_equal(got.state, s);
	}
	assert_rc(catalog_volume_set_last_snapshot(f->cat, VOL_A, SNAP_3), 0);
	assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
	assert_string_equal(got.last_snapshot_id, SNAP_3);
	assert_string_equal(got.snapshot_id, "");
	assert_int_equal(got.size, a.size);

	assert_rc(catalog_volume_delete(f->cat, VOL_B), 0);
	memset(&sentinel, 0x5a, sizeof sentinel);
	got = sentinel;
	assert_rc(catalog_volume_get(f->cat, VOL_B, &got), -ENOENT);
	assert_memory_equal(&got, &sentinel, sizeof got);
	memset(&seen, 0, sizeof seen);
	assert_rc(catalog_volume_list(f->cat, see_volume, &seen), 0);
	assert_int_equal(seen.n, 2);
	assert_string_equal(seen.ids[0], VOL_A);
	assert_string_equal(seen.ids[1], VOL_C);
	/* the other rows did not change */
	assert_rc(catalog_volume_get(f->cat, VOL_C, &got), 0);
	assert_same_volume(&c, &got);
}

static void test_unknown_volume(void **state)
{
	struct fixture *f = *state;
	struct kiln_volume_info got;
	struct seen seen = { 0 };

	assert_rc(catalog_volume_get(f->cat, NOBODY_VOL, &got), -ENOENT);
	assert_rc(catalog_volume_set_state(f->cat, NOBODY_VOL, KILN_VOLUME_IN_USE), -ENOENT);
	assert_rc(catalog_volume_set_last_snapshot(f->cat, NOBODY_VOL, SNAP_1), -ENOENT);
	assert_rc(catalog_volume_delete(f->cat, NOBODY_VOL), -ENOENT);
	assert_rc(catalog_volume_list(f->cat, see_volume, &seen), 0);
	assert_int_equal(seen.n, 0);
	/* a row with another id is no help */
	{
		struct kiln_volume_info a = volume(VOL_A, 1, KILN_VOLUME_AVAILABLE);

		assert_rc(catalog_volume_insert(f->cat, &a), 0);
		assert_rc(catalog_volume_delete(f->cat, VOL_B), -ENOENT);
		assert_rc(catalog_volume_delete(f->cat, VOL_A), 0);
		assert_rc(catalog_volume_delete(f->cat, VOL_A), -ENOENT);
	}
}

static void test_snapshot_rows(void **state)
{
	struct fixture *f = *state;
	struct kiln_snapshot_info s1 = snapshot(SNAP_1, VOL_A, 300, KILN_SNAPSHOT_PENDING);
	struct kiln_snapshot_info s2 = snapshot(SNAP_2, VOL_A, 100, KILN_SNAPSHOT_PENDING);
	struct kiln_snapshot_info got, sentinel;
	struct seen seen = { 0 };

	snprintf(s2.parent_id, sizeof s2.parent_id, SNAP_1);
	s2.chunks_total = 17;         /* set at insert too */
	assert_rc(catalog_snapshot_insert(f->cat, &s1), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &s2), 0);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &got), 0);
	assert_same_snapshot(&s1, &got);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_2, &got), 0);
	assert_same_snapshot(&s2, &got);

	/* finish: counters and state in one go, the rest untouched */
	s1.state = KILN_SNAPSHOT_COMPLETED;
	s1.chunks_total = ((uint64_t)1 << 35) + 1;
	s1.chunks_data = 12345;
	s1.chunks_changed = 678;
	s1.chunks_new = 90;
	s1.bytes_new_stored = ((uint64_t)7 << 40) + 3;
	assert_rc(catalog_snapshot_finish(f->cat, &s1), 0);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &got), 0);
	assert_same_snapshot(&s1, &got);
	s2.state = KILN_SNAPSHOT_ERROR;
	assert_rc(catalog_snapshot_finish(f->cat, &s2), 0);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_2, &got), 0);
	assert_same_snapshot(&s2, &got);

	assert_rc(catalog_snapshot_list(f->cat, see_snapshot, &seen), 0);
	assert_int_equal(seen.n, 2);
	assert_string_equal(seen.ids[0], SNAP_2);      /* by start time */
	assert_string_equal(seen.ids[1], SNAP_1);
	memset(&seen, 0, sizeof seen);
	seen.stop_after = 1;
	assert_rc(catalog_snapshot_list(f->cat, see_snapshot, &seen), 7);
	assert_int_equal(seen.n, 1);

	assert_rc(catalog_snapshot_delete(f->cat, SNAP_2), 0);
	memset(&sentinel, 0x5a, sizeof sentinel);
	got = sentinel;
	assert_rc(catalog_snapshot_get(f->cat, SNAP_2, &got), -ENOENT);
	assert_memory_equal(&got, &sentinel, sizeof got);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &got), 0);
	assert_same_snapshot(&s1, &got);
}

static void test_unknown_snapshot(void **state)
{
	struct fixture *f = *state;
	struct kiln_snapshot_info s = snapshot(NOBODY_SNAP, VOL_A, 1, KILN_SNAPSHOT_COMPLETED), got;

	assert_rc(catalog_snapshot_get(f->cat, NOBODY_SNAP, &got), -ENOENT);
	assert_rc(catalog_snapshot_finish(f->cat, &s), -ENOENT);
	assert_rc(catalog_snapshot_delete(f->cat, NOBODY_SNAP), -ENOENT);
	/* finish did not create the row */
	assert_rc(catalog_snapshot_get(f->cat, NOBODY_SNAP, &got), -ENOENT);
}

static void test_drop_pending(void **state)
{
	struct fixture *f = *state;
	struct kiln_snapshot_info p1 = snapshot(SNAP_1, VOL_A, 1, KILN_SNAPSHOT_PENDING);
	struct kiln_snapshot_info done = snapshot(SNAP_2, VOL_A, 2, KILN_SNAPSHOT_COMPLETED);
	struct kiln_snapshot_info p2 = snapshot(SNAP_3, VOL_B, 3, KILN_SNAPSHOT_PENDING);
	struct kiln_snapshot_info err = snapshot(SNAP_4, VOL_B, 4, KILN_SNAPSHOT_ERROR);
	struct kiln_volume_info va = volume(VOL_A, 1, KILN_VOLUME_CREATING);
	struct kiln_snapshot_info got;
	struct kiln_volume_info vgot;
	struct seen seen = { 0 };

	assert_rc(catalog_volume_insert(f->cat, &va), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &p1), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &done), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &p2), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &err), 0);

	assert_rc(catalog_drop_pending(f->cat), 2);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &got), -ENOENT);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_3, &got), -ENOENT);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_2, &got), 0);
	assert_same_snapshot(&done, &got);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_4, &got), 0);
	assert_same_snapshot(&err, &got);
	assert_rc(catalog_snapshot_list(f->cat, see_snapshot, &seen), 0);
	assert_int_equal(seen.n, 2);
	/* volumes are not snapshots, whatever their state */
	assert_rc(catalog_volume_get(f->cat, VOL_A, &vgot), 0);
	assert_same_volume(&va, &vgot);
	assert_rc(catalog_drop_pending(f->cat), 0);
}

static void test_exists(void **state)
{
	struct fixture *f = *state;
	struct kiln_volume_info v = volume(VOL_A, 1, KILN_VOLUME_AVAILABLE);
	struct kiln_snapshot_info s = snapshot(SNAP_1, VOL_A, 1, KILN_SNAPSHOT_COMPLETED);

	assert_rc(catalog_exists(f->cat, VOL_A), 0);
	assert_rc(catalog_volume_insert(f->cat, &v), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &s), 0);
	assert_rc(catalog_exists(f->cat, VOL_A), 1);
	assert_rc(catalog_exists(f->cat, SNAP_1), 1);
	assert_rc(catalog_exists(f->cat, NOBODY_VOL), 0);
	assert_rc(catalog_exists(f->cat, NOBODY_SNAP), 0);
	assert_rc(catalog_exists(f->cat, ""), 0);
	assert_rc(catalog_exists(f->cat, "vol-0000000000000000a' OR '1'='1"), 0);
	assert_rc(catalog_snapshot_delete(f->cat, SNAP_1), 0);
	assert_rc(catalog_exists(f->cat, SNAP_1), 0);
}

static void test_duplicate_id(void **state)
{
	struct fixture *f = *state;
	struct kiln_volume_info v = volume(VOL_A, 1, KILN_VOLUME_AVAILABLE), v2, got;
	struct kiln_snapshot_info s = snapshot(SNAP_1, VOL_A, 1, KILN_SNAPSHOT_COMPLETED), s2, sgot;

	assert_rc(catalog_volume_insert(f->cat, &v), 0);
	v2 = volume(VOL_A, 2, KILN_VOLUME_DELETING);
	assert_rc(catalog_volume_insert(f->cat, &v2), -EEXIST);
	assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
	assert_same_volume(&v, &got);            /* the first row, unchanged */

	assert_rc(catalog_snapshot_insert(f->cat, &s), 0);
	s2 = snapshot(SNAP_1, VOL_B, 2, KILN_SNAPSHOT_PENDING);
	assert_rc(catalog_snapshot_insert(f->cat, &s2), -EEXIST);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &sgot), 0);
	assert_same_snapshot(&s, &sgot);
	assert_int_equal(db_int(f->db, "SELECT count(*) FROM volumes"), 1);
	assert_int_equal(db_int(f->db, "SELECT count(*) FROM snapshots"), 1);
}

static void test_transactions(void **state)
{
	struct fixture *f = *state;
	struct kiln_volume_info v = volume(VOL_A, 1, KILN_VOLUME_AVAILABLE), got;
	struct kiln_snapshot_info s = snapshot(SNAP_1, VOL_A, 1, KILN_SNAPSHOT_PENDING), sgot;

	assert_rc(catalog_begin(f->cat), 0);
	assert_rc(catalog_volume_insert(f->cat, &v), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &s), 0);
	catalog_rollback(f->cat);
	assert_rc(catalog_volume_get(f->cat, VOL_A, &got), -ENOENT);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &sgot), -ENOENT);

	assert_rc(catalog_begin(f->cat), 0);
	assert_rc(catalog_volume_insert(f->cat, &v), 0);
	assert_rc(catalog_snapshot_insert(f->cat, &s), 0);
	assert_rc(catalog_commit(f->cat), 0);
	/* durable and visible to another connection */
	catalog_close(f->cat);
	f->cat = NULL;
	assert_rc(catalog_open(f->dirfd, REGION, false, &f->cat), 0);
	assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
	assert_same_volume(&v, &got);
	assert_rc(catalog_snapshot_get(f->cat, SNAP_1, &sgot), 0);
	assert_same_snapshot(&s, &sgot);
}

/* Only a new region gets a new catalog: reopening a catalog that was
 * removed or emptied is -EBADMSG, and leaves the file as it found it. */
static void test_lost_catalog_not_made_again(void **state)
{
	struct fixture *f = *state;
	struct catalog *cat = NULL;
	char path[PATH_MAX];
	int fd;

	catalog_close(f->cat);
	f->cat = NULL;
	for (const char *const *sfx = (const char *const[]){ "", "-wal", "-shm", NULL }; *sfx; sfx++) {
		snprintf(path, sizeof path, "%s%s", f->db, *sfx);
		unlink(path);
	}
	assert_rc(catalog_open(f->dirfd, REGION, false, &cat), -EBADMSG);
	assert_null(cat);
	assert_int_equal(access(f->db, F_OK), -1);

	fd = open(f->db, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_rc(catalog_open(f->dirfd, REGION, false, &cat), -EBADMSG);
	assert_null(cat);
	assert_int_equal(unit_file_size(f->db), 0);

	/* and a new region's catalog is made */
	assert_rc(catalog_open(f->dirfd, REGION, true, &f->cat), 0);
	assert_int_equal(db_int(f->db, "PRAGMA user_version"), SCHEMA_VERSION);
}

static void test_newer_schema_refused(void **state)
{
	struct fixture *f = *state;
	struct kiln_volume_info v = volume(VOL_A, 1, KILN_VOLUME_AVAILABLE), got;
	struct catalog *sentinel = (struct catalog *)&sentinel, *cat = sentinel;
	char sql[64];

	assert_rc(catalog_volume_insert(f->cat, &v), 0);
	catalog_close(f->cat);
	f->cat = NULL;
	snprintf(sql, sizeof sql, "PRAGMA user_version = %d", SCHEMA_VERSION + 1);
	db_exec(f->db, sql);

	assert_rc(catalog_open(f->dirfd, REGION, false, &cat), -EPROTONOSUPPORT);
	assert_ptr_equal(cat, sentinel);
	/* refused, not "migrated": the database is as the newer kiln left it */
	assert_int_equal(db_int(f->db, "PRAGMA user_version"), SCHEMA_VERSION + 1);
	assert_int_equal(db_int(f->db, "SELECT count(*) FROM volumes"), 1);

	/* the current version opens again */
	snprintf(sql, sizeof sql, "PRAGMA user_version = %d", SCHEMA_VERSION);
	db_exec(f->db, sql);
	assert_rc(catalog_open(f->dirfd, REGION, false, &f->cat), 0);
	assert_rc(catalog_volume_get(f->cat, VOL_A, &got), 0);
	assert_same_volume(&v, &got);
}

/* The same through the public API: a region whose catalog is newer. */
static void test_newer_schema_region(void **state)
{
	struct kiln_store *store = NULL;
	struct kiln_region *rg = NULL;
	char dir[64], path[256], sql[64];

	(void)state;
	unit_mkdtemp(dir, "store");
	assert_rc(kiln_store_init(dir, NULL), 0);
	snprintf(path, sizeof path, "%s/regions/eu-west-1/catalog.db", dir);
	snprintf(sql, sizeof sql, "PRAGMA user_version = %d", SCHEMA_VERSION + 5);
	db_exec(path, sql);
	assert_rc(kiln_store_open(dir, &store), 0);
	assert_rc(kiln_region_open(store, "eu-west-1", &rg), -EPROTONOSUPPORT);
	assert_rc(kiln_region_open(store, "us-east-1", &rg), 0);
	kiln_region_close(rg);
	kiln_store_close(store);
	unit_rm_rf(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		UNIT_TEST(test_open_creates_schema),
		UNIT_TEST(test_store_catalogs),
		UNIT_TEST(test_volume_rows),
		UNIT_TEST(test_unknown_volume),
		UNIT_TEST(test_snapshot_rows),
		UNIT_TEST(test_unknown_snapshot),
		UNIT_TEST(test_drop_pending),
		UNIT_TEST(test_exists),
		UNIT_TEST(test_duplicate_id),
		UNIT_TEST(test_transactions),
		UNIT_TEST(test_newer_schema_refused),
		UNIT_TEST(test_lost_catalog_not_made_again),
		UNIT_TEST(test_newer_schema_region),
	};

	unit_require_io_uring();
	unit_filters();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
