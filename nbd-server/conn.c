/* SPDX-License-Identifier: MIT */
/* conn.c: whole reads and writes on a client socket during the handshake,
 * each step bounded by a deadline so a silent client cannot hold a
 * thread forever. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

#include "server.h"

#define HANDSHAKE_TIMEOUT_MS 60000

static int wait_fd(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r;

	do
		r = poll(&p, 1, HANDSHAKE_TIMEOUT_MS);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return -ETIMEDOUT;
	return r < 0 ? -errno : 0;
}

int conn_read(struct conn *c, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n;

		if (wait_fd(c->rfd, POLLIN) < 0)
			return -1;
		n = read(c->rfd, p, len);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int conn_write(struct conn *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n;

		if (wait_fd(c->wfd, POLLOUT) < 0)
			return -1;
		n = write(c->wfd, p, len);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}
