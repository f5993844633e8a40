/*
 * container_counter: the program of the runc container test, built
 * static. Counts a tick every 10 ms; listens on 127.0.0.1:argv[1] and
 * answers each connection with one line
 * "count N host H seccomp S pid P child C" and closes it. It forks one
 * child at the start, which only waits; every tick the parent checks that
 * its host name is still argv[2], that its root holds /etc/tern-rootfs
 * containing argv[3] (the root file system it was started on), that the
 * fd it keeps open on that file is still 4 bytes in, that
 * its child is still there and still its child, and that its files on the
 * /dev/shm tmpfs are as it left them: "count" holds the last count, and
 * "t-N" exists for the last tick only (each tick makes the next and
 * removes the last); anything else: exits 3 (the test sees the listener
 * go).
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
#include <dirent.h>
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

/* The tick's files on the tmpfs: checked against the last tick, then
 * moved on to this one. */
static int shm_files_follow(unsigned long count)
{
	char buf[32], name[64];
	int fd = open("/dev/shm/count", O_RDONLY);
	if (count > 0) {
		ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
		if (n <= 0)
			return 0;
		buf[n] = 0;
		if (strtoul(buf, NULL, 10) != count)
			return 0;
	}
	if (fd >= 0)
		close(fd);
	if (count % 50 == 0) {
		int ticks = 0;
		DIR *d = opendir("/dev/shm");
		struct dirent *e;
		while (d && (e = readdir(d)))
			ticks += strncmp(e->d_name, "t-", 2) == 0;
		if (d)
			closedir(d);
		if (ticks != (count > 0))
			return 0;
	}
	fd = open("/dev/shm/count", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int n = snprintf(buf, sizeof buf, "%lu", count + 1);
	if (fd < 0 || write(fd, buf, n) != n)
		return 0;
	close(fd);
	snprintf(name, sizeof name, "/dev/shm/t-%lu", count + 1);
	fd = open(name, O_WRONLY | O_CREAT, 0644);
	if (fd < 0)
		return 0;
	close(fd);
	snprintf(name, sizeof name, "/dev/shm/t-%lu", count);
	unlink(name);
	return 1;
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
	int mark = open("/etc/tern-rootfs", O_RDONLY);
	char head[4];
	if (mark < 0 || read(mark, head, sizeof head) != sizeof head)
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
			if (!shm_files_follow(count))
				return 3;
			if (lseek(mark, 0, SEEK_CUR) != (off_t)sizeof head)
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
