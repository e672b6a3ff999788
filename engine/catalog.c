/* SPDX-License-Identifier: MIT */
/* catalog.c: the region's catalog of volumes and snapshots, in SQLite
 * (WAL mode, one database per region). Bulk data stays in files; rows
 * say what exists and in which state. The schema is versioned with
 * PRAGMA user_version and migrated forward on open. */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define CATALOG_NAME "catalog.db"
#define SCHEMA_VERSION 3

struct catalog {
	sqlite3 *db;
	char region[KILN_REGION_MAX];
};

static const char schema_v1[] =
	"CREATE TABLE volumes ("
	"  id TEXT PRIMARY KEY,"
	"  owner TEXT NOT NULL,"
	"  size INTEGER NOT NULL,"
	"  chunk_size INTEGER NOT NULL,"
	"  snapshot_id TEXT NOT NULL DEFAULT '',"
	"  state TEXT NOT NULL,"
	"  create_time INTEGER NOT NULL,"
	"  last_snapshot_id TEXT NOT NULL DEFAULT ''"
	");"
	"CREATE TABLE snapshots ("
	"  id TEXT PRIMARY KEY,"
	"  volume_id TEXT NOT NULL,"
	"  parent_id TEXT NOT NULL DEFAULT '',"
	"  owner TEXT NOT NULL,"
	"  description TEXT NOT NULL DEFAULT '',"
	"  size INTEGER NOT NULL,"
	"  chunk_size INTEGER NOT NULL,"
	"  state TEXT NOT NULL,"
	"  start_time INTEGER NOT NULL,"
	"  chunks_total INTEGER NOT NULL DEFAULT 0,"
	"  chunks_data INTEGER NOT NULL DEFAULT 0,"
	"  chunks_changed INTEGER NOT NULL DEFAULT 0,"
	"  chunks_new INTEGER NOT NULL DEFAULT 0,"
	"  bytes_new_stored INTEGER NOT NULL DEFAULT 0"
	");"
	"CREATE INDEX snapshots_by_volume ON snapshots(volume_id);";

/* Version 2: images, their mappings, launch permissions, tags, and
 * snapshot sharing. */
static const char schema_v2[] =
	"ALTER TABLE snapshots ADD COLUMN public INTEGER NOT NULL DEFAULT 0;"
	"CREATE TABLE snapshot_permissions ("
	"  snapshot_id TEXT NOT NULL,"
	"  user_id TEXT NOT NULL,"
	"  PRIMARY KEY (snapshot_id, user_id)"
	");"
	"CREATE TABLE images ("
	"  id TEXT PRIMARY KEY,"
	"  name TEXT NOT NULL,"
	"  owner TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  state_reason TEXT NOT NULL DEFAULT '',"
	"  description TEXT NOT NULL DEFAULT '',"
	"  architecture TEXT NOT NULL DEFAULT '',"
	"  boot_mode TEXT NOT NULL DEFAULT '',"
	"  virtualization_type TEXT NOT NULL DEFAULT 'hvm',"
	"  root_device_name TEXT NOT NULL,"
	"  creation_time INTEGER NOT NULL,"
	"  source_image_id TEXT NOT NULL DEFAULT '',"
	"  source_image_region TEXT NOT NULL DEFAULT '',"
	"  public INTEGER NOT NULL DEFAULT 0,"
	"  probe TEXT NOT NULL DEFAULT '{}'"
	");"
	"CREATE UNIQUE INDEX images_by_owner_name ON images(owner, name);"
	"CREATE TABLE image_mappings ("
	"  image_id TEXT NOT NULL,"
	"  position INTEGER NOT NULL,"
	"  device_name TEXT NOT NULL,"
	"  virtual_name TEXT NOT NULL DEFAULT '',"
	"  no_device INTEGER NOT NULL DEFAULT 0,"
	"  ebs INTEGER NOT NULL DEFAULT 0,"
	"  snapshot_id TEXT NOT NULL DEFAULT '',"
	"  volume_size INTEGER NOT NULL DEFAULT 0,"
	"  delete_on_termination INTEGER NOT NULL DEFAULT 1,"
	"  volume_type TEXT NOT NULL DEFAULT 'gp3',"
	"  PRIMARY KEY (image_id, position)"
	");"
	"CREATE INDEX image_mappings_by_snapshot ON image_mappings(snapshot_id);"
	"CREATE TABLE launch_permissions ("
	"  image_id TEXT NOT NULL,"
	"  user_id TEXT NOT NULL,"
	"  PRIMARY KEY (image_id, user_id)"
	");"
	"CREATE TABLE tags ("
	"  resource_id TEXT NOT NULL,"
	"  key TEXT NOT NULL,"
	"  value TEXT NOT NULL,"
	"  PRIMARY KEY (resource_id, key)"
	");";

/* Version 3: instances and their devices. */
static const char schema_v3[] =
	"CREATE TABLE instances ("
	"  id TEXT PRIMARY KEY,"
	"  image_id TEXT NOT NULL,"
	"  owner TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  launch_time INTEGER NOT NULL,"
	"  architecture TEXT NOT NULL DEFAULT '',"
	"  boot_mode TEXT NOT NULL DEFAULT '',"
	"  root_device_name TEXT NOT NULL DEFAULT '',"
	"  nbd_socket TEXT NOT NULL DEFAULT '',"
	"  nbd_pid INTEGER NOT NULL DEFAULT 0,"
	"  qemu_pid INTEGER NOT NULL DEFAULT 0"
	");"
	"CREATE TABLE instance_devices ("
	"  instance_id TEXT NOT NULL,"
	"  position INTEGER NOT NULL,"
	"  device_name TEXT NOT NULL,"
	"  volume_id TEXT NOT NULL,"
	"  ebs INTEGER NOT NULL,"
	"  delete_on_termination INTEGER NOT NULL,"
	"  PRIMARY KEY (instance_id, position)"
	");"
	"CREATE INDEX instance_devices_by_volume ON instance_devices(volume_id);";

