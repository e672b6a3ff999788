/* SPDX-License-Identifier: MIT */
/* handshake.c: the fixed newstyle handshake and option haggling.
 *
 * Every option gets an answer and the session goes on, except ABORT,
 * EXPORT_NAME (which ends haggling either way) and a malformed frame we
 * cannot skip. Option payloads are bounded (MAX_OPTION_SIZE): a larger
 * one is read and dropped, answered with NBD_REP_ERR_TOO_BIG. */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "server.h"

#define BASE_ALLOCATION "base:allocation"
#define BASE_ALLOCATION_ID 1

uint16_t transmission_flags(const struct conn *c, const struct export *e)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		     NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;

	/* DF only means something with structured replies (proto.md). */
	if (c->structured)
		f |= NBD_FLAG_SEND_DF;
	if (e->read_only)
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
	return f;
}

static int reply(struct conn *c, uint32_t option, uint32_t type, const void *data, uint32_t len)
{
	struct nbd_fixed_new_option_reply h = {
		.magic = htobe64(NBD_REP_MAGIC),
		.option = htobe32(option),
		.reply = htobe32(type),
		.length = htobe32(len),
	};

	if (conn_write(c, &h, sizeof h) < 0)
		return -1;
	if (len && conn_write(c, data, len) < 0)
		return -1;
	return 0;
}

/* An error reply with a human-readable message, as proto.md allows. */
static int reply_error(struct conn *c, uint32_t option, uint32_t type, const char *msg)
{
	debug("option %u: error 0x%x: %s", option, type, msg);
	return reply(c, option, type, msg, (uint32_t)strlen(msg));
}

static int send_export_list(void *opaque, const char *name, const char *desc)
{
	struct conn *c = opaque;
	uint32_t nlen = (uint32_t)strlen(name), dlen = (uint32_t)strlen(desc);
	uint8_t buf[4 + KILN_ID_MAX + EXPORT_DESCRIPTION_MAX];
	uint32_t be = htobe32(nlen);

	if (nlen >= KILN_ID_MAX || dlen >= EXPORT_DESCRIPTION_MAX)
		return 0;
	memcpy(buf, &be, 4);
	memcpy(buf + 4, name, nlen);
	memcpy(buf + 4 + nlen, desc, dlen);
	return reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + nlen + dlen) < 0 ? -1 : 0;
}

/* NBD_REP_INFO for one info type. */
static int send_info(struct conn *c, uint32_t option, uint16_t type, const struct export *e)
{
	uint8_t buf[2 + 12 + sizeof e->description];
	uint16_t t = htobe16(type);
	uint32_t len = 2;

	memcpy(buf, &t, 2);
	switch (type) {
	case NBD_INFO_EXPORT: {
		uint64_t size = htobe64(e->size);
		uint16_t flags = htobe16(transmission_flags(c, e));

		memcpy(buf + 2, &size, 8);
		memcpy(buf + 10, &flags, 2);
		len = 12;
		break;
	}
	case NBD_INFO_NAME:
		len = 2 + (uint32_t)strlen(e->name);
		memcpy(buf + 2, e->name, len - 2);
		break;
	case NBD_INFO_DESCRIPTION:
		len = 2 + (uint32_t)strlen(e->description);
		memcpy(buf + 2, e->description, len - 2);
		break;
	case NBD_INFO_BLOCK_SIZE: {
		uint32_t min = htobe32(c->min_block), pref = htobe32(MAX(e->chunk_size, 4096u)),
			 max = htobe32(MAX_REQUEST_SIZE);

		memcpy(buf + 2, &min, 4);
		memcpy(buf + 6, &pref, 4);
		memcpy(buf + 10, &max, 4);
		len = 14;
		break;
	}
	default:
		return 0;       /* unknown info requests are ignored */
	}
	return reply(c, option, NBD_REP_INFO, buf, len);
}

/* Read a u32-length-prefixed string at *pos of data; 0 or -1. */
static int take_string(const uint8_t *data, uint32_t len, uint32_t *pos, char *out, uint32_t cap)
{
	uint32_t n;

	if (len - *pos < 4)
		return -1;
	memcpy(&n, data + *pos, 4);
	n = be32toh(n);
	*pos += 4;
	if (n > len - *pos || n >= cap)
		return -1;
	memcpy(out, data + *pos, n);
	out[n] = '\0';
	if (memchr(out, '\0', n))
		return -1;
	*pos += n;
	return 0;
}

/* Contexts selected for another export do not carry over to this one
 * (BLOCK_STATUS then gets EINVAL, as with none selected). */
static void keep_meta_for(struct conn *c, const char *name)
{
	if (c->meta_alloc && strcmp(c->meta_export, name) != 0)
		c->meta_alloc = false;
}

