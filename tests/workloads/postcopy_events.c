/*
 * postcopy_events: a program whose address space changes in every way a
 * post-copy must follow, checking its own memory all the while.
 *
 * Each tick (10 ms apart) it
 *  - rewrites REWRITE pages (argv[1], default 256) of an 8 MiB buffer with
 *    content derived from the tick (recorded in stamp[]) and verifies the
 *    next 1 MiB of it;
 *  - moves a 1 MiB region with mremap to the other of two reserved
 *    places, verifies it there and rewrites 16 of its pages;
 *  - verifies a 1 MiB region, drops half of it with madvise(MADV_DONTNEED)
 *    (those pages must then read as zeros) and rewrites 32 of its pages;
 *  - verifies a 1 MiB region, unmaps it, maps a new one and fills it;
 *  - every 4th tick forks a child that verifies the whole buffer and exits
 *    0 (or 3 on a mismatch), and reaps it.
 * Prints "tick N forks F us T"; on any mismatch prints a CORRUPT line and
 * exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS (PAGE / sizeof(uint64_t))
#define NPAGES 2048UL /* 8 MiB */
#define RPAGES 256UL /* 1 MiB regions */

/* On a failed fork check: this process's namespaces and the children the
 * kernel lists for it, for the report. */
static void describe_family(void)
{
	char path[64], line[256];
	const char *links[] = {"/proc/self/ns/pid", "/proc/self/ns/pid_for_children"};
	for (int i = 0; i < 2; i++) {
		ssize_t n = readlink(links[i], line, sizeof line - 1);
		line[n > 0 ? n : 0] = 0;
		printf("DIAG %s -> %s\n", links[i], line);
	}
	FILE *f = fopen("/proc/self/status", "r");
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, "NSpid", 5) || !strncmp(line, "PPid", 4) || !strncmp(line, "TracerPid", 9))
			printf("DIAG self %s", line);
	if (f)
		fclose(f);
	snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
	f = fopen(path, "r");
	if (f && fgets(line, sizeof line, f))
		printf("DIAG children (host pids): %s\n", line);
	else
		printf("DIAG no children listed\n");
	if (f)
		fclose(f);
}

static uint64_t *buf;
static uint64_t stamp[NPAGES];
static uint64_t *mov, *slot[2];
static uint64_t movstamp[RPAGES];
static uint64_t *drop;
static uint64_t dropstamp[RPAGES]; /* 0: dropped, reads as zeros */
static uint64_t *un;
static uint64_t unseed;

static uint64_t pattern(uint64_t page, uint64_t word, uint64_t seed)
{
	uint64_t x = (page * WORDS + word) * 0x9E3779B97F4A7C15ULL + seed * 0xD6E8FEB86659FD93ULL + 1;
	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ULL;
	return x ^ (x >> 27);
}

static void fill(uint64_t *base, uint64_t page, uint64_t seed)
{
	for (uint64_t w = 0; w < WORDS; w++)
		base[page * WORDS + w] = pattern(page, w, seed);
}

static int check(const char *what, uint64_t *base, uint64_t page, uint64_t seed, int zero)
{
	for (uint64_t w = 0; w < WORDS; w++) {
		uint64_t want = zero ? 0 : pattern(page, w, seed);
		if (base[page * WORDS + w] != want) {
			printf("CORRUPT %s page %lu word %lu: %016lx, expected %016lx\n", what,
			       (unsigned long)page, (unsigned long)w,
			       (unsigned long)base[page * WORDS + w], (unsigned long)want);
			fflush(stdout);
			return 0;
		}
	}
	return 1;
}

