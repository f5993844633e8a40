/*
 * logger: a daemon whose log goes to fd 3, a pipe its supervisor holds the
 * other end of (as systemd or a process manager gives one). Writes
 * "log N" every 5 ms, N counting from 1. A failed write ends it with
 * status 3, saying why on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	unsigned long n = 0;
	char line[64];

	for (;;) {
		n++;
		int len = snprintf(line, sizeof(line), "log %lu\n", n);
		ssize_t w;
		do
			w = write(3, line, (size_t)len);
		while (w < 0 && errno == EINTR);
		if (w != len) {
			fprintf(stderr, "write to fd 3 returned %zd: %s\n", w,
				strerror(errno));
			return 3;
		}
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
}
