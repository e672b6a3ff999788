/* SPDX-License-Identifier: MIT */
/* test-volume.c: copy-on-write volumes (engine/volume.c) through the
 * public API only: I/O at any offset against a model of the bytes, trim
 * and write-zeroes, bounds, read-only and owner lock, copy-on-write from
 * a snapshot, map status, concurrent writers, incremental snapshots, and
 * a writer that dies without flushing. */
#include "unit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define CS 16384u                   /* the test stores' chunk size */
#define ACCOUNT KILN_DEFAULT_ACCOUNT

static int setup(void **state)
{
	*state = unit_store_new(CS);
	return 0;
}

static int teardown(void **state)
{
	unit_store_free(*state);
	return 0;
}

static struct kiln_region *rg_of(void **state)
{
	return ((struct unit_store *)*state)->region;
}

static void create_blank(struct kiln_region *rg, uint64_t size, char id[KILN_ID_MAX])
{
	assert_rc(kiln_volume_create(rg, ACCOUNT, size, NULL, id), 0);
	assert_true(kiln_id_valid(id, "vol"));
}

static struct kiln_volume *open_volume(struct kiln_region *rg, const char *id, unsigned flags)
{
	struct kiln_volume *v = NULL;

	assert_rc(kiln_volume_open(rg, id, flags, &v), 0);
	return v;
}

/* The whole volume equals model; read once whole and once in odd pieces. */
#define assert_volume_is(v, model) assert_volume_is_at(v, model, __LINE__)
static void assert_volume_is_at(struct kiln_volume *v, const uint8_t *model, int line)
{
	uint64_t size = kiln_volume_size(v);
	uint8_t *buf = malloc(size);
	uint64_t pos = 0, step = 1;

	assert_non_null(buf);
	memset(buf, 0xee, size);
	assert_rc(kiln_volume_read(v, buf, size, 0), 0);
	for (uint64_t i = 0; i < size; i++)
		if (buf[i] != model[i])
			fail_msg("line %d: byte %llu (chunk %llu + %llu): 0x%02x, want 0x%02x",
				 line, (unsigned long long)i, (unsigned long long)(i / CS),
				 (unsigned long long)(i % CS), buf[i], model[i]);
	memset(buf, 0xee, size);
	while (pos < size) {
		uint64_t n = step < size - pos ? step : size - pos;

		assert_rc(kiln_volume_read(v, buf + pos, n, pos), 0);
		pos += n;
		step = step * 3 + 1000;
	}
	assert_memory_equal(buf, model, size);
	free(buf);
}

static void assert_snapshot_is(struct kiln_region *rg, const char *snap, const uint8_t *model,
			       uint64_t size)
{
	uint8_t *buf = malloc(size);

	assert_non_null(buf);
	memset(buf, 0xee, size);
	assert_rc(kiln_snapshot_read(rg, snap, buf, size, 0), 0);
	assert_memory_equal(buf, model, size);
	free(buf);
}

static void write_model(struct kiln_volume *v, uint8_t *model, const void *src, uint64_t count,
			uint64_t offset)
{
	assert_rc(kiln_volume_write(v, src, count, offset), 0);
	memcpy(model + offset, src, count);
}

static void trim_model(struct kiln_volume *v, uint8_t *model, uint64_t count, uint64_t offset,
		       bool trim)
{
	if (trim)
		assert_rc(kiln_volume_trim(v, count, offset), 0);
	else
		assert_rc(kiln_volume_write_zeroes(v, count, offset), 0);
	memset(model + offset, 0, count);
}

/* ---- map status ------------------------------------------------------ */

struct extents {
	struct {
		uint64_t off, len;
		enum kiln_extent_type type;
	} e[64];
	int n;
};

static int collect(void *opaque, uint64_t off, uint64_t len, enum kiln_extent_type type)
{
	struct extents *x = opaque;

	if (x->n == 64)
		return -ENOSPC;
	x->e[x->n].off = off;
	x->e[x->n].len = len;
	x->e[x->n].type = type;
	x->n++;
	return 0;
}

/* The runs of [offset, offset+count): contiguous, maximal, covering it. */
static struct extents map_status(struct kiln_volume *v, uint64_t count, uint64_t offset)
{
	struct extents x = { .n = 0 };
	uint64_t pos = offset;

	assert_rc(kiln_volume_map_status(v, count, offset, collect, &x), 0);
	for (int i = 0; i < x.n; i++) {
		assert_int_equal(x.e[i].off, pos);
		assert_true(x.e[i].len > 0);
		if (i > 0)
			assert_int_not_equal(x.e[i].type, x.e[i - 1].type);
		pos += x.e[i].len;
	}
	assert_int_equal(pos, offset + count);
	return x;
}

static void assert_extent(const struct extents *x, int i, uint64_t off, uint64_t len,
			  enum kiln_extent_type type)
{
	assert_true(i < x->n);
	if (x->e[i].off != off || x->e[i].len != len || x->e[i].type != type)
		fail_msg("extent %d: [%llu, +%llu) type %d, want [%llu, +%llu) type %d", i,
			 (unsigned long long)x->e[i].off, (unsigned long long)x->e[i].len,
			 x->e[i].type, (unsigned long long)off, (unsigned long long)len, type);
}

/* ---- tests ----------------------------------------------------------- */

static void test_blank_reads_zero(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 10 * (uint64_t)CS + 1000;
	uint8_t *zero = calloc(1, size);
	struct kiln_volume_info info;
	struct kiln_volume *v;
	char id[KILN_ID_MAX];

	assert_non_null(zero);
	create_blank(rg, size, id);
	assert_rc(kiln_volume_describe(rg, id, &info), 0);
	assert_string_equal(info.id, id);
	assert_string_equal(info.snapshot_id, "");
	assert_string_equal(info.owner, ACCOUNT);
	assert_string_equal(info.region, "us-east-1");
	assert_int_equal(info.size, size);
	assert_int_equal(info.chunk_size, CS);
	assert_int_equal(info.state, KILN_VOLUME_AVAILABLE);
	assert_int_equal(info.dirty_chunks, 0);

	v = open_volume(rg, id, KILN_OPEN_READONLY);
	assert_int_equal(kiln_volume_size(v), size);
	assert_int_equal(kiln_volume_chunk_size(v), CS);
	assert_string_equal(kiln_volume_id(v), id);
	assert_volume_is(v, zero);
	assert_rc(kiln_volume_close(v), 0);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	assert_volume_is(v, zero);
	assert_rc(kiln_volume_close(v), 0);
	free(zero);
}

