/* SPDX-License-Identifier: MIT */
/* test-vmap.c: the volume map (engine/vmap.c): create, set/sync/reopen,
 * one writer at a time, DESIGN rule 3 after a crash, and damage.
 *
 * Layout (vmap.c): a 4096-byte header (magic "KILNVMAP", le32 version,
 * le32 flags with CLEAN = 1, le64 size, le32 chunk_size, le64 nchunks at
 * 32, volume id at 40, parent id at 72, XXH64 canonical of the first
 * 4088 bytes in the last 8), then one byte per chunk. */
#include "unit.h"

#include <sys/wait.h>
#include <xxhash.h>

#include "internal.h"

#define HEADER_SIZE 4096
#define CS KILN_MIN_CHUNK_SIZE
#define NAME "vol-0123456789abcdef0.map"
#define VOLUME_ID "vol-0123456789abcdef0"
#define SNAP_ID "snap-fedcba98765432100"

struct fixture {
	char dir[64];
	int dirfd;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	assert_non_null(f);
	unit_mkdtemp(f->dir, "volumes");
	f->dirfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(f->dirfd >= 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	close(f->dirfd);
	unit_rm_rf(f->dir);
	free(f);
	return 0;
}

static void path_of(const struct fixture *f, const char *name, char *out, size_t cap)
{
	snprintf(out, cap, "%s/%s", f->dir, name);
}

static void assert_entries(const struct vmap *m, const uint8_t *want)
{
	for (uint64_t i = 0; i < m->nchunks; i++)
		if (m->entries[i] != want[i])
			fail_msg("chunk %llu: entry 0x%02x, want 0x%02x", (unsigned long long)i,
				 m->entries[i], want[i]);
}

static uint8_t entry(enum chunk_state s, bool dirty)
{
	return (uint8_t)s | (dirty ? VMAP_DIRTY : 0);
}

/* vmap_open must fail with want and leave its out-parameter alone. */
static void assert_open_fails(const struct fixture *f, bool writable, int want)
{
	struct vmap *sentinel = (struct vmap *)&sentinel;
	struct vmap *m = sentinel;

	int r = vmap_open(f->dirfd, NAME, writable, &m);

	if (r == 0 && m != sentinel)
		vmap_close(m);
	assert_rc(r, want);
	assert_ptr_equal(m, sentinel);
}

static void test_create_blank(void **state)
{
	struct fixture *f = *state;
	const uint64_t size = 10 * (uint64_t)CS + 5;
	struct vmap *m = NULL;
	char path[256];

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, size, CS, NULL), 0);
	path_of(f, NAME, path, sizeof path);
	assert_int_equal(unit_file_size(path), HEADER_SIZE + 11);
	path_of(f, "." NAME ".tmp", path, sizeof path);
	assert_int_equal(unit_file_size(path), -1);         /* no temp file left */

	assert_rc(vmap_open(f->dirfd, NAME, false, &m), 0);
	assert_int_equal(m->size, size);
	assert_int_equal(m->chunk_size, CS);
	assert_int_equal(m->nchunks, 11);
	assert_string_equal(m->volume_id, VOLUME_ID);
	assert_string_equal(m->parent_id, "");
	assert_false(m->writable);
	assert_false(m->was_unclean);
	for (uint64_t i = 0; i < m->nchunks; i++) {
		assert_int_equal(vmap_state(m, i), CHUNK_ZERO);
		assert_false(vmap_dirty(m, i));
	}
	assert_rc(vmap_close(m), 0);
}

static void test_create_from_manifest(void **state)
{
	struct fixture *f = *state;
	struct manifest *base = manifest_new(8 * (uint64_t)CS - 100, CS);
	struct vmap *m = NULL;
	static const bool has_data[8] = { true, false, true, true, false, false, true, false };

	/* The volume is larger than its snapshot: chunks past the
	 * manifest's end are ZERO. */
	assert_non_null(base);
	snprintf(base->snapshot_id, sizeof base->snapshot_id, SNAP_ID);
	for (uint64_t i = 0; i < 8; i++)
		if (has_data[i])
			unit_fill_random(base->ids[i], CHUNK_ID_SIZE, i + 1);
	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 12 * (uint64_t)CS, CS, base), 0);
	assert_rc(vmap_open(f->dirfd, NAME, false, &m), 0);
	assert_int_equal(m->nchunks, 12);
	assert_string_equal(m->parent_id, SNAP_ID);
	for (uint64_t i = 0; i < m->nchunks; i++) {
		assert_int_equal(vmap_state(m, i), i < 8 && has_data[i] ? CHUNK_BASE : CHUNK_ZERO);
		assert_false(vmap_dirty(m, i));
	}
	assert_rc(vmap_close(m), 0);
	manifest_free(base);
}

