/*
 * fws._speedups: the broadcast's two hot loops, the parser's common frame and
 * the encoding of a message in C, for CPython.
 *
 * Optional: setup.py builds it when it can, and fws/_accel.py falls back to
 * the pure-Python code of fws/outbound.py (_pure_fan_out, _pure_flush_each)
 * and fws/frames.py (FrameParser._parse, _pure_encode_message) when it is
 * missing or FWS_NO_SPEEDUPS=1. Both must behave alike; the tests
 * run the same inputs through both (tests/test_speedups.py).
 *
 * fan_out(recipients, frame, first, exclude, deliver) -> int
 *     Server.broadcast's loop: queue ``frame`` (bytes whose first byte is
 *     ``first``) for every connection in ``recipients`` (None entries and the
 *     one whose id is ``exclude`` skipped). The common case, an open
 *     connection without compression whose queue has room, in a metrics run
 *     of these frames (or with metrics off) and not opening, is
 *     Connection.send_message_frame and Connection._queue done here; any
 *     other recipient goes to ``deliver(connection)``, the Python code for one
 *     recipient. Returns how many connections the frame was queued for.
 *
 * flush_each(due) -> None
 *     The flusher's loop: Connection._flush for each connection of the list
 *     ``due``: one non-blocking sendmsg() of its queued frames (no join: an
 *     iovec per frame). What would block, a partial or failed send, TLS and
 *     a queued close go back to Python (``_start_writer``, ``_flush``). When
 *     one raises (a bug), ``due`` is left holding the connections not yet
 *     flushed, as the pure loop leaves it.
 *
 * parse_messages(data, position, events, limit, frame_counts, wire_bytes) -> int
 *     FrameParser.feed's common case: from ``position`` in ``data`` (any
 *     buffer), append the event of each whole, unfragmented, masked text or
 *     binary frame with no RSV bit (any of the three length forms) to the
 *     list ``events``: its payload unmasked, as bytes, or as
 *     a TextMessage for text. Stops at the first frame it does not handle
 *     (anything else, a frame not yet whole, one over ``limit`` bytes
 *     (None: no limit), text that is not UTF-8) and returns its position:
 *     FrameParser._parse takes it from there, and raises what it must, so
 *     this function never refuses a frame itself. Adds the frames it parsed
 *     and their wire bytes to ``frame_counts`` and ``wire_bytes`` (None: not
 *     counted). The caller makes sure no fragmented message is in progress.
 *
 * message_encoder(fallback) -> encode_message
 *     fws.frames.encode_message for the common case, a str (or TextMessage)
 *     or bytes with no compression (``deflate`` None): the frame's bytes,
 *     built in one allocation. Anything else (compression, other types,
 *     keyword arguments, text that is not encodable) is ``fallback(...)``,
 *     the Python function, called with the same arguments.
 *
 * bind(Connection, State.OPEN, ConnectionSettings, schedule_flush) -> None
 *     Called once by fws.connection: the attributes both loops use are
 *     __slots__ of Connection (and of ConnectionSettings); their member
 *     descriptors give the offsets at which each instance keeps them, so a
 *     delivery reads and writes them without an attribute lookup. Only
 *     instances of exactly these classes take the fast path; anything else
 *     (a subclass, an unset slot, a value of an unexpected type) is handed
 *     to the Python code. So is every connection while one of Connection's
 *     attributes that bind() recorded (those slots, and the methods whose
 *     work the loops do) is not the object it was: a method patched on the
 *     class runs, as it would in the pure loops (see layout_intact).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <sys/socket.h>
#ifndef MSG_NOSIGNAL /* macOS, the BSDs: Python ignores SIGPIPE anyway */
#define MSG_NOSIGNAL 0
#endif
#include <sys/uio.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* What bind() recorded. */
static PyTypeObject *connection_type;
static PyTypeObject *settings_type;
static PyObject *open_state;
static PyObject *schedule_flush;
static PyTypeObject *socket_type; /* _socket.socket: what flush_one sends on itself */

/* Connection's attributes the loops stand in for or read through, as bind()
 * found them (name -> the class's own object), and the class's version tag
 * then: CPython gives a type a new tag when one of its attributes is set. */
