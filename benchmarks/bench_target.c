/* The live benchmarks' workload: `bench_target FUNC N` calls FUNC N times in a tight loop
 * and prints the ns per call. Two probe sites with very different kernel costs:
 *   bench_nop5: starts with a 5-byte nop (the kernel optimises a uprobe there, 6.x)
 *   bench_push: starts with push %rbp (the kernel emulates it, no single-step)
 * `bench_target wait FUNC N` waits for a line on stdin first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__asm__(".text\n"
	".globl bench_nop5\n.type bench_nop5, @function\n"
	"bench_nop5:\n"
	"\t.byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n" /* nopl 0x0(%rax,%rax,1) */
	"\tlea 1(%rdi), %rax\n\tret\n"
	".size bench_nop5, .-bench_nop5\n"
	".globl bench_push\n.type bench_push, @function\n"
	"bench_push:\n"
	"\tpush %rbp\n\tmov %rsp, %rbp\n\tlea 2(%rdi), %rax\n\tpop %rbp\n\tret\n"
	".size bench_push, .-bench_push\n");
long bench_nop5(long);
long bench_push(long);

int main(int argc, char **argv)
{
	int a = 1;
	if (argc > 1 && !strcmp(argv[1], "wait")) {
		char line[16];
		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof line, stdin))
			return 3;
		a = 2;
	}
	if (argc < a + 2)
		return 2;
	long (*f)(long) = !strcmp(argv[a], "push") ? bench_push : bench_nop5;
	long n = atol(argv[a + 1]), s = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++)
		s += f(i);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
	printf("%.1f %ld\n", ns / n, s);
	return 0;
}
