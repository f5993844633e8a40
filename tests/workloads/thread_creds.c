/*
 * thread_creds: started as root; a second thread drops its own uid with the
 * raw setresuid syscall (glibc's wrapper would change every thread), so the
 * two threads of one process have different credentials. Prints
 * "tick N" every 20 ms from the main thread.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void *dropper(void *arg)
{
	(void)arg;
	if (syscall(SYS_setresuid, 65534, 65534, 65534) != 0) {
		perror("setresuid");
		_exit(2);
	}
	for (;;)
		pause();
	return NULL;
}

int main(void)
{
	pthread_t t;
	struct timespec period = {0, 20 * 1000 * 1000};

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (pthread_create(&t, NULL, dropper, NULL) != 0)
		return 1;
	for (unsigned long n = 1;; n++) {
		printf("tick %lu\n", n);
		nanosleep(&period, NULL);
	}
}
