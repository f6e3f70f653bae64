/* fanout: a closed-loop load driver for the chat protocol (tcpkit issue 10).
 *
 * Opens M members (-m, default 100) to a chat server, one after another, and
 * reads each one's `welcome guestN` to learn its name.  It then waits until
 * every member is in the room (member i has seen `* NAME joined` for each
 * later member), so that no message can miss a member that is still joining.
 *
 * Then every member sends lines `SEQ xxx...` (-l bytes of text) in a closed
 * loop: a member sends its next line only once every other member has
 * received its previous one as `NAME: SEQ xxx...`.  The driver can tell,
 * because it reads every member's socket and a delivered line names its
 * sender.  Lines are counted for -d seconds after a warm-up of -w seconds;
 * then sending stops, the lines in flight are awaited (up to -t seconds, default
 * 10), and every member sends QUIT and must get `bye` (up to -t seconds again).
 *
 * Checks: each message reaches every other member exactly once, intact and in
 * order per sender; nothing comes back to its sender; no unexpected line.
 * Output: one JSON line like loadgen's: "rps" is deliveries per second (each
 * message counts once per recipient), "requests" the deliveries counted,
 * "messages_per_s" whole messages (delivered to all) per second, latency from
 * a send to each delivery.  Exit 0 when every check passed, 1 when one failed,
 * 2 for bad usage or when the room could not be set up.
 *
 * Build: gcc -O2 -o fanout fanout.c
 * Only loopback targets are meant: this tool is for benchmarks on one machine.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_NAME 64
#define MAX_IN (1 << 20)       /* a member's unread bytes: a line longer than this is an error */
#define MAX_SAMPLES (1 << 25)  /* latency samples kept (the rest are still counted) */
#define SETUP_SECONDS 20.0     /* to connect and seat every member */

enum phase { SETUP, RUN, DRAIN, QUIT };

struct member {
    int fd, index;
    char name[MAX_NAME];
    size_t name_len;
    char *in;                  /* bytes read, not yet a whole line */
    size_t in_len, in_cap;
    char out[MAX_NAME + 64];   /* one line being written (closed loop: never more) */
    size_t out_len, out_off;
    uint64_t seq;              /* its message in flight (0: none sent yet) */
    char text[64];             /* that message's text, as every other member must get it */
    size_t text_len;
    int pending;               /* other members that have not received it yet */
    uint64_t sent_ns;
    char (*joined)[MAX_NAME]; /* names in the `* NAME joined` lines it got while seating */
    int joins, byes, closed;
};

static const char *host = "127.0.0.1";
static int port = 7815, nmembers = 100, text_len = 32;
static double duration = 5.0, warmup = 0.5;
static double patience = 10.0; /* for the lines in flight when the time is up, then for every `bye` */
static struct member *members;
static uint64_t *last_seen;    /* [recipient * nmembers + sender]: last seq received */
static int epfd;
static enum phase phase = SETUP;
static uint64_t t_count, t_end; /* the counted window */

static uint32_t *lat; static size_t nlat, cap_lat;
static uint64_t deliveries, messages, all_deliveries, all_messages;
static uint64_t missing, duplicates, out_of_order, echoed, corrupt, unexpected, io_errors;
static int reported;

static uint64_t now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void complain(struct member *m, const char *what, const char *line, size_t len) {
    if (reported++ < 5)
        fprintf(stderr, "fanout: member %d (%.*s): %s: %.*s\n", m->index, (int)m->name_len,
                m->name, what, (int)(len > 80 ? 80 : len), line);
}

static void record(uint64_t ns) {
    if (nlat == cap_lat) {
        if (cap_lat == MAX_SAMPLES) return;
        cap_lat = cap_lat ? cap_lat * 2 : 1 << 16;
        lat = realloc(lat, cap_lat * sizeof *lat);
        if (!lat) { perror("realloc"); exit(2); }
    }
    uint64_t us = ns / 1000;
    lat[nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* The text of message `seq`: the number, a space, then filler up to text_len. */
static size_t message_text(char *buf, uint64_t seq) {
    int n = snprintf(buf, 32, "%llu ", (unsigned long long)seq);
    size_t len = (size_t)n < (size_t)text_len ? (size_t)text_len : (size_t)n;
    for (size_t i = n; i < len; i++) buf[i] = 'a' + (seq + i) % 26;
    return len;
}

/* ---- names: open addressing, so a delivered line's sender is found fast ---- */

static int *by_name; static size_t name_slots;

static size_t name_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return (size_t)h & (name_slots - 1);
}

static int find_member(const char *s, size_t n) {
    for (size_t i = name_hash(s, n);; i = (i + 1) & (name_slots - 1)) {
        int k = by_name[i];
        if (k < 0) return -1;
        if (members[k].name_len == n && memcmp(members[k].name, s, n) == 0) return k;
    }
}

static int add_name(struct member *m, const char *s, size_t n) {
    if (n == 0 || n >= MAX_NAME || find_member(s, n) >= 0) return -1;
    memcpy(m->name, s, n); m->name_len = n;
    size_t i = name_hash(s, n);
    while (by_name[i] >= 0) i = (i + 1) & (name_slots - 1);
    by_name[i] = m->index;
    return 0;
}

/* ---- writing ---- */

static void watch(struct member *m, uint32_t events) {
    struct epoll_event e = { .events = events, .data.ptr = m };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, m->fd, &e) < 0) { perror("epoll_ctl"); exit(2); }
}

