/*
 * timers: driven only by an interval timer (setitimer ITIMER_REAL, 10 ms,
 * SIGALRM handler) and keeping state in an eventfd: each alarm adds 1 to the
 * eventfd, every 5th alarm reads it back and expects exactly 5. Prints
 * "tick N" per alarm. Without its timer it would sleep in pause() forever;
 * with a lost eventfd count it prints CORRUPT and exits 3.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

int main(void)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	if (efd < 0) {
		perror("eventfd");
		return 2;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 10000}, {0, 10000}};
	setitimer(ITIMER_REAL, &it, NULL);
	uint64_t seen = 0;
	for (uint64_t tick = 1;;) {
		while (alarms == (sig_atomic_t)seen)
			pause();
		seen++;
		uint64_t one = 1;
		if (write(efd, &one, sizeof one) != sizeof one) {
			perror("write eventfd");
			return 2;
		}
		if (tick % 5 == 0) {
			uint64_t v = 0;
			if (read(efd, &v, sizeof v) != sizeof v || v != 5) {
				printf("CORRUPT eventfd held %llu, expected 5\n", (unsigned long long)v);
				return 3;
			}
		}
		printf("tick %llu\n", (unsigned long long)tick);
		fflush(stdout);
		tick++;
	}
}
