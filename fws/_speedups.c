/*
 * fws._speedups: the broadcast's two hot loops, the parser's common frame, the
 * unmasking of large frames and the encoding of a message in C, for CPython.
 * This file is the module; the code is in fws/_speedups_outbound.c (fan_out,
 * flush_each, send_broadcasts, bind), fws/_speedups_send.c (their system
 * call) and fws/_speedups_frames.c (parse_messages, unmask_pieces,
 * message_encoder), which share fws/_speedups.h.
 *
 * Optional: setup.py builds it when it can, and fws/_accel.py falls back to
 * the pure-Python code of fws/outbound.py (_pure_fan_out, _pure_flush_each,
 * _pure_send_broadcasts)
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
 *     ``due``: one non-blocking send of its queued frames (small ones copied
 *     side by side, large ones an iovec each: fws/_speedups_send.c). What
 *     would block, a partial or failed send, TLS and a queued close go back
 *     to Python (``_start_writer``, ``_flush``). When one raises (a bug),
 *     ``due`` is left holding the connections not yet flushed, as the pure
 *     loop leaves it.
 *
 * send_broadcasts(connections, broadcasts) -> None
 *     The flusher's send of a turn's deferred broadcasts (fws.outbound.
 *     defer_broadcast): ``broadcasts`` is a list of (frame, first, exclude,
 *     deliver), fan_out's arguments but the recipients. For each connection
 *     in the common case (fan_out's, with no writer running, no close
 *     queued and a plain socket), its queue and every broadcast not
 *     excluded for it go in one non-blocking send, never queued: what
 *     fan_out then flush_each would do, with one visit to the connection
 *     instead of one per broadcast. Any other connection gets each
 *     broadcast as fan_out gives it (queue_common, or ``deliver``), listed
 *     for the flusher.
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
 * unmask_pieces(pieces, start, mask) -> bytes
 *     The payload of a frame received in pieces (a list of bytes and
 *     bytearrays, the first holding the header), from ``start`` on, unmasked
 *     with the 4-byte ``mask`` in one pass: FrameParser's join-then-unmask
 *     for a large frame, with one copy less.
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
#include "_speedups.h"

static PyMethodDef methods[] = {
    {"bind", speedups_bind, METH_VARARGS,
     "bind(Connection, State.OPEN, ConnectionSettings, schedule_flush): record the layout."},
    {"fan_out", (PyCFunction)(void (*)(void))speedups_fan_out, METH_FASTCALL,
     "fan_out(recipients, frame, first, exclude, deliver) -> int: queue a broadcast's frame."},
    {"flush_each", speedups_flush_each, METH_O,
     "flush_each(due): one non-blocking send of each listed connection's queue."},
    {"send_broadcasts", (PyCFunction)(void (*)(void))speedups_send_broadcasts, METH_FASTCALL,
     "send_broadcasts(connections, broadcasts): deferred broadcasts, straight to each socket."},
    {"parse_messages", (PyCFunction)(void (*)(void))speedups_parse_messages, METH_FASTCALL,
     "parse_messages(data, position, events, limit, frame_counts, wire_bytes) -> int: "
     "parse whole text and binary frames."},
    {"unmask_pieces", (PyCFunction)(void (*)(void))speedups_unmask_pieces, METH_FASTCALL,
     "unmask_pieces(pieces, start, mask) -> bytes: a frame's payload from its pieces, "
     "unmasked."},
    {"message_encoder", speedups_message_encoder, METH_O,
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
  if (speedups_outbound_init() < 0)
    return NULL;
  return PyModule_Create(&module);
}