static void test_unaligned_rw(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 12 * (uint64_t)CS + 777;     /* a partial last chunk */
	uint8_t *model = calloc(1, size), *src = malloc(4 * CS);
	struct kiln_volume *v;
	char id[KILN_ID_MAX];
	uint64_t x = 12345;

	assert_non_null(model);
	assert_non_null(src);
	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);

	/* across three chunk boundaries, starting and ending mid-chunk */
	unit_fill_random(src, 2 * CS + 300, 1);
	write_model(v, model, src, 2 * CS + 300, CS - 100);
	assert_volume_is(v, model);
	/* one byte, the last byte, the partial last chunk whole */
	write_model(v, model, "\x42", 1, 5 * (uint64_t)CS + 3);
	write_model(v, model, "\x99", 1, size - 1);
	unit_fill_random(src, 777, 2);
	write_model(v, model, src, 777, 12 * (uint64_t)CS);
	assert_volume_is(v, model);

	/* random writes, trims and zeroes over a model */
	for (int k = 0; k < 200; k++) {
		uint64_t off, len;

		x = x * 6364136223846793005ull + 1442695040888963407ull;
		off = (x >> 16) % size;
		len = 1 + (x >> 40) % (3 * CS);
		if (len > size - off)
			len = size - off;
		switch (k % 4) {
		case 0:
		case 1:
			unit_fill_random(src, len, (uint64_t)k + 100);
			write_model(v, model, src, len, off);
			break;
		case 2:
			trim_model(v, model, len, off, true);
			break;
		case 3:
			trim_model(v, model, len, off, false);
			break;
		}
		if (k % 25 == 24)
			assert_volume_is(v, model);
	}
	assert_volume_is(v, model);
	assert_rc(kiln_volume_flush(v), 0);
	assert_rc(kiln_volume_close(v), 0);

	/* what was written is what a later reader sees */
	v = open_volume(rg, id, KILN_OPEN_READONLY);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);
	free(src);
	free(model);
}

static void test_trim_and_write_zeroes(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 8 * (uint64_t)CS;
	uint8_t *model = calloc(1, size), *src = malloc(size);
	struct kiln_volume *v;
	struct extents x;
	char id[KILN_ID_MAX];

	assert_non_null(model);
	assert_non_null(src);
	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	unit_fill_random(src, size, 7);
	write_model(v, model, src, size, 0);

	trim_model(v, model, 100, CS + 10, true);               /* inside chunk 1 */
	trim_model(v, model, CS, 2 * (uint64_t)CS, true);       /* chunk 2 whole */
	trim_model(v, model, CS + 200, 4 * (uint64_t)CS - 100, false);  /* 3 end, 4 whole, 5 head */
	trim_model(v, model, CS, 6 * (uint64_t)CS, false);      /* chunk 6 whole */
	trim_model(v, model, 1, size - 1, true);                /* last byte */
	assert_volume_is(v, model);

	/* whole chunks trimmed or zeroed hold nothing; partly zeroed ones
	 * still hold data */
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 7);
	assert_extent(&x, 0, 0, 2 * (uint64_t)CS, KILN_EXTENT_DATA);
	assert_extent(&x, 1, 2 * (uint64_t)CS, CS, KILN_EXTENT_HOLE);
	assert_extent(&x, 2, 3 * (uint64_t)CS, CS, KILN_EXTENT_DATA);
	assert_extent(&x, 3, 4 * (uint64_t)CS, CS, KILN_EXTENT_HOLE);
	assert_extent(&x, 4, 5 * (uint64_t)CS, CS, KILN_EXTENT_DATA);
	assert_extent(&x, 5, 6 * (uint64_t)CS, CS, KILN_EXTENT_HOLE);
	assert_extent(&x, 6, 7 * (uint64_t)CS, CS, KILN_EXTENT_DATA);

	/* writing into a trimmed chunk: the rest of it reads zero */
	write_model(v, model, "abc", 3, 2 * (uint64_t)CS + 500);
	write_model(v, model, "xyz", 3, 4 * (uint64_t)CS + CS - 3);
	assert_volume_is(v, model);
	/* zeroing what is already zero changes nothing */
	trim_model(v, model, 3 * (uint64_t)CS, 0, true);
	trim_model(v, model, 3 * (uint64_t)CS, 0, false);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);
	v = open_volume(rg, id, KILN_OPEN_READONLY);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);
	free(src);
	free(model);
}

static void test_out_of_range(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 4 * (uint64_t)CS + 10;
	struct kiln_volume *v;
	struct extents x = { .n = 0 };
	char id[KILN_ID_MAX];
	uint8_t buf[64] = { 1 };

	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	assert_rc(kiln_volume_read(v, buf, 2, size - 1), -EINVAL);
	assert_rc(kiln_volume_read(v, buf, 1, size), -EINVAL);
	assert_rc(kiln_volume_read(v, buf, 1, UINT64_MAX), -EINVAL);
	assert_rc(kiln_volume_read(v, buf, UINT64_MAX, 1), -EINVAL);     /* offset + count wraps */
	assert_rc(kiln_volume_write(v, buf, 2, size - 1), -EINVAL);
	assert_rc(kiln_volume_write(v, buf, UINT64_MAX - 5, 10), -EINVAL);
	assert_rc(kiln_volume_write(v, NULL, 1, 0), -EINVAL);
	assert_rc(kiln_volume_trim(v, 2, size - 1), -EINVAL);
	assert_rc(kiln_volume_trim(v, UINT64_MAX, 1), -EINVAL);
	assert_rc(kiln_volume_write_zeroes(v, size + 1, 0), -EINVAL);
	assert_rc(kiln_volume_map_status(v, 2, size - 1, collect, &x), -EINVAL);
	assert_int_equal(x.n, 0);
	/* up to the end is fine, and so is nothing at the end */
	assert_rc(kiln_volume_write(v, buf, 1, size - 1), 0);
	assert_rc(kiln_volume_read(v, buf + 1, 1, size - 1), 0);
	assert_int_equal(buf[1], buf[0]);
	assert_rc(kiln_volume_read(v, buf, 0, size), 0);
	assert_rc(kiln_volume_write(v, buf, 0, size), 0);
	assert_rc(kiln_volume_trim(v, 0, size), 0);
	/* a failed request changed nothing */
	{
		uint8_t *model = calloc(1, size);

		assert_non_null(model);
		model[size - 1] = 1;
		assert_volume_is(v, model);
		free(model);
	}
	assert_rc(kiln_volume_close(v), 0);
}

static void test_readonly_refuses_writes(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 2 * (uint64_t)CS;
	struct kiln_volume *v;
	char id[KILN_ID_MAX], snap[KILN_ID_MAX];
	uint8_t *model = calloc(1, size);

	assert_non_null(model);
	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	write_model(v, model, "data", 4, 100);
	assert_rc(kiln_volume_close(v), 0);

	v = open_volume(rg, id, KILN_OPEN_READONLY);
	assert_rc(kiln_volume_write(v, "nope", 4, 0), -EROFS);
	assert_rc(kiln_volume_trim(v, CS, 0), -EROFS);
	assert_rc(kiln_volume_write_zeroes(v, 4, 100), -EROFS);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, snap), -EROFS);
	assert_rc(kiln_volume_flush(v), 0);
	assert_volume_is(v, model);
	/* a reader does not take the owner lock */
	{
		struct kiln_volume *w = open_volume(rg, id, KILN_OPEN_WRITE);

		assert_rc(kiln_volume_close(w), 0);
	}
	assert_rc(kiln_volume_close(v), 0);
	free(model);
}

