/* SPDX-License-Identifier: MIT */
/* control.c: the control socket of a volume that a daemon has open.
 *
 * The process that owns a volume (holds its map lock) may listen on
 * volumes/vol-X.ctl, a Unix stream socket. Another process that finds the
 * volume busy connects there and asks the owner to act for it. One request
 * per connection, one line each way:
 *
 *   SNAPSHOT <account> <description, hex-encoded>\n
 *   -> OK <snap-id>\n   |   ERR <errno>\n
 *   SNAPSHOT-SET <account> <description, hex, or -> <vol-id>...\n
 *   -> OK <snap-id>...\n   (one barrier across the volumes)
 *
 * While the owner works it sends "WAIT\n" every second, so a client that
 * hears nothing for CONTROL_SILENCE_MS knows the owner is stopped or hung
 * and gives up with -ETIMEDOUT. An owner that finds its client gone
 * before it starts (one that gave up on it) does nothing, and one that
 * cannot deliver its answer deletes the snapshots it took: the client was
 * told they failed. The owner serves each request on a thread of its own,
 * so one that waits behind another's snapshot says WAIT too.
 *
 * The socket is reached through /proc/self/fd/<volumes dir>/ so the store
 * path never meets the 108-byte limit of sun_path. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#define CONTROL_LINE_MAX 4096
#define CONTROL_KEEPALIVE_MS 1000
#define CONTROL_SILENCE_MS 10000
#define CONTROL_REQUEST_MS 2000         /* for a request line to arrive */

static int control_addr(struct kiln_region *rg, const char *volume_id, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if ((size_t)snprintf(sa->sun_path, sizeof sa->sun_path, "/proc/self/fd/%d/%s.ctl",
			     rg->volumes_dirfd, volume_id) >= sizeof sa->sun_path)
		return -ENAMETOOLONG;
	return 0;
}

int kiln_volume_control_listen(struct kiln_volume *v, int *ret_fd)
{
	struct sockaddr_un sa;
	CLEANUP_FREE char *name = volume_file(v->id, "ctl");
	int fd, r;

	if (!v->writable)
		return -EROFS;
	if (!name)
		return -ENOMEM;
	r = control_addr(v->region, v->id, &sa);
	if (r < 0)
		return r;
	/* We hold the volume's owner lock: any socket file there is stale. */
	unlinkat(v->region->volumes_dirfd, name, 0);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 16) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

void kiln_volume_control_close(struct kiln_volume *v, int fd)
{
	CLEANUP_FREE char *name = volume_file(v->id, "ctl");

	if (fd < 0)
		return;
	close(fd);
	if (name)
		unlinkat(v->region->volumes_dirfd, name, 0);
}

static int64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* One line, -ETIMEDOUT unless all of it arrives within timeout_ms: a
 * peer that sends a byte now and then holds nobody for longer. */
static ssize_t read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	size_t n = 0;

	while (n + 1 < cap) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = deadline - now_ms();
		int k = left > 0 ? poll(&p, 1, (int)left) : 0;
		ssize_t r;

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			return -ETIMEDOUT;
		r = read(fd, buf + n, 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			/* nothing at all from the other side: it went away */
			return n == 0 && errno == ECONNRESET ? -ENODATA : -errno;
		}
		if (r == 0)
			return n == 0 ? -ENODATA : -EPIPE;
		if (buf[n] == '\n') {
			buf[n] = '\0';
			return (ssize_t)n;
		}
		n++;
	}
	return -EMSGSIZE;
}

/* The owner's answer, past its "WAIT" lines. */
static ssize_t read_reply(int fd, char *buf, size_t cap)
{
	for (;;) {
		ssize_t n = read_line(fd, buf, cap, CONTROL_SILENCE_MS);

		if (n < 0 || strcmp(buf, "WAIT") != 0)
			return n;
	}
}

static int send_line(int fd, const char *s)
{
	size_t len = strlen(s);

	while (len > 0) {
		ssize_t r = send(fd, s, len, MSG_NOSIGNAL);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		s += r;
		len -= (size_t)r;
	}
	return 0;
}

/* "WAIT" to the client every CONTROL_KEEPALIVE_MS while the owner works. */
struct keepalive {
	int fd;
	bool done, started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
};

