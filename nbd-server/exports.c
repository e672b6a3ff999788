/* SPDX-License-Identifier: MIT */
/* exports.c: export names -> open volumes and snapshots.
 *
 * An export name is a volume id (read-write unless --read-only) or a
 * snapshot id (always read-only); names are looked up in the catalog when
 * a client asks, so volumes and snapshots made after the daemon started
 * are served too. All connections to one export share one open handle:
 * they see each other's writes at once, and a flush on any of them
 * flushes the volume (multi-conn). The handle is opened on the first
 * connection and closed (flushed) after the last, so between clients the
 * kiln tool can work on the volume directly. While open for writing the
 * volume has a control socket in the store, through which `kiln snapshot
 * create` reaches us. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "server.h"

static struct server_config *config;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct export *open_exports;
static int control_wake = -1;           /* eventfd: the set of ctl sockets changed */
static pthread_t control_thread;
static bool control_running;

static struct export **pinned;

/* Exports named with --export are opened now and held while we run: they
 * are "in use", so `kiln volume delete` is refused and `kiln snapshot
 * create` comes to us, whether or not a client is connected. */
int exports_init(struct server_config *cfg)
{
	config = cfg;
	if (!cfg->allowed)
		return 0;
	pinned = calloc(cfg->nallowed, sizeof *pinned);
	if (!pinned)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->nallowed; i++) {
		const char *why;
		int r = export_get(cfg->allowed[i], &pinned[i], &why);

		if (r < 0) {
			server_error("--export %s: %s", cfg->allowed[i], why ? why : strerror(-r));
			return r;
		}
	}
	return 0;
}

static bool allowed(const char *name)
{
	if (!config->allowed)
		return true;
	for (size_t i = 0; i < config->nallowed; i++)
		if (strcmp(config->allowed[i], name) == 0)
			return true;
	return false;
}

static void wake_control(void)
{
	uint64_t one = 1;

	if (control_wake >= 0 && write(control_wake, &one, sizeof one) < 0)
		debug("control: wake: %m");
}

static void human(uint64_t bytes, char *buf, size_t cap)
{
	if (bytes >= (1ull << 30))
		snprintf(buf, cap, "%.1f GiB", (double)bytes / (1ull << 30));
	else
		snprintf(buf, cap, "%.1f MiB", (double)bytes / (1ull << 20));
}

/* An export's description: the same in NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
static void volume_description(const struct kiln_volume_info *v, char *buf, size_t cap)
{
	char size[32];

	human(v->size, size, sizeof size);
	snprintf(buf, cap, "volume %s, %s%s", v->id, size, v->snapshot_id[0] ? ", copy-on-write" : "");
}

static void snapshot_description(const struct kiln_snapshot_info *s, char *buf, size_t cap)
{
	char size[32];

	human(s->size, size, sizeof size);
	snprintf(buf, cap, "snapshot %s of %s, %s%s%.40s", s->id, s->volume_id, size,
		 s->description[0] ? ": " : "", s->description);
}

/* Open the volume or snapshot behind name. Called with the lock held. */
static int export_open(const char *name, struct export **ret, const char **why)
{
	struct export *e = calloc(1, sizeof *e);
	int r;

	if (!e)
		return -ENOMEM;
	e->ctl_fd = -1;
	snprintf(e->name, sizeof e->name, "%s", name);
	if (kiln_id_valid(name, "vol")) {
		struct kiln_volume_info info;

		r = kiln_volume_describe(config->region, name, &info);
		if (r == 0) {
			e->read_only = config->read_only;
			r = kiln_volume_open(config->region, name,
					     e->read_only ? KILN_OPEN_READONLY : KILN_OPEN_WRITE, &e->vol);
			if (r == -EBUSY)
				*why = "the volume is in use by another process";
		}
		if (r == 0)
			volume_description(&info, e->description, sizeof e->description);
	} else if (kiln_id_valid(name, "snap")) {
		struct kiln_snapshot_info info;

		e->read_only = true;
		r = kiln_snapshot_describe(config->region, name, &info);
		if (r == 0 && info.state != KILN_SNAPSHOT_COMPLETED) {
			r = -EAGAIN;
			*why = "the snapshot is not completed";
		}
		if (r == 0)
			r = kiln_snapshot_open(config->region, name, &e->vol);
		if (r == 0)
			snapshot_description(&info, e->description, sizeof e->description);
	} else {
		r = -ENOENT;
	}
	if (r < 0) {
		free(e);
		return r;
	}
	e->size = kiln_volume_size(e->vol);
	e->chunk_size = kiln_volume_chunk_size(e->vol);
	if (!e->read_only) {
		r = kiln_volume_control_listen(e->vol, &e->ctl_fd);
		if (r < 0)
			server_error("%s: control socket: %s (online snapshots will wait)", name, strerror(-r));
	}
	debug("export %s opened (%s)", name, e->read_only ? "read-only" : "read-write");
	*ret = e;
	return 0;
}

