/*
 * pidfd_parent: forks a child that sleeps, and holds a pidfd of it
 * (pidfd_open). Every tick (10 ms) it checks through the pidfd that the
 * child is its own and alive (waitid(P_PIDFD, WNOHANG) answers, with no
 * child ended) and prints "tick N". At tick 50 it ends the child with
 * pidfd_send_signal(SIGTERM), waits for it with waitid(P_PIDFD) and prints
 * "tick 50 child ended by signal 15". Anything else prints CORRUPT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at tick %lu (%s)\n", what, n, strerror(errno));
	fflush(stdout);
	exit(3);
}

int main(void)
{
	pid_t child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		for (;;)
			pause();
	}
	int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
	if (pidfd < 0)
		corrupt("pidfd_open", 0);
	for (unsigned long tick = 1;; tick++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (tick < 50) {
			if (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG) != 0)
				corrupt("waitid on the pidfd", tick);
			if (si.si_pid != 0)
				corrupt("the child ended", tick);
			printf("tick %lu\n", tick);
		} else if (tick == 50) {
			if (syscall(SYS_pidfd_send_signal, pidfd, SIGTERM, NULL, 0) != 0)
				corrupt("pidfd_send_signal", tick);
			if (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) != 0)
				corrupt("waitid for the child", tick);
			if (si.si_pid != child || si.si_code != CLD_KILLED)
				corrupt("the wrong child ended", tick);
			printf("tick %lu child ended by signal %d\n", tick, si.si_status);
		} else {
			printf("tick %lu\n", tick);
		}
		fflush(stdout);
	}
}
