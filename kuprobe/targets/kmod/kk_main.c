// SPDX-License-Identifier: GPL-2.0
/*
 * kuprobe_kmod's init and exit: kk_funcs.c's /proc entry (the targets) and kk_probes.c's (their
 * kernel consumers). Kept apart from both so neither file calls the other back: kk_probes.c
 * looks the targets up in kk_funcs.c, and only this file knows them both.
 */
#include <linux/module.h>

#include "kk.h"

static int __init kk_init(void)
{
	int err = kk_funcs_init();

	if (err)
		return err;
	err = kk_probes_init();
	if (err)
		kk_funcs_exit();
	return err;
}

static void __exit kk_exit(void)
{
	kk_probes_exit();
	kk_funcs_exit();
}

module_init(kk_init);
module_exit(kk_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kuprobe's kprobe scenario targets");
