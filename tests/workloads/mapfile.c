/*
 * mapfile: maps the file named by argv[1] privately (read-only), checks its
 * content against what it read at start, and prints "tick N sum S" every
 * 10 ms. Used to check that a restore refuses a mapped file that changed.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: mapfile FILE\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
		perror("open");
		return 2;
	}
	const unsigned char *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	close(fd);
	uint64_t first = 0;
	for (off_t i = 0; i < st.st_size; i++)
		first = first * 31 + p[i];
	struct timespec ts = {0, 10 * 1000 * 1000};
	for (uint64_t tick = 1;; tick++) {
		uint64_t sum = 0;
		for (off_t i = 0; i < st.st_size; i++)
			sum = sum * 31 + p[i];
		if (sum != first) {
			printf("CORRUPT sum %llu != %llu\n", (unsigned long long)sum,
			       (unsigned long long)first);
			return 3;
		}
		printf("tick %llu sum %llu\n", (unsigned long long)tick, (unsigned long long)sum);
		fflush(stdout);
		nanosleep(&ts, NULL);
	}
}
