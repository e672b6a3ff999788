/* SPDX-License-Identifier: MIT */
/* instance-run.h: the processes behind an instance (instance-run.c). */
#ifndef KILN_INSTANCE_RUN_H
#define KILN_INSTANCE_RUN_H

#include "kiln-tool.h"

/* The region's kiln-nbd: started if it is not running. Its socket path
 * goes to sock, its pid to *ret_pid. 0, or -1 after a message. */
int ensure_daemon(struct cli_ctx *ctx, char *sock, size_t cap, int *ret_pid);
/* Does a KVM guest really run here (nested KVM may hang)? KILN_ACCEL=tcg
 * says no without asking. */
bool kvm_usable(void);
/* Boot the instance in qemu from its devices over NBD, serial console to
 * stdout and appended to log_path. With expect: 0 once it appears, 1 on
 * timeout (seconds, 0: none) or when qemu exits first. Records the qemu
 * pid in the instance while it runs. */
int run_qemu(struct kiln_region *rg, struct kiln_instance_info *in, double timeout, const char *expect,
	     unsigned memory_mib, const char *log_path, bool quiet);
/* Stop the instance's qemu, if it runs. */
int stop_qemu(struct kiln_region *rg, struct kiln_instance_info *in);

#endif
