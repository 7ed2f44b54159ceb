"""What a connection sends: its outbound queue, the flusher that writes it, and its writer.

Frames are queued, never written by the greenlet that sends them: other
connections' greenlets only ever append to a connection's queue, so sending
never blocks the sender and two greenlets never write to one socket (gevent
raises ``ConcurrentObjectUseError`` if they do). The flusher, a callback the
hub runs, writes every queue with frames since its last turn in one
non-blocking send each; what a socket cannot take at once goes to a writer
greenlet of that connection's own, started on demand.

``Outbound`` is the sending half of ``fws.connection.Connection``, which
holds the state (its slots). The broadcast's hot loops are here in pure
Python too: ``fws._speedups`` does the same in C when it is built (see
``fws._accel``), reading those slots, and the loops here are the reference
the compiled ones must agree with.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import gevent

from . import _accel
from .connection_state import ConnectionState
from .datatypes import State
from .frames import OP_BINARY, frame_header

if TYPE_CHECKING:
    from .connection import Connection
    from .context import ConnectionTable

__all__ = [
    "UNCOPIED_PAYLOAD",
    "Deferred",
    "Outbound",
    "WrongThreadError",
    "check_thread",
    "defer_broadcast",
    "deliver_deferred",
    "fan_out",
]

log = logging.getLogger("fws.connection")

UNCOPIED_PAYLOAD = 16384
"""A binary message at least this large is queued behind a header of its own, uncopied:
past this size a copy costs more than the send's extra iovec."""

_OPEN = State.OPEN
"""For the per-message paths: on Python 3.11, ``State.OPEN`` goes through the
``__getattr__`` hook of Enum's metaclass, about 80 ns a read; a global, 8."""


Deferred = tuple[bytes, int, "str | None", "Callable[[Connection], bool]"]
"""A broadcast to every connection not queued yet: ``fan_out``'s arguments but the recipients."""


def defer_broadcast(
    table: ConnectionTable,
    frame: bytes,
    first: int,
    exclude: str | None,
    deliver: Callable[[Connection], bool],
) -> None:
    """Leave a broadcast to every connection to the flusher, which sends it with each queue.

    Queueing a 66-byte frame for 1,000 connections, sixteen times a turn,
    cost more than the sends: an append, two new ints and the cache lines of
    every connection, per delivery. The flusher instead visits each
    connection once, gathers every broadcast due to it behind its queue and
    sends all in one call (``fws._speedups.send_broadcasts``; the pure-Python
    flusher queues them first, ``deliver_deferred``).

    Nothing may overtake a deferred broadcast: whatever is queued for a
    connection, or changes which connections it reaches (one opening, one
    closing), first queues every deferred broadcast (``deliver_deferred``).
    """
    if table.flusher is None:  # scheduled first: it checks the thread before anything waits
        after_input = table.after_input
        if after_input is None:
            _schedule_flush(table)
        elif not after_input.pending:
            check_thread(table)
            after_input.start()
            table.stats.broadcast_waits += 1
        elif after_input.overdue():  # a hub kept busy by callbacks: libev never polled
            _schedule_flush(table)
            table.stats.broadcast_waits_bounded += 1
    table.deferred.append((frame, first, exclude, deliver))


def flush_after_input(table: ConnectionTable, bounded: bool = False) -> None:
    """The flusher, when the hub has read what arrived (``fws.after_input``) and none is due.

    Deferred broadcasts wait for it, so that a burst of messages from a
    sender leaves in one send per connection; anything else queued in the
    meantime schedules the flusher at once, which sends them too. ``bounded``:
    the wait ran out with the hub never idle (counted for the metrics).
    """
    if table.flusher is None and (table.deferred or table.to_flush):
        if bounded:
            table.stats.broadcast_waits_bounded += 1
        table.flusher = True  # what _queue checks: running, do not schedule another
        _flush_connections(table)


def deliver_deferred(table: ConnectionTable) -> None:
    """Queue the deferred broadcasts now, for the connections open now, in order.

    Whoever queues something for a connection calls it, so an error in one
    broadcast's delivery (a bug, or no memory to compress) is logged here,
    not raised into that unrelated caller.
    """
    deferred, table.deferred = table.deferred, []
    recipients = tuple(table.users.values())
    for frame, first, exclude, deliver in deferred:
        try:
            fan_out(recipients, frame, first, exclude, deliver)
        except Exception:
            log.exception("a broadcast could not be queued for every connection")


