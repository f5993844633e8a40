/*
 * pipe_reader: blocks in read(2) on stdin (a pipe). For every complete line
 * it prints "got: <line> count <n>" to stdout, n counting lines from 1.
 * On end of file it prints "eof count <n>" and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	static char line[4096];
	size_t len = 0;
	unsigned long count = 0;

	for (;;) {
		char chunk[256];
		ssize_t n = read(0, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			printf("ERROR read: %s\n", strerror(errno));
			fflush(stdout);
			return 2;
		}
		if (n == 0) {
			if (len != 0)
				printf("partial: %.*s\n", (int)len, line);
			printf("eof count %lu\n", count);
			fflush(stdout);
			return 0;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (chunk[i] == '\n') {
				count++;
				printf("got: %.*s count %lu\n", (int)len, line, count);
				fflush(stdout);
				len = 0;
			} else if (len < sizeof(line)) {
				line[len++] = chunk[i];
			}
		}
	}
}
