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