static void flush_out(struct member *m) {
    while (m->out_off < m->out_len) {
        ssize_t w = write(m->fd, m->out + m->out_off, m->out_len - m->out_off);
        if (w > 0) { m->out_off += w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { watch(m, EPOLLIN | EPOLLOUT); return; }
        io_errors++; complain(m, "write failed", strerror(errno), strlen(strerror(errno)));
        m->out_len = m->out_off = 0;
        return;
    }
    m->out_len = m->out_off = 0;
}

static void send_line(struct member *m, const char *line, size_t len) {
    if (m->out_len) { io_errors++; complain(m, "line still unsent", line, len); return; }
    memcpy(m->out, line, len);
    m->out_len = len; m->out_off = 0;
    flush_out(m);
    if (!m->out_len) watch(m, EPOLLIN);
}

static void send_next(struct member *m, uint64_t now) {
    char line[sizeof m->text + 1];
    m->seq++;
    m->text_len = message_text(m->text, m->seq);
    memcpy(line, m->text, m->text_len);
    line[m->text_len] = '\n';
    m->pending = nmembers - 1;
    m->sent_ns = now;
    send_line(m, line, m->text_len + 1);
}

/* ---- reading: one line at a time ---- */

static void delivered(struct member *r, struct member *s, const char *text, size_t len,
                      uint64_t now) {
    uint64_t seq = s->seq;
    if (len != s->text_len || memcmp(text, s->text, len) != 0) {  /* not the one in flight */
        char want[64];
        seq = strtoull(text, NULL, 10);
        size_t want_len = message_text(want, seq);
        if (want_len != len || memcmp(want, text, len) != 0) {
            corrupt++; complain(r, "corrupt line", text, len); return;
        }
    }
    uint64_t *last = &last_seen[(size_t)r->index * nmembers + s->index];
    if (seq <= *last) { duplicates++; complain(r, "duplicate", text, len); return; }
    if (seq != *last + 1) { out_of_order++; complain(r, "out of order", text, len); }
    *last = seq;
    if (seq != s->seq || s->pending <= 0) return;
    all_deliveries++;
    int counting = now >= t_count && now < t_end;
    if (counting) { deliveries++; record(now - s->sent_ns); }
    if (--s->pending) return;
    all_messages++;
    if (counting) messages++;
    if (phase == RUN) send_next(s, now);
}

static void on_line(struct member *r, const char *line, size_t len, uint64_t now) {
    if (len && line[len - 1] == '\r') len--;
    if (r->name_len == 0) {
        if (len > 8 && memcmp(line, "welcome ", 8) == 0 && add_name(r, line + 8, len - 8) == 0)
            return;
        unexpected++; complain(r, "expected `welcome NAME`", line, len); return;
    }
    if (len >= 2 && line[0] == '*' && line[1] == ' ') {
        if (phase == SETUP && len > 9 && len - 9 < MAX_NAME && r->joins < nmembers &&
            memcmp(line + len - 7, " joined", 7) == 0) {
            memcpy(r->joined[r->joins], line + 2, len - 9);
            r->joined[r->joins++][len - 9] = 0;
            return;
        }
        /* Ours may leave only at the end; another's leaving (the probe a benchmark
         * makes to see that the server is up, say) is no concern of this room's. */
        if (len > 7 && memcmp(line + len - 5, " left", 5) == 0 &&
            (phase == QUIT || find_member(line + 2, len - 7) < 0))
            return;
        unexpected++; complain(r, "unexpected notice", line, len); return;
    }
    if (phase == QUIT && len == 3 && memcmp(line, "bye", 3) == 0) { r->byes++; return; }
    const char *sep = memmem(line, len, ": ", 2);
    int s = sep ? find_member(line, sep - line) : -1;
    if (s < 0) { unexpected++; complain(r, "unexpected line", line, len); return; }
    if (s == r->index) { echoed++; complain(r, "own line echoed", line, len); return; }
    delivered(r, &members[s], sep + 2, len - (sep + 2 - line), now);
}

static void on_readable(struct member *m) {
    if (m->in_cap - m->in_len < 4096) {
        if (m->in_cap >= MAX_IN) {
            io_errors++; complain(m, "line too long", m->in, 80);
            m->in_len = 0;
        } else {
            m->in_cap = m->in_cap ? m->in_cap * 2 : 16384;
            m->in = realloc(m->in, m->in_cap);
            if (!m->in) { perror("realloc"); exit(2); }
        }
    }
    ssize_t n = read(m->fd, m->in + m->in_len, m->in_cap - m->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        if (phase != QUIT || !m->byes) {
            io_errors++;
            complain(m, "connection closed by the server", n ? strerror(errno) : "EOF", n ? 20 : 3);
        }
        epoll_ctl(epfd, EPOLL_CTL_DEL, m->fd, NULL);
        m->closed = 1;
        return;
    }
    uint64_t now = now_ns();
    m->in_len += n;
    size_t start = 0;
    for (;;) {
        char *nl = memchr(m->in + start, '\n', m->in_len - start);
        if (!nl) break;
        on_line(m, m->in + start, nl - (m->in + start), now);
        start = nl - m->in + 1;
    }
    memmove(m->in, m->in + start, m->in_len - start);
    m->in_len -= start;
}

/* One epoll round: read what arrived, write what was waiting. */
static void pump(int timeout_ms) {
    struct epoll_event ev[256];
    int n = epoll_wait(epfd, ev, 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        struct member *m = ev[i].data.ptr;
        if (m->closed) continue;
        if (ev[i].events & EPOLLOUT) { flush_out(m); if (!m->out_len) watch(m, EPOLLIN); }
        if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(m);
    }
}

/* ---- the phases ---- */

static void join(struct member *m, const struct addrinfo *ai) {
    m->fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (m->fd < 0 || connect(m->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        fprintf(stderr, "fanout: cannot connect member %d to %s:%d: %s\n", m->index, host, port,
                strerror(errno));
        exit(2);
    }
    int one = 1;
    setsockopt(m->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(m->fd, F_SETFL, fcntl(m->fd, F_GETFL) | O_NONBLOCK) < 0) { perror("fcntl"); exit(2); }
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = m };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, m->fd, &e) < 0) { perror("epoll_ctl"); exit(2); }
}

