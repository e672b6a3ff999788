/* SPDX-License-Identifier: MIT */
/* util.c: ids, randomness, whole-file and durable-file helpers, debug. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

bool kiln_debug_enabled;

/* Read at load time and again when a store is opened or made, so a tool
 * can set KILN_DEBUG after it starts. */
__attribute__((constructor)) void kiln_debug_init(void)
{
	const char *e = getenv("KILN_DEBUG");

	kiln_debug_enabled = e && *e && strcmp(e, "0") != 0;
}

void debug_msg(const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	fputs("kiln: debug: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	errno = saved;
}

int random_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t r = getrandom(p, len, 0);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int random_id(const char *prefix, char ret_id[KILN_ID_MAX])
{
	uint8_t raw[9];
	char hex[19];
	int r = random_bytes(raw, sizeof raw);

	if (r < 0)
		return r;
	hex_encode(raw, sizeof raw, hex);
	snprintf(ret_id, KILN_ID_MAX, "%s-%.17s", prefix, hex);
	return 0;
}

bool kiln_id_valid(const char *id, const char *prefix)
{
	size_t plen;

	if (!id || !prefix)
		return false;
	plen = strlen(prefix);
	if (strncmp(id, prefix, plen) != 0 || id[plen] != '-')
		return false;
	id += plen + 1;
	for (int i = 0; i < 17; i++)
		if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
			return false;
	return id[17] == '\0';
}

void hex_encode(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int hex_decode(const char *in, uint8_t *out, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		int hi = hex_value(in[2 * i]), lo = hi < 0 ? -1 : hex_value(in[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return in[2 * len] == '\0' ? 0 : -EINVAL;
}

int64_t now_seconds(void)
{
	return (int64_t)time(NULL);
}

int fsync_dir(int dirfd)
{
	return fsync(dirfd) < 0 ? -errno : 0;
}

int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t r = pwrite(fd, p, len, (off_t)off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		off += (uint64_t)r;
		len -= (size_t)r;
	}
	return 0;
}

int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t r = pread(fd, p, len, (off_t)off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EBADMSG;    /* the file is shorter than its metadata says */
		p += r;
		off += (uint64_t)r;
		len -= (size_t)r;
	}
	return 0;
}

int write_file_atomic(int dirfd, const char *name, const void *buf, size_t len, mode_t mode)
{
	char tmp[512];
	int r;

	if ((size_t)snprintf(tmp, sizeof tmp, ".%s.tmp", name) >= sizeof tmp)
		return -ENAMETOOLONG;
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	r = pwrite_all(fd, buf, len, 0);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dirfd, tmp, 0);
		return r;
	}
	return fsync_dir(dirfd);
}

int read_file(int dirfd, const char *name, size_t max, void **ret_buf, size_t *ret_len)
{
	struct stat st;
	CLEANUP_CLOSE int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	CLEANUP_FREE uint8_t *buf = NULL;
	int r;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADMSG;
	if ((uint64_t)st.st_size > max)
		return -EFBIG;
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return -ENOMEM;
	r = pread_all(fd, buf, (size_t)st.st_size, 0);
	if (r < 0)
		return r;
	buf[st.st_size] = '\0';
	*ret_len = (size_t)st.st_size;
	*ret_buf = TAKE_PTR(buf);
	return 0;
}

bool buf_is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	const uint64_t *q;
	size_t n;

	/* Head byte by byte to alignment, then words: memcmp against
	 * itself shifted makes the loop compiler-vectorised. */
	while (len > 0 && ((uintptr_t)p & 7)) {
		if (*p)
			return false;
		p++;
		len--;
	}
	q = (const uint64_t *)(const void *)p;
	n = len / 8;
	for (size_t i = 0; i + 4 <= n; i += 4)
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
			return false;
	for (size_t i = n & ~(size_t)3; i < n; i++)
		if (q[i])
			return false;
	p += n * 8;
	for (size_t i = 0; i < len % 8; i++)
		if (p[i])
			return false;
	return true;
}

void crash_point(const char *name)
{
	static const char *want, *stall;
	static bool looked;

	if (!looked) {
		want = getenv("KILN_CRASH_POINT");
		stall = getenv("KILN_STALL_POINT");
		looked = true;
	}
	if (unlikely(want != NULL) && strcmp(want, name) == 0) {
		debug("crash point %s: SIGKILL", name);
		kill(getpid(), SIGKILL);
	}
	if (unlikely(stall != NULL)) {
		size_t n = strlen(name);

		if (strncmp(stall, name, n) == 0 && stall[n] == ':') {
			debug("crash point %s: stalling %s s", name, stall + n + 1);
			sleep((unsigned)atoi(stall + n + 1));
		}
	}
}

int set_why(char *buf, size_t len, int r, const char *fmt, ...)
{
	va_list ap;

	if (buf && len) {
		va_start(ap, fmt);
		vsnprintf(buf, len, fmt, ap);
		va_end(ap);
	}
	return r;
}
