/*
 * unix_pair: two socketpairs of its own.
 *
 * - stream pair (s[0], s[1]): at start 3000 bytes of a known pattern are
 *   written into s[1] and left unread at s[0] (a backlog); every tick
 *   "msg N" goes s[0] -> s[1] and is read back and checked (a dump may
 *   catch it in flight). At tick 40 the backlog is read at s[0] and
 *   checked byte for byte.
 * - datagram pair (d[0], d[1]), non-blocking: one datagram each way at
 *   start and again at tick 40, checked.
 *
 * Prints "tick N" every 20 ms (at 40: "tick 40 backlog ok dgram ok");
 * any mismatch prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG 3000

static void corrupt(const char *what)
{
	printf("CORRUPT %s\n", what);
	fflush(stdout);
	exit(3);
}

static void read_exact(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			corrupt("short read");
		got += (size_t)n;
	}
}

static void dgram_roundtrip(int *d, unsigned long n)
{
	char out[32], in[64];
	int len = snprintf(out, sizeof out, "dgram %lu", n);
	if (send(d[0], out, len, 0) != len || recv(d[1], in, sizeof in, 0) != len ||
	    memcmp(in, out, len) != 0)
		corrupt("dgram one way");
	if (send(d[1], out, len, 0) != len || recv(d[0], in, sizeof in, 0) != len ||
	    memcmp(in, out, len) != 0)
		corrupt("dgram the other way");
}

int main(void)
{
	int s[2], d[2];
	struct timespec period = {0, 20 * 1000 * 1000};
	char backlog[BACKLOG];

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) != 0 ||
	    socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, d) != 0)
		corrupt("socketpair");
	for (int i = 0; i < BACKLOG; i++)
		backlog[i] = (char)(i * 7 + 3);
	if (write(s[1], backlog, BACKLOG) != BACKLOG)
		corrupt("backlog write");
	dgram_roundtrip(d, 0);
	for (unsigned long n = 1;; n++) {
		char out[32], in[32];
		int len = snprintf(out, sizeof out, "msg %lu;", n);
		if (write(s[0], out, len) != len)
			corrupt("write");
		read_exact(s[1], in, len);
		if (memcmp(in, out, len) != 0)
			corrupt("message");
		if (n == 40) {
			char got[BACKLOG];
			read_exact(s[0], got, BACKLOG);
			if (memcmp(got, backlog, BACKLOG) != 0)
				corrupt("backlog");
			dgram_roundtrip(d, n);
			printf("tick %lu backlog ok dgram ok\n", n);
		} else {
			printf("tick %lu\n", n);
		}
		nanosleep(&period, NULL);
	}
}
