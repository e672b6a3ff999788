/* SPDX-License-Identifier: MIT */
/* json-parse.c: a small, strict recursive-descent JSON parser into a tree.
 *
 * It accepts exactly RFC 8259: one value, surrounded by optional
 * whitespace (and an optional UTF-8 byte order mark before it). Strings
 * must be well-formed UTF-8; escapes, \uXXXX and surrogate pairs among
 * them, become UTF-8. What it refuses, on purpose, beyond the RFC: a
 * string holding U+0000 (our strings are C strings), an object naming one
 * key twice (RFC 8259 leaves the meaning to the parser; we would rather
 * say so), input beyond JSON_PARSE_MAX_SIZE, nesting beyond the caller's
 * limit, and more than JSON_PARSE_MAX_MEMBERS members in one object.
 * Every error names the line and the column (in characters) where the
 * problem is, and what the problem is.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln-tool.h"

struct parser {
	const char *s;                 /* the input, NUL at s[len] */
	size_t len, pos;
	unsigned line, column;         /* of s[pos] */
	int depth, max_depth;
	char *err;
	size_t errsize;
	bool failed;
};

static void perr(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The first error wins; it is placed at the current position. */
static void perr(struct parser *p, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->failed)
		return;
	p->failed = true;
	n = snprintf(p->err, p->errsize, "line %u, column %u: ", p->line, p->column);
	if (n < 0 || (size_t)n >= p->errsize)
		return;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->errsize - (size_t)n, fmt, ap);
	va_end(ap);
}

/* What is at the current position, for messages: "'x'", "U+0007",
 * "end of input". */
static const char *found(const struct parser *p, char buf[32])
{
	const unsigned char *c = (const unsigned char *)p->s + p->pos;
	size_t n;

	if (p->pos >= p->len) {
		snprintf(buf, 32, "end of input");
	} else if (*c < 0x20 || *c == 0x7f) {
		snprintf(buf, 32, "U+%04X", *c);
	} else {
		n = utf8_len(c);
		if (n == 0)
			snprintf(buf, 32, "a byte 0x%02X that is not UTF-8", *c);
		else
			snprintf(buf, 32, "'%.*s'", (int)n, (const char *)c);
	}
	return buf;
}

/* Moves past n bytes that are one character (or fewer than one, when n
 * is inside a multi-byte sequence being skipped byte by byte). */
