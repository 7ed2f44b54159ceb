/*
 * The load generator of `make bench` for the binary scenarios: one C process,
 * epoll, raw sockets, written for the job.
 *
 * Why not Node `ws` (loadgen.js) everywhere: pinned to one core, the ws client
 * was over 90 % busy against most servers in the broadcasts, so those cells
 * were lower bounds (issue 10). This client does only what the scenarios
 * need: the opening handshake (a fixed key; the answer must be "101"), masked
 * binary frames built from a template masked once (only the 12-byte stamp is
 * masked per message), and a streaming frame parser that reads a stamp (send
 * time in ns, sequence number) from the first 12 bytes of each message and
 * skips the rest. It answers pings and close frames.
 *
 * Usage: loadgen key=value ... (bench/loadgen.py passes the same config as to
 * loadgen.js: scenario=echo|broadcast|idle, host, port, connections, inflight,
 * size, receivers, window, slow, warmup, duration, concurrency, timeout, warm).
 * It speaks loadgen.js's protocol: JSON lines on stdout ("start" and "end"
 * frame the measurement window, the last line is "result"); the idle scenario
 * waits for "go" and "done" lines on stdin. Bounded: alarm() ends it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- configuration ---------------------------------------------------- */

static const char *scenario = "echo";
static char host[64] = "127.0.0.1";
static int port, connections = 1, inflight = 1, size = 32, receivers = 100, window_max = 16;
static int slow_count, concurrency = 100, warm = 20;
static double warmup = 1.0, duration = 2.0, timeout_s = 60;

static void parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq) continue;
    *eq = 0;
    const char *k = argv[i], *v = eq + 1;
    if (!strcmp(k, "scenario")) scenario = v;
    else if (!strcmp(k, "host")) snprintf(host, sizeof host, "%s", v);
    else if (!strcmp(k, "port")) port = atoi(v);
    else if (!strcmp(k, "connections")) connections = atoi(v);
    else if (!strcmp(k, "inflight")) inflight = atoi(v);
    else if (!strcmp(k, "size")) size = atoi(v);
    else if (!strcmp(k, "receivers")) receivers = atoi(v);
    else if (!strcmp(k, "window")) window_max = atoi(v);
    else if (!strcmp(k, "slow")) slow_count = atoi(v);
    else if (!strcmp(k, "concurrency")) concurrency = atoi(v);
    else if (!strcmp(k, "warm")) warm = atoi(v);
    else if (!strcmp(k, "warmup")) warmup = atof(v);
    else if (!strcmp(k, "duration")) duration = atof(v);
    else if (!strcmp(k, "timeout")) timeout_s = atof(v);
  }
  if (size < 16) size = 16;
}

/* ---- output ----------------------------------------------------------- */

