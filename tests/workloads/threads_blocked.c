/*
 * threads_blocked CONTROL_DIR: three threads, each blocked in a different
 * syscall until the test wakes it, plus a main thread that ticks.
 *
 *   "t-cond"    pthread_cond_wait (futex) until the main thread sets `go`
 *               and signals the condition variable, which it does when the
 *               file CONTROL_DIR/go-cond appears. A return from the wait
 *               without `go` is counted as spurious.
 *   "t-sleep"   clock_nanosleep(CLOCK_MONOTONIC, relative one hour) in a
 *               loop until a SIGUSR2 handler has run. SIGUSR2 is blocked in
 *               every other thread, so a process-directed SIGUSR2 can only
 *               be delivered here; the handler records the tid it ran on.
 *               An EINTR without the handler having run is counted.
 *   "t-sigwait" sigwaitinfo({SIGUSR1}); SIGUSR1 is blocked in every thread.
 *               It records the sender's pid and si_code of what it got.
 *
 * Every 10 ms the main thread prints
 *   "tick N condwoke A condspurious B sleepwoke C sleepeintr D usr2tid E
 *    sleeptid F sigwoke G sigpid H sigcode I joined J"
 * where *woke counts wake-ups (each must end at exactly 1), usr2tid is the
 * tid the SIGUSR2 handler ran on and sleeptid the tid of t-sleep, and J is
 * the number of those threads joined so far: each thread returns after its
 * wake-up and the main thread pthread_join()s it once it has reported.
 * After its wake-up each thread checks that its signal mask is what it set
 * (a mask saved while the kernel had it temporarily changed inside
 * sigwaitinfo would unblock SIGUSR1 there); main checks its own every tick.
 * A count above 1, a wrong mask, or a thread returning something unexpected
 * prints a CORRUPT line and exits 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go;

/* Reported state, written by the owning thread, read by main. */
static volatile int cond_woke, cond_spurious, cond_done;
static volatile int sleep_woke, sleep_eintr, sleep_done, sleep_tid;
static volatile int sig_woke, sig_pid, sig_code, sig_done;
static volatile sig_atomic_t usr2_seen;
static volatile int usr2_tid;

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

static void on_usr2(int sig)
{
	(void)sig;
	usr2_tid = (int)syscall(SYS_gettid);
	usr2_seen = 1;
}

/* The calling thread's mask must block SIGUSR1/SIGUSR2 exactly as given. */
static void check_mask(const char *who, int usr1, int usr2)
{
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (sigismember(&cur, SIGUSR1) != usr1 || sigismember(&cur, SIGUSR2) != usr2)
		corrupt("%s: signal mask has SIGUSR1 blocked=%d SIGUSR2 blocked=%d, expected %d %d", who,
			sigismember(&cur, SIGUSR1), sigismember(&cur, SIGUSR2), usr1, usr2);
}

static void *cond_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&m);
	while (!go) {
		pthread_cond_wait(&cv, &m);
		if (!go)
			cond_spurious++;
	}
	pthread_mutex_unlock(&m);
	check_mask("t-cond", 1, 1);
	cond_woke++;
	__atomic_store_n(&cond_done, 1, __ATOMIC_RELEASE);
	return (void *)1;
}

static void *sleep_thread(void *arg)
{
	(void)arg;
	sleep_tid = (int)syscall(SYS_gettid);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	while (!usr2_seen) {
		struct timespec ts = { 3600, 0 };
		int rc = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
		if (rc == EINTR && !usr2_seen)
			sleep_eintr++;
		else if (rc != 0 && rc != EINTR)
			corrupt("t-sleep: clock_nanosleep: %s", strerror(rc));
	}
	check_mask("t-sleep", 1, 0);
	sleep_woke++;
	__atomic_store_n(&sleep_done, 1, __ATOMIC_RELEASE);
	return (void *)2;
}

static void *sigwait_thread(void *arg)
{
	(void)arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	siginfo_t info;
	int sig;
	while ((sig = sigwaitinfo(&set, &info)) == -1 && errno == EINTR)
		;
	if (sig != SIGUSR1)
		corrupt("t-sigwait: sigwaitinfo returned %d (%s)", sig, strerror(errno));
	check_mask("t-sigwait", 1, 1);
	sig_pid = info.si_pid;
	sig_code = info.si_code;
	sig_woke++;
	__atomic_store_n(&sig_done, 1, __ATOMIC_RELEASE);
	return (void *)3;
}

static void sleep_ns(long ns)
{
	struct timespec req = { ns / 1000000000L, ns % 1000000000L }, rem;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s CONTROL_DIR\n", argv[0]);
		return 2;
	}
	char go_path[4096];
	snprintf(go_path, sizeof(go_path), "%s/go-cond", argv[1]);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr2;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL) != 0) {
		perror("sigaction");
		return 2;
	}
	/* Blocked here, so in every thread created below (t-sleep unblocks SIGUSR2). */
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &block, NULL);

	void *(*fns[3])(void *) = { cond_thread, sleep_thread, sigwait_thread };
	const char *names[3] = { "t-cond", "t-sleep", "t-sigwait" };
	pthread_t th[3];
	for (int i = 0; i < 3; i++) {
		int rc = pthread_create(&th[i], NULL, fns[i], NULL);
		if (rc == 0)
			rc = pthread_setname_np(th[i], names[i]);
		if (rc != 0) {
			fprintf(stderr, "pthread_create/setname %s: %s\n", names[i], strerror(rc));
			return 2;
		}
	}

	int signalled = 0, joined[3] = { 0, 0, 0 }, njoined = 0;
	volatile int *done[3] = { &cond_done, &sleep_done, &sig_done };
	for (unsigned long tick = 1;; tick++) {
		if (!signalled && access(go_path, F_OK) == 0) {
			pthread_mutex_lock(&m);
			go = 1;
			pthread_cond_signal(&cv);
			pthread_mutex_unlock(&m);
			signalled = 1;
		}
		for (int i = 0; i < 3; i++) {
			if (joined[i] || !__atomic_load_n(done[i], __ATOMIC_ACQUIRE))
				continue;
			void *ret;
			int rc = pthread_join(th[i], &ret);
			if (rc != 0)
				corrupt("pthread_join(%s): %s", names[i], strerror(rc));
			if ((intptr_t)ret != i + 1)
				corrupt("%s returned %ld, expected %d", names[i], (long)(intptr_t)ret, i + 1);
			joined[i] = 1;
			njoined++;
		}
		check_mask("main", 1, 1);
		if (cond_woke > 1 || sleep_woke > 1 || sig_woke > 1)
			corrupt("a thread woke more than once: cond %d sleep %d sig %d", cond_woke, sleep_woke,
				sig_woke);
		printf("tick %lu condwoke %d condspurious %d sleepwoke %d sleepeintr %d usr2tid %d "
		       "sleeptid %d sigwoke %d sigpid %d sigcode %d joined %d\n",
		       tick, cond_woke, cond_spurious, sleep_woke, sleep_eintr, (int)usr2_tid, sleep_tid,
		       sig_woke, sig_pid, sig_code, njoined);
		fflush(stdout);
		sleep_ns(10000000L);
	}
}
