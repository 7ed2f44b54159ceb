/*
 * fws._speedups, frames: FrameParser's common frame, the unmasking of a large
 * frame received in pieces, and encode_message's common case. The module
 * (fws/_speedups.c) documents each function; fws/frames.py has the Python
 * code they must agree with.
 */
#include "_speedups.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

/* A piece of unmask_pieces (bytes or a bytearray, checked already): where its bytes are. */
static inline Py_ssize_t piece_span(PyObject *piece, const unsigned char **data) {
  if (PyBytes_CheckExact(piece)) {
    *data = (const unsigned char *)PyBytes_AS_STRING(piece);
    return PyBytes_GET_SIZE(piece);
  }
  *data = (const unsigned char *)PyByteArray_AS_STRING(piece);
  return PyByteArray_GET_SIZE(piece);
}

/* --- Parsing: fws.frames.FrameParser's common frame --- */

static PyObject *text_message_type; /* fws.datatypes.TextMessage, imported on first use */

static int load_text_message_type(void) {
  if (text_message_type != NULL)
    return 0;
  PyObject *datatypes = PyImport_ImportModule("fws.datatypes");
  if (datatypes == NULL)
    return -1;
  text_message_type = PyObject_GetAttrString(datatypes, "TextMessage");
  Py_DECREF(datatypes);
  return text_message_type == NULL ? -1 : 0;
}


/* unmask_pieces(pieces, start, mask) -> bytes: the payload of a frame received in
 * pieces (a list of bytes-like objects, the first holding the header), from
 * ``start`` on, unmasked in one pass: fws.frames' join-then-unmask, one copy less. */
PyObject *speedups_unmask_pieces(PyObject *Py_UNUSED(module), PyObject *const *args,
                               Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "unmask_pieces(pieces, start, mask) takes 3 arguments");
    return NULL;
  }
  PyObject *pieces = args[0];
  if (!PyList_Check(pieces)) {
    PyErr_SetString(PyExc_TypeError, "pieces must be a list");
    return NULL;
  }
  Py_ssize_t start = PyLong_AsSsize_t(args[1]);
  if (start == -1 && PyErr_Occurred())
    return NULL;
  Py_buffer mask;
  if (PyObject_GetBuffer(args[2], &mask, PyBUF_SIMPLE) < 0)
    return NULL;
  unsigned char key[4];
  int mask_ok = mask.len == 4;
  if (mask_ok)
    memcpy(key, mask.buf, 4);
  PyBuffer_Release(&mask);
  if (!mask_ok) {
    PyErr_SetString(PyExc_ValueError, "the mask is 4 bytes");
    return NULL;
  }
  /* The sizes first, then the copy: only exact bytes and bytearrays, read in
   * place, and nothing between the two passes runs Python code (a bytes object
   * is not tracked by the garbage collector, so allocating it collects nothing). */
  Py_ssize_t count = PyList_GET_SIZE(pieces), total = 0;
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *piece = PyList_GET_ITEM(pieces, i);
    if (!PyBytes_CheckExact(piece) && !PyByteArray_CheckExact(piece)) {
      PyErr_SetString(PyExc_TypeError, "each piece is bytes or a bytearray");
      return NULL;
    }
    const unsigned char *data;
    Py_ssize_t size = piece_span(piece, &data);
    if (!add_fits(total, size, &total)) {
      PyErr_SetString(PyExc_OverflowError, "pieces too large");
      return NULL;
    }
  }
  if (start < 0 || start > total) {
    PyErr_SetString(PyExc_ValueError, "start outside the pieces");
    return NULL;
  }
  PyObject *payload = PyBytes_FromStringAndSize(NULL, total - start);
  if (payload == NULL)
    return NULL;
  char *into = PyBytes_AS_STRING(payload);
  Py_ssize_t skip = start, done = 0; /* done: payload bytes written, the mask's phase */
  for (Py_ssize_t i = 0; i < count; i++) {
    const unsigned char *data;
    Py_ssize_t size = piece_span(PyList_GET_ITEM(pieces, i), &data);
    if (skip >= size) {
      skip -= size;
      continue;
    }
    unsigned char rotated[4];
    for (int k = 0; k < 4; k++)
      rotated[k] = key[(done + k) & 3];
    unmask_into(into + done, data + skip, size - skip, rotated);
    done += size - skip;
    skip = 0;
  }
  return payload;
}

