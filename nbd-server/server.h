/* SPDX-License-Identifier: MIT */
/* server.h: what the files of kiln-nbd share. */
#ifndef KILN_NBD_SERVER_H
#define KILN_NBD_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"
#include "common/cleanup.h"
#include "common/minmax.h"

#define EXPORT_DESCRIPTION_MAX 192      /* with its NUL */
#define MAX_REQUEST_SIZE (32u * 1024 * 1024)   /* largest READ/WRITE we serve */
#define MAX_OPTION_SIZE (64u * 1024)           /* largest option payload we take */
#define MAX_STRING 4096                        /* NBD strings, per proto.md */

extern bool verbose;
extern bool log_quiet;          /* no error messages (the fuzzer makes millions) */
void server_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void server_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#undef debug
#define debug(fmt, ...) \
	do { if (__builtin_expect(verbose, 0)) server_debug(fmt, ##__VA_ARGS__); } while (0)

/* ---- precapture.c: the next snapshot's work, done early ----------- */

/* Every ms milliseconds (0: never), capture quiet dirty chunks. */
int precapture_start(unsigned ms);
void precapture_stop(void);

/* ---- exports.c: the one place export names are resolved ----------- */

struct export {
	char name[KILN_ID_MAX];
	char description[EXPORT_DESCRIPTION_MAX];
	struct kiln_volume *vol;
	bool read_only;
	uint64_t size;
	uint32_t chunk_size;
	unsigned refs;
	int ctl_fd;             /* control socket (writable volumes), or -1 */
	struct export *next;
};

struct server_config {
	struct kiln_store *store;
	struct kiln_region *region;
	bool read_only;
	char **allowed;         /* --export names; NULL: everything */
	size_t nallowed;
	unsigned precapture_ms; /* --precapture-interval; 0: off */
};

int exports_init(struct server_config *cfg);
/* Resolve name to an open export and take a reference. -ENOENT for a
 * name we do not serve, -EBUSY when another process owns the volume;
 * ret_why gets a message for the client. */
int export_get(const char *name, struct export **ret_export, const char **ret_why);
void export_put(struct export *e);
/* The open writable exports, each with a reference taken: export_put()
 * each, then free(*ret). */
int exports_writable(struct export ***ret, size_t *ret_n);
/* Every export a client may name: fn(opaque, name, description). */
int exports_list(int (*fn)(void *opaque, const char *name, const char *description), void *opaque);
/* Flush every open export (a FLUSH on one connection of a multi-conn
 * export flushes the volume all connections share). */
void exports_close_all(void);
/* The control thread: answers `kiln snapshot create` for exported volumes. */
int control_start(void);
void control_refuse(void);
void control_stop(void);

/* ---- conn: one client connection ------------------------------------ */

struct conn {
	int rfd, wfd;                   /* the same socket, except for -s */
	struct export *exp;
	bool structured;                /* NBD_OPT_STRUCTURED_REPLY done */
	bool meta_alloc;                /* base:allocation selected... */
	char meta_export[MAX_STRING + 1];       /* ...for this export */
	bool block_size_negotiated;     /* client asked for NBD_INFO_BLOCK_SIZE */
	bool no_zeroes;
	bool fixed;                     /* the client speaks fixed newstyle */
	uint16_t tflags;                /* transmission flags we sent */
	uint32_t min_block;
	char export_name[MAX_STRING + 1];
};

/* handshake.c: fixed newstyle negotiation. 0 when the client entered
 * transmission (c->exp is set), -1 when the connection must close. */
int handshake(struct conn *c);
uint16_t transmission_flags(const struct conn *c, const struct export *e);

/* transmit.c: serve requests until the client disconnects or we stop. */
void transmit(struct conn *c);
/* Parse and check one request header; see transmit.c. Exposed for the
 * fuzzer. Returns 0, or an NBD error for a bad request whose framing is
 * intact, or -1 when framing is lost. */
struct nbd_request;
int request_decode(const struct conn *c, const void *wire, struct nbd_request *req);
int request_validate(const struct conn *c, const struct nbd_request *req);

/* io.c-like helpers for the handshake: whole reads and writes. */
int conn_read(struct conn *c, void *buf, size_t len);
int conn_write(struct conn *c, const void *buf, size_t len);

#endif
