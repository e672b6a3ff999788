/* SPDX-License-Identifier: MIT */
/* compress.c: the only zstd user. One compression and one decompression
 * context per thread, made on first use and reused. */
#include <errno.h>
#include <zstd.h>

#include "internal.h"

static pthread_key_t cctx_key, dctx_key;
static pthread_once_t keys_once = PTHREAD_ONCE_INIT;

static void free_cctx(void *p)
{
	ZSTD_freeCCtx(p);
}

static void free_dctx(void *p)
{
	ZSTD_freeDCtx(p);
}

static void make_keys(void)
{
	pthread_key_create(&cctx_key, free_cctx);
	pthread_key_create(&dctx_key, free_dctx);
}

size_t compress_bound(size_t len)
{
	return ZSTD_compressBound(len);
}

ssize_t compress_chunk(const void *src, size_t len, void *dst, size_t cap, int level)
{
	ZSTD_CCtx *cctx;
	size_t n;

	pthread_once(&keys_once, make_keys);
	cctx = pthread_getspecific(cctx_key);
	if (!cctx) {
		cctx = ZSTD_createCCtx();
		if (!cctx)
			return -ENOMEM;
		pthread_setspecific(cctx_key, cctx);
	}
	n = ZSTD_compressCCtx(cctx, dst, cap, src, len, level);
	if (ZSTD_isError(n)) {
		debug("zstd: compress: %s", ZSTD_getErrorName(n));
		return -EIO;
	}
	/* Keep it raw unless compression saves at least 1/32: reading raw
	 * bytes is cheaper than decompressing nearly as many. */
	if (n >= len - len / 32)
		return 0;
	return (ssize_t)n;
}

int decompress_chunk(const void *src, size_t slen, void *dst, size_t raw_len)
{
	ZSTD_DCtx *dctx;
	size_t n;

	pthread_once(&keys_once, make_keys);
	dctx = pthread_getspecific(dctx_key);
	if (!dctx) {
		dctx = ZSTD_createDCtx();
		if (!dctx)
			return -ENOMEM;
		pthread_setspecific(dctx_key, dctx);
	}
	n = ZSTD_decompressDCtx(dctx, dst, raw_len, src, slen);
	if (ZSTD_isError(n)) {
		debug("zstd: decompress: %s", ZSTD_getErrorName(n));
		return -EBADMSG;
	}
	return n == raw_len ? 0 : -EBADMSG;
}
