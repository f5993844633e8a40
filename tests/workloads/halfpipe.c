/*
 * halfpipe: two pipes with one end closed. Pipe A keeps only its write end
 * (the reader is gone): every write must fail with EPIPE. Pipe B keeps only
 * its read end, with 12 bytes written before its writer closed: one byte is
 * read per tick, in order, then end of file. Prints "tick N" each 10 ms;
 * anything else prints CORRUPT and exits 3.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at %lu\n", what, n);
	fflush(stdout);
	exit(3);
}

int main(void)
{
	int a[2], b[2];
	const char data[] = "abcdefghijkl";
	struct timespec period = {0, 10 * 1000 * 1000};

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (pipe(a) != 0 || pipe(b) != 0)
		corrupt("pipe", 0);
	close(a[0]);
	if (write(b[1], data, 12) != 12)
		corrupt("fill", 0);
	close(b[1]);
	for (unsigned long n = 1;; n++) {
		if (write(a[1], "x", 1) != -1 || errno != EPIPE)
			corrupt("write to a pipe without reader", n);
		char c = 0;
		ssize_t got = read(b[0], &c, 1);
		if (n <= 12 && (got != 1 || c != data[n - 1]))
			corrupt("read from a pipe without writer", n);
		if (n > 12 && got != 0)
			corrupt("end of file", n);
		printf("tick %lu\n", n);
		nanosleep(&period, NULL);
	}
}
