/*
 * family_unix: a parent and a child over two unix socketpairs (one end
 * each) and an eventfd they share (made before the fork). At start the
 * child sends a 500-byte backlog over the second pair, which the parent
 * leaves unread until tick 40. Each
 * tick the parent sends the tick number, the child answers twice the
 * number and adds 1 to the eventfd, which the parent reads (exactly 1).
 * Prints "tick N" every 20 ms ("tick 40 backlog ok" at 40). A mismatch
 * prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG 500

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at %lu\n", what, n);
	fflush(stdout);
	exit(3);
}

static void read_exact(int fd, void *buf, size_t len, unsigned long n)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, (char *)buf + got, len - got);
		if (r <= 0)
			corrupt("short read", n);
		got += (size_t)r;
	}
}

int main(void)
{
	int sv[2], sb[2];
	struct timespec period = {0, 20 * 1000 * 1000};
	char backlog[BACKLOG];

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < BACKLOG; i++)
		backlog[i] = (char)(i * 3 + 1);
	int ev = eventfd(0, 0);
	if (ev < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, sb) != 0)
		corrupt("setup", 0);
	pid_t kid = fork();
	if (kid < 0)
		corrupt("fork", 0);
	if (kid == 0) {
		close(sv[0]);
		close(sb[0]);
		if (write(sb[1], backlog, BACKLOG) != BACKLOG)
			_exit(2);
		for (;;) {
			uint64_t n, one = 1;
			if (read(sv[1], &n, 8) != 8)
				_exit(0);
			uint64_t twice = 2 * n;
			if (write(sv[1], &twice, 8) != 8 || write(ev, &one, 8) != 8)
				_exit(2);
		}
	}
	close(sv[1]);
	close(sb[1]);
	for (unsigned long n = 1;; n++) {
		if (n == 40) {
			char got[BACKLOG];
			read_exact(sb[0], got, BACKLOG, n);
			if (memcmp(got, backlog, BACKLOG) != 0)
				corrupt("backlog", n);
		}
		uint64_t out = n, in, count;
		if (write(sv[0], &out, 8) != 8)
			corrupt("send", n);
		read_exact(sv[0], &in, 8, n);
		if (in != 2 * n)
			corrupt("answer", n);
		read_exact(ev, &count, 8, n);
		if (count != 1)
			corrupt("eventfd", n);
		printf(n == 40 ? "tick %lu backlog ok\n" : "tick %lu\n", n);
		nanosleep(&period, NULL);
	}
}
