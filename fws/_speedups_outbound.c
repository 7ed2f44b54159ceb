/*
 * fws._speedups, outbound: Server.broadcast's fan-out, the flusher's sends,
 * and bind(), which records where Connection keeps what they use. The module
 * (fws/_speedups.c) documents each function; fws/outbound.py has the Python
 * loops they must agree with.
 */
#include "_speedups.h"

#include <structmember.h>

#include <errno.h>
#include <limits.h>
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

PyObject *speedups_bind(PyObject *Py_UNUSED(module), PyObject *args) {
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

PyObject *speedups_fan_out(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
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

PyObject *speedups_flush_each(PyObject *Py_UNUSED(module), PyObject *due) {
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

/* Interned attribute names and _socket.socket, once, at import. */
int speedups_outbound_init(void) {
  str_to_flush = PyUnicode_InternFromString("to_flush");
  str_flusher = PyUnicode_InternFromString("flusher");
  str_flush = PyUnicode_InternFromString("_flush");
  str_start_writer = PyUnicode_InternFromString("_start_writer");
  str_append = PyUnicode_InternFromString("append");
  if (!str_to_flush || !str_flusher || !str_flush || !str_start_writer || !str_append)
    return -1;
  PyObject *sockets = PyImport_ImportModule("_socket");
  if (sockets == NULL)
    return -1;
  PyObject *type = PyObject_GetAttrString(sockets, "socket");
  Py_DECREF(sockets);
  if (type == NULL)
    return -1;
  if (!PyType_Check(type)) {
    Py_DECREF(type);
    PyErr_SetString(PyExc_ImportError, "_socket.socket is not a type");
    return -1;
  }
  socket_type = (PyTypeObject *)type;
  return 0;
}
