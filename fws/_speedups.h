/*
 * What the parts of fws._speedups share: includes, the entry points each part
 * gives the module (fws/_speedups.c), and two small helpers.
 */
#ifndef FWS_SPEEDUPS_H
#define FWS_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

/* XOR ``size`` bytes of ``source`` with the 4-byte ``mask`` into ``target``:
 * 16 bytes at a time with SSE2 (every x86-64 has it), as websockets' speedups.c
 * does, which unmasks 1 MiB in about half the time of 8 bytes at a time. */
static inline void unmask_into(char *target, const unsigned char *source, Py_ssize_t size,
                        const unsigned char *mask) {
  uint64_t wide;
  uint32_t narrow;
  memcpy(&narrow, mask, 4);
  wide = ((uint64_t)narrow << 32) | narrow;
  Py_ssize_t i = 0;
#ifdef __SSE2__
  __m128i vector = _mm_set1_epi64x((long long)wide);
  for (; i + 16 <= size; i += 16) {
    __m128i chunk = _mm_loadu_si128((const __m128i *)(source + i));
    _mm_storeu_si128((__m128i *)(target + i), _mm_xor_si128(chunk, vector));
  }
#endif
  for (; i + 8 <= size; i += 8) {
    uint64_t chunk;
    memcpy(&chunk, source + i, 8);
    chunk ^= wide;
    memcpy(target + i, &chunk, 8);
  }
  for (; i < size; i++)
    target[i] = (char)(source[i] ^ mask[i & 3]);
}

#endif