static const char *const volume_states[] = {
	[KILN_VOLUME_CREATING] = "creating",
	[KILN_VOLUME_AVAILABLE] = "available",
	[KILN_VOLUME_IN_USE] = "in-use",
	[KILN_VOLUME_DELETING] = "deleting",
};

static const char *const snapshot_states[] = {
	[KILN_SNAPSHOT_PENDING] = "pending",
	[KILN_SNAPSHOT_COMPLETED] = "completed",
	[KILN_SNAPSHOT_ERROR] = "error",
};

const char *kiln_volume_state_name(enum kiln_volume_state s)
{
	return s < _KILN_VOLUME_STATE_MAX ? volume_states[s] : "unknown";
}

const char *kiln_snapshot_state_name(enum kiln_snapshot_state s)
{
	return s < _KILN_SNAPSHOT_STATE_MAX ? snapshot_states[s] : "unknown";
}

static int state_from_name(const char *const *names, int n, const char *s)
{
	for (int i = 0; i < n; i++)
		if (s && strcmp(names[i], s) == 0)
			return i;
	return -1;
}

/* Map SQLite's result codes to errno at the boundary. */
static int sql_errno(sqlite3 *db, int rc, const char *what)
{
	debug("catalog: %s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
	switch (rc & 0xff) {
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	case SQLITE_READONLY:
	case SQLITE_PERM:
		return -EACCES;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	default:
		return -EIO;
	}
}

static int exec(struct catalog *cat, const char *sql)
{
	char *err = NULL;
	int rc = sqlite3_exec(cat->db, sql, NULL, NULL, &err);

	if (rc != SQLITE_OK) {
		debug("catalog: %s: %s", sql, err ? err : "?");
		sqlite3_free(err);
		return sql_errno(cat->db, rc, "exec");
	}
	return 0;
}

static int migrate(struct catalog *cat)
{
	sqlite3_stmt *st = NULL;
	int version, r;

	if (sqlite3_prepare_v2(cat->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		return sql_errno(cat->db, SQLITE_ERROR, "user_version");
	version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	if (version > SCHEMA_VERSION)
		return -EPROTONOSUPPORT;        /* made by a newer kiln */
	if (version == SCHEMA_VERSION)
		return 0;
	r = exec(cat, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	/* Another process may have migrated while we waited for the lock. */
	if (sqlite3_prepare_v2(cat->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK) {
		exec(cat, "ROLLBACK");
		return sql_errno(cat->db, SQLITE_ERROR, "user_version");
	}
	version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	if (version >= SCHEMA_VERSION)
		return exec(cat, "COMMIT");
	if (version < 1)
		r = exec(cat, schema_v1);
	if (r == 0 && version < 2)
		r = exec(cat, schema_v2);
	if (r == 0 && version < 3)
		r = exec(cat, schema_v3);
	if (r == 0) {
		char sql[64];

		snprintf(sql, sizeof sql, "PRAGMA user_version = %d", SCHEMA_VERSION);
		r = exec(cat, sql);
	}
	if (r == 0)
		r = exec(cat, "COMMIT");
	if (r < 0)
		exec(cat, "ROLLBACK");
	return r;
}

/* SQLite maps the WAL index (catalog.db-shm) and writes through the map.
 * A page of it that is a hole on a full disk turns that write into
 * SIGBUS; allocate every page first, so a full disk is ENOSPC here. */
static int shm_allocate(int dirfd)
{
	int fd = openat(dirfd, CATALOG_NAME "-shm", O_RDWR | O_CLOEXEC);
	struct stat st;
	int r = 0;

	if (fd < 0)
		return 0;       /* none yet: SQLite makes it, a page at a time */
	if (fstat(fd, &st) == 0 && (uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size &&
	    fallocate(fd, 0, 0, st.st_size) < 0 && errno != EOPNOTSUPP)
		r = -errno;
	close(fd);
	return r;
}

static int user_version(struct catalog *cat, int *ret_version)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(cat->db, "PRAGMA user_version", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return sql_errno(cat->db, rc, "user_version");
	rc = sqlite3_step(st);
	*ret_version = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : sql_errno(cat->db, rc, "user_version");
}

int catalog_open(int dirfd, const char *region, bool create, struct catalog **ret_cat)
{
	struct catalog *cat = calloc(1, sizeof *cat);
	char path[64];
	int rc, r;

	if (!cat)
		return -ENOMEM;
	r = shm_allocate(dirfd);
	if (r < 0) {
		free(cat);
		return r;
	}
	snprintf(cat->region, sizeof cat->region, "%s", region);
	/* SQLite wants a path: reach the region directory through its fd. */
	snprintf(path, sizeof path, "/proc/self/fd/%d/" CATALOG_NAME, dirfd);
	/* Serialized: kiln-nbd's connection threads look exports up while
	 * its control thread snapshots, all on this one connection. */
	rc = sqlite3_open_v2(path, &cat->db, SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) |
			     SQLITE_OPEN_FULLMUTEX, NULL);
	if (rc == SQLITE_CANTOPEN && !create && faccessat(dirfd, CATALOG_NAME, F_OK, 0) < 0 &&
	    errno == ENOENT) {
		/* Only a new region gets a new catalog: a region without
		 * one has lost it, and an empty one would make gc take every
		 * manifest, volume and chunk for garbage. */
		r = -EBADMSG;
		goto out_close;
	}
	if (rc != SQLITE_OK) {
		r = sql_errno(cat->db, rc, "open");
		goto out_close;
	}
	sqlite3_busy_timeout(cat->db, 30000);
	if (!create) {
		int version;

		/* An empty file (a catalog truncated or replaced) has no
		 * schema: the same loss, found before anything is written. */
		r = user_version(cat, &version);
		if (r == 0 && version == 0)
			r = -EBADMSG;
		if (r < 0)
			goto out_close;
	}
	r = exec(cat, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
		      "PRAGMA foreign_keys = ON");
	if (r == 0)
		r = migrate(cat);
	if (r < 0)
		goto out_close;
	*ret_cat = cat;
	return 0;
out_close:
	catalog_close(cat);
	return r;
}

void catalog_close(struct catalog *cat)
{
	if (!cat)
		return;
	sqlite3_close_v2(cat->db);
	free(cat);
}

int catalog_begin(struct catalog *cat)
{
	return exec(cat, "BEGIN IMMEDIATE");
}

int catalog_commit(struct catalog *cat)
{
	return exec(cat, "COMMIT");
}

void catalog_rollback(struct catalog *cat)
{
	exec(cat, "ROLLBACK");
}

/* Prepare, bind text/int64 arguments from a format ("s" or "i" each),
 * and step once. Returns the statement positioned on its first row (or
 * done) via ret_st, or -errno. */
static int run(struct catalog *cat, sqlite3_stmt **ret_st, const char *sql, const char *fmt, ...)
{
	sqlite3_stmt *st = NULL;
	va_list ap;
	int rc;

	rc = sqlite3_prepare_v2(cat->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return sql_errno(cat->db, rc, sql);
	va_start(ap, fmt);
	for (int i = 0; fmt[i]; i++) {
		if (fmt[i] == 's')
			sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
		else
			sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		int r = sql_errno(cat->db, rc, sql);

		sqlite3_finalize(st);
		return r;
	}
	if (ret_st)
		*ret_st = st;
	else
		sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 1 : 0;
}

static void copy_text(char *dst, size_t cap, sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

/* ---- volumes --------------------------------------------------------- */

#define VOLUME_COLUMNS "id, owner, size, chunk_size, snapshot_id, state, create_time, last_snapshot_id"

static void volume_from_row(struct catalog *cat, sqlite3_stmt *st, struct kiln_volume_info *v)
{
	char state[32];

	memset(v, 0, sizeof *v);
	copy_text(v->id, sizeof v->id, st, 0);
	copy_text(v->owner, sizeof v->owner, st, 1);
	v->size = (uint64_t)sqlite3_column_int64(st, 2);
	v->chunk_size = (uint32_t)sqlite3_column_int64(st, 3);
	copy_text(v->snapshot_id, sizeof v->snapshot_id, st, 4);
	copy_text(state, sizeof state, st, 5);
	v->state = (enum kiln_volume_state)state_from_name(volume_states, _KILN_VOLUME_STATE_MAX, state);
	v->create_time = sqlite3_column_int64(st, 6);
	copy_text(v->last_snapshot_id, sizeof v->last_snapshot_id, st, 7);
	snprintf(v->region, sizeof v->region, "%s", cat->region);
}

int catalog_volume_insert(struct catalog *cat, const struct kiln_volume_info *v)
{
	return run(cat, NULL, "INSERT INTO volumes (" VOLUME_COLUMNS ") VALUES (?,?,?,?,?,?,?,?)",
		   "ssiissis", v->id, v->owner, (int64_t)v->size, (int64_t)v->chunk_size,
		   v->snapshot_id, kiln_volume_state_name(v->state), v->create_time,
		   v->last_snapshot_id);
}

int catalog_volume_get(struct catalog *cat, const char *id, struct kiln_volume_info *ret_info)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT " VOLUME_COLUMNS " FROM volumes WHERE id = ?", "s", id);

	if (r == 1)
		volume_from_row(cat, st, ret_info);
	sqlite3_finalize(st);
	return r < 0 ? r : r == 1 ? 0 : -ENOENT;
}

static int changed_one(struct catalog *cat, int r)
{
	if (r < 0)
		return r;
	return sqlite3_changes(cat->db) == 1 ? 0 : -ENOENT;
}

int catalog_volume_set_state(struct catalog *cat, const char *id, enum kiln_volume_state s)
{
	return changed_one(cat, run(cat, NULL, "UPDATE volumes SET state = ? WHERE id = ?", "ss",
				    kiln_volume_state_name(s), id));
}

int catalog_volume_set_last_snapshot(struct catalog *cat, const char *id, const char *snap_id)
{
	return changed_one(cat, run(cat, NULL, "UPDATE volumes SET last_snapshot_id = ? WHERE id = ?",
				    "ss", snap_id, id));
}

int catalog_volume_delete(struct catalog *cat, const char *id)
{
	return changed_one(cat, run(cat, NULL, "DELETE FROM volumes WHERE id = ?", "s", id));
}

int catalog_volume_list(struct catalog *cat,
			int (*fn)(void *opaque, const struct kiln_volume_info *info), void *opaque)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT " VOLUME_COLUMNS " FROM volumes ORDER BY create_time, rowid", "");

	while (r == 1) {
		struct kiln_volume_info v;
		int rc;

		volume_from_row(cat, st, &v);
		r = fn(opaque, &v);
		if (r)
			break;
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "list");
	}
	sqlite3_finalize(st);
	return r;
}

/* ---- snapshots ------------------------------------------------------- */

#define SNAPSHOT_COLUMNS "id, volume_id, parent_id, owner, description, size, chunk_size, state, " \
	"start_time, chunks_total, chunks_data, chunks_changed, chunks_new, bytes_new_stored"

static void snapshot_from_row(struct catalog *cat, sqlite3_stmt *st, struct kiln_snapshot_info *s)
{
	char state[32];

	memset(s, 0, sizeof *s);
	copy_text(s->id, sizeof s->id, st, 0);
	copy_text(s->volume_id, sizeof s->volume_id, st, 1);
	copy_text(s->parent_id, sizeof s->parent_id, st, 2);
	copy_text(s->owner, sizeof s->owner, st, 3);
	copy_text(s->description, sizeof s->description, st, 4);
	s->size = (uint64_t)sqlite3_column_int64(st, 5);
	s->chunk_size = (uint32_t)sqlite3_column_int64(st, 6);
	copy_text(state, sizeof state, st, 7);
	s->state = (enum kiln_snapshot_state)state_from_name(snapshot_states,
							     _KILN_SNAPSHOT_STATE_MAX, state);
	s->start_time = sqlite3_column_int64(st, 8);
	s->chunks_total = (uint64_t)sqlite3_column_int64(st, 9);
	s->chunks_data = (uint64_t)sqlite3_column_int64(st, 10);
	s->chunks_changed = (uint64_t)sqlite3_column_int64(st, 11);
	s->chunks_new = (uint64_t)sqlite3_column_int64(st, 12);
	s->bytes_new_stored = (uint64_t)sqlite3_column_int64(st, 13);
	snprintf(s->region, sizeof s->region, "%s", cat->region);
}

int catalog_snapshot_insert(struct catalog *cat, const struct kiln_snapshot_info *s)
{
	return run(cat, NULL, "INSERT INTO snapshots (" SNAPSHOT_COLUMNS ") "
		   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", "sssssiisiiiiii",
		   s->id, s->volume_id, s->parent_id, s->owner, s->description, (int64_t)s->size,
		   (int64_t)s->chunk_size, kiln_snapshot_state_name(s->state), s->start_time,
		   (int64_t)s->chunks_total, (int64_t)s->chunks_data, (int64_t)s->chunks_changed,
		   (int64_t)s->chunks_new, (int64_t)s->bytes_new_stored);
}

int catalog_snapshot_finish(struct catalog *cat, const struct kiln_snapshot_info *s)
{
	return changed_one(cat, run(cat, NULL,
		"UPDATE snapshots SET state = ?, chunks_total = ?, chunks_data = ?, "
		"chunks_changed = ?, chunks_new = ?, bytes_new_stored = ? WHERE id = ?",
		"siiiiis", kiln_snapshot_state_name(s->state), (int64_t)s->chunks_total,
		(int64_t)s->chunks_data, (int64_t)s->chunks_changed, (int64_t)s->chunks_new,
		(int64_t)s->bytes_new_stored, s->id));
}

int catalog_snapshot_get(struct catalog *cat, const char *id, struct kiln_snapshot_info *ret_info)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT " SNAPSHOT_COLUMNS " FROM snapshots WHERE id = ?", "s", id);

	if (r == 1)
		snapshot_from_row(cat, st, ret_info);
	sqlite3_finalize(st);
	return r < 0 ? r : r == 1 ? 0 : -ENOENT;
}

/* -EBUSY while an image maps it: checked in the delete's transaction, so
 * an image registered meanwhile cannot lose its snapshot. */
int catalog_snapshot_delete(struct catalog *cat, const char *id)
{
	sqlite3_stmt *st = NULL;
	int r = catalog_begin(cat);

	if (r < 0)
		return r;
	r = run(cat, &st, "SELECT 1 FROM image_mappings WHERE snapshot_id = ?", "s", id);
	sqlite3_finalize(st);
	if (r == 1)
		r = -EBUSY;
	if (r == 0)
		r = changed_one(cat, run(cat, NULL, "DELETE FROM snapshots WHERE id = ?", "s", id));
	if (r < 0) {
		catalog_rollback(cat);
		return r;
	}
	return catalog_commit(cat);
}

int catalog_snapshot_list(struct catalog *cat,
			  int (*fn)(void *opaque, const struct kiln_snapshot_info *info), void *opaque)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT " SNAPSHOT_COLUMNS " FROM snapshots ORDER BY start_time, rowid", "");

	while (r == 1) {
		struct kiln_snapshot_info s;
		int rc;

		snapshot_from_row(cat, st, &s);
		r = fn(opaque, &s);
		if (r)
			break;
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "list");
	}
	sqlite3_finalize(st);
	return r;
}

int catalog_drop_pending(struct catalog *cat)
{
	int r = run(cat, NULL, "DELETE FROM snapshots WHERE state = 'pending'", "");

	return r < 0 ? r : sqlite3_changes(cat->db);
}

int catalog_check(struct catalog *cat)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(cat->db, "PRAGMA integrity_check", -1, &st, NULL);
	bool ok;

	if (rc != SQLITE_OK)
		return sql_errno(cat->db, rc, "integrity_check");
	rc = sqlite3_step(st);
	ok = rc == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
	if (!ok && rc == SQLITE_ROW)
		debug("catalog %s: integrity_check: %s", cat->region, sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return sql_errno(cat->db, rc, "integrity_check");
	return ok ? 0 : -EBADMSG;
}

int catalog_exists(struct catalog *cat, const char *id)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT 1 FROM volumes WHERE id = ?1 UNION ALL "
			      "SELECT 1 FROM snapshots WHERE id = ?1", "s", id);

	sqlite3_finalize(st);
	return r;
}

