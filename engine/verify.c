/* SPDX-License-Identifier: MIT */
/* verify.c: read every chunk of a region and check it against its id;
 * check every manifest and name the snapshots (and volumes) a corrupt or
 * missing chunk breaks. Chunks are checked on the pool. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct entry {
	uint8_t id[CHUNK_ID_SIZE];
	struct chunk_loc loc;
	int result;
};

struct entries {
	struct entry *v;
	size_t n, cap;
};

static int collect(void *opaque, const uint8_t id[CHUNK_ID_SIZE], const struct chunk_loc *loc)
{
	struct entries *e = opaque;

	if (e->n == e->cap) {
		size_t ncap = e->cap ? e->cap * 2 : 1024;
		struct entry *p = realloc(e->v, ncap * sizeof *p);

		if (!p)
			return -ENOMEM;
		e->v = p;
		e->cap = ncap;
	}
	memcpy(e->v[e->n].id, id, CHUNK_ID_SIZE);
	e->v[e->n].loc = *loc;
	e->v[e->n].result = 0;
	e->n++;
	return 0;
}

struct check_arg {
	struct kiln_region *rg;
	struct entry *v;
};

static void check_one(void *arg, size_t i)
{
	struct check_arg *a = arg;
	uint8_t *scratch = malloc(a->v[i].loc.raw_len ? a->v[i].loc.raw_len : 1);

	if (!scratch) {
		a->v[i].result = -ENOMEM;
		return;
	}
	a->v[i].result = cs_verify_chunk(a->rg->cs, a->v[i].id, &a->v[i].loc, scratch);
	free(scratch);
}

/* A chunk that failed where it was listed may have been moved since, by
 * a gc or recompress beside us (verify takes no lock): check it again
 * where the index says it is now. */
static void recheck_moved(struct kiln_region *rg, struct entry *v, size_t n)
{
	bool refreshed = false;

	for (size_t i = 0; i < n; i++) {
		struct chunk_loc now;
		uint8_t *scratch;
		int r;

		if (v[i].result >= 0)
			continue;
		if (!refreshed && cs_refresh(rg->cs) < 0)
			return;
		refreshed = true;
		r = cs_lookup(rg->cs, v[i].id, &now);
		if (r == -ENOENT) {
			/* gone: gc took it as garbage; the manifest pass says
			 * so if something still needed it */
			v[i].result = 0;
			continue;
		}
		if (r < 0 || (now.pack == v[i].loc.pack && now.offset == v[i].loc.offset))
			continue;
		scratch = malloc(now.raw_len ? now.raw_len : 1);
		if (scratch && cs_verify_chunk(rg->cs, v[i].id, &now, scratch) == 0) {
			v[i].loc = now;
			v[i].result = 0;
		}
		free(scratch);
	}
}

/* A problem: one chunk, and who uses it. */
struct problem {
	uint8_t id[CHUNK_ID_SIZE];
	const char *what;
	char what_buf[160];     /* when what names a pack file */
	char *users;            /* NUL-separated, double NUL at the end */
	size_t users_len;
};

/* Say what is wrong with a chunk's record, naming its pack file. */
static void describe_damage(struct kiln_region *rg, const struct entry *e, struct problem *p)
{
	char name[32];
	struct stat st;
	uint64_t end = e->loc.offset + RECORD_HEADER_SIZE + e->loc.stored_len;

	snprintf(name, sizeof name, "%08x.pack", e->loc.pack);
	if (fstatat(cs_packs_dirfd(rg->cs), name, &st, 0) < 0)
		snprintf(p->what_buf, sizeof p->what_buf, "its pack packs/%s is missing", name);
	else if (!S_ISREG(st.st_mode))
		snprintf(p->what_buf, sizeof p->what_buf, "its pack packs/%s is not a file", name);
	else if ((uint64_t)st.st_size < end)
		snprintf(p->what_buf, sizeof p->what_buf,
			 "packs/%s is truncated: %llu bytes, the record ends at %llu", name,
			 (unsigned long long)st.st_size, (unsigned long long)end);
	else if (e->result == -EBADMSG)
		snprintf(p->what_buf, sizeof p->what_buf,
			 "corrupt record in packs/%s at offset %llu (damaged header, or the bytes do not "
			 "match the chunk id)", name, (unsigned long long)e->loc.offset);
	else
		snprintf(p->what_buf, sizeof p->what_buf, "unreadable record in packs/%s at offset %llu: %s",
			 name, (unsigned long long)e->loc.offset, strerror(-e->result));
	p->what = p->what_buf;
}

