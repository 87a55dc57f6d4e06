// SPDX-License-Identifier: GPL-2.0
/*
 * kuprobe_kmod: the kprobe scenarios' targets, carried by a test module the way
 * lib/test_kprobes.c carries its own (tests/scenarios/k-*.toml; kuprobe/crosscheck).
 *
 * Every kk_* function is noipa (no inlining, cloning or constant propagation into callers), so
 * it is one symbol in the module's .text with the kernel ABI's arguments (di si dx cx r8 r9)
 * and its result in ax. A scenario finds the instruction it probes by mnemonic (insn = "nop", nth):
 * no label may name one, since a perf kprobe inside a symbol without an ftrace call site is
 * refused as a notrace function (kernel/trace/trace_kprobe.c: within_notrace_func()), and to
 * kallsyms every label is such a symbol.
 *
 * User space calls them through /proc/kuprobe_kmod: write "FUNC A B …" (decimal, at most six
 * arguments), then read the same open file: "RESULT\n" (signed decimal). Each open file keeps
 * its own last result, so several tasks may call at once (kk_sleep sleeps in msleep()).
 *
 * kk_probes.c puts the kernel's own kprobe consumers on these functions
 * (/proc/kuprobe_kmod_probes).
 */
#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "kk.h"

#define KK noinline __attribute__((noipa))

static volatile long kk_glob = 5;

KK long kk_add(long a, long b) { return a + b; }

KK long kk_args6(long a, long b, long c, long d, long e, long f)
{
	return a - 2 * b + 3 * c - 4 * d + 5 * e - 6 * f;
}

/* Negative results: -3x - 1. */
KK long kk_neg(long x) { return -3 * x - 1; }

/* Recursion: n + (n-1) + … + 0; every level is one more activation of the same function (the
 * empty asm keeps gcc from turning the recursion into a loop). */
KK long kk_rec(long n)
{
	long r;

	if (n <= 0)
		return 0;
	r = kk_rec(n - 1);
	asm volatile("" : "+r"(r));
	return n + r;
}

/* At its second nop (the first is the fentry call's): bx = x+1, cx = x+2, dx = x+3, si = x+4, di = x+5. */
KK long kk_regs(long x)
{
	long b = x + 1, c = x + 2, d = x + 3, s = x + 4, D = x + 5;

	asm volatile("nop" : "+b"(b), "+c"(c), "+d"(d), "+S"(s), "+D"(D));
	return b + c + d + s + D;
}

/* A %rip-relative load of a module global (the kernel's kprobe copy fixes its displacement:
 * arch/x86/kernel/kprobes/core.c: __copy_instruction()). */
KK long kk_riprel(long x)
{
	long v;

	asm volatile("mov kk_glob(%%rip), %0" : "=r"(v));
	return v + x;
}

/* NOPs the kernel may emulate or single-step: 1, 5 and 8 bytes. */
KK long kk_nops(long x)
{
	asm volatile("nop\n\t"
		     ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n\t"
		     ".byte 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00");
	return 2 * x;
}

/* A push and its pop (the kernel emulates push: int3_emulate_push()). */
KK long kk_push(long x)
{
	long r;

	asm volatile("push %%rbx\n\t"
		     "mov %1, %%rbx\n\t"
		     "lea 1(%%rbx), %0\n\t"
		     "pop %%rbx"
		     : "=r"(r) : "r"(x) : "memory");
	return r;
}

/* A call (the kernel emulates call rel32: int3_emulate_call()). */
KK long kk_caller(long a, long b)
{
	return kk_add(a, b) * 2 + kk_neg(b);
}

/* A switch dense enough for a jump table, each case different code (Kbuild turns
 * -fjump-tables back on for this file). */
KK long kk_jt(long k, long x)
{
	switch (k) {
	case 0: return x + 1;
	case 1: return x * 3;
	case 2: return x - 7;
	case 3: return x << 2;
	case 4: return x ^ 0x55;
	case 5: return -x;
	case 6: return x / 3;
	case 7: return x & 12;
	default: return -1;
	}
}

/* A loop with a conditional branch: sum of i*i for i < n. */
KK long kk_loop(long n)
{
	long s = 0, i;

	for (i = 0; i < n; i++)
		s += i * i;
	return s;
}

/* Sleeps ms milliseconds (msleep), then returns ms: tasks in flight at once, for a
 * kretprobe's maxactive. Not run by the model (msleep is the kernel's). */
KK long kk_sleep(long ms)
{
	msleep(ms);
	return ms;
}

/* Called with six arguments whatever it takes (the kernel ABI ignores the extra ones). */
#define F(f) { #f, (long (*)(long, long, long, long, long, long))(void (*)(void))f }
static const struct kk_func kk_funcs[] = {
	F(kk_add), F(kk_args6), F(kk_neg), F(kk_rec), F(kk_regs), F(kk_riprel), F(kk_nops),
	F(kk_push), F(kk_caller), F(kk_jt), F(kk_loop), F(kk_sleep),
};

const struct kk_func *kk_find(const char *name)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(kk_funcs); i++)
		if (name && !strcmp(name, kk_funcs[i].name))
			return &kk_funcs[i];
	return NULL;
}

struct kk_file {
	long result;
	bool done;
};

static int kk_open(struct inode *inode, struct file *file)
{
	file->private_data = kzalloc(sizeof(struct kk_file), GFP_KERNEL);
	return file->private_data ? 0 : -ENOMEM;
}

static int kk_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static ssize_t kk_write(struct file *file, const char __user *ubuf, size_t len, loff_t *pos)
{
	struct kk_file *kf = file->private_data;
	char buf[256], *p = buf, *word;
	long args[6] = { 0 };
	const struct kk_func *f;
	int n = 0, err;

	if (len >= sizeof(buf))
		return -E2BIG;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	word = strsep(&p, " \n");
	f = kk_find(word);
	if (!f)
		return -ENOENT;
	while ((word = strsep(&p, " \n")) != NULL) {
		if (!*word)
			continue;
		if (n == ARRAY_SIZE(args))
			return -E2BIG;
		err = kstrtol(word, 10, &args[n++]);
		if (err)
			return err;
	}
	kf->result = f->fn(args[0], args[1], args[2], args[3], args[4], args[5]);
	kf->done = true;
	return len;
}

static ssize_t kk_read(struct file *file, char __user *ubuf, size_t len, loff_t *pos)
{
	struct kk_file *kf = file->private_data;
	char buf[32];
	int n;

	if (!kf->done)
		return -ENODATA;
	n = scnprintf(buf, sizeof(buf), "%ld\n", kf->result);
	return simple_read_from_buffer(ubuf, len, pos, buf, n);
}

static const struct proc_ops kk_proc_ops = {
	.proc_open = kk_open,
	.proc_release = kk_release,
	.proc_write = kk_write,
	.proc_read = kk_read,
	.proc_lseek = default_llseek,
};

static struct proc_dir_entry *kk_entry;

int kk_funcs_init(void)
{
	kk_entry = proc_create("kuprobe_kmod", 0600, NULL, &kk_proc_ops);
	return kk_entry ? 0 : -ENOMEM;
}

void kk_funcs_exit(void)
{
	proc_remove(kk_entry);
}
