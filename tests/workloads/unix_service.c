/*
 * unix_service: a daemon serving on unix sockets with names. Arguments:
 * PATH ABSTRACT DGRAM [LAZY]: a stream listener bound to the path PATH
 * (its socket file made mode 0666), a non-blocking stream listener bound
 * to the abstract name ABSTRACT, a datagram socket bound to the path
 * DGRAM, and, if given, a listener at the path LAZY that it never accepts
 * from. Each connection sends one line and gets "served K\n" (K counts
 * every connection served, from 1); each datagram counts. Every 10 ms it
 * prints "tick N served K datagrams D".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int bound(int type, const char *name, int abstract)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	socklen_t len;
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("socket");
		exit(2);
	}
	if (abstract) {
		strncpy(a.sun_path + 1, name, sizeof(a.sun_path) - 2);
		len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
	} else {
		unlink(name);
		strncpy(a.sun_path, name, sizeof(a.sun_path) - 1);
		len = sizeof(a);
	}
	if (bind(fd, (struct sockaddr *)&a, len) != 0) {
		perror("bind");
		exit(2);
	}
	if (type != SOCK_DGRAM && listen(fd, 16) != 0) {
		perror("listen");
		exit(2);
	}
	return fd;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	int by_path = bound(SOCK_STREAM, argv[1], 0);
	chmod(argv[1], 0666);
	int by_name = bound(SOCK_STREAM, argv[2], 1);
	fcntl(by_name, F_SETFL, O_NONBLOCK);
	int dgram = bound(SOCK_DGRAM, argv[3], 0);
	if (argc > 4)
		bound(SOCK_STREAM, argv[4], 0);
	unsigned long served = 0, datagrams = 0, tick = 0;
	long long next = now_ms() + 10;
	for (;;) {
		struct pollfd p[3] = {
			{ by_path, POLLIN, 0 }, { by_name, POLLIN, 0 }, { dgram, POLLIN, 0 }
		};
		int wait = (int)(next - now_ms());
		int n = poll(p, 3, wait < 0 ? 0 : wait);
		if (n < 0 && errno != EINTR) {
			perror("poll");
			return 2;
		}
		for (int k = 0; n > 0 && k < 2; k++) {
			if (!(p[k].revents & POLLIN))
				continue;
			int c = accept4(p[k].fd, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0)
				continue;
			char line[128];
			ssize_t got = read(c, line, sizeof(line));
			if (got > 0) {
				char reply[64];
				int len = snprintf(reply, sizeof(reply), "served %lu\n", ++served);
				if (write(c, reply, (size_t)len) != len)
					printf("ERROR reply\n");
			}
			close(c);
		}
		if (n > 0 && (p[2].revents & POLLIN)) {
			char d[64];
			if (recv(dgram, d, sizeof(d), 0) >= 0)
				datagrams++;
		}
		if (now_ms() >= next) {
			next += 10;
			printf("tick %lu served %lu datagrams %lu\n", ++tick, served, datagrams);
			fflush(stdout);
		}
	}
}
