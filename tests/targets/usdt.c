/* USDT probe sites built with <sys/sdt.h> (systemtap-sdt-dev): `usdt wait N` prints
 * "ready PID", waits for a line on stdin, then runs N rounds, each passing through
 *   kuprobe:round    (i, -3*i, a short, a byte, and a word left in memory on the stack)
 *   kuprobe:guarded  (i): only while its semaphore is raised, i.e. while it is traced,
 *   kuprobe:named    (i, "round-<i>"),
 * and prints "usdt N GUARDED" (how many rounds saw the guarded site armed). */
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>
#include <unistd.h>
#include "funcs.h"

/* With _SDT_HAS_SEMAPHORES every site has one; only `guarded` checks its own. */
__extension__ unsigned short kuprobe_guarded_semaphore __attribute__((unused))
__attribute__((section(".probes")));
__extension__ unsigned short kuprobe_round_semaphore __attribute__((unused))
__attribute__((section(".probes")));
__extension__ unsigned short kuprobe_named_semaphore __attribute__((unused))
__attribute__((section(".probes")));

/* kuprobe:named (i, "round-<i>"): a string argument, for `arg1:str` at a USDT site. */
NOINLINE void named(long i)
{
	char buf[24];
	snprintf(buf, sizeof buf, "round-%ld", i);
	DTRACE_PROBE2(kuprobe, named, i, buf);
}

NOINLINE long round_of(long i)
{
	volatile long spilled = i * 7; /* a stack slot: an `8@-N(%rbp)`-style argument */
	short s = (short)(i - 5);
	signed char c = (signed char)-i;
	long neg = -3 * i;
	DTRACE_PROBE5(kuprobe, round, i, neg, s, c, spilled);
	long fired = 0;
	if (kuprobe_guarded_semaphore) {
		DTRACE_PROBE1(kuprobe, guarded, i);
		fired = 1;
	}
	return fired + add(i, 0) * 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: usdt wait N\n");
		return 2;
	}
	char line[64];
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 3;
	long n = atol(argv[2]), guarded = 0;
	for (long i = 0; i < n; i++) {
		guarded += round_of(i);
		named(i);
	}
	printf("usdt %ld %ld\n", n, guarded);
	return 0;
}
