/*
 * zombies MARKER: forks two children that end at once, one with exit code
 * 7, one killed by SIGTERM, and does not reap them: they stay zombies.
 * Every 10 ms it prints "tick N"; once the file MARKER exists it reaps
 * each by its pid and checks its status, and that tick's line ends with
 * "reaped PID exit 7 PID signal 15" (anything else: CORRUPT, exit 3).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what, long v)
{
	printf("CORRUPT %s %ld\n", what, v);
	fflush(stdout);
	exit(3);
}

int main(int argc, char **argv)
{
	struct timespec period = {0, 10 * 1000 * 1000};
	if (argc != 2)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	pid_t exits = fork();
	if (exits == 0)
		_exit(7);
	pid_t killed = fork();
	if (killed == 0) {
		raise(SIGTERM);
		_exit(1);
	}
	if (exits < 0 || killed < 0)
		corrupt("fork", 0);
	int reaped = 0;
	for (long n = 1;; n++) {
		char note[96] = "";
		if (!reaped && access(argv[1], F_OK) == 0) {
			int status;
			if (waitpid(exits, &status, WNOHANG) != exits)
				corrupt("no zombie to reap", exits);
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 7)
				corrupt("exit status", status);
			int code = WEXITSTATUS(status);
			if (waitpid(killed, &status, WNOHANG) != killed)
				corrupt("no zombie to reap", killed);
			if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGTERM)
				corrupt("kill status", status);
			snprintf(note, sizeof note, " reaped %d exit %d %d signal %d", exits, code,
				 killed, WTERMSIG(status));
			reaped = 1;
		}
		printf("tick %ld%s\n", n, note);
		nanosleep(&period, NULL);
	}
}
