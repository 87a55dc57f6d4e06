#ifndef KUPROBE_TARGET_FUNCS_H
#define KUPROBE_TARGET_FUNCS_H
#define NOINLINE __attribute__((noinline, noclone, used))
extern long table[8];
long add(long a, long b);
long rec(long n);
long fib(long n);
long loop_sum(long n);
long sw(long k);
long table_sum(long n);
long calls(long n);
long midpoint(long x);
long nop_entry(long x);
#endif
