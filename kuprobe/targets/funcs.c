/* Self-contained functions probed by the tests: no libc, so the model can run them too.
 * Each exercises something a probe must survive: calls, loops, a switch table, recursion,
 * data read through RIP-relative (x86_64) or GOT/absolute (i386) addressing. */
#include "funcs.h"

long table[8] = {3, 1, 4, 1, 5, 9, 2, 6};
static long counter;

NOINLINE long add(long a, long b) { return a + b; }

/* Really recursive: without the barrier GCC folds the recursion into a closed form. */
NOINLINE long rec(long n)
{
	if (n <= 0)
		return 0;
	long r = rec(n - 1);
	__asm__ volatile("" : "+r"(r));
	return r + 1;
}

NOINLINE long fib(long n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

NOINLINE long loop_sum(long n)
{
	long s = 0;
	for (long i = 0; i < n; i++)
		s += i * (i & 3);
	return s;
}

NOINLINE long sw(long k)
{
	switch (k) {
	case 0: return 11;
	case 1: return 23;
	case 2: return 37;
	case 3: return 41;
	case 4: return 53;
	case 5: return 67;
	case 6: return 79;
	case 7: return 83;
	default: return -1;
	}
}

NOINLINE long table_sum(long n)
{
	long s = 0;
	for (long i = 0; i < n; i++)
		s += table[i & 7];
	counter += s;
	return s;
}

NOINLINE long calls(long n) { return add(n, 1) + add(sw(n & 7), table_sum(n)) + loop_sum(n); }

/* The instruction at `mid_label` runs with x * 3 + 7 in the accumulator (eax/rax) or x9. */
NOINLINE long midpoint(long x)
{
	register long y = x * 3 + 7;
#if defined(__x86_64__) || defined(__i386__)
	__asm__ volatile(".globl mid_label\nmid_label:\n\tnop" : "+a"(y));
#else
	register long yy __asm__("x9") = y;
	__asm__ volatile(".globl mid_label\nmid_label:\n\tnop" : "+r"(yy));
	y = yy;
#endif
	return y - 7;
}

/* Starts with the NOP pattern uprobes skip instead of single-stepping (arch_uprobe_skip_sstep(),
 * from the patch "uprobes/core: handle breakpoint and signal step exception"). */
NOINLINE long nop_entry(long x)
{
#if defined(__x86_64__) || defined(__i386__)
	__asm__ volatile(".byte 0x66, 0x90\n\tnop\n\t.byte 0x0f, 0x1f, 0x00");
#else
	__asm__ volatile("nop");
#endif
	return x + 1;
}
