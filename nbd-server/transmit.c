/* SPDX-License-Identifier: MIT */
/* transmit.c: the transmission phase of one connection.
 *
 * Notes on the design: the connection's thread runs a loop on its own
 * io_uring. One read takes in as many requests as the client has sent
 * (clients pipeline: fio at queue depth 32 sends 32 at once); each is
 * checked by one validate step and served through the engine (whose file
 * I/O is io_uring too). Reads that arrived together go to the engine
 * together (kiln_volume_submit), so their file I/O is one submission, and
 * their replies leave in one writev before the loop reads again; page
 * cache reads complete inline, so the thread rarely waits.
 *
 * A large read of chunks in the overlay is spliced instead: its bytes go
 * from the page cache through a pipe to the socket as page references.
 *
 * Small writes join that batch too: the engine writes them one after
 * another, the client's next requests gather in the socket meanwhile, and
 * the next read takes them in as a batch as large as its queue depth.
 * Large writes are mostly copying. One whose payload is still mostly in
 * the socket when its header is read is spliced: the rest of the payload
 * goes from the socket into a pipe and from the pipe into the
 * overlay (kiln_volume_stream_*), copied once instead of twice. (These
 * splices are plain syscalls: io_uring would run each on a worker.) A large
 * write that arrived whole goes to a second thread per connection, the
 * writer, which runs such writes as a batch and sends their replies while
 * this thread receives the next payloads, so the two copies overlap. (For
 * 4 KiB writes that thread's wakeups cost more than the overlap wins: 90k
 * against 150k IOPS.) A write's payload stays in the input buffer it
 * arrived in until the writer is done with it; there are two input
 * buffers, and the loop moves to the other one rather than overwrite
 * payloads still in use.
 *
 * Anything that is not a read or a write (FLUSH above all, which must
 * cover every write answered before it) waits until the batch is done
 * and the writer is idle.
 * Replies may go out of order, as the protocol allows; each leaves whole,
 * under the connection's send lock. Buffers are made once per connection,
 * so the steady state allocates nothing. A bad request gets its error and
 * the connection goes on; only a broken frame (bad magic) ends it. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "protocol.h"
#include "server.h"

#define IBUF_SIZE (MAX_REQUEST_SIZE + 256 * 1024)
/* Input past this point moves to the start of a buffer (or to the other
 * one), so a connection touches little more memory than its requests. */
#define IBUF_SOFT (2u * 1024 * 1024)
#define READ_MIN (256u * 1024)
/* Writes this large go to the writer thread; smaller ones join the batch
 * of the receiving thread. */
#define WRITER_MIN (64u * 1024)
/* Writes with at least this much payload still in the socket are spliced. */
#define SPLICE_MIN (64u * 1024)
#define PIPE_SIZE (1u << 20)
#define OBUF_SIZE (MAX_REQUEST_SIZE + 256 * 1024)
#define MAX_IOV 512
#define MAX_EXTENTS 1024
#define BASE_ALLOCATION_ID 1

struct extent {
	uint64_t offset, length;
	enum kiln_extent_type type;
};

/* A READ or WRITE waiting in the batch: its replies' place in the output
 * (iovecs [iov_start, iov_end)) and its ios [io_start, io_end). */
struct pending {
	struct nbd_request req;
	int iov_start, iov_end;
	size_t io_start, io_end;
	struct nbd_simple_reply *simple;    /* simple read reply header to finish */
};

/* A batch of writes for the writer thread; payloads point into ibuf. */
struct wbatch {
	struct kiln_io ios[KILN_IO_BATCH_MAX];
	struct nbd_request req[KILN_IO_BATCH_MAX];
	uint8_t buf[KILN_IO_BATCH_MAX];         /* which input buffer holds the payload */
	size_t n;
};

/* The writer: its own thread, fed batches by the receiving loop. All
 * fields below lock are guarded by it. */
struct writer {
	pthread_t thread;
	bool initialized, started;
	pthread_mutex_t lock;
	pthread_cond_t wake;            /* work for the writer, or stop */
	pthread_cond_t progress;        /* a batch finished */
	struct wbatch *queued;          /* gathering; taken whole by the writer */
	struct wbatch *running;
	bool busy, stop;
	size_t in_buf[2];               /* writes queued or running per input buffer */
	bool broken;                    /* a reply could not be sent */
	struct nbd_simple_reply replies[KILN_IO_BATCH_MAX];
	struct iovec iov[KILN_IO_BATCH_MAX];
};

struct tx {
	struct conn *c;
	pthread_mutex_t send_lock;      /* one reply at a time on the socket */
	struct writer w;
	struct kiln_io ios[KILN_IO_BATCH_MAX];
	size_t nios;
	struct pending pend[KILN_IO_BATCH_MAX];
	size_t npend;
	int iov_floor;          /* iovecs below this belong to earlier replies */
	struct io_uring ring;
	bool have_ring;
	uint8_t *ibufs[2];
	int cur;                /* the input buffer in use */
	uint8_t *ibuf;          /* ibufs[cur] */
	size_t ilen, ipos;
	uint8_t *obuf;
	size_t olen;
	struct iovec iov[MAX_IOV];
	int niov;
	struct extent *ext;
	size_t next, ext_cap;
	int pipe[2];            /* for spliced writes, made on first use */
	size_t pipe_size;
	bool no_splice;         /* the input is not a socket or a pipe */
	bool stop;
};

static uint8_t zero_buf[1 << 20];

/* Step past done bytes of an iovec array, after a short writev. */
static void iov_advance(struct iovec **iov, int *n, size_t done)
{
	while (*n > 0 && done >= (*iov)->iov_len) {
		done -= (*iov)->iov_len;
		(*iov)++;
		(*n)--;
	}
	if (*n > 0) {
		(*iov)->iov_base = (uint8_t *)(*iov)->iov_base + done;
		(*iov)->iov_len -= done;
	}
}