/* ---- images ---------------------------------------------------------- */

#define IMAGE_COLUMNS "id, name, owner, state, state_reason, description, architecture, " \
	"boot_mode, virtualization_type, root_device_name, creation_time, source_image_id, " \
	"source_image_region, public, probe"

static int image_details(struct catalog *cat, struct kiln_image_info *im)
{
	sqlite3_stmt *st = NULL;
	int r;

	im->nmappings = 0;
	r = run(cat, &st, "SELECT device_name, virtual_name, no_device, ebs, snapshot_id, volume_size, "
		"delete_on_termination, volume_type FROM image_mappings WHERE image_id = ? "
		"ORDER BY position", "s", im->id);
	while (r == 1 && im->nmappings < KILN_MAX_MAPPINGS) {
		struct kiln_bdm *m = &im->mappings[im->nmappings++];
		int rc;

		memset(m, 0, sizeof *m);
		copy_text(m->device_name, sizeof m->device_name, st, 0);
		copy_text(m->virtual_name, sizeof m->virtual_name, st, 1);
		m->no_device = sqlite3_column_int(st, 2);
		m->ebs = sqlite3_column_int(st, 3);
		copy_text(m->snapshot_id, sizeof m->snapshot_id, st, 4);
		m->volume_size = (uint64_t)sqlite3_column_int64(st, 5);
		m->delete_on_termination = sqlite3_column_int(st, 6);
		copy_text(m->volume_type, sizeof m->volume_type, st, 7);
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "mappings");
	}
	sqlite3_finalize(st);
	if (r < 0)
		return r;

	im->ntags = 0;
	st = NULL;
	r = run(cat, &st, "SELECT key, value FROM tags WHERE resource_id = ? ORDER BY key", "s", im->id);
	while (r == 1 && im->ntags < KILN_MAX_TAGS) {
		struct kiln_tag *t = &im->tags[im->ntags++];
		int rc;

		copy_text(t->key, sizeof t->key, st, 0);
		copy_text(t->value, sizeof t->value, st, 1);
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "tags");
	}
	sqlite3_finalize(st);
	if (r < 0)
		return r;

	im->nlaunch_users = 0;
	st = NULL;
	r = run(cat, &st, "SELECT user_id FROM launch_permissions WHERE image_id = ? ORDER BY user_id",
		"s", im->id);
	while (r == 1 && im->nlaunch_users < KILN_MAX_LAUNCH_USERS) {
		int rc;

		copy_text(im->launch_users[im->nlaunch_users++], KILN_ACCOUNT_LEN + 1, st, 0);
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "permissions");
	}
	sqlite3_finalize(st);
	return r < 0 ? r : 0;
}