/* An instance's device, "i-…/xvda", is the export of its volume: both
 * names share one handle. */
static const char *resolve_name(const char *name, char volume_id[KILN_ID_MAX])
{
	if (strncmp(name, "i-", 2) == 0 && strchr(name, '/') &&
	    kiln_instance_device_volume(config->region, name, volume_id) == 0)
		return volume_id;
	return name;
}

int export_get(const char *name, struct export **ret_export, const char **ret_why)
{
	char volume_id[KILN_ID_MAX];
	struct export *e;
	int r;

	*ret_why = NULL;
	/* With exactly one --export, the default name "" means it. */
	if (!*name && config->nallowed == 1)
		name = config->allowed[0];
	if (!allowed(name)) {
		*ret_why = "no such export";
		return -ENOENT;
	}
	name = resolve_name(name, volume_id);
	pthread_mutex_lock(&lock);
	for (e = open_exports; e; e = e->next)
		if (strcmp(e->name, name) == 0)
			break;
	if (!e) {
		r = export_open(name, &e, ret_why);
		if (r < 0) {
			pthread_mutex_unlock(&lock);
			if (!*ret_why)
				*ret_why = r == -ENOENT || r == -EINVAL ? "no such export" : strerror(-r);
			return r == -EINVAL ? -ENOENT : r;
		}
		e->next = open_exports;
		open_exports = e;
		wake_control();
	}
	e->refs++;
	pthread_mutex_unlock(&lock);
	*ret_export = e;
	return 0;
}

static void export_close(struct export *e)
{
	int r;

	kiln_volume_control_close(e->vol, e->ctl_fd);
	r = kiln_volume_close(e->vol);
	if (r < 0)
		server_error("%s: close: %s", e->name, strerror(-r));
	debug("export %s closed", e->name);
	free(e);
}

void export_put(struct export *e)
{
	struct export **p;

	if (!e)
		return;
	pthread_mutex_lock(&lock);
	if (--e->refs > 0) {
		pthread_mutex_unlock(&lock);
		return;
	}
	for (p = &open_exports; *p; p = &(*p)->next)
		if (*p == e) {
			*p = e->next;
			break;
		}
	/* Close under the lock, so a new client of the same export waits for
	 * the volume's owner lock to be free again. */
	export_close(e);
	wake_control();
	pthread_mutex_unlock(&lock);
}

int exports_writable(struct export ***ret, size_t *ret_n)
{
	struct export **v = NULL;
	size_t n = 0;

	pthread_mutex_lock(&lock);
	for (struct export *e = open_exports; e; e = e->next) {
		struct export **nv;

		if (e->read_only)
			continue;
		nv = realloc(v, (n + 1) * sizeof *v);
		if (!nv) {
			while (n > 0)
				v[--n]->refs--;     /* none of them can reach 0 here */
			free(v);
			pthread_mutex_unlock(&lock);
			return -ENOMEM;
		}
		v = nv;
		e->refs++;
		v[n++] = e;
	}
	pthread_mutex_unlock(&lock);
	*ret = v;
	*ret_n = n;
	return 0;
}

void exports_close_all(void)
{
	if (pinned) {
		for (size_t i = 0; i < config->nallowed; i++)
			export_put(pinned[i]);
		free(pinned);
		pinned = NULL;
	}
	pthread_mutex_lock(&lock);
	while (open_exports) {
		struct export *e = open_exports;

		open_exports = e->next;
		export_close(e);
	}
	pthread_mutex_unlock(&lock);
}

