/* Shared by tcp_service.c and tcp_client.c: an IPv4 or IPv6 literal and a
 * port into a sockaddr; returns its length and sets *family. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static socklen_t inet_addr_parse(const char *host, const char *port,
                                 struct sockaddr_storage *ss, int *family) {
    memset(ss, 0, sizeof *ss);
    *family = strchr(host, ':') ? AF_INET6 : AF_INET;
    if (*family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(atoi(port));
        inet_pton(AF_INET, host, &a->sin_addr);
        return sizeof *a;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(atoi(port));
    inet_pton(AF_INET6, host, &a->sin6_addr);
    return sizeof *a;
}
