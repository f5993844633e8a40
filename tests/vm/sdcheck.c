/* Checks `tern track --json` output against what a workload was told to
 * write, for the soft-dirty tests that run inside the VM (tests/vm/guest.sh).
 *
 *   sdcheck ROUNDS.jsonl EXPECT NOISE
 *
 * ROUNDS.jsonl: one JSON object per round, as `tern track --json` prints it
 * (top-level "round" and "dirty_pages", and "vmas": a list of objects with
 * "start", "end" (hex strings) and "dirty_pages").
 *
 * EXPECT: for each round, in order,
 *   round K NAME
 *   range ADDR PAGES WANT MODE LABEL     (ADDR in hex, one line per range)
 * WANT is how many pages of [ADDR, ADDR + PAGES * page) were written since
 * the previous round. Only the per-VMA breakdown tells where the reported
 * pages are, so a range is checked through the reported VMAs overlapping it:
 *   exact    every such VMA lies inside the range, and their pages add up
 *            to exactly WANT (used for 1-page regions that are VMAs of their
 *            own, so which page was reported is checked too);
 *   bounded  their pages add up to WANT plus at most the pages those VMAs
 *            have outside the range (a buffer the kernel merged with a
 *            neighbouring anonymous mapping); when no such VMA sticks out of
 *            the range, this is exact as well.
 * Pages reported in VMAs that overlap no range are the program's own noise
 * (stack, its line buffers, libc data): at most NOISE per round.
 *
 * Prints one line per round and exits 0 when every round passed, 1 if not.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROUNDS 64
#define MAX_RANGES 128
#define MAX_VMAS 4096

struct range {
    unsigned long long start, end, want;
    int exact;
    char label[32];
};

struct round {
    int k;
    char name[64];
    int nranges;
    struct range r[MAX_RANGES];
};

struct vma {
    unsigned long long start, end, pages;
    int claimed;
};

static struct round rounds[MAX_ROUNDS];
static int nrounds;
static struct vma vmas[MAX_VMAS];
static long page_size = 4096;

static void die(const char *what)
{
    fprintf(stderr, "sdcheck: %s\n", what);
    exit(2);
}

static void read_expect(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot open the expectation file");
    char line[512];
    while (fgets(line, sizeof line, f)) {
        struct round *cur = nrounds ? &rounds[nrounds - 1] : NULL;
        if (strncmp(line, "round ", 6) == 0) {
            if (nrounds == MAX_ROUNDS)
                die("too many rounds");
            cur = &rounds[nrounds++];
            if (sscanf(line, "round %d %63s", &cur->k, cur->name) != 2)
                die("bad round line");
        } else if (strncmp(line, "range ", 6) == 0) {
            if (!cur || cur->nranges == MAX_RANGES)
                die("range outside a round, or too many ranges");
            struct range *r = &cur->r[cur->nranges++];
            unsigned long long pages;
            char mode[16];
            if (sscanf(line, "range %llx %llu %llu %15s %31s", &r->start, &pages, &r->want, mode,
                       r->label) != 5)
                die("bad range line");
            r->end = r->start + pages * page_size;
            r->exact = strcmp(mode, "exact") == 0;
        }
    }
    fclose(f);
}

/* The number after "KEY": at p, or -1. */
static long long num_after(const char *p, const char *key)
{
    const char *q = strstr(p, key);
    if (!q)
        return -1;
    return strtoll(q + strlen(key), NULL, 10);
}

static unsigned long long hex_after(const char *p, const char *key)
{
    const char *q = strstr(p, key);
    if (!q)
        return 0;
    return strtoull(q + strlen(key), NULL, 16);
}

/* Splits one round's JSON into top-level fields (written back into `line`
 * with the vmas list cut out) and the list of VMAs. Returns the count. */
