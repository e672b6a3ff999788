/* SPDX-License-Identifier: MIT */
/* main.c: kiln-nbd, the NBD server of kiln: options, listening sockets,
 * one thread per connection, signals and a clean exit. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "server.h"

#define MAX_LISTEN 16

/* ---- connections ----------------------------------------------------- */

struct conn_entry {
	struct conn c;
	pthread_t thread;
	bool done;
	struct conn_entry *next;
};

static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conns_cond = PTHREAD_COND_INITIALIZER;
static struct conn_entry *conns;
static bool stopping;

static void serve_connection(struct conn *c)
{
	if (handshake(c) == 0) {
		debug("client entered transmission on %s", c->export_name);
		transmit(c);
	}
	export_put(c->exp);
	c->exp = NULL;
}

static void *conn_thread(void *arg)
{
	struct conn_entry *ce = arg;

	serve_connection(&ce->c);
	pthread_mutex_lock(&conns_lock);
	/* The client sees end of stream now; the fd is closed when the
	 * thread is joined, so no other connection can be handed its number
	 * while stop_connections() may still shut it down. */
	shutdown(ce->c.rfd, SHUT_RDWR);
	ce->done = true;
	pthread_cond_broadcast(&conns_cond);
	pthread_mutex_unlock(&conns_lock);
	return NULL;
}

/* Join the threads of connections that have ended. */
static void reap(bool all)
{
	pthread_mutex_lock(&conns_lock);
	for (;;) {
		struct conn_entry **p = &conns, *done = NULL;

		while (*p) {
			if ((*p)->done) {
				done = *p;
				*p = done->next;
				break;
			}
			p = &(*p)->next;
		}
		if (done) {
			pthread_mutex_unlock(&conns_lock);
			pthread_join(done->thread, NULL);
			close(done->c.rfd);
			if (done->c.wfd != done->c.rfd)
				close(done->c.wfd);
			free(done);
			pthread_mutex_lock(&conns_lock);
			continue;
		}
		if (!all || !conns)
			break;
		pthread_cond_wait(&conns_cond, &conns_lock);
	}
	pthread_mutex_unlock(&conns_lock);
}

static void start_connection(int fd)
{
	struct conn_entry *ce = calloc(1, sizeof *ce);
	int one = 1, sndbuf = 4 << 20;

	if (!ce) {
		close(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);   /* harmless on Unix sockets */
	/* Room for a batch of read replies in the socket, so the thread can
	 * go on to the next batch while the client takes them in (the
	 * kernel caps it at net.core.wmem_max). */
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
	ce->c.rfd = ce->c.wfd = fd;
	pthread_mutex_lock(&conns_lock);
	if (stopping || pthread_create(&ce->thread, NULL, conn_thread, ce) != 0) {
		pthread_mutex_unlock(&conns_lock);
		close(fd);
		free(ce);
		return;
	}
	ce->next = conns;
	conns = ce;
	pthread_mutex_unlock(&conns_lock);
}

/* SIGTERM/SIGINT: stop taking connections and end the ones we have; each
 * flushes its export on the way out. */
static void stop_connections(void)
{
	pthread_mutex_lock(&conns_lock);
	stopping = true;
	for (struct conn_entry *ce = conns; ce; ce = ce->next)
		shutdown(ce->c.rfd, SHUT_RDWR);
	pthread_mutex_unlock(&conns_lock);
}

/* ---- listening ------------------------------------------------------- */

static int listen_unix(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd;

	if (strlen(path) >= sizeof sa.sun_path) {
		server_error("%s: socket path too long", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* Replace only a stale socket: never another file, and never the
	 * socket of a server that still answers there. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			server_error("%s: exists and is not a socket", path);
			close(fd);
			return -1;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
			server_error("%s: another server is listening there", path);
			close(fd);
			return -1;
		}
		close(fd);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		unlink(path);
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, SOMAXCONN) < 0) {
		server_error("%s: %m", path);
		close(fd);
		return -1;
	}
	return fd;
}

/* A TCP port, 1 to 65535, in decimal; -1 for anything else. */
static int parse_port(const char *s)
{
	char *end;
	long v;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 1 || v > 65535)
		return -1;
	return (int)v;
}

