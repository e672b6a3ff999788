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

#include "internal.h"

#define CATALOG_NAME "catalog.db"
#define SCHEMA_VERSION 1

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

int catalog_open(int dirfd, const char *region, struct catalog **ret_cat)
{
	struct catalog *cat = calloc(1, sizeof *cat);
	char path[64];
	int rc, r;

	if (!cat)
		return -ENOMEM;
	snprintf(cat->region, sizeof cat->region, "%s", region);
	/* SQLite wants a path: reach the region directory through its fd. */
	snprintf(path, sizeof path, "/proc/self/fd/%d/" CATALOG_NAME, dirfd);
	rc = sqlite3_open_v2(path, &cat->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			     SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		r = sql_errno(cat->db, rc, "open");
		goto out_close;
	}
	sqlite3_busy_timeout(cat->db, 30000);
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

int catalog_snapshot_delete(struct catalog *cat, const char *id)
{
	return changed_one(cat, run(cat, NULL, "DELETE FROM snapshots WHERE id = ?", "s", id));
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

int catalog_exists(struct catalog *cat, const char *id)
{
	sqlite3_stmt *st = NULL;
	int r = run(cat, &st, "SELECT 1 FROM volumes WHERE id = ?1 UNION ALL "
			      "SELECT 1 FROM snapshots WHERE id = ?1", "s", id);

	sqlite3_finalize(st);
	return r;
}
