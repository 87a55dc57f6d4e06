// SPDX-License-Identifier: GPL-2.0
/*
 * kuprobe_kmod's kernel-side consumers: real kprobes and kretprobes, with C handlers, on the
 * module's own kk_* functions, so the rules of kernel/kprobes.c about post_handler, faults in
 * a handler, nmissed on reentry and the handlers' order are measured on the live kernel
 * (kuprobe/crosscheck/kconsumers.py runs the same consumers in the model and compares).
 *
 * Control: one command per write(2) to /proc/kuprobe_kmod_probes (root only):
 *
 *   kprobe FUNC OFFSET [pre=ACT] [post=ACT] [fault=record]
 *   kretprobe FUNC [entry=ACT] [ret=ACT] [maxactive=N]
 *   clear
 *
 * FUNC is one of kk_funcs.c's functions (looked up in its table: only the table's own
 * string reaches register_kprobe(), which looks it up in kallsyms); OFFSET a decimal byte
 * offset. ACT: "none", "record" (the handler appends a record), "fault" (record, then a
 * get_user() of an address no task maps: the result is get_user()'s return value) or
 * "call:FUNC" (record, then FUNC(3, 4, 0, 0, 0, 0) called from inside the handler: the
 * result is its return value; a probe on FUNC is then hit while this one runs). "fault=record"
 * is a fault_handler that records trapnr (kernels before 5.14 only). Each probe registers at
 * once, numbered from 0 in the order written; the write fails with register_k*probe()'s
 * errno. "clear" unregisters every probe and forgets the records; so does unloading.
 *
 * Reading the file: one line per record, in the order the handlers ran
 *   rec SEQ probe=ID kind=pre|post|fault|entry|ret ip=HEX flags=N args=A,B,C,D,E,F
 *       ret=N retaddr=HEX result=N trapnr=N
 * then one line per probe, "probe ID nmissed=N rpmissed=N" (kp.nmissed, and a kretprobe's
 * rp->nmissed), and "lost N" (records beyond the array).
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/mutex.h>
#include <linux/proc_fs.h>
#include <linux/ptrace.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "kk.h"

#define KK_MAX_PROBES 8
#define KK_MAX_RECS 256
#define KK_MAX_ACTIVE 64
#define KK_MAX_OFFSET 4096
/* Below vm.mmap_min_addr (4096 or more): no task maps it, so get_user() faults. */
#define KK_BAD_USER 8UL
/* The arguments of a function called from a handler ("call:FUNC"). */
#define KK_CALL_A 3
#define KK_CALL_B 4

/*
 * struct kprobe lost its fault_handler in v5.14 (ec6aba3d2be1 "kprobes: Remove
 * kprobe::fault_handler"); since then a fault in a pre/post handler is fixed up by the
 * exception table as any kernel fault (arch/x86/kernel/kprobes/core.c:
 * kprobe_fault_handler() acts only while single-stepping: KPROBE_HIT_SS, KPROBE_REENTER).
 */
#define KK_HAS_FAULT_HANDLER (LINUX_VERSION_CODE < KERNEL_VERSION(5, 14, 0))

enum kk_kind { KK_PRE, KK_POST, KK_FAULT, KK_ENTRY, KK_RET, KK_NKINDS };
static const char *const kk_kind_names[KK_NKINDS] = { "pre", "post", "fault", "entry", "ret" };

enum kk_act { KK_NONE, KK_RECORD, KK_DOFAULT, KK_CALL };

struct kk_action {
	enum kk_act act;
	const struct kk_func *fn; /* KK_CALL */
};

struct kk_probe {
	int id;
	bool is_ret;
	struct kk_action on[KK_NKINDS];
	struct kprobe kp;
	struct kretprobe rp;
};

struct kk_rec {
	int probe;
	int kind;
	unsigned long ip;
	unsigned long flags;
	long args[6];
	long ret;
	unsigned long ret_addr;
	long result;
	int trapnr;
};

