/*
 * rtqueue CONTROL_FILE: blocks SIGRTMIN so signals queued for it wait, with
 * their data, until CONTROL_FILE exists; then unblocks it. An SA_SIGINFO
 * handler records each delivery's value and si_code. Prints
 * "tick N got G vals V1,V2,... code C" every 10 ms (C: si_code of the last).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static volatile int vals[16];
static volatile int last_code;

static void on_rt(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	if (got < 16)
		vals[got] = info->si_value.sival_int;
	last_code = info->si_code;
	got++;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_rt;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGRTMIN, &sa, NULL);
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN);
	sigprocmask(SIG_BLOCK, &rt, NULL);
	int blocked = 1;
	for (long n = 1;; n++) {
		if (blocked && access(argv[1], F_OK) == 0) {
			sigprocmask(SIG_UNBLOCK, &rt, NULL);
			blocked = 0;
		}
		char list[128] = "";
		for (int i = 0; i < got && i < 16; i++) {
			char one[16];
			snprintf(one, sizeof(one), i ? ",%d" : "%d", vals[i]);
			strncat(list, one, sizeof(list) - strlen(list) - 1);
		}
		printf("tick %ld got %d vals %s code %d\n", n, (int)got, got ? list : "-", last_code);
		fflush(stdout);
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
}