static void test_second_writer_busy(void **state)
{
	struct kiln_region *rg = rg_of(state);
	struct kiln_volume *v, *w = NULL, *r;
	struct kiln_volume_info info;
	char id[KILN_ID_MAX];

	create_blank(rg, 3 * (uint64_t)CS, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	assert_rc(kiln_volume_open(rg, id, KILN_OPEN_WRITE, &w), -EBUSY);
	assert_null(w);
	assert_rc(kiln_volume_delete(rg, id), -EBUSY);
	assert_rc(kiln_volume_describe(rg, id, &info), 0);
	assert_int_equal(info.state, KILN_VOLUME_IN_USE);
	r = open_volume(rg, id, KILN_OPEN_READONLY);
	assert_rc(kiln_volume_close(r), 0);
	/* still owned after a reader came and went */
	assert_rc(kiln_volume_open(rg, id, KILN_OPEN_WRITE, &w), -EBUSY);
	assert_rc(kiln_volume_close(v), 0);

	assert_rc(kiln_volume_describe(rg, id, &info), 0);
	assert_int_equal(info.state, KILN_VOLUME_AVAILABLE);
	w = open_volume(rg, id, KILN_OPEN_WRITE);
	assert_rc(kiln_volume_close(w), 0);
	assert_rc(kiln_volume_delete(rg, id), 0);
	assert_rc(kiln_volume_open(rg, id, KILN_OPEN_READONLY, &w), -ENOENT);
}

static void test_map_status_blank(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 10 * (uint64_t)CS + 100;
	struct kiln_volume *v;
	struct extents x;
	char id[KILN_ID_MAX];
	uint8_t *src = malloc(CS);

	assert_non_null(src);
	unit_fill_random(src, CS, 3);
	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 1);
	assert_extent(&x, 0, 0, size, KILN_EXTENT_HOLE);

	/* part of chunk 2; the end of 3 and head of 4; all of 7; the last
	 * byte, in the partial chunk 10 */
	assert_rc(kiln_volume_write(v, src, 10, 2 * (uint64_t)CS + 5), 0);
	assert_rc(kiln_volume_write(v, src, 20, 4 * (uint64_t)CS - 10), 0);
	assert_rc(kiln_volume_write(v, src, CS, 7 * (uint64_t)CS), 0);
	assert_rc(kiln_volume_write(v, src, 1, size - 1), 0);
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 6);
	assert_extent(&x, 0, 0, 2 * (uint64_t)CS, KILN_EXTENT_HOLE);
	assert_extent(&x, 1, 2 * (uint64_t)CS, 3 * (uint64_t)CS, KILN_EXTENT_DATA);
	assert_extent(&x, 2, 5 * (uint64_t)CS, 2 * (uint64_t)CS, KILN_EXTENT_HOLE);
	assert_extent(&x, 3, 7 * (uint64_t)CS, CS, KILN_EXTENT_DATA);
	assert_extent(&x, 4, 8 * (uint64_t)CS, 2 * (uint64_t)CS, KILN_EXTENT_HOLE);
	assert_extent(&x, 5, 10 * (uint64_t)CS, 100, KILN_EXTENT_DATA);

	/* clipped to an unaligned range */
	x = map_status(v, 3 * (uint64_t)CS, CS + 7);
	assert_int_equal(x.n, 2);
	assert_extent(&x, 0, CS + 7, CS - 7, KILN_EXTENT_HOLE);
	assert_extent(&x, 1, 2 * (uint64_t)CS, 2 * (uint64_t)CS + 7, KILN_EXTENT_DATA);
	x = map_status(v, 5, 7 * (uint64_t)CS + 3);
	assert_int_equal(x.n, 1);
	assert_extent(&x, 0, 7 * (uint64_t)CS + 3, 5, KILN_EXTENT_DATA);
	x = map_status(v, 0, 3);
	assert_int_equal(x.n, 0);
	/* the callback stops the walk */
	{
		struct extents y = { .n = 64 };

		assert_rc(kiln_volume_map_status(v, size, 0, collect, &y), -ENOSPC);
	}
	/* the same after close, from a reader */
	assert_rc(kiln_volume_close(v), 0);
	v = open_volume(rg, id, KILN_OPEN_READONLY);
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 6);
	assert_extent(&x, 3, 7 * (uint64_t)CS, CS, KILN_EXTENT_DATA);
	assert_rc(kiln_volume_close(v), 0);
	free(src);
}

/* A blank volume with data in the chunks marked, snapshotted. */
static void make_source(struct kiln_region *rg, uint64_t size, const bool *data, uint8_t *model,
			char vol[KILN_ID_MAX], char snap[KILN_ID_MAX])
{
	struct kiln_volume *v;

	memset(model, 0, size);
	create_blank(rg, size, vol);
	v = open_volume(rg, vol, KILN_OPEN_WRITE);
	for (uint64_t i = 0; i * CS < size; i++) {
		uint64_t len = size - i * CS < CS ? size - i * CS : CS;

		if (!data[i])
			continue;
		unit_fill_random(model + i * CS, len, 1000 + i);
		assert_rc(kiln_volume_write(v, model + i * CS, len, i * CS), 0);
	}
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, "source", NULL, NULL, snap), 0);
	assert_rc(kiln_volume_close(v), 0);
	assert_true(kiln_id_valid(snap, "snap"));
}

static uint64_t overlay_bytes(struct kiln_region *rg)
{
	struct kiln_region_stats st;

	assert_rc(kiln_region_stats(rg, &st), 0);
	return st.overlay_bytes;
}

