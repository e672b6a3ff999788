/* SPDX-License-Identifier: MIT */
/* io.c: the only file that touches liburing.
 *
 * Every thread gets its own ring on first use (so the sync wrappers are
 * thread-safe without locks). A batch of requests is submitted with
 * queue depth up to the ring size and reaped with one cq_advance per
 * pass; short transfers are resubmitted for the remainder. Where
 * io_uring cannot be set up (old kernel, seccomp) or KILN_IO=sync is
 * set, the same interface runs on pread/pwrite: chosen at run time and
 * shown by KILN_DEBUG=1. */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#else
#define VALGRIND_MAKE_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#endif

#define RING_ENTRIES 64

struct io_ctx {
	bool uring;
	struct io_uring ring;
	/* the batch in flight (io_start .. io_finish) */
	struct io_req *reqs;
	size_t n;
	size_t next;        /* first request not yet submitted */
	size_t inflight;
	int first_error;
	uint32_t *done;     /* bytes done per request, for short transfers */
	size_t done_cap;
};

/* Two rings per thread: one for io_run() and one for the batch that
 * io_start() leaves in flight, so that work done while a batch is in
 * flight (appending to a pack, say) can still do its own I/O. */
static pthread_key_t ctx_key[2];
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static const char *backend = "none";

static void free_ctx(void *p)
{
	struct io_ctx *ctx = p;

	if (ctx->uring)
		io_uring_queue_exit(&ctx->ring);
	free(ctx->done);
	free(ctx);
}

static void make_key(void)
{
	pthread_key_create(&ctx_key[0], free_ctx);
	pthread_key_create(&ctx_key[1], free_ctx);
}

enum { CTX_SYNC, CTX_ASYNC };

static struct io_ctx *ctx_new(void)
{
	struct io_ctx *ctx = calloc(1, sizeof *ctx);
	const char *force = getenv("KILN_IO");

	if (!ctx)
		return NULL;
	if (!(force && strcmp(force, "sync") == 0)) {
		int r = io_uring_queue_init(RING_ENTRIES, &ctx->ring, 0);

		if (r == 0)
			ctx->uring = true;
		else
			debug("io: io_uring_queue_init: %s; using pread/pwrite", strerror(-r));
	}
	backend = ctx->uring ? "io_uring" : "pread/pwrite";
	return ctx;
}

static struct io_ctx *get_ctx(int which)
{
	struct io_ctx *ctx;

	pthread_once(&ctx_once, make_key);
	ctx = pthread_getspecific(ctx_key[which]);
	if (ctx)
		return ctx;
	ctx = ctx_new();
	if (!ctx)
		return NULL;
	debug("io: thread backend is %s", backend);
	pthread_setspecific(ctx_key[which], ctx);
	return ctx;
}

const char *io_backend_name(void)
{
	get_ctx(CTX_SYNC);
	return backend;
}

static void sync_one(struct io_req *q)
{
	uint32_t done = 0;

	while (done < q->len) {
		ssize_t r;

		if (q->op == IO_READ)
			r = pread(q->fd, (uint8_t *)q->buf + done, q->len - done, (off_t)(q->off + done));
		else
			r = pwrite(q->fd, (uint8_t *)q->buf + done, q->len - done, (off_t)(q->off + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			q->res = -errno;
			return;
		}
		if (r == 0)
			break;      /* end of file on a read */
		done += (uint32_t)r;
	}
	q->res = (int)done;
}

static void prep(struct io_ctx *ctx, size_t i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ctx->ring);
	struct io_req *q = &ctx->reqs[i];
	uint32_t done = ctx->done[i];

	if (q->op == IO_READ)
		io_uring_prep_read(sqe, q->fd, (uint8_t *)q->buf + done, q->len - done, q->off + done);
	else
		io_uring_prep_write(sqe, q->fd, (uint8_t *)q->buf + done, q->len - done, q->off + done);
	io_uring_sqe_set_data64(sqe, i);
	ctx->inflight++;
}