struct list_ctx {
	int (*fn)(void *opaque, const char *name, const char *description);
	void *opaque;
};

static int list_volume(void *opaque, const struct kiln_volume_info *v)
{
	struct list_ctx *l = opaque;
	char desc[EXPORT_DESCRIPTION_MAX];

	if (!allowed(v->id))
		return 0;
	volume_description(v, desc, sizeof desc);
	return l->fn(l->opaque, v->id, desc);
}

static int list_snapshot(void *opaque, const struct kiln_snapshot_info *s)
{
	struct list_ctx *l = opaque;
	char desc[EXPORT_DESCRIPTION_MAX];

	if (s->state != KILN_SNAPSHOT_COMPLETED || !allowed(s->id))
		return 0;
	snapshot_description(s, desc, sizeof desc);
	return l->fn(l->opaque, s->id, desc);
}

int exports_list(int (*fn)(void *opaque, const char *name, const char *description), void *opaque)
{
	struct list_ctx l = { fn, opaque };
	int r = kiln_volume_list(config->region, list_volume, &l);

	if (r == 0)
		r = kiln_snapshot_list(config->region, list_snapshot, &l);
	return r;
}

/* ---- control sockets ------------------------------------------------- */

/* For a request that snapshots several volumes at once (an instance's
 * image): each must be a writable export of ours. */
static struct kiln_volume *ctl_acquire(void *opaque, const char *volume_id)
{
	struct export *e;
	const char *why;

	(void)opaque;
	if (export_get(volume_id, &e, &why) < 0)
		return NULL;
	if (e->read_only) {
		export_put(e);
		return NULL;
	}
	return e->vol;
}

static void ctl_release(void *opaque, struct kiln_volume *v)
{
	struct export *e;

	(void)opaque;
	pthread_mutex_lock(&lock);
	for (e = open_exports; e && e->vol != v; e = e->next)
		;
	pthread_mutex_unlock(&lock);
	export_put(e);
}

/* One request's work at a time (they would queue on the region lock
 * anyway), and none once the daemon is stopping: the requests still
 * waiting are refused (EAGAIN) rather than served one by one before it
 * may exit, and their clients try again. */
static pthread_mutex_t ctl_work_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ctl_work_free = PTHREAD_COND_INITIALIZER;
static bool ctl_working;
static bool ctl_refusing;                /* control_refuse() was called */

static bool ctl_begin(void *opaque)
{
	bool go;

	(void)opaque;
	pthread_mutex_lock(&ctl_work_lock);
	while (ctl_working && !ctl_refusing)
		pthread_cond_wait(&ctl_work_free, &ctl_work_lock);
	go = !ctl_refusing;
	if (go)
		ctl_working = true;
	pthread_mutex_unlock(&ctl_work_lock);
	return go;
}

static void ctl_end(void *opaque)
{
	(void)opaque;
	pthread_mutex_lock(&ctl_work_lock);
	ctl_working = false;
	pthread_cond_broadcast(&ctl_work_free);
	pthread_mutex_unlock(&ctl_work_lock);
}

static const struct kiln_control_ops ctl_ops = {
	.acquire = ctl_acquire, .release = ctl_release, .begin = ctl_begin, .end = ctl_end,
};

#define CONTROL_READ_TIMEOUT 2      /* seconds for a request line to arrive */

/* Each control connection is served on a thread of its own: a request
 * that waits behind a long snapshot (for the region lock) must still say
 * it is waiting, or its client would take the daemon for stopped. */
struct ctl_client {
	struct export *e;
	int fd;
};

static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ctl_idle = PTHREAD_COND_INITIALIZER;
static unsigned ctl_active;             /* client threads still running */