static int listen_tcp(const char *spec, int *fds, int max)
{
	char host[256] = "127.0.0.1", port[32];
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res, *a;
	int n = 0, r;

	if (colon) {
		snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
		snprintf(port, sizeof port, "%s", colon + 1);
		if (host[0] == '[' && host[strlen(host) - 1] == ']') {
			memmove(host, host + 1, strlen(host));
			host[strlen(host) - 1] = '\0';
		}
	} else {
		snprintf(port, sizeof port, "%s", spec);
	}
	if (parse_port(port) < 0) {
		server_error("--tcp %s: the port must be a number from 1 to 65535", spec);
		return -1;
	}
	r = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (r != 0) {
		server_error("--tcp %s: %s", spec, gai_strerror(r));
		return -1;
	}
	for (a = res; a && n < max; a = a->ai_next) {
		int one = 1;
		int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);

		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (a->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
		if (bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
			server_error("--tcp %s: %m", spec);
			close(fd);
			continue;
		}
		fds[n++] = fd;
	}
	freeaddrinfo(res);
	return n > 0 ? n : -1;
}

/* systemd socket activation: LISTEN_PID is us, LISTEN_FDS from fd 3. */
static int activation_fds(int *fds, int max)
{
	const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
	int n;

	if (!pid || !nfds || atol(pid) != getpid() || (n = atoi(nfds)) <= 0) {
		server_error("--socket-activation: LISTEN_PID/LISTEN_FDS do not name this process");
		return -1;
	}
	n = MIN(n, max);
	for (int i = 0; i < n; i++) {
		fds[i] = 3 + i;
		fcntl(fds[i], F_SETFD, FD_CLOEXEC);
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return n;
}

/* ---- main ------------------------------------------------------------ */

static void open_store(struct server_config *cfg, const char *store_dir, const char *region_name)
{
	int r = kiln_store_open(store_dir, &cfg->store);

	if (r < 0) {
		server_error("%s: %s", store_dir,
			     r == -ENOTDIR || r == -ENOENT ?
			     "not a kiln store: give --store DIR or set KILN_STORE (the default is ./.kiln "
			     "in the current directory), or make one with 'kiln init'" : strerror(-r));
		exit(EXIT_FAILURE);
	}
	r = kiln_region_open(cfg->store, region_name, &cfg->region);
	if (r < 0) {
		server_error("region %s: %s", region_name, r == -ENOENT ? "no such region" : strerror(-r));
		exit(EXIT_FAILURE);
	}
	if (exports_init(cfg) < 0)
		exit(EXIT_FAILURE);
}

static void close_store(struct server_config *cfg)
{
	exports_close_all();
	kiln_region_close(cfg->region);
	kiln_store_close(cfg->store);
	cfg->region = NULL;
	cfg->store = NULL;
}

static void usage(FILE *f, int status)
{
	fprintf(f,
		"usage: kiln-nbd [--store DIR] [--region R]\n"
		"                (--unix PATH | --tcp [HOST:]PORT | --socket-activation | -s)\n"
		"                [--read-only] [--export ID]... [--threads N] [--foreground]\n"
		"                [--pidfile FILE] [--exit-with-parent] [--precapture-interval MS] [-v]\n"
		"\n"
		"Serve kiln volumes (read-write) and snapshots (read-only) over NBD. The\n"
		"export name is a volume or snapshot id; without --export every volume and\n"
		"snapshot of the region is served, including ones made later.\n"
		"\n"
		"  --store DIR          the store (default: $KILN_STORE, else ./.kiln)\n"
		"  --region R           the region (default: $KILN_REGION, else us-east-1)\n"
		"  --unix PATH          listen on a Unix socket\n"
		"  --tcp [HOST:]PORT    listen on TCP (HOST defaults to 127.0.0.1)\n"
		"  --socket-activation  take the listening sockets systemd passes\n"
		"  -s, --single         serve one client on stdin/stdout, then exit\n"
		"  --read-only          serve volumes read-only too\n"
		"  --export ID          serve only this export (repeatable)\n"
		"  --threads N          threads for hashing and decompression (default: cores)\n"
		"  --foreground         do not fork into the background\n"
		"  --pidfile FILE       write the server's pid once it accepts connections\n"
		"  --exit-with-parent   exit when the parent process exits\n"
		"  --precapture-interval MS\n"
		"                       every MS ms, hash and compress dirty chunks (once\n"
		"                       each; again only once quiet), so snapshots have\n"
		"                       less to do (default 250; 0: off)\n"
		"  -v, --verbose        debug messages on stderr\n"
		"  --help               this text\n"
		"  --version            print the version\n");
	exit(status);
}

int main(int argc, char **argv)
{
	enum { OPT_UNIX = 256, OPT_TCP, OPT_SA, OPT_RO, OPT_EXPORT, OPT_THREADS, OPT_FG, OPT_PID,
	       OPT_EWP, OPT_STORE, OPT_REGION, OPT_PRECAPTURE, OPT_HELP, OPT_VERSION };
	static const struct option longopts[] = {
		{ "store", required_argument, NULL, OPT_STORE },
		{ "region", required_argument, NULL, OPT_REGION },
		{ "unix", required_argument, NULL, OPT_UNIX },
		{ "tcp", required_argument, NULL, OPT_TCP },
		{ "socket-activation", no_argument, NULL, OPT_SA },
		{ "single", no_argument, NULL, 's' },
		{ "read-only", no_argument, NULL, OPT_RO },
		{ "export", required_argument, NULL, OPT_EXPORT },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "foreground", no_argument, NULL, OPT_FG },
		{ "pidfile", required_argument, NULL, OPT_PID },
		{ "exit-with-parent", no_argument, NULL, OPT_EWP },
		{ "precapture-interval", required_argument, NULL, OPT_PRECAPTURE },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	const char *store_dir = getenv("KILN_STORE"), *region_name = getenv("KILN_REGION");
	const char *unix_path = NULL, *tcp = NULL, *pidfile = NULL;
	bool single = false, activation = false, foreground = false, exit_with_parent = false;
	struct server_config cfg = { .precapture_ms = 250 };
	int lfds[MAX_LISTEN], nl = 0, modes, c, sfd;
	sigset_t sigs;

	while ((c = getopt_long(argc, argv, "sv", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_VERSION:
			printf("kiln-nbd %s\n", kiln_version());
			exit(EXIT_SUCCESS);
		case OPT_STORE: store_dir = optarg; break;
		case OPT_REGION: region_name = optarg; break;
		case OPT_UNIX: unix_path = optarg; break;
		case OPT_TCP: tcp = optarg; break;
		case OPT_SA: activation = true; break;
		case 's': single = true; break;
		case OPT_RO: cfg.read_only = true; break;
		case OPT_EXPORT:
			if (!kiln_id_valid(optarg, "vol") && !kiln_id_valid(optarg, "snap")) {
				server_error("--export %s: not a volume or snapshot id", optarg);
				exit(EXIT_FAILURE);
			}
			cfg.allowed = realloc(cfg.allowed, (cfg.nallowed + 1) * sizeof *cfg.allowed);
			if (!cfg.allowed)
				exit(EXIT_FAILURE);
			cfg.allowed[cfg.nallowed++] = optarg;
			break;
		case OPT_THREADS: {
			char *end;
			long n = strtol(optarg, &end, 10);

			if (*end || n < 1 || n > 64) {
				server_error("--threads %s: expected a number from 1 to 64", optarg);
				exit(EXIT_FAILURE);
			}
			setenv("KILN_THREADS", optarg, 1);
			break;
		}
		case OPT_PRECAPTURE: {
			char *end;
			long n = strtol(optarg, &end, 10);

			if (*end || end == optarg || n < 0 || n > 3600000) {
				server_error("--precapture-interval %s: expected milliseconds, 0 to 3600000",
					     optarg);
				exit(EXIT_FAILURE);
			}
			cfg.precapture_ms = (unsigned)n;
			break;
		}
		case OPT_FG: foreground = true; break;
		case OPT_PID: pidfile = optarg; break;
		case OPT_EWP: exit_with_parent = true; break;
		case 'v': verbose = true; break;
		case OPT_HELP: usage(stdout, EXIT_SUCCESS); break;
		default:
			fprintf(stderr, "Try 'kiln-nbd --help'.\n");
			exit(EXIT_FAILURE);
		}
	}
	if (optind < argc) {
		server_error("unexpected argument '%s'", argv[optind]);
		exit(EXIT_FAILURE);
	}
	modes = !!unix_path + !!tcp + activation + single;
	if (modes != 1) {
		server_error("choose exactly one of --unix, --tcp, --socket-activation and -s");
		exit(EXIT_FAILURE);
	}
	if (verbose)
		setenv("KILN_DEBUG", "1", 0);
	/* The parent of a forked daemon is the process that forked it, which
	 * exits at once: --exit-with-parent means --foreground (as in nbdkit). */
	if (exit_with_parent)
		foreground = true;
	if (exit_with_parent && prctl(PR_SET_PDEATHSIG, SIGTERM) < 0) {
		server_error("--exit-with-parent: %m");
		exit(EXIT_FAILURE);
	}
	if (!store_dir || !*store_dir)
		store_dir = ".kiln";
	if (!region_name || !*region_name)
		region_name = "us-east-1";
	/* Everything is checked now, so errors reach the caller's terminal;
	 * a daemon opens the store again after it forks, since SQLite
	 * connections and their locks must not cross a fork. */
	open_store(&cfg, store_dir, region_name);
	signal(SIGPIPE, SIG_IGN);

	if (single) {
		struct conn cn = { .rfd = STDIN_FILENO, .wfd = STDOUT_FILENO };

		/* stdout is the protocol: nothing else may be written there. */
		if (control_start() < 0 || precapture_start(cfg.precapture_ms) < 0)
			server_error("control or precapture thread: cannot start");
		serve_connection(&cn);
		precapture_stop();
		control_stop();
		close_store(&cfg);
		free(cfg.allowed);
		return 0;
	}

	if (unix_path)
		nl = (lfds[0] = listen_unix(unix_path)) >= 0 ? 1 : -1;
	else if (tcp)
		nl = listen_tcp(tcp, lfds, MAX_LISTEN);
	else
		nl = activation_fds(lfds, MAX_LISTEN);
	if (nl < 0)
		exit(EXIT_FAILURE);

	if (!foreground && !activation) {
		pid_t pid;

		close_store(&cfg);
		pid = fork();
		if (pid < 0) {
			server_error("fork: %m");
			exit(EXIT_FAILURE);
		}
		if (pid > 0)
			_exit(0);
		setsid();
		if (!verbose) {
			int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

			if (devnull >= 0) {
				dup2(devnull, STDIN_FILENO);
				dup2(devnull, STDOUT_FILENO);
				dup2(devnull, STDERR_FILENO);
				close(devnull);
			}
		}
		open_store(&cfg, store_dir, region_name);
	}

	/* Signals arrive on a signalfd in this thread only. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	if (sfd < 0 || control_start() < 0 || precapture_start(cfg.precapture_ms) < 0) {
		server_error("cannot set up signals, the control thread or the precapture thread");
		exit(EXIT_FAILURE);
	}
	if (pidfile) {
		char tmp[4096], buf[32];
		int fd, len = snprintf(buf, sizeof buf, "%d\n", (int)getpid());

		snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || write(fd, buf, (size_t)len) != len || close(fd) < 0 || rename(tmp, pidfile) < 0) {
			server_error("--pidfile %s: %m", pidfile);
			exit(EXIT_FAILURE);
		}
	}
	debug("serving region %s of %s", region_name, store_dir);

	for (;;) {
		struct pollfd pfds[MAX_LISTEN + 1];

		for (int i = 0; i < nl; i++)
			pfds[i] = (struct pollfd){ .fd = lfds[i], .events = POLLIN };
		pfds[nl] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		if (poll(pfds, (nfds_t)nl + 1, 1000) < 0 && errno != EINTR)
			break;
		if (pfds[nl].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof si) == sizeof si)
				debug("signal %u: shutting down", si.ssi_signo);
			break;
		}
		for (int i = 0; i < nl; i++) {
			if (pfds[i].revents & POLLIN) {
				int fd = accept4(lfds[i], NULL, NULL, SOCK_CLOEXEC);

				if (fd >= 0)
					start_connection(fd);
			}
		}
		reap(false);
	}

	for (int i = 0; i < nl; i++)
		close(lfds[i]);
	if (unix_path)
		unlink(unix_path);
	control_refuse();
	precapture_stop();
	stop_connections();
	reap(true);
	control_stop();
	close_store(&cfg);
	if (pidfile)
		unlink(pidfile);
	free(cfg.allowed);
	return 0;
}