static void emit(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static void fail(const char *message) {
  printf("{\"event\": \"error\", \"message\": \"");
  for (const char *p = message; *p; p++) {
    if (*p == '"' || *p == '\\') putchar('\\');
    putchar((unsigned char)*p < 32 ? ' ' : *p);
  }
  printf("\"}\n");
  fflush(stdout);
  _exit(1);
}

static void on_alarm(int sig) {
  (void)sig;
  static const char line[] = "{\"event\": \"error\", \"message\": \"timed out\"}\n";
  ssize_t ignored = write(1, line, sizeof line - 1);
  (void)ignored;
  _exit(1);
}

/* ---- clocks and samples ----------------------------------------------- */

static int64_t read_at; /* when the bytes being parsed were read */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Latency samples in ms: every one up to CAP, then a uniform reservoir. */
#define CAP 2000000
static double *samples;
static uint64_t seen;
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t xorshift(void) { /* random() cost 4 % of this process at 1.7M samples/s */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void sample(double ms) {
  if (seen < CAP) samples[seen] = ms;
  else {
    uint64_t slot = xorshift() % (seen + 1);
    if (slot < CAP) samples[slot] = ms;
  }
  seen++;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void summary(char *out, size_t room) {
  uint64_t n = seen < CAP ? seen : CAP;
  if (!n) {
    snprintf(out, room, "\"p50_ms\": null, \"p99_ms\": null, \"max_ms\": null");
    return;
  }
  qsort(samples, n, sizeof(double), by_value);
  uint64_t i50 = (uint64_t)(0.5 * n), i99 = (uint64_t)(0.99 * n);
  if (i50 >= n) i50 = n - 1;
  if (i99 >= n) i99 = n - 1;
  snprintf(out, room, "\"p50_ms\": %.4f, \"p99_ms\": %.4f, \"max_ms\": %.4f", samples[i50],
           samples[i99], samples[n - 1]);
}

/* ---- connections ------------------------------------------------------ */

enum { CONNECTING, HANDSHAKE, OPEN, CLOSING, CLOSED };
enum { ROLE_ECHO, ROLE_RECEIVER, ROLE_SENDER, ROLE_SLOW };

typedef struct conn {
  int fd, state, role, index;
  char head[1024];
  int head_len;
  /* the frame being read */
  unsigned char hdr[14];
  int hdr_len, hdr_need, in_payload, frame_op, fin;
  uint64_t left, msg_len;
  unsigned char stamp[12];
  int stamp_len;
  unsigned char ctrl[125];
  int ctrl_len;
  /* bytes not yet written */
  unsigned char *out;
  size_t out_len, out_off, out_cap;
  int polling_out;
  int heard, close_code;
  uint64_t received;
} conn;

static int ep;
static conn **all;
static int count_all, cap_all;
static int opened, failed_opens, pending;
static char first_error[200];
static int measuring, sending;

static const unsigned char MASK[4] = {0x37, 0xfa, 0x21, 0x3d};
static unsigned char *template_masked; /* the payload, masked, from offset 0 */
static unsigned char *template_plain;
static const char KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";

static void set_events(conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static uint32_t wanted(conn *c) {
  if (c->state == CONNECTING) return EPOLLOUT;
  uint32_t ev = c->role == ROLE_SLOW && c->state == OPEN ? 0 : EPOLLIN;
  if (c->out_len > c->out_off) ev |= EPOLLOUT;
  return ev;
}

static void mark_closed(conn *c) {
  if (c->state == CLOSED) return;
  if (c->state == CONNECTING || c->state == HANDSHAKE) {
    failed_opens++;
    pending--;
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "closed during the handshake");
  }
  c->state = CLOSED;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

static void queue_out(conn *c, const unsigned char *data, size_t len) {
  if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  if (c->out_len + len > c->out_cap) {
    if (c->out_off) {
      memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
      c->out_len -= c->out_off;
      c->out_off = 0;
    }
    if (c->out_len + len > c->out_cap) {
      c->out_cap = (c->out_len + len) * 2;
      c->out = realloc(c->out, c->out_cap);
    }
  }
  memcpy(c->out + c->out_len, data, len);
  c->out_len += len;
}

static void flush_out(conn *c) {
  while (c->out_len > c->out_off) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      mark_closed(c);
      return;
    }
    c->out_off += n;
  }
  uint32_t ev = wanted(c);
  int want_out = (ev & EPOLLOUT) != 0;
  if (want_out != c->polling_out) {
    c->polling_out = want_out;
    set_events(c, ev);
  }
}

/* The connection whose bytes are being handled: its small messages (the
   echoes' next ones) are queued and leave in one send when the read is done,
   not one send each. At 100 connections x 10 in flight, a send per message
   kept this generator's core at 99 % against fws and Bun, so that row said
   which client was slower, not which server (issue 10). Large messages are
   not copied: they go out at once, as before. */
static conn *corked;
#define CORK_MAX 4096

/* Write iov's bytes now if nothing is queued, queue whatever is left. */
static void send_iov(conn *c, struct iovec *iov, int n) {
  if (c->state == CLOSED) return;
  size_t total = 0;
  for (int i = 0; i < n; i++) total += iov[i].iov_len;
  if (c == corked && total <= CORK_MAX) {
    for (int i = 0; i < n; i++) queue_out(c, iov[i].iov_base, iov[i].iov_len);
    return;
  }
  size_t done = 0;
  if (c->out_len == c->out_off) {
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n};
    ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EINTR) {
      mark_closed(c);
      return;
    }
    if (w > 0) done = (size_t)w;
  }
  if (done == total) return;
  for (int i = 0; i < n; i++) {
    if (done >= iov[i].iov_len) {
      done -= iov[i].iov_len;
      continue;
    }
    queue_out(c, (unsigned char *)iov[i].iov_base + done, iov[i].iov_len - done);
    done = 0;
  }
  flush_out(c);
}

