/*
 * eventloop: an event loop on epoll: a timerfd ticking every 10 ms and an
 * eventfd that the loop itself signals every 3rd tick (edge-triggered, so a
 * lost or repeated edge shows). The main thread blocks in epoll_wait.
 * Prints "tick N events E ms T" per timer tick (T: CLOCK_MONOTONIC ms, to
 * check the period); the eventfd must be seen exactly once per 3 ticks, or
 * it prints CORRUPT and exits 3.
 */
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ep < 0 || tfd < 0 || efd < 0) {
		perror("setup");
		return 2;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x7431 };
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = 0xefd0;
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
	struct itimerspec every = { .it_interval = { 0, 10000000 }, .it_value = { 0, 10000000 } };
	timerfd_settime(tfd, 0, &every, NULL);
	long tick = 0, events = 0;
	for (;;) {
		struct epoll_event got[4];
		int n = epoll_wait(ep, got, 4, -1);
		for (int i = 0; i < n; i++) {
			if (got[i].data.u64 == 0x7431) {
				uint64_t exp;
				if (read(tfd, &exp, sizeof(exp)) != sizeof(exp))
					continue;
				tick++;
				if (tick % 3 == 0) {
					uint64_t one = 1;
					if (write(efd, &one, sizeof(one)) != sizeof(one))
						return 2;
				}
				struct timespec now;
				clock_gettime(CLOCK_MONOTONIC, &now);
				printf("tick %ld events %ld ms %ld\n", tick, events,
				       (long)(now.tv_sec * 1000 + now.tv_nsec / 1000000));
				fflush(stdout);
			} else if (got[i].data.u64 == 0xefd0) {
				uint64_t v;
				if (read(efd, &v, sizeof(v)) != sizeof(v) || v != 1) {
					printf("CORRUPT eventfd read %llu\n", (unsigned long long)v);
					fflush(stdout);
					return 3;
				}
				events++;
			} else {
				printf("CORRUPT unknown epoll data %llx\n", (unsigned long long)got[i].data.u64);
				fflush(stdout);
				return 3;
			}
		}
		if (events > tick / 3 || events + 1 < tick / 3) {
			printf("CORRUPT %ld eventfd events after %ld ticks\n", events, tick);
			fflush(stdout);
			return 3;
		}
	}
}
