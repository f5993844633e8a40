/*
 * uring: sets up an io_uring instance with a kernel submission-polling
 * thread (IORING_SETUP_SQPOLL: an "iou-sqp" worker thread in this process)
 * by the raw syscall, then prints "tick N" every 10 ms. For the refusal of
 * io_uring users.
 */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SQPOLL;
	p.sq_thread_idle = 100000;
	int fd = (int)syscall(SYS_io_uring_setup, 8, &p);
	if (fd < 0) {
		perror("io_uring_setup");
		return 2;
	}
	for (unsigned long tick = 1;; tick++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		printf("tick %lu\n", tick);
		fflush(stdout);
	}
}