static void test_cow_volume(void **state)
{
	struct kiln_region *rg = rg_of(state);
	static const bool data[6] = { true, true, true, false, true, false };
	const uint64_t size = 6 * (uint64_t)CS;
	uint8_t *model = malloc(size), *orig = malloc(size), *src = malloc(CS);
	char srcvol[KILN_ID_MAX], snap[KILN_ID_MAX], cow[KILN_ID_MAX], snap2[KILN_ID_MAX];
	struct kiln_volume_info info;
	struct kiln_snapshot_info si;
	struct kiln_volume *v;
	struct extents x;
	uint64_t before;

	assert_non_null(model);
	assert_non_null(orig);
	assert_non_null(src);
	make_source(rg, size, data, orig, srcvol, snap);
	memcpy(model, orig, size);
	assert_snapshot_is(rg, snap, orig, size);

	assert_rc(kiln_volume_create(rg, ACCOUNT, size, snap, cow), 0);
	assert_rc(kiln_volume_describe(rg, cow, &info), 0);
	assert_string_equal(info.snapshot_id, snap);
	assert_int_equal(info.size, size);
	assert_int_equal(info.dirty_chunks, 0);
	before = overlay_bytes(rg);

	v = open_volume(rg, cow, KILN_OPEN_WRITE);
	assert_volume_is(v, model);
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 4);
	assert_extent(&x, 0, 0, 3 * (uint64_t)CS, KILN_EXTENT_DATA);
	assert_extent(&x, 1, 3 * (uint64_t)CS, CS, KILN_EXTENT_ZERO);
	assert_extent(&x, 2, 4 * (uint64_t)CS, CS, KILN_EXTENT_DATA);
	assert_extent(&x, 3, 5 * (uint64_t)CS, CS, KILN_EXTENT_ZERO);

	/* 100 bytes into chunk 1: only that chunk is copied up */
	unit_fill_random(src, 100, 77);
	write_model(v, model, src, 100, CS + 1234);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_flush(v), 0);
	assert_rc(kiln_volume_describe(rg, cow, &info), 0);
	assert_int_equal(info.dirty_chunks, 1);
	assert_int_equal(info.state, KILN_VOLUME_IN_USE);
	assert_in_range(overlay_bytes(rg) - before, CS, 2 * (uint64_t)CS - 1);
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 4);
	assert_extent(&x, 0, 0, 3 * (uint64_t)CS, KILN_EXTENT_DATA);

	/* the snapshot, and the volume it came from, did not change */
	assert_snapshot_is(rg, snap, orig, size);
	{
		struct kiln_volume *s = open_volume(rg, srcvol, KILN_OPEN_READONLY);

		assert_volume_is(s, orig);
		assert_rc(kiln_volume_close(s), 0);
	}

	/* more kinds of write over base chunks: a whole chunk, zeroes into
	 * part of one, a whole-chunk trim, and data into a zero chunk */
	unit_fill_random(src, CS, 78);
	write_model(v, model, src, CS, 2 * (uint64_t)CS);
	trim_model(v, model, 50, 4 * (uint64_t)CS + 10, false);
	trim_model(v, model, CS, 0, true);
	write_model(v, model, src, 10, 3 * (uint64_t)CS + 5);
	assert_volume_is(v, model);
	assert_snapshot_is(rg, snap, orig, size);
	x = map_status(v, size, 0);
	assert_int_equal(x.n, 3);
	assert_extent(&x, 0, 0, CS, KILN_EXTENT_ZERO);
	assert_extent(&x, 1, CS, 4 * (uint64_t)CS, KILN_EXTENT_DATA);
	assert_extent(&x, 2, 5 * (uint64_t)CS, CS, KILN_EXTENT_ZERO);

	/* a snapshot of it reads what the volume reads */
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, "cow", NULL, NULL, snap2), 0);
	assert_rc(kiln_snapshot_describe(rg, snap2, &si), 0);
	assert_int_equal(si.state, KILN_SNAPSHOT_COMPLETED);
	assert_string_equal(si.volume_id, cow);
	assert_int_equal(si.chunks_total, 6);
	assert_int_equal(si.chunks_changed, 5);       /* 0 (trimmed to zero), and 1 to 4 rewritten */
	assert_int_equal(si.chunks_data, 4);          /* 1, 2, 3, 4 */
	assert_snapshot_is(rg, snap2, model, size);
	assert_rc(kiln_volume_close(v), 0);
	v = open_volume(rg, cow, KILN_OPEN_READONLY);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);
	assert_snapshot_is(rg, snap, orig, size);
	free(src);
	free(orig);
	free(model);
}

static void test_cow_size_defaults_and_grows(void **state)
{
	struct kiln_region *rg = rg_of(state);
	static const bool data[3] = { true, false, true };
	const uint64_t size = 2 * (uint64_t)CS + 300;         /* partial last chunk */
	const uint64_t bigger = 5 * (uint64_t)CS;
	uint8_t *orig = malloc(size), *model = calloc(1, bigger);
	char srcvol[KILN_ID_MAX], snap[KILN_ID_MAX], cow[KILN_ID_MAX];
	struct kiln_volume_info info;
	struct kiln_volume *v;
	struct extents x;

	assert_non_null(orig);
	assert_non_null(model);
	make_source(rg, size, data, orig, srcvol, snap);

	/* size 0: the snapshot's size (kiln.h) */
	assert_rc(kiln_volume_create(rg, ACCOUNT, 0, snap, cow), 0);
	assert_rc(kiln_volume_describe(rg, cow, &info), 0);
	assert_int_equal(info.size, size);
	/* smaller than the snapshot: no */
	assert_rc(kiln_volume_create(rg, ACCOUNT, size - 1, snap, cow), -EINVAL);

	/* larger: the snapshot, then zeroes */
	assert_rc(kiln_volume_create(rg, ACCOUNT, bigger, snap, cow), 0);
	v = open_volume(rg, cow, KILN_OPEN_WRITE);
	assert_int_equal(kiln_volume_size(v), bigger);
	memcpy(model, orig, size);
	assert_volume_is(v, model);
	x = map_status(v, bigger, 0);
	assert_int_equal(x.n, 4);
	assert_extent(&x, 0, 0, CS, KILN_EXTENT_DATA);
	assert_extent(&x, 1, CS, CS, KILN_EXTENT_ZERO);
	assert_extent(&x, 2, 2 * (uint64_t)CS, CS, KILN_EXTENT_DATA);
	assert_extent(&x, 3, 3 * (uint64_t)CS, 2 * (uint64_t)CS, KILN_EXTENT_HOLE);
	/* the old partial chunk is a whole one now: its tail reads zero
	 * and takes writes */
	write_model(v, model, "tail", 4, 3 * (uint64_t)CS - 4);
	write_model(v, model, "more", 4, 4 * (uint64_t)CS);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);
	free(model);
	free(orig);
}

/* ---- batches --------------------------------------------------------- */

static struct kiln_io io(int op, void *buf, uint64_t count, uint64_t offset)
{
	return (struct kiln_io){ .op = op, .buf = buf, .count = count, .offset = offset,
				 .result = 12345 };
}

