/*
 * tty_echo: a shell job on a terminal. Prints "tick N" every 20 ms; a line
 * typed on stdin is answered "got LINE"; SIGINT (^C on the terminal)
 * prints "interrupted" and exits with status 5. Checks that stdin is its
 * controlling terminal's and that it is in the terminal's foreground
 * process group when it answers ("got LINE fg").
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;

static void on_int(int sig)
{
	(void)sig;
	interrupted = 1;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_int;
	sigaction(SIGINT, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	char line[256];
	size_t have = 0;
	for (unsigned long n = 1;; n++) {
		if (interrupted) {
			printf("interrupted\n");
			exit(5);
		}
		printf("tick %lu\n", n);
		struct pollfd p = {.fd = 0, .events = POLLIN};
		if (poll(&p, 1, 20) > 0 && (p.revents & POLLIN)) {
			ssize_t r = read(0, line + have, sizeof line - 1 - have);
			if (r > 0) {
				have += (size_t)r;
				line[have] = 0;
				char *nl = strchr(line, '\n');
				if (nl) {
					*nl = 0;
					int fg = tcgetpgrp(0) == getpgrp();
					printf("got %s%s\n", line, fg ? " fg" : " bg");
					have = 0;
				}
			}
		}
	}
}