static struct kk_rec kk_recs[KK_MAX_RECS];
static atomic_t kk_nrecs = ATOMIC_INIT(0);
static atomic_t kk_lost = ATOMIC_INIT(0);
static struct kk_probe *kk_probes[KK_MAX_PROBES];
static int kk_nprobes;
static DEFINE_MUTEX(kk_lock); /* kk_probes[], kk_nprobes; the handlers take no lock */
static struct proc_dir_entry *kk_probes_entry;

/* A record slot for this handler call, filled with what every handler sees. */
static struct kk_rec *kk_record(struct kk_probe *p, int kind, struct pt_regs *regs)
{
	int i = atomic_inc_return(&kk_nrecs) - 1, n;
	struct kk_rec *r;

	if (i >= KK_MAX_RECS) {
		atomic_inc(&kk_lost);
		return NULL;
	}
	r = &kk_recs[i];
	memset(r, 0, sizeof(*r));
	r->probe = p->id;
	r->kind = kind;
	r->ip = instruction_pointer(regs);
	for (n = 0; n < ARRAY_SIZE(r->args); n++)
		r->args[n] = regs_get_kernel_argument(regs, n);
	return r;
}

static long kk_do(const struct kk_action *a)
{
	long v = 0;
	int err;

	switch (a->act) {
	case KK_DOFAULT:
		/*
		 * A handler runs in the int3 trap (or ftrace) with preemption off: the page
		 * fault takes arch/x86/mm/fault.c: do_user_addr_fault() -> kprobe_page_fault()
		 * (kprobe_fault_handler(): the fault_handler before 5.14, nothing after), then
		 * faulthandler_disabled() -> bad_area_nosemaphore() -> the exception table's
		 * fixup: get_user() returns -EFAULT. pagefault_disable() says so explicitly.
		 */
		pagefault_disable();
		err = get_user(v, (long __user *)KK_BAD_USER);
		pagefault_enable();
		return err ? err : v;
	case KK_CALL:
		return a->fn->fn(KK_CALL_A, KK_CALL_B, 0, 0, 0, 0);
	default:
		return 0;
	}
}

static struct kk_rec *kk_handle(struct kk_probe *p, int kind, struct pt_regs *regs)
{
	const struct kk_action *a = &p->on[kind];
	struct kk_rec *r;
	long result;

	if (a->act == KK_NONE)
		return NULL;
	r = kk_record(p, kind, regs);
	result = kk_do(a);
	if (r)
		r->result = result;
	return r;
}

static int kk_pre(struct kprobe *kp, struct pt_regs *regs)
{
	kk_handle(container_of(kp, struct kk_probe, kp), KK_PRE, regs);
	return 0;
}

/* kernel/kprobes.c: aggr_post_handler(); arch/x86/kernel/kprobes/core.c:
 * kprobe_post_process() calls it with flags 0, after the step or the emulation. */
static void kk_post(struct kprobe *kp, struct pt_regs *regs, unsigned long flags)
{
	struct kk_rec *r = kk_handle(container_of(kp, struct kk_probe, kp), KK_POST, regs);

	if (r)
		r->flags = flags;
}

#if KK_HAS_FAULT_HANDLER
/* arch/x86/kernel/kprobes/core.c: kprobe_fault_handler() (before 5.14): called for a fault in
 * a pre/post handler (KPROBE_HIT_ACTIVE, KPROBE_HIT_SSDONE); 0: not handled here. */
static int kk_fault(struct kprobe *kp, struct pt_regs *regs, int trapnr)
{
	struct kk_probe *p = container_of(kp, struct kk_probe, kp);
	struct kk_rec *r = kk_record(p, KK_FAULT, regs);

	if (r)
		r->trapnr = trapnr;
	return 0;
}
#endif

static struct kk_probe *kk_of_instance(struct kretprobe_instance *ri)
{
	struct kretprobe *rp;

	/* include/linux/kprobes.h: get_kretprobe() since d741bf41d7c7 "kprobes: Remove
	 * kretprobe hash" (5.11); ri->rp before. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 11, 0)
	rp = get_kretprobe(ri);
#else
	rp = ri->rp;
#endif
	return rp ? container_of(rp, struct kk_probe, rp) : NULL;
}

/* kernel/kprobes.c: pre_handler_kretprobe() runs it before it hooks the return address. */
static int kk_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct kk_probe *p = kk_of_instance(ri);