static void advance(struct parser *p, size_t n)
{
	size_t i;

	for (i = 0; i < n && p->pos < p->len; i++, p->pos++) {
		unsigned char c = (unsigned char)p->s[p->pos];

		if (c == '\n') {
			p->line++;
			p->column = 1;
		} else if ((c & 0xc0) != 0x80) {
			p->column++;
		}
	}
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(struct parser *p)
{
	while (p->pos < p->len && is_ws(p->s[p->pos]))
		advance(p, 1);
}

static int peek(const struct parser *p)
{
	return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1;
}

static struct json_node *node_new(const struct parser *p, enum json_type type)
{
	struct json_node *n = xmalloc(sizeof(*n));

	memset(n, 0, sizeof(*n));
	n->type = type;
	n->line = p->line;
	n->column = p->column;
	return n;
}

void json_node_free(struct json_node *n)
{
	size_t i;

	if (!n)
		return;
	for (i = 0; i < n->n; i++) {
		json_node_free(n->items[i]);
		if (n->keys)
			free(n->keys[i]);
	}
	free(n->items);
	free(n->keys);
	free(n->text);
	free(n);
}

/* ---- strings -------------------------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		while (b->len + n + 1 > b->cap)
			b->cap = b->cap ? b->cap * 2 : 32;
		b->p = xrealloc(b->p, b->cap, 1);
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_add_utf8(struct buf *b, uint32_t cp)
{
	char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | cp >> 6);
		u[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | cp >> 12);
		u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char)(0xf0 | cp >> 18);
		u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	buf_add(b, u, n);
}

/* The four hex digits after "\u" at the current position (which is the
 * backslash); -1 after a message. */
static long hex4(struct parser *p)
{
	long v = 0;
	int i, c;

	for (i = 0; i < 4; i++) {
		c = p->pos + 2 + (size_t)i < p->len ? (unsigned char)p->s[p->pos + 2 + i] : -1;
		if (c >= '0' && c <= '9')
			v = v * 16 + (c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v * 16 + (c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v = v * 16 + (c - 'A' + 10);
		else {
			perr(p, "\\u must be followed by four hex digits");
			return -1;
		}
	}
	return v;
}

/* One escape sequence at the current position (a backslash). */
static int parse_escape(struct parser *p, struct buf *b)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *e;
	long hi, lo;
	char c, shown[32];

	c = p->pos + 1 < p->len ? p->s[p->pos + 1] : '\0';
	if (c != 'u') {
		e = c ? strchr(from, c) : NULL;
		if (!e) {
			advance(p, 1);
			perr(p, "invalid escape: a backslash followed by %s (expected one of "
			     "\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)", found(p, shown));
			return -1;
		}
		buf_add(b, &to[e - from], 1);
		advance(p, 2);
		return 0;
	}
	hi = hex4(p);
	if (hi < 0)
		return -1;
	if (hi == 0) {
		perr(p, "\\u0000 (NUL) is not allowed in a string");
		return -1;
	}
	if (hi >= 0xdc00 && hi <= 0xdfff) {
		perr(p, "\\u%04lX is the second half of a surrogate pair, without a first half",
		     hi);
		return -1;
	}
	if (hi < 0xd800 || hi > 0xdbff) {
		buf_add_utf8(b, (uint32_t)hi);
		advance(p, 6);
		return 0;
	}
	/* a high surrogate: a low one must follow */
	if (p->pos + 7 >= p->len || p->s[p->pos + 6] != '\\' || p->s[p->pos + 7] != 'u') {
		perr(p, "\\u%04lX (a high surrogate) must be followed by a \\u escape of a low "
		     "surrogate (\\uDC00 to \\uDFFF)", hi);
		return -1;
	}
	advance(p, 6);
	lo = hex4(p);
	if (lo < 0)
		return -1;
	if (lo < 0xdc00 || lo > 0xdfff) {
		perr(p, "\\u%04lX after the high surrogate \\u%04lX is not a low surrogate "
		     "(\\uDC00 to \\uDFFF)", lo, hi);
		return -1;
	}
	buf_add_utf8(b, 0x10000 + (uint32_t)((hi - 0xd800) << 10 | (lo - 0xdc00)));
	advance(p, 6);
	return 0;
}

/* A string at the current position (a quote); returns it, or NULL after a
 * message. */
static char *parse_string_text(struct parser *p)
{
	struct buf b = { NULL, 0, 0 };
	unsigned line = p->line, column = p->column;
	const unsigned char *c;
	size_t n;

	buf_add(&b, "", 0);
	advance(p, 1);
	for (;;) {
		if (p->pos >= p->len) {
			/* say where the string started: that is what to fix */
			p->line = line;
			p->column = column;
			perr(p, "string not terminated (no closing '\"')");
			break;
		}
		c = (const unsigned char *)p->s + p->pos;
		if (*c == '"') {
			advance(p, 1);
			return b.p;
		}
		if (*c == '\\') {
			if (parse_escape(p, &b) < 0)
				break;
			continue;
		}
		if (*c < 0x20) {
			perr(p, "control character U+%04X in a string (escape it, e.g. as \\u%04x)",
			     *c, *c);
			break;
		}
		n = utf8_len(c);
		if (n == 0 || p->pos + n > p->len) {
			perr(p, "a byte 0x%02X that is not part of well-formed UTF-8 in a string",
			     *c);
			break;
		}
		buf_add(&b, (const char *)c, n);
		advance(p, n);
	}
	free(b.p);
	return NULL;
}

/* ---- values --------------------------------------------------------- */

static struct json_node *parse_value(struct parser *p);

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static struct json_node *parse_number(struct parser *p)
{
	struct json_node *n = node_new(p, JSON_NUMBER);
	size_t start = p->pos;
	char shown[32];

	n->integer = true;
	if (peek(p) == '-')
		advance(p, 1);
	if (peek(p) == '0') {
		advance(p, 1);
		if (is_digit(peek(p))) {
			perr(p, "a number must not have a leading zero");
			goto fail;
		}
	} else if (is_digit(peek(p))) {
		while (is_digit(peek(p)))
			advance(p, 1);
	} else {
		perr(p, "expected a digit after '-', found %s", found(p, shown));
		goto fail;
	}
	if (peek(p) == '.') {
		n->integer = false;
		advance(p, 1);
		if (!is_digit(peek(p))) {
			perr(p, "expected a digit after the decimal point, found %s",
			     found(p, shown));
			goto fail;
		}
		while (is_digit(peek(p)))
			advance(p, 1);
	}
	if (peek(p) == 'e' || peek(p) == 'E') {
		n->integer = false;
		advance(p, 1);
		if (peek(p) == '+' || peek(p) == '-')
			advance(p, 1);
		if (!is_digit(peek(p))) {
			perr(p, "expected a digit in the exponent, found %s", found(p, shown));
			goto fail;
		}
		while (is_digit(peek(p)))
			advance(p, 1);
	}
	n->text = xmalloc(p->pos - start + 1);
	memcpy(n->text, p->s + start, p->pos - start);
	n->text[p->pos - start] = '\0';
	return n;

fail:
	json_node_free(n);
	return NULL;
}

/* true, false or null */
static struct json_node *parse_literal(struct parser *p)
{
	static const struct {
		const char *word;
		enum json_type type;
		bool value;
	} literals[] = {
		{ "true", JSON_BOOL, true },
		{ "false", JSON_BOOL, false },
		{ "null", JSON_NULL, false },
	};
	struct json_node *n;
	size_t i, len, w;

	/* the whole word, so that "nul" or "truex" are named as they are */
	for (len = 0; p->pos + len < p->len; len++) {
		char c = p->s[p->pos + len];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_'))
			break;
	}
	for (i = 0; i < sizeof(literals) / sizeof(literals[0]); i++) {
		w = strlen(literals[i].word);
		if (len == w && strncmp(p->s + p->pos, literals[i].word, w) == 0) {
			n = node_new(p, literals[i].type);
			n->boolean = literals[i].value;
			advance(p, w);
			return n;
		}
	}
	perr(p, "expected a value (a string, number, object, array, true, false or null), "
	     "found '%.*s'%s", len > 24 ? 24 : (int)len, p->s + p->pos,
	     len > 24 ? "..." : "");
	return NULL;
}

static bool enter(struct parser *p)
{
	if (p->depth >= p->max_depth) {
		perr(p, "nested deeper than %d arrays and objects", p->max_depth);
		return false;
	}
	p->depth++;
	return true;
}

static void add_item(struct json_node *n, size_t *cap, char *key, struct json_node *item)
{
	if (n->n == *cap) {
		*cap = *cap ? *cap * 2 : 4;
		n->items = xrealloc(n->items, *cap, sizeof(*n->items));
		if (n->type == JSON_OBJECT)
			n->keys = xrealloc(n->keys, *cap, sizeof(*n->keys));
	}
	if (n->type == JSON_OBJECT)
		n->keys[n->n] = key;
	n->items[n->n++] = item;
}

static struct json_node *parse_array(struct parser *p)
{
	struct json_node *n = node_new(p, JSON_ARRAY), *item;
	size_t cap = 0;
	char shown[32];

	if (!enter(p))
		goto fail;
	advance(p, 1);
	skip_ws(p);
	if (peek(p) == ']') {
		advance(p, 1);
		p->depth--;
		return n;
	}
	for (;;) {
		skip_ws(p);
		item = parse_value(p);
		if (!item)
			goto fail;
		add_item(n, &cap, NULL, item);
		skip_ws(p);
		if (peek(p) == ']') {
			advance(p, 1);
			p->depth--;
			return n;
		}
		if (peek(p) != ',') {
			perr(p, "expected ',' or ']' after an element of the array that starts at "
			     "line %u, column %u, found %s", n->line, n->column, found(p, shown));
			goto fail;
		}
		advance(p, 1);
		skip_ws(p);
		if (peek(p) == ']') {
			perr(p, "a trailing comma before ']' is not allowed");
			goto fail;
		}
	}

fail:
	json_node_free(n);
	return NULL;
}

static struct json_node *parse_object(struct parser *p)
{
	struct json_node *n = node_new(p, JSON_OBJECT), *item;
	size_t cap = 0, i;
	char shown[32], *key;
	unsigned kline, kcolumn;

	if (!enter(p))
		goto fail;
	advance(p, 1);
	skip_ws(p);
	if (peek(p) == '}') {
		advance(p, 1);
		p->depth--;
		return n;
	}
	for (;;) {
		skip_ws(p);
		if (peek(p) == '\'') {
			perr(p, "member names take double quotes, not single quotes");
			goto fail;
		}
		if (peek(p) != '"') {
			perr(p, "expected a member name in double quotes, found %s", found(p, shown));
			goto fail;
		}
		kline = p->line;
		kcolumn = p->column;
		key = parse_string_text(p);
		if (!key)
			goto fail;
		for (i = 0; i < n->n; i++) {
			if (strcmp(n->keys[i], key) == 0) {
				p->line = kline;
				p->column = kcolumn;
				perr(p, "duplicate member name \"%s\" in one object", key);
				free(key);
				goto fail;
			}
		}
		if (n->n == JSON_PARSE_MAX_MEMBERS) {
			p->line = kline;
			p->column = kcolumn;
			perr(p, "more than %d members in one object", JSON_PARSE_MAX_MEMBERS);
			free(key);
			goto fail;
		}
		skip_ws(p);
		if (peek(p) != ':') {
			perr(p, "expected ':' after the member name \"%s\", found %s", key,
			     found(p, shown));
			free(key);
			goto fail;
		}
		advance(p, 1);
		skip_ws(p);
		item = parse_value(p);
		if (!item) {
			free(key);
			goto fail;
		}
		add_item(n, &cap, key, item);
		skip_ws(p);
		if (peek(p) == '}') {
			advance(p, 1);
			p->depth--;
			return n;
		}
		if (peek(p) != ',') {
			perr(p, "expected ',' or '}' after a member of the object that starts at "
			     "line %u, column %u, found %s", n->line, n->column, found(p, shown));
			goto fail;
		}
		advance(p, 1);
		skip_ws(p);
		if (peek(p) == '}') {
			perr(p, "a trailing comma before '}' is not allowed");
			goto fail;
		}
	}

fail:
	json_node_free(n);
	return NULL;
}

static struct json_node *parse_value(struct parser *p)
{
	struct json_node *n;
	char shown[32];
	int c = peek(p);

	switch (c) {
	case '{':
		return parse_object(p);
	case '[':
		return parse_array(p);
	case '"':
		n = node_new(p, JSON_STRING);
		n->text = parse_string_text(p);
		if (!n->text) {
			json_node_free(n);
			return NULL;
		}
		return n;
	case '-':
	case '0': case '1': case '2': case '3': case '4':
	case '5': case '6': case '7': case '8': case '9':
		return parse_number(p);
	case -1:
		perr(p, "expected a value, found end of input");
		return NULL;
	default:
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
			return parse_literal(p);
		if (c == '\'')
			perr(p, "strings take double quotes, not single quotes");
		else
			perr(p, "expected a value (a string, number, object, array, true, false "
			     "or null), found %s", found(p, shown));
		return NULL;
	}
}

int json_parse(const char *text, size_t len, int max_depth, struct json_node **ret_root,
	       char *err, size_t errsize)
{
	struct parser p = {
		.s = text, .len = len, .line = 1, .column = 1, .max_depth = max_depth,
		.err = err, .errsize = errsize,
	};
	struct json_node *root;
	char shown[32];

	if (len > JSON_PARSE_MAX_SIZE) {
		snprintf(err, errsize, "larger than %d bytes", JSON_PARSE_MAX_SIZE);
		return -EFBIG;
	}
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		p.pos = 3;             /* a byte order mark: RFC 8259 lets us ignore it */
	skip_ws(&p);
	if (p.pos >= p.len) {
		perr(&p, "no JSON value (the input is empty)");
		return -EINVAL;
	}
	root = parse_value(&p);
	if (!root)
		return -EINVAL;
	skip_ws(&p);
	if (p.pos < p.len) {
		perr(&p, "unexpected %s after the end of the JSON value", found(&p, shown));
		json_node_free(root);
		return -EINVAL;
	}
	*ret_root = root;
	return 0;
}

/* ---- using the tree ------------------------------------------------- */

const char *json_type_name(enum json_type t)
{
	switch (t) {
	case JSON_NULL:
		return "null";
	case JSON_BOOL:
		return "a boolean";
	case JSON_NUMBER:
		return "a number";
	case JSON_STRING:
		return "a string";
	case JSON_ARRAY:
		return "an array";
	case JSON_OBJECT:
		return "an object";
	default:
		return "unknown";
	}
}

const struct json_node *json_node_get(const struct json_node *obj, const char *key)
{
	size_t i;

	if (obj->type != JSON_OBJECT)
		return NULL;
	for (i = 0; i < obj->n; i++) {
		if (strcmp(obj->keys[i], key) == 0)
			return obj->items[i];
	}
	return NULL;
}

bool json_node_u64(const struct json_node *n, uint64_t *ret_value)
{
	uint64_t v = 0;
	const char *s;

	if (n->type != JSON_NUMBER || !n->integer || n->text[0] == '-')
		return false;
	for (s = n->text; *s; s++) {
		unsigned d = (unsigned)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*ret_value = v;
	return true;
}

void json_write_node(struct json *j, const struct json_node *n)
{
	size_t i;

	switch (n->type) {
	case JSON_NULL:
		json_null(j);
		break;
	case JSON_BOOL:
		json_bool(j, n->boolean);
		break;
	case JSON_NUMBER:
		json_number_text(j, n->text);
		break;
	case JSON_STRING:
		json_string(j, n->text);
		break;
	case JSON_ARRAY:
		json_array_begin(j);
		for (i = 0; i < n->n; i++)
			json_write_node(j, n->items[i]);
		json_array_end(j);
		break;
	case JSON_OBJECT:
		json_object_begin(j);
		for (i = 0; i < n->n; i++) {
			json_key(j, n->keys[i]);
			json_write_node(j, n->items[i]);
		}
		json_object_end(j);
		break;
	}
}

/* ---- option values -------------------------------------------------- */

/* The whole file at path, NUL-terminated; -errno, or -EFBIG when it is
 * larger than the parser takes. */
static int read_file(const char *path, char **ret_text, size_t *ret_len)
{
	char *text = NULL;
	size_t len = 0, cap = 0;
	ssize_t n;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 8192;
			text = xrealloc(text, cap, 1);
		}
		n = read(fd, text + len, cap - len - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > JSON_PARSE_MAX_SIZE) {
			r = -EFBIG;
			goto fail;
		}
	}
	close(fd);
	text[len] = '\0';
	*ret_text = text;
	*ret_len = len;
	return 0;

fail:
	close(fd);
	free(text);
	return r;
}

int json_parse_arg(const char *opt, const char *arg, struct json_node **ret_root)
{
	static const char prefix[] = "file://";
	const char *path = NULL, *text = arg;
	char *file_text = NULL, err[512], first;
	size_t len = strlen(arg);
	struct stat st;
	int r;

	if (strncmp(arg, prefix, sizeof(prefix) - 1) == 0) {
		path = arg + sizeof(prefix) - 1;
		if (!*path) {
			errmsg("--%s: file:// needs a path after it", opt);
			return -1;
		}
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			errmsg("--%s: %s is a directory, not a JSON file", opt, path);
			return -1;
		}
		r = read_file(path, &file_text, &len);
		if (r == -EFBIG) {
			errmsg("--%s: %s is larger than %d bytes", opt, path, JSON_PARSE_MAX_SIZE);
			return -1;
		}
		if (r < 0) {
			errmsg_errno(r, "--%s: cannot read %s", opt, path);
			return -1;
		}
		text = file_text;
	}
	r = json_parse(text, len, JSON_PARSE_MAX_DEPTH, ret_root, err, sizeof(err));
	free(file_text);
	if (r < 0) {
		first = arg[strspn(arg, " \t\r\n")];
		if (path)
			errmsg("--%s: invalid JSON in %s: %s", opt, path, err);
		else if (first != '\0' && first != '[' && first != '{')
			errmsg("--%s: invalid JSON: %s (give JSON, or file://PATH; the AWS CLI's "
			       "shorthand syntax is not supported)", opt, err);
		else
			errmsg("--%s: invalid JSON: %s", opt, err);
		return -1;
	}
	return 0;
}
