/* Writes known pages when told, for tern's dirty-page tracker tests.
 *
 *   dirty_pages PAGES          commands on stdin (below)
 *   dirty_pages PAGES thp      the same, buffer backed by transparent huge pages
 *   dirty_pages PAGES auto     writes one page of the buffer every ms, forever
 *   dirty_pages PAGES bench    sweeps the buffer writing one word per page,
 *                              forever; prints "rate PAGES_PER_S" each second
 *
 * Prints "buf ADDR PAGES" and "ready" once the buffer (an anonymous mapping
 * of PAGES pages) is allocated and every page written. Each command is one
 * line on stdin and is answered by one line on stdout, after all its writes:
 *
 *   w I J K ...   write pages I, J, K of the buffer         -> "ok COUNT"
 *   m N           map a new region of N pages, write all    -> "map ID ADDR N"
 *   W ID I J ...  write pages I, J of region ID             -> "ok COUNT"
 *   u ID          munmap region ID                           -> "unmapped ID"
 *   r ID          move region ID with mremap                 -> "moved ID ADDR"
 *   p ID PROT     mprotect region ID (0 none, 1 ro, 3 rw)    -> "prot ID PROT"
 *   q             exit 0
 *
 * Every write stores a new counter value, so each written page's content
 * changes (the hash tracker sees it too). I/O uses read/write on static
 * buffers so the program itself dirties few pages besides the ones asked.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_REGIONS 64

static long page;
static uint64_t counter;
static char *regions[MAX_REGIONS];
static size_t region_pages[MAX_REGIONS];
static char line[1 << 16];
static size_t line_len;
static char reply[256];

static void say(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w <= 0)
            _exit(3);
        s += w;
        n -= (size_t)w;
    }
}

static void touch(char *base, size_t index)
{
    counter++;
    *(volatile uint64_t *)(base + index * page) = counter;
}

/* Next line from stdin into `line` (NUL-terminated, no newline); 0 at EOF. */
static int next_line(void)
{
    static char in[1 << 16];
    static size_t in_len, in_pos;
    line_len = 0;
    for (;;) {
        if (in_pos == in_len) {
            ssize_t n = read(0, in, sizeof in);
            if (n <= 0)
                return 0;
            in_len = (size_t)n;
            in_pos = 0;
        }
        char c = in[in_pos++];
        if (c == '\n') {
            line[line_len] = 0;
            return 1;
        }
        if (line_len + 1 < sizeof line)
            line[line_len++] = c;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    page = sysconf(_SC_PAGESIZE);
    size_t pages = strtoul(argv[1], NULL, 0);
    int thp = argc > 2 && strcmp(argv[2], "thp") == 0;
    size_t huge = 2 << 20;
    /* With "thp": 2 MiB aligned and MADV_HUGEPAGE, so the buffer is backed
     * by transparent huge pages (write-protection then starts per PMD). */
    char *raw = mmap(NULL, pages * page + (thp ? huge : 0), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return 4;
    char *buf = thp ? (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1)) : raw;
    if (thp && madvise(buf, pages * page, MADV_HUGEPAGE) != 0)
        return 5;
    for (size_t i = 0; i < pages; i++)
        touch(buf, i);
    snprintf(reply, sizeof reply, "buf %p %zu\nready\n", (void *)buf, pages);
    say(reply);

    if (argc > 2 && strcmp(argv[2], "auto") == 0) {
        for (size_t i = 0;; i++) {
            touch(buf, (i * 7919) % pages);
            usleep(1000);
        }
    }
    if (argc > 2 && strcmp(argv[2], "bench") == 0) {
        double last = now();
        uint64_t done = 0;
        for (size_t i = 0;; i = (i + 1) % pages) {
            touch(buf, i);
            done++;
            if ((done & 4095) == 0) {
                double t = now();
                if (t - last >= 1.0) {
                    snprintf(reply, sizeof reply, "rate %.0f\n", done / (t - last));
                    say(reply);
                    done = 0;
                    last = t;
                }
            }
        }
    }

    while (next_line()) {
        char *p = line + 1;
        char *end;
        switch (line[0]) {
        case 'w': {
            unsigned long n = 0;
            for (;;) {
                unsigned long i = strtoul(p, &end, 0);
                if (end == p)
                    break;
                p = end;
                if (i < pages) {
                    touch(buf, i);
                    n++;
                }
            }
            snprintf(reply, sizeof reply, "ok %lu\n", n);
            break;
        }
        case 'm': {
            size_t n = strtoul(p, NULL, 0);
            int id = 0;
            while (id < MAX_REGIONS && regions[id])
                id++;
            char *r = id < MAX_REGIONS ? mmap(NULL, n * page, PROT_READ | PROT_WRITE,
                                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                                       : MAP_FAILED;
            if (r == MAP_FAILED) {
                snprintf(reply, sizeof reply, "error mmap\n");
                break;
            }
            for (size_t i = 0; i < n; i++)
                touch(r, i);
            regions[id] = r;
            region_pages[id] = n;
            snprintf(reply, sizeof reply, "map %d %p %zu\n", id, (void *)r, n);
            break;
        }
        case 'W': {
            int id = (int)strtol(p, &end, 0);
            p = end;
            unsigned long n = 0;
            for (;;) {
                unsigned long i = strtoul(p, &end, 0);
                if (end == p)
                    break;
                p = end;
                if (id >= 0 && id < MAX_REGIONS && regions[id] && i < region_pages[id]) {
                    touch(regions[id], i);
                    n++;
                }
            }
            snprintf(reply, sizeof reply, "ok %lu\n", n);
            break;
        }
        case 'u': {
            int id = atoi(p);
            if (id < 0 || id >= MAX_REGIONS || !regions[id] ||
                munmap(regions[id], region_pages[id] * page) != 0) {
                snprintf(reply, sizeof reply, "error munmap\n");
                break;
            }
            regions[id] = NULL;
            snprintf(reply, sizeof reply, "unmapped %d\n", id);
            break;
        }
        case 'r': {
            int id = atoi(p);
            if (id < 0 || id >= MAX_REGIONS || !regions[id]) {
                snprintf(reply, sizeof reply, "error mremap\n");
                break;
            }
            size_t len = region_pages[id] * page;
            /* Reserve a destination, then move the region over it. */
            void *dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            void *moved = dst == MAP_FAILED
                              ? MAP_FAILED
                              : mremap(regions[id], len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
            if (moved == MAP_FAILED) {
                snprintf(reply, sizeof reply, "error mremap\n");
                break;
            }
            regions[id] = moved;
            snprintf(reply, sizeof reply, "moved %d %p\n", id, moved);
            break;
        }
        case 'p': {
            int id = (int)strtol(p, &end, 0);
            int prot = atoi(end);
            if (id < 0 || id >= MAX_REGIONS || !regions[id] ||
                mprotect(regions[id], region_pages[id] * page, prot) != 0) {
                snprintf(reply, sizeof reply, "error mprotect\n");
                break;
            }
            snprintf(reply, sizeof reply, "prot %d %d\n", id, prot);
            break;
        }
        case 'q':
            return 0;
        default:
            snprintf(reply, sizeof reply, "error unknown command\n");
        }
        say(reply);
    }
    return 0;
}