static void image_from_row(struct catalog *cat, sqlite3_stmt *st, struct kiln_image_info *im)
{
	memset(im, 0, sizeof *im);
	copy_text(im->id, sizeof im->id, st, 0);
	copy_text(im->name, sizeof im->name, st, 1);
	copy_text(im->owner, sizeof im->owner, st, 2);
	copy_text(im->state, sizeof im->state, st, 3);
	copy_text(im->state_reason, sizeof im->state_reason, st, 4);
	copy_text(im->description, sizeof im->description, st, 5);
	copy_text(im->architecture, sizeof im->architecture, st, 6);
	copy_text(im->boot_mode, sizeof im->boot_mode, st, 7);
	copy_text(im->virtualization_type, sizeof im->virtualization_type, st, 8);
	copy_text(im->root_device_name, sizeof im->root_device_name, st, 9);
	im->creation_time = sqlite3_column_int64(st, 10);
	copy_text(im->source_image_id, sizeof im->source_image_id, st, 11);
	copy_text(im->source_image_region, sizeof im->source_image_region, st, 12);
	im->public = sqlite3_column_int(st, 13);
	copy_text(im->probe, sizeof im->probe, st, 14);
	snprintf(im->region, sizeof im->region, "%s", cat->region);
}

static int insert_mapping(struct catalog *cat, const char *image_id, int position, const struct kiln_bdm *m)
{
	return run(cat, NULL, "INSERT INTO image_mappings (image_id, position, device_name, virtual_name, "
		   "no_device, ebs, snapshot_id, volume_size, delete_on_termination, volume_type) "
		   "VALUES (?,?,?,?,?,?,?,?,?,?)", "sissiisiis", image_id, (int64_t)position,
		   m->device_name, m->virtual_name, (int64_t)m->no_device, (int64_t)m->ebs, m->snapshot_id,
		   (int64_t)m->volume_size, (int64_t)m->delete_on_termination, m->volume_type);
}