/* ---- I/O on the ring (or plain syscalls where io_uring is missing) --- */

static ssize_t ring_read(struct tx *t, void *buf, size_t len)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	int r;

	if (!t->have_ring) {
		ssize_t n;

		do
			n = read(t->c->rfd, buf, len);
		while (n < 0 && errno == EINTR);
		return n < 0 ? -errno : n;
	}
	sqe = io_uring_get_sqe(&t->ring);
	io_uring_prep_read(sqe, t->c->rfd, buf, (unsigned)len, (uint64_t)-1);
	r = io_uring_submit_and_wait(&t->ring, 1);
	if (r < 0)
		return r;
	r = io_uring_wait_cqe(&t->ring, &cqe);
	if (r < 0)
		return r;
	r = cqe->res;
	io_uring_cqe_seen(&t->ring, cqe);
	return r;
}

/* Splice up to len bytes from the socket into the pipe, waiting for the
 * first ones. A plain splice() on this thread, not one on the ring:
 * io_uring runs every splice on a worker thread (it never tries one
 * inline), and the hand-off cost a tenth of the rate of 1 MiB writes. */
static ssize_t splice_in(struct tx *t, size_t len)
{
	for (;;) {
		ssize_t n = splice(t->c->rfd, NULL, t->pipe[1], NULL, len, SPLICE_F_MOVE);
		struct pollfd p = { .fd = t->c->rfd, .events = POLLIN };

		if (n >= 0)
			return n;
		if (errno == EAGAIN)    /* a non-blocking socket (-s may get one) */
			poll(&p, 1, -1);
		else if (errno != EINTR)
			return -errno;
	}
}

static int ring_writev(struct tx *t, struct iovec *iov, int n)
{
	while (n > 0) {
		ssize_t done;

		if (t->have_ring) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
			struct io_uring_cqe *cqe;
			int r;

			io_uring_prep_writev(sqe, t->c->wfd, iov, (unsigned)n, (uint64_t)-1);
			r = io_uring_submit_and_wait(&t->ring, 1);
			if (r >= 0)
				r = io_uring_wait_cqe(&t->ring, &cqe);
			if (r < 0)
				return r;
			done = cqe->res;
			io_uring_cqe_seen(&t->ring, cqe);
		} else {
			done = writev(t->c->wfd, iov, n);
			if (done < 0)
				done = -errno;
		}
		if (done == -EINTR || done == -EAGAIN)
			continue;
		if (done <= 0)
			return done < 0 ? (int)done : -EPIPE;
		iov_advance(&iov, &n, (size_t)done);
	}
	return 0;
}

static int flush_replies(struct tx *t)
{
	int r = 0;

	if (t->niov > 0) {
		pthread_mutex_lock(&t->send_lock);
		r = ring_writev(t, t->iov, t->niov);
		pthread_mutex_unlock(&t->send_lock);
	}
	t->niov = 0;
	t->iov_floor = 0;
	t->olen = 0;
	return r;
}

/* Room for len more bytes of output and n more iovecs. */
static int reserve(struct tx *t, size_t len, int n)
{
	if (t->olen + len > OBUF_SIZE || t->niov + n > MAX_IOV)
		return flush_replies(t);
	return 0;
}

static void *out_put(struct tx *t, size_t len)
{
	void *p = t->obuf + t->olen;

	/* Callers reserve() first; a reply that would not fit is a bug. */
	if (t->olen + len > OBUF_SIZE || t->niov == MAX_IOV)
		abort();
	/* Extend the last iovec when the bytes follow on (within one reply). */
	if (t->niov > t->iov_floor &&
	    (uint8_t *)t->iov[t->niov - 1].iov_base + t->iov[t->niov - 1].iov_len == p)
		t->iov[t->niov - 1].iov_len += len;
	else
		t->iov[t->niov++] = (struct iovec){ p, len };
	t->olen += len;
	return p;
}

/* ---- requests -------------------------------------------------------- */

int request_decode(const struct conn *c, const void *wire, struct nbd_request *req)
{
	(void)c;
	memcpy(req, wire, sizeof *req);
	req->magic = be32toh(req->magic);
	req->flags = be16toh(req->flags);
	req->type = be16toh(req->type);
	req->cookie = be64toh(req->cookie);       /* opaque: echoed as sent */
	req->offset = be64toh(req->offset);
	req->count = be32toh(req->count);
	return req->magic == NBD_REQUEST_MAGIC ? 0 : -1;
}