	if (p)
		kk_handle(p, KK_ENTRY, regs);
	return 0;
}

static int kk_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct kk_probe *p = kk_of_instance(ri);
	struct kk_rec *r;

	if (!p)
		return 0;
	r = kk_handle(p, KK_RET, regs);
	if (!r)
		return 0;
	r->ret = regs_return_value(regs);
	/* include/linux/kprobes.h: get_kretprobe_retaddr() since 73f9b911faa7 "kprobes: Use
	 * rethook for kretprobe if possible" (5.18); ri->ret_addr before. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 18, 0)
	r->ret_addr = get_kretprobe_retaddr(ri);
#else
	r->ret_addr = (unsigned long)ri->ret_addr;
#endif
	return 0;
}

/* "none", "record", "fault" or "call:FUNC" -> *a. */
static int kk_parse_action(const char *v, struct kk_action *a)
{
	if (!strcmp(v, "none"))
		a->act = KK_NONE;
	else if (!strcmp(v, "record"))
		a->act = KK_RECORD;
	else if (!strcmp(v, "fault"))
		a->act = KK_DOFAULT;
	else if (!strncmp(v, "call:", 5)) {
		a->fn = kk_find(v + 5);
		if (!a->fn)
			return -ENOENT;
		a->act = KK_CALL;
	} else
		return -EINVAL;
	return 0;
}

static void kk_unregister(struct kk_probe *p)
{
	if (p->is_ret)
		unregister_kretprobe(&p->rp);
	else
		unregister_kprobe(&p->kp);
}

/* Every probe unregistered, the records forgotten. Called with kk_lock held. */
static void kk_clear(void)
{
	while (kk_nprobes > 0) {
		struct kk_probe *p = kk_probes[--kk_nprobes];

		kk_unregister(p);
		kfree(p);
		kk_probes[kk_nprobes] = NULL;
	}
	atomic_set(&kk_nrecs, 0);
	atomic_set(&kk_lost, 0);
}

/* "kprobe FUNC OFFSET key=value…" or "kretprobe FUNC key=value…" (the words after the first
 * in *p): a kk_probe, not yet registered. */
static int kk_parse_probe(bool is_ret, char **p, struct kk_probe *probe)
{
	const struct kk_func *f;
	unsigned int offset = 0, maxactive = 0;
	bool seen[KK_NKINDS] = { false }, seen_max = false, seen_off = is_ret;
	char *word, *value;
	int kind, err;

	f = kk_find(strsep(p, " "));
	if (!f)
		return -ENOENT;
	while ((word = strsep(p, " ")) != NULL) {
		if (!*word)
			continue;
		if (!seen_off) {
			err = kstrtouint(word, 10, &offset);
			if (err || offset > KK_MAX_OFFSET)
				return -EINVAL;
			seen_off = true;
			continue;
		}
		value = strchr(word, '=');
		if (!value)
			return -EINVAL;
		*value++ = '\0';
		if (is_ret && !strcmp(word, "maxactive")) {
			if (seen_max || kstrtouint(value, 10, &maxactive) || maxactive > KK_MAX_ACTIVE)
				return -EINVAL;
			seen_max = true;
			continue;
		}
		for (kind = 0; kind < KK_NKINDS; kind++)
			if (!strcmp(word, kk_kind_names[kind]))
				break;
		if (kind == KK_NKINDS || seen[kind])
			return -EINVAL;
		if (is_ret != (kind == KK_ENTRY || kind == KK_RET))
			return -EINVAL;
		seen[kind] = true;
		if (kind == KK_FAULT) {
			if (strcmp(value, "record"))
				return -EINVAL;
			if (!KK_HAS_FAULT_HANDLER)
				return -EOPNOTSUPP; /* as register_kprobe() of a kernel without it */
			probe->on[kind].act = KK_RECORD;
			continue;
		}
		err = kk_parse_action(value, &probe->on[kind]);
		if (err)
			return err;
	}
	if (!seen_off)
		return -EINVAL;
	probe->is_ret = is_ret;
	if (is_ret) {
		probe->rp.kp.symbol_name = f->name; /* the table's string, not the user's */
		probe->rp.maxactive = maxactive;
		if (probe->on[KK_ENTRY].act != KK_NONE)
			probe->rp.entry_handler = kk_entry;
		probe->rp.handler = kk_ret;
		return 0;
	}
	probe->kp.symbol_name = f->name;
	probe->kp.offset = offset;
	if (probe->on[KK_PRE].act != KK_NONE)
		probe->kp.pre_handler = kk_pre;
	if (probe->on[KK_POST].act != KK_NONE)
		probe->kp.post_handler = kk_post;
#if KK_HAS_FAULT_HANDLER
	if (probe->on[KK_FAULT].act != KK_NONE)
		probe->kp.fault_handler = kk_fault;
#endif
	return 0;
}

