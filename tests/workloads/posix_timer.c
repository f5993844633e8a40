/*
 * posix_timer: driven by a POSIX timer (timer_create, CLOCK_MONOTONIC,
 * SIGEV_SIGNAL with SIGUSR1 and sigev_value 4242, every 10 ms) whose
 * SA_SIGINFO handler checks that each signal carries that value and the
 * timer's own id, and counts. A second timer (CLOCK_REALTIME, SIGEV_NONE,
 * one minute) is never delivered: its id and time left must survive. The
 * main loop prints "tick N fired F id I left_ms L" every 20 ms, sleeping in
 * sigsuspend-free nanosleep; a wrong value or id prints CORRUPT, exits 3.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static timer_t main_timer;
static volatile sig_atomic_t fired, bad;

static void on_timer(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	if (info->si_code != SI_TIMER || info->si_value.sival_int != 4242 ||
	    info->si_timerid != (int)(long)main_timer)
		bad = 1;
	fired++;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_timer;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);

	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_NONE;
	timer_t idle_timer;
	if (timer_create(CLOCK_REALTIME, &sev, &idle_timer) != 0) {
		perror("timer_create");
		return 2;
	}
	struct itimerspec minute = { .it_value = { 60, 0 } };
	timer_settime(idle_timer, 0, &minute, NULL);

	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGUSR1;
	sev.sigev_value.sival_int = 4242;
	if (timer_create(CLOCK_MONOTONIC, &sev, &main_timer) != 0) {
		perror("timer_create");
		return 2;
	}
	struct itimerspec every = { .it_interval = { 0, 10000000 }, .it_value = { 0, 10000000 } };
	timer_settime(main_timer, 0, &every, NULL);

	for (long n = 1;; n++) {
		struct timespec ts = { 0, 20000000 };
		while (nanosleep(&ts, &ts) != 0) {
		}
		if (bad) {
			printf("CORRUPT timer signal with a wrong value or id\n");
			fflush(stdout);
			return 3;
		}
		struct itimerspec left;
		timer_gettime(idle_timer, &left);
		printf("tick %ld fired %ld id %ld left_ms %ld\n", n, (long)fired,
		       (long)(long)idle_timer, (long)(left.it_value.tv_sec * 1000 + left.it_value.tv_nsec / 1000000));
		fflush(stdout);
	}
}
