/*
 * fws._speedups, outbound: Server.broadcast's fan-out, the flusher's sends
 * (of queues, and of a turn's deferred broadcasts; the system call itself is
 * fws/_speedups_send.c's), and bind(), which records where Connection keeps
 * what they use. The module
 * (fws/_speedups.c) documents each function; fws/outbound.py has the Python
 * loops they must agree with.
 */
#include "_speedups.h"

#include <structmember.h>

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

/* The queue's limit for ``settings`` in *limit_seen, read once for the
 * connections that share them (*settings_seen); 0 when not known here. */
static inline int limit_known(PyObject *settings, PyObject **settings_seen,
                              Py_ssize_t *limit_seen) {
  if (settings == *settings_seen)
    return 1;
  Py_ssize_t limit = outbound_limit(settings);
  if (limit == -2)
    return 0;
  Py_INCREF(settings);
  Py_XSETREF(*settings_seen, settings);
  *limit_seen = limit;
  return 1;
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

/* Whether connection id ``id`` is ``exclude`` (None: no one is): 1 it is, 0 not,
 * -1 not known here (not two exact str: Python's == decides). */
static inline int is_excluded(PyObject *id, PyObject *exclude) {
  if (exclude == Py_None)
    return 0;
  if (id == exclude)
    return 1;
  if (!PyUnicode_CheckExact(id) || !PyUnicode_CheckExact(exclude) || !PyUnicode_IS_READY(id) ||
      !PyUnicode_IS_READY(exclude))
    return -1;
  /* Hashed strings (ids are the keys of Server.users) with different hashes
   * differ: no memcmp for the 999 of 1000 recipients a broadcast does not skip. */
  Py_hash_t id_hash = ((PyASCIIObject *)id)->hash, exclude_hash = ((PyASCIIObject *)exclude)->hash;
  if (id_hash != -1 && exclude_hash != -1 && id_hash != exclude_hash)
    return 0;
  /* str == str, for two canonical strings: same length, kind and code units. */
  Py_ssize_t length = PyUnicode_GET_LENGTH(id);
  int kind = PyUnicode_KIND(id);
  return length == PyUnicode_GET_LENGTH(exclude) && kind == PyUnicode_KIND(exclude) &&
         memcmp(PyUnicode_DATA(id), PyUnicode_DATA(exclude), (size_t)length * (size_t)kind) == 0;
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
  int excluded = is_excluded(id, exclude);
  if (excluded)
    return excluded < 0 ? 2 : 0;
  if (SLOT(connection, off_deflate) != Py_None)
    return 2; /* compressed: encoded for it in Python (and NULL: unset) */
  PyObject *state = SLOT(connection, off_state);
  if (state != open_state)
    return state == NULL ? 2 : 0;
  PyObject *settings = SLOT(connection, off_settings);
  if (settings == NULL)
    return 2;
  if (!limit_known(settings, settings_seen, limit_seen))
    return 2;
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

/* One recipient of fan_out: queue_common, or ``deliver(connection)`` for any
 * other case; how many it was queued for (0 or 1, or what ``deliver``
 * returned), -1 on an error. */
static Py_ssize_t deliver_one(PyObject *connection, PyObject *frame, long first,
                              PyObject *exclude, PyObject *deliver, PyObject **settings_seen,
                              Py_ssize_t *limit_seen) {
  int queued = queue_common(connection, frame, first, exclude, settings_seen, limit_seen);
  if (queued != 2)
    return queued;
  PyObject *result = PyObject_CallOneArg(deliver, connection);
  if (result == NULL)
    return -1;
  Py_ssize_t counted = PyLong_AsSsize_t(result);
  Py_DECREF(result);
  return counted == -1 && PyErr_Occurred() ? -1 : counted;
}

/* Whether an entry point may run: ``nargs`` is ``wanted`` (else TypeError with
 * ``usage``) and bind() was called (else RuntimeError). */
static int ready_to_run(Py_ssize_t nargs, Py_ssize_t wanted, const char *usage) {
  if (nargs != wanted) {
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", usage, wanted);
    return 0;
  }
  if (connection_type == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "fws._speedups.bind() was not called");
    return 0;
  }
  return 1;
}

PyObject *speedups_fan_out(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
  if (!ready_to_run(nargs, 5, "fan_out(recipients, frame, first, exclude, deliver)"))
    return NULL;
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
    Py_ssize_t queued =
        deliver_one(connection, frame, first, exclude, deliver, &settings_seen, &limit_seen);
    Py_DECREF(connection);
    if (queued < 0) {
      Py_XDECREF(settings_seen);
      Py_DECREF(recipients);
      return NULL;
    }
    sent += queued;
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

/*
 * The descriptor of ``connection``'s plain socket, in *fd (-1: closed; the
 * writer's send fails and reports it): 1; 0 when Python must send (TLS: no
 * plain socket, an unset slot, a socket of another type, one replaced while
 * fileno() ran). fileno() is a method call, and Python code (a socket
 * subclass's fileno) may change the queue or the slots, so every other slot
 * is read after this.
 */
static int plain_socket_fd(PyObject *connection, int *fd) {
  PyObject *raw = SLOT(connection, off_raw_socket);
  if (raw == NULL || raw == Py_None || !PyObject_TypeCheck(raw, socket_type))
    return 0;
  Py_INCREF(raw);
  *fd = PyObject_AsFileDescriptor(raw);
  if (*fd < 0)
    PyErr_Clear();
  int replaced = SLOT(connection, off_raw_socket) != raw;
  Py_DECREF(raw);
  return !replaced;
}

/* After a send of ``send`` that took ``sent`` bytes: the queue emptied of its
 * first ``emptied`` frames, the counters moved (``queued``: _outbox_bytes
 * with the send's new frames; ``messages``: messages_out with them), and
 * what is left queued as one frame for a writer greenlet. */
static int after_send(PyObject *connection, PyObject *outbox, Py_ssize_t emptied,
                      const Gather *out, Py_ssize_t sent, Py_ssize_t queued, Py_ssize_t written,
                      Py_ssize_t messages) {
  PyObject *rest = NULL;
  if (sent < out->bytes) {
    /* The last frame whole, as it is: a large payload is not copied again. */
    PyObject *last = emptied ? PyList_GET_ITEM(outbox, emptied - 1) : NULL;
    if (last != NULL && out->bytes - sent == PyBytes_GET_SIZE(last) && gather_ends_with(out, last)) {
      rest = last;
      Py_INCREF(rest);
    } else if ((rest = gather_rest(out, sent)) == NULL)
      return -1;
  }
  if ((emptied && PyList_SetSlice(outbox, 0, emptied, NULL) < 0) ||
      slot_set_size(connection, off_outbox_bytes, queued - sent) < 0 ||
      slot_set_size(connection, off_bytes_out, written + sent) < 0 ||
      (messages >= 0 && slot_set_size(connection, off_messages_out, messages) < 0)) {
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

/* Connection._flush for one connection; -1 when Python code it called raised. */
static int flush_one(PyObject *connection) {
  if (!Py_IS_TYPE(connection, connection_type) || !layout_intact())
    return call_method(connection, str_flush);
  /* _flush_due first, as _flush; then the descriptor. */
  Py_INCREF(Py_False);
  slot_set(connection, off_flush_due, Py_False);
  int fd = -1;
  if (!plain_socket_fd(connection, &fd))
    return call_method(connection, str_flush); /* _flush starts the writer, or sends */
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
  if (close_queued != Py_False)
    return call_method(connection, str_flush); /* a close: _flush decides who sends it */
  Gather out = {0};
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *frame = PyList_GET_ITEM(outbox, i);
    if (!PyBytes_CheckExact(frame) || !gather_add(&out, frame))
      return call_method(connection, str_flush); /* not bytes; or a long queue */
  }
  Py_ssize_t unused;
  if (!add_fits(written, out.bytes, &unused) || !add_fits(queued, -out.bytes, &unused))
    return call_method(connection, str_flush); /* counters too large for C */
  Py_ssize_t sent = fd >= 0 ? gather_send(&out, fd) : 0;
  return after_send(connection, outbox, count, &out, sent, queued, written, -1);
}

/* A deferred broadcast, as send_broadcasts reads it from its 4-tuple. */
typedef struct {
  PyObject *frame; /* exact bytes */
  long first;
  PyObject *exclude; /* a connection id, or None */
  PyObject *deliver; /* fan_out's ``deliver`` for it */
} Deferred;

/*
 * ``connection``'s queue and every deferred broadcast not excluded for it, in
 * one non-blocking send: what fan_out's queue_common and flush_one would do
 * one after the other, without queueing. 1 done; 2 not the common case
 * (nothing changed: the caller queues each broadcast as fan_out does); -1
 * an error.
 */
static int send_with_broadcasts(PyObject *connection, const Deferred *deferred, Py_ssize_t count,
                                PyObject **settings_seen, Py_ssize_t *limit_seen) {
  if (!Py_IS_TYPE(connection, connection_type) || !layout_intact())
    return 2;
  int fd = -1;
  if (!plain_socket_fd(connection, &fd) || fd < 0)
    return 2;
  PyObject *id = SLOT(connection, off_id);
  PyObject *outbox = SLOT(connection, off_outbox);
  PyObject *flush_due = SLOT(connection, off_flush_due);
  PyObject *counts = SLOT(connection, off_sent_counts);
  PyObject *settings = SLOT(connection, off_settings);
  Py_ssize_t queued, messages, written, run_first = -1;
  if (id == NULL || SLOT(connection, off_deflate) != Py_None ||
      SLOT(connection, off_state) != open_state || SLOT(connection, off_opening) != Py_None ||
      SLOT(connection, off_writer) != Py_None || SLOT(connection, off_close_queued) != Py_False ||
      (flush_due != Py_True && flush_due != Py_False) || outbox == NULL ||
      !PyList_CheckExact(outbox) || counts == NULL || settings == NULL ||
      !slot_size(connection, off_outbox_bytes, &queued) ||
      !slot_size(connection, off_messages_out, &messages) ||
      !slot_size(connection, off_bytes_out, &written) ||
      (counts != Py_None && !slot_size(connection, off_run_first, &run_first)))
    return 2;
  if (!limit_known(settings, settings_seen, limit_seen))
    return 2;
  Gather out = {0};
  Py_ssize_t emptied = PyList_GET_SIZE(outbox);
  for (Py_ssize_t i = 0; i < emptied; i++) {
    PyObject *frame = PyList_GET_ITEM(outbox, i);
    if (!PyBytes_CheckExact(frame) || !gather_add(&out, frame))
      return 2;
  }
  Py_ssize_t after = queued, delivered = 0;
  for (Py_ssize_t i = 0; i < count; i++) {
    int excluded = is_excluded(id, deferred[i].exclude);
    if (excluded > 0)
      continue;
    if (excluded < 0 || (counts != Py_None && deferred[i].first != run_first))
      return 2; /* Python's == decides; a new metrics run */
    Py_ssize_t size = PyBytes_GET_SIZE(deferred[i].frame);
    if (*limit_seen >= 0 && after && after + size > *limit_seen)
      return 2; /* too slow: Python closes it */
    if (!add_fits(after, size, &after) || !gather_add(&out, deferred[i].frame))
      return 2;
    delivered++;
  }
  Py_ssize_t unused;
  if (!add_fits(written, out.bytes, &unused) || !add_fits(messages, delivered, &unused))
    return 2; /* counters too large for C */
  Py_INCREF(Py_False);
  slot_set(connection, off_flush_due, Py_False);
  if (out.bytes == 0)
    return 1;
  Py_ssize_t sent = gather_send(&out, fd);
  return after_send(connection, outbox, emptied, &out, sent, after, written,
                    messages + delivered) < 0
             ? -1
             : 1;
}

PyObject *speedups_send_broadcasts(PyObject *Py_UNUSED(module), PyObject *const *args,
                                   Py_ssize_t nargs) {
  if (!ready_to_run(nargs, 2, "send_broadcasts(connections, broadcasts)"))
    return NULL;
  /* A tuple of tuples: what Python code run meanwhile does cannot change them. */
  PyObject *broadcasts = PySequence_Tuple(args[1]);
  if (broadcasts == NULL)
    return NULL;
  Py_ssize_t count = PyTuple_GET_SIZE(broadcasts);
  Deferred *deferred = PyMem_New(Deferred, (size_t)(count ? count : 1));
  if (deferred == NULL) {
    Py_DECREF(broadcasts);
    return PyErr_NoMemory();
  }
  PyObject *connections = NULL, *settings_seen = NULL;
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *item = PyTuple_GET_ITEM(broadcasts, i);
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 4 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0)) ||
        PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0)) == 0) {
      PyErr_SetString(PyExc_TypeError,
                      "each broadcast is a tuple (frame, first, exclude, deliver)");
      goto done;
    }
    deferred[i].frame = PyTuple_GET_ITEM(item, 0);
    deferred[i].first = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
    if (deferred[i].first == -1 && PyErr_Occurred())
      goto done;
    deferred[i].exclude = PyTuple_GET_ITEM(item, 2);
    deferred[i].deliver = PyTuple_GET_ITEM(item, 3);
  }
  connections = PySequence_Fast(args[0], "connections must be a sequence");
  if (connections == NULL)
    goto done;
  Py_ssize_t limit_seen = -1;
  int failed = 0;
  for (Py_ssize_t i = 0; !failed && i < PySequence_Fast_GET_SIZE(connections); i++) {
    PyObject *connection = PySequence_Fast_GET_ITEM(connections, i);
    Py_INCREF(connection);
    int done = send_with_broadcasts(connection, deferred, count, &settings_seen, &limit_seen);
    failed = done < 0;
    for (Py_ssize_t k = 0; !failed && done == 2 && k < count; k++)
      failed = deliver_one(connection, deferred[k].frame, deferred[k].first, deferred[k].exclude,
                           deferred[k].deliver, &settings_seen, &limit_seen) < 0;
    Py_DECREF(connection);
  }
  if (failed)
    Py_CLEAR(connections);
done:
  PyMem_Free(deferred);
  Py_DECREF(broadcasts);
  Py_XDECREF(settings_seen);
  if (connections == NULL)
    return NULL;
  Py_DECREF(connections);
  Py_RETURN_NONE;
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