static PyObject *bound_attributes;
static unsigned int bound_version;

/* The methods the compiled loops do the work of, for the common case. */
static const char *const replaced_methods[] = {"send_message_frame", "_queue", "_flush"};

static Py_ssize_t off_id, off_state, off_deflate, off_settings, off_table, off_outbox,
    off_outbox_bytes, off_sent_counts, off_run_first, off_opening, off_messages_out, off_writer,
    off_flush_due, off_raw_socket, off_close_queued, off_bytes_out, off_max_outbound;

static PyObject *str_to_flush, *str_flusher, *str_flush, *str_start_writer, *str_append;

/* The object a slot holds: NULL when it was never set. */
#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* Store a new reference in a slot, releasing the old value. */
static inline void slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value) {
  PyObject **slot = &SLOT(obj, offset);
  PyObject *old = *slot;
  *slot = value;
  Py_XDECREF(old);
}

/* A slot holding an exact int that fits: 1 and *value; 0 for anything else. */
static inline int slot_size(PyObject *obj, Py_ssize_t offset, Py_ssize_t *value) {
  PyObject *held = SLOT(obj, offset);
  if (held == NULL || !PyLong_CheckExact(held))
    return 0;
  *value = PyLong_AsSsize_t(held);
  if (*value == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return 0;
  }
  return 1;
}

/* a + b in *sum when it fits a Py_ssize_t (Python's ints do not overflow; C's would). */
static inline int add_fits(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *sum) {
  if (b > 0 ? a > PY_SSIZE_T_MAX - b : a < PY_SSIZE_T_MIN - b)
    return 0;
  *sum = a + b;
  return 1;
}

static inline int slot_set_size(PyObject *obj, Py_ssize_t offset, Py_ssize_t value) {
  PyObject *number = PyLong_FromSsize_t(value);
  if (number == NULL)
    return -1;
  slot_set(obj, offset, number);
  return 0;
}

static int member_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
  PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
  if (descr == NULL)
    return -1;
  int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type);
  if (ok) {
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    ok = member->type == T_OBJECT_EX && !(member->flags & READONLY);
    *offset = member->offset;
  }
  Py_DECREF(descr);
  if (!ok) {
    PyErr_Format(PyExc_TypeError, "%s.%s is not a writable __slots__ member", type->tp_name,
                 name);
    return -1;
  }
  return 0;
}

/*
 * Whether Connection still has the attributes bind() recorded. A method
 * replaced on the class since (a test's or a tracer's patch) or a slot
 * shadowed by a property must be seen, as the pure loops see them: then
 * every connection goes to the Python code. The common case, an unchanged
 * class, costs one comparison.
 */