struct verify_ctx {
	struct kiln_region *rg;
	struct entries *chunks;     /* sorted by id for lookups */
	struct problem *problems;
	size_t nproblems;
	struct kiln_verify_result *res;
};

static int cmp_entry(const void *a, const void *b)
{
	return memcmp(((const struct entry *)a)->id, ((const struct entry *)b)->id, CHUNK_ID_SIZE);
}

static struct problem *find_problem(struct verify_ctx *c, const uint8_t *id)
{
	for (size_t i = 0; i < c->nproblems; i++)
		if (memcmp(c->problems[i].id, id, CHUNK_ID_SIZE) == 0)
			return &c->problems[i];
	return NULL;
}

static struct problem *add_problem(struct verify_ctx *c, const uint8_t *id, const char *what)
{
	struct problem *p = realloc(c->problems, (c->nproblems + 1) * sizeof *p);

	if (!p)
		return NULL;
	c->problems = p;
	p = &c->problems[c->nproblems++];
	memcpy(p->id, id, CHUNK_ID_SIZE);
	p->what = what;
	p->users = NULL;
	p->users_len = 0;
	return p;
}

static void add_user(struct problem *p, const char *user)
{
	size_t len = strlen(user) + 1;
	char *u;

	/* once per user */
	for (size_t off = 0; off < p->users_len; off += strlen(p->users + off) + 1)
		if (strcmp(p->users + off, user) == 0)
			return;
	u = realloc(p->users, p->users_len + len + 1);
	if (!u)
		return;
	memcpy(u + p->users_len, user, len);
	p->users = u;
	p->users_len += len;
	p->users[p->users_len] = '\0';
}

/* Check one manifest: every non-zero id must be in the store; record it
 * as a user of every corrupt chunk it names. */
static int check_manifest(struct verify_ctx *c, int dirfd, const char *name, const char *user)
{
	struct manifest *m;
	bool bad = false;
	int r = manifest_read(dirfd, name, &m);

	/* Deleted since the directory was read (verify takes no lock, so
	 * snapshots and volumes come and go beside it): not a problem. */
	if (r == -ENOENT)
		return 0;
	c->res->manifests_checked++;
	if (r < 0) {
		static const uint8_t none[CHUNK_ID_SIZE];
		struct problem *p = add_problem(c, none, "manifest is unreadable or corrupt");

		if (p)
			add_user(p, user);
		c->res->bad_manifests++;
		return 0;
	}
	for (uint64_t i = 0; i < m->nchunks; i++) {
		struct entry key, *e;
		struct problem *p;

		if (chunk_id_is_zero(m->ids[i]))
			continue;
		memcpy(key.id, m->ids[i], CHUNK_ID_SIZE);
		e = c->chunks->n ? bsearch(&key, c->chunks->v, c->chunks->n, sizeof key, cmp_entry) : NULL;
		/* stored since the chunks were listed (an import or snapshot
		 * beside us: verify takes no lock) */
		if (!e && cs_contains(c->rg->cs, m->ids[i]))
			continue;
		if (!e) {
			p = find_problem(c, m->ids[i]);
			if (!p)
				p = add_problem(c, m->ids[i], "missing from the chunk store");
			if (p)
				add_user(p, user);
			bad = true;
		} else if (e->result < 0) {
			p = find_problem(c, m->ids[i]);
			if (p)
				add_user(p, user);
			bad = true;
		}
	}
	c->res->bad_manifests += bad;
	manifest_free(m);
	return 0;
}

static int walk_manifests(struct verify_ctx *c, int dirfd, const char *suffix, bool volumes)
{
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), sl = strlen(suffix);
		char id[KILN_ID_MAX], user[KILN_ID_MAX + 16];

		if (de->d_name[0] == '.' || len <= sl || strcmp(de->d_name + len - sl, suffix) != 0 ||
		    len - sl >= sizeof id)
			continue;
		snprintf(id, sizeof id, "%.*s", (int)(len - sl), de->d_name);
		if (volumes)
			snprintf(user, sizeof user, "%s (parent)", id);
		else
			snprintf(user, sizeof user, "%s", id);
		check_manifest(c, dirfd, de->d_name, user);
	}
	closedir(d);
	return 0;
}

/* Every completed snapshot the catalog knows needs its manifest: the walk
 * above sees only the manifests that are there. The ids are listed first
 * and checked after, so that each check reads the catalog anew: verify
 * takes no lock, and a delete removes the row and then the file. */
