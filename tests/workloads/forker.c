/*
 * forker: a parent whose tree changes all the time. Every tick (10 ms) it
 * forks a child that waits (polling every millisecond) for a number in its
 * slot of a page shared by the whole family; three ticks later the parent
 * puts the tick number there, the child exits with a status made of that
 * number and its own birth tick, and the parent reaps it with waitpid
 * (after argv[1] ms, default 0: a zombie waits that long) and checks the
 * status. So about three children live at any moment, one is born and one
 * dies each tick. The children hold no fd of their own (a pipe to each
 * would be half-closed for a moment around every exit); one whose parent
 * is gone (it was reparented) exits. Prints
 * "tick N children K" each tick; a wrong status or a failed fork prints
 * CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIFE 3

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at %lu\n", what, n);
	fflush(stdout);
	exit(3);
}

static int status_for(uint64_t told, uint64_t born)
{
	return (int)((told * 7 + born) & 0x7f);
}

int main(int argc, char **argv)
{
	pid_t kid[LIFE] = {0};
	uint64_t born[LIFE] = {0};
	struct timespec period = {0, 10 * 1000 * 1000};
	struct timespec poll_ms = {0, 1000 * 1000};
	long delay_ms = argc > 1 ? atol(argv[1]) : 0;
	struct timespec reap_delay = {0, delay_ms * 1000 * 1000};
	volatile uint64_t *told =
		mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (told == MAP_FAILED)
		corrupt("mmap", 0);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (uint64_t n = 1;; n++) {
		int slot = (int)(n % LIFE);
		if (kid[slot] > 0) {
			int st = 0;
			__atomic_store_n(&told[slot], n, __ATOMIC_RELEASE);
			if (delay_ms > 0)
				nanosleep(&reap_delay, NULL);
			if (waitpid(kid[slot], &st, 0) != kid[slot] || !WIFEXITED(st) ||
			    WEXITSTATUS(st) != status_for(n, born[slot]))
				corrupt("child status", n);
		}
		__atomic_store_n(&told[slot], 0, __ATOMIC_RELEASE);
		pid_t parent = getpid();
		pid_t c = fork();
		if (c < 0)
			corrupt("fork", n);
		if (c == 0) {
			uint64_t v;
			while ((v = __atomic_load_n(&told[slot], __ATOMIC_ACQUIRE)) == 0) {
				if (getppid() != parent)
					_exit(0);
				nanosleep(&poll_ms, NULL);
			}
			_exit(status_for(v, n));
		}
		kid[slot] = c;
		born[slot] = n;
		int alive = 0;
		for (int i = 0; i < LIFE; i++)
			alive += kid[i] > 0;
		printf("tick %lu children %d\n", (unsigned long)n, alive);
		nanosleep(&period, NULL);
	}
}
