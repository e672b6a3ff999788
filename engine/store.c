/* SPDX-License-Identifier: MIT */
/* store.c: a store directory (config, secret, regions) and its regions
 * (chunk store, catalog, volume and manifest directories, writer lock).
 * Layout in docs/FORMAT.md ("Store layout"). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "internal.h"

#define CONFIG_NAME "config"
#define SECRET_NAME "secret"
#define STORE_FORMAT 1
#define KILN_VERSION "0.1.0"

static const char *const initial_regions[] = { "us-east-1", "eu-west-1" };

void chunk_hash(const struct kiln_store *store, const void *buf, size_t len,
		uint8_t id[CHUNK_ID_SIZE])
{
	XXH128_hash_t h = XXH3_128bits_withSecret(buf, len, store->secret, SECRET_SIZE);
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, h);
	memcpy(id, c.digest, CHUNK_ID_SIZE);
}

const char *kiln_version(void)
{
	return KILN_VERSION;
}

bool kiln_account_valid(const char *account)
{
	if (!account || strlen(account) != KILN_ACCOUNT_LEN)
		return false;
	for (int i = 0; i < KILN_ACCOUNT_LEN; i++)
		if (account[i] < '0' || account[i] > '9')
			return false;
	return true;
}

static bool region_name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n >= KILN_REGION_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
		      name[i] == '-'))
			return false;
	return true;
}

static int make_region(int regions_dirfd, const char *name)
{
	static const char *const subdirs[] = { "packs", "manifests", "volumes" };
	CLEANUP_CLOSE int fd = -1;
	struct catalog *cat;
	int r;

	if (mkdirat(regions_dirfd, name, 0755) < 0)
		return -errno;
	fd = openat(regions_dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++)
		if (mkdirat(fd, subdirs[i], 0755) < 0)
			return -errno;
	r = catalog_open(fd, name, true, &cat);
	if (r < 0)
		return r;
	catalog_close(cat);
	return fsync_dir(fd);
}

int kiln_store_init(const char *dir, const struct kiln_store_options *opts)
{
	struct kiln_store_options o = opts ? *opts : (struct kiln_store_options){ 0 };
	uint8_t secret[SECRET_SIZE];
	CLEANUP_CLOSE int dirfd = -1;
	CLEANUP_CLOSE int rfd = -1;
	CLEANUP_FREE char *config = NULL;
	DIR *d;
	struct dirent *de;
	int r, len;

	kiln_debug_init();
	if (!o.chunk_size)
		o.chunk_size = KILN_DEFAULT_CHUNK_SIZE;
	if (!o.zstd_level)
		o.zstd_level = DEFAULT_ZSTD_LEVEL;
	if (!o.account)
		o.account = KILN_DEFAULT_ACCOUNT;
	if (o.chunk_size < KILN_MIN_CHUNK_SIZE || o.chunk_size > KILN_MAX_CHUNK_SIZE ||
	    (o.chunk_size & (o.chunk_size - 1)) || o.zstd_level < -7 || o.zstd_level > 19 ||
	    !kiln_account_valid(o.account))
		return -EINVAL;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return -errno;
	d = fdopendir(dup(dirfd));
	if (!d)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			closedir(d);
			return faccessat(dirfd, CONFIG_NAME, F_OK, 0) == 0 ? -EEXIST : -ENOTEMPTY;
		}
	}
	closedir(d);

	r = random_bytes(secret, sizeof secret);
	if (r < 0)
		return r;
	r = write_file_atomic(dirfd, SECRET_NAME, secret, sizeof secret, 0600);
	if (r < 0)
		return r;
	if (mkdirat(dirfd, "regions", 0755) < 0)
		return -errno;
	rfd = openat(dirfd, "regions", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0)
		return -errno;
	for (size_t i = 0; i < ARRAY_SIZE(initial_regions); i++) {
		r = make_region(rfd, initial_regions[i]);
		if (r < 0)
			return r;
	}
	r = fsync_dir(rfd);
	if (r < 0)
		return r;
	/* The config goes last: a directory without it is not a store. */
	len = asprintf(&config,
		       "# kiln store configuration (docs/FORMAT.md)\n"
		       "format = %d\nchunk_size = %u\nzstd_level = %d\naccount = %s\n",
		       STORE_FORMAT, o.chunk_size, o.zstd_level, o.account);
	if (len < 0)
		return -ENOMEM;
	return write_file_atomic(dirfd, CONFIG_NAME, config, (size_t)len, 0644);
}