/* Fill the ring with requests not yet submitted. */
static void fill(struct io_ctx *ctx)
{
	while (ctx->next < ctx->n && ctx->inflight < RING_ENTRIES)
		prep(ctx, ctx->next++);
}

static int ctx_start(struct io_ctx *ctx, struct io_req *reqs, size_t n)
{
	if (!ctx)
		return -ENOMEM;
	ctx->reqs = reqs;
	ctx->n = n;
	ctx->next = 0;
	ctx->inflight = 0;
	ctx->first_error = 0;
	if (n == 0)
		return 0;
	if (!ctx->uring) {
		for (size_t i = 0; i < n; i++) {
			sync_one(&reqs[i]);
			if (reqs[i].res < 0 && !ctx->first_error)
				ctx->first_error = reqs[i].res;
		}
		ctx->next = n;
		return 0;
	}
	if (n > ctx->done_cap) {
		uint32_t *d = realloc(ctx->done, n * sizeof *d);

		if (!d)
			return -ENOMEM;
		ctx->done = d;
		ctx->done_cap = n;
	}
	memset(ctx->done, 0, n * sizeof *ctx->done);
	fill(ctx);
	if (ctx->inflight) {
		int r = io_uring_submit(&ctx->ring);

		if (r < 0)
			return r;
	}
	return 0;
}

static int ctx_finish(struct io_ctx *ctx)
{
	if (!ctx)
		return -ENOMEM;
	while (ctx->uring && ctx->inflight > 0) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int r = io_uring_wait_cqe(&ctx->ring, &cqe);

		if (r < 0) {
			if (r == -EINTR)
				continue;
			return r;
		}
		io_uring_for_each_cqe(&ctx->ring, head, cqe) {
			size_t i = (size_t)io_uring_cqe_get_data64(cqe);
			struct io_req *q = &ctx->reqs[i];
			int res = cqe->res;

			seen++;
			ctx->inflight--;
			if (res == -EAGAIN || res == -EINTR) {
				prep(ctx, i);
			} else if (res < 0) {
				q->res = res;
				if (!ctx->first_error)
					ctx->first_error = res;
			} else {
				/* memcheck cannot see the kernel fill the buffer */
				if (q->op == IO_READ && res > 0)
					VALGRIND_MAKE_MEM_DEFINED((uint8_t *)q->buf + ctx->done[i], res);
				ctx->done[i] += (uint32_t)res;
				if (res > 0 && ctx->done[i] < q->len)
					prep(ctx, i);       /* short transfer: the rest */
				else
					q->res = (int)ctx->done[i];
			}
		}
		io_uring_cq_advance(&ctx->ring, seen);
		fill(ctx);
		r = io_uring_submit(&ctx->ring);
		if (r < 0)
			return r;
	}
	ctx->reqs = NULL;
	ctx->n = 0;
	return ctx->first_error;
}

int io_start(struct io_req *reqs, size_t n)
{
	return ctx_start(get_ctx(CTX_ASYNC), reqs, n);
}

int io_finish(void)
{
	return ctx_finish(get_ctx(CTX_ASYNC));
}

int io_run(struct io_req *reqs, size_t n)
{
	struct io_ctx *ctx = get_ctx(CTX_SYNC);
	int r = ctx_start(ctx, reqs, n);

	if (r < 0)
		return r;
	return ctx_finish(ctx);
}

/* A queue owned by its caller rather than by a thread. */
struct io_queue {
	struct io_ctx *ctx;
};

struct io_queue *io_queue_new(void)
{
	struct io_queue *q = malloc(sizeof *q);

	if (!q)
		return NULL;
	q->ctx = ctx_new();
	if (!q->ctx) {
		free(q);
		return NULL;
	}
	return q;
}

void io_queue_free(struct io_queue *q)
{
	if (!q)
		return;
	free_ctx(q->ctx);
	free(q);
}

int io_queue_start(struct io_queue *q, struct io_req *reqs, size_t n)
{
	return ctx_start(q->ctx, reqs, n);
}

int io_queue_finish(struct io_queue *q)
{
	return ctx_finish(q->ctx);
}