static void test_submit_batch(void **state)
{
	struct kiln_region *rg = rg_of(state);
	static const bool data[8] = { true, true, false, true, true, true, false, false };
	const uint64_t size = 8 * (uint64_t)CS;
	uint8_t *model = malloc(size), *orig = malloc(size), *a = malloc(2 * CS), *b = malloc(CS);
	uint8_t *r1 = malloc(3 * CS), *r2 = malloc(CS), *r3 = malloc(100);
	char srcvol[KILN_ID_MAX], snap[KILN_ID_MAX], cow[KILN_ID_MAX];
	struct kiln_io ios[KILN_IO_BATCH_MAX + 1];
	struct kiln_volume *v;

	assert_non_null(model);
	assert_non_null(orig);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(r1);
	assert_non_null(r2);
	assert_non_null(r3);
	make_source(rg, size, data, orig, srcvol, snap);
	assert_rc(kiln_volume_create(rg, ACCOUNT, 0, snap, cow), 0);
	v = open_volume(rg, cow, KILN_OPEN_WRITE);
	memcpy(model, orig, size);

	/* writes that copy up (chunk 0/1), fill a zero chunk in part (2),
	 * replace a base chunk whole (4); reads of base chunks; and
	 * requests that fail alone */
	unit_fill_random(a, 2 * CS, 50);
	unit_fill_random(b, CS, 51);
	ios[0] = io(KILN_IO_WRITE, a, CS + 100, 200);
	ios[1] = io(KILN_IO_WRITE, b, 300, 2 * (uint64_t)CS + 7);
	ios[2] = io(KILN_IO_WRITE, b, CS, 4 * (uint64_t)CS);
	ios[3] = io(KILN_IO_READ, r1, 3 * (uint64_t)CS, 5 * (uint64_t)CS);   /* 5, 6, 7 */
	ios[4] = io(KILN_IO_WRITE, a, 2, size - 1);                          /* past the end */
	ios[5] = io(7, r3, 10, 0);                                           /* no such op */
	/* the end of 2 and the start of 3: not what ios[1] writes, so the
	 * batch's lack of order does not matter */
	ios[6] = io(KILN_IO_READ, r3, 100, 3 * (uint64_t)CS - 50);
	assert_rc(kiln_volume_submit(v, ios, 7), 0);
	assert_rc(ios[0].result, 0);
	assert_rc(ios[1].result, 0);
	assert_rc(ios[2].result, 0);
	assert_rc(ios[3].result, 0);
	assert_rc(ios[4].result, -EINVAL);
	assert_rc(ios[5].result, -EINVAL);
	assert_rc(ios[6].result, 0);
	assert_memory_equal(r1, orig + 5 * CS, 3 * CS);
	assert_memory_equal(r3, orig + 3 * CS - 50, 100);
	memcpy(model + 200, a, CS + 100);
	memcpy(model + 2 * CS + 7, b, 300);
	memcpy(model + 4 * CS, b, CS);
	assert_volume_is(v, model);

	/* reads across LOCAL, BASE and ZERO chunks, and adjacent LOCAL ones */
	ios[0] = io(KILN_IO_READ, r1, 3 * (uint64_t)CS, 0);
	ios[1] = io(KILN_IO_READ, r2, CS, 4 * (uint64_t)CS - CS / 2);
	ios[2] = io(KILN_IO_READ, r3, 0, size);
	assert_rc(kiln_volume_submit(v, ios, 3), 0);
	assert_rc(ios[0].result, 0);
	assert_rc(ios[1].result, 0);
	assert_rc(ios[2].result, 0);
	assert_memory_equal(r1, model, 3 * CS);
	assert_memory_equal(r2, model + 4 * CS - CS / 2, CS);

	/* too many: nothing is done, nothing reported */
	for (int k = 0; k < KILN_IO_BATCH_MAX + 1; k++)
		ios[k] = io(KILN_IO_WRITE, a, 1, (uint64_t)k);
	assert_rc(kiln_volume_submit(v, ios, KILN_IO_BATCH_MAX + 1), -E2BIG);
	assert_int_equal(ios[0].result, 12345);
	assert_rc(kiln_volume_submit(v, ios, 0), 0);
	assert_volume_is(v, model);
	/* exactly the most */
	for (int k = 0; k < KILN_IO_BATCH_MAX; k++)
		ios[k] = io(KILN_IO_WRITE, a + k, 1, (uint64_t)k * 101);
	assert_rc(kiln_volume_submit(v, ios, KILN_IO_BATCH_MAX), 0);
	for (int k = 0; k < KILN_IO_BATCH_MAX; k++) {
		assert_rc(ios[k].result, 0);
		model[k * 101] = a[k];
	}
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);

	/* read-only: reads work, writes are -EROFS one by one */
	v = open_volume(rg, cow, KILN_OPEN_READONLY);
	ios[0] = io(KILN_IO_WRITE, a, 10, 0);
	ios[1] = io(KILN_IO_READ, r2, CS, 0);
	assert_rc(kiln_volume_submit(v, ios, 2), 0);
	assert_rc(ios[0].result, -EROFS);
	assert_rc(ios[1].result, 0);
	assert_memory_equal(r2, model, CS);
	assert_volume_is(v, model);
	assert_rc(kiln_volume_close(v), 0);
	free(r3);
	free(r2);
	free(r1);
	free(b);
	free(a);
	free(orig);
	free(model);
}

/* ---- concurrent writers ---------------------------------------------- */

#define NTHREADS 4
#define NCHUNKS 32
#define ROUNDS 3
#define QUARTER (CS / NTHREADS)

struct writer {
	struct kiln_volume *v;
	pthread_barrier_t *step;        /* NULL, or met before each chunk */
	int round;
	int t;
	int error;
	char what[64];
};

static void quarter_data(uint8_t *buf, int t, uint64_t chunk, int round)
{
	unit_fill_random(buf, QUARTER, (uint64_t)round << 32 | chunk << 8 | (uint64_t)t);
}

/* Thread t owns bytes [t*QUARTER, (t+1)*QUARTER) of every chunk and
 * writes them, in two pieces, for one round: with a barrier before each
 * chunk (all threads on the same chunk at once), or in an order of its
 * own. No cmocka here. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[QUARTER];

	for (uint64_t k = 0; k < NCHUNKS; k++) {
		uint64_t chunk = w->step ? k
			: (k * (uint64_t)(2 * w->t + 1) + (uint64_t)w->t) % NCHUNKS;
		uint64_t off = chunk * CS + (uint64_t)w->t * QUARTER;
		int r;

		if (w->step)
			pthread_barrier_wait(w->step);
		if (w->error)
			continue;               /* but keep meeting the others */
		quarter_data(buf, w->t, chunk, w->round);
		r = kiln_volume_write(w->v, buf, QUARTER / 2, off);
		if (r == 0)
			r = kiln_volume_write(w->v, buf + QUARTER / 2, QUARTER / 2,
					      off + QUARTER / 2);
		if (r < 0) {
			w->error = r;
			snprintf(w->what, sizeof w->what, "write chunk %llu round %d",
				 (unsigned long long)chunk, w->round);
		}
	}
	return NULL;
}

