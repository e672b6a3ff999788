/* SPDX-License-Identifier: MIT */
/* replace.c: give a regular file new contents all at once. They are
 * written beside it (an unnamed O_TMPFILE where the filesystem allows,
 * else a dot file) with its mode and owner, and take its name by rename
 * once complete and durable: a writer that fails half way leaves what was
 * there. Through symbolic links, to the file they name, as writing does.
 *
 * Some files cannot be replaced without changing what they are: one with
 * other hard links, one whose owner we cannot give a new file, one in a
 * directory we may not write. Those are written in place (rp->in_place),
 * as open(2) and write(2) would. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Follow symbolic links to the path they end at, which may not exist yet
 * (a dangling link names the file to create). */
static int resolve(const char *path, char out[PATH_MAX])
{
	char cur[PATH_MAX], link[PATH_MAX];

	if (snprintf(cur, sizeof cur, "%s", path) >= (int)sizeof cur)
		return -ENAMETOOLONG;
	for (int hops = 0;; hops++) {
		struct stat st;
		ssize_t n;

		if (lstat(cur, &st) < 0) {
			if (errno == ENOENT)
				break;
			return -errno;
		}
		if (!S_ISLNK(st.st_mode))
			break;
		if (hops == 40)
			return -ELOOP;
		n = readlink(cur, link, sizeof link - 1);
		if (n < 0)
			return -errno;
		link[n] = '\0';
		if (link[0] != '/' && strrchr(cur, '/')) {
			char *slash = strrchr(cur, '/');
			size_t dlen = (size_t)(slash - cur) + 1;

			if (dlen + (size_t)n >= sizeof cur)
				return -ENAMETOOLONG;
			memcpy(slash + 1, link, (size_t)n + 1);
		} else {
			memcpy(cur, link, (size_t)n + 1);
		}
	}
	memcpy(out, cur, strlen(cur) + 1);
	return 0;
}

static void dir_of(const char *path, char dir[PATH_MAX])
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		snprintf(dir, PATH_MAX, ".");
	else if (slash == path)
		snprintf(dir, PATH_MAX, "/");
	else
		snprintf(dir, PATH_MAX, "%.*s", (int)(slash - path), path);
}

static int open_in_place(struct replacement *rp)
{
	rp->fd = open(rp->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (rp->fd < 0)
		return -errno;
	rp->in_place = true;
	return 0;
}

int replacement_open(struct replacement *rp, const char *path)
{
	struct stat st;
	bool exists;
	int r;

	memset(rp, 0, sizeof *rp);
	rp->fd = -1;
	r = resolve(path, rp->path);
	if (r < 0)
		return r;
	dir_of(rp->path, rp->dir);
	exists = stat(rp->path, &st) == 0;
	if (exists && S_ISREG(st.st_mode) && st.st_nlink > 1)
		return open_in_place(rp);       /* a rename would part it from its links */

	rp->fd = open(rp->dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
	rp->unnamed = rp->fd >= 0;
	if (rp->fd < 0 && errno != EACCES && errno != EPERM && errno != EROFS) {
		snprintf(rp->tmp, sizeof rp->tmp, "%s/.kiln-export-XXXXXX", rp->dir);
		rp->fd = mkostemp(rp->tmp, O_CLOEXEC);
		if (rp->fd < 0)
			rp->tmp[0] = '\0';
		else if (!exists) {
			mode_t mask = umask(0);

			umask(mask);
			if (fchmod(rp->fd, 0644 & ~mask) < 0)
				goto fail;
		}
	}
	if (rp->fd < 0) {
		r = -errno;
		if (exists && (r == -EACCES || r == -EPERM || r == -EROFS) && access(rp->path, W_OK) == 0)
			return open_in_place(rp);
		return r;
	}
	/* The file it replaces: its mode, and its owner where we may give it. */
	if (exists && fchmod(rp->fd, st.st_mode & 07777) < 0)
		goto fail;
	if (exists && (st.st_uid != geteuid() || st.st_gid != getegid()) &&
	    fchown(rp->fd, st.st_uid, st.st_gid) < 0) {
		replacement_abort(rp);
		return open_in_place(rp);
	}
	return 0;
fail:
	r = -errno;
	replacement_abort(rp);
	return r;
}

int replacement_commit(struct replacement *rp)
{
	CLEANUP_CLOSE int dirfd = -1;

	if (rp->in_place)
		return 0;
	if (rp->unnamed) {
		char proc[64];

		snprintf(proc, sizeof proc, "/proc/self/fd/%d", rp->fd);
		for (int n = 0;; n++) {
			snprintf(rp->tmp, sizeof rp->tmp, "%s/.kiln-export-%d-%d", rp->dir, (int)getpid(), n);
			if (linkat(AT_FDCWD, proc, AT_FDCWD, rp->tmp, AT_SYMLINK_FOLLOW) == 0)
				break;
			if (errno != EEXIST || n == 100) {
				rp->tmp[0] = '\0';
				return -errno;
			}
		}
	}
	if (rename(rp->tmp, rp->path) < 0)
		return -errno;
	rp->tmp[0] = '\0';
	dirfd = open(rp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd >= 0 && fsync(dirfd) < 0)
		return -errno;
	return 0;
}

void replacement_abort(struct replacement *rp)
{
	if (rp->tmp[0])
		unlink(rp->tmp);
	rp->tmp[0] = '\0';
	if (rp->fd >= 0)
		close(rp->fd);
	rp->fd = -1;
}

void replacement_close(struct replacement *rp)
{
	if (rp->fd >= 0)
		close(rp->fd);
	rp->fd = -1;
}