/* One masked frame: the template payload with a fresh stamp (time, seq). */
static void send_message(conn *c, uint32_t seq) {
  unsigned char head[14 + 12];
  int h = 0;
  head[h++] = 0x82;
  if (size < 126) head[h++] = 0x80 | size;
  else if (size < 65536) {
    head[h++] = 0x80 | 126;
    head[h++] = size >> 8;
    head[h++] = size & 0xff;
  } else {
    head[h++] = 0x80 | 127;
    for (int i = 7; i >= 0; i--) head[h++] = (unsigned char)((uint64_t)size >> (8 * i));
  }
  memcpy(head + h, MASK, 4);
  h += 4;
  int64_t t = now_ns();
  unsigned char stamp[12];
  memcpy(stamp, &t, 8);
  memcpy(stamp + 8, &seq, 4);
  for (int i = 0; i < 12; i++) head[h + i] = stamp[i] ^ MASK[i & 3];
  h += 12;
  struct iovec iov[2] = {{head, (size_t)h}, {template_masked + 12, (size_t)size - 12}};
  send_iov(c, iov, 2);
}

static void send_control(conn *c, int opcode, const unsigned char *payload, int len) {
  unsigned char frame[6 + 125];
  frame[0] = 0x80 | opcode;
  frame[1] = 0x80 | len;
  memcpy(frame + 2, MASK, 4);
  for (int i = 0; i < len; i++) frame[6 + i] = payload[i] ^ MASK[i & 3];
  struct iovec iov = {frame, (size_t)(6 + len)};
  send_iov(c, &iov, 1);
}

static void send_close(conn *c, int code) {
  unsigned char payload[2] = {(unsigned char)(code >> 8), (unsigned char)(code & 0xff)};
  if (c->state == OPEN) send_control(c, 0x8, payload, 2);
}

static void on_message(conn *c, const unsigned char *stamp, int stamp_len, uint64_t len);

static void frame_done(conn *c) {
  int op = c->frame_op;
  if (op == 0x9) send_control(c, 0xA, c->ctrl, c->ctrl_len);
  else if (op == 0x8) {
    c->close_code = c->ctrl_len >= 2 ? (c->ctrl[0] << 8 | c->ctrl[1]) : 1005;
    send_close(c, c->close_code == 1005 ? 1000 : c->close_code);
    if (c->state == OPEN) c->state = CLOSING; /* the server closes the TCP connection */
  } else if (op < 0x8 && c->fin) {
    on_message(c, c->stamp, c->stamp_len, c->msg_len);
  }
  c->hdr_len = 0;
  c->hdr_need = 2;
  c->in_payload = 0;
}