static void *map(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
	uint64_t rewrite = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	uint64_t forks = 0;
	buf = map(NPAGES * PAGE, PROT_READ | PROT_WRITE);
	for (uint64_t p = 0; p < NPAGES; p++)
		fill(buf, p, 0);
	/* Two reserved places for the moving region, side by side. */
	slot[0] = map(2 * RPAGES * PAGE, PROT_NONE);
	slot[1] = slot[0] + RPAGES * WORDS;
	mov = mremap(map(RPAGES * PAGE, PROT_READ | PROT_WRITE), RPAGES * PAGE, RPAGES * PAGE,
		     MREMAP_MAYMOVE | MREMAP_FIXED, slot[0]);
	if (mov == MAP_FAILED) {
		perror("mremap");
		return 2;
	}
	for (uint64_t p = 0; p < RPAGES; p++)
		fill(mov, p, movstamp[p] = 1);
	drop = map(RPAGES * PAGE, PROT_READ | PROT_WRITE);
	for (uint64_t p = 0; p < RPAGES; p++)
		fill(drop, p, dropstamp[p] = 1);
	un = map(RPAGES * PAGE, PROT_READ | PROT_WRITE);
	unseed = 1;
	for (uint64_t p = 0; p < RPAGES; p++)
		fill(un, p, unseed);

	for (uint64_t tick = 1;; tick++) {
		for (uint64_t i = 0; i < rewrite; i++) {
			uint64_t p = (tick * rewrite + i) % NPAGES;
			fill(buf, p, stamp[p] = tick);
		}
		for (uint64_t i = 0; i < RPAGES; i++) {
			uint64_t p = (tick * RPAGES + i) % NPAGES;
			if (!check("buffer", buf, p, stamp[p], 0))
				return 3;
		}
		uint64_t *from = mov, *to = mov == slot[0] ? slot[1] : slot[0];
		mov = mremap(mov, RPAGES * PAGE, RPAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		/* Reserve the place it left, so no other mapping lands there. */
		if (mov == MAP_FAILED || mmap(from, RPAGES * PAGE, PROT_NONE,
					      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != from) {
			perror("mremap");
			return 2;
		}
		for (uint64_t p = 0; p < RPAGES; p++)
			if (!check("moved region (after the move)", mov, p, movstamp[p], 0))
				return 3;
		for (uint64_t i = 0; i < 16; i++) {
			uint64_t p = (tick * 16 + i) % RPAGES;
			fill(mov, p, movstamp[p] = tick + 1);
		}
		for (uint64_t p = 0; p < RPAGES; p++)
			if (!check("dropped region", drop, p, dropstamp[p], dropstamp[p] == 0))
				return 3;
		uint64_t half = (tick % 2) * (RPAGES / 2);
		madvise(drop + half * WORDS, RPAGES / 2 * PAGE, MADV_DONTNEED);
		for (uint64_t p = half; p < half + RPAGES / 2; p++)
			dropstamp[p] = 0;
		for (uint64_t i = 0; i < 32; i++) {
			uint64_t p = (tick * 32 + i) % RPAGES;
			fill(drop, p, dropstamp[p] = tick + 1);
		}
		for (uint64_t p = 0; p < RPAGES; p++)
			if (!check("remapped region", un, p, unseed, 0))
				return 3;
		munmap(un, RPAGES * PAGE);
		un = map(RPAGES * PAGE, PROT_READ | PROT_WRITE);
		unseed = tick + 1;
		for (uint64_t p = 0; p < RPAGES; p++)
			fill(un, p, unseed);
		if (tick % 4 == 0) {
			pid_t child = fork();
			if (child == 0) {
				for (uint64_t p = 0; p < NPAGES; p++)
					if (!check("buffer (forked child)", buf, p, stamp[p], 0))
						_exit(3);
				_exit(0);
			}
			int status = 0;
			int fork_errno = child < 0 ? errno : 0;
			pid_t waited = child < 0 ? -1 : waitpid(child, &status, 0);
			if (child < 0 || waited != child || status != 0) {
				printf("CORRUPT forked child: status %d (fork %d: %s, waitpid %d: %s)\n", status,
				       (int)child, strerror(fork_errno), (int)waited, strerror(errno));
				describe_family();
				fflush(stdout);
				return 3;
			}
			forks++;
		}
		printf("tick %lu forks %lu us %lu\n", (unsigned long)tick, (unsigned long)forks,
		       (unsigned long)now_us());
		fflush(stdout);
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
