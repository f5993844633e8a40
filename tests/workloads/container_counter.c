/*
 * container_counter: the program of the runc container test, built
 * static. Counts a tick every 10 ms; listens on 127.0.0.1:argv[1] and
 * answers each connection with one line
 * "count N host H seccomp S pid P child C" and closes it. It forks one
 * child at the start, which only waits; every tick the parent checks that
 * its host name is still argv[2], that its root holds /etc/tern-rootfs
 * containing argv[3] (the root file system it was started on) and that
 * its child is still there and still its child; anything else: exits 3
 * (the test sees the listener go).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int seccomp_mode(void)
{
	char line[256];
	int mode = -1;
	FILE *f = fopen("/proc/self/status", "r");
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, "Seccomp:", 8))
			mode = atoi(line + 8);
	if (f)
		fclose(f);
	return mode;
}

static int root_is(const char *mark)
{
	char buf[128];
	int fd = open("/etc/tern-rootfs", O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, mark) != NULL;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 8) != 0)
		return 3;
	pid_t child = fork();
	if (child == 0) {
		close(l);
		for (;;)
			pause();
	}
	if (child < 0)
		return 3;
	unsigned long count = 0;
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		struct pollfd p = {l, POLLIN, 0};
		if (poll(&p, 1, 10) > 0) {
			int c = accept(l, NULL, NULL);
			if (c >= 0) {
				struct utsname u;
				uname(&u);
				char out[256];
				int m = snprintf(out, sizeof out, "count %lu host %s seccomp %d pid %d child %d\n",
						 count, u.nodename, seccomp_mode(), (int)getpid(), (int)child);
				if (write(c, out, m) != m) {
					/* the client went away: its loss */
				}
				close(c);
			}
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec >= next.tv_nsec)) {
			struct utsname u;
			if (uname(&u) != 0 || strcmp(u.nodename, argv[2]) != 0 || !root_is(argv[3]))
				return 3;
			if (waitpid(child, NULL, WNOHANG) != 0)
				return 3;
			count++;
			next.tv_nsec += 10 * 1000 * 1000;
			if (next.tv_nsec >= 1000000000) {
				next.tv_nsec -= 1000000000;
				next.tv_sec++;
			}
		}
	}
}
