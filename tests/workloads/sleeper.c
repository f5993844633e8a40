/*
 * sleeper rel|abs: prints "tick N eintr E" every 50 ms and spends nearly all
 * its time asleep, so a dump catches it inside the sleep syscall.
 *
 *   rel: the raw nanosleep(2) syscall with a relative 50 ms (a signal-free
 *        interruption restarts through restart_syscall).
 *   abs: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) to a deadline that
 *        advances by 50 ms each tick.
 *
 * An EINTR (one way a restore may end an interrupted sleep) is counted in E and
 * the sleep resumed; waking before the requested time without EINTR is
 * reported as CORRUPT (exit 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PERIOD_NS 50000000LL

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	int absolute;
	if (argc == 2 && strcmp(argv[1], "rel") == 0) {
		absolute = 0;
	} else if (argc == 2 && strcmp(argv[1], "abs") == 0) {
		absolute = 1;
	} else {
		fprintf(stderr, "usage: %s rel|abs\n", argv[0]);
		return 2;
	}

	unsigned long tick = 0, eintr = 0;
	int64_t deadline = now_ns();
	for (;;) {
		tick++;
		printf("tick %lu eintr %lu\n", tick, eintr);
		fflush(stdout);

		if (absolute) {
			deadline += PERIOD_NS;
			struct timespec ts = { deadline / 1000000000LL, deadline % 1000000000LL };
			int r;
			while ((r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) == EINTR)
				eintr++;
			if (r != 0) {
				printf("ERROR clock_nanosleep: %s\n", strerror(r));
				fflush(stdout);
				return 2;
			}
			if (now_ns() < deadline) {
				printf("CORRUPT tick %lu woke before its absolute deadline\n", tick);
				fflush(stdout);
				return 3;
			}
		} else {
			int64_t start = now_ns();
			struct timespec req = { 0, PERIOD_NS }, rem = req;
			for (;;) {
				long r = syscall(SYS_nanosleep, &req, &rem);
				if (r == 0)
					break;
				if (errno != EINTR) {
					printf("ERROR nanosleep: %s\n", strerror(errno));
					fflush(stdout);
					return 2;
				}
				eintr++;
				req = rem;
			}
			if (now_ns() - start < PERIOD_NS) {
				printf("CORRUPT tick %lu woke after %lld ns of a %lld ns sleep\n", tick,
				       (long long)(now_ns() - start), PERIOD_NS);
				fflush(stdout);
				return 3;
			}
		}
	}
}