static int layout_intact(void) {
  PyTypeObject *type = connection_type;
  if ((type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && type->tp_version_tag == bound_version)
    return 1;
  PyObject *name, *recorded;
  Py_ssize_t position = 0;
  while (PyDict_Next(bound_attributes, &position, &name, &recorded)) {
    PyObject *now = PyObject_GetAttr((PyObject *)type, name);
    if (now == NULL) {
      PyErr_Clear();
      return 0;
    }
    Py_DECREF(now); /* only its identity is compared; the class still holds it */
    if (now != recorded)
      return 0;
  }
  /* Set back as it was (a patch undone): the lookups above gave the class a
   * valid tag again, where CPython had one to give. */
  if (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
    bound_version = type->tp_version_tag;
  return 1;
}

/* Record ``name`` of ``type`` in ``attributes``. */
static int record_attribute(PyObject *attributes, PyTypeObject *type, const char *name) {
  PyObject *value = PyObject_GetAttrString((PyObject *)type, name);
  if (value == NULL)
    return -1;
  int failed = PyDict_SetItemString(attributes, name, value);
  Py_DECREF(value);
  return failed;
}

static PyObject *bind_layout(PyObject *Py_UNUSED(module), PyObject *args) {
  PyTypeObject *connection, *settings;
  PyObject *open, *schedule;
  if (!PyArg_ParseTuple(args, "O!OO!O:bind", &PyType_Type, &connection, &open, &PyType_Type,
                        &settings, &schedule))
    return NULL;
  if (connection->tp_getattro != PyObject_GenericGetAttr ||
      connection->tp_setattro != PyObject_GenericSetAttr) {
    PyErr_SetString(PyExc_TypeError, "the connection class customises attribute access");
    return NULL;
  }
  struct {
    const char *name;
    Py_ssize_t *offset;
  } slots[] = {
      {"id", &off_id},
      {"state", &off_state},
      {"deflate", &off_deflate},
      {"settings", &off_settings},
      {"table", &off_table},
      {"_outbox", &off_outbox},
      {"_outbox_bytes", &off_outbox_bytes},
      {"_sent_counts", &off_sent_counts},
      {"_run_first", &off_run_first},
      {"_opening", &off_opening},
      {"messages_out", &off_messages_out},
      {"_writer", &off_writer},
      {"_flush_due", &off_flush_due},
      {"_raw_socket", &off_raw_socket},
      {"_close_queued", &off_close_queued},
      {"bytes_out", &off_bytes_out},
  };
  for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
    if (member_offset(connection, slots[i].name, slots[i].offset) < 0)
      return NULL;
  if (member_offset(settings, "max_outbound_bytes", &off_max_outbound) < 0)
    return NULL;
  PyObject *attributes = PyDict_New();
  if (attributes == NULL)
    return NULL;
  for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
    if (record_attribute(attributes, connection, slots[i].name) < 0) {
      Py_DECREF(attributes);
      return NULL;
    }
  for (size_t i = 0; i < sizeof replaced_methods / sizeof replaced_methods[0]; i++)
    if (record_attribute(attributes, connection, replaced_methods[i]) < 0) {
      Py_DECREF(attributes);
      return NULL;
    }
  Py_XSETREF(bound_attributes, attributes);
  /* After the lookups: the class has a valid tag if CPython can give it one
   * (if not, layout_intact compares the attributes on every call). */
  bound_version = connection->tp_version_tag;
  Py_INCREF(connection);
  Py_XSETREF(connection_type, connection);
  Py_INCREF(settings);
  Py_XSETREF(settings_type, settings);
  Py_INCREF(open);
  Py_XSETREF(open_state, open);
  Py_INCREF(schedule);
  Py_XSETREF(schedule_flush, schedule);
  Py_RETURN_NONE;
}

/* The queue's limit for settings ``settings``: -1 for none; -2: not known here. */
static Py_ssize_t outbound_limit(PyObject *settings) {
  if (!Py_IS_TYPE(settings, settings_type))
    return -2;
  PyObject *limit = SLOT(settings, off_max_outbound);
  if (limit == Py_None)
    return -1;
  Py_ssize_t value;
  if (!slot_size(settings, off_max_outbound, &value) || value < 0)
    return -2;
  return value;
}

/* List ``connection`` for the flusher (the end of Connection._queue). */
static int list_for_flush(PyObject *connection) {
  Py_INCREF(Py_True);
  slot_set(connection, off_flush_due, Py_True);
  PyObject *table = SLOT(connection, off_table);
  if (table == NULL) {
    PyErr_SetString(PyExc_AttributeError, "table");
    return -1;
  }
  PyObject *to_flush = PyObject_GetAttr(table, str_to_flush);
  if (to_flush == NULL)
    return -1;
  int failed;
  if (PyList_CheckExact(to_flush))
    failed = PyList_Append(to_flush, connection);
  else { /* PyList_Append raises SystemError on anything else: what _queue calls */
    PyObject *done = PyObject_CallMethodOneArg(to_flush, str_append, connection);
    failed = done == NULL;
    Py_XDECREF(done);
  }
  Py_DECREF(to_flush);
  if (failed)
    return -1;
  PyObject *flusher = PyObject_GetAttr(table, str_flusher);
  if (flusher == NULL)
    return -1;
  int due = flusher == Py_None;
  Py_DECREF(flusher);
  if (due) {
    PyObject *done = PyObject_CallOneArg(schedule_flush, table);
    if (done == NULL)
      return -1;
    Py_DECREF(done);
  }
  return 0;
}

/*
 * Queue ``frame`` for ``connection`` if it is the common case: 1 queued,
 * 0 not queued (not open), 2 not the common case (nothing changed: the
 * caller hands it to Python), -1 an error.
 */
static int queue_common(PyObject *connection, PyObject *frame, long first, PyObject *exclude,
                        PyObject **settings_seen, Py_ssize_t *limit_seen) {
  if (!Py_IS_TYPE(connection, connection_type) || !layout_intact())
    return 2;
  PyObject *id = SLOT(connection, off_id);
  if (id == NULL)
    return 2;
  if (exclude != Py_None) {
    if (id == exclude)
      return 0;
    if (!PyUnicode_CheckExact(id) || !PyUnicode_CheckExact(exclude) ||
        !PyUnicode_IS_READY(id) || !PyUnicode_IS_READY(exclude))
      return 2;
    /* str == str, for two canonical strings: same length, kind and code units. */
    Py_ssize_t length = PyUnicode_GET_LENGTH(id);
    int kind = PyUnicode_KIND(id);
    if (length == PyUnicode_GET_LENGTH(exclude) && kind == PyUnicode_KIND(exclude) &&
        memcmp(PyUnicode_DATA(id), PyUnicode_DATA(exclude), (size_t)length * (size_t)kind) == 0)
      return 0;
  }
  if (SLOT(connection, off_deflate) != Py_None)
    return 2; /* compressed: encoded for it in Python (and NULL: unset) */
  PyObject *state = SLOT(connection, off_state);
  if (state != open_state)
    return state == NULL ? 2 : 0;
  PyObject *settings = SLOT(connection, off_settings);
  if (settings == NULL)
    return 2;
  if (settings != *settings_seen) {
    Py_ssize_t limit = outbound_limit(settings);
    if (limit == -2)
      return 2;
    Py_INCREF(settings);
    Py_XSETREF(*settings_seen, settings);
    *limit_seen = limit;
  }
  Py_ssize_t queued, messages, after, counted_after;
  if (!slot_size(connection, off_outbox_bytes, &queued) ||
      !slot_size(connection, off_messages_out, &messages) ||
      !add_fits(queued, PyBytes_GET_SIZE(frame), &after) || !add_fits(messages, 1, &counted_after))
    return 2; /* not ints, or too large for C: Python's ints do it */
  if (*limit_seen >= 0 && queued && after > *limit_seen)
    return 2; /* too slow: Python closes it */
  PyObject *counts = SLOT(connection, off_sent_counts);
  if (counts == NULL)
    return 2;
  if (counts != Py_None) {
    Py_ssize_t run_first;
    if (!slot_size(connection, off_run_first, &run_first) || run_first != first)
      return 2; /* a new metrics run */
  }
  if (SLOT(connection, off_opening) != Py_None)
    return 2; /* held while open() runs, or unset */
  PyObject *outbox = SLOT(connection, off_outbox);
  PyObject *writer = SLOT(connection, off_writer);
  PyObject *flush_due = SLOT(connection, off_flush_due);
  if (outbox == NULL || !PyList_CheckExact(outbox) || writer == NULL ||
      (flush_due != Py_True && flush_due != Py_False) || SLOT(connection, off_table) == NULL)
    return 2;
  /* From here on it is queued, in the order of send_message_frame and _queue:
   * should one step raise, the ones before it are done and the later ones not,
   * as in Python (messages_out is counted last). */
  PyObject *counted = SLOT(connection, off_messages_out);
  if (slot_set_size(connection, off_outbox_bytes, after) < 0 ||
      PyList_Append(outbox, frame) < 0)
    return -1;
  if (writer == Py_None && flush_due == Py_False && list_for_flush(connection) < 0)
    return -1;
  if (SLOT(connection, off_messages_out) == counted)
    return slot_set_size(connection, off_messages_out, counted_after) < 0 ? -1 : 1;
  /* Python code run by list_for_flush changed it: add to what it holds now. */
  PyObject *now = SLOT(connection, off_messages_out);
  if (now == NULL) {
    PyErr_SetString(PyExc_AttributeError, "messages_out");
    return -1;
  }
  PyObject *one = PyLong_FromLong(1);
  if (one == NULL)
    return -1;
  Py_INCREF(now); /* its __add__ may replace it in the slot */
  PyObject *more = PyNumber_Add(now, one);
  Py_DECREF(now);
  Py_DECREF(one);
  if (more == NULL)
    return -1;
  slot_set(connection, off_messages_out, more);
  return 1;
}

static PyObject *fan_out(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError,
                    "fan_out(recipients, frame, first, exclude, deliver) takes 5 arguments");
    return NULL;
  }
  if (connection_type == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "fws._speedups.bind() was not called");
    return NULL;
  }
  PyObject *frame = args[1], *exclude = args[3], *deliver = args[4];
  if (!PyBytes_CheckExact(frame)) {
    PyErr_SetString(PyExc_TypeError, "frame must be bytes");
    return NULL;
  }
  long first = PyLong_AsLong(args[2]);
  if (first == -1 && PyErr_Occurred())
    return NULL;
  PyObject *recipients = PySequence_Fast(args[0], "recipients must be a sequence");
  if (recipients == NULL)
    return NULL;
  PyObject *settings_seen = NULL;
  Py_ssize_t limit_seen = -1, sent = 0;
  /* The size is read on every turn: a list could change while ``deliver`` runs. */
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(recipients); i++) {
    PyObject *connection = PySequence_Fast_GET_ITEM(recipients, i);
    if (connection == Py_None)
      continue;
    Py_INCREF(connection);
    int queued = queue_common(connection, frame, first, exclude, &settings_seen, &limit_seen);
    if (queued == 2) {
      PyObject *result = PyObject_CallOneArg(deliver, connection);
      queued = -1;
      if (result != NULL) {
        Py_ssize_t counted = PyLong_AsSsize_t(result);
        Py_DECREF(result);
        if (!(counted == -1 && PyErr_Occurred())) {
          sent += counted;
          queued = 0;
        }
      }
    } else if (queued > 0) {
      sent += queued;
    }
    Py_DECREF(connection);
    if (queued < 0) {
      Py_XDECREF(settings_seen);
      Py_DECREF(recipients);
      return NULL;
    }
  }
  Py_XDECREF(settings_seen);
  Py_DECREF(recipients);
  return PyLong_FromSsize_t(sent);
}