/* Whether each member has seen every later member join.  Names, not a count:
 * a stranger's join (a benchmark's probe that the server is up, say) must not
 * stand in for a member's.  Only once every name is known: member i may read
 * `* NAME joined` before the driver reads NAME's welcome. */
static int seated(void) {
    for (int i = 0; i < nmembers; i++) {
        struct member *m = &members[i];
        int later = 0;
        for (int k = 0; k < m->joins; k++)
            later += find_member(m->joined[k], strlen(m->joined[k])) > i;
        if (later < nmembers - 1 - i) return 0;
    }
    return 1;
}

/* Connect every member in turn, learn its name, wait until all are in the room. */
static void set_up(const struct addrinfo *ai) {
    uint64_t deadline = now_ns() + (uint64_t)(SETUP_SECONDS * 1e9);
    for (int i = 0; i < nmembers; i++) {
        join(&members[i], ai);
        while (!members[i].name_len && !members[i].closed && now_ns() < deadline) pump(10);
        if (!members[i].name_len) {
            fprintf(stderr, "fanout: member %d got no `welcome NAME`\n", i);
            exit(2);
        }
    }
    while (!seated() && now_ns() < deadline) pump(10);
    if (!seated()) {
        fprintf(stderr, "fanout: the room was not complete within %.0f s "
                "(a member missed a `* NAME joined`)\n", SETUP_SECONDS);
        exit(2);
    }
}

static int in_flight(void) {
    for (int i = 0; i < nmembers; i++)
        if (members[i].pending > 0 && !members[i].closed) return 1;
    return 0;
}

static int all_quit(void) {
    for (int i = 0; i < nmembers; i++)
        if (!members[i].closed && !members[i].byes) return 0;
    return 1;
}

