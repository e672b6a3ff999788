/* SPDX-License-Identifier: MIT */
/* instance-run.c: the processes behind an instance: the region's kiln-nbd
 * that serves its devices, and qemu that boots it from them. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "instance-run.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A binary that sits beside this one (build/ or the install's bindir),
 * else whatever PATH finds. */
static void sibling(const char *name, char *out, size_t cap)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);

	if (n > 0) {
		char *slash;

		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			snprintf(out, cap, "%.*s/%s", (int)(slash - self), self, name);
			if (access(out, X_OK) == 0)
				return;
		}
	}
	snprintf(out, cap, "%s", name);
}

static bool socket_answers(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;
	bool ok;

	if (strlen(path) >= sizeof sa.sun_path)
		return false;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	close(fd);
	return ok;
}

static int read_pid(const char *path)
{
	FILE *f = fopen(path, "re");
	int pid = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%d", &pid) != 1)
		pid = 0;
	fclose(f);
	return pid;
}

int ensure_daemon(struct cli_ctx *ctx, char *sock, size_t cap, int *ret_pid)
{
	char pidfile[PATH_MAX + 64], bin[4096], store[PATH_MAX];
	int pid;
	pid_t child;
	int status;

	/* Absolute: instances record the socket, and the daemon outlives
	 * this command's working directory. */
	if (!realpath(ctx->store_dir, store)) {
		errmsg_errno(-errno, "%s", ctx->store_dir);
		return -1;
	}
	snprintf(sock, cap, "%s/regions/%s/nbd.sock", store, ctx->region_name);
	snprintf(pidfile, sizeof pidfile, "%s/regions/%s/nbd.pid", store, ctx->region_name);
	if (strlen(sock) >= sizeof((struct sockaddr_un *)0)->sun_path) {
		errmsg("the store path is too long for a Unix socket: %s", sock);
		return -1;
	}
	pid = read_pid(pidfile);
	if (pid > 0 && kill(pid, 0) == 0 && socket_answers(sock)) {
		*ret_pid = pid;
		return 0;
	}
	unlink(pidfile);
	sibling("kiln-nbd", bin, sizeof bin);
	child = fork();
	if (child < 0) {
		errmsg_errno(-errno, "fork");
		return -1;
	}
	if (child == 0) {
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (devnull >= 0) {
			dup2(devnull, STDIN_FILENO);
			dup2(devnull, STDOUT_FILENO);
		}
		execlp(bin, "kiln-nbd", "--store", store, "--region", ctx->region_name,
		       "--unix", sock, "--pidfile", pidfile, (char *)NULL);
		fprintf(stderr, "kiln: cannot run %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	/* kiln-nbd forks into the background and writes its pidfile once it
	 * accepts connections. */
	if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		errmsg("kiln-nbd did not start (%s)", bin);
		return -1;
	}
	for (double t0 = now(); now() - t0 < 10;) {
		pid = read_pid(pidfile);
		if (pid > 0 && socket_answers(sock)) {
			*ret_pid = pid;
			return 0;
		}
		usleep(10000);
	}
	errmsg("kiln-nbd did not come up on %s", sock);
	return -1;
}

/* ---- KVM: does a guest really run here? ------------------------------ */

/* A multiboot image that enters long mode and writes to isa-debug-exit,
 * making qemu exit with status 3. /dev/kvm can be there and run trivial
 * code while a real kernel hangs (nested KVM), so the probe must reach
 * long mode within a deadline. */
static const unsigned char kvm_probe_image[] = {
	0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00,
	0x10, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x20, 0x00, 0x10, 0x00, 0xbf, 0x00, 0x00, 0x01, 0x00, 0x31, 0xc0, 0xb9, 0x00, 0x0c,
	0x00, 0x00, 0xf3, 0xab, 0xc7, 0x05, 0x00, 0x00, 0x01, 0x00, 0x03, 0x10, 0x01, 0x00,
	0xc7, 0x05, 0x00, 0x10, 0x01, 0x00, 0x03, 0x20, 0x01, 0x00, 0xc7, 0x05, 0x00, 0x20,
	0x01, 0x00, 0x83, 0x00, 0x00, 0x00, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22,
	0xe0, 0xb8, 0x00, 0x00, 0x01, 0x00, 0x0f, 0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0,
	0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x01,
	0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd
};

static bool kvm_runs_guest(void)
{
	char path[] = "/tmp/kiln-kvm-probe.XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC), status;
	pid_t child;
	bool ok = false;

	if (fd < 0)
		return false;
	if (write(fd, kvm_probe_image, sizeof kvm_probe_image) != (ssize_t)sizeof kvm_probe_image) {
		close(fd);
		unlink(path);
		return false;
	}
	close(fd);
	child = fork();
	if (child == 0) {
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

		dup2(devnull, STDIN_FILENO);
		dup2(devnull, STDOUT_FILENO);
		dup2(devnull, STDERR_FILENO);
		execlp("qemu-system-x86_64", "qemu-system-x86_64", "-accel", "kvm", "-machine", "pc",
		       "-m", "16", "-nodefaults", "-display", "none", "-kernel", path, "-device",
		       "isa-debug-exit,iobase=0xf4,iosize=4", (char *)NULL);
		_exit(127);
	}
	if (child > 0) {
		double t0 = now();

		while (now() - t0 < 3 && waitpid(child, &status, WNOHANG) == 0)
			usleep(20000);
		if (waitpid(child, &status, WNOHANG) == child)
			ok = WIFEXITED(status) && WEXITSTATUS(status) == 3;
		else {
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
		}
	}
	unlink(path);
	return ok;
}

bool kvm_usable(void)
{
	const char *force = getenv("KILN_ACCEL");
	char cache[128], boot_id[64] = "none", answer[8] = "";
	FILE *f;
	bool ok;

	if (force && (strcmp(force, "tcg") == 0 || strcmp(force, "kvm") == 0))
		return strcmp(force, "kvm") == 0;
	if (access("/dev/kvm", R_OK | W_OK) != 0)
		return false;
	/* The answer holds until the machine restarts. */
	f = fopen("/proc/sys/kernel/random/boot_id", "re");
	if (f) {
		if (fscanf(f, "%63s", boot_id) != 1)
			snprintf(boot_id, sizeof boot_id, "none");
		fclose(f);
	}
	snprintf(cache, sizeof cache, "/tmp/kiln-accel.%s", boot_id);
	f = fopen(cache, "re");
	if (f) {
		if (fscanf(f, "%7s", answer) != 1)
			answer[0] = '\0';
		fclose(f);
		if (strcmp(answer, "kvm") == 0 || strcmp(answer, "tcg") == 0)
			return strcmp(answer, "kvm") == 0;
	}
	ok = kvm_runs_guest();
	f = fopen(cache, "we");
	if (f) {
		fputs(ok ? "kvm\n" : "tcg\n", f);
		fclose(f);
	}
	return ok;
}

/* ---- qemu -------------------------------------------------------------- */

static const char *ovmf_path(void)
{
	static const char *const paths[] = { "/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd",
					     "/usr/share/OVMF/OVMF_CODE.fd", NULL };

	for (int i = 0; paths[i]; i++)
		if (access(paths[i], R_OK) == 0)
			return paths[i];
	return NULL;
}

/* The qemu command line for an instance: its devices over NBD, in order,
 * virtio; the serial console on stdio. */
static int qemu_argv(const struct kiln_instance_info *in, unsigned memory_mib, bool kvm, char **argv,
		     size_t cap, char *strbuf, size_t strcap)
{
	size_t n = 0, used = 0;

#define ADD(s) do { if (n + 1 >= cap) return -1; argv[n++] = (char *)(s); } while (0)
#define FMT(...) ({ char *_p = strbuf + used; int _k = snprintf(_p, strcap - used, __VA_ARGS__); \
		    if (_k < 0 || (size_t)_k >= strcap - used) return -1; used += (size_t)_k + 1; _p; })
	ADD("qemu-system-x86_64");
	ADD("-nodefaults");
	ADD("-display");
	ADD("none");
	ADD("-no-reboot");
	ADD("-serial");
	ADD("stdio");
	ADD("-m");
	ADD(FMT("%u", memory_mib));
	ADD("-accel");
	ADD(kvm ? "kvm" : "tcg");
	if (strncmp(in->boot_mode, "uefi", 4) == 0) {
		const char *ovmf = ovmf_path();

		if (!ovmf) {
			errmsg("this instance boots with UEFI and no OVMF firmware is installed (package ovmf)");
			return -2;
		}
		ADD("-bios");
		ADD(ovmf);
	}
	/* The root device first, so the firmware boots it. */
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < in->ndevices; i++) {
			const char *dev = in->devices[i].device_name;
			bool is_root = strcmp(dev, in->root_device_name) == 0;
			const char *base = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;

			if (is_root != (pass == 0))
				continue;
			ADD("-drive");
			ADD(FMT("file=nbd+unix:///%s/%s?socket=%s,format=raw,if=virtio,cache=writeback%s",
				in->id, base, in->nbd_socket, is_root ? "" : ""));
		}
	argv[n] = NULL;
	return 0;