/* Insert an image with its mappings and tags, in one transaction. */
int catalog_image_insert(struct catalog *cat, const struct kiln_image_info *im)
{
	int r = catalog_begin(cat);

	if (r < 0)
		return r;
	/* An available image's snapshots are there and completed, checked in
	 * its transaction: a snapshot deleted meanwhile fails the register. */
	for (size_t i = 0; r == 0 && strcmp(im->state, "available") == 0 && i < im->nmappings; i++) {
		const struct kiln_bdm *m = &im->mappings[i];
		sqlite3_stmt *st = NULL;

		if (!m->ebs || !m->snapshot_id[0])
			continue;
		r = run(cat, &st, "SELECT 1 FROM snapshots WHERE id = ? AND state = 'completed'", "s",
			m->snapshot_id);
		sqlite3_finalize(st);
		r = r == 1 ? 0 : r == 0 ? -ENOENT : r;
	}
	if (r == 0)
		r = run(cat, NULL, "INSERT INTO images (" IMAGE_COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
		"ssssssssssissis", im->id, im->name, im->owner, im->state, im->state_reason,
		im->description, im->architecture, im->boot_mode, im->virtualization_type,
		im->root_device_name, im->creation_time, im->source_image_id, im->source_image_region,
		(int64_t)im->public, im->probe);
	for (size_t i = 0; r == 0 && i < im->nmappings; i++)
		r = insert_mapping(cat, im->id, (int)i, &im->mappings[i]);
	for (size_t i = 0; r == 0 && i < im->ntags; i++)
		r = run(cat, NULL, "INSERT OR REPLACE INTO tags (resource_id, key, value) VALUES (?,?,?)",
			"sss", im->id, im->tags[i].key, im->tags[i].value);
	for (size_t i = 0; r == 0 && i < im->nlaunch_users; i++)
		r = run(cat, NULL, "INSERT OR IGNORE INTO launch_permissions VALUES (?,?)", "ss", im->id,
			im->launch_users[i]);
	if (r < 0) {
		catalog_rollback(cat);
		return r;
	}
	return catalog_commit(cat);
}

