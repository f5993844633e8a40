/*
 * tcp_service: a small TCP service that counts requests. Listens on
 * argv[1]:argv[2] (IPv4 or IPv6 literal); every connection sends lines "N\n"
 * and gets back "N C T\n", where C counts the requests this connection made
 * (so a lost or repeated request shows) and T all requests the service saw.
 * A UDP socket bound to the same address and port answers each datagram
 * "N" with "N udp T". One thread, poll() over the listener, the UDP socket
 * and up to 16 connections; prints "listening" and "accepted K" (flushed)
 * to stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "inet_addr.h"

#define MAXCONN 16

struct conn {
    int fd;
    long count;
    size_t have;
    char buf[256];
};

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: tcp_service ADDR PORT\n");
        return 2;
    }
    struct sockaddr_storage ss;
    int family;
    socklen_t len = inet_addr_parse(argv[1], argv[2], &ss, &family);
    int l = socket(family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&ss, len) || listen(l, 16)) {
        perror("bind/listen");
        return 1;
    }
    int u = socket(family, SOCK_DGRAM, 0);
    if (bind(u, (struct sockaddr *)&ss, len)) {
        perror("bind udp");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    struct conn conns[MAXCONN];
    int nconn = 0, accepted = 0;
    long total = 0;
    for (;;) {
        struct pollfd p[MAXCONN + 2];
        p[0].fd = l;
        p[0].events = POLLIN;
        for (int i = 0; i < nconn; i++) {
            p[i + 1].fd = conns[i].fd;
            p[i + 1].events = POLLIN;
        }
        int uslot = nconn + 1; /* nconn changes as connections close */
        p[uslot].fd = u;
        p[uslot].events = POLLIN;
        if (poll(p, nconn + 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return 1;
        }
        for (int i = nconn - 1; i >= 0; i--) {
            if (!p[i + 1].revents)
                continue;
            struct conn *c = &conns[i];
            ssize_t n = read(c->fd, c->buf + c->have, sizeof c->buf - 1 - c->have);
            if (n <= 0) {
                if (n < 0 && errno == EINTR)
                    continue;
                close(c->fd);
                conns[i] = conns[--nconn];
                continue;
            }
            c->have += n;
            char *nl;
            while ((nl = memchr(c->buf, '\n', c->have))) {
                *nl = 0;
                long req = atol(c->buf);
                c->count++;
                total++;
                char out[96];
                int m = snprintf(out, sizeof out, "%ld %ld %ld\n", req, c->count, total);
                if (write(c->fd, out, m) != m) {
                    perror("write");
                    return 1;
                }
                size_t used = nl + 1 - c->buf;
                memmove(c->buf, nl + 1, c->have - used);
                c->have -= used;
            }
        }
        if (p[uslot].revents & POLLIN) {
            char d[64];
            struct sockaddr_storage from;
            socklen_t flen = sizeof from;
            ssize_t n = recvfrom(u, d, sizeof d - 1, 0, (struct sockaddr *)&from, &flen);
            if (n > 0) {
                d[n] = 0;
                total++;
                char out[96];
                int m = snprintf(out, sizeof out, "%ld udp %ld\n", atol(d), total);
                sendto(u, out, m, 0, (struct sockaddr *)&from, flen);
            }
        }
        if (p[0].revents & POLLIN) {
            int fd = accept(l, NULL, NULL);
            if (fd >= 0 && nconn < MAXCONN) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conns[nconn].fd = fd;
                conns[nconn].count = 0;
                conns[nconn].have = 0;
                nconn++;
                printf("accepted %d\n", ++accepted);
                fflush(stdout);
            } else if (fd >= 0) {
                close(fd);
            }
        }
    }
}
