/*
 * uts_names: a program in UTS and IPC namespaces of its own (started under
 * `unshare --uts --ipc`). It names its UTS namespace argv[1] (host name)
 * and argv[2] (domain name), refusing to if its UTS or IPC namespace is
 * the machine's, given as argv[3] and argv[4] (`readlink /proc/self/ns/uts`
 * and `ipc` of the test: renaming would rename the machine); with argv[5]
 * = "shm" it also makes a SysV shared memory segment in its IPC namespace,
 * with "mq" a POSIX message queue (/tern-ns-q, whose fd it closes). Every 10 ms it checks that uname()
 * still gives those names and that its IPC namespace holds exactly the
 * segments it made (none, or one), and prints "tick N"; anything else
 * prints CORRUPT and exits 3.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what, unsigned long n)
{
	printf("CORRUPT %s at %lu\n", what, n);
	fflush(stdout);
	exit(3);
}

/* Is this process's namespace of `kind` the machine's (`host`)? */
static int same_ns(const char *kind, const char *host)
{
	char mine[64], a[64];
	snprintf(mine, sizeof mine, "/proc/self/ns/%s", kind);
	ssize_t la = readlink(mine, a, sizeof a - 1);
	if (la <= 0)
		return 1;
	a[la] = 0;
	return strcmp(a, host) == 0;
}

/* SysV shared memory segments in this IPC namespace. */
static int segments(void)
{
	FILE *f = fopen("/proc/sysvipc/shm", "r");
	char line[512];
	int n = -1; /* the header line */
	while (f && fgets(line, sizeof line, f))
		n++;
	if (f)
		fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	struct timespec period = {0, 10 * 1000 * 1000};
	if (argc < 5)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (same_ns("uts", argv[3]) || same_ns("ipc", argv[4]))
		corrupt("not in UTS and IPC namespaces of its own", 0);
	if (sethostname(argv[1], strlen(argv[1])) != 0 || setdomainname(argv[2], strlen(argv[2])) != 0)
		corrupt("naming", 0);
	int want_segments = 0;
	if (argc > 5 && strcmp(argv[5], "shm") == 0) {
		if (shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600) < 0)
			corrupt("shmget", 0);
		want_segments = 1;
	}
	if (argc > 5 && strcmp(argv[5], "mq") == 0) {
		mqd_t q = mq_open("/tern-ns-q", O_CREAT | O_RDWR, 0600, NULL);
		if (q == (mqd_t)-1)
			corrupt("mq_open", 0);
		mq_close(q);
	}
	for (unsigned long n = 1;; n++) {
		struct utsname u;
		if (uname(&u) != 0 || strcmp(u.nodename, argv[1]) != 0 || strcmp(u.domainname, argv[2]) != 0)
			corrupt("uname", n);
		if (same_ns("uts", argv[3]) || same_ns("ipc", argv[4]))
			corrupt("namespaces", n);
		if (segments() != want_segments)
			corrupt("SysV segments", n);
		printf("tick %lu\n", n);
		nanosleep(&period, NULL);
	}
}