int catalog_image_get(struct catalog *cat, const char *id, struct kiln_image_info *ret_info)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT " IMAGE_COLUMNS " FROM images WHERE id = ?", "s", id);

	if (r == 1)
		image_from_row(cat, st, ret_info);
	sqlite3_finalize(st);
	if (r == 1)
		return image_details(cat, ret_info);
	return r < 0 ? r : -ENOENT;
}

/* The ids a query returns (one text column), in its order, malloc'd: so
 * no statement stays open while a caller's callback touches the catalog. */
static int select_ids(struct catalog *cat, const char *sql, char (**ret_ids)[KILN_ID_MAX], size_t *ret_n)
{
	sqlite3_stmt *st = NULL;
	char (*ids)[KILN_ID_MAX] = NULL;
	size_t n = 0, cap = 0;
	int r = run(cat, &st, sql, "");

	while (r == 1) {
		int rc;

		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			void *p = realloc(ids, ncap * sizeof *ids);

			if (!p) {
				r = -ENOMEM;
				break;
			}
			ids = p;
			cap = ncap;
		}
		copy_text(ids[n++], KILN_ID_MAX, st, 0);
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, sql);
	}
	sqlite3_finalize(st);
	if (r < 0) {
		free(ids);
		return r;
	}
	*ret_ids = ids;
	*ret_n = n;
	return 0;
}

int catalog_image_list(struct catalog *cat, int (*fn)(void *opaque, const struct kiln_image_info *info),
		       void *opaque)
{
	struct kiln_image_info *im = malloc(sizeof *im);
	char (*ids)[KILN_ID_MAX] = NULL;
	size_t n = 0;
	int r = im ? select_ids(cat, "SELECT id FROM images ORDER BY creation_time, id", &ids, &n) : -ENOMEM;

	for (size_t i = 0; r == 0 && i < n; i++) {
		r = catalog_image_get(cat, ids[i], im);
		if (r == -ENOENT) {
			r = 0;          /* deregistered meanwhile */
			continue;
		}
		if (r == 0)
			r = fn(opaque, im);
	}
	free(ids);
	free(im);
	return r;
}

int catalog_image_set_state(struct catalog *cat, const char *id, const char *state, const char *reason)
{
	return changed_one(cat, run(cat, NULL, "UPDATE images SET state = ?, state_reason = ? WHERE id = ?",
				    "sss", state, reason ? reason : "", id));
}

int catalog_image_set_description(struct catalog *cat, const char *id, const char *description)
{
	return changed_one(cat, run(cat, NULL, "UPDATE images SET description = ? WHERE id = ?", "ss",
				    description, id));
}

int catalog_image_set_mapping_snapshot(struct catalog *cat, const char *id, int position,
				       const char *snapshot_id)
{
	return changed_one(cat, run(cat, NULL, "UPDATE image_mappings SET snapshot_id = ? "
				    "WHERE image_id = ? AND position = ?", "ssi", snapshot_id, id,
				    (int64_t)position));
}