static void run_writers(struct kiln_volume *v, int round, bool lockstep, uint8_t *model)
{
	struct writer w[NTHREADS];
	pthread_t tid[NTHREADS];
	pthread_barrier_t step;

	assert_int_equal(pthread_barrier_init(&step, NULL, NTHREADS), 0);
	for (int t = 0; t < NTHREADS; t++) {
		w[t] = (struct writer){ .v = v, .step = lockstep ? &step : NULL, .round = round,
					.t = t };
		assert_int_equal(pthread_create(&tid[t], NULL, writer_main, &w[t]), 0);
	}
	for (int t = 0; t < NTHREADS; t++)
		assert_int_equal(pthread_join(tid[t], NULL), 0);
	pthread_barrier_destroy(&step);
	for (int t = 0; t < NTHREADS; t++)
		if (w[t].error)
			fail_msg("thread %d: %s: %s", t, w[t].what, strerror(-w[t].error));
	for (uint64_t c = 0; c < NCHUNKS; c++)
		for (int t = 0; t < NTHREADS; t++)
			quarter_data(model + c * CS + (uint64_t)t * QUARTER, t, c, round);
}

static void test_concurrent_writers(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = NCHUNKS * (uint64_t)CS;
	bool data[NCHUNKS];
	uint8_t *model = malloc(size), *orig = malloc(size);
	char srcvol[KILN_ID_MAX], snap[KILN_ID_MAX], cow[KILN_ID_MAX], snap2[KILN_ID_MAX];
	struct kiln_volume_info info;
	struct kiln_snapshot_info si;
	struct kiln_volume *v;

	assert_non_null(model);
	assert_non_null(orig);
	for (int i = 0; i < NCHUNKS; i++)
		data[i] = i % 4 != 3;             /* mostly BASE, some ZERO chunks */
	make_source(rg, size, data, orig, srcvol, snap);
	assert_rc(kiln_volume_create(rg, ACCOUNT, 0, snap, cow), 0);
	v = open_volume(rg, cow, KILN_OPEN_WRITE);

	/* Round 0: every BASE chunk gets four first writes at once, which
	 * race to copy it up; all four quarters must land. */
	run_writers(v, 0, true, model);
	assert_volume_is(v, model);
	/* Later rounds: the chunks are LOCAL, threads in their own orders. */
	for (int round = 1; round < ROUNDS; round++) {
		run_writers(v, round, false, model);
		assert_volume_is(v, model);
	}
	assert_rc(kiln_volume_flush(v), 0);
	assert_rc(kiln_volume_describe(rg, cow, &info), 0);
	assert_int_equal(info.dirty_chunks, NCHUNKS);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, snap2), 0);
	assert_rc(kiln_snapshot_describe(rg, snap2, &si), 0);
	assert_int_equal(si.chunks_changed, NCHUNKS);
	assert_int_equal(si.chunks_new, NCHUNKS);
	assert_rc(kiln_volume_close(v), 0);
	assert_snapshot_is(rg, snap2, model, size);
	assert_snapshot_is(rg, snap, orig, size);
	free(orig);
	free(model);
}

/* ---- snapshots ------------------------------------------------------- */

static void test_incremental_snapshot(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 16 * (uint64_t)CS;
	uint8_t *model = calloc(1, size), *model1 = malloc(size), *src = malloc(CS);
	char id[KILN_ID_MAX], s1[KILN_ID_MAX], s2[KILN_ID_MAX], s3[KILN_ID_MAX];
	struct kiln_snapshot_info si;
	struct kiln_volume_info info;
	struct kiln_volume *v;

	assert_non_null(model);
	assert_non_null(model1);
	assert_non_null(src);
	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	for (uint64_t i = 0; i < 8; i++) {
		unit_fill_random(src, CS, 2000 + i);
		write_model(v, model, src, CS, i * CS);
	}
	assert_rc(kiln_volume_flush(v), 0);
	assert_rc(kiln_volume_describe(rg, id, &info), 0);
	assert_int_equal(info.dirty_chunks, 8);

	assert_rc(kiln_volume_snapshot(v, ACCOUNT, "first", NULL, NULL, s1), 0);
	assert_rc(kiln_snapshot_describe(rg, s1, &si), 0);
	assert_string_equal(si.volume_id, id);
	assert_string_equal(si.parent_id, "");
	assert_string_equal(si.description, "first");
	assert_string_equal(si.owner, ACCOUNT);
	assert_int_equal(si.size, size);
	assert_int_equal(si.chunk_size, CS);
	assert_int_equal(si.state, KILN_SNAPSHOT_COMPLETED);
	assert_int_equal(si.chunks_total, 16);
	assert_int_equal(si.chunks_data, 8);
	assert_int_equal(si.chunks_changed, 8);
	assert_int_equal(si.chunks_new, 8);
	assert_in_range(si.bytes_new_stored, 8 * (uint64_t)CS, 8 * (uint64_t)CS + 8 * 64);
	assert_rc(kiln_volume_describe(rg, id, &info), 0);
	assert_int_equal(info.dirty_chunks, 0);
	assert_string_equal(info.last_snapshot_id, s1);
	memcpy(model1, model, size);

	/* new bytes in chunk 1, chunk 0's bytes copied into chunk 9, chunk 2
	 * trimmed, and chunk 5 rewritten with what it already holds */
	unit_fill_random(src, 10, 3000);
	write_model(v, model, src, 10, CS + 20);
	write_model(v, model, model, CS, 9 * (uint64_t)CS);
	trim_model(v, model, CS, 2 * (uint64_t)CS, true);
	memcpy(src, model + 5 * CS, CS);
	write_model(v, model, src, CS, 5 * (uint64_t)CS);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, "second", NULL, NULL, s2), 0);
	assert_rc(kiln_snapshot_describe(rg, s2, &si), 0);
	assert_string_equal(si.parent_id, s1);
	assert_int_equal(si.chunks_changed, 3);        /* 1, 5, 9: read and hashed */
	assert_int_equal(si.chunks_new, 1);            /* only 1's bytes are new */
	assert_in_range(si.bytes_new_stored, CS, CS + 64);
	assert_int_equal(si.chunks_data, 8);           /* 0 1 3 4 5 6 7 9 */
	assert_snapshot_is(rg, s2, model, size);
	assert_snapshot_is(rg, s1, model1, size);

	/* nothing changed: nothing read, nothing stored */
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, s3), 0);
	assert_rc(kiln_snapshot_describe(rg, s3, &si), 0);
	assert_string_equal(si.parent_id, s2);
	assert_int_equal(si.chunks_changed, 0);
	assert_int_equal(si.chunks_new, 0);
	assert_int_equal(si.bytes_new_stored, 0);
	assert_int_equal(si.chunks_data, 8);
	assert_snapshot_is(rg, s3, model, size);
	assert_rc(kiln_volume_close(v), 0);

	/* and the same across a close and reopen */
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	write_model(v, model, "x", 1, 15 * (uint64_t)CS);
	assert_rc(kiln_volume_close(v), 0);
	assert_rc(kiln_snapshot_create(rg, ACCOUNT, id, NULL, NULL, NULL, s3), 0);
	assert_rc(kiln_snapshot_describe(rg, s3, &si), 0);
	assert_int_equal(si.chunks_changed, 1);
	assert_int_equal(si.chunks_new, 1);
	assert_int_equal(si.chunks_data, 9);
	assert_snapshot_is(rg, s3, model, size);
	free(src);
	free(model1);
	free(model);
}