def _send_deferred(table: ConnectionTable) -> None:
    deferred, table.deferred = table.deferred, []
    try:
        _send_broadcasts(list(table.users.values()), deferred)
    except Exception:
        log.exception("the turn's broadcasts could not be sent to every connection")


WRONG_THREAD = (
    "fws sends from the thread that started the server (its gevent hub runs the "
    "flusher); from another thread or process, publish through the storage "
    "(fws.storage.redis.publisher) or hand the message to the server's thread"
)


class WrongThreadError(RuntimeError):
    """Something was sent from a thread other than the server's."""


def check_thread(table: ConnectionTable) -> None:
    """Refuse to queue from another thread: its hub would never run the flusher.

    Frames queued there were never sent, and every later frame for the same
    connections waited behind them; a deferred broadcast stopped the
    flusher for the whole server.
    """
    if table.hub is not None and gevent.get_hub() is not table.hub:
        raise WrongThreadError(WRONG_THREAD)


def _schedule_flush(table: ConnectionTable) -> None:
    check_thread(table)
    table.flusher = gevent.get_hub().loop.run_callback(_flush_connections, table)


def _flush_connections(table: ConnectionTable) -> None:
    """The flusher: write every connection with frames queued since the hub's last turn.

    A callback the hub runs, not a greenlet: a broadcast to 1,000 clients
    costs 1,000 non-blocking sends and no greenlet at all, and an echo leaves
    without a greenlet created and switched to (in process, a round trip took
    42 µs with a flusher greenlet, 24 µs with this callback). Nothing here may
    block or switch: sends are non-blocking, and whatever would wait goes to
    a writer greenlet.
    """
    due: list[Outbound] = []
    try:
        while table.to_flush or table.deferred:
            if table.deferred:
                _send_deferred(table)  # what it cannot send, it queues: in to_flush
            due, table.to_flush = table.to_flush, []
            _flush_each(due)  # leaves in due only what it did not flush
    finally:
        table.flusher = None
        if due:  # a bug raised in _flush: the others still get their turn
            table.to_flush.extend(due)
        if table.to_flush or table.deferred:
            _schedule_flush(table)


