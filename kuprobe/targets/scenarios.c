/* The scenario corpus' program (the TOML files of tests/scenarios): `scenarios [wait] FUNC:A:B … …` calls
 * each FUNC with its arguments, in order, and prints `FUNC RESULT` for each call. With `wait` it
 * first prints `ready PID` and waits for a line on stdin (the cross-check arms its live probes,
 * limited to that pid, then releases it). The functions below use no libc, so the model runs
 * them too; funcs.c's are callable as well. Labels (`*_label`) mark instructions a scenario
 * probes by name: a register's known value, a %rip-relative operand, a NOP, a push, a branch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "funcs.h"

#define LABEL(name) ".globl " name "\n" name ":\n\t"

__attribute__((used)) static volatile long glob = 5;

/* Six arguments: registers on x86_64 and arm64, the stack on i386. */
NOINLINE long args6(long a, long b, long c, long d, long e, long f)
{
	return a - 2 * b + 3 * c - 4 * d + 5 * e - 6 * f;
}

NOINLINE long args3(long a, long b, long c) { return a * b - c; }

/* Negative results (and a negative result's sign at the arch's word size). */
NOINLINE long neg(long x) { return -3 * x - 1; }

/* At regs_label: bx = x+1, cx = x+2, dx = x+3, si = x+4, di = x+5 (x86); x9..x13 (arm64). */
NOINLINE long regs_mid(long x)
{
#if defined(__x86_64__) || defined(__i386__)
	long b = x + 1, c = x + 2, d = x + 3, s = x + 4, D = x + 5;
	__asm__ volatile(LABEL("regs_label") "nop"
			 : "+b"(b), "+c"(c), "+d"(d), "+S"(s), "+D"(D));
#else
	register long b __asm__("x9") = x + 1, c __asm__("x10") = x + 2, d __asm__("x11") = x + 3,
		      s __asm__("x12") = x + 4, D __asm__("x13") = x + 5;
	__asm__ volatile(LABEL("regs_label") "nop" : "+r"(b), "+r"(c), "+r"(d), "+r"(s), "+r"(D));
#endif
	return b + c + d + s + D;
}

/* %rip-relative operands (x86_64): a load, a store, an add with an immediate after the
 * displacement, a lea. Elsewhere the labels mark a plain NOP before the same C. */
NOINLINE long riprel_load(long x)
{
	long v;
#ifdef __x86_64__
	__asm__ volatile(LABEL("riprel_load_label") "mov glob(%%rip), %0" : "=r"(v));
#else
	__asm__ volatile(LABEL("riprel_load_label") "nop");
	v = glob;
#endif
	return v + x;
}

NOINLINE long riprel_store(long x)
{
#ifdef __x86_64__
	__asm__ volatile(LABEL("riprel_store_label") "mov %0, glob(%%rip)" : : "r"(x) : "memory");
#else
	__asm__ volatile(LABEL("riprel_store_label") "nop");
	glob = x;
#endif
	return glob * 2;
}

NOINLINE long riprel_addimm(long x)
{
	glob = x;
#ifdef __x86_64__
	__asm__ volatile(LABEL("riprel_addimm_label") "addq $1000, glob(%%rip)" : : : "memory", "cc");
#else
	__asm__ volatile(LABEL("riprel_addimm_label") "nop");
	glob += 1000;
#endif
	return glob;
}

NOINLINE long riprel_lea(long x)
{
	volatile long *p;
#ifdef __x86_64__
	__asm__ volatile(LABEL("riprel_lea_label") "lea glob(%%rip), %0" : "=r"(p));
#else
	__asm__ volatile(LABEL("riprel_lea_label") "nop");
	p = &glob;
#endif
	*p = x + 1;
	return *p;
}

/* The NOP encodings compilers pad with, each under a label; the result is 2x. */
NOINLINE long nops(long x)
{
#if defined(__x86_64__) || defined(__i386__)
	__asm__ volatile(LABEL("nop1_label") "nop\n\t"
			 LABEL("nop2_label") ".byte 0x66, 0x90\n\t"
			 LABEL("nop3_label") ".byte 0x0f, 0x1f, 0x00\n\t"
			 LABEL("nop4_label") ".byte 0x0f, 0x1f, 0x40, 0x00\n\t"
			 LABEL("nop5_label") ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n\t"
			 LABEL("nop6_label") ".byte 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00\n\t"
			 LABEL("nop7_label") ".byte 0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00\n\t"
			 LABEL("nop8_label") ".byte 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00");
#else
	__asm__ volatile(LABEL("nop1_label") "nop\n\t" LABEL("nop2_label") "nop\n\t"
			 LABEL("nop3_label") "nop\n\t" LABEL("nop4_label") "nop\n\t"
			 LABEL("nop5_label") "nop\n\t" LABEL("nop6_label") "nop\n\t"
			 LABEL("nop7_label") "nop\n\t" LABEL("nop8_label") "nop");
#endif
	return 2 * x;
}

/* A push (emulated by the kernel: push_emulate_op), an unconditional jump and a conditional
 * one (branch_emulate_op), each under a label. Returns x + 1 for x >= 0, x - 1 below. */
