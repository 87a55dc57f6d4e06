/* Strings and buffers for the memory-at-the-hit tests: `strings wait N` prints "ready PID",
 * waits for a line on stdin, then for i < N calls take(i, "item-<i>") and name_of(i), and
 * finally take(-1, an unmapped address), and prints "strings N". */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "funcs.h"

static const char *const names[] = {"alpha", "beta", "gamma"};
volatile long sink;

NOINLINE const char *name_of(long i)
{
	return names[i % 3];
}

NOINLINE long take(long i, const char *s)
{
	sink += i;
	return s != NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: strings wait N\n");
		return 2;
	}
	char line[64], buf[32];
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 3;
	long n = atol(argv[2]);
	for (long i = 0; i < n; i++) {
		snprintf(buf, sizeof buf, "item-%ld", i);
		take(i, buf);
		sink += (long)name_of(i)[0];
	}
	take(-1, (const char *)16); /* nothing is mapped at page 0 */
	printf("strings %ld\n", n);
	return 0;
}