/* The server's bytes after the handshake: frames, possibly split anywhere. */
static void parse(conn *c, const unsigned char *p, size_t n) {
  size_t i = 0;
  while (i < n && c->state != CLOSED) {
    /* The common case first: a whole small data frame in the buffer. */
    if (!c->in_payload && c->hdr_len == 0 && n - i >= 14 && (p[i] & 0x0f) < 0x8 &&
        (p[i] & 0x0f) != 0 && (p[i] & 0x80) && p[i + 1] < 126 && n - i >= 2u + p[i + 1]) {
      on_message(c, p + i + 2, p[i + 1] >= 12 ? 12 : p[i + 1], p[i + 1]);
      i += 2u + p[i + 1];
      continue;
    }
    if (!c->in_payload) {
      while (i < n && c->hdr_len < c->hdr_need) {
        c->hdr[c->hdr_len++] = p[i++];
        if (c->hdr_len == 2) {
          int l7 = c->hdr[1] & 0x7f;
          c->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (c->hdr[1] & 0x80 ? 4 : 0);
        }
      }
      if (c->hdr_len < c->hdr_need) return;
      int l7 = c->hdr[1] & 0x7f;
      uint64_t len = l7;
      if (l7 == 126) len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
      else if (l7 == 127) {
        len = 0;
        for (int k = 0; k < 8; k++) len = len << 8 | c->hdr[2 + k];
      }
      c->frame_op = c->hdr[0] & 0x0f;
      if (c->frame_op < 0x8) {
        c->fin = (c->hdr[0] & 0x80) != 0;
        if (c->frame_op != 0) { /* a new message; 0 continues one */
          c->stamp_len = 0;
          c->msg_len = 0;
        }
        c->msg_len += len;
      } else {
        if (len > sizeof c->ctrl) fail("control frame over 125 bytes");
        c->ctrl_len = 0;
      }
      c->left = len;
      c->in_payload = 1;
      if (len == 0) {
        frame_done(c);
        continue;
      }
    }
    size_t take = n - i < c->left ? n - i : (size_t)c->left;
    if (c->frame_op >= 0x8) {
      memcpy(c->ctrl + c->ctrl_len, p + i, take);
      c->ctrl_len += (int)take;
    } else if (c->stamp_len < 12) {
      size_t want = (size_t)(12 - c->stamp_len) < take ? (size_t)(12 - c->stamp_len) : take;
      memcpy(c->stamp + c->stamp_len, p + i, want);
      c->stamp_len += (int)want;
    }
    i += take;
    c->left -= take;
    if (!c->left) frame_done(c);
  }
}

static void on_open(conn *c);

static void handshake_bytes(conn *c, const unsigned char *p, size_t n) {
  size_t room = sizeof c->head - 1 - c->head_len;
  size_t take = n < room ? n : room;
  memcpy(c->head + c->head_len, p, take);
  c->head_len += (int)take;
  c->head[c->head_len] = 0;
  char *end = strstr(c->head, "\r\n\r\n");
  if (!end) {
    if (!room) fail("handshake answer too long");
    return;
  }
  if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) {
    if (!first_error[0]) {
      char *eol = strstr(c->head, "\r\n");
      snprintf(first_error, sizeof first_error, "%.*s", (int)(eol - c->head), c->head);
    }
    mark_closed(c);
    return;
  }
  size_t used = (size_t)(end + 4 - c->head) - (c->head_len - take);
  c->state = OPEN;
  c->hdr_need = 2;
  opened++;
  pending--;
  set_events(c, wanted(c));
  on_open(c);
  if (used < n && c->state == OPEN) parse(c, p + used, n - used);
}

static unsigned char readbuf[256 * 1024];

static void read_rounds(conn *c);

static void on_readable(conn *c) {
  corked = c;
  read_rounds(c);
  corked = NULL;
  if (c->state != CLOSED && c->out_len > c->out_off) flush_out(c);
}

static void read_rounds(conn *c) {
  for (int rounds = 0; rounds < 4; rounds++) {
    ssize_t n = recv(c->fd, readbuf, sizeof readbuf, 0);
    if (n == 0) {
      mark_closed(c);
      return;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      if (c->state == HANDSHAKE && !first_error[0])
        snprintf(first_error, sizeof first_error, "%s", strerror(errno));
      mark_closed(c);
      return;
    }
    read_at = now_ns();
    if (c->state == HANDSHAKE) handshake_bytes(c, readbuf, (size_t)n);
    else parse(c, readbuf, (size_t)n);
    if (c->state == CLOSED || (size_t)n < sizeof readbuf) return;
  }
}