/* More than two pages of entries, so that page-wise sync is exercised. */
#define BIG_CHUNKS 10000

static void test_set_sync_reopen(void **state)
{
	struct fixture *f = *state;
	static const uint64_t touched[] = { 0, 1, 4095, 4096, 8191, 8192, 9999 };
	uint8_t *want = calloc(BIG_CHUNKS, 1);
	struct vmap *w = NULL, *r = NULL;

	assert_non_null(want);
	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, (uint64_t)BIG_CHUNKS * CS, CS, NULL), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &w), 0);
	assert_true(w->writable);
	assert_false(w->was_unclean);
	for (size_t k = 0; k < ARRAY_SIZE(touched); k++) {
		static const enum chunk_state states[] = { CHUNK_LOCAL, CHUNK_BASE, CHUNK_ZERO };
		enum chunk_state s = states[k % 3];
		bool dirty = k % 2 == 0;

		vmap_set(w, touched[k], s, dirty);
		want[touched[k]] = entry(s, dirty);
		assert_int_equal(vmap_state(w, touched[k]), s);
		assert_int_equal(vmap_dirty(w, touched[k]), dirty);
	}
	assert_rc(vmap_sync(w), 0);

	/* What was synced is on disk while the writer still has it open. */
	assert_rc(vmap_open(f->dirfd, NAME, false, &r), 0);
	assert_entries(r, want);
	assert_rc(vmap_close(r), 0);

	/* Change some back, including to the all-clear value 0. */
	vmap_set(w, 0, CHUNK_ZERO, false);
	want[0] = 0;
	vmap_set(w, 8192, CHUNK_LOCAL, true);
	want[8192] = entry(CHUNK_LOCAL, true);
	assert_rc(vmap_sync(w), 0);
	assert_rc(vmap_open(f->dirfd, NAME, false, &r), 0);
	assert_entries(r, want);
	assert_rc(vmap_close(r), 0);

	assert_rc(vmap_close(w), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &w), 0);
	assert_false(w->was_unclean);
	assert_entries(w, want);
	assert_rc(vmap_close(w), 0);
	free(want);
}

static void test_header_change_persists(void **state)
{
	struct fixture *f = *state;
	struct vmap *w = NULL, *r = NULL;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 3 * (uint64_t)CS, CS, NULL), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &w), 0);
	snprintf(w->parent_id, sizeof w->parent_id, SNAP_ID);
	w->header_dirty = true;
	assert_rc(vmap_sync(w), 0);
	assert_false(w->header_dirty);
	assert_rc(vmap_open(f->dirfd, NAME, false, &r), 0);
	assert_string_equal(r->parent_id, SNAP_ID);
	assert_rc(vmap_close(r), 0);
	assert_rc(vmap_close(w), 0);
}

static void test_second_writer_busy(void **state)
{
	struct fixture *f = *state;
	struct vmap *w = NULL, *r = NULL, *w2 = NULL;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 4 * (uint64_t)CS, CS, NULL), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &w), 0);
	/* The lock belongs to the open file description, so a second open
	 * in this same process stands in for another process. */
	assert_open_fails(f, true, -EBUSY);
	assert_open_fails(f, true, -EBUSY);
	/* Readers are welcome. */
	assert_rc(vmap_open(f->dirfd, NAME, false, &r), 0);
	assert_rc(vmap_close(r), 0);
	/* Closing a reader's descriptor does not drop the writer's lock. */
	assert_open_fails(f, true, -EBUSY);
	assert_rc(vmap_close(w), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &w2), 0);
	assert_rc(vmap_close(w2), 0);
}

/* The child: open for writing, mark chunk 1 LOCAL *clean* and chunk 3
 * LOCAL dirty, sync, and die without vmap_close(). No cmocka here. */
static void crash_child(const struct fixture *f)
{
	struct vmap *m = NULL;

	if (vmap_open(f->dirfd, NAME, true, &m) < 0)
		_exit(10);
	vmap_set(m, 1, CHUNK_LOCAL, false);
	vmap_set(m, 3, CHUNK_LOCAL, true);
	vmap_set(m, 4, CHUNK_BASE, false);
	vmap_set(m, 5, CHUNK_ZERO, true);
	if (vmap_sync(m) < 0)
		_exit(11);
	_exit(0);
}