static int call_method(PyObject *connection, PyObject *name) {
  PyObject *result = PyObject_CallMethodNoArgs(connection, name);
  if (result == NULL)
    return -1;
  Py_DECREF(result);
  return 0;
}

static struct iovec iov[IOV_MAX];

/* Connection._flush for one connection; -1 when Python code it called raised. */
static int flush_one(PyObject *connection) {
  if (!Py_IS_TYPE(connection, connection_type) || !layout_intact())
    return call_method(connection, str_flush);
  /* _flush_due first, as _flush; then the descriptor: fileno() is a method
   * call, and Python code (a socket subclass's fileno) may change the queue
   * or the slots, so every other slot is read after it, and nothing from
   * there to sendmsg() runs Python code. */
  Py_INCREF(Py_False);
  slot_set(connection, off_flush_due, Py_False);
  PyObject *raw = SLOT(connection, off_raw_socket);
  if (raw == NULL)
    return call_method(connection, str_flush);
  int fd = -1;
  if (raw != Py_None) {
    if (!PyObject_TypeCheck(raw, socket_type))
      return call_method(connection, str_flush); /* _flush calls its send() */
    Py_INCREF(raw);
    fd = PyObject_AsFileDescriptor(raw);
    if (fd < 0)
      PyErr_Clear(); /* closed: the writer's send fails and reports it */
    int replaced = SLOT(connection, off_raw_socket) != raw;
    Py_DECREF(raw);
    if (replaced)
      return call_method(connection, str_flush);
  }
  PyObject *outbox = SLOT(connection, off_outbox);
  PyObject *writer = SLOT(connection, off_writer);
  PyObject *close_queued = SLOT(connection, off_close_queued);
  Py_ssize_t queued, written;
  if (outbox == NULL || !PyList_CheckExact(outbox) || writer == NULL || close_queued == NULL ||
      !slot_size(connection, off_outbox_bytes, &queued) ||
      !slot_size(connection, off_bytes_out, &written))
    return call_method(connection, str_flush);
  Py_ssize_t count = PyList_GET_SIZE(outbox);
  if (writer != Py_None || count == 0)
    return 0;
  if (raw == Py_None || close_queued != Py_False || count > IOV_MAX)
    return call_method(connection, str_flush); /* TLS, a close: the writer; or a long queue */
  Py_ssize_t total = 0;
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *frame = PyList_GET_ITEM(outbox, i);
    if (!PyBytes_CheckExact(frame))
      return call_method(connection, str_flush);
    iov[i].iov_base = PyBytes_AS_STRING(frame);
    iov[i].iov_len = (size_t)PyBytes_GET_SIZE(frame);
    total += PyBytes_GET_SIZE(frame);
  }
  Py_ssize_t unused;
  if (!add_fits(written, total, &unused) || !add_fits(queued, -total, &unused))
    return call_method(connection, str_flush); /* counters too large for C */
  Py_ssize_t sent = 0;
  if (fd >= 0) {
    struct msghdr message = {.msg_iov = iov, .msg_iovlen = (size_t)count};
    ssize_t result;
    do
      result = sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (result < 0 && errno == EINTR);
    sent = result < 0 ? 0 : result; /* would block, or failed: the writer waits, or reports */
  }
  PyObject *rest = NULL;
  if (sent < total) {
    /* What is left, as one bytes object (the pure loop's chunk[sent:]). */
    Py_ssize_t index = 0, skip = sent;
    while (skip >= PyBytes_GET_SIZE(PyList_GET_ITEM(outbox, index)))
      skip -= PyBytes_GET_SIZE(PyList_GET_ITEM(outbox, index++));
    if (index == count - 1 && skip == 0) {
      rest = PyList_GET_ITEM(outbox, index);
      Py_INCREF(rest);
    } else {
      rest = PyBytes_FromStringAndSize(NULL, total - sent);
      if (rest == NULL)
        return -1;
      char *into = PyBytes_AS_STRING(rest);
      for (; index < count; index++, skip = 0) {
        PyObject *frame = PyList_GET_ITEM(outbox, index);
        memcpy(into, PyBytes_AS_STRING(frame) + skip, (size_t)(PyBytes_GET_SIZE(frame) - skip));
        into += PyBytes_GET_SIZE(frame) - skip;
      }
    }
  }
  if (PyList_SetSlice(outbox, 0, count, NULL) < 0 ||
      slot_set_size(connection, off_outbox_bytes, queued - sent) < 0 ||
      slot_set_size(connection, off_bytes_out, written + sent) < 0) {
    Py_XDECREF(rest);
    return -1;
  }
  if (rest == NULL)
    return 0;
  int failed = PyList_Append(outbox, rest);
  Py_DECREF(rest);
  if (failed)
    return -1;
  return call_method(connection, str_start_writer);
}