/* The one place a request is checked. Returns 0 or an NBD error. */
int request_validate(const struct conn *c, const struct nbd_request *req)
{
	static const uint16_t allowed_flags[] = {
		[NBD_CMD_READ] = NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA,
		[NBD_CMD_WRITE] = NBD_CMD_FLAG_FUA,
		[NBD_CMD_DISC] = NBD_CMD_FLAG_FUA,
		[NBD_CMD_FLUSH] = NBD_CMD_FLAG_FUA,
		[NBD_CMD_TRIM] = NBD_CMD_FLAG_FUA,
		[NBD_CMD_CACHE] = NBD_CMD_FLAG_FUA,
		[NBD_CMD_WRITE_ZEROES] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
		[NBD_CMD_BLOCK_STATUS] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
	};
	/* FUA is valid on every command once SEND_FUA is negotiated
	 * (proto.md): accepted everywhere, meaningful on writes. */
	const struct export *e = c->exp;
	bool writes = req->type == NBD_CMD_WRITE || req->type == NBD_CMD_TRIM ||
		      req->type == NBD_CMD_WRITE_ZEROES;

	if (req->type > NBD_CMD_BLOCK_STATUS)
		return NBD_EINVAL;
	if (req->flags & ~allowed_flags[req->type])
		return NBD_EINVAL;
	if ((req->flags & NBD_CMD_FLAG_DF) && !c->structured)
		return NBD_EINVAL;
	if (req->type == NBD_CMD_DISC || req->type == NBD_CMD_FLUSH)
		return req->offset == 0 && req->count == 0 ? 0 : NBD_EINVAL;
	if (req->type == NBD_CMD_BLOCK_STATUS && !c->meta_alloc)
		return NBD_EINVAL;
	if (writes && e->read_only)
		return NBD_EPERM;
	if (req->count == 0)
		return NBD_EINVAL;
	if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) && req->count > MAX_REQUEST_SIZE)
		return NBD_EINVAL;
	if (c->block_size_negotiated && c->min_block > 1 &&
	    (req->offset % c->min_block || req->count % c->min_block))
		return NBD_EINVAL;
	/* Past the end: ENOSPC for what would write data there, as
	 * proto.md asks, EINVAL for everything else. */
	if (req->offset > e->size || req->count > e->size - req->offset)
		return req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC
										: NBD_EINVAL;
	return 0;
}