static int parse_round(char *line, long long *round, long long *total)
{
    int n = 0;
    char *list = strstr(line, "\"vmas\":[");
    if (!list)
        die("a round without \"vmas\"");
    char *p = list + strlen("\"vmas\":[");
    /* Walk the list object by object, minding strings (VMA names). */
    while (*p && *p != ']') {
        if (*p != '{') {
            p++;
            continue;
        }
        char *obj = p;
        int in_str = 0;
        for (; *p; p++) {
            if (in_str) {
                if (*p == '\\' && p[1])
                    p++;
                else if (*p == '"')
                    in_str = 0;
            } else if (*p == '"') {
                in_str = 1;
            } else if (*p == '}') {
                break;
            }
        }
        if (!*p)
            die("unterminated VMA object");
        char saved = *p;
        *p = 0;
        if (n == MAX_VMAS)
            die("too many VMAs in one round");
        /* Cut the name out first: it may contain anything. */
        char *name = strstr(obj, "\"name\":\"");
        char *after_name = NULL;
        if (name) {
            char *q = name + strlen("\"name\":\"");
            while (*q && *q != '"') {
                if (*q == '\\' && q[1])
                    q++;
                q++;
            }
            after_name = q;
            memset(name, ' ', (size_t)(after_name - name));
        }
        vmas[n].start = hex_after(obj, "\"start\":\"");
        vmas[n].end = hex_after(obj, "\"end\":\"");
        long long pages = num_after(obj, "\"dirty_pages\":");
        if (pages < 0)
            die("a VMA without dirty_pages");
        vmas[n].pages = (unsigned long long)pages;
        vmas[n].claimed = 0;
        n++;
        *p = saved;
        p++;
    }
    /* Top-level fields: the line with the list blanked out. */
    memset(list, ' ', (size_t)(p - list));
    *round = num_after(line, "\"round\":");
    *total = num_after(line, "\"dirty_pages\":");
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: sdcheck ROUNDS.jsonl EXPECT NOISE");
    unsigned long long noise_max = strtoull(argv[3], NULL, 0);
    read_expect(argv[2]);
    FILE *f = fopen(argv[1], "r");
    if (!f)
        die("cannot open the rounds file");
    static char line[1 << 20];
    int failed = 0, seen = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] != '{')
            continue;
        long long k, total;
        int n = parse_round(line, &k, &total);
        struct round *rd = NULL;
        for (int i = 0; i < nrounds; i++)
            if (rounds[i].k == k)
                rd = &rounds[i];
        if (!rd) {
            printf("round %lld: FAIL: not expected\n", k);
            failed = 1;
            continue;
        }
        seen++;
        char why[2048] = "";
        char info[2048] = "";
        size_t wl = 0, il = 0;
        unsigned long long sum = 0;
        for (int v = 0; v < n; v++)
            sum += vmas[v].pages;
        if ((long long)sum != total)
            wl += snprintf(why + wl, sizeof why - wl,
                           " per-VMA pages add up to %llu, dirty_pages says %lld;", sum, total);
        for (int i = 0; i < rd->nranges; i++) {
            struct range *r = &rd->r[i];
            unsigned long long got = 0, outside = 0;
            for (int v = 0; v < n; v++) {
                struct vma *m = &vmas[v];
                if (m->end <= r->start || m->start >= r->end)
                    continue;
                m->claimed = 1;
                got += m->pages;
                unsigned long long lo = m->start > r->start ? m->start : r->start;
                unsigned long long hi = m->end < r->end ? m->end : r->end;
                outside += (m->end - m->start - (hi - lo)) / page_size;
            }
            int ok;
            if (r->exact && outside > 0) {
                ok = 0;
                if (wl < sizeof why)
                    wl += snprintf(why + wl, sizeof why - wl,
                                   " %s: reported in a VMA reaching %llu pages past it (layout);",
                                   r->label, outside);
            } else {
                ok = got >= r->want && got <= r->want + outside;
                if (!ok && wl < sizeof why)
                    wl += snprintf(why + wl, sizeof why - wl, " %s: %llu pages reported, %llu written%s;",
                                   r->label, got, r->want,
                                   outside ? " (VMA merged with a neighbour)" : "");
            }
            /* Name the big ranges in the summary; 1-page ones only count. */
            if (r->end - r->start > (unsigned long long)page_size && il < sizeof info)
                il += snprintf(info + il, sizeof info - il, " %s %llu/%llu%s", r->label, got, r->want,
                               outside ? " (merged VMA: bounded)" : " (exact)");
        }
        int small = 0, small_dirty = 0;
        for (int i = 0; i < rd->nranges; i++)
            if (rd->r[i].end - rd->r[i].start == (unsigned long long)page_size) {
                small++;
                small_dirty += rd->r[i].want > 0;
            }
        if (small && il < sizeof info)
            il += snprintf(info + il, sizeof info - il, "; %d of %d one-page regions written", small_dirty,
                           small);
        unsigned long long noise = 0;
        for (int v = 0; v < n; v++)
            if (!vmas[v].claimed)
                noise += vmas[v].pages;
        if (noise > noise_max && wl < sizeof why)
            wl += snprintf(why + wl, sizeof why - wl, " %llu pages outside the written ranges (max %llu);",
                           noise, noise_max);
        if (wl) {
            failed = 1;
            printf("round %d %s: FAIL:%s\n", rd->k, rd->name, why);
        } else {
            printf("round %d %s: ok:%s; %llu other pages\n", rd->k, rd->name, info, noise);
        }
    }
    fclose(f);
    if (seen != nrounds) {
        printf("FAIL: %d rounds reported, %d expected\n", seen, nrounds);
        failed = 1;
    }
    return failed;
}