static int do_info_go(struct conn *c, uint32_t option, const uint8_t *data, uint32_t len)
{
	char name[MAX_STRING + 1];
	uint32_t pos = 0;
	uint16_t nreq;
	struct export *e;
	const char *why;
	bool want_block_size = false;
	int r;

	if (take_string(data, len, &pos, name, sizeof name) < 0 || len - pos < 2)
		return reply_error(c, option, NBD_REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO");
	memcpy(&nreq, data + pos, 2);
	nreq = be16toh(nreq);
	pos += 2;
	if ((uint32_t)nreq * 2 != len - pos)
		return reply_error(c, option, NBD_REP_ERR_INVALID, "bad number of information requests");

	r = export_get(name, &e, &why);
	if (r < 0) {
		char msg[256];

		snprintf(msg, sizeof msg, "%.100s: %s", name[0] ? name : "(default export)", why);
		/* Busy (another process owns the volume) is a refusal of
		 * policy, not a shutdown; the message says which. */
		return reply_error(c, option, r == -ENOENT ? NBD_REP_ERR_UNKNOWN : NBD_REP_ERR_POLICY,
				   msg);
	}
	c->min_block = e->size % 512 == 0 ? 512 : 1;
	for (uint16_t i = 0; i < nreq; i++) {
		uint16_t t;

		memcpy(&t, data + pos + 2u * i, 2);
		t = be16toh(t);
		if (t == NBD_INFO_BLOCK_SIZE)
			want_block_size = true;
		if (t != NBD_INFO_EXPORT && send_info(c, option, t, e) < 0)
			goto out_put;
	}
	/* NBD_INFO_EXPORT is always sent. */
	if (send_info(c, option, NBD_INFO_EXPORT, e) < 0)
		goto out_put;
	if (reply(c, option, NBD_REP_ACK, NULL, 0) < 0)
		goto out_put;
	if (option == NBD_OPT_GO) {
		c->exp = e;
		c->block_size_negotiated = want_block_size;
		c->tflags = transmission_flags(c, e);
		snprintf(c->export_name, sizeof c->export_name, "%s", name);
		keep_meta_for(c, name);
		return 1;       /* transmission starts */
	}
	export_put(e);
	return 0;
out_put:
	export_put(e);
	return -1;
}

/* LIST_META_CONTEXT and SET_META_CONTEXT: only base:allocation exists. */
static int do_meta_context(struct conn *c, uint32_t option, const uint8_t *data, uint32_t len)
{
	char name[MAX_STRING + 1], query[MAX_STRING + 1];
	uint32_t pos = 0, nq;
	struct export *e;
	const char *why;
	bool selected = false;

	/* SET replaces what was selected, even when it fails. */
	if (option == NBD_OPT_SET_META_CONTEXT)
		c->meta_alloc = false;
	if (option == NBD_OPT_SET_META_CONTEXT && !c->structured)
		return reply_error(c, option, NBD_REP_ERR_INVALID,
				   "SET_META_CONTEXT needs structured replies first");
	if (take_string(data, len, &pos, name, sizeof name) < 0 || len - pos < 4)
		return reply_error(c, option, NBD_REP_ERR_INVALID, "malformed meta context request");
	memcpy(&nq, data + pos, 4);
	nq = be32toh(nq);
	pos += 4;
	if (export_get(name, &e, &why) < 0) {
		char msg[256];

		snprintf(msg, sizeof msg, "%.100s: %s", name, why);
		return reply_error(c, option, NBD_REP_ERR_UNKNOWN, msg);
	}
	export_put(e);
	for (uint32_t i = 0; i < nq || (nq == 0 && option == NBD_OPT_LIST_META_CONTEXT && i == 0); i++) {
		bool match;

		if (nq == 0) {
			match = true;               /* list everything we have */
		} else {
			if (take_string(data, len, &pos, query, sizeof query) < 0)
				return reply_error(c, option, NBD_REP_ERR_INVALID, "malformed query");
			match = strcmp(query, BASE_ALLOCATION) == 0 ||
				(option == NBD_OPT_LIST_META_CONTEXT && strcmp(query, "base:") == 0);
		}
		if (match && !selected) {
			uint8_t buf[4 + sizeof BASE_ALLOCATION];
			/* LIST answers with the reserved id 0. */
			uint32_t id = htobe32(option == NBD_OPT_SET_META_CONTEXT ? BASE_ALLOCATION_ID : 0);

			memcpy(buf, &id, 4);
			memcpy(buf + 4, BASE_ALLOCATION, sizeof BASE_ALLOCATION - 1);
			if (reply(c, option, NBD_REP_META_CONTEXT, buf, 4 + sizeof BASE_ALLOCATION - 1) < 0)
				return -1;
			selected = true;
		}
	}
	if (pos != len && nq != 0)
		return reply_error(c, option, NBD_REP_ERR_INVALID, "trailing bytes in meta context request");
	if (option == NBD_OPT_SET_META_CONTEXT) {
		c->meta_alloc = selected;
		snprintf(c->meta_export, sizeof c->meta_export, "%s", name);
	}
	return reply(c, option, NBD_REP_ACK, NULL, 0);
}

/* Old-style end of haggling: size, flags, and maybe 124 zero bytes. An
 * unknown name here can only be answered by closing the connection. */
static int do_export_name(struct conn *c, const uint8_t *data, uint32_t len)
{
	char name[MAX_STRING + 1];
	struct export *e;
	const char *why;
	uint8_t buf[8 + 2 + 124] = { 0 };
	uint64_t size;
	uint16_t flags;

	if (len > MAX_STRING)
		return -1;
	memcpy(name, data, len);
	name[len] = '\0';
	if (export_get(name, &e, &why) < 0) {
		debug("NBD_OPT_EXPORT_NAME %s: %s", name, why);
		return -1;
	}
	c->exp = e;
	c->min_block = 1;
	c->tflags = transmission_flags(c, e);
	snprintf(c->export_name, sizeof c->export_name, "%s", name);
	keep_meta_for(c, name);
	size = htobe64(e->size);
	flags = htobe16(c->tflags);
	memcpy(buf, &size, 8);
	memcpy(buf + 8, &flags, 2);
	if (conn_write(c, buf, c->no_zeroes ? 10 : sizeof buf) < 0)
		return -1;
	return 1;
}

/* Read and drop len bytes of an option we will not take. */
static int skip(struct conn *c, uint32_t len)
{
	uint8_t buf[4096];

	while (len > 0) {
		uint32_t n = MIN(len, (uint32_t)sizeof buf);

		if (conn_read(c, buf, n) < 0)
			return -1;
		len -= n;
	}
	return 0;
}

int handshake(struct conn *c)
{
	uint8_t hello[18];
	uint64_t m;
	uint16_t hflags = htobe16(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	uint32_t cflags;
	CLEANUP_FREE uint8_t *data = malloc(MAX_OPTION_SIZE);

	if (!data)
		return -1;
	m = htobe64(NBD_MAGIC);
	memcpy(hello, &m, 8);
	m = htobe64(NBD_IHAVEOPT);
	memcpy(hello + 8, &m, 8);
	memcpy(hello + 16, &hflags, 2);
	if (conn_write(c, hello, sizeof hello) < 0 || conn_read(c, &cflags, 4) < 0)
		return -1;
	cflags = be32toh(cflags);
	if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		debug("handshake: unknown client flags 0x%x refused", cflags);
		return -1;
	}
	c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
	c->fixed = cflags & NBD_FLAG_C_FIXED_NEWSTYLE;

	for (int count = 0; count < 1024; count++) {
		struct nbd_new_option o;
		uint32_t option, len;
		int r;

		if (conn_read(c, &o, sizeof o) < 0)
			return -1;
		if (be64toh(o.magic) != NBD_IHAVEOPT) {
			debug("handshake: bad option magic");
			return -1;
		}
		option = be32toh(o.option);
		len = be32toh(o.length);
		debug("option %u, %u bytes", option, len);
		/* Plain newstyle clients know only EXPORT_NAME; anything else
		 * cannot be answered, so it ends the connection. */
		if (!c->fixed && option != NBD_OPT_EXPORT_NAME) {
			debug("option %u from a client without fixed newstyle: closing", option);
			return -1;
		}
		if (len > MAX_OPTION_SIZE) {
			if (option == NBD_OPT_EXPORT_NAME || skip(c, len) < 0)
				return -1;
			if (reply_error(c, option, NBD_REP_ERR_TOO_BIG, "option too long") < 0)
				return -1;
			continue;
		}
		if (conn_read(c, data, len) < 0)
			return -1;

		switch (option) {
		case NBD_OPT_EXPORT_NAME:
			return do_export_name(c, data, len) == 1 ? 0 : -1;
		case NBD_OPT_ABORT:
			reply(c, option, NBD_REP_ACK, NULL, 0);
			return -1;
		case NBD_OPT_LIST:
			if (len != 0)
				r = reply_error(c, option, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
			else if (exports_list(send_export_list, c) != 0)
				r = reply_error(c, option, NBD_REP_ERR_SHUTDOWN, "cannot list the exports");
			else
				r = reply(c, option, NBD_REP_ACK, NULL, 0);
			break;
		case NBD_OPT_STARTTLS:
			r = reply_error(c, option, NBD_REP_ERR_POLICY, "TLS is not configured on this server");
			break;
		case NBD_OPT_INFO:
		case NBD_OPT_GO:
			r = do_info_go(c, option, data, len);
			if (r == 1)
				return 0;
			break;
		case NBD_OPT_STRUCTURED_REPLY:
			if (len != 0) {
				r = reply_error(c, option, NBD_REP_ERR_INVALID, "takes no data");
			} else {
				c->structured = true;
				r = reply(c, option, NBD_REP_ACK, NULL, 0);
			}
			break;
		case NBD_OPT_LIST_META_CONTEXT:
		case NBD_OPT_SET_META_CONTEXT:
			r = do_meta_context(c, option, data, len);
			break;
		default:
			r = reply_error(c, option, NBD_REP_ERR_UNSUP, "unknown option");
			break;
		}
		if (r < 0)
			return -1;
	}
	return -1;      /* an endless stream of options */
}