static uint32_t nbd_errno(int err)
{
	switch (err) {
	case EROFS:
	case EPERM:
		return NBD_EPERM;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EFBIG:
	case EDQUOT:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

static int simple_reply(struct tx *t, const struct nbd_request *req, uint32_t error)
{
	struct nbd_simple_reply *h;
	int r = reserve(t, sizeof *h, 1);

	if (r < 0)
		return r;
	h = out_put(t, sizeof *h);
	h->magic = htobe32(NBD_SIMPLE_REPLY_MAGIC);
	h->error = htobe32(error);
	h->cookie = htobe64(req->cookie);
	return 0;
}

static struct nbd_structured_reply *chunk_header(struct tx *t, const struct nbd_request *req,
						 uint16_t type, uint16_t flags, uint32_t len)
{
	struct nbd_structured_reply *h = out_put(t, sizeof *h);

	h->magic = htobe32(NBD_STRUCTURED_REPLY_MAGIC);
	h->flags = htobe16(flags);
	h->type = htobe16(type);
	h->cookie = htobe64(req->cookie);
	h->length = htobe32(len);
	return h;
}

static int structured_error(struct tx *t, const struct nbd_request *req, uint32_t error)
{
	uint8_t *p;
	int r = reserve(t, 20 + 6, 1);

	if (r < 0)
		return r;
	chunk_header(t, req, NBD_REPLY_TYPE_ERROR, NBD_REPLY_FLAG_DONE, 6);
	p = out_put(t, 6);
	error = htobe32(error);
	memcpy(p, &error, 4);
	memset(p + 4, 0, 2);    /* no message */
	return 0;
}

static int error_reply(struct tx *t, const struct nbd_request *req, uint32_t error)
{
	t->iov_floor = t->niov;
	debug("request type %u offset %llu count %u: error %u", req->type,
	      (unsigned long long)req->offset, req->count, error);
	if (t->c->structured && (req->type == NBD_CMD_READ || req->type == NBD_CMD_BLOCK_STATUS))
		return structured_error(t, req, error);
	return simple_reply(t, req, error);
}

static int collect_extent(void *opaque, uint64_t offset, uint64_t length, enum kiln_extent_type type)
{
	struct tx *t = opaque;

	if (t->next == t->ext_cap)
		return 1;       /* enough: the reply may cover less than asked */
	t->ext[t->next++] = (struct extent){ offset, length, type };
	return 0;
}

static int do_read(struct tx *t, const struct nbd_request *req)
{
	struct kiln_volume *v = t->c->exp->vol;
	int r = reserve(t, req->count + 64 + 32 * MAX_EXTENTS, 2 + 2 * MAX_EXTENTS);
	size_t save_olen = t->olen;
	int save_niov = t->niov;

	if (r < 0)
		return r;
	if (!t->c->structured) {
		struct nbd_simple_reply *h = out_put(t, sizeof *h);
		uint8_t *data = out_put(t, req->count);

		r = kiln_volume_read(v, data, req->count, req->offset);
		if (r < 0) {
			t->olen = save_olen;
			t->niov = save_niov;
			return simple_reply(t, req, nbd_errno(-r));
		}
		h->magic = htobe32(NBD_SIMPLE_REPLY_MAGIC);
		h->error = 0;
		h->cookie = htobe64(req->cookie);
		return 0;
	}

	/* Structured: data chunks, and holes as OFFSET_HOLE unless DF. */
	t->next = 0;
	if (req->flags & NBD_CMD_FLAG_DF) {
		t->ext[t->next++] = (struct extent){ req->offset, req->count, KILN_EXTENT_DATA };
	} else {
		r = kiln_volume_map_status(v, req->count, req->offset, collect_extent, t);
		if (r < 0)
			goto out_error;
		/* Past the extents we could hold, one last data chunk. */
		if (t->next == t->ext_cap) {
			struct extent *last = &t->ext[t->next - 1];

			last->length = req->offset + req->count - last->offset;
			last->type = KILN_EXTENT_DATA;
		}
	}
	for (size_t i = 0; i < t->next; i++) {
		struct extent *x = &t->ext[i];
		uint16_t flags = i + 1 == t->next ? NBD_REPLY_FLAG_DONE : 0;
		uint64_t off = htobe64(x->offset);

		if (x->type == KILN_EXTENT_DATA) {
			chunk_header(t, req, NBD_REPLY_TYPE_OFFSET_DATA, flags, (uint32_t)(8 + x->length));
			memcpy(out_put(t, 8), &off, 8);
			r = kiln_volume_read(v, out_put(t, x->length), x->length, x->offset);
			if (r < 0)
				goto out_error;
		} else {
			uint32_t len = htobe32((uint32_t)x->length);

			chunk_header(t, req, NBD_REPLY_TYPE_OFFSET_HOLE, flags, 12);
			memcpy(out_put(t, 8), &off, 8);
			memcpy(out_put(t, 4), &len, 4);
		}
	}
	return 0;
out_error:
	t->olen = save_olen;
	t->niov = save_niov;
	return structured_error(t, req, nbd_errno(-r));
}

static int do_block_status(struct tx *t, const struct nbd_request *req)
{
	size_t n;
	uint8_t *p;
	uint32_t id = htobe32(BASE_ALLOCATION_ID);
	int r;

	t->next = 0;
	r = kiln_volume_map_status(t->c->exp->vol, req->count, req->offset, collect_extent, t);
	if (r < 0)
		return structured_error(t, req, nbd_errno(-r));
	n = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : t->next;
	r = reserve(t, 20 + 4 + 8 * n, 1);
	if (r < 0)
		return r;
	chunk_header(t, req, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_FLAG_DONE, (uint32_t)(4 + 8 * n));
	p = out_put(t, 4 + 8 * n);
	memcpy(p, &id, 4);
	for (size_t i = 0; i < n; i++) {
		uint32_t len = htobe32((uint32_t)t->ext[i].length);
		uint32_t st = t->ext[i].type == KILN_EXTENT_HOLE ? NBD_STATE_HOLE | NBD_STATE_ZERO
			    : t->ext[i].type == KILN_EXTENT_ZERO ? NBD_STATE_ZERO : 0;

		st = htobe32(st);
		memcpy(p + 4 + 8 * i, &len, 4);
		memcpy(p + 8 + 8 * i, &st, 4);
	}
	return 0;
}

/* ---- the batch of reads and writes ----------------------------------- */

/* Run the batch: one kiln_volume_submit(), then finish every reply. */
static int run_batch(struct tx *t)
{
	struct kiln_volume *v;
	bool fua = false, fua_failed = false;
	int r;

	if (t->npend == 0)
		return 0;
	v = t->c->exp->vol;
	r = kiln_volume_submit(v, t->ios, t->nios);
	for (size_t k = 0; k < t->npend; k++)
		if (t->pend[k].req.type == NBD_CMD_WRITE && (t->pend[k].req.flags & NBD_CMD_FLAG_FUA))
			fua = true;
	if (fua && r == 0)
		fua_failed = kiln_volume_flush(v) < 0;
	for (size_t k = 0; k < t->npend && r == 0; k++) {
		struct pending *p = &t->pend[k];
		int err = 0;

		for (size_t i = p->io_start; i < p->io_end && !err; i++)
			err = t->ios[i].result;
		if (p->req.type == NBD_CMD_WRITE) {
			if (!err && fua_failed && (p->req.flags & NBD_CMD_FLAG_FUA))
				err = -EIO;
			r = simple_reply(t, &p->req, err ? nbd_errno(-err) : 0);
			continue;
		}
		if (!err) {
			if (p->simple)
				p->simple->error = 0;
			continue;
		}
		/* A failed read: drop what was laid out for it, send the error. */
		if (p->simple) {
			p->simple->error = htobe32(nbd_errno(-err));
			t->iov[p->iov_start].iov_len = sizeof *p->simple;
			for (int i = p->iov_start + 1; i < p->iov_end; i++)
				t->iov[i].iov_len = 0;
		} else {
			for (int i = p->iov_start; i < p->iov_end; i++)
				t->iov[i].iov_len = 0;
			t->iov_floor = t->niov;
			r = structured_error(t, &p->req, nbd_errno(-err));
		}
	}
	t->npend = t->nios = 0;
	return r < 0 ? r : 0;
}

/* Can this valid READ or WRITE join the batch? Reads lay their reply out
 * now, with the data buffers pointing into it. Returns 1 if it joined. */
static int add_to_batch(struct tx *t, const struct nbd_request *req, uint8_t *data)
{
	struct kiln_volume *v = t->c->exp->vol;
	struct pending *p;
	size_t need_ios = 1;
	int r;

	if (t->npend == KILN_IO_BATCH_MAX)
		return 0;
	if (req->type == NBD_CMD_READ && t->c->structured && !(req->flags & NBD_CMD_FLAG_DF)) {
		t->next = 0;
		r = kiln_volume_map_status(v, req->count, req->offset, collect_extent, t);
		if (r < 0 || t->next == t->ext_cap)
			return 0;       /* the unbatched path handles it */
		need_ios = 0;
		for (size_t i = 0; i < t->next; i++)
			need_ios += t->ext[i].type == KILN_EXTENT_DATA;
	}
	if (t->nios + need_ios > KILN_IO_BATCH_MAX)
		return 0;
	/* Room now for its reply, and for every reply of the batch to turn
	 * into an error chunk later, so run_batch() never has to flush. */
	if (t->olen + (req->type == NBD_CMD_READ ? req->count + 32 * t->next + 64 : 0) +
	    32 * (t->npend + 1) > OBUF_SIZE || t->niov + 2 * (int)(t->npend + 1) + 1 > MAX_IOV)
		return 0;

	p = &t->pend[t->npend++];
	*p = (struct pending){ .req = *req, .io_start = t->nios, .simple = NULL };
	t->iov_floor = t->niov;
	p->iov_start = t->niov;
	if (req->type == NBD_CMD_WRITE) {
		t->ios[t->nios++] = (struct kiln_io){ KILN_IO_WRITE, data, req->count, req->offset, 0 };
	} else if (!t->c->structured) {
		p->simple = out_put(t, sizeof *p->simple);
		p->simple->magic = htobe32(NBD_SIMPLE_REPLY_MAGIC);
		p->simple->cookie = htobe64(req->cookie);
		t->ios[t->nios++] = (struct kiln_io){ KILN_IO_READ, out_put(t, req->count), req->count,
						      req->offset, 0 };
	} else {
		if (req->flags & NBD_CMD_FLAG_DF) {
			t->next = 0;
			t->ext[t->next++] = (struct extent){ req->offset, req->count, KILN_EXTENT_DATA };
		}
		for (size_t i = 0; i < t->next; i++) {
			struct extent *x = &t->ext[i];
			uint16_t flags = i + 1 == t->next ? NBD_REPLY_FLAG_DONE : 0;
			uint64_t off = htobe64(x->offset);

			if (x->type == KILN_EXTENT_DATA) {
				chunk_header(t, req, NBD_REPLY_TYPE_OFFSET_DATA, flags, (uint32_t)(8 + x->length));
				memcpy(out_put(t, 8), &off, 8);
				t->ios[t->nios++] = (struct kiln_io){ KILN_IO_READ, out_put(t, x->length),
								      x->length, x->offset, 0 };
			} else {
				uint32_t len = htobe32((uint32_t)x->length);

				chunk_header(t, req, NBD_REPLY_TYPE_OFFSET_HOLE, flags, 12);
				memcpy(out_put(t, 8), &off, 8);
				memcpy(out_put(t, 4), &len, 4);
			}
		}
	}
	p->io_end = t->nios;
	p->iov_end = t->niov;
	t->iov_floor = t->niov;
	return 1;
}

/* ---- the writer ------------------------------------------------------ */

static int send_all(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		ssize_t done = writev(fd, iov, n);

		if (done < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (done <= 0)
			return done < 0 ? -errno : -EPIPE;
		iov_advance(&iov, &n, (size_t)done);
	}
	return 0;
}

/* Run one batch of writes and send its replies. A FUA write is answered
 * after a flush that covers its batch. */
static int write_batch(struct tx *t, struct wbatch *b)
{
	struct writer *w = &t->w;
	struct kiln_volume *v = t->c->exp->vol;
	bool fua = false;
	int fua_err = 0, r;

	r = kiln_volume_submit(v, b->ios, b->n);
	for (size_t k = 0; k < b->n; k++)
		fua |= b->req[k].flags & NBD_CMD_FLAG_FUA;
	if (fua)
		fua_err = kiln_volume_flush(v);
	for (size_t k = 0; k < b->n; k++) {
		int err = r < 0 ? r : b->ios[k].result;

		if (!err && (b->req[k].flags & NBD_CMD_FLAG_FUA))
			err = fua_err;
		if (err)
			debug("write offset %llu count %u: %s", (unsigned long long)b->req[k].offset,
			      b->req[k].count, strerror(-err));
		w->replies[k] = (struct nbd_simple_reply){
			.magic = htobe32(NBD_SIMPLE_REPLY_MAGIC),
			.error = htobe32(err ? nbd_errno(-err) : 0),
			.cookie = htobe64(b->req[k].cookie),
		};
		w->iov[k] = (struct iovec){ &w->replies[k], sizeof w->replies[k] };
	}
	pthread_mutex_lock(&t->send_lock);
	r = send_all(t->c->wfd, w->iov, (int)b->n);
	pthread_mutex_unlock(&t->send_lock);
	return r;
}

static void *writer_main(void *arg)
{
	struct tx *t = arg;
	struct writer *w = &t->w;

	pthread_mutex_lock(&w->lock);
	for (;;) {
		struct wbatch *b;
		int r;

		while (w->queued->n == 0 && !w->stop)
			pthread_cond_wait(&w->wake, &w->lock);
		if (w->queued->n == 0)
			break;
		b = w->queued;
		w->queued = w->running;
		w->running = b;
		w->busy = true;
		pthread_mutex_unlock(&w->lock);

		r = write_batch(t, b);

		pthread_mutex_lock(&w->lock);
		if (r < 0)
			w->broken = true;
		for (size_t k = 0; k < b->n; k++)
			w->in_buf[b->buf[k]]--;
		b->n = 0;
		w->busy = false;
		pthread_cond_broadcast(&w->progress);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

static int writer_init(struct writer *w)
{
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	pthread_cond_init(&w->progress, NULL);
	w->initialized = true;
	w->queued = calloc(1, sizeof *w->queued);
	w->running = calloc(1, sizeof *w->running);
	return w->queued && w->running ? 0 : -ENOMEM;
}

/* Let the writer start on what is queued (if it is idle, it starts now). */
static void writer_kick(struct writer *w)
{
	pthread_mutex_lock(&w->lock);
	if (w->queued->n > 0 && !w->busy)
		pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
}

/* Queue a valid WRITE whose payload is at data (in the current input
 * buffer). The writer thread starts on the first one. */
static int queue_write(struct tx *t, const struct nbd_request *req, uint8_t *data)
{
	struct writer *w = &t->w;
	struct wbatch *b;

	if (!w->started) {
		if (pthread_create(&w->thread, NULL, writer_main, t) != 0)
			return -EAGAIN;
		w->started = true;
	}
	pthread_mutex_lock(&w->lock);
	while (w->queued->n == KILN_IO_BATCH_MAX) {
		if (!w->busy)
			pthread_cond_signal(&w->wake);
		pthread_cond_wait(&w->progress, &w->lock);
	}
	b = w->queued;
	b->ios[b->n] = (struct kiln_io){ KILN_IO_WRITE, data, req->count, req->offset, 0 };
	b->req[b->n] = *req;
	b->buf[b->n] = (uint8_t)t->cur;
	b->n++;
	w->in_buf[t->cur]++;
	pthread_mutex_unlock(&w->lock);
	return 0;
}

/* Wait until every write received so far has been answered. true if
 * the writer's replies still reach the client. */
static bool writer_drain(struct writer *w)
{
	bool ok;

	if (!w->started)
		return true;
	pthread_mutex_lock(&w->lock);
	while (w->queued->n > 0 || w->busy) {
		if (!w->busy)
			pthread_cond_signal(&w->wake);
		pthread_cond_wait(&w->progress, &w->lock);
	}
	ok = !w->broken;
	pthread_mutex_unlock(&w->lock);
	return ok;
}

static void writer_stop(struct writer *w)
{
	if (w->started) {
		writer_drain(w);
		pthread_mutex_lock(&w->lock);
		w->stop = true;
		pthread_cond_signal(&w->wake);
		pthread_mutex_unlock(&w->lock);
		pthread_join(w->thread, NULL);
		w->started = false;
	}
	if (w->initialized) {
		pthread_mutex_destroy(&w->lock);
		pthread_cond_destroy(&w->wake);
		pthread_cond_destroy(&w->progress);
	}
	free(w->queued);
	free(w->running);
}

/* Writes queued or running whose payloads are in input buffer i. */
static size_t writes_in(struct writer *w, int i)
{
	ACQUIRE_LOCK_FOR_CURRENT_SCOPE(&w->lock);
	return w->in_buf[i];
}

static void wait_buffer_free(struct writer *w, int i)
{
	pthread_mutex_lock(&w->lock);
	while (w->in_buf[i] > 0) {
		if (!w->busy)
			pthread_cond_signal(&w->wake);
		pthread_cond_wait(&w->progress, &w->lock);
	}
	pthread_mutex_unlock(&w->lock);
}

static int do_zeroes(struct kiln_volume *v, const struct nbd_request *req)
{
	if (!(req->flags & NBD_CMD_FLAG_NO_HOLE))
		return kiln_volume_write_zeroes(v, req->count, req->offset);
	/* Allocated zeroes: real bytes, which is not fast. */
	if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
		return -ENOTSUP;
	for (uint64_t done = 0; done < req->count;) {
		uint64_t n = MIN((uint64_t)sizeof zero_buf, req->count - done);
		int r = kiln_volume_write(v, zero_buf, n, req->offset + done);

		if (r < 0)
			return r;
		done += n;
	}
	return 0;
}

/* Serve one valid request; its payload (WRITE) is at data. */
static int serve(struct tx *t, const struct nbd_request *req, const uint8_t *data)
{
	struct kiln_volume *v = t->c->exp->vol;
	int r = 0;

	switch (req->type) {
	case NBD_CMD_READ:
		return do_read(t, req);
	case NBD_CMD_BLOCK_STATUS:
		return do_block_status(t, req);
	case NBD_CMD_WRITE:
		r = kiln_volume_write(v, data, req->count, req->offset);
		break;
	case NBD_CMD_TRIM:
		r = kiln_volume_trim(v, req->count, req->offset);
		break;
	case NBD_CMD_WRITE_ZEROES:
		r = do_zeroes(v, req);
		break;
	case NBD_CMD_FLUSH:
		r = kiln_volume_flush(v);
		break;
	case NBD_CMD_CACHE:
		break;          /* reads come from the page cache or packs alike */
	case NBD_CMD_DISC:
		t->stop = true;
		return 0;
	}
	if (r == 0 && (req->flags & NBD_CMD_FLAG_FUA))
		r = kiln_volume_flush(v);
	return simple_reply(t, req, r < 0 ? nbd_errno(-r) : 0);
}

/* The pipe for spliced writes, made on first use. false if this input
 * cannot be spliced from (only sockets and pipes can) or no pipe can be
 * made: writes are then read into the buffer. */
static bool open_pipe(struct tx *t)
{
	struct stat st;
	int size;

	if (t->pipe[1] >= 0)
		return true;
	if (t->no_splice)
		return false;
	if (fstat(t->c->rfd, &st) < 0 || !(S_ISSOCK(st.st_mode) || S_ISFIFO(st.st_mode)) ||
	    pipe2(t->pipe, O_CLOEXEC) < 0) {
		t->no_splice = true;
		return false;
	}
	/* Less than asked (fs.pipe-max-size) still works, in more parts. */
	fcntl(t->pipe[1], F_SETPIPE_SZ, (int)PIPE_SIZE);
	size = fcntl(t->pipe[1], F_GETPIPE_SZ);
	t->pipe_size = size > 0 ? (size_t)size : 4096;
	return true;
}

/* Of len bytes for the volume at pos, how many end on a 4 KiB boundary. */
static size_t block_prefix(uint64_t pos, size_t len)
{
	uint64_t end = (pos + len) & ~(uint64_t)4095;

	return end > pos ? (size_t)(end - pos) : 0;
}

/* len bytes that are in the pipe already. */
static int read_pipe(int fd, uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = read(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A valid WRITE whose header is at ipos and whose payload is partly (or
 * not at all) in the input buffer: take what is there, splice the rest
 * from the socket through the pipe into the volume, and reply. 1 if it
 * was served, 0 if it must be read into the buffer instead (nothing of it
 * was consumed), -1 if the connection is lost. */
static int splice_write(struct tx *t, const struct nbd_request *req)
{
	struct kiln_volume *v = t->c->exp->vol;
	struct kiln_stream_write sw;
	const uint8_t *head = t->ibuf + t->ipos + sizeof *req;
	size_t have = t->ilen - t->ipos - sizeof *req, nb, take;
	uint64_t left = req->count - have, pos;
	uint8_t bounce[4096];
	int r;

	if (left < SPLICE_MIN || !open_pipe(t) ||
	    kiln_volume_stream_begin(v, req->count, req->offset, &sw) < 0)
		return 0;
	/* Replies already made leave before this thread waits on the socket. */
	if (flush_replies(t) < 0)
		return -1;
	if (t->w.started)
		writer_kick(&t->w);
	/* The volume takes the payload in parts, and a snapshot may fall
	 * between two (the I/O lock is taken per part): every part but the
	 * last ends on a 4 KiB boundary of the volume, so a write in flight
	 * is never torn inside a block. A tail short of the boundary waits
	 * in a small buffer, so the pipe is empty whenever the socket is
	 * spliced into it. What is here first goes now: meanwhile the client
	 * sends more. */
	pos = req->offset;
	take = block_prefix(pos, have);
	kiln_volume_stream_buf(&sw, head, take);
	pos += take;
	nb = have - take;
	memcpy(bounce, head + take, nb);
	t->ipos = t->ilen;
	while (left > 0) {
		ssize_t n = splice_in(t, (size_t)MIN(left, (uint64_t)t->pipe_size));
		size_t avail;

		if (n <= 0)
			goto lost;
		left -= (uint64_t)n;
		avail = (size_t)n;
		if (nb > 0) {
			/* complete the waiting block from the pipe */
			size_t need = MIN(avail, block_prefix(pos, nb + 4096) - nb);

			if (read_pipe(t->pipe[0], bounce + nb, need) < 0)
				goto lost;
			nb += need;
			avail -= need;
			if ((pos + nb) % 4096 != 0 && left > 0)
				continue;       /* the pipe is empty: more first */
			kiln_volume_stream_buf(&sw, bounce, nb);
			pos += nb;
			nb = 0;
		}
		take = left > 0 ? block_prefix(pos, avail) : avail;
		if (take > 0 && kiln_volume_stream_pipe(&sw, t->pipe[0], take) < 0)
			goto lost;
		pos += take;
		nb = avail - take;
		if (nb > 0 && read_pipe(t->pipe[0], bounce, nb) < 0)
			goto lost;
	}
	if (nb > 0)
		kiln_volume_stream_buf(&sw, bounce, nb);
	r = kiln_volume_stream_end(&sw);
	if (r == 0 && (req->flags & NBD_CMD_FLAG_FUA))
		r = kiln_volume_flush(v);
	if (r < 0)
		debug("write offset %llu count %u: %s", (unsigned long long)req->offset, req->count,
		      strerror(-r));
	return simple_reply(t, req, r < 0 ? nbd_errno(-r) : 0) < 0 ? -1 : 1;
lost:
	kiln_volume_stream_end(&sw);    /* what reached the volume */
	return -1;
}

/* Send the whole of len bytes from the pipe to the socket. */
static int splice_out(struct tx *t, size_t len)
{
	while (len > 0) {
		ssize_t n = splice(t->pipe[0], NULL, t->c->wfd, NULL, len, SPLICE_F_MOVE);
		struct pollfd p = { .fd = t->c->wfd, .events = POLLOUT };

		if (n < 0 && errno == EAGAIN) {    /* a non-blocking output (-s) */
			poll(&p, 1, -1);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		len -= (size_t)n;
	}
	return 0;
}

/* A valid READ wholly in the overlay: its bytes go from the page cache
 * through the pipe to the socket as references, not copies. 1 if it was
 * served, 0 if it goes the usual way (nothing was sent), -1 if the
 * connection is lost. Reads that are not page-aligned, or larger than
 * the pipe, go the usual way: the pipe's slots are pages. */
static int splice_read(struct tx *t, const struct nbd_request *req)
{
	union {
		struct nbd_simple_reply simple;
		struct {
			struct nbd_structured_reply h;
			uint64_t offset;
		} __attribute__((packed)) data;
	} head;
	struct iovec iov;
	int r;

	if (req->count < SPLICE_MIN || req->offset % 4096 != 0 || !open_pipe(t) ||
	    req->count > t->pipe_size)
		return 0;
	/* Into the pipe first: a read of chunks in packs is refused here
	 * and joins the batch, which must not be cut short for it. */
	if (kiln_volume_splice_read(t->c->exp->vol, t->pipe, req->count, req->offset) < 0)
		return 0;
	if (run_batch(t) < 0 || flush_replies(t) < 0)
		return -1;
	if (t->c->structured) {
		head.data.h = (struct nbd_structured_reply){
			.magic = htobe32(NBD_STRUCTURED_REPLY_MAGIC),
			.flags = htobe16(NBD_REPLY_FLAG_DONE),
			.type = htobe16(NBD_REPLY_TYPE_OFFSET_DATA),
			.cookie = htobe64(req->cookie),
			.length = htobe32(8 + req->count),
		};
		head.data.offset = htobe64(req->offset);
		iov = (struct iovec){ &head, sizeof head.data };
	} else {
		head.simple = (struct nbd_simple_reply){
			.magic = htobe32(NBD_SIMPLE_REPLY_MAGIC),
			.cookie = htobe64(req->cookie),
		};
		iov = (struct iovec){ &head, sizeof head.simple };
	}
	pthread_mutex_lock(&t->send_lock);
	r = send_all(t->c->wfd, &iov, 1);
	if (r == 0)
		r = splice_out(t, req->count);
	pthread_mutex_unlock(&t->send_lock);
	return r < 0 ? -1 : 1;
}

/* Move the unread input [ipos, ilen) to the start of a buffer, when it
 * must (n bytes from ipos would not fit) or should (the buffer is getting
 * long, or too full for a good read). Payloads of queued writes stay put:
 * the input goes to the other buffer instead, waiting for it only when
 * it must. */
static void make_room(struct tx *t, size_t n)
{
	size_t have = t->ilen - t->ipos;
	bool must = IBUF_SIZE - t->ipos < n;
	bool mine = writes_in(&t->w, t->cur) == 0;     /* no payload here is in use */
	int other = !t->cur;

	if (t->ipos == 0)
		return;
	if (!must && !(mine && have == 0) && t->ilen < IBUF_SOFT && IBUF_SIZE - t->ilen >= READ_MIN)
		return;
	if (mine) {
		memmove(t->ibuf, t->ibuf + t->ipos, have);
	} else {
		if (writes_in(&t->w, other) > 0) {
			if (!must)
				return;         /* go on reading where we are */
			wait_buffer_free(&t->w, other);
		}
		memcpy(t->ibufs[other], t->ibuf + t->ipos, have);
		t->cur = other;
		t->ibuf = t->ibufs[other];
	}
	t->ilen = have;
	t->ipos = 0;
}

/* Make sure ibuf holds n bytes from ipos; read more (after sending what
 * replies we have and handing queued writes to the writer, so the client
 * is never left waiting). 0, or -1 at end of stream. */
static int need(struct tx *t, size_t n)
{
	while (t->ilen - t->ipos < n) {
		ssize_t got;

		make_room(t, n);
		if (flush_replies(t) < 0)
			return -1;
		if (t->w.started)
			writer_kick(&t->w);
		got = ring_read(t, t->ibuf + t->ilen, IBUF_SIZE - t->ilen);
		if (got <= 0)
			return -1;
		t->ilen += (size_t)got;
	}
	return 0;
}

void transmit(struct conn *c)
{
	struct tx t = { .c = c, .pipe = { -1, -1 } };
	struct kiln_volume *v;

	pthread_mutex_init(&t.send_lock, NULL);
	t.ibufs[0] = malloc(IBUF_SIZE);
	t.ibufs[1] = malloc(IBUF_SIZE);
	t.ibuf = t.ibufs[0];
	t.obuf = malloc(OBUF_SIZE);
	t.ext_cap = MAX_EXTENTS;
	t.ext = calloc(t.ext_cap, sizeof *t.ext);
	if (!t.ibufs[0] || !t.ibufs[1] || !t.obuf || !t.ext || writer_init(&t.w) < 0)
		goto out;
	t.have_ring = io_uring_queue_init(8, &t.ring, 0) == 0;
	debug("transmission on %s: %s replies, %s", c->export_name,
	      c->structured ? "structured" : "simple", t.have_ring ? "io_uring" : "read/write");

	while (!t.stop) {
		struct nbd_request req;
		int err;

		/* Only what is wholly in the buffer joins the batch: reading
		 * more may move the buffer under the batch's write payloads. */
		if (t.ilen - t.ipos < sizeof req) {
			if (run_batch(&t) < 0 || need(&t, sizeof req) < 0)
				break;
		}
		if (request_decode(c, t.ibuf + t.ipos, &req) < 0) {
			server_error("%s: bad request magic: closing the connection", c->export_name);
			break;
		}
		err = request_validate(c, &req);
		if (req.type == NBD_CMD_WRITE && t.ilen - t.ipos - sizeof req < req.count) {
			int spliced;

			if (run_batch(&t) < 0)
				break;
			spliced = err ? 0 : splice_write(&t, &req);
			if (spliced < 0)
				break;
			if (spliced > 0)
				continue;
			if (req.count <= IBUF_SIZE - sizeof req) {
				if (need(&t, sizeof req + req.count) < 0)
					break;
			} else {
				/* Too large to hold: drop the payload, keep the framing. */
				uint64_t left = req.count;

				t.ipos += sizeof req;
				while (left > 0) {
					size_t n = (size_t)MIN(left, (uint64_t)(1 << 20));

					if (need(&t, n) < 0)
						goto out_drain;
					t.ipos += n;
					left -= n;
				}
				if (error_reply(&t, &req, err ? err : NBD_EINVAL) < 0)
					break;
				continue;
			}
		}
		t.ipos += sizeof req;
		if (err) {
			if (req.type == NBD_CMD_WRITE)
				t.ipos += req.count;
			if (error_reply(&t, &req, err) < 0)
				break;
			continue;
		}
		if (req.type == NBD_CMD_WRITE && req.count >= WRITER_MIN &&
		    queue_write(&t, &req, t.ibuf + t.ipos) == 0) {
			t.ipos += req.count;
			continue;
		}
		if (req.type == NBD_CMD_READ) {
			int spliced = splice_read(&t, &req);

			if (spliced < 0)
				break;
			if (spliced > 0)
				continue;
		}
		if ((req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE) &&
		    add_to_batch(&t, &req, t.ibuf + t.ipos)) {
			if (req.type == NBD_CMD_WRITE)
				t.ipos += req.count;
			continue;
		}
		/* Anything else waits for the reads and writes before it (a
		 * FLUSH must see the writes before it done). */
		if (run_batch(&t) < 0 || !writer_drain(&t.w))
			break;
		t.iov_floor = t.niov;
		if (serve(&t, &req, t.ibuf + t.ipos) < 0)
			break;
		if (req.type == NBD_CMD_WRITE)
			t.ipos += req.count;
		t.iov_floor = t.niov;
	}
out_drain:
	run_batch(&t);
	writer_drain(&t.w);
	flush_replies(&t);
	v = c->exp->vol;
	if (!c->exp->read_only)
		kiln_volume_flush(v);
out:
	writer_stop(&t.w);
	if (t.have_ring)
		io_uring_queue_exit(&t.ring);
	free(t.ibufs[0]);
	free(t.ibufs[1]);
	free(t.obuf);
	free(t.ext);
	if (t.pipe[0] >= 0) {
		close(t.pipe[0]);
		close(t.pipe[1]);
	}
	pthread_mutex_destroy(&t.send_lock);
}
