/*
 * daemon LOGFILE: a daemon-style program. It calls setsid() (it must be
 * started as a non-group-leader), opens LOGFILE with O_APPEND, and keeps its
 * beat counter in a MAP_SHARED|MAP_ANONYMOUS page whose remaining words hold
 * a pattern it checks on every beat. Every 10 ms it appends "beat N\n" to the
 * log with a single write(2). Any mismatch prints CORRUPT (stdout) and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_BYTES 4096
#define WORDS (PAGE_BYTES / sizeof(uint64_t))

static uint64_t word_pattern(uint64_t i)
{
	return (i + 1) * 0x9E3779B97F4A7C15ULL;
}

static void sleep_ms(long ms)
{
	struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem = req;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s LOGFILE\n", argv[0]);
		return 2;
	}
	if (setsid() < 0) {
		perror("setsid");
		return 2;
	}
	int log = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (log < 0) {
		perror("open log");
		return 2;
	}
	uint64_t *shared = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (uint64_t i = 1; i < WORDS; i++)
		shared[i] = word_pattern(i);
	shared[0] = 0;
	printf("daemon pid %ld sid %ld log fd %d\n", (long)getpid(), (long)getsid(0), log);
	fflush(stdout);

	for (;;) {
		for (uint64_t i = 1; i < WORDS; i++) {
			if (shared[i] != word_pattern(i)) {
				printf("CORRUPT shared word %lu\n", (unsigned long)i);
				fflush(stdout);
				return 3;
			}
		}
		shared[0]++;
		char line[64];
		int len = snprintf(line, sizeof(line), "beat %lu\n", (unsigned long)shared[0]);
		ssize_t n = write(log, line, (size_t)len);
		if (n != len) {
			printf("ERROR write returned %zd: %s\n", n, strerror(errno));
			fflush(stdout);
			return 2;
		}
		sleep_ms(10);
	}
}