static void *keepalive_main(void *arg)
{
	struct keepalive *k = arg;

	pthread_mutex_lock(&k->lock);
	while (!k->done) {
		struct timespec t;

		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_sec += CONTROL_KEEPALIVE_MS / 1000;
		if (pthread_cond_timedwait(&k->cond, &k->lock, &t) == ETIMEDOUT && !k->done)
			send_line(k->fd, "WAIT\n");
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

/* -ECONNABORTED when the client has already hung up: it gave up on us
 * (a stopped daemon, resumed), so nothing is to be done. */
static int keepalive_start(struct keepalive *k, int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLRDHUP };

	if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
		return -ECONNABORTED;
	*k = (struct keepalive){ .fd = fd };
	pthread_mutex_init(&k->lock, NULL);
	pthread_cond_init(&k->cond, NULL);
	k->started = pthread_create(&k->thread, NULL, keepalive_main, k) == 0;
	return 0;
}

static void keepalive_stop(struct keepalive *k)
{
	pthread_mutex_lock(&k->lock);
	k->done = true;
	pthread_cond_signal(&k->cond);
	pthread_mutex_unlock(&k->lock);
	if (k->started)
		pthread_join(k->thread, NULL);
	pthread_cond_destroy(&k->cond);
	pthread_mutex_destroy(&k->lock);
}

/* The owner's turn for a request's work; EAGAIN when it is stopping. */
static int begin_work(const struct kiln_control_ops *ops)
{
	return !ops || !ops->begin || ops->begin(ops->opaque) ? 0 : -EAGAIN;
}

static void end_work(const struct kiln_control_ops *ops)
{
	if (ops && ops->end)
		ops->end(ops->opaque);
}

#define SET_MAX 32

/* SNAPSHOT-SET: resolve every volume through the owner's ops, then one
 * kiln_volumes_snapshot(). */
static int serve_set(int client_fd, char *args, const struct kiln_control_ops *ops)
{
	char account[KILN_ACCOUNT_LEN + 2], hex[600], desc[256] = "";
	struct kiln_volume *vols[SET_MAX];
	struct kiln_region *rg;
	char ids[SET_MAX][KILN_ID_MAX];
	char reply[SET_MAX * KILN_ID_MAX + 16];
	size_t n = 0;
	char *save = NULL, *tok;
	int r = 0;

	tok = strtok_r(args, " ", &save);
	if (!tok || strlen(tok) >= sizeof account || !kiln_account_valid(tok))
		goto bad;
	strcpy(account, tok);
	tok = strtok_r(NULL, " ", &save);
	if (!tok || strlen(tok) >= sizeof hex)
		goto bad;
	strcpy(hex, tok);
	if (strcmp(hex, "-") != 0 &&
	    (strlen(hex) % 2 || strlen(hex) / 2 >= sizeof desc || hex_decode(hex, (uint8_t *)desc, strlen(hex) / 2) < 0))
		goto bad;
	if (strcmp(hex, "-") != 0)
		desc[strlen(hex) / 2] = '\0';
	while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
		if (n == SET_MAX || !kiln_id_valid(tok, "vol") || !ops || !ops->acquire) {
			r = -EINVAL;
			break;
		}
		vols[n] = ops->acquire(ops->opaque, tok);
		if (!vols[n]) {
			r = -EBUSY;
			break;
		}
		n++;
	}
	if (r == 0 && n == 0)
		r = -EINVAL;
	if (r == 0) {
		struct keepalive k;

		r = keepalive_start(&k, client_fd);
		if (r == 0) {
			r = begin_work(ops);
			if (r == 0) {
				r = kiln_volumes_snapshot(vols, n, account, desc, ids);
				end_work(ops);
			}
			keepalive_stop(&k);
		}
	}
	rg = n > 0 ? vols[0]->region : NULL;
	for (size_t i = 0; i < n; i++)
		ops->release(ops->opaque, vols[i]);
	if (r < 0) {
		snprintf(reply, sizeof reply, "ERR %d\n", -r);
	} else {
		strcpy(reply, "OK");
		for (size_t i = 0; i < n; i++) {
			strcat(reply, " ");
			strcat(reply, ids[i]);
		}
		strcat(reply, "\n");
	}
	if (send_line(client_fd, reply) < 0 && r == 0) {
		/* The client gave up on us (we were stopped): it was told the
		 * snapshots failed, so they must not stay. */
		for (size_t i = 0; i < n; i++)
			kiln_snapshot_delete(rg, ids[i]);
		return -ECONNABORTED;
	}
	return r;
bad:
	send_line(client_fd, "ERR 22\n");
	return -EINVAL;
}

int kiln_volume_control_serve(struct kiln_volume *v, int client_fd, const struct kiln_control_ops *ops)
{
	char line[CONTROL_LINE_MAX], reply[64], account[KILN_ACCOUNT_LEN + 2];
	char desc[256] = "";
	char id[KILN_ID_MAX];
	struct keepalive k;
	const char *hex;
	ssize_t n;
	int r;

	n = read_line(client_fd, line, sizeof line, CONTROL_REQUEST_MS);
	if (n < 0)
		return (int)n;
	if (strncmp(line, "SNAPSHOT-SET ", 13) == 0)
		return serve_set(client_fd, line + 13, ops);
	if (strncmp(line, "SNAPSHOT ", 9) != 0 || sscanf(line + 9, "%13s", account) != 1 ||
	    !kiln_account_valid(account)) {
		send_line(client_fd, "ERR 22\n");
		return -EINVAL;
	}
	hex = line + 9 + strlen(account);
	if (*hex == ' ')
		hex++;
	if (strlen(hex) % 2 || strlen(hex) / 2 >= sizeof desc ||
	    (strlen(hex) && hex_decode(hex, (uint8_t *)desc, strlen(hex) / 2) < 0)) {
		send_line(client_fd, "ERR 22\n");
		return -EINVAL;
	}
	desc[strlen(hex) / 2] = '\0';
	r = keepalive_start(&k, client_fd);
	if (r < 0)
		return r;
	r = begin_work(ops);
	if (r == 0) {
		r = kiln_volume_snapshot(v, account, desc, NULL, NULL, id);
		end_work(ops);
	}
	keepalive_stop(&k);
	if (r < 0)
		snprintf(reply, sizeof reply, "ERR %d\n", -r);
	else
		snprintf(reply, sizeof reply, "OK %s\n", id);
	if (send_line(client_fd, reply) < 0 && r == 0) {
		/* The client gave up on us (we were stopped): it was told the
		 * snapshot failed, so it must not stay. */
		kiln_snapshot_delete(v->region, id);
		return -ECONNABORTED;
	}
	return r;
}

