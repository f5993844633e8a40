/*
 * forker: a parent whose tree changes all the time. Every tick (10 ms) it
 * forks a child that blocks reading a number from its own pipe; three
 * ticks later the parent writes the tick number to that child, which
 * exits with a status made of that number and its own birth tick, and the
 * parent reaps it with waitpid (after argv[1] ms, default 0: a zombie
 * waits that long) and checks the status. So about three children live at
 * any moment, one is born and one dies each tick.
 * Prints "tick N children K" each tick; a wrong status, a failed fork or
 * write prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
	int to_kid[LIFE] = {-1, -1, -1};
	uint64_t born[LIFE] = {0};
	struct timespec period = {0, 10 * 1000 * 1000};
	long delay_ms = argc > 1 ? atol(argv[1]) : 0;
	struct timespec reap_delay = {0, delay_ms * 1000 * 1000};

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (uint64_t n = 1;; n++) {
		int slot = (int)(n % LIFE);
		if (kid[slot] > 0) {
			int st = 0;
			if (write(to_kid[slot], &n, sizeof n) != (ssize_t)sizeof n)
				corrupt("write", n);
			if (delay_ms > 0)
				nanosleep(&reap_delay, NULL);
			if (waitpid(kid[slot], &st, 0) != kid[slot] || !WIFEXITED(st) ||
			    WEXITSTATUS(st) != status_for(n, born[slot]))
				corrupt("child status", n);
			close(to_kid[slot]);
		}
		int p[2];
		if (pipe(p) != 0)
			corrupt("pipe", n);
		pid_t c = fork();
		if (c < 0)
			corrupt("fork", n);
		if (c == 0) {
			uint64_t told;
			close(p[1]);
			for (int i = 0; i < LIFE; i++)
				if (i != slot && to_kid[i] >= 0)
					close(to_kid[i]);
			if (read(p[0], &told, sizeof told) != (ssize_t)sizeof told)
				_exit(100);
			_exit(status_for(told, n));
		}
		close(p[0]);
		kid[slot] = c;
		to_kid[slot] = p[1];
		born[slot] = n;
		int alive = 0;
		for (int i = 0; i < LIFE; i++)
			alive += kid[i] > 0;
		printf("tick %lu children %d\n", (unsigned long)n, alive);
		nanosleep(&period, NULL);
	}
}