/* Launch permissions in one transaction: public flag and user sets. */
int catalog_image_permissions(struct catalog *cat, const char *id, const char *const *add, size_t nadd,
			      int set_public, const char *const *remove, size_t nremove, bool clear)
{
	int r = catalog_begin(cat);

	if (r < 0)
		return r;
	if (clear)
		r = run(cat, NULL, "DELETE FROM launch_permissions WHERE image_id = ?", "s", id);
	for (size_t i = 0; r == 0 && i < nadd; i++)
		r = run(cat, NULL, "INSERT OR IGNORE INTO launch_permissions VALUES (?,?)", "ss", id, add[i]);
	for (size_t i = 0; r == 0 && i < nremove; i++)
		r = run(cat, NULL, "DELETE FROM launch_permissions WHERE image_id = ? AND user_id = ?", "ss",
			id, remove[i]);
	if (r == 0 && set_public >= 0)
		r = changed_one(cat, run(cat, NULL, "UPDATE images SET public = ? WHERE id = ?", "is",
					 (int64_t)set_public, id));
	if (r < 0) {
		catalog_rollback(cat);
		return r;
	}
	return catalog_commit(cat);
}

int catalog_image_delete(struct catalog *cat, const char *id)
{
	int r = catalog_begin(cat);

	if (r < 0)
		return r;
	r = run(cat, NULL, "DELETE FROM image_mappings WHERE image_id = ?", "s", id);
	if (r == 0)
		r = run(cat, NULL, "DELETE FROM launch_permissions WHERE image_id = ?", "s", id);
	if (r == 0)
		r = run(cat, NULL, "DELETE FROM tags WHERE resource_id = ?", "s", id);
	if (r == 0)
		r = changed_one(cat, run(cat, NULL, "DELETE FROM images WHERE id = ?", "s", id));
	if (r < 0) {
		catalog_rollback(cat);
		return r;
	}
	return catalog_commit(cat);
}

/* 1 when owner has an image called name (other than except_id). */
int catalog_image_name_taken(struct catalog *cat, const char *owner, const char *name, const char *except_id)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT 1 FROM images WHERE owner = ? AND name = ? AND id != ?", "sss",
		    owner, name, except_id ? except_id : "");

	sqlite3_finalize(st);
	return r;
}

/* An unfinished copy of source by owner under name: its id, or -ENOENT. */
int catalog_image_find_copy(struct catalog *cat, const char *owner, const char *name,
			    const char *source_id, const char *source_region, char ret_id[KILN_ID_MAX])
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT id FROM images WHERE owner = ? AND name = ? AND source_image_id = ? "
		    "AND source_image_region = ? AND state != 'available'", "ssss", owner, name,
		    source_id, source_region);

	if (r == 1)
		copy_text(ret_id, KILN_ID_MAX, st, 0);
	sqlite3_finalize(st);
	return r < 0 ? r : r == 1 ? 0 : -ENOENT;
}

/* Images whose mappings name snapshot_id: fn(opaque, image_id). */
int catalog_snapshot_images(struct catalog *cat, const char *snapshot_id,
			    int (*fn)(void *opaque, const char *image_id), void *opaque)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT DISTINCT image_id FROM image_mappings WHERE snapshot_id = ? "
		    "ORDER BY image_id", "s", snapshot_id);

	while (r == 1) {
		char id[KILN_ID_MAX];
		int rc;

		copy_text(id, sizeof id, st, 0);
		r = fn(opaque, id);
		if (r)
			break;
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "snapshot images");
	}
	sqlite3_finalize(st);
	return r;
}

/* Copies whose process died: failed, with a reason that says to resume. */
int catalog_fail_pending_images(struct catalog *cat)
{
	int r = run(cat, NULL, "UPDATE images SET state = 'failed', state_reason = "
		    "'the copy was interrupted: run the same kiln image copy again to resume it' "
		    "WHERE state = 'pending'", "");

	return r < 0 ? r : sqlite3_changes(cat->db);
}

/* ---- snapshot sharing ------------------------------------------------- */

int catalog_snapshot_permissions(struct catalog *cat, const char *id, const char *const *add, size_t nadd,
				 int set_public, const char *const *remove, size_t nremove)
{
	int r = catalog_begin(cat);

	if (r < 0)
		return r;
	for (size_t i = 0; r == 0 && i < nadd; i++)
		r = run(cat, NULL, "INSERT OR IGNORE INTO snapshot_permissions VALUES (?,?)", "ss", id, add[i]);
	for (size_t i = 0; r == 0 && i < nremove; i++)
		r = run(cat, NULL, "DELETE FROM snapshot_permissions WHERE snapshot_id = ? AND user_id = ?",
			"ss", id, remove[i]);
	if (r == 0 && set_public >= 0)
		r = changed_one(cat, run(cat, NULL, "UPDATE snapshots SET public = ? WHERE id = ?", "is",
					 (int64_t)set_public, id));
	if (r < 0) {
		catalog_rollback(cat);
		return r;
	}
	return catalog_commit(cat);
}

/* "all" when public, then each account: fn(opaque, who). */
int catalog_snapshot_permission_list(struct catalog *cat, const char *id,
				     int (*fn)(void *opaque, const char *who), void *opaque)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT 'all' FROM snapshots WHERE id = ?1 AND public = 1 UNION ALL "
		    "SELECT user_id FROM (SELECT user_id FROM snapshot_permissions WHERE snapshot_id = ?1 "
		    "ORDER BY user_id)", "s", id);

	while (r == 1) {
		char who[KILN_ACCOUNT_LEN + 1];
		int rc;

		copy_text(who, sizeof who, st, 0);
		r = fn(opaque, who);
		if (r)
			break;
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "permissions");
	}
	sqlite3_finalize(st);
	return r;
}