/* ---- capturing dirty chunks ahead of the snapshot -------------------- */

static size_t precapture(struct kiln_volume *v)
{
	size_t done = 99999;

	assert_rc(kiln_volume_precapture(v, SIZE_MAX, &done), 0);
	return done;
}

/* Records captured ahead are taken only for chunks no write touched
 * since. To tell a record taken from a chunk read again, chunk 1's bytes
 * are changed in the overlay file behind the volume's back: a snapshot
 * that took the record holds the old bytes. */
static void test_precapture(void **state)
{
	struct unit_store *u = *state;
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 16 * (uint64_t)CS;
	uint8_t *model = calloc(1, size), *src = malloc(CS);
	char id[KILN_ID_MAX], s1[KILN_ID_MAX], s2[KILN_ID_MAX], rel[64], path[512];
	struct kiln_snapshot_info si;
	struct kiln_volume *v;
	int fd;

	assert_non_null(model);
	assert_non_null(src);
	create_blank(rg, size, id);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	for (uint64_t i = 0; i < 6; i++) {
		unit_fill_random(src, CS, 4000 + i);
		write_model(v, model, src, CS, i * CS);
	}
	assert_int_equal(precapture(v), 6);     /* first seen: captured */
	assert_int_equal(precapture(v), 0);     /* nothing left to do */

	snprintf(rel, sizeof rel, "volumes/%s.data", id);
	unit_region_path(u, rel, path, sizeof path);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	unit_fill_random(src, CS, 4100);
	assert_int_equal(pwrite(fd, src, CS, CS), CS);
	close(fd);

	unit_fill_random(src, 100, 4200);       /* written since: read again */
	write_model(v, model, src, 100, 2 * (uint64_t)CS + 7);
	trim_model(v, model, CS, 3 * (uint64_t)CS, true);   /* zero now */
	memcpy(src, model + 4 * CS, CS);        /* the same bytes, rewritten */
	write_model(v, model, src, CS, 4 * (uint64_t)CS);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, s1), 0);
	assert_snapshot_is(rg, s1, model, size);
	assert_rc(kiln_snapshot_describe(rg, s1, &si), 0);
	assert_int_equal(si.chunks_data, 5);
	assert_int_equal(si.chunks_new, 5);

	/* After the snapshot nothing is dirty and nothing is kept. */
	assert_int_equal(precapture(v), 0);
	unit_fill_random(src, CS, 4300);
	write_model(v, model, src, CS, 1 * (uint64_t)CS);
	assert_int_equal(precapture(v), 1);
	/* written again: it waits until it is quiet */
	unit_fill_random(src, CS, 4400);
	write_model(v, model, src, CS, 1 * (uint64_t)CS);
	assert_int_equal(precapture(v), 0);
	assert_int_equal(precapture(v), 1);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, s2), 0);
	assert_snapshot_is(rg, s2, model, size);
	assert_rc(kiln_snapshot_describe(rg, s2, &si), 0);
	assert_int_equal(si.chunks_new, 1);
	assert_rc(kiln_volume_close(v), 0);

	/* A read-only volume has nothing to capture. */
	v = open_volume(rg, id, 0);
	{
		size_t done = 1;

		assert_rc(kiln_volume_precapture(v, SIZE_MAX, &done), -EROFS);
		assert_int_equal(done, 0);
	}
	assert_rc(kiln_volume_close(v), 0);
	free(src);
	free(model);
}

/* Overwrite one chunk of a volume's overlay behind the volume's back. */
static void tamper_overlay(struct unit_store *u, const char *id, uint64_t chunk, uint64_t seed)
{
	char rel[64], path[512];
	uint8_t *junk = malloc(CS);
	int fd;

	assert_non_null(junk);
	snprintf(rel, sizeof rel, "volumes/%s.data", id);
	unit_region_path(u, rel, path, sizeof path);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	unit_fill_random(junk, CS, seed);
	assert_int_equal(pwrite(fd, junk, CS, (off_t)(chunk * CS)), CS);
	close(fd);
	free(junk);
}

/* A chunk whose bytes the store holds already is taken ahead at once, by
 * its id alone, quiet or not; one with new bytes waits until it is quiet.
 * If gc removes the stored chunk before the snapshot, the snapshot reads
 * the chunk again rather than name a chunk that is gone. */
static void test_precapture_known_ids(void **state)
{
	struct unit_store *u = *state;
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 8 * (uint64_t)CS;
	uint8_t *model = calloc(1, size), *other = calloc(1, size), *src = malloc(CS);
	char a[KILN_ID_MAX], b[KILN_ID_MAX], sa[KILN_ID_MAX], sb[KILN_ID_MAX];
	struct kiln_gc_result gc;
	struct kiln_snapshot_info si;
	struct kiln_volume *va, *vb;

	assert_non_null(model);
	assert_non_null(other);
	assert_non_null(src);
	/* volume a's snapshot holds R0 and R1 */
	create_blank(rg, size, a);
	va = open_volume(rg, a, KILN_OPEN_WRITE);
	for (uint64_t i = 0; i < 2; i++) {
		unit_fill_random(src, CS, 6000 + i);
		write_model(va, other, src, CS, i * CS);
	}
	assert_rc(kiln_volume_snapshot(va, ACCOUNT, NULL, NULL, NULL, sa), 0);
	assert_rc(kiln_volume_close(va), 0);

	/* volume b writes R0 (stored already) and new bytes N */
	create_blank(rg, size, b);
	vb = open_volume(rg, b, KILN_OPEN_WRITE);
	write_model(vb, model, other, CS, 0);
	unit_fill_random(src, CS, 6100);
	write_model(vb, model, src, CS, 3 * (uint64_t)CS);
	assert_int_equal(precapture(vb), 2);    /* R0 by its id, N compressed */
	assert_int_equal(precapture(vb), 0);
	tamper_overlay(u, b, 0, 6200);          /* the snapshot must not read it */
	assert_rc(kiln_volume_snapshot(vb, ACCOUNT, NULL, NULL, NULL, sb), 0);
	assert_snapshot_is(rg, sb, model, size);
	assert_rc(kiln_snapshot_describe(rg, sb, &si), 0);
	assert_int_equal(si.chunks_data, 2);
	assert_int_equal(si.chunks_new, 1);

	/* A chunk captured once and written again is not read again until
	 * it is quiet, whatever it holds by then: a guest rewriting a chunk
	 * all the time costs one capture, not one a pass. */
	unit_fill_random(src, CS, 6300);
	write_model(vb, model, src, CS, 6 * (uint64_t)CS);
	assert_int_equal(precapture(vb), 1);    /* first seen: captured */
	write_model(vb, model, other, CS, 6 * (uint64_t)CS);  /* R0 now */
	assert_int_equal(precapture(vb), 0);    /* not read again yet */
	assert_int_equal(precapture(vb), 1);    /* quiet: R0, by its id */

	/* b writes R1, taken ahead by its id; then the only snapshot that had
	 * R1 goes, and gc with it */
	write_model(vb, model, other + CS, CS, 5 * (uint64_t)CS);
	assert_int_equal(precapture(vb), 1);
	assert_rc(kiln_snapshot_delete(rg, sa), 0);
	assert_rc(kiln_volume_delete(rg, a), 0);
	assert_rc(kiln_region_gc(rg, &gc), 0);
	assert_true(gc.chunks_removed >= 1);
	assert_rc(kiln_volume_snapshot(vb, ACCOUNT, NULL, NULL, NULL, sb), 0);
	assert_snapshot_is(rg, sb, model, size);
	assert_rc(kiln_snapshot_describe(rg, sb, &si), 0);
	assert_int_equal(si.chunks_new, 1);     /* R1, stored again */
	assert_int_equal(si.chunks_data, 4);    /* R0 N R1 R0 */
	assert_rc(kiln_volume_close(vb), 0);
	free(src);
	free(other);
	free(model);
}