static int parse_config(struct kiln_store *s, const char *text)
{
	int format = -1;
	long long chunk = -1;
	bool have_level = false;

	s->account[0] = '\0';
	for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
		char key[32], value[64];

		if (*line == '#' || *line == '\n')
			continue;
		if (sscanf(line, "%31s = %63s", key, value) != 2)
			return -EBADMSG;
		if (strcmp(key, "format") == 0)
			format = atoi(value);
		else if (strcmp(key, "chunk_size") == 0)
			chunk = atoll(value);
		else if (strcmp(key, "zstd_level") == 0) {
			s->zstd_level = atoi(value);
			have_level = true;
		} else if (strcmp(key, "account") == 0 && strlen(value) == KILN_ACCOUNT_LEN) {
			memcpy(s->account, value, KILN_ACCOUNT_LEN + 1);
		}
	}
	if (format != STORE_FORMAT)
		return format < 0 ? -EBADMSG : -EPROTONOSUPPORT;
	if (chunk < KILN_MIN_CHUNK_SIZE || chunk > KILN_MAX_CHUNK_SIZE || (chunk & (chunk - 1)) ||
	    !have_level || !kiln_account_valid(s->account))
		return -EBADMSG;
	s->chunk_size = (uint32_t)chunk;
	return 0;
}

int kiln_store_open(const char *dir, struct kiln_store **ret_store)
{
	struct kiln_store *s;
	CLEANUP_FREE char *config = NULL;
	CLEANUP_FREE uint8_t *secret = NULL;
	size_t len;
	int r;

	kiln_debug_init();
	s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		r = -errno;
		goto out_free;
	}
	s->path = strdup(dir);
	if (!s->path) {
		r = -ENOMEM;
		goto out_free;
	}
	r = read_file(s->dirfd, CONFIG_NAME, 65536, (void **)&config, &len);
	if (r < 0) {
		if (r == -ENOENT || r == -EBADMSG)
			r = -ENOTDIR;   /* not a store */
		goto out_free;
	}
	r = parse_config(s, config);
	if (r < 0)
		goto out_free;
	r = read_file(s->dirfd, SECRET_NAME, 4096, (void **)&secret, &len);
	if (r < 0 || len != SECRET_SIZE) {
		r = r < 0 ? r : -EBADMSG;
		goto out_free;
	}
	memcpy(s->secret, secret, SECRET_SIZE);
	debug("store %s: chunk size %u, zstd level %d, io %s", dir, s->chunk_size, s->zstd_level,
	      io_backend_name());
	*ret_store = s;
	return 0;
out_free:
	kiln_store_close(s);
	return r;
}

void kiln_store_close(struct kiln_store *s)
{
	if (!s)
		return;
	if (s->dirfd >= 0)
		close(s->dirfd);
	memset(s->secret, 0, sizeof s->secret);
	free(s->path);
	free(s);
}

uint32_t kiln_store_chunk_size(const struct kiln_store *s)
{
	return s->chunk_size;
}

int kiln_store_zstd_level(const struct kiln_store *s)
{
	return s->zstd_level;
}

const char *kiln_store_default_account(const struct kiln_store *s)
{
	return s->account;
}

