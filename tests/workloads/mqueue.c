/*
 * mqueue NAME: keeps POSIX message queue NAME (made empty at the start)
 * holding three messages. Every 10 ms it receives one, which must be
 * "msg K" for the next K in order, sends "msg K+3", and prints "tick K".
 * A restore that did not reopen the same queue on the same fd (or lost
 * its nonblocking mode) shows as CORRUPT and exit 3. "mqueue unlink NAME"
 * removes the queue.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void corrupt(const char *what, long n)
{
	printf("CORRUPT %s at %ld (errno %d)\n", what, n, errno);
	fflush(stdout);
	exit(3);
}

static void send_msg(mqd_t q, long k)
{
	char m[32];
	int len = snprintf(m, sizeof m, "msg %ld", k);
	if (mq_send(q, m, len, 1) != 0)
		corrupt("mq_send", k);
}

int main(int argc, char **argv)
{
	struct timespec period = {0, 10 * 1000 * 1000};
	if (argc == 3 && strcmp(argv[1], "unlink") == 0)
		return mq_unlink(argv[2]) == 0 ? 0 : 1;
	if (argc != 2)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	mq_unlink(argv[1]);
	struct mq_attr attr = {.mq_maxmsg = 8, .mq_msgsize = 64};
	mqd_t q = mq_open(argv[1], O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, &attr);
	if (q == (mqd_t)-1)
		corrupt("mq_open", 0);
	for (long k = 0; k < 3; k++)
		send_msg(q, k);
	for (long k = 0;; k++) {
		char got[64], want[32];
		ssize_t n = mq_receive(q, got, sizeof got, NULL);
		if (n < 0)
			corrupt("mq_receive", k);
		got[n] = 0;
		snprintf(want, sizeof want, "msg %ld", k);
		if (strcmp(got, want) != 0)
			corrupt("message out of order", k);
		/* Still nonblocking: the queue holds two now, three after the send. */
		struct mq_attr now;
		if (mq_getattr(q, &now) != 0 || !(now.mq_flags & O_NONBLOCK) || now.mq_curmsgs != 2)
			corrupt("queue attributes", k);
		send_msg(q, k + 3);
		printf("tick %ld\n", k + 1);
		nanosleep(&period, NULL);
	}
}
