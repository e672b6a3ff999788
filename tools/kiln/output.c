/* SPDX-License-Identifier: MIT */
/* output.c: diagnostics, value formatting, a JSON writer and a text table. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln-tool.h"

/* ---- diagnostics ---------------------------------------------------- */

void errmsg(const char *fmt, ...)
{
	va_list ap;

	fputs("kiln: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* "kiln: <what>: <strerror(-r)>" */
void errmsg_errno(int r, const char *fmt, ...)
{
	va_list ap;

	fputs("kiln: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(-r));
}

void err_id(const struct cli_ctx *ctx, const char *kind, const char *id, int r)
{
	const char *region = ctx->region_name;

	switch (r) {
	case -ENOENT:
		errmsg("%s %s does not exist in region %s", kind, id, region);
		break;
	case -EXDEV:
		errmsg("%s %s belongs to another region, not %s", kind, id, region);
		break;
	case -EBUSY:
		errmsg("%s %s is in use%s", kind, id,
		       strcmp(kind, "volume") == 0 ?
		       " (a device of an instance, exported by kiln-nbd, or open in another process)" :
		       strcmp(kind, "snapshot") == 0 ? " by a registered image (deregister it first)" : "");
		break;
	case -EBADMSG:
		errmsg("%s %s: corrupt data in the store (run 'kiln store verify')",
		       kind, id);
		break;
	case -EPERM:
		errmsg("only the owner of %s %s may do that", kind, id);
		break;
	case -ETIMEDOUT:
		errmsg("%s %s: the kiln-nbd serving it has stopped answering (stopped or hung?)",
		       kind, id);
		break;
	default:
		errmsg_errno(r, "%s %s", kind, id);
		break;
	}
}

bool check_id(const char *kind, const char *id)
{
	const char *prefix = strcmp(kind, "volume") == 0 ? "vol" :
			     strcmp(kind, "image") == 0 ? "ami" :
			     strcmp(kind, "instance") == 0 ? "i" : "snap";

	if (kiln_id_valid(id, prefix))
		return true;
	errmsg("invalid %s id '%s': expected %s- followed by 17 lowercase hex digits",
	       kind, id, prefix);
	return false;
}

void err_store_open(const char *dir, const char *from, int r)
{
	if ((r == -ENOENT || r == -ENOTDIR || r == -EBADMSG) && from)
		errmsg("%s (%s) is not a kiln store: make one with 'kiln init', or name yours", dir, from);
	else if (r == -ENOENT || r == -ENOTDIR || r == -EBADMSG)
		errmsg("%s is not a kiln store: give --store DIR or set KILN_STORE to yours "
		       "(the default is ./.kiln in the current directory), or make one with 'kiln init'", dir);
	else
		errmsg_errno(r, "cannot open store %s", dir);
}

void err_region_open(const char *store_dir, const char *region, int r)
{
	if (r == -ENOENT || r == -EINVAL)
		errmsg("region %s does not exist in store %s (see 'kiln region list')",
		       region, store_dir);
	else if (r == -EBADMSG)
		errmsg("region %s of store %s is damaged: its catalog (catalog.db) is missing, empty "
		       "or not a catalog, or a directory of it is missing; nothing was changed",
		       region, store_dir);
	else
		errmsg_errno(r, "cannot open region %s", region);
}

static void out_of_memory(void)
{
	errmsg("out of memory");
	exit(EXIT_FAILURE);
}

void *xmalloc(size_t size)
{
	void *p = malloc(size);

	if (!p)
		out_of_memory();
	return p;
}

void *xrealloc(void *p, size_t nmemb, size_t size)
{
	void *q = reallocarray(p, nmemb, size);

	if (!q)
		out_of_memory();
	return q;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		out_of_memory();
	return p;
}

/* ---- formatting ----------------------------------------------------- */

/* "512 B", "64.0 KiB", "8.0 GiB" */
const char *human_size(uint64_t bytes, char buf[HUMAN_SIZE_MAX])
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	size_t i = 0;

	if (bytes < 1024) {
		snprintf(buf, HUMAN_SIZE_MAX, "%" PRIu64 " B", bytes);
		return buf;
	}
	v /= 1024;
	while (v >= 1024 && i + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		i++;
	}
	snprintf(buf, HUMAN_SIZE_MAX, "%.1f %s", v, units[i]);
	return buf;
}

/* ISO 8601 in UTC, "2026-11-28T04:33:18Z" or with ".000" before the Z. */
const char *iso_time(int64_t t, bool millis, char buf[ISO_TIME_MAX])
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!gmtime_r(&tt, &tm) ||
	    !strftime(buf, ISO_TIME_MAX, millis ? "%Y-%m-%dT%H:%M:%S.000Z" :
		      "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, ISO_TIME_MAX, "%s", "-");
	return buf;
}

/* Sizes in whole GiB, rounded up as EC2 reports them. */
uint64_t gib_round_up(uint64_t bytes)
{
	return bytes / GIB + (bytes % GIB != 0);
}

/* The states by their EC2 names. */
const char *volume_state_name(enum kiln_volume_state s)
{
	switch (s) {
	case KILN_VOLUME_CREATING:
		return "creating";
	case KILN_VOLUME_AVAILABLE:
		return "available";
	case KILN_VOLUME_IN_USE:
		return "in-use";
	case KILN_VOLUME_DELETING:
		return "deleting";
	default:
		return "unknown";
	}
}

const char *snapshot_state_name(enum kiln_snapshot_state s)
{
	switch (s) {
	case KILN_SNAPSHOT_PENDING:
		return "pending";
	case KILN_SNAPSHOT_COMPLETED:
		return "completed";
	case KILN_SNAPSHOT_ERROR:
		return "error";
	default:
		return "unknown";
	}
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), 0 if none. */
size_t utf8_len(const unsigned char *p)
{
	unsigned char c = p[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (i = 2; i < n; i++) {
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	}
	return n;
}

/* ---- JSON ----------------------------------------------------------- */

void json_init(struct json *j, FILE *f)
{
	j->f = f;
	j->depth = 0;
	j->after_key = false;
}

static void json_newline(struct json *j)
{
	int i;

	fputc('\n', j->f);
	for (i = 0; i < j->depth; i++)
		fputs("    ", j->f);
}

/* Commas and indentation before a value or a key. */
static void json_prefix(struct json *j)
{
	if (j->after_key) {
		j->after_key = false;
		return;
	}
	if (j->depth > 0) {
		if (!j->empty[j->depth - 1])
			fputc(',', j->f);
		j->empty[j->depth - 1] = false;
		json_newline(j);
	}
}

/* A string with every character RFC 8259 requires escaped, escaped; bytes
 * that are not well-formed UTF-8 become U+FFFD so the output stays valid. */
static void json_write_string(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n;

	fputc('"', f);
	while (*p) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\b':
			fputs("\\b", f);
			break;
		case '\f':
			fputs("\\f", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			if (*p < 0x20 || *p == 0x7f) {
				fprintf(f, "\\u%04x", *p);
			} else {
				n = utf8_len(p);
				if (n == 0) {
					fputs("\\ufffd", f);
				} else {
					fwrite(p, 1, n, f);
					p += n - 1;
				}
			}
			break;
		}
		p++;
	}
	fputc('"', f);
}

static void json_open(struct json *j, char c)
{
	assert(j->depth < JSON_MAX_DEPTH);
	json_prefix(j);
	fputc(c, j->f);
	j->empty[j->depth++] = true;
}

static void json_close(struct json *j, char c)
{
	assert(j->depth > 0 && !j->after_key);
	j->depth--;
	if (!j->empty[j->depth])
		json_newline(j);
	fputc(c, j->f);
}

void json_object_begin(struct json *j)
{
	json_open(j, '{');
}

void json_object_end(struct json *j)
{
	json_close(j, '}');
}

void json_array_begin(struct json *j)
{
	json_open(j, '[');
}

void json_array_end(struct json *j)
{
	json_close(j, ']');
}

void json_key(struct json *j, const char *key)
{
	assert(j->depth > 0 && !j->after_key);
	json_prefix(j);
	json_write_string(j->f, key);
	fputs(": ", j->f);
	j->after_key = true;
}

void json_string(struct json *j, const char *s)
{
	json_prefix(j);
	json_write_string(j->f, s);
}

void json_u64(struct json *j, uint64_t v)
{
	json_prefix(j);
	fprintf(j->f, "%" PRIu64, v);
}

/* A ratio with two decimals; the C locale is in force, so the point is '.'. */
void json_ratio(struct json *j, double v)
{
	json_prefix(j);
	fprintf(j->f, "%.2f", v);
}

void json_bool(struct json *j, bool v)
{
	json_prefix(j);
	fputs(v ? "true" : "false", j->f);
}

void json_null(struct json *j)
{
	json_prefix(j);
	fputs("null", j->f);
}

void json_number_text(struct json *j, const char *literal)
{
	json_prefix(j);
	fputs(literal, j->f);
}

void json_kv_bool(struct json *j, const char *key, bool v)
{
	json_key(j, key);
	json_bool(j, v);
}

void json_kv_string(struct json *j, const char *key, const char *s)
{
	json_key(j, key);
	json_string(j, s);
}

void json_kv_u64(struct json *j, const char *key, uint64_t v)
{
	json_key(j, key);
	json_u64(j, v);
}

void json_finish(struct json *j)
{
	assert(j->depth == 0);
	fputc('\n', j->f);
}

/* ---- text table ----------------------------------------------------- */

void table_init(struct table *t, size_t ncols, const char *const *headers,
		unsigned right)
{
	t->ncols = ncols;
	t->headers = headers;
	t->right = right;
	t->cells = NULL;
	t->nrows = 0;
	t->cap = 0;
}

/* A copy of s fit for a terminal: control characters and bytes that are
 * not well-formed UTF-8 become '?'. */
static char *sanitize(const char *s)
{
	char *out = xstrdup(s);
	unsigned char *p = (unsigned char *)out;
	size_t n;

	while (*p) {
		if (*p < 0x20 || *p == 0x7f) {
			*p++ = '?';
			continue;
		}
		n = utf8_len(p);
		if (n == 0)
			*p++ = '?';
		else
			p += n;
	}
	return out;
}

void table_add(struct table *t, ...)
{
	va_list ap;
	size_t i;

	if (t->nrows == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->cells = xrealloc(t->cells, t->cap, t->ncols * sizeof(char *));
	}
	va_start(ap, t);
	for (i = 0; i < t->ncols; i++)
		t->cells[t->nrows * t->ncols + i] = sanitize(va_arg(ap, const char *));
	va_end(ap);
	t->nrows++;
}

/* Characters on screen: code points of the sanitized UTF-8. */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		w += ((unsigned char)*s & 0xc0) != 0x80;
	return w;
}

static void table_row(const struct table *t, FILE *f, const char *const *row,
		      const size_t *widths)
{
	size_t i, pad;

	for (i = 0; i < t->ncols; i++) {
		pad = widths[i] - text_width(row[i]);
		if (i > 0)
			fputs("  ", f);
		if (t->right & (1u << i))
			fprintf(f, "%*s%s", (int)pad, "", row[i]);
		else if (i + 1 < t->ncols)
			fprintf(f, "%s%*s", row[i], (int)pad, "");
		else
			fputs(row[i], f);
	}
	fputc('\n', f);
}

void table_print(const struct table *t, FILE *f)
{
	size_t *widths = xmalloc(t->ncols * sizeof(*widths));
	size_t r, i, w;

	for (i = 0; i < t->ncols; i++)
		widths[i] = text_width(t->headers[i]);
	for (r = 0; r < t->nrows; r++) {
		for (i = 0; i < t->ncols; i++) {
			w = text_width(t->cells[r * t->ncols + i]);
			if (w > widths[i])
				widths[i] = w;
		}
	}
	table_row(t, f, t->headers, widths);
	for (r = 0; r < t->nrows; r++)
		table_row(t, f, (const char *const *)&t->cells[r * t->ncols], widths);
	free(widths);
}

void table_free(struct table *t)
{
	size_t i;

	for (i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = t->cap = 0;
}