/* Chat until the time is up, let the last lines arrive, then QUIT everyone. */
static void chat(void) {
    uint64_t start = now_ns();
    t_count = start + (uint64_t)(warmup * 1e9);
    t_end = t_count + (uint64_t)(duration * 1e9);
    phase = RUN;
    for (int i = 0; i < nmembers; i++) send_next(&members[i], now_ns());
    while (now_ns() < t_end) pump(10);
    phase = DRAIN;
    uint64_t deadline = now_ns() + (uint64_t)(patience * 1e9);
    while (in_flight() && now_ns() < deadline) pump(10);
    for (int i = 0; i < nmembers; i++)
        if (members[i].pending > 0) {
            missing += members[i].pending;
            complain(&members[i], "message never reached everyone", "", 0);
        }
    phase = QUIT;
    for (int i = 0; i < nmembers; i++)
        if (!members[i].closed) send_line(&members[i], "QUIT\n", 5);
    deadline = now_ns() + (uint64_t)(patience * 1e9);
    while (!all_quit() && now_ns() < deadline) pump(10);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr, "usage: fanout --host H --port P [-m MEMBERS] [-l TEXT_LEN] [-d SEC] "
            "[-w WARMUP_SEC] [-t PATIENCE_SEC]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"members", 1, 0, 'm'},
        {"length", 1, 0, 'l'}, {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},
        {"patience", 1, 0, 't'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "H:p:m:l:d:w:t:", opts, NULL)) != -1) {
        switch (c) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'm': nmembers = atoi(optarg); break;
        case 'l': text_len = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 't': patience = atof(optarg); break;
        default: usage();
        }
    }
    if (optind < argc || nmembers < 2 || port <= 0 || text_len < 1 || text_len > 48 ||
        duration <= 0 || warmup < 0 || patience <= 0)
        usage();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    char ps[16]; snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai)) { fprintf(stderr, "fanout: cannot resolve %s\n", host); return 2; }
    members = calloc(nmembers, sizeof *members);
    last_seen = calloc((size_t)nmembers * nmembers, sizeof *last_seen);
    for (name_slots = 16; name_slots < (size_t)nmembers * 2; name_slots *= 2) {}
    by_name = malloc(name_slots * sizeof *by_name);
    if (!members || !last_seen || !by_name) { perror("calloc"); return 2; }
    memset(by_name, -1, name_slots * sizeof *by_name);
    for (int i = 0; i < nmembers; i++) {
        members[i].index = i;
        members[i].joined = calloc(nmembers, MAX_NAME);
        if (!members[i].joined) { perror("calloc"); return 2; }
    }
    if ((epfd = epoll_create1(0)) < 0) { perror("epoll_create1"); return 2; }

    set_up(ai);
    chat();

    uint64_t quit_missing = 0;
    for (int i = 0; i < nmembers; i++) if (!members[i].byes) quit_missing++;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] : 0,
           mx = nlat ? lat[nlat - 1] : 0;
    uint64_t errors = missing + duplicates + out_of_order + echoed + corrupt + unexpected +
                      io_errors + quit_missing;
    printf("{\"mode\":\"fanout\",\"members\":%d,\"line_length\":%d,\"seconds\":%.3f,"
           "\"warmup_s\":%.3f,\"requests\":%llu,\"rps\":%.1f,\"deliveries\":%llu,"
           "\"deliveries_per_s\":%.1f,\"messages\":%llu,\"messages_per_s\":%.1f,"
           "\"deliveries_total\":%llu,\"messages_total\":%llu,"
           "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"errors\":%llu,\"connect_errors\":0,"
           "\"missing\":%llu,\"duplicates\":%llu,\"out_of_order\":%llu,\"echoed\":%llu,"
           "\"corrupt\":%llu,\"unexpected\":%llu,\"io_errors\":%llu,\"quit_missing\":%llu}\n",
           nmembers, text_len, duration, warmup, (unsigned long long)deliveries,
           deliveries / duration, (unsigned long long)deliveries, deliveries / duration,
           (unsigned long long)messages, messages / duration, (unsigned long long)all_deliveries,
           (unsigned long long)all_messages, p50, p99, mx, (unsigned long long)errors,
           (unsigned long long)missing, (unsigned long long)duplicates,
           (unsigned long long)out_of_order, (unsigned long long)echoed,
           (unsigned long long)corrupt, (unsigned long long)unexpected,
           (unsigned long long)io_errors, (unsigned long long)quit_missing);
    return errors ? 1 : 0;
}
