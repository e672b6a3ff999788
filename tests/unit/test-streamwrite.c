/* SPDX-License-Identifier: MIT */
/* test-streamwrite.c: I/O through a pipe, as kiln-nbd splices large
 * requests. Writes whose payload comes in parts, from memory and through
 * a pipe (engine/streamwrite.c): the parts land where they belong, the
 * chunks they fill become LOCAL and dirty only when the write ends whole,
 * a write that needs a chunk's old bytes is refused before anything is
 * taken, and a part that fails (the file size limit makes the overlay
 * refuse it) keeps the stream in step. A write that fails or stops part
 * way keeps what landed in ZERO and LOCAL chunks, marked dirty so the
 * next snapshot has it, and nothing of it ever shows under a BASE chunk,
 * also once that chunk is zeroed and written again.
 * Reads into a pipe (engine/spliceread.c): only of LOCAL chunks, and a
 * refused or failed one leaves the pipe empty. */
#include "unit.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <unistd.h>

#define CS 16384u                   /* the test stores' chunk size */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
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

static struct kiln_volume *open_volume(struct kiln_region *rg, const char *id, unsigned flags)
{
	struct kiln_volume *v = NULL;

	assert_rc(kiln_volume_open(rg, id, flags, &v), 0);
	return v;
}

static void assert_volume_is(struct kiln_volume *v, const uint8_t *model)
{
	uint64_t size = kiln_volume_size(v);
	uint8_t *buf = malloc(size);

	assert_non_null(buf);
	memset(buf, 0xee, size);
	assert_rc(kiln_volume_read(v, buf, size, 0), 0);
	for (uint64_t i = 0; i < size; i++)
		if (buf[i] != model[i])
			fail_msg("byte %llu (chunk %llu + %llu): 0x%02x, want 0x%02x",
				 (unsigned long long)i, (unsigned long long)(i / CS),
				 (unsigned long long)(i % CS), buf[i], model[i]);
	free(buf);
}

static void assert_snapshot_is(struct kiln_region *rg, const char *snap, const uint8_t *model,
			       uint64_t size)
{
	uint8_t *buf = malloc(size);

	assert_non_null(buf);
	assert_rc(kiln_snapshot_read(rg, snap, buf, size, 0), 0);
	assert_memory_equal(buf, model, size);
	free(buf);
}

static void make_pipe(int p[2])
{
	assert_rc(pipe(p), 0);
	assert_true(fcntl(p[1], F_SETPIPE_SZ, 1 << 20) >= 1 << 20);
}

/* Put len bytes into the pipe, then hand them to the write as one part. */
static int pipe_part(struct kiln_stream_write *w, int p[2], const uint8_t *src, size_t len)
{
	assert_int_equal(write(p[1], src, len), (ssize_t)len);
	return kiln_volume_stream_pipe(w, p[0], len);
}

static void assert_pipe_empty(int p[2])
{
	int n = -1;

	assert_rc(ioctl(p[0], FIONREAD, &n), 0);
	assert_int_equal(n, 0);
}

/* A volume of nchunks chunks of random data, its snapshot, and a volume
 * created from that snapshot (every chunk BASE), opened for writing. */
static struct kiln_volume *cow_volume(struct kiln_region *rg, uint64_t nchunks, uint8_t *model)
{
	char src[KILN_ID_MAX], snap[KILN_ID_MAX], cow[KILN_ID_MAX];
	uint64_t size = nchunks * CS;
	struct kiln_volume *v;

	assert_rc(kiln_volume_create(rg, ACCOUNT, size, NULL, src), 0);
	v = open_volume(rg, src, KILN_OPEN_WRITE);
	unit_fill_random(model, size, 4242);
	assert_rc(kiln_volume_write(v, model, size, 0), 0);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_rc(kiln_volume_close(v), 0);
	assert_rc(kiln_volume_create(rg, ACCOUNT, size, snap, cow), 0);
	return open_volume(rg, cow, KILN_OPEN_WRITE);
}

/* What most tests work on: a volume created from a snapshot of eight
 * chunks of random data (every chunk BASE), opened for writing, with its
 * model, a source buffer, a buffer to read back into and a pipe. */
struct fixture {
	struct kiln_region *rg;
	struct kiln_volume *v;
	uint64_t size;
	uint8_t *model, *src, *back;
	int p[2];
};

static void fixture_open(struct fixture *f, void **state)
{
	f->rg = rg_of(state);
	f->size = 8 * (uint64_t)CS;
	f->model = malloc(f->size);
	f->src = malloc(f->size);
	f->back = malloc(f->size);
	assert_non_null(f->model);
	assert_non_null(f->src);
	assert_non_null(f->back);
	make_pipe(f->p);
	f->v = cow_volume(f->rg, 8, f->model);
}