static void write_request(conn *c) {
  char request[512];
  int len = snprintf(request, sizeof request,
                     "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: %s\r\n\r\n",
                     host, port, KEY);
  c->state = HANDSHAKE;
  struct iovec iov = {request, (size_t)len};
  send_iov(c, &iov, 1);
  if (c->state != CLOSED) {
    c->polling_out = (wanted(c) & EPOLLOUT) != 0;
    set_events(c, wanted(c));
  }
}

static conn *start_connect(int role) {
  conn *c = calloc(1, sizeof *c);
  c->role = role;
  c->index = count_all;
  if (count_all == cap_all) {
    cap_all = cap_all ? cap_all * 2 : 1024;
    all = realloc(all, cap_all * sizeof *all);
  }
  all[count_all++] = c;
  pending++;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (c->fd < 0) fail(strerror(errno));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, host, &addr.sin_addr);
  c->state = CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
  if (r == 0) write_request(c);
  else if (errno != EINPROGRESS) {
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", strerror(errno));
    mark_closed(c);
  }
  return c;
}

static void on_event(conn *c, uint32_t events) {
  if (c->state == CLOSED) return;
  if (c->state == CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", strerror(err));
      mark_closed(c);
      return;
    }
    write_request(c);
    return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
  if (c->state != CLOSED && (events & EPOLLOUT)) flush_out(c);
}

/* ---- the loop --------------------------------------------------------- */

static void (*on_tick)(void);

static void poll_once(int timeout_ms) {
  struct epoll_event events[512];
  int n = epoll_wait(ep, events, 512, timeout_ms);
  for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
  if (on_tick) on_tick();
}

static void run_for(double seconds) {
  int64_t end = now_ns() + (int64_t)(seconds * 1e9);
  for (int64_t left; (left = end - now_ns()) > 0;) poll_once((int)(left / 1000000) + 1);
}

/* Open `count` connections, at most `at_once` handshakes at a time. */
static double open_many(int count, int at_once, int role, int first) {
  int64_t begin = now_ns();
  int started = 0, before = opened + failed_opens;
  while (opened + failed_opens - before < count) {
    while (started < count && pending < at_once) {
      start_connect(role);
      started++;
    }
    poll_once(100);
  }
  (void)first;
  return (now_ns() - begin) / 1e9;
}

static int still_open(int from, int to) {
  int n = 0;
  for (int i = from; i < to; i++) n += all[i]->state == OPEN;
  return n;
}

/* Close every open connection cleanly, then cut the rest after `seconds`. */
static void close_all(double seconds) {
  for (int i = 0; i < count_all; i++) {
    conn *c = all[i];
    if (c->state == OPEN) {
      if (c->role == ROLE_SLOW) {
        mark_closed(c);
        continue;
      }
      send_close(c, 1000);
      c->state = CLOSING;
    }
  }
  int64_t end = now_ns() + (int64_t)(seconds * 1e9);
  while (now_ns() < end) {
    int open = 0;
    for (int i = 0; i < count_all && !open; i++) open = all[i]->state != CLOSED;
    if (!open) break;
    poll_once(50);
  }
  for (int i = 0; i < count_all; i++)
    if (all[i]->state != CLOSED) mark_closed(all[i]);
}

/* ---- echo ------------------------------------------------------------- */

static uint64_t messages, message_bytes;
static uint64_t *per_connection;

static void on_open(conn *c) { (void)c; }

static double window_cpu;

static void measure_window(void) {
  run_for(warmup);
  emit("{\"event\": \"start\"}");
  double cpu = cpu_seconds();
  int64_t begin = now_ns();
  measuring = 1;
  run_for(duration);
  measuring = 0;
  double seconds = (now_ns() - begin) / 1e9;
  window_cpu = (cpu_seconds() - cpu) / seconds * 100;
  emit("{\"event\": \"end\"}");
  duration = seconds;
}

