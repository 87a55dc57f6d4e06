/* Functions the reference model's tests need beyond funcs.c (no libc in them):
 * real recursion (funcs.c's rec() is folded to a closed form at -O2), plain loads and
 * stores through a pointer (page-fault rules), an indirect call, a jump table, pushf, and an
 * int3 that is no probe's (SIGTRAP), and the targets of lib/test_kprobes.c. */
#include "funcs.h"

NOINLINE long model_rec(long n)
{
	if (n <= 0)
		return 0;
	long r = model_rec(n - 1);
	__asm__ volatile("" : "+r"(r)); /* keeps the call a real, non-tail call */
	return r + 1;
}

NOINLINE long model_load(long *p) { return *p; }

NOINLINE long model_store(long *p, long v)
{
	*p = v;
	return v;
}

NOINLINE long model_indirect(long n)
{
	long (*volatile f)(long, long) = add;
	return f(n, 1) + f(n, 2);
}

NOINLINE long model_jumptable(long k)
{
	volatile long x = k;
	switch (k) {
	case 0: x = x * 3 + 1; break;
	case 1: x = x ^ 0x55; break;
	case 2: x = x << 4; break;
	case 3: x = x - 100; break;
	case 4: x = x * x; break;
	case 5: x = ~x; break;
	case 6: x = x + 1000; break;
	case 7: x = x / 3; break;
	default: x = -1; break;
	}
	return x;
}

NOINLINE long model_pushf(long x)
{
#if defined(__x86_64__) || defined(__i386__)
	long flags;
	__asm__ volatile("pushf\n\tpop %0" : "=r"(flags));
	return x + ((flags >> 8) & 1); /* TF as the function saw it */
#else
	return x;
#endif
}

NOINLINE long model_trap(long x)
{
#if defined(__x86_64__) || defined(__i386__)
	__asm__ volatile("int3");
#else
	__asm__ volatile("brk #0");
#endif
	return x;
}

/* Branches arm64 simulates instead of stepping them out of line (decode-insn.c:
 * arm_probe_decode_insn()): cbz, tbz/tbnz, adr + br, cbnz; elsewhere the same in C. */
NOINLINE long model_branches(long n)
{
	long r = 0;
#if defined(__aarch64__)
	__asm__ volatile("	cbz	%[n], 5f\n"
			 "1:	tbz	%[n], #0, 2f\n"
			 "	add	%[r], %[r], #3\n"
			 "2:	tbnz	%[n], #1, 3f\n"
			 "	add	%[r], %[r], #5\n"
			 "3:	adr	x9, 4f\n"
			 "	br	x9\n"
			 "4:	sub	%[n], %[n], #1\n"
			 "	cbnz	%[n], 1b\n"
			 "5:\n"
			 : [n] "+r"(n), [r] "+r"(r)
			 :
			 : "x9", "cc");
#else
	for (; n; n--) {
		if (n & 1)
			r += 3;
		if (!(n & 2))
			r += 5;
	}
#endif
	return r;
}

#if defined(__aarch64__)
/* Literal loads: kprobes simulate ldr/ldrsw (literal) (arm_kprobe_decode_insn()), uprobes
 * refuse them (aarch64_insn_uses_literal()). The pool is data in the text: probe only the
 * instructions before the branch over it. */
NOINLINE long model_literal(long x)
{
	long a, b, c;
	__asm__ volatile("	ldr	%0, 1f\n"
			 "	ldrsw	%1, 2f\n"
			 "	ldr	%w2, 2f\n"
			 "	b	3f\n"
			 "	.balign	8\n"
			 "1:	.quad	0x1122334455667788\n"
			 "2:	.word	-5\n"
			 "	.word	0\n"
			 "3:\n"
			 : "=r"(a), "=r"(b), "=r"(c));
	return a + b + c + x;
}

/* An exclusive load/store sequence: kprobes refuse the exclusive insns themselves
 * (aarch64_insn_is_exclusive()) and every insn between them (is_probed_address_atomic()). */
NOINLINE long model_atomic_inc(long *p)
{
	long v;
	int fail;
	__asm__ volatile("1:	ldxr	%0, [%2]\n"
			 "	add	%0, %0, #1\n"
			 "	stxr	%w1, %0, [%2]\n"
			 "	cbnz	%w1, 1b\n"
			 : "=&r"(v), "=&r"(fail)
			 : "r"(p)
			 : "memory");
	return v;
}

/* Instructions decode-insn.c refuses (never run: registration fails): mrs of DAIF, msr,
 * svc, brk, eret. */
NOINLINE long model_refused(long x)
{
	__asm__ volatile(".globl model_refused_mrs_daif\nmodel_refused_mrs_daif: mrs x9, daif\n"
			 ".globl model_refused_msr\nmodel_refused_msr: msr daifset, #2\n"
			 ".globl model_refused_svc\nmodel_refused_svc: svc #0\n"
			 ".globl model_refused_brk\nmodel_refused_brk: brk #0x100\n"
			 ".globl model_refused_eret\nmodel_refused_eret: eret\n"
			 ".globl model_refused_mrs_ok\nmodel_refused_mrs_ok: mrs x9, nzcv\n" ::
				 : "x9");
	return x;
}
#endif

/* Frames a longjmp abandons (GCC's __builtin_setjmp/__builtin_longjmp: no libc, no pointer
 * mangling): uretprobed model_jumper calls never return, and kernel/events/uprobes.c drops
 * their return instances by the stack pointer (arch_uretprobe_is_alive()). */
static void *model_jmpbuf[5];

NOINLINE long model_jumper(long depth)
{
	if (depth <= 0)
		__builtin_longjmp(model_jmpbuf, 1);
	long r = model_jumper(depth - 1);
	__asm__ volatile("" : "+r"(r)); /* a real, non-tail call */
	return r + 1;
}

NOINLINE long model_setjmp_driver(long depth)
{
	if (__builtin_setjmp(model_jmpbuf) == 0)
		return model_jumper(depth) - 1000; /* never returns: the bottom jumps */
	return model_rec(2) + 100;
}

/* lib/test_kprobes.c's targets */
NOINLINE unsigned long model_kprobe_target(unsigned long value) { return value / 3; }

NOINLINE unsigned long model_kprobe_target2(unsigned long value) { return value / 3 + 1; }

NOINLINE unsigned long model_stacktrace_target(void)
{
	return (unsigned long)__builtin_return_address(0);
}

NOINLINE unsigned long model_stacktrace_driver(void) { return model_stacktrace_target() + 1; }

int main(void)
{
	long v = 5;
	return (int)(model_rec(3) + model_load(&v) + model_indirect(1) + model_jumptable(2) +
		     model_pushf(0) + model_store(&v, 1)) & 1;
}
