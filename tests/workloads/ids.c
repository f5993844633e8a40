/*
 * ids: what a program sees of its own ids, and the glibc paths that trust
 * the ids cached in its TLS.
 *
 * A worker thread loops taking a priority-inheritance mutex (whose futex
 * word holds the owner's tid, as glibc cached it) and counts SIGUSR2s
 * that the main thread sends it with pthread_kill (glibc's cached tid).
 * Every 20 ms the main thread prints
 *   "tick N pid P tid T wtid W hits H whits X"
 * with P/T from the raw getpid/gettid syscalls, W the worker's own
 * gettid, H the SIGUSR1 handler count and X the worker's SIGUSR2 count,
 * then takes the PI mutex, raise()s SIGUSR1 at itself and sends SIGUSR2 to
 * the worker.
 * A failed lock/unlock/pthread_kill prints "ERROR ..." and exits 3.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t pi_lock;
static volatile sig_atomic_t hits, worker_hits;
static volatile long worker_tid;

static void on_usr1(int sig) { (void)sig; hits++; }
static void on_usr2(int sig) { (void)sig; worker_hits++; }

static void check(int r, const char *what)
{
    if (r != 0) {
        printf("ERROR %s: %s\n", what, strerror(r));
        fflush(stdout);
        exit(3);
    }
}

static void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = syscall(SYS_gettid);
    for (;;) {
        check(pthread_mutex_lock(&pi_lock), "worker lock");
        worker_tid = syscall(SYS_gettid);
        check(pthread_mutex_unlock(&pi_lock), "worker unlock");
        sleep_us(1000);
    }
    return NULL;
}

int main(void)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
    check(pthread_mutex_init(&pi_lock, &attr), "mutex init");
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    pthread_t t;
    check(pthread_create(&t, NULL, worker, NULL), "pthread_create");
    for (long n = 1;; n++) {
        printf("tick %ld pid %ld tid %ld wtid %ld hits %ld whits %ld\n", n,
               (long)syscall(SYS_getpid), (long)syscall(SYS_gettid), worker_tid,
               (long)hits, (long)worker_hits);
        fflush(stdout);
        check(pthread_mutex_lock(&pi_lock), "main lock");
        raise(SIGUSR1);
        check(pthread_mutex_unlock(&pi_lock), "main unlock");
        check(pthread_kill(t, SIGUSR2), "pthread_kill");
        sleep_us(20000);
    }
}
