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