#undef ADD
#undef FMT
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

int run_qemu(struct kiln_region *rg, struct kiln_instance_info *in, double timeout, const char *expect,
	     unsigned memory_mib, const char *log_path, bool quiet)
{
	char *argv[64], strbuf[8192], line[4096];
	size_t linelen = 0;
	bool kvm = kvm_usable(), seen = false;
	int pipefd[2], status = 0, rc;
	FILE *log = NULL;
	pid_t child;
	double t0;

	rc = qemu_argv(in, memory_mib, kvm, argv, 64, strbuf, sizeof strbuf);
	if (rc < 0) {
		if (rc == -1)
			errmsg("the qemu command line is too long");
		return 1;
	}
	if (!quiet)
		fprintf(stderr, "kiln: booting %s with qemu (%s)\n", in->id, kvm ? "KVM" : "TCG");
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		errmsg_errno(-errno, "pipe");
		return 1;
	}
	child = fork();
	if (child < 0) {
		errmsg_errno(-errno, "fork");
		return 1;
	}
	if (child == 0) {
		int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

		dup2(devnull, STDIN_FILENO);
		dup2(pipefd[1], STDOUT_FILENO);
		dup2(pipefd[1], STDERR_FILENO);
		setsid();
		execvp(argv[0], argv);
		fprintf(stderr, "kiln: cannot run qemu-system-x86_64: %s\n", strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	in->qemu_pid = child;
	kiln_instance_update(rg, in);
	if (log_path)
		log = fopen(log_path, "ae");
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	t0 = now();
	for (;;) {
		struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
		int left = timeout > 0 ? (int)((timeout - (now() - t0)) * 1000) : 1000;
		char buf[4096];
		ssize_t got;

		if (interrupted || (timeout > 0 && left <= 0))
			break;
		if (poll(&p, 1, left > 1000 ? 1000 : left) <= 0)
			continue;
		got = read(pipefd[0], buf, sizeof buf);
		if (got <= 0)
			break;          /* qemu exited */
		fwrite(buf, 1, (size_t)got, stdout);
		fflush(stdout);
		if (log) {
			fwrite(buf, 1, (size_t)got, log);
			fflush(log);
		}
		/* Match the expected text line by line (it may span reads). */
		for (ssize_t i = 0; expect && i < got && !seen; i++) {
			if (buf[i] == '\n' || linelen == sizeof line - 1) {
				linelen = 0;
				continue;
			}
			line[linelen++] = buf[i];
			line[linelen] = '\0';
			if (strstr(line, expect))
				seen = true;
		}
		if (seen)
			break;
	}
	close(pipefd[0]);
	if (waitpid(child, &status, WNOHANG) == 0) {
		kill(child, SIGTERM);
		for (double t1 = now(); now() - t1 < 5 && waitpid(child, &status, WNOHANG) == 0;)
			usleep(20000);
		if (waitpid(child, &status, WNOHANG) == 0) {
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
		}
	}
	if (log)
		fclose(log);
	in->qemu_pid = 0;
	kiln_instance_update(rg, in);
	if (expect) {
		if (seen) {
			if (!quiet)
				fprintf(stderr, "kiln: %s: saw \"%s\" after %.1f s\n", in->id, expect, now() - t0);
			return 0;
		}
		if (interrupted)
			errmsg("%s: interrupted before \"%s\" appeared", in->id, expect);
		else if (timeout > 0 && now() - t0 >= timeout)
			errmsg("%s: \"%s\" did not appear within %.0f s", in->id, expect, timeout);
		else
			errmsg("%s: qemu exited before \"%s\" appeared", in->id, expect);
		return 1;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

int stop_qemu(struct kiln_region *rg, struct kiln_instance_info *in)
{
	int status;

	if (in->qemu_pid <= 0 || kill(in->qemu_pid, 0) < 0)
		return 0;
	kill(in->qemu_pid, SIGTERM);
	for (double t0 = now(); now() - t0 < 10 && kill(in->qemu_pid, 0) == 0;) {
		waitpid(in->qemu_pid, &status, WNOHANG);
		usleep(20000);
	}
	if (kill(in->qemu_pid, 0) == 0)
		kill(in->qemu_pid, SIGKILL);
	in->qemu_pid = 0;
	return kiln_instance_update(rg, in);
}