NOINLINE long branchy(long x)
{
	long r = x;
#if defined(__x86_64__)
	__asm__ volatile(LABEL("push_label") "push %%rbx\n\t"
			 LABEL("push_r12_label") "push %%r12\n\t"
			 "pop %%r12\n\tpop %%rbx\n\t"
			 LABEL("jmp_label") "jmp 1f\n\tnop\n"
			 "1:\ttest %0, %0\n\t"
			 LABEL("jcc_label") "js 2f\n\t"
			 "add $2, %0\n"
			 "2:\tsub $1, %0"
			 : "+r"(r) : : "cc", "memory");
#elif defined(__i386__)
	__asm__ volatile(LABEL("push_label") "push %%ebx\n\t"
			 LABEL("push_r12_label") "push %%esi\n\t"
			 "pop %%esi\n\tpop %%ebx\n\t"
			 LABEL("jmp_label") "jmp 1f\n\tnop\n"
			 "1:\ttest %0, %0\n\t"
			 LABEL("jcc_label") "js 2f\n\t"
			 "add $2, %0\n"
			 "2:\tsub $1, %0"
			 : "+r"(r) : : "cc", "memory");
#else
	__asm__ volatile(LABEL("push_label") "nop\n\t" LABEL("push_r12_label") "nop\n\t"
			 LABEL("jmp_label") "nop\n\t" LABEL("jcc_label") "nop");
	r = x >= 0 ? x + 1 : x - 1;
#endif
	return r;
}

/* Calls through a pointer (kept on the stack: no relocated data) and relatively, for probes on
 * call instructions. */
NOINLINE long caller(long x)
{
	long (*volatile indirect)(long) = neg;
	return indirect(x) + add(x, 3) + neg(x + 1);
}

/* Mutual recursion: even(n) and odd(n) alternate down to 0. */
NOINLINE long odd(long n);
NOINLINE long even(long n) { return n == 0 ? 1 : odd(n - 1); }
NOINLINE long odd(long n)
{
	long r = n == 0 ? 0 : even(n - 1);
	__asm__ volatile("" : "+r"(r));
	return r;
}

/* A loop whose body has a division and a multiply (implicit dx:ax users on x86). */
NOINLINE long divmul(long n)
{
	long s = 0;
	for (long i = 1; i <= n; i++)
		s += (1000 * i) / (i + 3) - (s % 7);
	return s;
}

/* Nested ternaries GCC turns into cmov and setcc. */
NOINLINE long clamp(long x, long lo, long hi) { return x < lo ? lo : x > hi ? hi : x; }

/* A switch GCC compiles to an indirect jump through a table (sw's cases are a lookup table). */
NOINLINE long jt(long k)
{
	switch (k) {
	case 0: return k + 11;
	case 1: return k * 23;
	case 2: return k << 5;
	case 3: return (k ^ 41) - 3;
	case 4: return glob + k;
	case 5: return k * k * k;
	case 6: return 79 - k;
	case 7: return neg(k);
	case 8: return k | 0x300;
	default: return -1;
	}
}

struct fn {
	const char *name;
	void *fp;
	int nargs;
};

#define F(f, n) { #f, (void *)f, n }
static const struct fn fns[] = {
	F(add, 2), F(rec, 1), F(fib, 1), F(loop_sum, 1), F(sw, 1), F(table_sum, 1),
	F(calls, 1), F(midpoint, 1), F(nop_entry, 1), F(args6, 6), F(args3, 3), F(neg, 1),
	F(regs_mid, 1), F(riprel_load, 1), F(riprel_store, 1), F(riprel_addimm, 1),
	F(riprel_lea, 1), F(nops, 1), F(branchy, 1), F(caller, 1), F(even, 1), F(odd, 1),
	F(divmul, 1), F(clamp, 3), F(jt, 1),
};

typedef long (*fn1)(long);
typedef long (*fn2)(long, long);
typedef long (*fn3)(long, long, long);
typedef long (*fn6)(long, long, long, long, long, long);

static long invoke(const char *spec)
{
	char buf[256];
	long a[6] = {0};
	int n = 0;
	snprintf(buf, sizeof buf, "%s", spec);
	char *name = strtok(buf, ":");
	for (char *t; n < 6 && (t = strtok(NULL, ":")); n++)
		a[n] = atol(t);
	for (size_t i = 0; name && i < sizeof fns / sizeof fns[0]; i++) {
		const struct fn *f = &fns[i];
		if (strcmp(f->name, name))
			continue;
		if (n != f->nargs) {
			fprintf(stderr, "scenarios: %s takes %d arguments, not %d\n", name, f->nargs, n);
			exit(2);
		}
		switch (n) {
		case 1: return ((fn1)f->fp)(a[0]);
		case 2: return ((fn2)f->fp)(a[0], a[1]);
		case 3: return ((fn3)f->fp)(a[0], a[1], a[2]);
		default: return ((fn6)f->fp)(a[0], a[1], a[2], a[3], a[4], a[5]);
		}
	}
	fprintf(stderr, "scenarios: unknown function %s\n", spec);
	exit(2);
}

int main(int argc, char **argv)
{
	int first = 1;
	if (argc > 1 && !strcmp(argv[1], "wait")) {
		char line[64];
		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof line, stdin))
			return 3;
		first = 2;
	}
	if (argc <= first) {
		fprintf(stderr, "usage: scenarios [wait] FUNC[:ARG…]…\n");
		return 2;
	}
	for (int i = first; i < argc; i++) {
		long r = invoke(argv[i]);
		printf("%.*s %ld\n", (int)strcspn(argv[i], ":"), argv[i], r);
	}
	return 0;
}
