/* SPDX-License-Identifier: MIT */
/* kiln-tool.h: private declarations shared by the files of the kiln tool. */
#ifndef KILN_TOOL_H
#define KILN_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kiln.h"

#define KILN_DEFAULT_STORE "./.kiln"
#define KILN_DEFAULT_REGION "us-east-1"

#define KIB (UINT64_C(1) << 10)
#define MIB (UINT64_C(1) << 20)
#define GIB (UINT64_C(1) << 30)
#define TIB (UINT64_C(1) << 40)

enum output_format {
	OUTPUT_TEXT,
	OUTPUT_JSON,
};

/* What a command handler gets: the global options, resolved, and the store
 * and region that main.c opened for it (NULL when the command's table
 * entry did not ask for them). */
struct cli_ctx {
	const char *store_dir;
	const char *region_name;
	bool region_explicit;          /* --region was given on the command line */
	const char *account;           /* NULL until the store is open, unless given */
	bool account_explicit;         /* --account or KILN_ACCOUNT */
	enum output_format output;
	struct kiln_store *store;
	struct kiln_region *region;
};

/* One option of a command, spelled --name or --name=value. */
struct cli_option {
	const char *name;              /* without the leading "--" */
	const char *metavar;           /* NULL: a flag without a value */
	const char *help;
};

#define CLI_MAX_OPTIONS 8

/* What main.c parsed for a command besides the global options. */
struct cli_args {
	const struct cli_command *cmd;
	const char *values[CLI_MAX_OPTIONS];  /* by index in cmd->options */
	char **argv;                   /* positional arguments */
	int argc;
};

#define CMD_STORE  1u              /* open the store before running */
#define CMD_REGION 2u              /* also open the selected region */

struct cli_command {
	const char *noun;
	const char *verb;              /* NULL: the noun alone is the command */
	int (*run)(struct cli_ctx *ctx, const struct cli_args *args);
	unsigned flags;
	const char *synopsis;          /* what follows the command words */
	const char *summary;           /* one line for the command lists */
	const char *description;       /* a paragraph for its --help, or NULL */
	const struct cli_option *options;  /* terminated by a NULL name */
	int min_args, max_args;
};

/* main.c */
const char *arg_opt(const struct cli_args *args, const char *name);

/* cmd-region.c: the store's region names, sorted; free with strv_free() */
int region_names(struct kiln_store *store, char ***ret_names, size_t *ret_n);
void strv_free(char **v, size_t n);

/* cmd-volume.c: 0, or -1 after saying why path cannot take an export */
int check_output(const char *path);

/* cmd-*.c: each returns the exit status */
int cmd_init(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_region_list(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_volume_create(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_volume_import(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_volume_export(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_volume_describe(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_volume_delete(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_snapshot_create(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_snapshot_describe(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_snapshot_delete(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_snapshot_export(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_snapshot_diff(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_stats(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_verify(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_gc(struct cli_ctx *ctx, const struct cli_args *args);

/* parse.c: each returns 0, or -EINVAL/-ERANGE with *ret_why saying why */
int parse_size(const char *s, uint64_t bare_unit, uint64_t *ret_size,
	       const char **ret_why);
int parse_chunk_size(const char *s, uint32_t *ret_size, const char **ret_why);
int parse_int(const char *s, long min, long max, long *ret_value,
	      const char **ret_why);
bool account_valid(const char *account);
int parse_output(const char *s, enum output_format *ret_format);

/* output.c: diagnostics (all on stderr, prefixed "kiln: ") */
void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void errmsg_errno(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* kind is "volume" or "snapshot"; prints why the engine refused id */
void err_id(const struct cli_ctx *ctx, const char *kind, const char *id, int r);
/* false (and a message) unless id is a well-formed id of that kind */
bool check_id(const char *kind, const char *id);
void err_store_open(const char *dir, int r);
void err_region_open(const char *store_dir, const char *region, int r);
/* exits 1 with "kiln: out of memory" */
void *xmalloc(size_t size);
void *xrealloc(void *p, size_t nmemb, size_t size);
char *xstrdup(const char *s);

/* output.c: formatting */
#define HUMAN_SIZE_MAX 32
#define ISO_TIME_MAX 32
const char *human_size(uint64_t bytes, char buf[HUMAN_SIZE_MAX]);
const char *iso_time(int64_t t, bool millis, char buf[ISO_TIME_MAX]);
uint64_t gib_round_up(uint64_t bytes);
const char *volume_state_name(enum kiln_volume_state s);
const char *snapshot_state_name(enum kiln_snapshot_state s);

/* output.c: a small JSON writer, pretty-printed like the AWS CLI */
#define JSON_MAX_DEPTH 16
struct json {
	FILE *f;
	int depth;
	bool empty[JSON_MAX_DEPTH];    /* nothing written in this container yet */
	bool after_key;
};
void json_init(struct json *j, FILE *f);
void json_object_begin(struct json *j);
void json_object_end(struct json *j);
void json_array_begin(struct json *j);
void json_array_end(struct json *j);
void json_key(struct json *j, const char *key);
void json_string(struct json *j, const char *s);
void json_u64(struct json *j, uint64_t v);
void json_ratio(struct json *j, double v);
void json_kv_string(struct json *j, const char *key, const char *s);
void json_kv_u64(struct json *j, const char *key, uint64_t v);
void json_finish(struct json *j);

/* output.c: a plain text table, columns aligned by their widest cell */
struct table {
	size_t ncols;
	const char *const *headers;
	unsigned right;                /* bit n: right-align column n */
	char **cells;                  /* nrows * ncols, owned */
	size_t nrows, cap;
};
void table_init(struct table *t, size_t ncols, const char *const *headers,
		unsigned right);
/* ncols strings; copied, with control characters shown as '?' */
void table_add(struct table *t, ...);
void table_print(const struct table *t, FILE *f);
void table_free(struct table *t);

/* progress.c: a progress bar on stderr, only when stderr is a terminal */
struct progress;
struct progress *progress_new(void);
/* a kiln_progress_fn; opaque is the struct progress */
void progress_update(void *opaque, uint64_t done, uint64_t total);
/* wipes the bar so other output can take its line; the next update redraws */
void progress_clear(struct progress *p);
/* ends the bar's line if one was drawn, and frees p */
void progress_end(struct progress *p);

#endif /* KILN_TOOL_H */
