/*
 * fdtimers: driven by a timerfd (CLOCK_MONOTONIC, every 10 ms, blocking
 * read) and reading its own signals from a signalfd: every 5th tick it
 * raises SIGUSR2 (blocked, so it waits in the signalfd) and reads it back
 * through the signalfd, which must hold exactly that one signal. A second
 * timerfd (CLOCK_REALTIME, one minute, never read) must keep its time left.
 * Prints "tick N exp E sigs S left_ms L"; a lost or extra signal prints
 * CORRUPT and exits 3.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

int main(void)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	int idle = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC | TFD_NONBLOCK);
	if (sfd < 0 || tfd < 0 || idle < 0) {
		perror("signalfd/timerfd_create");
		return 2;
	}
	struct itimerspec every = { .it_interval = { 0, 10000000 }, .it_value = { 0, 10000000 } };
	struct itimerspec minute = { .it_value = { 60, 0 } };
	timerfd_settime(tfd, 0, &every, NULL);
	timerfd_settime(idle, 0, &minute, NULL);
	uint64_t total = 0;
	long sigs = 0;
	for (long n = 1;; n++) {
		uint64_t exp;
		if (read(tfd, &exp, sizeof(exp)) != sizeof(exp))
			continue;
		total += exp;
		if (n % 5 == 0) {
			raise(SIGUSR2);
			struct signalfd_siginfo si[2];
			ssize_t got = read(sfd, si, sizeof(si));
			if (got != (ssize_t)sizeof(si[0]) || si[0].ssi_signo != SIGUSR2) {
				printf("CORRUPT signalfd read %zd\n", got);
				fflush(stdout);
				return 3;
			}
			sigs++;
		}
		struct itimerspec left;
		timerfd_gettime(idle, &left);
		printf("tick %ld exp %llu sigs %ld left_ms %ld\n", n, (unsigned long long)total, sigs,
		       (long)(left.it_value.tv_sec * 1000 + left.it_value.tv_nsec / 1000000));
		fflush(stdout);
	}
}
