/* The demo workload: a small "service" that parses requests, hashes them and sometimes
 * recurses, forever (or for argv[1] seconds), so the dashboard has something to show. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "funcs.h"

NOINLINE unsigned long demo_hash(const char *s, unsigned long len)
{
	unsigned long h = 2166136261UL;
	for (unsigned long i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619UL;
	return h;
}

NOINLINE int demo_handle(int id, const char *req)
{
	unsigned long h = demo_hash(req, strlen(req));
	if (id % 7 == 0)
		return (int)rec(id % 50);
	return (int)(h & 0xff);
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 0;
	time_t end = seconds > 0 ? time(NULL) + (time_t)seconds : 0;
	char req[64];
	for (int id = 0;; id++) {
		snprintf(req, sizeof req, "GET /item/%d", id);
		demo_handle(id, req);
		if (id % 100 == 0) {
			usleep(20000);
			if (end && time(NULL) >= end)
				break;
		}
	}
	return 0;
}
