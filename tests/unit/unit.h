/* SPDX-License-Identifier: MIT */
/* unit.h: what the cmocka unit tests (tests/unit/test-*.c) share: cmocka,
 * the io_uring requirement, temporary directories and stores, test data.
 * Public API only, so that test-volume.c stays a public-API test. */
#ifndef KILN_UNIT_H
#define KILN_UNIT_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln.h"

/* A test with the file's own setup() and teardown(). */
#define UNIT_TEST(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

/* Every test file uses some of these helpers, none uses all. */
#define UNIT_HELPER __attribute__((unused)) static

/* An errno-style result: on mismatch, say both values and their names. */
#define assert_rc(expr, want) do { \
		int _got = (int)(expr), _want = (want); \
		if (_got != _want) \
			fail_msg("%s = %d (%s), want %d (%s)", #expr, _got, \
				 _got < 0 ? strerror(-_got) : "ok", _want, \
				 _want < 0 ? strerror(-_want) : "ok"); \
	} while (0)

/* The tests run on the real ring: skip (77) where io_uring cannot be set
 * up, but under CI (CI=true) a skip is a failure (STYLE.md). */
UNIT_HELPER void unit_require_io_uring(void)
{
	struct io_uring ring;
	const char *ci = getenv("CI");
	int r = io_uring_queue_init(4, &ring, 0);

	if (r == 0) {
		io_uring_queue_exit(&ring);
		return;
	}
	fprintf(stderr, "io_uring unavailable: %s: %s\n", strerror(-r),
		ci && strcmp(ci, "true") == 0 ? "failing under CI" : "skipped");
	exit(ci && strcmp(ci, "true") == 0 ? EXIT_FAILURE : 77);
}

/* KILN_UNIT_ONLY=GLOB runs only the tests whose names match, and
 * KILN_UNIT_SKIP=GLOB skips those that match: e.g. KILN_UNIT_SKIP='test_bug_*'
 * leaves out the tests that show engine bugs not fixed yet. */
UNIT_HELPER void unit_filters(void)
{
	const char *only = getenv("KILN_UNIT_ONLY"), *skip = getenv("KILN_UNIT_SKIP");

	if (only && *only)
		cmocka_set_test_filter(only);
	if (skip && *skip)
		cmocka_set_skip_filter(skip);
}

UNIT_HELPER int unit_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

UNIT_HELPER void unit_rm_rf(const char *path)
{
	nftw(path, unit_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory under the current one (tests/run-unit runs each
 * binary in its own temporary directory). */
UNIT_HELPER void unit_mkdtemp(char dir[64], const char *what)
{
	snprintf(dir, 64, "%s.XXXXXX", what);
	if (!mkdtemp(dir))
		fail_msg("mkdtemp %s: %s", dir, strerror(errno));
}

/* A store of its own with the us-east-1 region open. */
struct unit_store {
	char dir[64];
	struct kiln_store *store;
	struct kiln_region *region;
};

UNIT_HELPER struct unit_store *unit_store_new(uint32_t chunk_size)
{
	struct kiln_store_options o = { .chunk_size = chunk_size };
	struct unit_store *u = calloc(1, sizeof *u);

	assert_non_null(u);
	unit_mkdtemp(u->dir, "store");
	assert_rc(kiln_store_init(u->dir, &o), 0);
	assert_rc(kiln_store_open(u->dir, &u->store), 0);
	assert_rc(kiln_region_open(u->store, "us-east-1", &u->region), 0);
	return u;
}

UNIT_HELPER void unit_store_free(struct unit_store *u)
{
	if (!u)
		return;
	kiln_region_close(u->region);
	kiln_store_close(u->store);
	unit_rm_rf(u->dir);
	free(u);
}

/* A path inside the store: "DIR/regions/us-east-1/" + rel. */
UNIT_HELPER void unit_region_path(const struct unit_store *u, const char *rel, char *out,
				  size_t cap)
{
	snprintf(out, cap, "%s/regions/us-east-1/%s", u->dir, rel);
}

/* Deterministic bytes that do not compress (splitmix64 of seed). */
UNIT_HELPER void unit_fill_random(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < len; i += 8) {
		uint64_t z = (x += 0x9e3779b97f4a7c15ull);

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		memcpy(p + i, &z, len - i < 8 ? len - i : 8);
	}
}

/* Deterministic bytes that compress well. */
UNIT_HELPER void unit_fill_text(void *buf, size_t len, uint64_t seed)
{
	char *p = buf;

	for (size_t i = 0; i < len; i++)
		p[i] = (char)('a' + (char)((i / 7 + seed) % 26));
}

/* Overwrite bytes of a file in place. */
UNIT_HELPER void unit_pwrite_file(const char *path, const void *buf, size_t len, off_t off)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		fail_msg("open %s: %s", path, strerror(errno));
	assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

UNIT_HELPER off_t unit_file_size(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -1;
	return st.st_size;
}

#endif /* KILN_UNIT_H */