class Outbound(ConnectionState):
    """The sending half of ``Connection``: queueing, counting, flushing and the writer.

    A mixin with no slots of its own: ``ConnectionState`` declares them, and
    ``Connection.__init__`` sets them.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # what it calls of the other half and of Connection

        def _cut(self, why: str, reason: str) -> None: ...
        def _abort_transport(self) -> None: ...

    def _send_uncopied(self, payload: bytes) -> bool:
        """Queue a large binary message as its header and then the payload itself.

        Copying a megabyte behind its header cost a tenth of a 1 MiB echo;
        the compiled flusher sends both from where they are (``sendmsg``, an
        iovec each) when the socket takes them whole. The pure-Python flush and
        the writer greenlet join the queue first, and a partial send copies
        what is left: those paths copy the payload once, as before.
        """
        # Connection.send, its only caller, has queued the deferred broadcasts.
        header = frame_header(OP_BINARY, len(payload))
        if not self._has_room(len(header) + len(payload)):
            return False
        if self._sent_counts is not None and header[0] != self._run_first:
            self._new_sent_run(header[0])
        self._queue(header)
        self._queue(payload)
        self.messages_out += 1
        return True

    def send_frame(self, frame: bytes, *, message: bool = True) -> bool:
        """Queue an already encoded frame (a broadcast encodes once for everyone).

        ``message=False``: a control frame (a pong), not a message for the
        end-of-connection line.
        """
        if message:
            return self.send_message_frame(frame, frame[0])
        if not self._has_room(len(frame)):
            return False
        self._queue_counted(frame)
        return True

    def send_message_frame(self, frame: bytes, first: int) -> bool:
        """Queue an encoded message frame whose first byte is ``first``: the hot path.

        ``Server.broadcast`` reads ``first`` once for every recipient, so that
        counting messages for metrics costs a delivery one comparison.
        ``fws/_speedups_outbound.c`` (``queue_common``) does this and ``_queue`` in C
        for a broadcast's common case: a change here belongs there too.
        """
        if self.table.deferred:  # they go first
            deliver_deferred(self.table)
        # _has_room's test, inlined: a method call per delivery would cost more
        # than everything metrics add to it.
        if self.state is not _OPEN:
            return False
        limit = self.settings.max_outbound_bytes
        if limit is not None and self._outbox_bytes and self._outbox_bytes + len(frame) > limit:
            self._close_too_slow()
            return False
        if self._sent_counts is not None and first != self._run_first:
            self._new_sent_run(first)
        self._queue(frame)
        self.messages_out += 1
        return True

    def _has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes may be queued; a client too slow for them is closed."""
        if self.state is not _OPEN:
            return False
        limit = self.settings.max_outbound_bytes
        if limit is not None and self._outbox_bytes and self._outbox_bytes + size > limit:
            self._close_too_slow()
            return False
        return True

    def _close_too_slow(self) -> None:
        log.warning(
            "connection %s: client too slow, %d bytes waiting; closing it",
            self.id,
            self._outbox_bytes,
        )
        self._cut("slow_client", "client too slow: outbound queue full")

    def flush_sent_counts(self) -> None:
        """Add the messages sent since the last count to the metrics (each metrics flush)."""
        self._new_sent_run(self._run_first)

    def _new_sent_run(self, first: int = -1) -> None:
        """Count the run of sent messages so far; the next run's frames start with ``first``.

        ``-1``: no run until the next message (a control frame is queued, or
        the connection ends).
        """
        sent = self._sent_counts
        if sent is None:
            return
        queued = self.bytes_out + self._outbox_bytes
        if self._run_first >= 0:
            opcode = self._run_first & 0x0F
            sent[opcode] += self.messages_out - self._run_messages
            self._sent_bytes[opcode] += queued - self._run_queued
        self._run_first, self._run_messages, self._run_queued = first, self.messages_out, queued

    def _queue_counted(self, frame: bytes) -> None:
        """Queue a control frame of our own (ping, pong, close) and count it."""
        if self.table.deferred:
            deliver_deferred(self.table)
        self._new_sent_run()  # a run's bytes are its messages' only
        self._queue(frame)
        self.table.stats.count_sent(frame)

    def _queue(self, frame: bytes) -> None:
        if self.table.flusher is None:  # the turn's first frame: from the right thread?
            check_thread(self.table)  # before the frame is queued, not after
        self._outbox_bytes += len(frame)
        if self._opening is not None:
            opener, held = self._opening
            # The open pipeline's frames go first; the writer waits for its end.
            (self._outbox if gevent.getcurrent() is opener else held).append(frame)
            return
        self._outbox.append(frame)
        if self._writer is None and not self._flush_due:
            # The flusher runs on the hub's next turn, so every frame queued
            # until then (a whole batch of echoes, say) leaves in one send, and
            # one greenlet writes for every connection a broadcast reached.
            self._flush_due = True
            table = self.table
            table.to_flush.append(self)
            if table.flusher is None:
                _schedule_flush(table)

    def _flush(self) -> None:
        """Send the queue in one non-blocking call (in the hub); a writer takes the rest.

        A write that would block (a slow client, a full socket buffer) is left
        to a writer greenlet of this connection's own, which waits for the
        socket; so is a failed write, which the writer reports (logging is no
        job for the hub). Over TLS, and for a close after a protocol error
        (the writer then shuts our side down), the writer does it all.
        ``fws/_speedups_outbound.c`` (``flush_one``) does the same in C, and
        leaves a queued close to this method: a change here belongs there too.
        """
        self._flush_due = False
        outbox = self._outbox
        if self._writer is not None or not outbox:
            return
        raw = self._raw_socket
        failed_close = self._close_queued and self._failed
        if raw is None or failed_close or not self._send_queued(raw):
            self._start_writer()

    def _send_queued(self, raw: socket.socket) -> bool:
        """Send the whole queue in one non-blocking call; True if the socket took it all.

        What it did not take stays queued, as one frame, for a writer, which
        also reports a failed send (a reset): never waits, so the hub may call it.
        """
        outbox = self._outbox
        chunk = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        try:
            sent = raw.send(chunk)
        except OSError:  # would block, or failed: the writer waits, or reports it
            sent = 0
        self._outbox_bytes -= sent
        self.bytes_out += sent
        if sent < len(chunk):
            outbox.append(chunk[sent:])  # nothing was queued meanwhile: no yield since clear
            return False
        return True

    def _start_writer(self) -> None:
        """Leave the queue to a writer greenlet (the compiled flusher calls this too)."""
        self._writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        """Writer greenlet: send everything queued, many frames per system call.

        It exits when the queue is empty, so an idle connection holds no writer.
        """
        assert self._socket is not None
        outbox = self._outbox
        raw = self._raw_socket
        try:
            while outbox:
                chunk = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                if raw is None:  # TLS: gevent's socket encrypts and waits
                    self._socket.sendall(chunk)
                else:
                    self._send_all(raw, chunk)
                self._outbox_bytes -= len(chunk)
                self.bytes_out += len(chunk)
            if self._close_queued and self._failed:
                # After a protocol error the client's close reply cannot be parsed
                # out of the broken stream; end our side instead, so the client
                # sees EOF at once rather than waiting for close_timeout.
                self._socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.debug("connection %s: write failed: %s", self.id, exc)
            self._abort_transport()
        finally:
            self._writer = None

    def _send_all(self, raw: socket.socket, chunk: bytes) -> None:
        """Send all of ``chunk`` on the plain socket, waiting for room as gevent's sendall does.

        The connection's own write watcher, made on its first wait: a client
        upgraded at the accept has no gevent socket object (and its watchers)
        to wait on, and most connections never wait to write at all.
        """
        view = memoryview(chunk)
        while view:
            try:
                sent = raw.send(view)
            except BlockingIOError:
                hub = gevent.get_hub()
                watcher = self._write_watcher
                if watcher is None:
                    watcher = self._write_watcher = hub.loop.io(raw.fileno(), 2)
                hub.wait(watcher)
                continue
            view = view[sent:]


