/* SPDX-License-Identifier: GPL-2.0 */
/* kuprobe_kmod: what kk_funcs.c (the targets), kk_probes.c (their kernel consumers) and kk_main.c
 * (the module's init and exit) share. */
#ifndef KK_H
#define KK_H

struct kk_func {
	const char *name;
	long (*fn)(long, long, long, long, long, long);
};

/* The kk_* function of this name, or NULL (a string compare against the module's table). */
const struct kk_func *kk_find(const char *name);

/* Each file's /proc entry, made and removed by kk_main.c's module init and exit. */
int kk_funcs_init(void);
void kk_funcs_exit(void);
int kk_probes_init(void);
void kk_probes_exit(void);

#endif