/* ``list[index] += amount``, as Python does it. */
static int add_to_item(PyObject *list, Py_ssize_t index, Py_ssize_t amount) {
  PyObject *item = PySequence_GetItem(list, index);
  if (item == NULL)
    return -1;
  PyObject *number = PyLong_FromSsize_t(amount);
  if (number == NULL) {
    Py_DECREF(item);
    return -1;
  }
  PyObject *sum = PyNumber_InPlaceAdd(item, number);
  Py_DECREF(item);
  Py_DECREF(number);
  if (sum == NULL)
    return -1;
  int failed = PySequence_SetItem(list, index, sum);
  Py_DECREF(sum);
  return failed;
}

#define TEXT_ON_STACK 256

PyObject *speedups_parse_messages(PyObject *Py_UNUSED(module), PyObject *const *args,
                                Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "parse_messages(data, position, events, limit, "
                                     "frame_counts, wire_bytes) takes 6 arguments");
    return NULL;
  }
  PyObject *events = args[2], *limit_arg = args[3], *counts = args[4], *wire = args[5];
  if (!PyList_Check(events)) {
    PyErr_SetString(PyExc_TypeError, "events must be a list");
    return NULL;
  }
  if ((counts == Py_None) != (wire == Py_None)) {
    PyErr_SetString(PyExc_ValueError, "frame_counts and wire_bytes go together");
    return NULL;
  }
  Py_ssize_t position = PyLong_AsSsize_t(args[1]);
  if (position == -1 && PyErr_Occurred())
    return NULL;
  Py_ssize_t limit = PY_SSIZE_T_MAX;
  if (limit_arg != Py_None) {
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(limit_arg, &overflow);
    if (value == -1 && PyErr_Occurred())
      return NULL;
    /* An int too large for C limits nothing here; one too small refuses everything. */
    limit = overflow > 0 || value > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX
            : overflow < 0 || value < 0            ? -1
                                                   : (Py_ssize_t)value;
  }
  if (load_text_message_type() < 0)
    return NULL;
  Py_buffer buffer;
  if (PyObject_GetBuffer(args[0], &buffer, PyBUF_SIMPLE) < 0)
    return NULL;
  const unsigned char *bytes = buffer.buf;
  Py_ssize_t end = buffer.len;
  if (position < 0 || position > end) {
    PyBuffer_Release(&buffer);
    PyErr_SetString(PyExc_ValueError, "position outside the data");
    return NULL;
  }
  /* Frames and wire bytes, by opcode (1 text, 2 binary), added to the lists once. */
  Py_ssize_t frames[3] = {0, 0, 0}, wire_size[3] = {0, 0, 0};
  char stack[TEXT_ON_STACK];
  int failed = 0;
  while (end - position >= 2) {
    unsigned char first = bytes[position], second = bytes[position + 1];
    if ((first != 0x81 && first != 0x82) || !(second & 0x80))
      break; /* not a whole text or binary frame with no RSV bit, or unmasked: Python */
    Py_ssize_t length = second & 0x7F, header = 6;
    if (length == 126) {
      if (end - position < 4)
        break;
      length = (Py_ssize_t)bytes[position + 2] << 8 | bytes[position + 3];
      header = 8;
    } else if (length == 127) {
      if (end - position < 10)
        break;
      uint64_t wide = 0;
      for (int k = 0; k < 8; k++)
        wide = wide << 8 | bytes[position + 2 + k];
      if (wide > (uint64_t)PY_SSIZE_T_MAX - 14)
        break; /* the most significant bit set: Python refuses it */
      length = (Py_ssize_t)wide;
      header = 14;
    }
    if (length > limit || end - position < header + length)
      break; /* over the limit (Python refuses it), or not whole yet */
    const unsigned char *mask = bytes + position + header - 4, *payload = bytes + position + header;
    PyObject *event;
    if (first == 0x82) {
      event = PyBytes_FromStringAndSize(NULL, length);
      if (event == NULL) {
        failed = 1;
        break;
      }
      unmask_into(PyBytes_AS_STRING(event), payload, length, mask);
    } else {
      char *text = length <= TEXT_ON_STACK ? stack : PyMem_Malloc((size_t)length);
      if (text == NULL) {
        PyErr_NoMemory();
        failed = 1;
        break;
      }
      unmask_into(text, payload, length, mask);
      PyObject *decoded = PyUnicode_DecodeUTF8(text, length, "strict");
      if (text != stack)
        PyMem_Free(text);
      if (decoded == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
          failed = 1;
          break;
        }
        PyErr_Clear(); /* not UTF-8: Python raises its ProtocolError(1007) */
        break;
      }
      event = PyObject_CallOneArg(text_message_type, decoded);
      Py_DECREF(decoded);
      if (event == NULL) {
        failed = 1;
        break;
      }
    }
    int appended = PyList_Append(events, event);
    Py_DECREF(event);
    if (appended < 0) {
      failed = 1;
      break;
    }
    frames[first & 0x0F]++;
    wire_size[first & 0x0F] += header + length;
    position += header + length;
  }
  PyBuffer_Release(&buffer);
  /* The frames parsed count even when something failed after them, as in Python. */
  if (counts != Py_None) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    for (int opcode = 1; opcode <= 2; opcode++)
      if (frames[opcode] && (add_to_item(counts, opcode, frames[opcode]) < 0 ||
                             add_to_item(wire, opcode, wire_size[opcode]) < 0)) {
        if (type == NULL) {
          failed = 1;
          PyErr_Fetch(&type, &value, &traceback);
        }
        break;
      }
    PyErr_Restore(type, value, traceback);
  }
  if (failed)
    return NULL;
  return PyLong_FromSsize_t(position);
}