static void echo(void) {
  per_connection = calloc(connections, sizeof *per_connection);
  open_many(connections, 100, ROLE_ECHO, 0);
  if (failed_opens) {
    char message[300];
    snprintf(message, sizeof message, "%d of %d connections failed: %s", failed_opens,
             connections, first_error);
    fail(message);
  }
  sending = 1;
  for (int i = 0; i < count_all; i++)
    for (int k = 0; k < inflight; k++) send_message(all[i], 0);
  measure_window();
  sending = 0;
  int closed_early = count_all - still_open(0, count_all);
  close_all(3);
  uint64_t least = UINT64_MAX;
  for (int i = 0; i < connections; i++)
    if (per_connection[i] < least) least = per_connection[i];
  double mean = (double)messages / connections;
  char lat[200];
  summary(lat, sizeof lat);
  emit("{\"event\": \"result\", \"messages\": %llu, \"seconds\": %.4f, \"messages_per_s\": %.1f, "
       "\"mb_per_s\": %.3f, %s, \"fairness\": %.4f, \"wire_bytes_per_message\": null, "
       "\"deflate_negotiated\": 0, \"client_cpu\": %.1f, \"errors\": 0, \"closed_early\": %d}",
       (unsigned long long)messages, duration, messages / duration,
       message_bytes / duration / 1e6, lat, mean ? least / mean : 0.0, window_cpu, closed_early);
}

/* ---- broadcast -------------------------------------------------------- */

#define RING 1024
static uint32_t ring_seq[RING];
static int ring_left[RING];
static int outstanding;
static uint32_t seq;
static uint64_t deliveries;
static int64_t last_progress;
static int stalled, heard;
static conn *sender;

static void pump(void) {
  while (sending && outstanding < window_max) {
    seq++;
    ring_seq[seq % RING] = seq;
    ring_left[seq % RING] = receivers;
    outstanding++;
    send_message(sender, seq);
  }
}

static void on_message(conn *c, const unsigned char *stamp, int stamp_len, uint64_t len) {
  if (stamp_len < 12) return;
  int64_t sent;
  uint32_t id;
  memcpy(&sent, stamp, 8);
  memcpy(&id, stamp + 8, 4);
  if (c->role == ROLE_ECHO) {
    if (measuring) {
      sample((read_at - sent) / 1e6);
      per_connection[c->index]++;
      messages++;
      message_bytes += len;
    }
    if (sending) send_message(c, 0);
    return;
  }
  if (c->role != ROLE_RECEIVER) return;
  if (!c->heard) {
    c->heard = 1;
    heard++;
  }
  if (measuring) {
    sample((read_at - sent) / 1e6);
    deliveries++;
  }
  int slot = id % RING;
  if (ring_seq[slot] != id || ring_left[slot] <= 0) return;
  if (--ring_left[slot] == 0) {
    outstanding--;
    last_progress = now_ns();
    pump();
  }
}

/* A server that loses a message would stall the window: give up on it, go on. */
static void watchdog(void) {
  if (sending && now_ns() - last_progress > 5000000000LL) {
    stalled = 1;
    for (int i = 0; i < RING; i++) ring_left[i] = 0;
    outstanding = 0;
    last_progress = now_ns();
    pump();
  }
}

/* Whether the server closed a receiver we never read: its close code, or 0. */
static int slow_fate(conn *c) {
  if (c->state == CLOSED) return c->close_code ? c->close_code : 1006;
  /* Read what is queued (the server's frames, then perhaps its close frame). */
  for (;;) {
    ssize_t n = recv(c->fd, readbuf, sizeof readbuf, 0);
    if (n > 0) {
      read_at = now_ns();
      parse(c, readbuf, (size_t)n);
      continue;
    }
    if (n == 0) return c->close_code ? c->close_code : 1006;
    if (errno == EAGAIN) return c->close_code;
    return c->close_code ? c->close_code : 1006;
  }
}

