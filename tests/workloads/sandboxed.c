/*
 * sandboxed: a program under two stacked seccomp filters it installs
 * itself (with no_new_privs, as a sandboxed service does): the first makes
 * mkdir(2) fail with errno 77, the second rmdir(2) with errno 78. A worker
 * thread, started after both, checks them continuously; every 10 ms the
 * main thread checks them too and prints "tick N worker W" (W: the
 * worker's checks so far, which must keep growing: 3 s without
 * one is a failure). A filter missing or
 * changed prints "CORRUPT ..." and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long worker_checks;

static void install(long nr, int err)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
		perror("seccomp");
		exit(2);
	}
}

static void check(const char *who)
{
	/* Without the filters: ENOENT (the parent does not exist). */
	errno = 0;
	if (syscall(SYS_mkdir, "/tern-no-such-dir/x", 0700) != -1 || errno != 77) {
		printf("CORRUPT %s: mkdir filter lost (errno %d)\n", who, errno);
		fflush(stdout);
		exit(1);
	}
	errno = 0;
	if (syscall(SYS_rmdir, "/tern-no-such-dir/x") != -1 || errno != 78) {
		printf("CORRUPT %s: rmdir filter lost (errno %d)\n", who, errno);
		fflush(stdout);
		exit(1);
	}
}

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		check("worker");
		worker_checks++;
		struct timespec ts = { 0, 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(void)
{
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		perror("no_new_privs");
		return 2;
	}
	install(SYS_mkdir, 77);
	install(SYS_rmdir, 78);
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL) != 0)
		return 2;
	unsigned long last = 0, still = 0;
	for (unsigned long tick = 1;; tick++) {
		check("main");
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		unsigned long w = worker_checks;
		still = w == last ? still + 1 : 0;
		if (still >= 300) {
			printf("CORRUPT worker stopped checking at %lu\n", w);
			fflush(stdout);
			return 1;
		}
		last = w;
		printf("tick %lu worker %lu\n", tick, w);
		fflush(stdout);
	}
}
