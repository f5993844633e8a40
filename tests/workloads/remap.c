/*
 * remap: fills 16 pages at a fixed address with 0xAB; once the file argv[1]
 * exists it unmaps them (phase 2), once argv[2] exists it maps fresh (zero)
 * memory at the same address, which it never writes (phase 3). Each tick it
 * checks the region: all 0xAB in phase 1, all zero in phase 3. Prints
 * "tick N phase P"; a wrong byte
 * prints CORRUPT and exits 3. Catches a chain restore that writes an older
 * image's pages into memory that was replaced since.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEN (16 * 4096UL)

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	void *want = (void *)0x3f0000000000UL;
	unsigned char *p = mmap(want, LEN, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != want) {
		perror("mmap");
		return 2;
	}
	memset(p, 0xAB, LEN);
	int phase = 1;
	struct timespec ts = {0, 10 * 1000 * 1000};
	for (unsigned long tick = 1;; tick++) {
		if (phase == 1 && access(argv[1], F_OK) == 0) {
			munmap(p, LEN);
			phase = 2;
		}
		if (phase == 2 && access(argv[2], F_OK) == 0) {
			p = mmap(want, LEN, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (p != want) {
				perror("mmap again");
				return 2;
			}
			phase = 3;
		}
		unsigned char expect = phase == 1 ? 0xAB : 0;
		for (unsigned long i = 0; phase != 2 && i < LEN; i++) {
			if (p[i] != expect) {
				printf("CORRUPT phase %d byte %lu is %#x\n", phase, i, p[i]);
				return 3;
			}
		}
		printf("tick %lu phase %d\n", tick, phase);
		fflush(stdout);
		nanosleep(&ts, NULL);
	}
}
