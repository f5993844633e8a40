/*
 * memfd: two memfds of its own. "tern-sealed" (MFD_ALLOW_SEALING) holds
 * 10000 bytes of a known pattern and is sealed against shrinking and
 * growing; "tern-plain" (no sealing) holds 5000 bytes and its file offset
 * is at 1234. Every 20 ms it checks the sealed one's bytes and prints
 * "tick N"; at tick 40 it checks everything else (seals, offset, name,
 * that the sealed one refuses to shrink and the plain one takes a write)
 * and prints "tick 40 memfd ok". A mismatch prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what)
{
	printf("CORRUPT %s\n", what);
	fflush(stdout);
	exit(3);
}

static char pattern(int i)
{
	return (char)(i * 13 + 7);
}

int main(void)
{
	struct timespec period = {0, 20 * 1000 * 1000};
	char buf[10000];

	setvbuf(stdout, NULL, _IOLBF, 0);
	int sealed = memfd_create("tern-sealed", MFD_ALLOW_SEALING);
	int plain = memfd_create("tern-plain", 0);
	if (sealed < 0 || plain < 0)
		corrupt("memfd_create");
	for (int i = 0; i < 10000; i++)
		buf[i] = pattern(i);
	if (write(sealed, buf, 10000) != 10000 || write(plain, buf, 5000) != 5000)
		corrupt("fill");
	if (fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
		corrupt("seal");
	if (lseek(plain, 1234, SEEK_SET) != 1234)
		corrupt("lseek");
	for (unsigned long n = 1;; n++) {
		char got[10000];
		if (pread(sealed, got, 10000, 0) != 10000 || memcmp(got, buf, 10000) != 0)
			corrupt("sealed bytes");
		if (n == 40) {
			char link[64], path[64];
			ssize_t len;
			if (fcntl(sealed, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW))
				corrupt("seals");
			if (fcntl(plain, F_GET_SEALS) != F_SEAL_SEAL)
				corrupt("plain seals");
			if (lseek(plain, 0, SEEK_CUR) != 1234)
				corrupt("offset");
			if (ftruncate(sealed, 100) == 0 || errno != EPERM)
				corrupt("shrink allowed");
			if (write(plain, "x", 1) != 1 || lseek(plain, 0, SEEK_END) != 5000)
				corrupt("plain write");
			snprintf(path, sizeof path, "/proc/self/fd/%d", sealed);
			len = readlink(path, link, sizeof link - 1);
			if (len < 0)
				corrupt("readlink");
			link[len] = 0;
			if (strcmp(link, "/memfd:tern-sealed (deleted)") != 0)
				corrupt("name");
			printf("tick %lu memfd ok\n", n);
		} else {
			printf("tick %lu\n", n);
		}
		nanosleep(&period, NULL);
	}
}