const char *kiln_store_path(const struct kiln_store *s)
{
	return s->path;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int kiln_store_list_regions(struct kiln_store *s, int (*fn)(void *opaque, const char *region),
			    void *opaque)
{
	int fd = openat(s->dirfd, "regions", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	char *names[64];
	size_t n = 0;
	DIR *d;
	struct dirent *de;
	int r = 0;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d)) != NULL && n < ARRAY_SIZE(names))
		if (de->d_name[0] != '.' && region_name_valid(de->d_name))
			names[n++] = strdup(de->d_name);
	closedir(d);
	qsort(names, n, sizeof names[0], cmp_str);
	for (size_t i = 0; i < n; i++) {
		if (r == 0 && names[i])
			r = fn(opaque, names[i]);
		free(names[i]);
	}
	return r;
}

static int truncate_at(int dirfd, const char *name);
static void reserve_restore(struct kiln_region *rg);

/* Less than 1 MiB available (to users; root may have a little more, but
 * not much): too little for SQLite to open the catalog. */
static bool disk_full(struct kiln_region *rg)
{
	struct statvfs v;
	uint64_t left;

	if (fstatvfs(rg->dirfd, &v) < 0)
		return false;
	left = (uint64_t)v.f_bavail * v.f_frsize;
	return left < (1u << 20);
}

