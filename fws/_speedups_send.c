/*
 * fws._speedups, sending: many frames in one non-blocking send, for the
 * flusher's loops (fws/_speedups_outbound.c), which add a connection's
 * frames, send, and keep what the socket did not take.
 *
 * Small frames are copied side by side into ``gathered`` and go as one
 * iovec: the kernel copies each iovec with a call of its own, and allocates
 * for more than 8, and for a broadcast's 66-byte frames that cost more than
 * this copy (at broadcast-1000, ``_copy_from_iter`` and ``__kmalloc`` took
 * 7 % of the kernel's time with an iovec per frame, 1.2 % gathered;
 * socketify, which sends from one buffer, 1.5 %). A frame of GATHER_FRAME
 * bytes or more keeps an iovec of its own, uncopied. One iovec goes with
 * send(), which the kernel takes with less work than sendmsg().
 */
#include "_speedups.h"

#include <errno.h>
#include <sys/socket.h>
#ifndef MSG_NOSIGNAL /* macOS, the BSDs: Python ignores SIGPIPE anyway */
#define MSG_NOSIGNAL 0
#endif

#define GATHER_FRAME 2048
#define GATHER_BYTES 65536

/* One send at a time: the loops run with the GIL held and finish each send
 * before they start the next. */
static struct iovec iov[IOV_MAX];
static char gathered[GATHER_BYTES];

int gather_add(Gather *out, PyObject *frame) {
  char *data = PyBytes_AS_STRING(frame);
  size_t size = (size_t)PyBytes_GET_SIZE(frame);
  if (size < GATHER_FRAME && out->copied + size <= GATHER_BYTES) {
    char *into = gathered + out->copied;
    if (!out->tail_copied && out->iovecs == IOV_MAX)
      return 0;
    memcpy(into, data, size);
    out->copied += size;
    out->bytes += (Py_ssize_t)size;
    if (out->tail_copied) {
      iov[out->iovecs - 1].iov_len += size;
      return 1;
    }
    data = into;
    out->tail_copied = 1;
  } else {
    if (out->iovecs == IOV_MAX)
      return 0;
    out->tail_copied = 0;
    out->bytes += (Py_ssize_t)size;
  }
  iov[out->iovecs].iov_base = data;
  iov[out->iovecs].iov_len = size;
  out->iovecs++;
  return 1;
}

Py_ssize_t gather_send(const Gather *out, int fd) {
  ssize_t result;
  do {
    if (out->iovecs == 1)
      result = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    else {
      struct msghdr message = {.msg_iov = iov, .msg_iovlen = out->iovecs};
      result = sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  } while (result < 0 && errno == EINTR);
  return result < 0 ? 0 : result;
}

int gather_ends_with(const Gather *out, PyObject *frame) {
  return out->iovecs && iov[out->iovecs - 1].iov_base == PyBytes_AS_STRING(frame) &&
         iov[out->iovecs - 1].iov_len == (size_t)PyBytes_GET_SIZE(frame);
}

PyObject *gather_rest(const Gather *out, Py_ssize_t sent) {
  PyObject *rest = PyBytes_FromStringAndSize(NULL, out->bytes - sent);
  if (rest == NULL)
    return NULL;
  char *into = PyBytes_AS_STRING(rest);
  size_t skip = (size_t)sent;
  for (size_t i = 0; i < out->iovecs; i++) {
    size_t size = iov[i].iov_len;
    if (skip >= size) {
      skip -= size;
      continue;
    }
    memcpy(into, (char *)iov[i].iov_base + skip, size - skip);
    into += size - skip;
    skip = 0;
  }
  return rest;
}