static int kk_command(char *line)
{
	char *p = line, *cmd = strsep(&p, " ");
	struct kk_probe *probe;
	bool is_ret;
	int err;

	if (!strcmp(cmd, "clear")) {
		if (p && *p)
			return -EINVAL;
		kk_clear();
		return 0;
	}
	if (strcmp(cmd, "kprobe") && strcmp(cmd, "kretprobe"))
		return -EINVAL;
	if (!p)
		return -EINVAL;
	if (kk_nprobes == KK_MAX_PROBES)
		return -ENOSPC;
	is_ret = !strcmp(cmd, "kretprobe");
	probe = kzalloc(sizeof(*probe), GFP_KERNEL);
	if (!probe)
		return -ENOMEM;
	err = kk_parse_probe(is_ret, &p, probe);
	if (!err) {
		probe->id = kk_nprobes;
		err = is_ret ? register_kretprobe(&probe->rp) : register_kprobe(&probe->kp);
	}
	if (err) {
		kfree(probe);
		return err;
	}
	kk_probes[kk_nprobes++] = probe;
	return 0;
}

static ssize_t kk_probes_write(struct file *file, const char __user *ubuf, size_t len,
			       loff_t *pos)
{
	char buf[256];
	int err;

	if (len >= sizeof(buf))
		return -E2BIG;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	strim(buf);
	mutex_lock(&kk_lock);
	err = kk_command(buf);
	mutex_unlock(&kk_lock);
	return err ? err : len;
}

static int kk_probes_show(struct seq_file *m, void *v)
{
	int i, n = min(atomic_read(&kk_nrecs), KK_MAX_RECS);

	mutex_lock(&kk_lock);
	for (i = 0; i < n; i++) {
		const struct kk_rec *r = &kk_recs[i];

		seq_printf(m, "rec %d probe=%d kind=%s ip=%lx flags=%lu args=%ld,%ld,%ld,%ld,%ld,%ld"
			   " ret=%ld retaddr=%lx result=%ld trapnr=%d\n",
			   i, r->probe, kk_kind_names[r->kind], r->ip, r->flags, r->args[0],
			   r->args[1], r->args[2], r->args[3], r->args[4], r->args[5], r->ret,
			   r->ret_addr, r->result, r->trapnr);
	}
	for (i = 0; i < kk_nprobes; i++) {
		const struct kk_probe *p = kk_probes[i];

		seq_printf(m, "probe %d nmissed=%lu rpmissed=%d\n", p->id,
			   p->is_ret ? p->rp.kp.nmissed : p->kp.nmissed,
			   p->is_ret ? p->rp.nmissed : 0);
	}
	seq_printf(m, "lost %d\n", atomic_read(&kk_lost));
	mutex_unlock(&kk_lock);
	return 0;
}

static int kk_probes_open(struct inode *inode, struct file *file)
{
	return single_open(file, kk_probes_show, NULL);
}

static const struct proc_ops kk_probes_ops = {
	.proc_open = kk_probes_open,
	.proc_read = seq_read,
	.proc_write = kk_probes_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

int kk_probes_init(void)
{
	kk_probes_entry = proc_create("kuprobe_kmod_probes", 0600, NULL, &kk_probes_ops);
	return kk_probes_entry ? 0 : -ENOMEM;
}

void kk_probes_exit(void)
{
	proc_remove(kk_probes_entry);
	mutex_lock(&kk_lock);
	kk_clear();
	mutex_unlock(&kk_lock);
}