/* --- Encoding: fws.frames.encode_message's common case --- */

/* ``self`` is the Python encode_message, for what is not done here. */
static PyObject *encode_message(PyObject *fallback, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (kwnames != NULL || nargs < 1 || nargs > 2 || (nargs == 2 && args[1] != Py_None))
    return PyObject_Vectorcall(fallback, args, nargsf, kwnames);
  PyObject *data = args[0], *encoded = NULL;
  const char *payload;
  Py_ssize_t size;
  unsigned char opcode;
  if (PyBytes_CheckExact(data)) {
    opcode = 0x2;
    payload = PyBytes_AS_STRING(data);
    size = PyBytes_GET_SIZE(data);
  } else if ((PyUnicode_CheckExact(data) || (text_message_type != NULL &&
                                             Py_IS_TYPE(data, (PyTypeObject *)text_message_type))) &&
             PyUnicode_IS_READY(data)) {
    /* A str subclass other than TextMessage could override encode(): Python's. */
    opcode = 0x1;
    if (PyUnicode_IS_COMPACT_ASCII(data)) { /* ASCII is its own UTF-8 */
      payload = (const char *)PyUnicode_DATA(data);
      size = PyUnicode_GET_LENGTH(data);
    } else {
      encoded = PyUnicode_AsUTF8String(data); /* not AsUTF8: it would keep a copy on data */
      if (encoded == NULL) {
        PyErr_Clear(); /* a lone surrogate: Python raises its own error */
        return PyObject_Vectorcall(fallback, args, nargsf, kwnames);
      }
      payload = PyBytes_AS_STRING(encoded);
      size = PyBytes_GET_SIZE(encoded);
    }
  } else {
    return PyObject_Vectorcall(fallback, args, nargsf, kwnames);
  }
  Py_ssize_t header = size < 126 ? 2 : size < 65536 ? 4 : 10;
  PyObject *frame = PyBytes_FromStringAndSize(NULL, header + size);
  if (frame != NULL) {
    unsigned char *into = (unsigned char *)PyBytes_AS_STRING(frame);
    into[0] = 0x80 | opcode;
    if (header == 2) {
      into[1] = (unsigned char)size;
    } else if (header == 4) {
      into[1] = 126;
      into[2] = (unsigned char)(size >> 8);
      into[3] = (unsigned char)size;
    } else {
      into[1] = 127;
      for (int i = 0; i < 8; i++)
        into[2 + i] = (unsigned char)((uint64_t)size >> (56 - 8 * i));
    }
    memcpy(into + header, payload, (size_t)size);
  }
  Py_XDECREF(encoded);
  return frame;
}

static PyMethodDef encode_message_def = {
    "encode_message", (PyCFunction)(void (*)(void))encode_message,
    METH_FASTCALL | METH_KEYWORDS,
    "encode_message(data, deflate=None) -> bytes: a text frame for str, binary for bytes."};

PyObject *speedups_message_encoder(PyObject *Py_UNUSED(module), PyObject *fallback) {
  if (!PyCallable_Check(fallback)) {
    PyErr_SetString(PyExc_TypeError, "message_encoder() takes the Python encode_message");
    return NULL;
  }
  if (load_text_message_type() < 0)
    return NULL;
  return PyCFunction_New(&encode_message_def, fallback);
}
