/*
 * counter64: holds a 64 MiB buffer whose every word is a known function of
 * its index and of a per-page stamp, and checks it continuously.
 *
 * Each tick it verifies the next 2 MiB of the buffer (so the whole buffer is
 * checked every 32 ticks: a "pass"), rewrites 8 pages (argv[1] if given: a
 * steady writer for migration tests) with content derived
 * from the tick number (recorded in stamp[]), prints "tick N pass P us T" to
 * stdout (T: CLOCK_MONOTONIC in microseconds, a heartbeat to measure pauses)
 * and sleeps 10 ms. On any mismatch it prints a CORRUPT line and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef BUF_MIB
#define BUF_MIB 64UL /* -DBUF_MIB=256 for the pre-dump chain test */
#endif
#define BUF_BYTES (BUF_MIB << 20)
#define PAGE_BYTES 4096UL
#define WORDS_PER_PAGE (PAGE_BYTES / sizeof(uint64_t))
#define NPAGES (BUF_BYTES / PAGE_BYTES)
#define SLICE_PAGES 512UL /* 2 MiB verified per tick */
#define REWRITES 8UL /* pages rewritten per tick; argv[1] overrides */

static uint64_t *buf;
static uint64_t stamp[NPAGES]; /* tick that last rewrote each page, 0 = initial fill */

#ifdef COMPRESSIBLE
/* Every word of a page alike: zstd shrinks a page ~100x, so an image of it
 * is small while the program still needs all of its memory (the
 * out-of-memory migration test). */
static uint64_t word_of(uint64_t index, uint64_t seed)
{
	return ((index / WORDS_PER_PAGE) * 0x9E3779B97F4A7C15ULL) ^ (seed * 0xD6E8FEB86659FD93ULL) ^ 1;
}
#else
static uint64_t word_of(uint64_t index, uint64_t seed)
{
	uint64_t x = index * 0x9E3779B97F4A7C15ULL + seed * 0xD6E8FEB86659FD93ULL + 1;
	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 27;
	return x;
}
#endif

/* With -DZERO_PAGES every other run of 64 pages holds zeros (written, so
 * present: a stop-and-copy streams them as zero pages). */
static uint64_t pattern(uint64_t index, uint64_t seed)
{
#ifdef ZERO_PAGES
	if ((index / WORDS_PER_PAGE / 64) % 2)
		return 0;
#endif
	return word_of(index, seed);
}

static void fill_page(uint64_t page, uint64_t seed)
{
	uint64_t *p = buf + page * WORDS_PER_PAGE;
	for (uint64_t w = 0; w < WORDS_PER_PAGE; w++)
		p[w] = pattern(page * WORDS_PER_PAGE + w, seed);
	stamp[page] = seed;
}

static void check_page(uint64_t page, uint64_t tick)
{
	const uint64_t *p = buf + page * WORDS_PER_PAGE;
	for (uint64_t w = 0; w < WORDS_PER_PAGE; w++) {
		uint64_t want = pattern(page * WORDS_PER_PAGE + w, stamp[page]);
		if (p[w] != want) {
			printf("CORRUPT tick %lu page %lu word %lu stamp %lu want %016lx got %016lx\n",
			       (unsigned long)tick, (unsigned long)page, (unsigned long)w,
			       (unsigned long)stamp[page], (unsigned long)want, (unsigned long)p[w]);
			fflush(stdout);
			exit(3);
		}
	}
}

static void sleep_ms(long ms)
{
	struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem = req;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

int main(int argc, char **argv)
{
	uint64_t rewrites = argc > 1 ? strtoull(argv[1], NULL, 10) : REWRITES;
	buf = mmap(NULL, BUF_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	for (uint64_t page = 0; page < NPAGES; page++)
		fill_page(page, 0);
	int quiet = 0;
#ifdef FORK_CHILD
	/* A child that goes on alike with its own copy of the buffer (shared
	 * with the parent's until either rewrites a page), silent but for a
	 * CORRUPT line: a process tree with private memory to move. */
	pid_t child = fork();
	if (child < 0)
		return 2;
	quiet = child == 0;
#endif

	uint64_t tick = 0, pass = 0, cursor = 0;
	for (;;) {
		tick++;
		for (uint64_t k = 0; k < SLICE_PAGES; k++) {
			check_page(cursor, tick);
			if (++cursor == NPAGES) {
				cursor = 0;
				pass++;
			}
		}
		for (uint64_t r = 0; r < rewrites; r++) {
			uint64_t page = (tick * 7919 + r * 104729) % NPAGES;
			fill_page(page, tick);
			check_page(page, tick);
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (!quiet) {
			printf("tick %lu pass %lu us %llu\n", (unsigned long)tick, (unsigned long)pass,
			       (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000);
			fflush(stdout);
		}
		sleep_ms(10);
	}
}
