/* The live tests' workload: `target FUNC N [ARG]` calls FUNC N times with ARG + i and prints
 * one line of results, so a test knows exactly how often and with what each probe fires.
 * `target wait FUNC N [ARG]` first waits for a line on stdin (the test registers its probes,
 * then releases it). A USDT site `kuprobe:tick` with a semaphore reports whether it is armed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "funcs.h"

/* A USDT semaphore the kernel increments while a uprobe with ref_ctr_offset is registered. */
__attribute__((section(".probes"), used)) volatile unsigned short kuprobe_tick_semaphore;

NOINLINE long tick(long i)
{
	return kuprobe_tick_semaphore ? i + 1000 : i;
}

static long call(const char *f, long a)
{
	if (!strcmp(f, "add")) return add(a, 2 * a);
	if (!strcmp(f, "rec")) return rec(a);
	if (!strcmp(f, "fib")) return fib(a);
	if (!strcmp(f, "loop_sum")) return loop_sum(a);
	if (!strcmp(f, "sw")) return sw(a);
	if (!strcmp(f, "table_sum")) return table_sum(a);
	if (!strcmp(f, "calls")) return calls(a);
	if (!strcmp(f, "midpoint")) return midpoint(a);
	if (!strcmp(f, "nop_entry")) return nop_entry(a);
	if (!strcmp(f, "tick")) return tick(a);
	fprintf(stderr, "target: unknown function %s\n", f);
	exit(2);
}

int main(int argc, char **argv)
{
	int arg = 1;
	if (argc > 1 && !strcmp(argv[1], "wait")) {
		char line[64];
		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof line, stdin))
			return 3;
		arg = 2;
	}
	if (argc < arg + 2) {
		fprintf(stderr, "usage: target [wait] FUNC N [ARG]\n");
		return 2;
	}
	const char *f = argv[arg];
	long n = atol(argv[arg + 1]);
	long a = argc > arg + 2 ? atol(argv[arg + 2]) : 0;
	long sum = 0;
	for (long i = 0; i < n; i++)
		sum += call(f, a + i);
	printf("%s %ld %ld\n", f, n, sum);
	return 0;
}
