/*
 * named_conn PATH tree|self[-named]: a unix stream listener bound to PATH
 * and a connection it accepted from a client, whose other end is held by a
 * forked child ("tree") or by the process itself ("self"); with "-named"
 * the client binds to PATH.c before it connects.
 *
 * Every 10 ms the client sends "ping N" and reads "pong N-1" (a reply
 * always waits at the client between ticks); the server side reads
 * "ping N" and answers "pong N". Both check the names the kernel gives:
 * the accepted socket's own name and the client's peer name are PATH, the
 * client has none. Anything else prints CORRUPT and exits 3. The parent
 * prints "tick N"; in "tree" mode it also checks its child is alive.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what, long n)
{
	printf("CORRUPT %s at %ld (errno %d)\n", what, n, errno);
	fflush(stdout);
	exit(3);
}

/* The name `get` (getsockname or getpeername) gives `fd`: must be `want`
 * ("" for none). */
static void check_name(int fd, int (*get)(int, struct sockaddr *, socklen_t *), const char *want,
		       const char *what, long n)
{
	struct sockaddr_un a;
	socklen_t len = sizeof a;
	memset(&a, 0, sizeof a);
	if (get(fd, (struct sockaddr *)&a, &len) != 0)
		corrupt(what, n);
	const char *got = len > sizeof(sa_family_t) ? a.sun_path : "";
	if (strcmp(got, want) != 0) {
		printf("CORRUPT %s at %ld: \"%s\" not \"%s\"\n", what, n, got, want);
		fflush(stdout);
		exit(3);
	}
}

static void send_line(int fd, const char *word, long n)
{
	char m[32];
	int len = snprintf(m, sizeof m, "%s %08ld\n", word, n);
	if (write(fd, m, len) != len)
		corrupt("write", n);
}

static void expect_line(int fd, const char *word, long n)
{
	char got[32], want[32];
	int len = snprintf(want, sizeof want, "%s %08ld\n", word, n);
	int have = 0;
	while (have < len) {
		ssize_t r = read(fd, got + have, len - have);
		if (r <= 0)
			corrupt("read", n);
		have += r;
	}
	if (memcmp(got, want, len) != 0)
		corrupt("message", n);
}

/* The client's own name: PATH.c, or none. */
static char client_name[120];

/* One tick of the client: ping n, take the pong of n-1. */
static void client_tick(int c, const char *path, long n)
{
	check_name(c, getpeername, path, "client's peer name", n);
	check_name(c, getsockname, client_name, "client's own name", n);
	send_line(c, "ping", n);
	if (n > 0)
		expect_line(c, "pong", n - 1);
}

/* One tick of the server side: take ping n, answer pong n. */
static void server_tick(int s, const char *path, long n)
{
	check_name(s, getsockname, path, "accepted socket's name", n);
	check_name(s, getpeername, client_name, "accepted socket's peer name", n);
	expect_line(s, "ping", n);
	send_line(s, "pong", n);
}

int main(int argc, char **argv)
{
	struct timespec period = {0, 10 * 1000 * 1000};
	if (argc != 3)
		return 2;
	const char *path = argv[1];
	int tree = strncmp(argv[2], "tree", 4) == 0;
	int named = strstr(argv[2], "-named") != NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
	unlink(path);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(l, 4) != 0)
		corrupt("listen", 0);
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c < 0)
		corrupt("socket", 0);
	if (named) {
		struct sockaddr_un own = {.sun_family = AF_UNIX};
		snprintf(client_name, sizeof client_name, "%s.c", path);
		strncpy(own.sun_path, client_name, sizeof own.sun_path - 1);
		unlink(client_name);
		if (bind(c, (struct sockaddr *)&own, sizeof own) != 0)
			corrupt("bind the client", 0);
	}
	if (connect(c, (struct sockaddr *)&addr, sizeof addr) != 0)
		corrupt("connect", 0);
	int s = accept(l, NULL, NULL);
	if (s < 0)
		corrupt("accept", 0);
	pid_t child = 0;
	if (tree) {
		child = fork();
		if (child < 0)
			corrupt("fork", 0);
		if (child == 0) {
			close(s);
			close(l);
			for (long n = 0;; n++) {
				client_tick(c, path, n);
				nanosleep(&period, NULL);
			}
		}
		close(c);
	}
	for (long n = 0;; n++) {
		if (!tree)
			client_tick(c, path, n);
		server_tick(s, path, n);
		if (tree && waitpid(child, NULL, WNOHANG) != 0)
			corrupt("child gone", n);
		printf("tick %ld\n", n + 1);
		if (!tree)
			nanosleep(&period, NULL);
	}
}
