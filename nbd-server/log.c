/* SPDX-License-Identifier: MIT */
/* log.c: messages of kiln-nbd on stderr. */
#include <stdarg.h>
#include <stdio.h>

#include "server.h"

bool verbose;
bool log_quiet;
static const char *prog = "kiln-nbd";

void server_debug(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: debug: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

void server_error(const char *fmt, ...)
{
	va_list ap;

	if (log_quiet)
		return;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}
