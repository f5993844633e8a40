/*
 * threads_workers CONTROL_DIR: four worker threads pass a turn round-robin
 * under one mutex and one condition variable (a ticket scheme). On its turn
 * a worker increments its __thread counter, folds it into a __thread mix,
 * copies both to the shared arrays, passes the turn to the next live worker
 * and broadcasts; it then sleeps 300 us outside the lock. So at any moment
 * most workers are blocked in futex, some in nanosleep, one runs.
 *
 * Every 10 ms the main thread prints
 *   "tick N w0 A w1 B w2 C w3 D turns T live L joined J"
 * (J is "none" until worker 3 has been joined, then "3") after checking,
 * under the mutex, that the shared copies are consistent:
 *   - the sum of the workers' counters equals the number of turns taken;
 *   - the counters of the live workers differ by at most one;
 *   - the turn belongs to a live worker.
 * Each worker also checks, on every turn, that the shared copy of its
 * counter and mix equals its thread-local values (so a thread that came back
 * with another thread's TLS, i.e. a wrong fs base, is caught), and every 16
 * turns that gettid() is still the tid it started with, that its alternate
 * signal stack and its signal mask (it blocks SIGRTMIN+i) are still its own.
 * Any violation prints a CORRUPT line and exits 3.
 *
 * Each worker is named "worker-I" (pthread_setname_np) before the first tick.
 * When the file CONTROL_DIR/stop3 appears, the main thread asks worker 3 to
 * exit; worker 3 leaves the ring on its next turn and returns, and the main
 * thread pthread_join()s it (which needs the kernel's clear_child_tid wake).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NW 4
#define ALTSTACK_SIZE (64 * 1024)

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

/* Shared state, all under m. */
static int turn;                   /* index of the worker whose turn it is */
static uint64_t turns;             /* turns taken in total */
static uint64_t progress[NW];      /* copy of each worker's tls_count */
static uint64_t mixes[NW];         /* copy of each worker's tls_mix */
static int live[NW];               /* worker still in the ring */
static int stop_req[NW];           /* main asks the worker to leave */
static int started;                /* workers that finished their setup */

static __thread uint64_t tls_count;
static __thread uint64_t tls_mix;

static char altstacks[NW][ALTSTACK_SIZE];

