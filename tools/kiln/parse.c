/* SPDX-License-Identifier: MIT */
/* parse.c: parsing of sizes, numbers, accounts and output formats. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kiln-tool.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const struct {
	const char *suffix;
	uint64_t unit;
} size_suffixes[] = {
	{ "k", KIB }, { "kib", KIB },
	{ "m", MIB }, { "mib", MIB },
	{ "g", GIB }, { "gib", GIB },
	{ "t", TIB }, { "tib", TIB },
};

/* A whole number with an optional binary suffix (K, M, G, T or KiB, MiB,
 * GiB, TiB, any case); a bare number counts in bare_unit bytes. */
int parse_size(const char *s, uint64_t bare_unit, uint64_t *ret_size,
	       const char **ret_why)
{
	uint64_t n = 0, unit = bare_unit;
	const char *p = s;
	size_t i;

	if (*p == '\0') {
		*ret_why = "empty size";
		return -EINVAL;
	}
	if (*p == '-') {
		*ret_why = "must be a positive number";
		return -EINVAL;
	}
	if (!isdigit((unsigned char)*p)) {
		*ret_why = "expected a whole number with an optional suffix K, M, G or T";
		return -EINVAL;
	}
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');

		if (n > (UINT64_MAX - d) / 10) {
			*ret_why = "too large";
			return -ERANGE;
		}
		n = n * 10 + d;
	}
	if (*p != '\0') {
		for (i = 0; i < ARRAY_SIZE(size_suffixes); i++) {
			if (strcasecmp(p, size_suffixes[i].suffix) == 0)
				break;
		}
		if (i == ARRAY_SIZE(size_suffixes)) {
			if (*p == '.')
				*ret_why = "expected a whole number (use a smaller unit, not a fraction)";
			else
				*ret_why = "unknown suffix (use K, M, G or T, or KiB, MiB, GiB or TiB)";
			return -EINVAL;
		}
		unit = size_suffixes[i].unit;
	}
	if (n == 0) {
		*ret_why = "must be greater than zero";
		return -EINVAL;
	}
	/* files and offsets are off_t: stay within INT64_MAX */
	if (n > (uint64_t)INT64_MAX / unit) {
		*ret_why = "too large";
		return -ERANGE;
	}
	*ret_size = n * unit;
	return 0;
}

/* A chunk size: a size whose bare number is bytes, a power of two in
 * KILN_MIN_CHUNK_SIZE..KILN_MAX_CHUNK_SIZE. */
int parse_chunk_size(const char *s, uint32_t *ret_size, const char **ret_why)
{
	uint64_t n;
	int r;

	r = parse_size(s, 1, &n, ret_why);
	if (r < 0)
		return r;
	if (n < KILN_MIN_CHUNK_SIZE || n > KILN_MAX_CHUNK_SIZE || (n & (n - 1)) != 0) {
		*ret_why = "must be a power of two from 4K to 4M";
		return -ERANGE;
	}
	*ret_size = (uint32_t)n;
	return 0;
}

/* A decimal integer in min..max. */
int parse_int(const char *s, long min, long max, long *ret_value,
	      const char **ret_why)
{
	char *end;
	long v;

	if (*s == '\0' || isspace((unsigned char)*s)) {
		*ret_why = "expected a whole number";
		return -EINVAL;
	}
	errno = 0;
	v = strtol(s, &end, 10);
	if (*end != '\0') {
		*ret_why = "expected a whole number";
		return -EINVAL;
	}
	if (errno == ERANGE || v < min || v > max) {
		*ret_why = "out of range";
		return -ERANGE;
	}
	*ret_value = v;
	return 0;
}

/* An account is exactly KILN_ACCOUNT_LEN decimal digits. */
bool account_valid(const char *account)
{
	size_t i;

	for (i = 0; i < KILN_ACCOUNT_LEN; i++) {
		if (!isdigit((unsigned char)account[i]))
			return false;
	}
	return account[i] == '\0';
}

int parse_output(const char *s, enum output_format *ret_format)
{
	if (strcmp(s, "text") == 0)
		*ret_format = OUTPUT_TEXT;
	else if (strcmp(s, "json") == 0)
		*ret_format = OUTPUT_JSON;
	else
		return -EINVAL;
	return 0;
}
