/*
 * tcp_client: the user of tcp_service. Connects to argv[1]:argv[2] ONCE and
 * sends request 1, 2, 3, ... every argv[3] microseconds, each answered
 * before the next; checks each answer is "N N T" (its own count continues:
 * no request lost or repeated). argv[4]: number of requests (0: until
 * SIGTERM). Prints "progress N maxwait_us W recent_us R" every 100
 * requests (W: longest wait for an answer so far, R: over these 100) and
 * "done N maxwait_us W" at the end; on any error "ERROR ..." and exit 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "inet_addr.h"

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: tcp_client ADDR PORT INTERVAL_US COUNT\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    struct sockaddr_storage ss;
    int family;
    socklen_t len = inet_addr_parse(argv[1], argv[2], &ss, &family);
    int fd = socket(family, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&ss, len)) {
        printf("ERROR connect: %s\n", strerror(errno));
        return 1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    long count = atol(argv[4]), interval = atol(argv[3]), maxwait = 0, recent = 0;
    char buf[256];
    size_t have = 0;
    long i;
    for (i = 1; (count == 0 || i <= count) && !stop; i++) {
        char req[32];
        int m = snprintf(req, sizeof req, "%ld\n", i);
        long t0 = now_us();
        if (write(fd, req, m) != m) {
            printf("ERROR write of request %ld: %s\n", i, strerror(errno));
            return 1;
        }
        char *nl;
        while (!(nl = memchr(buf, '\n', have))) {
            ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                printf("ERROR read of answer %ld: %s\n", i, n ? strerror(errno) : "connection closed");
                return 1;
            }
            have += n;
        }
        long wait = now_us() - t0;
        if (wait > maxwait)
            maxwait = wait;
        if (wait > recent)
            recent = wait;
        *nl = 0;
        long req_back = -1, c = -1, total = -1;
        if (sscanf(buf, "%ld %ld %ld", &req_back, &c, &total) != 3 || req_back != i || c != i) {
            printf("ERROR request %ld answered \"%s\"\n", i, buf);
            return 1;
        }
        size_t used = nl + 1 - buf;
        memmove(buf, nl + 1, have - used);
        have -= used;
        if (i % 100 == 0) {
            printf("progress %ld maxwait_us %ld recent_us %ld\n", i, maxwait, recent);
            fflush(stdout);
            recent = 0;
        }
        usleep(interval);
    }
    printf("done %ld maxwait_us %ld\n", i - 1, maxwait);
    return 0;
}
