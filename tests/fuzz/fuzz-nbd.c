/* SPDX-License-Identifier: MIT */
/* fuzz-nbd.c: libFuzzer target for kiln-nbd's handshake and request
 * parser. Each input is what a client sends, from the first byte of the
 * handshake on; the server side runs the real handshake() and transmit()
 * against a real (temporary) store with one 1 MiB volume, served as the
 * default export, while a thread drains the replies. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

static struct server_config cfg;
static char *export_names[1];
static char volume_id[KILN_ID_MAX];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char dir[] = "/tmp/kiln-fuzz.XXXXXX";
	char store[64];
	int r;

	(void)argc;
	(void)argv;
	if (!mkdtemp(dir))
		abort();
	snprintf(store, sizeof store, "%s/store", dir);
	r = kiln_store_init(store, NULL);
	if (r == 0)
		r = kiln_store_open(store, &cfg.store);
	if (r == 0)
		r = kiln_region_open(cfg.store, "us-east-1", &cfg.region);
	if (r == 0)
		r = kiln_volume_create(cfg.region, KILN_DEFAULT_ACCOUNT, 1 << 20, NULL, volume_id);
	if (r < 0) {
		fprintf(stderr, "fuzz setup: %s\n", strerror(-r));
		abort();
	}
	export_names[0] = volume_id;
	log_quiet = true;
	cfg.allowed = export_names;
	cfg.nallowed = 1;
	if (exports_init(&cfg) < 0)
		abort();
	fprintf(stderr, "fuzz: store %s, default export %s\n", store, volume_id);
	return 0;
}

static void *drain(void *arg)
{
	int fd = *(int *)arg;
	char buf[65536];

	while (read(fd, buf, sizeof buf) > 0)
		;
	return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conn c = { 0 };
	pthread_t t;
	int sv[2];

	if (size > 60000)       /* must fit the socket buffer: written up front */
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	if (size && write(sv[1], data, size) != (ssize_t)size)
		abort();
	shutdown(sv[1], SHUT_WR);
	if (pthread_create(&t, NULL, drain, &sv[1]) != 0)
		abort();
	c.rfd = c.wfd = sv[0];
	if (handshake(&c) == 0)
		transmit(&c);
	export_put(c.exp);
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(t, NULL);
	close(sv[0]);
	close(sv[1]);
	return 0;
}
