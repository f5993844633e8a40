/*
 * guarded_pages: private anonymous memory with data behind every
 * protection: 16 pages made PROT_NONE after they were filled, 16 made
 * read-only, and 4 MiB left read-write, each word a known function of its
 * address. Each tick (10 ms) it checks the read-write part and the
 * read-only pages; every 10th tick it opens the PROT_NONE pages for
 * reading, checks them and closes them again. Prints
 * "tick N pass P us T"; on any mismatch a CORRUPT line, and exits 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL
#define GUARDED 16UL
#define OPEN_PAGES 1024UL

static uint64_t word(const void *at)
{
	uint64_t x = (uint64_t)(uintptr_t)at * 0x9E3779B97F4A7C15ULL + 1;
	x ^= x >> 29;
	return x;
}

static void fill(uint64_t *p, unsigned long pages)
{
	for (unsigned long i = 0; i < pages * PAGE / 8; i++)
		p[i] = word(&p[i]);
}

static void check(const uint64_t *p, unsigned long pages, const char *what)
{
	for (unsigned long i = 0; i < pages * PAGE / 8; i++) {
		if (p[i] != word(&p[i])) {
			printf("CORRUPT %s at %p\n", what, (void *)&p[i]);
			fflush(stdout);
			exit(3);
		}
	}
}

static uint64_t *region(unsigned long pages)
{
	void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(2);
	fill(p, pages);
	return p;
}

int main(void)
{
	uint64_t *none = region(GUARDED);
	uint64_t *ro = region(GUARDED);
	uint64_t *rw = region(OPEN_PAGES);
	if (mprotect(none, GUARDED * PAGE, PROT_NONE) || mprotect(ro, GUARDED * PAGE, PROT_READ))
		return 2;
	for (unsigned long tick = 1;; tick++) {
		check(rw, OPEN_PAGES, "read-write");
		check(ro, GUARDED, "read-only");
		if (tick % 10 == 0) {
			if (mprotect(none, GUARDED * PAGE, PROT_READ))
				return 2;
			check(none, GUARDED, "PROT_NONE");
			if (mprotect(none, GUARDED * PAGE, PROT_NONE))
				return 2;
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		printf("tick %lu pass %lu us %llu\n", tick, tick / 10,
		       (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000);
		fflush(stdout);
		struct timespec ten = { 0, 10 * 1000 * 1000 };
		nanosleep(&ten, NULL);
	}
}
