/*
 * fifo: a FIFO ("the.fifo" in its working directory) opened read-write, with a
 * backlog of 100 eight-byte records in it. Each tick it writes the next
 * counter record and reads the oldest one, checking it is what the FIFO
 * must give back in order (the backlog records 1..100, then counters
 * 1, 2, ...), and prints "tick N". A second fd opens it read-only and
 * non-blocking. A mismatch prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
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
	struct timespec period = {0, 20 * 1000 * 1000};
	setvbuf(stdout, NULL, _IOLBF, 0);
	unlink("the.fifo");
	if (mkfifo("the.fifo", 0600) != 0)
		corrupt("mkfifo", 0);
	int rw = open("the.fifo", O_RDWR);
	int ro = open("the.fifo", O_RDONLY | O_NONBLOCK);
	if (rw < 0 || ro < 0)
		corrupt("open", 0);
	for (uint64_t k = 1; k <= 100; k++) {
		uint64_t rec = 0xB000000000000000ULL | k;
		if (write(rw, &rec, 8) != 8)
			corrupt("backlog", k);
	}
	for (unsigned long n = 1;; n++) {
		uint64_t out = n, in;
		if (write(rw, &out, 8) != 8)
			corrupt("write", n);
		if (read(rw, &in, 8) != 8)
			corrupt("read", n);
		uint64_t want = n <= 100 ? (0xB000000000000000ULL | n) : n - 100;
		if (in != want)
			corrupt("order", n);
		if ((fcntl(ro, F_GETFL) & O_NONBLOCK) == 0)
			corrupt("flags", n);
		printf("tick %lu\n", n);
		nanosleep(&period, NULL);
	}
}