static void corrupt(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void corrupt(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printf("CORRUPT %s\n", buf);
	fflush(stdout);
	_exit(3);
}

static void sleep_ns(long ns)
{
	struct timespec req = { ns / 1000000000L, ns % 1000000000L }, rem;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
	return h * 0xff51afd7ed558ccdULL;
}

static int next_live(int from)
{
	for (int k = 1; k <= NW; k++) {
		int j = (from + k) % NW;
		if (live[j])
			return j;
	}
	return -1;
}

static void self_check(int i, pid_t tid)
{
	pid_t now = (pid_t)syscall(SYS_gettid);
	if (now != tid)
		corrupt("worker %d: gettid() is %d, it was %d", i, (int)now, (int)tid);
	stack_t ss;
	if (sigaltstack(NULL, &ss) != 0)
		corrupt("worker %d: sigaltstack: %s", i, strerror(errno));
	if (ss.ss_sp != altstacks[i] || ss.ss_size != ALTSTACK_SIZE || (ss.ss_flags & SS_DISABLE))
		corrupt("worker %d: alt stack is %p size %zu flags %d, expected %p size %d", i, ss.ss_sp,
			ss.ss_size, ss.ss_flags, (void *)altstacks[i], ALTSTACK_SIZE);
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	for (int k = 0; k < NW; k++)
		if (sigismember(&cur, SIGRTMIN + k) != (k == i))
			corrupt("worker %d: SIGRTMIN+%d blocked=%d", i, k, sigismember(&cur, SIGRTMIN + k));
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	pid_t tid = (pid_t)syscall(SYS_gettid);

	stack_t ss = { .ss_sp = altstacks[i], .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0)
		corrupt("worker %d: sigaltstack set: %s", i, strerror(errno));
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + i);
	pthread_sigmask(SIG_SETMASK, &set, NULL);
	self_check(i, tid);

	pthread_mutex_lock(&m);
	started++;
	pthread_cond_broadcast(&cv);
	for (;;) {
		while (turn != i)
			pthread_cond_wait(&cv, &m);
		if (progress[i] != tls_count || mixes[i] != tls_mix)
			corrupt("worker %d: shared copy %llu/%016llx != thread-local %llu/%016llx", i,
				(unsigned long long)progress[i], (unsigned long long)mixes[i],
				(unsigned long long)tls_count, (unsigned long long)tls_mix);
		if (stop_req[i]) {
			live[i] = 0;
			turn = next_live(i);
			pthread_cond_broadcast(&cv);
			pthread_mutex_unlock(&m);
			return (void *)(intptr_t)(100 + i);
		}
		tls_count++;
		tls_mix = mix(tls_mix, tls_count ^ ((uint64_t)i << 56));
		progress[i] = tls_count;
		mixes[i] = tls_mix;
		turns++;
		turn = next_live(i);
		pthread_cond_broadcast(&cv);
		pthread_mutex_unlock(&m);

		if (tls_count % 16 == 0)
			self_check(i, tid);
		sleep_ns(300000);
		pthread_mutex_lock(&m);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s CONTROL_DIR\n", argv[0]);
		return 2;
	}
	char stop_path[4096];
	snprintf(stop_path, sizeof(stop_path), "%s/stop3", argv[1]);

	pthread_t th[NW];
	for (int i = 0; i < NW; i++)
		live[i] = 1;
	turn = 0;
	for (int i = 0; i < NW; i++) {
		int rc = pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
		if (rc != 0) {
			fprintf(stderr, "pthread_create: %s\n", strerror(rc));
			return 2;
		}
		char name[16];
		snprintf(name, sizeof(name), "worker-%d", i);
		rc = pthread_setname_np(th[i], name);
		if (rc != 0) {
			fprintf(stderr, "pthread_setname_np: %s\n", strerror(rc));
			return 2;
		}
	}
	pthread_mutex_lock(&m);
	while (started < NW)
		pthread_cond_wait(&cv, &m);
	pthread_mutex_unlock(&m);

	int asked = 0, joined = 0;
	for (unsigned long tick = 1;; tick++) {
		uint64_t p[NW], t;
		int l[NW], nlive = 0;
		pthread_mutex_lock(&m);
		memcpy(p, progress, sizeof(p));
		memcpy(l, live, sizeof(l));
		t = turns;
		uint64_t sum = 0, lo = UINT64_MAX, hi = 0;
		for (int i = 0; i < NW; i++) {
			sum += p[i];
			if (l[i]) {
				nlive++;
				lo = p[i] < lo ? p[i] : lo;
				hi = p[i] > hi ? p[i] : hi;
			}
		}
		int cur = turn;
		pthread_mutex_unlock(&m);
		if (sum != t)
			corrupt("tick %lu: workers' counters sum to %llu, %llu turns taken", tick,
				(unsigned long long)sum, (unsigned long long)t);
		if (nlive > 0 && hi - lo > 1)
			corrupt("tick %lu: live workers' counters range from %llu to %llu", tick,
				(unsigned long long)lo, (unsigned long long)hi);
		if (cur < 0 || cur >= NW || !l[cur])
			corrupt("tick %lu: the turn (%d) belongs to no live worker", tick, cur);

		if (!asked && access(stop_path, F_OK) == 0) {
			pthread_mutex_lock(&m);
			stop_req[3] = 1;
			pthread_mutex_unlock(&m);
			asked = 1;
		}
		if (asked && !joined && !l[3]) {
			void *ret;
			int rc = pthread_join(th[3], &ret);
			if (rc != 0)
				corrupt("pthread_join(worker 3): %s", strerror(rc));
			if ((intptr_t)ret != 103)
				corrupt("worker 3 returned %ld, expected 103", (long)(intptr_t)ret);
			joined = 1;
		}

		printf("tick %lu w0 %llu w1 %llu w2 %llu w3 %llu turns %llu live %d joined %s\n", tick,
		       (unsigned long long)p[0], (unsigned long long)p[1], (unsigned long long)p[2],
		       (unsigned long long)p[3], (unsigned long long)t, nlive, joined ? "3" : "none");
		fflush(stdout);
		sleep_ns(10000000L);
	}
}