static void fixture_close(struct fixture *f)
{
	assert_rc(kiln_volume_close(f->v), 0);
	close(f->p[0]);
	close(f->p[1]);
	free(f->back);
	free(f->src);
	free(f->model);
}

/* Dirty chunks as the map on disk has them, after a flush. */
static uint64_t dirty_chunks(struct kiln_region *rg, struct kiln_volume *v)
{
	struct kiln_volume_info info;

	assert_rc(kiln_volume_flush(v), 0);
	assert_rc(kiln_volume_describe(rg, kiln_volume_id(v), &info), 0);
	return info.dirty_chunks;
}

/* Parts from memory and from the pipe, of sizes that cross chunks and
 * overlay pieces, make one write; its chunks are dirty after it, and the
 * next snapshot holds its bytes. */
static void test_parts_make_one_write(void **state)
{
	struct kiln_region *rg = rg_of(state);
	const uint64_t size = 80 * (uint64_t)CS, off = CS / 2, count = 70 * (uint64_t)CS + 100;
	uint8_t *model = calloc(1, size), *src = malloc(count), *back = malloc(size);
	static const size_t parts[] = { 3000, 1, CS, 70000, 4 * CS + 7, 300000, 99 };
	struct kiln_stream_write w;
	char id[KILN_ID_MAX], snap[KILN_ID_MAX];
	struct kiln_snapshot_info si;
	struct kiln_volume *v;
	uint64_t done = 0;
	int p[2];

	assert_non_null(model);
	assert_non_null(src);
	assert_non_null(back);
	make_pipe(p);
	assert_rc(kiln_volume_create(rg, ACCOUNT, size, NULL, id), 0);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	unit_fill_random(src, count, 7);
	memcpy(model + off, src, count);

	assert_rc(kiln_volume_stream_begin(v, count, off, &w), 0);
	kiln_volume_stream_buf(&w, src, parts[0]);
	done = parts[0];
	for (size_t k = 1; k < ARRAY_SIZE(parts); k++) {
		assert_rc(pipe_part(&w, p, src + done, parts[k]), 0);
		done += parts[k];
	}
	assert_rc(pipe_part(&w, p, src + done, count - done), 0);
	assert_int_equal(dirty_chunks(rg, v), 0);       /* nothing changes state before the end */
	assert_rc(kiln_volume_stream_end(&w), 0);
	assert_pipe_empty(p);
	assert_volume_is(v, model);
	assert_int_equal(dirty_chunks(rg, v), 71);

	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_rc(kiln_snapshot_describe(rg, snap, &si), 0);
	assert_int_equal(si.chunks_changed, 71);
	assert_rc(kiln_snapshot_read(rg, snap, back, size, 0), 0);
	assert_memory_equal(back, model, size);
	assert_rc(kiln_volume_close(v), 0);
	close(p[0]);
	close(p[1]);
	free(back);
	free(src);
	free(model);
}

/* Over a volume created from a snapshot: a write over any BASE chunk,
 * whole or in part, is refused at begin (and then done by
 * kiln_volume_write); once the chunks are LOCAL, writes over whole
 * chunks and parts of them go straight in. */
