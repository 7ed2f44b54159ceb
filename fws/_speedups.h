/*
 * What the parts of fws._speedups share: includes, the entry points each part
 * gives the module (fws/_speedups.c), and a small helper both use.
 */
#ifndef FWS_SPEEDUPS_H
#define FWS_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* fws/_speedups_outbound.c: the broadcast's fan-out and the flusher. */
int speedups_outbound_init(void);
PyObject *speedups_bind(PyObject *module, PyObject *args);
PyObject *speedups_fan_out(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *speedups_flush_each(PyObject *module, PyObject *due);
PyObject *speedups_send_broadcasts(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* fws/_speedups_send.c: one non-blocking send of many frames, small ones gathered. */
#include <sys/uio.h>
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

typedef struct {
  size_t iovecs;    /* iovecs the send has */
  size_t copied;    /* bytes of the gathering buffer in use */
  int tail_copied;  /* its last iovec ends where the gathering buffer is free */
  Py_ssize_t bytes; /* all the bytes of the send */
} Gather;

/* Add ``frame`` (exact bytes) to the send: 0 when it cannot (IOV_MAX iovecs). */
int gather_add(Gather *out, PyObject *frame);
/* Send it on ``fd``, non-blocking: how many bytes went (0 if it would block or
 * failed: the writer greenlet waits, or reports the error). */
Py_ssize_t gather_send(const Gather *out, int fd);
/* Whether the send's last iovec is ``frame`` itself, whole and uncopied. */
int gather_ends_with(const Gather *out, PyObject *frame);
/* What the send left, from byte ``sent`` on, as one new bytes object. */
PyObject *gather_rest(const Gather *out, Py_ssize_t sent);

/* fws/_speedups_frames.c: parsing, unmasking and encoding frames. */
PyObject *speedups_parse_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *speedups_unmask_pieces(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *speedups_message_encoder(PyObject *module, PyObject *fallback);

/* a + b in *sum when it fits a Py_ssize_t (Python's ints do not overflow; C's would). */
static inline int add_fits(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *sum) {
  if (b > 0 ? a > PY_SSIZE_T_MAX - b : a < PY_SSIZE_T_MIN - b)
    return 0;
  *sum = a + b;
  return 1;
}

#endif