/* 1 when caller may use the snapshot (owner, listed, or public). */
int catalog_snapshot_usable(struct catalog *cat, const char *id, const char *caller)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT 1 FROM snapshots WHERE id = ?1 AND (owner = ?2 OR public = 1 OR "
		    "EXISTS (SELECT 1 FROM snapshot_permissions WHERE snapshot_id = ?1 AND user_id = ?2))",
		    "ss", id, caller);

	sqlite3_finalize(st);
	return r;
}

/* ---- instances -------------------------------------------------------- */

#define INSTANCE_COLUMNS "id, image_id, owner, state, launch_time, architecture, boot_mode, " \
	"root_device_name, nbd_socket, nbd_pid, qemu_pid"

int catalog_instance_insert(struct catalog *cat, const struct kiln_instance_info *in)
{
	int r = run(cat, NULL, "INSERT INTO instances (" INSTANCE_COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,?)",
		    "ssssissssii", in->id, in->image_id, in->owner, in->state, in->launch_time,
		    in->architecture, in->boot_mode, in->root_device_name, in->nbd_socket,
		    (int64_t)in->nbd_pid, (int64_t)in->qemu_pid);

	for (size_t i = 0; r == 0 && i < in->ndevices; i++) {
		const struct kiln_instance_device *d = &in->devices[i];

		r = run(cat, NULL, "INSERT INTO instance_devices VALUES (?,?,?,?,?,?)", "sissii", in->id,
			(int64_t)i, d->device_name, d->volume_id, (int64_t)d->ebs,
			(int64_t)d->delete_on_termination);
	}
	return r;
}

int catalog_instance_get(struct catalog *cat, const char *id, struct kiln_instance_info *in)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT " INSTANCE_COLUMNS " FROM instances WHERE id = ?", "s", id);

	if (r == 1) {
		memset(in, 0, sizeof *in);
		copy_text(in->id, sizeof in->id, st, 0);
		copy_text(in->image_id, sizeof in->image_id, st, 1);
		copy_text(in->owner, sizeof in->owner, st, 2);
		copy_text(in->state, sizeof in->state, st, 3);
		in->launch_time = sqlite3_column_int64(st, 4);
		copy_text(in->architecture, sizeof in->architecture, st, 5);
		copy_text(in->boot_mode, sizeof in->boot_mode, st, 6);
		copy_text(in->root_device_name, sizeof in->root_device_name, st, 7);
		copy_text(in->nbd_socket, sizeof in->nbd_socket, st, 8);
		in->nbd_pid = (int)sqlite3_column_int64(st, 9);
		in->qemu_pid = (int)sqlite3_column_int64(st, 10);
		snprintf(in->region, sizeof in->region, "%s", cat->region);
	}
	sqlite3_finalize(st);
	if (r != 1)
		return r < 0 ? r : -ENOENT;
	st = NULL;
	r = run(cat, &st, "SELECT device_name, volume_id, ebs, delete_on_termination FROM instance_devices "
		"WHERE instance_id = ? ORDER BY position", "s", id);
	while (r == 1 && in->ndevices < KILN_MAX_MAPPINGS) {
		struct kiln_instance_device *d = &in->devices[in->ndevices++];
		int rc;

		copy_text(d->device_name, sizeof d->device_name, st, 0);
		copy_text(d->volume_id, sizeof d->volume_id, st, 1);
		d->ebs = sqlite3_column_int(st, 2);
		d->delete_on_termination = sqlite3_column_int(st, 3);
		rc = sqlite3_step(st);
		r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : sql_errno(cat->db, rc, "devices");
	}
	sqlite3_finalize(st);
	return r < 0 ? r : 0;
}

int catalog_instance_ids(struct catalog *cat, char (**ret_ids)[KILN_ID_MAX], size_t *ret_n)
{
	return select_ids(cat, "SELECT id FROM instances ORDER BY launch_time, id", ret_ids, ret_n);
}

int catalog_instance_update(struct catalog *cat, const struct kiln_instance_info *in)
{
	return changed_one(cat, run(cat, NULL, "UPDATE instances SET state = ?, nbd_socket = ?, nbd_pid = ?, "
				    "qemu_pid = ? WHERE id = ?", "ssiis", in->state, in->nbd_socket,
				    (int64_t)in->nbd_pid, (int64_t)in->qemu_pid, in->id));
}

/* The volume behind an instance's device ("i-…/xvda" or "/dev/xvda"). */
int catalog_instance_device_volume(struct catalog *cat, const char *instance_id, const char *device,
				   char ret_volume[KILN_ID_MAX])
{
	sqlite3_stmt *st = NULL;
	char full[64];
	int r;

	snprintf(full, sizeof full, "/dev/%s", device);
	r = run(cat, &st, "SELECT volume_id FROM instance_devices d JOIN instances i ON i.id = d.instance_id "
		"WHERE d.instance_id = ? AND (d.device_name = ? OR d.device_name = ?) AND i.state != 'terminated'",
		"sss", instance_id, device, full);
	if (r == 1)
		copy_text(ret_volume, KILN_ID_MAX, st, 0);
	sqlite3_finalize(st);
	return r < 0 ? r : r == 1 ? 0 : -ENOENT;
}