int kiln_region_open(struct kiln_store *s, const char *name, struct kiln_region **ret_region)
{
	struct kiln_region *rg;
	char path[64];
	int r;

	if (!region_name_valid(name))
		return -EINVAL;
	rg = calloc(1, sizeof *rg);
	if (!rg)
		return -ENOMEM;
	rg->store = s;
	rg->dirfd = rg->volumes_dirfd = rg->manifests_dirfd = rg->lock_fd = -1;
	{
		pthread_mutexattr_t a;

		pthread_mutexattr_init(&a);
		pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
		pthread_mutex_init(&rg->lock_mutex, &a);
		pthread_mutexattr_destroy(&a);
	}
	snprintf(rg->name, sizeof rg->name, "%s", name);
	snprintf(path, sizeof path, "regions/%s", name);
	rg->dirfd = openat(s->dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rg->dirfd < 0) {
		r = -errno;
		goto out_close;
	}
	rg->volumes_dirfd = openat(rg->dirfd, "volumes", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	rg->manifests_dirfd = openat(rg->dirfd, "manifests", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rg->volumes_dirfd < 0 || rg->manifests_dirfd < 0) {
		r = errno == ENOENT ? -EBADMSG : -errno;
		goto out_close;
	}
	rg->lock_fd = openat(rg->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (rg->lock_fd < 0) {
		r = -errno;
		goto out_close;
	}
	/* Opening the catalog needs a little room (SQLite's WAL and its
	 * index): on a full disk, the reserve makes it, so that deletes and
	 * gc (and reading) still work. */
	r = catalog_open(rg->dirfd, name, false, &rg->cat);
	if (r < 0 && (r == -ENOSPC || r == -EIO || disk_full(rg)) && region_release_reserve(rg))
		r = catalog_open(rg->dirfd, name, false, &rg->cat);
	if (r < 0 && disk_full(rg))
		r = -ENOSPC;
	if (r < 0)
		goto out_close;
	r = cs_open(rg, &rg->cs);
	if (r < 0)
		goto out_close;
	reserve_restore(rg);
	*ret_region = rg;
	return 0;
out_close:
	kiln_region_close(rg);
	return r;
}

void kiln_region_close(struct kiln_region *rg)
{
	if (!rg)
		return;
	cs_close(rg->cs);
	catalog_close(rg->cat);
	if (rg->lock_fd >= 0)
		close(rg->lock_fd);
	if (rg->volumes_dirfd >= 0)
		close(rg->volumes_dirfd);
	if (rg->manifests_dirfd >= 0)
		close(rg->manifests_dirfd);
	if (rg->dirfd >= 0)
		close(rg->dirfd);
	pthread_mutex_destroy(&rg->lock_mutex);
	free(rg);
}

const char *kiln_region_name(const struct kiln_region *rg)
{
	return rg->name;
}

struct kiln_store *kiln_region_store(struct kiln_region *rg)
{
	return rg->store;
}


/* Remove what a writer that died with the lock left behind: pending
 * catalog rows and temporary files. We hold the lock, so none is live. */
static void clean_after_crash(struct kiln_region *rg)
{
	static const char *const dirs[] = { "manifests", "volumes", "." };
	int n = catalog_drop_pending(rg->cat);

	if (n > 0)
		debug("region %s: dropped %d pending rows a crashed writer left", rg->name, n);
	volume_reap_creating(rg);
	n = catalog_fail_pending_images(rg->cat);
	if (n > 0)
		debug("region %s: %d interrupted image copies marked failed", rg->name, n);
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		int fd = openat(rg->dirfd, dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		struct dirent *de;

		if (!d) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		while ((de = readdir(d)) != NULL) {
			size_t len = strlen(de->d_name);

			if (de->d_name[0] == '.' && len > 5 && strcmp(de->d_name + len - 4, ".tmp") == 0)
				unlinkat(dirfd(d), de->d_name, 0);
		}
		closedir(d);
	}
}

/* A pending row is stale when no writer holds the region lock: take it
 * without waiting, and if we get it, clean up. Readers call this so a
 * snapshot whose writer died never shows as pending. */
void region_reap_if_idle(struct kiln_region *rg)
{
	if (pthread_mutex_trylock(&rg->lock_mutex) != 0)
		return;
	if (rg->lock_depth == 0 && flock(rg->lock_fd, LOCK_EX | LOCK_NB) == 0) {
		clean_after_crash(rg);
		flock(rg->lock_fd, LOCK_UN);
	}
	pthread_mutex_unlock(&rg->lock_mutex);
}

/* The store's reserve: a few MiB allocated at init and given back when a
 * delete or gc (in any region), or opening a catalog, meets a full disk,
 * so that reading and removing things (which need a little room: SQLite's
 * WAL, a new index) work when nothing else does. */
#define RESERVE_NAME "reserve"
#define RESERVE_SIZE (8 << 20)

static void reserve_restore(struct kiln_region *rg)
{
	struct stat st;
	int fd = openat(rg->store->dirfd, RESERVE_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && st.st_size < RESERVE_SIZE &&
	    fallocate(fd, 0, 0, RESERVE_SIZE) < 0)
		debug("region %s: reserve: %s", rg->name, strerror(errno));
	close(fd);
}

bool region_release_reserve(struct kiln_region *rg)
{
	struct stat st;

	if (fstatat(rg->store->dirfd, RESERVE_NAME, &st, 0) < 0 || st.st_size == 0)
		return false;
	if (truncate_at(rg->store->dirfd, RESERVE_NAME) < 0)
		return false;
	debug("region %s: disk full: reserve released", rg->name);
	return true;
}

int region_lock(struct kiln_region *rg)
{
	pthread_mutex_lock(&rg->lock_mutex);
	if (rg->lock_depth++ > 0)
		return 0;
	while (flock(rg->lock_fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int r = -errno;

			rg->lock_depth--;
			pthread_mutex_unlock(&rg->lock_mutex);
			return r;
		}
	}
	clean_after_crash(rg);
	return 0;
}

void region_unlock(struct kiln_region *rg)
{
	if (--rg->lock_depth == 0)
		flock(rg->lock_fd, LOCK_UN);
	pthread_mutex_unlock(&rg->lock_mutex);
}

static int truncate_at(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
	int r;

	if (fd < 0)
		return -errno;
	r = ftruncate(fd, 0) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int check_region(void *opaque, const char *name)
{
	void **args = opaque;
	struct kiln_region *self = args[0];
	const char *id = args[1];
	struct kiln_region *other;
	int found = 0;

	if (strcmp(name, self->name) == 0)
		return 0;
	if (kiln_region_open(self->store, name, &other) == 0) {
		found = catalog_exists(other->cat, id) > 0;
		kiln_region_close(other);
	}
	return found;
}

int region_missing_id(struct kiln_region *rg, const char *id)
{
	void *args[2] = { rg, (void *)id };

	return kiln_store_list_regions(rg->store, check_region, args) > 0 ? -EXDEV : -ENOENT;
}