/* Ask the owner of a busy volume for a snapshot. -EAGAIN when nobody
 * listens there, or the connection closed before any answer (a daemon's
 * export closing, or the owner not a daemon): the caller tries the volume
 * again. */
int control_snapshot(struct kiln_region *rg, const char *volume_id, const char *account,
		     const char *description, char ret_id[KILN_ID_MAX])
{
	struct sockaddr_un sa;
	char line[CONTROL_LINE_MAX], reply[128];
	size_t dlen = description ? strlen(description) : 0;
	CLEANUP_CLOSE int fd = -1;
	ssize_t n;
	int r;

	if (dlen >= 256)
		return -EINVAL;
	r = control_addr(rg, volume_id, &sa);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		return errno == ECONNREFUSED || errno == ENOENT ? -EAGAIN : -EBUSY;
	n = snprintf(line, sizeof line, "SNAPSHOT %s ", account);
	hex_encode((const uint8_t *)(description ? description : ""), dlen, line + n);
	strcat(line, "\n");
	r = send_line(fd, line);
	if (r < 0)
		return r;
	n = read_reply(fd, reply, sizeof reply);
	if (n == -ENODATA)
		return -EAGAIN;         /* the export closed before it read us */
	if (n == -ETIMEDOUT)
		return -ETIMEDOUT;      /* the owner is stopped or hung */
	if (n < 0)
		return -EIO;
	if (strncmp(reply, "OK ", 3) == 0 && kiln_id_valid(reply + 3, "snap")) {
		memcpy(ret_id, reply + 3, strlen(reply + 3) + 1);   /* validated: 22 bytes */
		return 0;
	}
	if (strncmp(reply, "ERR ", 4) == 0 && atoi(reply + 4) > 0)
		return -atoi(reply + 4);
	return -EIO;
}

/* Ask the daemon that owns volume_ids[0] for one barrier snapshot of all.
 * -EAGAIN as for control_snapshot(); -EBUSY when it does not serve one of
 * them (an export closing, or another process has it). */
int control_snapshot_set(struct kiln_region *rg, const char *const *volume_ids, size_t n,
			 const char *account, const char *description, char (*ret_ids)[KILN_ID_MAX])
{
	struct sockaddr_un sa;
	char line[CONTROL_LINE_MAX], reply[SET_MAX * KILN_ID_MAX + 16];
	size_t dlen = description ? strlen(description) : 0, pos;
	CLEANUP_CLOSE int fd = -1;
	char *save = NULL, *tok;
	int r;

	if (n == 0 || n > SET_MAX || dlen >= 256)
		return -EINVAL;
	r = control_addr(rg, volume_ids[0], &sa);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
		return errno == ECONNREFUSED || errno == ENOENT ? -EAGAIN : -EBUSY;
	pos = (size_t)snprintf(line, sizeof line, "SNAPSHOT-SET %s ", account);
	if (dlen) {
		hex_encode((const uint8_t *)description, dlen, line + pos);
		pos += 2 * dlen;
	} else {
		line[pos++] = '-';
	}
	for (size_t i = 0; i < n; i++)
		pos += (size_t)snprintf(line + pos, sizeof line - pos, " %s", volume_ids[i]);
	snprintf(line + pos, sizeof line - pos, "\n");
	r = send_line(fd, line);
	if (r < 0)
		return r;
	r = (int)read_reply(fd, reply, sizeof reply);
	if (r == -ENODATA)
		return -EAGAIN;         /* the export closed before it read us */
	if (r == -ETIMEDOUT)
		return r;
	if (r < 0)
		return -EIO;
	if (strncmp(reply, "ERR ", 4) == 0)
		return atoi(reply + 4) > 0 ? -atoi(reply + 4) : -EIO;
	if (strncmp(reply, "OK", 2) != 0)
		return -EIO;
	tok = strtok_r(reply + 2, " ", &save);
	for (size_t i = 0; i < n; i++, tok = strtok_r(NULL, " ", &save)) {
		if (!tok || !kiln_id_valid(tok, "snap"))
			return -EIO;
		memcpy(ret_ids[i], tok, strlen(tok) + 1);
	}
	return 0;
}