static void broadcast(void) {
  open_many(receivers, 100, ROLE_RECEIVER, 0);
  if (failed_opens) {
    char message[300];
    snprintf(message, sizeof message, "%d of %d receivers failed: %s", failed_opens, receivers,
             first_error);
    fail(message);
  }
  int slow_from = count_all;
  for (int i = 0; i < slow_count; i++) open_many(1, 1, ROLE_SLOW, 0);
  int sender_at = count_all;
  open_many(1, 1, ROLE_SENDER, 0);
  if (failed_opens) fail("the sender or a slow receiver failed to connect");
  sender = all[sender_at];
  on_tick = watchdog;
  /* Servers that fan out through Redis subscribe shortly after the first
     client: probe until every receiver has heard the sender (at most 10 s). */
  int64_t probe_until = now_ns() + 10000000000LL;
  while (heard < receivers && now_ns() < probe_until) {
    seq++;
    send_message(sender, seq);
    run_for(0.1);
  }
  if (heard < receivers) {
    char message[100];
    snprintf(message, sizeof message, "%d receivers never heard the sender", receivers - heard);
    fail(message);
  }
  sending = 1;
  last_progress = now_ns();
  pump();
  measure_window();
  sending = 0;
  char codes[200] = "";
  int slow_open = 0;
  for (int i = slow_from; i < sender_at; i++) {
    int code = slow_fate(all[i]);
    if (code) {
      size_t at = strlen(codes);
      snprintf(codes + at, sizeof codes - at, "%s%d", at ? ", " : "", code);
    } else slow_open++;
  }
  close_all(3);
  char lat[200];
  summary(lat, sizeof lat);
  emit("{\"event\": \"result\", \"deliveries\": %llu, \"seconds\": %.4f, \"deliveries_per_s\": "
       "%.1f, %s, \"wire_bytes_per_delivery\": null, \"deflate_negotiated\": 0, "
       "\"client_cpu\": %.1f, \"errors\": 0, \"stalled\": %s, \"slow_open_at_end\": %d, "
       "\"slow_close_codes\": [%s]}",
       (unsigned long long)deliveries, duration, deliveries / duration, lat, window_cpu,
       stalled ? "true" : "false", slow_open, codes);
}

/* ---- idle ------------------------------------------------------------- */

static void wait_for(const char *word) {
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!strcmp(line, word)) return;
  }
  fail("stdin closed");
}

static void idle(void) {
  /* A few connections first, each with one round trip, so that whatever a
     server allocates once is in the baseline, not per connection. */
  per_connection = calloc(warm + 1, sizeof *per_connection);
  open_many(warm, warm, ROLE_ECHO, 0);
  for (int i = 0; i < count_all; i++) send_message(all[i], 0);
  int64_t until = now_ns() + 10000000000LL;
  while (messages < (uint64_t)opened && now_ns() < until) {
    measuring = 1;
    poll_once(100);
  }
  measuring = 0;
  close_all(3);
  int warmed = count_all;
  opened = failed_opens = 0;
  emit("{\"event\": \"baseline\"}");
  wait_for("go");
  double seconds = open_many(connections, concurrency, ROLE_RECEIVER, 0);
  emit("{\"event\": \"opened\", \"seconds\": %.4f, \"open\": %d, \"failed\": %d}", seconds,
       opened, failed_opens);
  wait_for("done");
  poll_once(0);
  int open = still_open(warmed, count_all);
  close_all(5);
  char err[260] = "null";
  if (first_error[0]) snprintf(err, sizeof err, "\"%s\"", first_error);
  emit("{\"event\": \"result\", \"open_seconds\": %.4f, \"opened\": %d, \"failed\": %d, "
       "\"first_error\": %s, \"still_open\": %d, \"deflate_negotiated\": 0}",
       seconds, opened, failed_opens, err, open);
}

int main(int argc, char **argv) {
  parse_args(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, on_alarm);
  alarm((unsigned)(warmup + duration + timeout_s) + 1);
  samples = malloc(CAP * sizeof(double));
  template_plain = malloc(size);
  template_masked = malloc(size);
  memset(template_plain, 0x61, size);
  for (int i = 0; i < size; i++) template_masked[i] = template_plain[i] ^ MASK[i & 3];
  ep = epoll_create1(0);
  if (!strcmp(scenario, "echo")) echo();
  else if (!strcmp(scenario, "broadcast")) broadcast();
  else if (!strcmp(scenario, "idle")) idle();
  else fail("unknown scenario");
  return 0;
}
