/* The delivery-ceiling benchmark's producer: `ceiling_target THREADS RATE SECONDS` starts
 * THREADS threads that together call ceil_hit() RATE times a second for SECONDS, paced in
 * 1 ms steps, sleeping between them (a thread that falls behind calls as fast as it can), and prints the number of
 * calls made and the seconds they took. `ceiling_target wait ...` waits for a line on stdin
 * first. ceil_hit starts with a 5-byte nop, the cheapest uprobe site on x86_64. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__asm__(".text\n"
	".globl ceil_hit\n.type ceil_hit, @function\n"
	"ceil_hit:\n"
	"\t.byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n" /* nopl 0x0(%rax,%rax,1) */
	"\tlea 1(%rdi), %rax\n\tret\n"
	".size ceil_hit, .-ceil_hit\n");
long ceil_hit(long);

static double per_ms; /* calls per thread per millisecond */
static double seconds;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *producer(void *arg)
{
	long *calls = arg, s = 0;
	double start = now(), due = 0;
	for (;;) {
		double t = now() - start;
		if (t >= seconds)
			break;
		double want = per_ms * (t * 1000.0 + 1.0);
		while (due < want) {
			s += ceil_hit(s);
			due += 1.0;
		}
		/* sleep to the next millisecond: a spinning producer would starve the consumer */
		double next = t + 0.001 < seconds ? t + 0.001 : seconds;
		double left = next - (now() - start);
		if (left > 0) {
			struct timespec d = {0, (long)(left * 1e9)};
			nanosleep(&d, NULL);
		}
	}
	*calls = (long)due;
	return (void *)s;
}

int main(int argc, char **argv)
{
	int a = 1;
	if (argc > 1 && !strcmp(argv[1], "wait")) {
		char line[16];
		printf("ready\n");
		fflush(stdout);
		if (!fgets(line, sizeof line, stdin))
			return 3;
		a = 2;
	}
	if (argc < a + 3)
		return 2;
	int n = atoi(argv[a]);
	double rate = atof(argv[a + 1]);
	seconds = atof(argv[a + 2]);
	per_ms = rate / n / 1000.0;
	pthread_t th[64];
	long calls[64] = {0};
	if (n < 1 || n > 64)
		return 2;
	double t0 = now();
	for (int i = 0; i < n; i++)
		pthread_create(&th[i], NULL, producer, &calls[i]);
	long total = 0;
	for (int i = 0; i < n; i++) {
		pthread_join(th[i], NULL);
		total += calls[i];
	}
	printf("%ld %.6f\n", total, now() - t0);
	return 0;
}
