/*
 * sighandler: installs a SIGUSR1 handler (SA_RESTART) that counts deliveries
 * and blocks SIGUSR2. Every 20 ms it prints
 *   "tick N usr1 H usr2blocked B usr1blocked U act A"
 * where H is the handler count, B/U come from querying the current signal
 * mask, and A is 1 when sigaction(SIGUSR1) still reports this handler with
 * SA_RESTART.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t usr1_count;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_count++;
}

static void sleep_ms(long ms)
{
	struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem = req;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) != 0) {
		perror("sigaction");
		return 2;
	}
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &block, NULL) != 0) {
		perror("sigprocmask");
		return 2;
	}

	for (unsigned long tick = 1;; tick++) {
		sigset_t cur;
		struct sigaction old;
		sigprocmask(SIG_BLOCK, NULL, &cur);
		sigaction(SIGUSR1, NULL, &old);
		int act = old.sa_handler == on_usr1 && (old.sa_flags & SA_RESTART) != 0;
		printf("tick %lu usr1 %d usr2blocked %d usr1blocked %d act %d\n", tick,
		       (int)usr1_count, sigismember(&cur, SIGUSR2), sigismember(&cur, SIGUSR1), act);
		fflush(stdout);
		sleep_ms(20);
	}
}
