/*
 * inotify: watches directory "a" (wd 1) and directory "b", which gets wd 3
 * (a watch on "c" took 2 and was removed), in its working directory, with
 * a non-blocking inotify fd. Prints "tick N" every 20 ms; at tick 40 it
 * creates a/x40 and b/y40 and checks that exactly those two IN_CREATE
 * events arrive, under wd 1 and wd 3 (nothing else queued: no stray
 * IN_IGNORED), printing "tick 40 inotify ok". A mismatch prints CORRUPT
 * and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what)
{
	printf("CORRUPT %s\n", what);
	fflush(stdout);
	exit(3);
}

int main(void)
{
	struct timespec period = {0, 20 * 1000 * 1000};
	setvbuf(stdout, NULL, _IOLBF, 0);
	mkdir("a", 0700);
	mkdir("b", 0700);
	mkdir("c", 0700);
	int in = inotify_init1(IN_NONBLOCK);
	if (in < 0)
		corrupt("inotify_init1");
	if (inotify_add_watch(in, "a", IN_CREATE) != 1)
		corrupt("wd 1");
	int c = inotify_add_watch(in, "c", IN_CREATE);
	if (c != 2 || inotify_rm_watch(in, c) != 0)
		corrupt("wd 2");
	if (inotify_add_watch(in, "b", IN_CREATE) != 3)
		corrupt("wd 3");
	char drain[4096];
	while (read(in, drain, sizeof drain) > 0)
		; /* the IN_IGNORED of wd 2 */
	for (unsigned long n = 1;; n++) {
		if (n == 40) {
			char buf[4096] __attribute__((aligned(8)));
			int fd1 = open("a/x40", O_CREAT | O_WRONLY, 0600);
			int fd2 = open("b/y40", O_CREAT | O_WRONLY, 0600);
			if (fd1 < 0 || fd2 < 0)
				corrupt("create");
			close(fd1);
			close(fd2);
			struct timespec settle = {0, 5 * 1000 * 1000};
			nanosleep(&settle, NULL);
			ssize_t len = read(in, buf, sizeof buf);
			int saw_a = 0, saw_b = 0, other = 0;
			for (char *p = buf; len > 0 && p < buf + len;) {
				struct inotify_event *e = (struct inotify_event *)p;
				if (e->wd == 1 && (e->mask & IN_CREATE) && strcmp(e->name, "x40") == 0)
					saw_a++;
				else if (e->wd == 3 && (e->mask & IN_CREATE) && strcmp(e->name, "y40") == 0)
					saw_b++;
				else
					other++;
				p += sizeof *e + e->len;
			}
			if (saw_a != 1 || saw_b != 1 || other != 0)
				corrupt("events");
			printf("tick %lu inotify ok\n", n);
		} else {
			printf("tick %lu\n", n);
		}
		nanosleep(&period, NULL);
	}
}