static void test_base_chunks(void **state)
{
	struct fixture f;
	struct kiln_stream_write w;

	fixture_open(&f, state);
	unit_fill_random(f.src, 4 * CS, 99);

	/* part of chunk 1, chunks 2 and 3 whole, or 1 to 3: refused */
	assert_rc(kiln_volume_stream_begin(f.v, CS - 10, CS + 10, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_stream_begin(f.v, 2 * CS, 2 * CS, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_stream_begin(f.v, 2 * CS + 1, CS, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_write(f.v, f.src, CS - 10, CS + 10), 0);
	memcpy(f.model + CS + 10, f.src, CS - 10);
	assert_rc(kiln_volume_write(f.v, f.src, 2 * CS, 2 * CS), 0);
	memcpy(f.model + 2 * CS, f.src, 2 * CS);
	assert_volume_is(f.v, f.model);

	/* chunks 1 to 3 are LOCAL now: whole chunks and parts go straight in */
	unit_fill_random(f.src, 4 * CS, 98);
	assert_rc(kiln_volume_stream_begin(f.v, 2 * CS, 2 * CS, &w), 0);
	assert_rc(pipe_part(&w, f.p, f.src, 2 * CS), 0);
	assert_rc(kiln_volume_stream_end(&w), 0);
	memcpy(f.model + 2 * CS, f.src, 2 * CS);
	assert_rc(kiln_volume_stream_begin(f.v, 100, CS + 5, &w), 0);
	kiln_volume_stream_buf(&w, f.src + 7, 100);
	assert_rc(kiln_volume_stream_end(&w), 0);
	memcpy(f.model + CS + 5, f.src + 7, 100);
	assert_volume_is(f.v, f.model);

	/* a part beyond the write's count: an error; the part before it
	 * landed (each byte old or new), the one beyond was only taken */
	assert_rc(kiln_volume_stream_begin(f.v, CS, 3 * CS, &w), 0);
	kiln_volume_stream_buf(&w, f.src, CS / 2);
	assert_rc(pipe_part(&w, f.p, f.src + CS, CS), 0);
	assert_pipe_empty(f.p);
	assert_rc(kiln_volume_stream_end(&w), -EIO);
	memcpy(f.model + 3 * CS, f.src, CS / 2);
	assert_volume_is(f.v, f.model);

	fixture_close(&f);
}

/* What begin refuses takes nothing: a read-only volume, a range outside
 * the volume, an empty write. */
static void test_refused(void **state)
{
	struct kiln_region *rg = rg_of(state);
	struct kiln_stream_write w;
	char id[KILN_ID_MAX];
	struct kiln_volume *v;

	assert_rc(kiln_volume_create(rg, ACCOUNT, 4 * CS, NULL, id), 0);
	v = open_volume(rg, id, KILN_OPEN_READONLY);
	assert_rc(kiln_volume_stream_begin(v, CS, 0, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_close(v), 0);
	v = open_volume(rg, id, KILN_OPEN_WRITE);
	assert_rc(kiln_volume_stream_begin(v, CS + 1, 3 * CS, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_stream_begin(v, 1, UINT64_MAX, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_stream_begin(v, 0, 0, &w), -EOPNOTSUPP);
	assert_rc(kiln_volume_stream_begin(v, 4 * CS, 0, &w), 0);
	assert_rc(kiln_volume_close(v), 0);
}

/* A plain write with the file size limit at limit bytes (it stands in
 * for a full disk); the limit is as it was afterwards. */
static int write_limited(struct kiln_volume *v, const void *buf, uint64_t len, uint64_t off,
			 rlim_t limit)
{
	struct rlimit old, lim;
	int r;

	signal(SIGXFSZ, SIG_IGN);
	assert_rc(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = limit;
	assert_rc(setrlimit(RLIMIT_FSIZE, &lim), 0);
	r = kiln_volume_write(v, buf, len, off);
	assert_rc(setrlimit(RLIMIT_FSIZE, &old), 0);
	return r;
}

/* The overlay refuses a part (the file size limit stands in for a full
 * disk): the later parts are still taken from the pipe, the write ends
 * with the error, and no chunk changes. A part the pipe does not hold
 * loses the stream at once instead of waiting. */
static void test_failed_part(void **state)
{
	struct fixture f;
	struct rlimit old, lim;
	struct kiln_stream_write w;
	char snap[KILN_ID_MAX];
	int r;

	fixture_open(&f, state);
	unit_fill_random(f.src, 4 * CS, 5);

	signal(SIGXFSZ, SIG_IGN);
	assert_rc(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 5 * CS;
	/* chunks 4 to 6 LOCAL and clean */
	assert_rc(kiln_volume_write(f.v, f.src, 3 * CS, 4 * CS), 0);
	memcpy(f.model + 4 * CS, f.src, 3 * CS);
	assert_rc(kiln_volume_snapshot(f.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	unit_fill_random(f.src, 4 * CS, 55);

	assert_rc(setrlimit(RLIMIT_FSIZE, &lim), 0);
	assert_rc(kiln_volume_stream_begin(f.v, 3 * CS, 4 * CS, &w), 0);
	assert_rc(pipe_part(&w, f.p, f.src, CS / 2), 0);           /* below the limit: written */
	assert_rc(pipe_part(&w, f.p, f.src + CS / 2, 2 * CS), 0);   /* crosses it */
	assert_rc(pipe_part(&w, f.p, f.src + CS / 2 + 2 * CS, CS / 2), 0);
	assert_pipe_empty(f.p);
	assert_rc(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_rc(kiln_volume_stream_end(&w), -EFBIG);
	memcpy(f.model + 4 * CS, f.src, CS);                        /* what landed */
	assert_volume_is(f.v, f.model);
	assert_int_equal(dirty_chunks(f.rg, f.v), 3);
	assert_rc(kiln_volume_snapshot(f.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_snapshot_is(f.rg, snap, f.model, f.size);

	/* Under a plain write over whole BASE chunks 1 and 2, the limit in
	 * the middle of 1: chunk 1 stays BASE and what landed never shows,
	 * also once it is zeroed whole and written again. */
	r = write_limited(f.v, f.src, 2 * CS, CS, CS + CS / 2);
	assert_int_equal(r, -EFBIG);
	assert_volume_is(f.v, f.model);
	assert_rc(kiln_volume_write_zeroes(f.v, CS, CS), 0);
	memset(f.model + CS, 0, CS);
	assert_rc(kiln_volume_write(f.v, "y", 1, CS + 5), 0);
	f.model[CS + 5] = 'y';
	assert_volume_is(f.v, f.model);

	/* The same limit under a plain write over LOCAL chunks 4 and 5: what
	 * landed is dirty, so the next snapshot reads what the volume reads. */
	assert_rc(kiln_volume_write(f.v, f.src, 2 * CS, 4 * CS), 0);
	memcpy(f.model + 4 * CS, f.src, 2 * CS);
	assert_rc(kiln_volume_snapshot(f.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	unit_fill_random(f.src, 4 * CS, 6);
	r = write_limited(f.v, f.src, 2 * CS, 4 * CS, 5 * CS);
	assert_int_equal(r, -EFBIG);
	assert_rc(kiln_volume_read(f.v, f.back, f.size, 0), 0);
	assert_rc(kiln_volume_snapshot(f.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_snapshot_is(f.rg, snap, f.back, f.size);
	assert_memory_equal(f.back + 6 * CS, f.model + 6 * CS, 2 * CS);

	/* A part the pipe does not hold: the stream is lost at once, not
	 * waited for; the 100 bytes that were there landed. */
	assert_rc(kiln_volume_stream_begin(f.v, CS, 4 * CS, &w), 0);
	assert_int_equal(write(f.p[1], f.src, 100), 100);
	assert_true(kiln_volume_stream_pipe(&w, f.p[0], 1000) < 0);
	assert_true(kiln_volume_stream_end(&w) < 0);
	memcpy(f.back + 4 * CS, f.src, 100);
	assert_volume_is(f.v, f.back);

	fixture_close(&f);
}

/* A write that stops part way: what landed in LOCAL and ZERO chunks is
 * the volume's now, and dirty (the next snapshot reads what the volume
 * reads). */
static void test_cut_short(void **state)
{
	struct fixture f;
	struct kiln_stream_write w;
	char snap[KILN_ID_MAX];

	fixture_open(&f, state);
	unit_fill_random(f.src, 4 * CS, 21);
	assert_rc(kiln_volume_write(f.v, f.src, 2 * CS, 0), 0);    /* 0, 1 LOCAL */
	memcpy(f.model, f.src, 2 * CS);
	assert_rc(kiln_volume_write_zeroes(f.v, 2 * CS, 4 * CS), 0);     /* 4, 5 ZERO */
	memset(f.model + 4 * CS, 0, 2 * CS);
	assert_rc(kiln_volume_snapshot(f.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_int_equal(dirty_chunks(f.rg, f.v), 0);

	/* over LOCAL 0 and 1: a part and a half of a chunk land, then the end */
	unit_fill_random(f.src, 4 * CS, 22);
	assert_rc(kiln_volume_stream_begin(f.v, 2 * CS, 0, &w), 0);
	kiln_volume_stream_buf(&w, f.src, CS / 2);
	assert_rc(pipe_part(&w, f.p, f.src + CS / 2, CS), 0);
	assert_rc(kiln_volume_stream_end(&w), -EIO);
	memcpy(f.model, f.src, CS + CS / 2);
	assert_volume_is(f.v, f.model);
	assert_int_equal(dirty_chunks(f.rg, f.v), 2);

	/* over ZERO 4 and 5: half of 4 lands; zeroing part of that, and a
	 * write at the end of the chunk, leave the rest as it landed */
	assert_rc(kiln_volume_stream_begin(f.v, 2 * CS, 4 * CS, &w), 0);
	assert_rc(pipe_part(&w, f.p, f.src, CS / 2), 0);
	assert_rc(kiln_volume_stream_end(&w), -EIO);
	memcpy(f.model + 4 * CS, f.src, CS / 2);
	assert_volume_is(f.v, f.model);
	assert_rc(kiln_volume_write_zeroes(f.v, CS / 4, 4 * CS), 0);
	memset(f.model + 4 * CS, 0, CS / 4);
	assert_rc(kiln_volume_write(f.v, "z", 1, 5 * CS - 1), 0);
	f.model[5 * CS - 1] = 'z';
	assert_volume_is(f.v, f.model);

	assert_rc(kiln_volume_snapshot(f.v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_rc(kiln_snapshot_read(f.rg, snap, f.back, f.size, 0), 0);
	assert_memory_equal(f.back, f.model, f.size);
	fixture_close(&f);
}

/* Chunks larger than an overlay piece: a plain write over a whole BASE
 * chunk that fails after its first piece leaves the chunk BASE, reading
 * its old bytes (not the first piece and then a hole of zeroes). */
static void test_failed_whole_base_write_big_chunks(void **state)
{
	const uint32_t big = 128 * 1024;
	struct unit_store *u = unit_store_new(big);
	uint8_t *model = malloc(4 * big), *src = malloc(big), *buf = malloc(4 * big);
	char vol[KILN_ID_MAX], snap[KILN_ID_MAX], cow[KILN_ID_MAX];
	struct kiln_volume *v;
	int r;

	(void)state;
	assert_non_null(model);
	assert_non_null(src);
	assert_non_null(buf);
	assert_rc(kiln_volume_create(u->region, ACCOUNT, 4 * big, NULL, vol), 0);
	v = open_volume(u->region, vol, KILN_OPEN_WRITE);
	unit_fill_random(model, 4 * big, 31);
	assert_rc(kiln_volume_write(v, model, 4 * big, 0), 0);
	assert_rc(kiln_volume_snapshot(v, ACCOUNT, NULL, NULL, NULL, snap), 0);
	assert_rc(kiln_volume_close(v), 0);
	assert_rc(kiln_volume_create(u->region, ACCOUNT, 4 * big, snap, cow), 0);
	v = open_volume(u->region, cow, KILN_OPEN_WRITE);

	unit_fill_random(src, big, 32);
	/* the first 64 KiB piece of chunk 1 fits */
	r = write_limited(v, src, big, big, big + big / 2);
	assert_int_equal(r, -EFBIG);
	assert_rc(kiln_volume_read(v, buf, 4 * big, 0), 0);
	assert_memory_equal(buf, model, 4 * big);

	assert_rc(kiln_volume_close(v), 0);
	unit_store_free(u);
	free(buf);
	free(src);
	free(model);
}

static void test_splice_read(void **state)
{
	struct fixture f;

	fixture_open(&f, state);
	unit_fill_random(f.src, 4 * CS, 11);
	assert_rc(kiln_volume_write(f.v, f.src, 3 * CS, 2 * CS), 0);       /* chunks 2-4 LOCAL */
	memcpy(f.model + 2 * CS, f.src, 3 * CS);
	assert_rc(kiln_volume_trim(f.v, CS, 5 * CS), 0);                 /* 5 ZERO */
	memset(f.model + 5 * CS, 0, CS);

	assert_rc(kiln_volume_splice_read(f.v, f.p, 3 * CS - 100, 2 * CS + 50), 0);
	assert_int_equal(read(f.p[0], f.back, 4 * CS), 3 * CS - 100);
	assert_memory_equal(f.back, f.model + 2 * CS + 50, 3 * CS - 100);
	assert_pipe_empty(f.p);

	/* BASE, ZERO, outside the volume, empty: refused, nothing taken */
	assert_rc(kiln_volume_splice_read(f.v, f.p, 2 * CS, CS), -EOPNOTSUPP);
	assert_rc(kiln_volume_splice_read(f.v, f.p, 2 * CS, 4 * CS), -EOPNOTSUPP);
	assert_rc(kiln_volume_splice_read(f.v, f.p, CS, 8 * CS), -EOPNOTSUPP);
	assert_rc(kiln_volume_splice_read(f.v, f.p, 0, 2 * CS), -EOPNOTSUPP);
	assert_pipe_empty(f.p);

	/* a pipe too small for the read: an error, and the pipe is empty */
	assert_true(fcntl(f.p[1], F_SETPIPE_SZ, (int)CS) >= (int)CS);
	assert_true(fcntl(f.p[1], F_GETPIPE_SZ) < (int)(3 * CS));
	assert_true(kiln_volume_splice_read(f.v, f.p, 3 * CS, 2 * CS) < 0);
	assert_pipe_empty(f.p);
	assert_volume_is(f.v, f.model);

	fixture_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		UNIT_TEST(test_parts_make_one_write),
		UNIT_TEST(test_base_chunks),
		UNIT_TEST(test_refused),
		UNIT_TEST(test_failed_part),
		UNIT_TEST(test_cut_short),
		UNIT_TEST(test_failed_whole_base_write_big_chunks),
		UNIT_TEST(test_splice_read),
	};

	unit_require_io_uring();
	unit_filters();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
