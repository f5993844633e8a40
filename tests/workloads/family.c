/*
 * family: a parent and two children talking over pipes and sharing an
 * anonymous mapping (MAP_SHARED|MAP_ANONYMOUS, made before the forks).
 *
 * Each tick the parent sends the tick number to each child over its own
 * pipe; the child stores it in its slot of the shared page and answers
 * "<child> <number>" over one pipe both children write to. The parent
 * checks both answers and both slots (the shared page must really be
 * shared), prints "tick N" to stdout (which the children share too) and
 * sleeps 20 ms. At tick 60 it tells child 1 to exit (number 0), reaps it
 * with waitpid and prints "tick 60 reaped <pid>". A child whose pipe
 * closes exits. Any mismatch prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t *shared;

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at %lu\n", what, n);
	fflush(stdout);
	exit(3);
}

static void child(int id, int in, int out)
{
	uint64_t n;
	for (;;) {
		if (read(in, &n, sizeof n) != (ssize_t)sizeof n || n == 0)
			_exit(0);
		shared[id] = n;
		uint64_t reply[2] = {(uint64_t)id, n};
		if (write(out, reply, sizeof reply) != (ssize_t)sizeof reply)
			_exit(2);
	}
}

int main(void)
{
	int to_child[2][2], from_children[2];
	pid_t kids[2];
	struct timespec period = {0, 20 * 1000 * 1000};

	setvbuf(stdout, NULL, _IOLBF, 0);
	shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED || pipe(from_children) != 0)
		corrupt("setup", 0);
	for (int i = 0; i < 2; i++) {
		if (pipe(to_child[i]) != 0)
			corrupt("pipe", 0);
		kids[i] = fork();
		if (kids[i] < 0)
			corrupt("fork", 0);
		if (kids[i] == 0) {
			close(to_child[i][1]);
			close(from_children[0]);
			child(i, to_child[i][0], from_children[1]);
		}
		close(to_child[i][0]);
	}
	close(from_children[1]);
	int alive = 2;
	for (unsigned long n = 1;; n++) {
		for (int i = 0; i < alive; i++) {
			uint64_t v = n;
			if (write(to_child[i][1], &v, sizeof v) != (ssize_t)sizeof v)
				corrupt("send", n);
		}
		int seen = 0;
		for (int k = 0; k < alive; k++) {
			uint64_t reply[2];
			if (read(from_children[0], reply, sizeof reply) != (ssize_t)sizeof reply)
				corrupt("reply", n);
			if (reply[0] >= (uint64_t)alive || reply[1] != n || (seen & (1 << reply[0])))
				corrupt("reply value", n);
			seen |= 1 << reply[0];
		}
		for (int i = 0; i < alive; i++)
			if (shared[i] != n)
				corrupt("shared slot", n);
		if (n == 60) {
			uint64_t zero = 0;
			if (write(to_child[1][1], &zero, sizeof zero) != (ssize_t)sizeof zero)
				corrupt("stop", n);
			int status;
			if (waitpid(kids[1], &status, 0) != kids[1] || !WIFEXITED(status))
				corrupt("waitpid", n);
			alive = 1;
			printf("tick %lu reaped %d\n", n, (int)kids[1]);
		} else {
			printf("tick %lu\n", n);
		}
		nanosleep(&period, NULL);
	}
}
