/*
 * closed_conn: TCP sockets in the CLOSE state, which hold a port or not.
 * A listener on 0.0.0.0 (any port); a connection to it accepted and then
 * reset by its client, the accepted end kept open (CLOSE: the kernel has
 * released its port, although getsockname still names the listener's);
 * and a socket bound to 127.0.0.1 that neither listens nor connects (CLOSE,
 * holding its port). Each 10 ms tick checks that the bound socket still
 * holds its port (a second bind to it fails), that the reset one stays
 * unconnected, and every 10th tick that the listener still accepts a new
 * connection and carries a byte over it. Prints "tick N"; anything else
 * prints CORRUPT and exits 3.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at %lu (errno %d)\n", what, n, errno);
	fflush(stdout);
	exit(3);
}

static struct sockaddr_in loopback(unsigned short port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static unsigned short port_of(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof a;
	if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		return 0;
	return ntohs(a.sin_port);
}

/* A connection to the listener, accepted, one byte each way, closed. */
static int round_trip(int listener, unsigned short port)
{
	struct sockaddr_in to = loopback(port);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&to, sizeof to) != 0)
		return -1;
	int s = accept(listener, NULL, NULL);
	char b = 0;
	int ok = s >= 0 && write(c, "p", 1) == 1 && read(s, &b, 1) == 1 && b == 'p' &&
		 write(s, "q", 1) == 1 && read(c, &b, 1) == 1 && b == 'q';
	close(c);
	if (s >= 0)
		close(s);
	return ok ? 0 : -1;
}

int main(void)
{
	struct timespec period = {0, 10 * 1000 * 1000};
	int one = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in any;
	memset(&any, 0, sizeof any);
	any.sin_family = AF_INET;
	setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(listener, (struct sockaddr *)&any, sizeof any) != 0 || listen(listener, 8) != 0)
		corrupt("listen", 0);
	unsigned short port = port_of(listener);

	/* The connection reset by its client. */
	struct sockaddr_in to = loopback(port);
	int client = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(client, (struct sockaddr *)&to, sizeof to) != 0)
		corrupt("connect", 0);
	int reset = accept(listener, NULL, NULL);
	if (reset < 0)
		corrupt("accept", 0);
	struct linger abort_at_close = {1, 0};
	setsockopt(client, SOL_SOCKET, SO_LINGER, &abort_at_close, sizeof abort_at_close);
	close(client);
	char b;
	if (read(reset, &b, 1) != -1 || errno != ECONNRESET)
		corrupt("the reset", 0);

	/* The bound socket. */
	int bound = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in here = loopback(0);
	if (bind(bound, (struct sockaddr *)&here, sizeof here) != 0)
		corrupt("bind", 0);
	unsigned short held = port_of(bound);

	for (unsigned long n = 1;; n++) {
		if (port_of(bound) != held)
			corrupt("the bound socket's port", n);
		struct sockaddr_in same = loopback(held);
		int other = socket(AF_INET, SOCK_STREAM, 0);
		if (bind(other, (struct sockaddr *)&same, sizeof same) != -1 || errno != EADDRINUSE)
			corrupt("a second bind to the held port", n);
		close(other);
		struct sockaddr_in peer;
		socklen_t len = sizeof peer;
		if (getpeername(reset, (struct sockaddr *)&peer, &len) != -1 || errno != ENOTCONN)
			corrupt("the reset connection's peer", n);
		if (n % 10 == 0 && round_trip(listener, port) != 0)
			corrupt("a connection to the listener", n);
		printf("tick %lu\n", n);
		nanosleep(&period, NULL);
	}
}