# -- the broadcast's hot loops --------------------------------------------------
# Pure Python here; fws._speedups does the same in C when it is built (see
# fws._accel). These two are the reference: the compiled ones must agree.


def _pure_fan_out(
    recipients: Sequence[Connection | None],
    frame: bytes,
    first: int,
    exclude: str | None,
    deliver: Callable[[Connection], bool],
) -> int:
    """Queue ``frame`` (first byte ``first``) for each recipient; how many it was queued for.

    ``None`` entries (ids not connected here) and the connection whose id is
    ``exclude`` are skipped. ``deliver`` queues for one recipient whatever
    its case: here it gets the compressed ones, which need a frame of their
    own; the compiled loop also hands it every recipient that is not the
    common case (the slow-client limit, a new metrics run, ``_opening``).
    """
    sent = 0
    for connection in recipients:
        if connection is None or connection.id == exclude:
            continue
        if connection.deflate is None:
            sent += connection.send_message_frame(frame, first)
        else:
            sent += deliver(connection)
    return sent


def _pure_flush_each(due: list[Outbound]) -> None:
    """``_flush`` each connection of ``due``; ``due`` keeps only the ones not flushed.

    Empty when it returns; after a ``_flush`` raised (a bug), the flusher
    gives the rest their turn on the hub's next turn.
    """
    done = 0
    try:
        for connection in due:
            done += 1
            connection._flush()
    finally:
        del due[:done]


def _pure_send_broadcasts(connections: list[Connection], deferred: list[Deferred]) -> None:
    """Queue each deferred broadcast for ``connections``; the flusher then sends the queues.

    The compiled one sends each connection's queue and broadcasts at once,
    in one call, and queues only for the connections not in the common case
    (``fan_out``'s, with no writer running and no close queued).
    """
    for frame, first, exclude, deliver in deferred:
        _pure_fan_out(connections, frame, first, exclude, deliver)


if _accel.speedups is not None:
    fan_out: Callable[
        [Sequence[Connection | None], bytes, int, str | None, Callable[[Connection], bool]], int
    ] = _accel.speedups.fan_out
    _flush_each: Callable[[list[Outbound]], None] = _accel.speedups.flush_each
    _send_broadcasts: Callable[[list[Connection], list[Deferred]], None] = (
        _accel.speedups.send_broadcasts
    )
else:
    fan_out = _pure_fan_out
    _flush_each = _pure_flush_each
    _send_broadcasts = _pure_send_broadcasts