static void test_crash_makes_local_dirty(void **state)
{
	struct fixture *f = *state;
	uint8_t want[8] = { 0 };
	struct vmap *m = NULL;
	int status;
	pid_t pid;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 8 * (uint64_t)CS, CS, NULL), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		crash_child(f);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	/* The child's sync reached the disk: chunk 1 is LOCAL and clean there. */
	want[1] = entry(CHUNK_LOCAL, false);
	want[3] = entry(CHUNK_LOCAL, true);
	want[4] = entry(CHUNK_BASE, false);
	want[5] = entry(CHUNK_ZERO, true);
	assert_rc(vmap_open(f->dirfd, NAME, false, &m), 0);
	assert_entries(m, want);
	assert_rc(vmap_close(m), 0);

	/* Rule 3: opened for writing, every LOCAL chunk counts as dirty; the
	 * others keep what they had. */
	assert_rc(vmap_open(f->dirfd, NAME, true, &m), 0);
	assert_true(m->was_unclean);
	want[1] = entry(CHUNK_LOCAL, true);
	assert_entries(m, want);
	assert_rc(vmap_close(m), 0);

	/* ... durably: the next open (after a clean close) still has them. */
	assert_rc(vmap_open(f->dirfd, NAME, true, &m), 0);
	assert_false(m->was_unclean);
	assert_entries(m, want);
	assert_rc(vmap_close(m), 0);
}

/* A crash right after the writable open, before any sync: still unclean. */
static void test_crash_before_any_sync(void **state)
{
	struct fixture *f = *state;
	struct vmap *m = NULL;
	int status;
	pid_t pid;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 4 * (uint64_t)CS, CS, NULL), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &m), 0);
	vmap_set(m, 2, CHUNK_LOCAL, false);
	assert_rc(vmap_close(m), 0);            /* clean, with a clean LOCAL chunk */

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (vmap_open(f->dirfd, NAME, true, &m) < 0)
			_exit(10);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	assert_rc(vmap_open(f->dirfd, NAME, true, &m), 0);
	assert_true(m->was_unclean);
	assert_int_equal(vmap_state(m, 2), CHUNK_LOCAL);
	assert_true(vmap_dirty(m, 2));
	assert_false(vmap_dirty(m, 0));
	assert_rc(vmap_close(m), 0);
}

static void test_clean_close_keeps_bits(void **state)
{
	struct fixture *f = *state;
	uint8_t want[6] = { 0 };
	struct vmap *m = NULL;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 6 * (uint64_t)CS, CS, NULL), 0);
	assert_rc(vmap_open(f->dirfd, NAME, true, &m), 0);
	vmap_set(m, 1, CHUNK_LOCAL, false);
	vmap_set(m, 2, CHUNK_LOCAL, true);
	vmap_set(m, 3, CHUNK_ZERO, true);
	vmap_set(m, 4, CHUNK_BASE, false);
	vmap_set(m, 5, CHUNK_BASE, true);
	want[1] = entry(CHUNK_LOCAL, false);
	want[2] = entry(CHUNK_LOCAL, true);
	want[3] = entry(CHUNK_ZERO, true);
	want[4] = entry(CHUNK_BASE, false);
	want[5] = entry(CHUNK_BASE, true);
	assert_rc(vmap_close(m), 0);            /* no explicit sync: close does it */

	for (int pass = 0; pass < 2; pass++) {
		assert_rc(vmap_open(f->dirfd, NAME, true, &m), 0);
		assert_false(m->was_unclean);
		assert_entries(m, want);
		assert_rc(vmap_close(m), 0);
	}
}

static uint8_t *read_header(const struct fixture *f)
{
	char path[256];
	uint8_t *h = malloc(HEADER_SIZE);
	int fd;

	assert_non_null(h);
	path_of(f, NAME, path, sizeof path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, h, HEADER_SIZE, 0), HEADER_SIZE);
	close(fd);
	return h;
}

static void write_at(const struct fixture *f, const void *buf, size_t len, off_t off)
{
	char path[256];

	path_of(f, NAME, path, sizeof path);
	unit_pwrite_file(path, buf, len, off);
}

static void fix_checksum(uint8_t *h)
{
	XXH64_canonical_t sum;

	XXH64_canonicalFromHash(&sum, XXH64(h, HEADER_SIZE - 8, 0));
	memcpy(h + HEADER_SIZE - 8, &sum, 8);
}

static void test_corrupt_header(void **state)
{
	struct fixture *f = *state;
	uint8_t *h;
	struct vmap *m = NULL;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 5 * (uint64_t)CS, CS, NULL), 0);
	h = read_header(f);
	for (size_t off = 0; off < HEADER_SIZE; off++) {
		h[off] ^= 0xff;
		write_at(f, h + off, 1, (off_t)off);
		assert_open_fails(f, false, -EBADMSG);
		assert_open_fails(f, true, -EBADMSG);
		h[off] ^= 0xff;
		write_at(f, h + off, 1, (off_t)off);
	}
	/* restored, it opens */
	assert_rc(vmap_open(f->dirfd, NAME, false, &m), 0);
	assert_rc(vmap_close(m), 0);

	/* the control for fix_checksum(): unchanged, it still opens */
	fix_checksum(h);
	write_at(f, h, HEADER_SIZE, 0);
	assert_rc(vmap_open(f->dirfd, NAME, false, &m), 0);
	assert_rc(vmap_close(m), 0);
	free(h);
}

