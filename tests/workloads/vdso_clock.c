/*
 * vdso_clock: reads the time in a tight loop through glibc's vDSO-backed
 * clock_gettime(CLOCK_MONOTONIC) and gettimeofday(). CLOCK_MONOTONIC must
 * never go backwards relative to the last sample (kept in memory), and
 * gettimeofday() must agree with clock_gettime(CLOCK_REALTIME) within a
 * second. Every 100 ms of monotonic time it prints "tick N iters I".
 * Any violation prints a CORRUPT line and exits 3.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

#define PERIOD_NS 100000000LL

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

int main(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	int64_t last = ts_ns(&ts);
	int64_t next_print = last + PERIOD_NS;
	unsigned long tick = 0, iters = 0;

	for (;;) {
		iters++;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t now = ts_ns(&ts);
		if (now < last) {
			printf("CORRUPT monotonic went backwards: %lld after %lld\n", (long long)now,
			       (long long)last);
			fflush(stdout);
			return 3;
		}
		last = now;

		if ((iters & 1023) == 0) {
			struct timeval tv;
			struct timespec rt;
			gettimeofday(&tv, NULL);
			clock_gettime(CLOCK_REALTIME, &rt);
			int64_t tv_ns = (int64_t)tv.tv_sec * 1000000000LL + (int64_t)tv.tv_usec * 1000;
			int64_t diff = ts_ns(&rt) - tv_ns;
			if (diff < -1000000000LL || diff > 1000000000LL) {
				printf("CORRUPT gettimeofday %lld and CLOCK_REALTIME %lld disagree\n",
				       (long long)tv_ns, (long long)ts_ns(&rt));
				fflush(stdout);
				return 3;
			}
		}

		if (now >= next_print) {
			tick++;
			printf("tick %lu iters %lu\n", tick, iters);
			fflush(stdout);
			next_print += PERIOD_NS;
			if (next_print <= now)
				next_print = now + PERIOD_NS;
		}
	}
}