static PyObject *flush_each(PyObject *Py_UNUSED(module), PyObject *due) {
  if (!PyList_CheckExact(due)) {
    PyErr_SetString(PyExc_TypeError, "flush_each() takes a list");
    return NULL;
  }
  if (connection_type == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "fws._speedups.bind() was not called");
    return NULL;
  }
  Py_ssize_t done = 0;
  int failed = 0;
  while (!failed && done < PyList_GET_SIZE(due)) {
    PyObject *connection = PyList_GET_ITEM(due, done++);
    Py_INCREF(connection);
    failed = flush_one(connection) < 0;
    Py_DECREF(connection);
  }
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  int cleared = PyList_SetSlice(due, 0, done, NULL);
  if (failed) {
    PyErr_Restore(type, value, traceback);
    return NULL;
  }
  if (cleared < 0)
    return NULL;
  Py_RETURN_NONE;
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

/* XOR ``size`` bytes of ``source`` with the 4-byte ``mask`` into ``target``:
 * 16 bytes at a time with SSE2 (every x86-64 has it), as websockets' speedups.c
 * does, which unmasks 1 MiB in about half the time of 8 bytes at a time. */
static void unmask_into(char *target, const unsigned char *source, Py_ssize_t size,
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

/* unmask_pieces(pieces, start, mask) -> bytes: the payload of a frame received in
 * pieces (a list of bytes-like objects, the first holding the header), from
 * ``start`` on, unmasked in one pass: fws.frames' join-then-unmask, one copy less. */
static PyObject *unmask_pieces(PyObject *Py_UNUSED(module), PyObject *const *args,
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
    Py_ssize_t size;
    if (PyBytes_CheckExact(piece))
      size = PyBytes_GET_SIZE(piece);
    else if (PyByteArray_CheckExact(piece))
      size = PyByteArray_GET_SIZE(piece);
    else {
      PyErr_SetString(PyExc_TypeError, "each piece is bytes or a bytearray");
      return NULL;
    }
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
    PyObject *piece = PyList_GET_ITEM(pieces, i);
    const unsigned char *data = (const unsigned char *)(PyBytes_CheckExact(piece)
                                                            ? PyBytes_AS_STRING(piece)
                                                            : PyByteArray_AS_STRING(piece));
    Py_ssize_t size = PyBytes_CheckExact(piece) ? PyBytes_GET_SIZE(piece)
                                                : PyByteArray_GET_SIZE(piece);
    if (skip >= size) {
      skip -= size;
      continue;
    }
    if (size - skip > total - start - done) { /* cannot happen: the pieces did not change */
      Py_DECREF(payload);
      PyErr_SetString(PyExc_RuntimeError, "pieces changed while unmasking");
      return NULL;
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

static PyObject *parse_messages(PyObject *Py_UNUSED(module), PyObject *const *args,
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

static PyObject *message_encoder(PyObject *Py_UNUSED(module), PyObject *fallback) {
  if (!PyCallable_Check(fallback)) {
    PyErr_SetString(PyExc_TypeError, "message_encoder() takes the Python encode_message");
    return NULL;
  }
  if (load_text_message_type() < 0)
    return NULL;
  return PyCFunction_New(&encode_message_def, fallback);
}

static PyMethodDef methods[] = {
    {"bind", bind_layout, METH_VARARGS,
     "bind(Connection, State.OPEN, ConnectionSettings, schedule_flush): record the layout."},
    {"fan_out", (PyCFunction)(void (*)(void))fan_out, METH_FASTCALL,
     "fan_out(recipients, frame, first, exclude, deliver) -> int: queue a broadcast's frame."},
    {"flush_each", flush_each, METH_O,
     "flush_each(due): one non-blocking send of each listed connection's queue."},
    {"parse_messages", (PyCFunction)(void (*)(void))parse_messages, METH_FASTCALL,
     "parse_messages(data, position, events, limit, frame_counts, wire_bytes) -> int: "
     "parse whole text and binary frames."},
    {"unmask_pieces", (PyCFunction)(void (*)(void))unmask_pieces, METH_FASTCALL,
     "unmask_pieces(pieces, start, mask) -> bytes: a frame's payload from its pieces, "
     "unmasked."},
    {"message_encoder", message_encoder, METH_O,
     "message_encoder(fallback) -> encode_message for the common case, fallback otherwise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fws._speedups",
    .m_doc = "The broadcast's fan-out and flush loops, the parser's common frame, the "
             "unmasking of large frames and the message encoder, in C (see fws/_accel.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
  str_to_flush = PyUnicode_InternFromString("to_flush");
  str_flusher = PyUnicode_InternFromString("flusher");
  str_flush = PyUnicode_InternFromString("_flush");
  str_start_writer = PyUnicode_InternFromString("_start_writer");
  str_append = PyUnicode_InternFromString("append");
  if (!str_to_flush || !str_flusher || !str_flush || !str_start_writer || !str_append)
    return NULL;
  PyObject *sockets = PyImport_ImportModule("_socket");
  if (sockets == NULL)
    return NULL;
  PyObject *type = PyObject_GetAttrString(sockets, "socket");
  Py_DECREF(sockets);
  if (type == NULL)
    return NULL;
  if (!PyType_Check(type)) {
    Py_DECREF(type);
    PyErr_SetString(PyExc_ImportError, "_socket.socket is not a type");
    return NULL;
  }
  socket_type = (PyTypeObject *)type;
  return PyModule_Create(&module);
}