static void test_inconsistent_header(void **state)
{
	struct fixture *f = *state;
	uint8_t *h, *orig;
	uint32_t v32;
	uint64_t v64;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 5 * (uint64_t)CS, CS, NULL), 0);
	orig = read_header(f);
	h = malloc(HEADER_SIZE);
	assert_non_null(h);

	/* a newer version */
	memcpy(h, orig, HEADER_SIZE);
	v32 = htole32(2);
	memcpy(h + 8, &v32, 4);
	fix_checksum(h);
	write_at(f, h, HEADER_SIZE, 0);
	assert_open_fails(f, false, -EPROTONOSUPPORT);
	assert_open_fails(f, true, -EPROTONOSUPPORT);

	/* a chunk size that is no power of two */
	memcpy(h, orig, HEADER_SIZE);
	v32 = htole32(CS + 512);
	memcpy(h + 24, &v32, 4);
	fix_checksum(h);
	write_at(f, h, HEADER_SIZE, 0);
	assert_open_fails(f, false, -EBADMSG);

	/* nchunks that disagrees with size */
	memcpy(h, orig, HEADER_SIZE);
	v64 = htole64(6);
	memcpy(h + 32, &v64, 8);
	fix_checksum(h);
	write_at(f, h, HEADER_SIZE, 0);
	assert_open_fails(f, false, -EBADMSG);
	free(h);
	free(orig);
}

/* ENGINE BUG (vmap.c, decode_header): nchunks is checked against
 * DIV_ROUND_UP(size, chunk_size), which wraps for a size near 2^64: a map
 * of an exabyte volume with no entries at all is accepted, and the volume
 * then indexes entries[] far out of bounds. */
static void test_bug_huge_size_without_entries(void **state)
{
	struct fixture *f = *state;
	uint8_t *h;
	uint64_t v64;

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 5 * (uint64_t)CS, CS, NULL), 0);
	h = read_header(f);
	v64 = htole64(UINT64_MAX - 100);
	memcpy(h + 16, &v64, 8);
	v64 = 0;                            /* what DIV_ROUND_UP wraps to */
	memcpy(h + 32, &v64, 8);
	fix_checksum(h);
	write_at(f, h, HEADER_SIZE, 0);
	assert_open_fails(f, false, -EBADMSG);
	free(h);
}

static void test_corrupt_entries(void **state)
{
	struct fixture *f = *state;
	static const uint8_t bad[] = { 0x03, 0x83, 0x04, 0x40, 0x10 };
	char path[256];

	assert_rc(vmap_create(f->dirfd, NAME, VOLUME_ID, 5 * (uint64_t)CS, CS, NULL), 0);
	for (size_t k = 0; k < ARRAY_SIZE(bad); k++) {
		uint8_t zero = 0;

		write_at(f, &bad[k], 1, HEADER_SIZE + 3);
		assert_open_fails(f, false, -EBADMSG);
		assert_open_fails(f, true, -EBADMSG);
		write_at(f, &zero, 1, HEADER_SIZE + 3);
	}
	/* fewer entries than the header says */
	path_of(f, NAME, path, sizeof path);
	assert_int_equal(truncate(path, HEADER_SIZE + 4), 0);
	assert_open_fails(f, false, -EBADMSG);
	/* no complete header */
	assert_int_equal(truncate(path, HEADER_SIZE - 1), 0);
	assert_open_fails(f, false, -EBADMSG);
	assert_int_equal(truncate(path, 0), 0);
	assert_open_fails(f, false, -EBADMSG);
}

static void test_missing_is_enoent(void **state)
{
	assert_open_fails(*state, false, -ENOENT);
	assert_open_fails(*state, true, -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		UNIT_TEST(test_create_blank),
		UNIT_TEST(test_create_from_manifest),
		UNIT_TEST(test_set_sync_reopen),
		UNIT_TEST(test_header_change_persists),
		UNIT_TEST(test_second_writer_busy),
		UNIT_TEST(test_crash_makes_local_dirty),
		UNIT_TEST(test_crash_before_any_sync),
		UNIT_TEST(test_clean_close_keeps_bits),
		UNIT_TEST(test_corrupt_header),
		UNIT_TEST(test_inconsistent_header),
		UNIT_TEST(test_bug_huge_size_without_entries),
		UNIT_TEST(test_corrupt_entries),
		UNIT_TEST(test_missing_is_enoent),
	};

	unit_require_io_uring();
	unit_filters();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