static void *ctl_client_main(void *arg)
{
	struct ctl_client *cc = arg;
	/* kiln sends its request as it connects: a client that says nothing
	 * must not hold a thread, or shutdown, for long. */
	struct timeval tv = { .tv_sec = CONTROL_READ_TIMEOUT };
	int r;

	setsockopt(cc->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	r = kiln_volume_control_serve(cc->e->vol, cc->fd, &ctl_ops);
	debug("control: %s: request served: %s", cc->e->name, r < 0 ? strerror(-r) : "ok");
	close(cc->fd);
	export_put(cc->e);
	free(cc);
	pthread_mutex_lock(&ctl_lock);
	if (--ctl_active == 0)
		pthread_cond_broadcast(&ctl_idle);
	pthread_mutex_unlock(&ctl_lock);
	return NULL;
}

/* Serve one accepted connection on its own thread; takes e's reference. */
static void ctl_client_start(struct export *e, int fd)
{
	struct ctl_client *cc = malloc(sizeof *cc);
	pthread_attr_t attr;
	pthread_t t;
	bool started = false;

	if (cc) {
		*cc = (struct ctl_client){ e, fd };
		pthread_mutex_lock(&ctl_lock);
		ctl_active++;
		pthread_mutex_unlock(&ctl_lock);
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		started = pthread_create(&t, &attr, ctl_client_main, cc) == 0;
		pthread_attr_destroy(&attr);
	}
	if (started)
		return;
	debug("control: %s: no thread for a request", e->name);
	if (cc) {
		pthread_mutex_lock(&ctl_lock);
		if (--ctl_active == 0)
			pthread_cond_broadcast(&ctl_idle);
		pthread_mutex_unlock(&ctl_lock);
	}
	free(cc);
	close(fd);
	export_put(e);
}

static void *control_main(void *unused)
{
	(void)unused;
	for (;;) {
		struct pollfd pfds[65];
		struct export *owners[65];
		nfds_t n = 1;
		uint64_t v;

		pfds[0] = (struct pollfd){ .fd = control_wake, .events = POLLIN };
		pthread_mutex_lock(&lock);
		for (struct export *e = open_exports; e && n < 65; e = e->next)
			if (e->ctl_fd >= 0) {
				pfds[n] = (struct pollfd){ .fd = e->ctl_fd, .events = POLLIN };
				owners[n++] = e;
			}
		pthread_mutex_unlock(&lock);

		if (poll(pfds, n, -1) < 0)
			continue;
		if (pfds[0].revents & POLLIN) {
			if (read(control_wake, &v, sizeof v) < 0)
				debug("control: read: %m");
			if (!control_running)
				return NULL;
			continue;       /* the set changed: rebuild it */
		}
		for (nfds_t i = 1; i < n; i++) {
			struct export *e;
			int cfd;

			if (!(pfds[i].revents & POLLIN))
				continue;
			/* The export may have closed meanwhile: find it again. */
			pthread_mutex_lock(&lock);
			for (e = open_exports; e && e != owners[i]; e = e->next)
				;
			if (e)
				e->refs++;
			pthread_mutex_unlock(&lock);
			if (!e)
				continue;
			cfd = accept4(e->ctl_fd, NULL, NULL, SOCK_CLOEXEC);
			if (cfd >= 0)
				ctl_client_start(e, cfd);
			else
				export_put(e);
		}
	}
}

int control_start(void)
{
	control_wake = eventfd(0, EFD_CLOEXEC);
	if (control_wake < 0)
		return -errno;
	control_running = true;
	if (pthread_create(&control_thread, NULL, control_main, NULL) != 0) {
		control_running = false;
		return -EAGAIN;
	}
	return 0;
}

/* The daemon is stopping: requests not yet at work are refused from now
 * on. First thing on SIGTERM: the connections' last flushes may wait
 * behind snapshots, and must not wait behind ones that were only asked for. */
void control_refuse(void)
{
	pthread_mutex_lock(&ctl_work_lock);
	ctl_refusing = true;
	pthread_cond_broadcast(&ctl_work_free);
	pthread_mutex_unlock(&ctl_work_lock);
}

void control_stop(void)
{
	if (!control_running)
		return;
	control_refuse();
	control_running = false;
	wake_control();
	pthread_join(control_thread, NULL);
	/* and the requests still being served: each holds an export */
	pthread_mutex_lock(&ctl_lock);
	while (ctl_active > 0)
		pthread_cond_wait(&ctl_idle, &ctl_lock);
	pthread_mutex_unlock(&ctl_lock);
	close(control_wake);
	control_wake = -1;
}