struct id_list {
	char (*ids)[KILN_ID_MAX];
	size_t n, cap;
};

static int list_completed(void *opaque, const struct kiln_snapshot_info *info)
{
	struct id_list *l = opaque;

	if (info->state != KILN_SNAPSHOT_COMPLETED)
		return 0;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		char (*ids)[KILN_ID_MAX] = realloc(l->ids, cap * sizeof *ids);

		if (!ids)
			return -ENOMEM;
		l->ids = ids;
		l->cap = cap;
	}
	snprintf(l->ids[l->n++], KILN_ID_MAX, "%s", info->id);
	return 0;
}

static int check_manifests_exist(struct verify_ctx *c)
{
	static const uint8_t none[CHUNK_ID_SIZE];
	struct id_list l = { 0 };
	int r = catalog_snapshot_list(c->rg->cat, list_completed, &l);

	for (size_t i = 0; r == 0 && i < l.n; i++) {
		struct kiln_snapshot_info now;
		char name[KILN_ID_MAX + 16];
		struct problem *p;

		snprintf(name, sizeof name, "%s.manifest", l.ids[i]);
		if (faccessat(c->rg->manifests_dirfd, name, F_OK, 0) == 0 || errno != ENOENT)
			continue;
		if (catalog_snapshot_get(c->rg->cat, l.ids[i], &now) == -ENOENT)
			continue;       /* deleted meanwhile */
		c->res->manifests_checked++;
		c->res->bad_manifests++;
		p = add_problem(c, none, "manifest is missing");
		if (!p)
			r = -ENOMEM;
		else
			add_user(p, l.ids[i]);
	}
	free(l.ids);
	return r;
}

int kiln_region_verify(struct kiln_region *rg,
		       void (*report)(void *opaque, const struct kiln_verify_problem *p),
		       void *opaque, kiln_progress_fn progress, struct kiln_verify_result *ret_result)
{
	struct entries chunks = { 0 };
	struct kiln_verify_result res = { 0 };
	struct verify_ctx c = { .rg = rg, .chunks = &chunks, .res = &res };
	uint64_t total = 0, done = 0;
	int r;

	r = cs_foreach(rg->cs, collect, &chunks);
	if (r < 0)
		goto out;
	/* In pack order, so the reads run along the files. */
	for (size_t i = 0; i < chunks.n; i++)
		total += chunks.v[i].loc.raw_len;
	for (size_t b = 0; b < chunks.n; b += 256) {
		struct check_arg a = { rg, chunks.v + b };
		size_t n = MIN((size_t)256, chunks.n - b);

		pool_run(check_one, &a, n);
		recheck_moved(rg, chunks.v + b, n);
		for (size_t i = b; i < b + n; i++) {
			done += chunks.v[i].loc.raw_len;
			res.chunks_checked++;
			res.bytes_checked += chunks.v[i].loc.raw_len;
			if (chunks.v[i].result < 0) {
				res.corrupt_chunks++;
				struct problem *p = add_problem(&c, chunks.v[i].id, NULL);

				if (!p) {
					r = -ENOMEM;
					goto out;
				}
				describe_damage(rg, &chunks.v[i], p);
			}
		}
		if (progress)
			progress(opaque, done, total);
	}
	if (chunks.n)
		qsort(chunks.v, chunks.n, sizeof *chunks.v, cmp_entry);
	r = walk_manifests(&c, rg->manifests_dirfd, ".manifest", false);
	if (r == 0)
		r = walk_manifests(&c, rg->volumes_dirfd, ".parent", true);
	if (r == 0 && catalog_check(rg->cat) < 0) {
		static const uint8_t none[CHUNK_ID_SIZE];

		res.bad_catalog = true;
		if (!add_problem(&c, none, "the catalog (catalog.db) is damaged"))
			r = -ENOMEM;
	}
	if (r == 0 && !res.bad_catalog)
		r = check_manifests_exist(&c);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < c.nproblems; i++) {
		struct kiln_verify_problem p = { .what = c.problems[i].what,
						 .snapshots = c.problems[i].users ? c.problems[i].users : "\0" };

		if (chunk_id_is_zero(c.problems[i].id))
			p.chunk_id[0] = '\0';
		else
			hex_encode(c.problems[i].id, CHUNK_ID_SIZE, p.chunk_id);
		if (report)
			report(opaque, &p);
	}
	*ret_result = res;
out:
	for (size_t i = 0; i < c.nproblems; i++)
		free(c.problems[i].users);
	free(c.problems);
	free(chunks.v);
	return r;
}