struct race {
	struct kiln_volume *v;
	atomic_bool stop;
	int rounds;
};

/* Rewrite chunks 0-3 in halves, each half its own write, so a capture
 * can read a chunk between them. */
static void *race_writer(void *arg)
{
	struct race *ra = arg;
	uint8_t half[CS / 2];

	for (int round = 0; !atomic_load(&ra->stop) || round < 50; round++) {
		for (uint64_t c = 0; c < 4; c++)
			for (uint64_t h = 0; h < 2; h++) {
				unit_fill_random(half, sizeof half, 5000 + (uint64_t)round * 8 + c * 2 + h);
				assert_rc(kiln_volume_write(ra->v, half, sizeof half, c * CS + h * sizeof half), 0);
			}
		ra->rounds = round + 1;
	}
	return NULL;
}

/* Captures racing with writes: whatever interleaving, the snapshot holds
 * the volume's bytes. */
static void test_precapture_races_writes(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 8 * (uint64_t)CS;
	uint8_t *model = malloc(size);
	char id[KILN_ID_MAX], snap[KILN_ID_MAX];
	struct race ra = { 0 };
	size_t captured = 0;
	pthread_t t;

	assert_non_null(model);
	create_blank(rg, size, id);
	ra.v = open_volume(rg, id, KILN_OPEN_WRITE);
	for (int pass = 0; pass < 5; pass++) {
		atomic_store(&ra.stop, false);
		assert_int_equal(pthread_create(&t, NULL, race_writer, &ra), 0);
		for (int k = 0; k < 200; k++)
			captured += precapture(ra.v);
		atomic_store(&ra.stop, true);
		assert_int_equal(pthread_join(t, NULL), 0);
		if (pass % 2)
			captured += precapture(ra.v) + precapture(ra.v);
		assert_rc(kiln_volume_snapshot(ra.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
		assert_rc(kiln_volume_read(ra.v, model, size, 0), 0);
		assert_snapshot_is(rg, snap, model, size);
	}
	/* the odd passes captured every chunk before their snapshot */
	assert_true(captured >= 8);
	assert_rc(kiln_volume_close(ra.v), 0);
	free(model);
}

/* ---- a writer that dies --------------------------------------------- */

/* Run in a fresh process (this binary, re-executed): open the volume for
 * writing, fill chunk 3, and die without flush or close. */
static int crash_writer(const char *dir, const char *id)
{
	struct kiln_store *store;
	struct kiln_region *rg;
	struct kiln_volume *v;
	static uint8_t buf[CS];

	memset(buf, 0xab, sizeof buf);
	if (kiln_store_open(dir, &store) < 0 || kiln_region_open(store, "us-east-1", &rg) < 0 ||
	    kiln_volume_open(rg, id, KILN_OPEN_WRITE, &v) < 0)
		_exit(10);
	if (kiln_volume_write(v, buf, CS, 3 * (uint64_t)CS) < 0)
		_exit(11);
	_exit(0);
}

static void run_crash_writer(const struct unit_store *u, const char *id)
{
	char *const argv[] = { (char *)"test-volume", (char *)"--crash-writer", (char *)u->dir,
			       (char *)id, NULL };
	int status;
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* ENGINE BUG (volume.c, volume_write_locked): a write that did not reach
 * the map before a crash leaves its bytes in the overlay under a chunk
 * the map still calls ZERO. The chunk reads as zeroes, correctly; but a
 * later partial write goes "straight to the overlay" on the assumption
 * that a ZERO chunk's range is a hole, and the rest of the chunk then
 * reads back the dead writer's bytes that were never acknowledged as
 * durable. */
static void test_bug_partial_write_after_crash(void **state)
{
	struct unit_store *u = *state;
	const uint64_t size = 6 * (uint64_t)CS;
	uint8_t *model = calloc(1, size);
	struct kiln_volume *v;
	char id[KILN_ID_MAX];

	assert_non_null(model);
	create_blank(u->region, size, id);
	run_crash_writer(u, id);

	v = open_volume(u->region, id, KILN_OPEN_WRITE);
	assert_volume_is(v, model);             /* the dead writer's data is not there */
	write_model(v, model, "fresh", 5, 3 * (uint64_t)CS + 100);
	assert_volume_is(v, model);             /* ... and must not come back */
	assert_rc(kiln_volume_close(v), 0);
	free(model);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		UNIT_TEST(test_blank_reads_zero),
		UNIT_TEST(test_unaligned_rw),
		UNIT_TEST(test_trim_and_write_zeroes),
		UNIT_TEST(test_out_of_range),
		UNIT_TEST(test_readonly_refuses_writes),
		UNIT_TEST(test_second_writer_busy),
		UNIT_TEST(test_map_status_blank),
		UNIT_TEST(test_cow_volume),
		UNIT_TEST(test_cow_size_defaults_and_grows),
		UNIT_TEST(test_submit_batch),
		UNIT_TEST(test_concurrent_writers),
		UNIT_TEST(test_incremental_snapshot),
		UNIT_TEST(test_precapture),
		UNIT_TEST(test_precapture_known_ids),
		UNIT_TEST(test_precapture_races_writes),
		UNIT_TEST(test_bug_partial_write_after_crash),
	};

	if (argc == 4 && strcmp(argv[1], "--crash-writer") == 0)
		return crash_writer(argv[2], argv[3]);
	unit_require_io_uring();
	unit_filters();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
