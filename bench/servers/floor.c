/*
 * The floor of the broadcast scenarios: what the kernel allows on loopback.
 *
 * Not a WebSocket server: the least program the load generator can drive.
 * It answers any request head with a canned "101" (the generator does not
 * check Sec-WebSocket-Accept), then takes the sender's bytes as 70-byte
 * client frames (2 + 4 mask + 64, what bench/loadgen.c sends in the 64-byte
 * broadcasts; no other parsing), copies the 64 unmasked bytes (stamp and
 * sequence number) into one prebuilt 66-byte server frame and writes it with
 * one blocking send() per other connection, in a plain loop. A close frame
 * from the generator (first byte 0x88) closes that connection.
 *
 * With "batch", the frames of every message that one read of the sender
 * brought (up to the generator's window of 16) go to each connection in one
 * send(): the floor of a server that batches what it has queued, as fws and
 * uWebSockets (cork) do, with fewer packets for both sides.
 *
 * Usage: floor PORT broadcast [batch] (bench/targets.py compiles it with gcc -O2).
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
#define CLIENT_FRAME 70

static const char ANSWER[] =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

static int open_fd[MAXFD]; /* 1: handshake done */
static int clients[MAXFD], count;
static unsigned char pending[MAXFD][CLIENT_FRAME];
static int pending_len[MAXFD];

static void drop(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  if (open_fd[fd])
    for (int i = 0; i < count; i++)
      if (clients[i] == fd) {
        clients[i] = clients[--count];
        break;
      }
  open_fd[fd] = 0;
  pending_len[fd] = 0;
}

int main(int argc, char **argv) {
  if (argc < 3 || strcmp(argv[2], "broadcast") != 0) {
    fprintf(stderr, "usage: floor PORT broadcast [batch]\n");
    return 2;
  }
  int batch = argc > 3 && !strcmp(argv[3], "batch");
  static unsigned char out[66 * 1024];
  size_t out_len = 0;
  signal(SIGPIPE, SIG_IGN);
  int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1024)) {
    perror("floor");
    return 1;
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
  epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
  unsigned char frame[66] = {0x82, 64}; /* FIN, binary, 64 bytes, unmasked */
  unsigned char buffer[65536];
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int e = 0; e < n; e++) {
      int fd = events[e].data.fd;
      if (fd == listener) {
        int client = accept(listener, NULL, NULL);
        if (client < 0 || client >= MAXFD) {
          if (client >= 0) close(client);
          continue;
        }
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event cev = {.events = EPOLLIN, .data.fd = client};
        epoll_ctl(ep, EPOLL_CTL_ADD, client, &cev);
        continue;
      }
      ssize_t got = recv(fd, buffer, sizeof buffer, 0);
      if (got <= 0) {
        drop(ep, fd);
        continue;
      }
      if (!open_fd[fd]) {
        /* the request head: assumed to arrive whole (it does, on loopback) */
        if (memmem(buffer, got, "\r\n\r\n", 4)) {
          send(fd, ANSWER, sizeof ANSWER - 1, MSG_NOSIGNAL);
          open_fd[fd] = 1;
          clients[count++] = fd;
        }
        continue;
      }
      for (ssize_t i = 0; i < got; i++) {
        pending[fd][pending_len[fd]++] = buffer[i];
        if (pending[fd][0] == 0x88 && pending_len[fd] >= 2) { /* close */
          drop(ep, fd);
          break;
        }
        if (pending_len[fd] < CLIENT_FRAME) continue;
        pending_len[fd] = 0;
        const unsigned char *mask = pending[fd] + 2, *data = pending[fd] + 6;
        for (int k = 0; k < 64; k++) frame[2 + k] = data[k] ^ mask[k & 3];
        if (batch) {
          memcpy(out + out_len, frame, sizeof frame);
          out_len += sizeof frame;
          if (out_len < sizeof out) continue;
        } else {
          memcpy(out, frame, sizeof frame);
          out_len = sizeof frame;
        }
        for (int k = 0; k < count; k++)
          if (clients[k] != fd) send(clients[k], out, out_len, MSG_NOSIGNAL);
        out_len = 0;
      }
      if (out_len && open_fd[fd]) {
        for (int k = 0; k < count; k++)
          if (clients[k] != fd) send(clients[k], out, out_len, MSG_NOSIGNAL);
      }
      out_len = 0;
    }
  }
}
