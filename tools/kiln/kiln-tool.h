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
	const char *store_from;        /* "--store" or "KILN_STORE"; NULL for the default */
	const char *account;           /* NULL until the store is open, unless given */
	bool account_explicit;         /* --account or KILN_ACCOUNT */
	enum output_format output;
	struct kiln_store *store;
	struct kiln_region *region;
};

#define OPT_MULTI    1u            /* takes several values, AWS style (see main.c) */
#define OPT_REQUIRED 2u            /* the command cannot run without it */

/* One option of a command, spelled --name or --name=value. */
struct cli_option {
	const char *name;              /* without the leading "--" */
	const char *metavar;           /* NULL: a flag without a value */
	const char *help;
	unsigned flags;                /* OPT_* */
};

#define CLI_MAX_OPTIONS 16

/* The values of an OPT_MULTI option, in command-line order. */
struct cli_list {
	const char **v;
	size_t n;
};

/* What main.c parsed for a command besides the global options. */
struct cli_args {
	const struct cli_command *cmd;
	const char *values[CLI_MAX_OPTIONS];  /* by index in cmd->options; "" for a flag */
	struct cli_list lists[CLI_MAX_OPTIONS];  /* the same, for OPT_MULTI options */
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

/* main.c: a command's options by name (which must be in its table) */
const char *arg_opt(const struct cli_args *args, const char *name);  /* NULL: not given */
bool arg_flag(const struct cli_args *args, const char *name);
const char *const *arg_list(const struct cli_args *args, const char *name, size_t *ret_n);
/* main.c: a region name like "us-east-1": lowercase letters, digits, dashes */
bool region_name_valid(const char *s);

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
int cmd_snapshot_modify_attribute(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_snapshot_describe_attribute(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_register(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_describe(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_describe_attribute(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_modify_attribute(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_reset_attribute(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_deregister(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_copy(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_wait_image_available(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_stats(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_verify(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_gc(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_store_recompress(struct cli_ctx *ctx, const struct cli_args *args);

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
/* kind is "volume", "snapshot" or "image": false (and a message) unless
 * id is a well-formed id of that kind */
bool check_id(const char *kind, const char *id);
void err_store_open(const char *dir, const char *from, int r);
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
void json_bool(struct json *j, bool v);
void json_null(struct json *j);
/* a number written as given: the caller vouches that it is a JSON number */
void json_number_text(struct json *j, const char *literal);
void json_kv_bool(struct json *j, const char *key, bool v);
void json_finish(struct json *j);

/* output.c: length of the well-formed UTF-8 sequence at p (RFC 3629), 0 if
 * none; p must be NUL-terminated */
size_t utf8_len(const unsigned char *p);

/* json-parse.c: a strict JSON (RFC 8259) parser into a tree */
#define JSON_PARSE_MAX_SIZE (1024 * 1024)  /* bytes of input */
#define JSON_PARSE_MAX_DEPTH 32            /* nested arrays and objects */
#define JSON_PARSE_MAX_MEMBERS 4096        /* members of one object */

enum json_type {
	JSON_NULL,
	JSON_BOOL,
	JSON_NUMBER,
	JSON_STRING,
	JSON_ARRAY,
	JSON_OBJECT,
};

struct json_node {
	enum json_type type;
	unsigned line, column;         /* where it starts (1-based, in characters) */
	bool boolean;                  /* JSON_BOOL */
	bool integer;                  /* JSON_NUMBER without fraction or exponent */
	char *text;                    /* JSON_STRING: UTF-8, no NUL; JSON_NUMBER: as written */
	char **keys;                   /* JSON_OBJECT: member names, in order */
	struct json_node **items;      /* JSON_ARRAY: elements; JSON_OBJECT: member values */
	size_t n;
};

/* Parses text[0..len) (text[len] must be NUL) with at most max_depth
 * nested containers; on error, err gets "line L, column C: what". */
int json_parse(const char *text, size_t len, int max_depth, struct json_node **ret_root,
	       char *err, size_t errsize);
void json_node_free(struct json_node *n);
/* "a string", "an array", ... */
const char *json_type_name(enum json_type t);
/* the member named key of an object, or NULL */
const struct json_node *json_node_get(const struct json_node *obj, const char *key);
/* true when n is an integer in 0..UINT64_MAX */
bool json_node_u64(const struct json_node *n, uint64_t *ret_value);
/* writes n with the JSON writer (n must fit its depth) */
void json_write_node(struct json *j, const struct json_node *n);
/* The JSON of option --opt: arg itself, or the file it names as
 * "file://PATH". 0, or -1 after a message "kiln: --opt: why". */
int json_parse_arg(const char *opt, const char *arg, struct json_node **ret_root);

/* cmd-image.c: --block-device-mappings JSON (or file://) into a malloc'd
 * array. 0, or -1 after a message naming the entry and the problem. */
int parse_mappings(const char *arg, struct kiln_bdm **ret_v, size_t *ret_n);

/* cmd-instance.c */
int cmd_instance_launch(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_instance_describe(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_instance_boot(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_instance_terminate(struct cli_ctx *ctx, const struct cli_args *args);
int cmd_image_create(struct cli_ctx *ctx, const struct cli_args *args);

/* cmd-image.c: a change of launch or create-volume permissions, as JSON
 * {"Add":[{"UserId":"ACCOUNT"}|{"Group":"all"}, ...],"Remove":[...]} */
struct perm_change {
	struct json_node *root;        /* owns the strings below */
	const char **add, **remove;
	size_t nadd, nremove;
	bool add_all, remove_all;
};
/* 0, or -1 after a message naming --opt and what is wrong */
int perm_change_parse(const char *opt, const char *arg, struct perm_change *ret_change);
void perm_change_free(struct perm_change *pc);
/* "key": [{"Group": "all"}, {"UserId": ...}, ...] */
void json_permissions(struct json *j, const char *key, bool group_all,
		      const char *const *users, size_t nusers);
/* the same as a table on stdout (nothing when there is none) */
void print_permissions_text(bool group_all, const char *const *users, size_t nusers);

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
