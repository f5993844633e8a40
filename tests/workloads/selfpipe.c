/*
 * selfpipe: a pipe the program holds both ends of, with a growing backlog.
 * Each tick writes 3 numbered 16-byte records into the (non-blocking) write
 * end and reads 2 from the read end, checking they come in order; so data
 * is always buffered in the pipe. Prints "tick N next R backlog B" every
 * 10 ms; a lost, repeated or reordered record prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) != 0) {
		perror("pipe2");
		return 2;
	}
	fcntl(p[1], F_SETFL, O_NONBLOCK);
	uint64_t written = 0, next = 0;
	struct timespec ts = {0, 10 * 1000 * 1000};
	for (uint64_t tick = 1;; tick++) {
		for (int k = 0; k < 3; k++) {
			char rec[16];
			snprintf(rec, sizeof rec, "%015llu", (unsigned long long)written);
			if (write(p[1], rec, 16) != 16) {
				printf("CORRUPT write failed at record %llu\n", (unsigned long long)written);
				return 3;
			}
			written++;
		}
		for (int k = 0; k < 2; k++) {
			char rec[17] = {0};
			if (read(p[0], rec, 16) != 16) {
				printf("CORRUPT short read at record %llu\n", (unsigned long long)next);
				return 3;
			}
			unsigned long long got = 0;
			sscanf(rec, "%llu", &got);
			if (got != next) {
				printf("CORRUPT got record %llu, expected %llu\n", got, (unsigned long long)next);
				return 3;
			}
			next++;
		}
		printf("tick %llu next %llu backlog %llu\n", (unsigned long long)tick,
		       (unsigned long long)next, (unsigned long long)(written - next));
		fflush(stdout);
		nanosleep(&ts, NULL);
	}
}
