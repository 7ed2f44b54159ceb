"""One client connection: the object filters receive as ``web_socket_instance``.

This is the only module that touches client sockets and the only one that
imports gevent-websocket. gevent-websocket's handler performs the HTTP
upgrade inside gevent's pywsgi; after the 101 response fws's own frame layer
(``fws.frames``) takes over the socket, so that it can see the raw bytes for
the data event, enforce limits from frame headers and answer closes correctly.

A connection is served by a greenlet of its own while it is active, and by
none while it is idle. Its reader greenlet reads and runs the pipelines; once
it has waited ``PARK_AFTER`` seconds for more, the server's watch greenlet
ends it and the connection waits on a libev watcher instead, whose next
readiness starts a new reader. A greenlet blocked in recv costs about 7 kB on
CPython 3.11 (its saved C stack and a page of Python frame stack), more than
everything else an idle connection holds. At most one reader runs per
connection, so its events stay in order, and a filter that blocks blocks only
its own connection.

A writer greenlet, also started on demand, drains the connection's outbound
queue. Other connections' greenlets only ever append to that queue, so sending
never blocks the sender and two greenlets never write to one socket (gevent
raises ``ConcurrentObjectUseError`` if they do).
"""

from __future__ import annotations

import enum
import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
import gevent.ssl

from . import _accel
from .context import READ_SIZE, ConnectionSettings, ConnectionTable
from .datatypes import CloseInfo, Request, TextMessage
from .deflate import PerMessageDeflate
from .errors import ProtocolError
from .escape import format_peer, printable
from .frames import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    Close,
    FrameParser,
    Ping,
    Pong,
    encode_close,
    encode_frame,
    encode_message,
    frame_header,
    is_valid_close_code,
    text_if_utf8,
)
from .groups import check_group_name

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Connection"]

log = logging.getLogger("fws.connection")

PARK_AFTER = 1.0
"""Seconds a reader waits for more before it may give way to a watcher (see park_if_quiet)."""


FRAME_BUDGET = 1024
"""Frames a reader parses before it lets the hub run other connections and timers."""

_FIRST_READ = 16384
"""Bytes a burst's first read may take, before the reader has seen how large the frames are."""

_MIN_READ = 4096

UNCOPIED_PAYLOAD = 16384
"""A binary message at least this large is queued behind a header of its own, uncopied:
past this size a copy costs more than the send's extra iovec."""

_YIELD = 1e-6
"""A sleep this long ends the hub's run of callbacks: it polls I/O and fires timers.

libev starts the timer from the time it cached before this reader ran, so it
is already due when the hub next polls: the poll does not block."""

_NO_GROUPS: frozenset[str] = frozenset()
"""Shared by every connection in no group (each empty frozenset() would be its own object)."""


class _Park(Exception):
    """Thrown into a reader that waits for data, to end it in favour of a watcher."""


_KEEPALIVE_PING = encode_frame(OP_PING, b"fws")


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN = State.OPEN
"""For the per-message paths: on Python 3.11, ``State.OPEN`` goes through the
``__getattr__`` hook of Enum's metaclass, about 80 ns a read; a global, 8."""


def _schedule_flush(table: ConnectionTable) -> None:
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
    due: list[Connection] = []
    try:
        while table.to_flush:
            due, table.to_flush = table.to_flush, []
            _flush_each(due)  # leaves in due only what it did not flush
    finally:
        table.flusher = None
        if due:  # a bug raised in _flush: the others still get their turn
            table.to_flush.extend(due)
            _schedule_flush(table)


class Connection:
    """A WebSocket client, with the seed's surface (``id``, ``users``, ``sendMessage``...).

    Filters may set attributes of their own on it, as the seed's did.
    """

    # Slots keep an idle connection small; __dict__ stays for filters' own attributes.
    __slots__ = (
        "id",
        "server",
        "settings",
        "table",
        "request",
        "token",
        "state",
        "close_info",
        "_socket",
        "_parser",
        "_watcher",
        "_reader",
        "_in_recv",
        "_last_read_at",
        "_outbox",
        "_outbox_bytes",
        "_close_queued",
        "_failed",
        "_close_received",
        "_writer",
        "_flush_due",
        "_raw_socket",
        "_close_timer",
        "_last_message_at",
        "_last_ping_at",
        "_awaiting_pong",
        "_rate_due",
        "_opening",
        "_deadline",
        "claims",
        "user",
        "subprotocol",
        "deflate",
        "_response_headers",
        "_groups",
        "opened_at",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "_client_closed_first",
        "_sent_counts",
        "_sent_bytes",
        "_run_first",
        "_run_messages",
        "_run_queued",
        "__dict__",
        "__weakref__",
    )

    def __init__(
        self,
        request: Request,
        settings: ConnectionSettings,
        table: ConnectionTable,
        server: Server | None = None,
    ) -> None:
        self.id: str = str(uuid.uuid4())
        self.request = request
        self.settings = settings
        self.table = table
        self.server = server
        """The server, for filters (the seed's reached it this way); fws reads the table."""
        self.token: str | None = None
        """The group joined with ``token:NAME`` (``broadcast_messages_by_token``); see ``join``."""
        self.state = State.CONNECTING
        self.close_info: CloseInfo | None = None
        self._socket: socket.socket | None = None
        self._parser: FrameParser | None = None
        self._watcher: Any = None  # libev read watcher while the connection is parked
        self._reader: gevent.Greenlet | None = None
        self._in_recv = False  # the reader waits for data, and only there
        self._last_read_at = 0.0
        self._outbox: list[bytes] = []  # a list: an empty deque costs 600 bytes
        self._outbox_bytes = 0
        self._close_queued = False
        self._failed = False  # a protocol error ended the frame stream
        self._close_received = False
        self._writer: gevent.Greenlet | None = None
        """A greenlet writing for this connection: one that waits for a slow client."""
        self._flush_due = False
        """Queued in the table's ``to_flush``: the flusher writes this connection's queue."""
        self._raw_socket: socket.socket | None = None
        """The plain socket under a TCP connection's gevent socket (None over TLS):
        the flusher sends on it without blocking, in its own greenlet."""
        self._close_timer: gevent.Greenlet | None = None
        self._last_message_at = self._last_ping_at = time.monotonic()
        self._awaiting_pong = False
        self._rate_due = 0.0  # the rate limit's theoretical arrival time (see _over_rate)
        # While open() runs (storage registration, the open pipeline): the greenlet
        # running it, and the frames other greenlets queued meanwhile, held back.
        self._opening: tuple[Any, list[bytes]] | None = None
        self._deadline: Any = None  # libev timer of close_after, if one was set
        self.claims: dict[str, Any] | None = None
        """The verified token's claims, set by ``jwt_auth`` (or any connect filter)."""
        self.user: str | None = None
        """Who the client is: ``jwt_auth`` sets the token's ``sub`` here."""
        self.subprotocol: str | None = None
        """The subprotocol the 101 response names; a connect filter may choose one the
        client offered (``request.subprotocols``). ``--subprotocol`` preselects it."""
        self.deflate: PerMessageDeflate | None = None
        """The permessage-deflate codec, when the handshake negotiated one."""
        self._response_headers: list[tuple[str, str]] | None = None
        self._groups = _NO_GROUPS  # one shared empty frozenset: most never join
        # For the line logged when the connection ends; plain ints, bumped in place.
        self.opened_at = 0.0
        """When ``open()`` ran (monotonic seconds), for the end line's duration."""
        self.messages_in = 0
        """Messages received (after reassembly of fragments)."""
        self.messages_out = 0
        """Messages queued for the client (pings, pongs and the close are not counted)."""
        self.bytes_in = 0
        """Bytes read from the socket: frames as sent, headers and compression included."""
        self.bytes_out = 0
        """Bytes written to the socket, counted as ``bytes_in`` is."""
        self._client_closed_first = False
        # The server's per-opcode sent counters (fws.stats), or None when metrics
        # are off. Messages are counted by runs of frames with one first byte
        # (an echo server sends text after text): a frame costs one comparison,
        # and a run is added when it ends, when the connection ends, or when
        # metrics are flushed (flush_sent_counts). A run's frames and bytes
        # are differences of totals the connection keeps anyway: messages_out,
        # and bytes_out + _outbox_bytes, every byte ever queued.
        self._sent_counts: list[int] | None = None
        self._sent_bytes: list[int] = []
        self._run_first = -1
        """First byte (FIN, RSV1, opcode) of the frames of the run; -1: no run."""
        self._run_messages = 0
        self._run_queued = 0

    # -- the seed's surface ---------------------------------------------------

    @property
    def users(self) -> dict[str, Connection]:
        """Every open connection of this server, by id."""
        return self.table.users

    @property
    def storage_object(self) -> Any:
        return self.table.storage

    @property
    def queue(self) -> Any:
        """The server's queue; items put here run through the consumer pipeline."""
        return self.table.queue

    @property
    def peer(self) -> tuple[str, int]:
        return self.request.peer

    @property
    def outbound_bytes(self) -> int:
        """Bytes queued to this client and not yet written to its socket."""
        return self._outbox_bytes

    def send(self, data: str | bytes | bytearray | memoryview) -> bool:
        """Queue a message: ``str`` goes as a text frame, bytes-like as binary.

        Returns at once; returns False when the connection is not open (the
        message is dropped: a client that is leaving cannot receive it).
        """
        if len(data) >= UNCOPIED_PAYLOAD and type(data) is bytes:  # the rare case: one test
            deflate = self.deflate
            if deflate is None or len(data) < deflate.compress_min_size:
                return self._send_uncopied(data)
        frame = encode_message(data, self.deflate)
        return self.send_message_frame(frame, frame[0])

    def _send_uncopied(self, payload: bytes) -> bool:
        """Queue a large binary message as its header and then the payload itself.

        Copying a megabyte behind its header cost a tenth of a 1 MiB echo;
        the flush sends both from where they are (``sendmsg``, an iovec each).
        """
        header = frame_header(OP_BINARY, len(payload))
        if not self._has_room(len(header) + len(payload)):
            return False
        if self._sent_counts is not None and header[0] != self._run_first:
            self._new_sent_run(header[0])
        self._queue(header)
        self._queue(payload)
        self.messages_out += 1
        return True

    def sendMessage(self, data: str | bytes | bytearray) -> bool:
        """The seed's send: a *text* frame, as the original only sent text.

        Bytes are sent as a text frame when they are UTF-8 (``bytes(message)``
        of a text message is) and as a binary frame otherwise, so a browser
        never receives an invalid text frame.
        """
        return self.send(text_if_utf8(data))

    def broadcast(self, data: str | bytes, *, include_self: bool = False) -> None:
        """Send to every other client, on every server sharing the storage."""
        self.table.storage.broadcast(data, sender=None if include_self else self.id)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the client has ``close_timeout`` seconds to answer."""
        if not is_valid_close_code(code):
            raise ValueError(f"{code} is not a close code a server may send")
        self._start_close(code, reason)

    def add_response_header(self, name: str, value: str) -> None:
        """Send a header with the 101 response (``Set-Cookie``...); for connect filters."""
        if self.state is not State.CONNECTING:
            raise RuntimeError("response headers can only be added before the upgrade")
        if self._response_headers is None:
            self._response_headers = []
        self._response_headers.append((name, value))

    def take_response_headers(self) -> list[tuple[str, str]]:
        """The headers connect filters added; they are not kept after the upgrade."""
        headers, self._response_headers = self._response_headers or [], None
        return headers

    def close_after(self, seconds: float, code: int = 1008, reason: str = "") -> None:
        """Close the connection with ``code`` once ``seconds`` have passed (an expiring token).

        A libev timer, not a greenlet: it costs about 100 bytes while it waits.
        A second call replaces the first.
        """
        if not is_valid_close_code(code):
            raise ValueError(f"{code} is not a close code a server may send")
        if self._deadline is not None:
            self._deadline.close()
        self._deadline = gevent.get_hub().loop.timer(max(seconds, 0.0))
        self._deadline.start(self._start_close, code, reason)

    def abandon(self) -> None:
        """The upgrade did not happen: release what connect filters armed.

        A ``close_after`` timer would otherwise hold the connection until it
        fired: a token's whole lifetime, for every refused handshake.
        """
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    # -- groups -----------------------------------------------------------------
    # Membership lives in the storage (so a group spans servers with Redis);
    # _groups is this connection's own record, to leave them all when it ends.

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is in (joined on this connection, not yet left)."""
        return self._groups

    def join(self, name: str) -> None:
        """Join group ``name``: ``storage.send_to_group(name, ...)`` then reaches this client.

        Raises ``ValueError`` for an empty name or one above
        ``MAX_GROUP_NAME_BYTES`` (256 bytes of UTF-8), storing nothing, and
        ``RuntimeError`` before the upgrade (join in an open filter: a connect
        filter's client may yet be refused) or once the connection has ended.
        Joining twice is harmless. The connection leaves its groups when it
        ends, after its disconnect filters ran (they still see ``groups``).
        """
        check_group_name(name)
        if self.state is State.CONNECTING or self.state is State.CLOSED:
            raise RuntimeError(f"cannot join a group while the connection is {self.state.value}")
        if name in self._groups:
            return
        self.table.storage.add(name, self.id)
        self._groups = self._groups | {name}  # rebuilt on the rare change, read for free

    def leave(self, name: str) -> None:
        """Leave group ``name``; leaving a group this connection is not in is harmless."""
        if name not in self._groups:
            return
        self.table.storage.remove(name, self.id)
        self._groups = self._groups - {name} or _NO_GROUPS

    def _leave_groups(self) -> None:
        """Leave every group as the connection ends, even if the storage fails on one."""
        groups, self._groups = self._groups, _NO_GROUPS
        for name in groups:
            try:
                self.table.storage.remove(name, self.id)
            except Exception as exc:
                log.warning("connection %s: could not leave group %r: %s", self.id, name, exc)

    # -- sending --------------------------------------------------------------

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
        ``fws/_speedups.c`` (``queue_common``) does this and ``_queue`` in C
        for a broadcast's common case: a change here belongs there too.
        """
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

    def _cut(self, why: str, reason: str) -> None:
        """Close with 1008 for a limit the client broke; counted by ``why`` for metrics."""
        self.table.stats.disconnects[why] += 1
        self._start_close(1008, reason)

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
        self._new_sent_run()  # a run's bytes are its messages' only
        self._queue(frame)
        self.table.stats.count_sent(frame)

    def _queue(self, frame: bytes) -> None:
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
        job for the hub). Over TLS, and once a close is queued, the writer
        does it all. ``fws/_speedups.c`` (``flush_one``) does the same in C:
        a change here belongs there too.
        """
        self._flush_due = False
        outbox = self._outbox
        if self._writer is not None or not outbox:
            return
        raw = self._raw_socket
        if raw is None or self._close_queued:
            self._start_writer()
            return
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
            self._start_writer()

    def _start_writer(self) -> None:
        """Leave the queue to a writer greenlet (the compiled flusher calls this too)."""
        self._writer = gevent.spawn(self._write_loop)

    def _write_loop(self) -> None:
        """Writer greenlet: send everything queued, many frames per system call.

        It exits when the queue is empty, so an idle connection holds no writer.
        """
        assert self._socket is not None
        outbox = self._outbox
        try:
            while outbox:
                chunk = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                self._socket.sendall(chunk)
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

    # -- liveness ---------------------------------------------------------------

    def check_liveness(self, now: float) -> None:
        """Send a keepalive ping when due; close the connection if it is dead or idle.

        Called by the server's liveness greenlet for every open connection.
        """
        if self.state is not State.OPEN:
            return
        settings = self.settings
        if settings.idle_timeout and now - self._last_message_at > settings.idle_timeout:
            log.info("connection %s: idle for %.0f s, closing", self.id, settings.idle_timeout)
            self._start_close(1001, "idle timeout")
        elif self._awaiting_pong:
            if settings.ping_timeout and now - self._last_ping_at > settings.ping_timeout:
                log.info("connection %s: no pong within %.0f s", self.id, settings.ping_timeout)
                self._start_close(1011, "keepalive ping timeout")
        elif settings.ping_interval and now - self._last_ping_at >= settings.ping_interval:
            self._awaiting_pong = True
            self._last_ping_at = now
            self._queue_counted(_KEEPALIVE_PING)

    # -- closing --------------------------------------------------------------

    def _start_close(self, code: int, reason: str) -> None:
        if self.state is not State.OPEN:
            return
        self.state = State.CLOSING
        self.close_info = CloseInfo(code, reason)
        self._queue_close(code, reason)
        self._close_timer = gevent.spawn_later(self.settings.close_timeout, self._abort_transport)

    def _queue_close(self, code: int, reason: str) -> None:
        self._close_queued = True
        self.table.stats.close_codes_sent[code] += 1
        self._queue_counted(encode_close(code, reason))

    def _abort_transport(self) -> None:
        """Wake the reader with EOF and fail the writer: the peer is gone or too slow."""
        if self._socket is None:
            return
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut down or reset by the peer: the goal is reached

    # -- the connection's life --------------------------------------------------

    def open(self, sock: socket.socket, received: bytes = b"") -> None:
        """Start serving the upgraded socket; returns at once, the connection lives on.

        Called in the handshake's greenlet. ``received`` is what the client
        sent right after the handshake and the HTTP parser had already buffered.
        """
        self._socket = sock
        if type(sock) is gevent.socket.socket:  # not TLS: the flusher may send on it directly
            self._raw_socket = sock._sock  # type: ignore[attr-defined]  # gevent's own
        stats = self.table.stats
        counting = stats.count_messages
        self._parser = FrameParser(
            max_message_size=self.settings.max_message_size,
            deflate=self.deflate,
            frame_counts=stats.messages_received if counting else None,
            wire_bytes=stats.bytes_received if counting else None,
        )
        if counting:
            self._sent_counts, self._sent_bytes = stats.messages_sent, stats.bytes_sent
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.state = State.OPEN
        self._opening = (gevent.getcurrent(), [])
        self.table.users[self.id] = self
        self.opened_at = time.monotonic()
        if log.isEnabledFor(logging.INFO):  # at -q, not even the arguments are made
            peer, path = format_peer(self.peer), self._log_path()
            log.info("connection %s opened from %s %s", self.id, peer, path)
        if self.table.stopping:  # upgraded while the server was stopping
            self._start_close(1001, "server shutting down")
        failed = False
        try:
            self.table.storage.connected(self.id)
            if self.table.pipelines["open"]:
                self.table.dispatch("open", self, self.request)  # logs filters' own errors
        except Exception:  # the storage could not register the client
            log.exception("connection %s: internal error", self.id)
            self._start_close(1011, "internal server error")
            failed = True
        except gevent.GreenletExit:  # the server, stopping, killed this handshake
            self._end_opening()
            self._finish()
            raise
        self._end_opening()
        if failed:
            self._finish()
            return
        if received:
            self._reader = gevent.spawn(self._read_burst, received)
        else:
            self._park()

    def _end_opening(self) -> None:
        """Release the frames held while opening, after the open pipeline's own."""
        assert self._opening is not None
        _, held = self._opening
        self._opening = None
        self._outbox.extend(held)
        if self._outbox and self._writer is None:
            self._start_writer()

    def abort(self) -> None:
        """End the connection now, without waiting for the client (server stop).

        Shutting the socket down wakes a reader in recv, or one not started
        yet, with EOF. Only a reader stuck elsewhere (in a filter) is killed:
        a greenlet killed before it starts never runs its clean-up.
        """
        reader = self._reader
        if reader is not None and self in self.table.reading and not self._in_recv:
            reader.kill(block=False)
        self._abort_transport()

    def park_if_quiet(self, now: float) -> None:
        """End the reader greenlet if it has waited ``PARK_AFTER`` seconds for data.

        Called by the server's watch greenlet for the connections in
        ``server.reading``. While the client is active a reader waits in its
        own greenlet (on the connection's watcher over TCP, in gevent's
        ``recv_into`` over TLS), which costs nothing per message; once it is
        quiet, the wait moves to the watcher alone and the greenlet's memory
        is freed.
        """
        if self._in_recv and now - self._last_read_at >= PARK_AFTER:
            gevent.get_hub().loop.run_callback(self._throw_park)

    def _throw_park(self) -> None:
        # In the hub, as gevent.Timeout does: the reader is switched out, and if
        # it is still in recv, raising there leaves nothing half done.
        if self._reader is not None and self._in_recv:
            self._reader.throw(_Park)

    def _park(self) -> None:
        """Wait for the client's next bytes on a libev watcher, not in a greenlet."""
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        # In the hub: start a reader; it runs on the hub's next turn.
        self._watcher.stop()
        self._reader = gevent.spawn(self._read_burst)

    def _read_burst(self, received: bytes = b"") -> None:
        """Reader greenlet: run the pipelines on what the client sends until it goes quiet."""
        ended = True
        self.table.reading.add(self)
        try:
            ended = self._read_until_quiet(received)
        except Exception:
            log.exception("connection %s: internal error", self.id)
            self._start_close(1011, "internal server error")
        finally:
            # Also reached when the server kills this greenlet as it stops.
            self.table.reading.discard(self)
            self._reader = None
            if ended:
                self._finish()
            else:
                self._park()

    def _read_until_quiet(self, received: bytes) -> bool:
        """Handle chunks until the stream ends (True) or the reader is parked (False)."""
        if received:
            self.bytes_in += len(received)
            if self._handle_chunk(received):
                return True
        assert self._socket is not None
        # Over TCP the reader reads the plain socket, non-blocking, and waits on
        # the connection's watcher itself: gevent's recv_into is a Python loop
        # around the same calls, and it would read again after every short
        # read, to learn from an exception (EAGAIN) that the kernel had nothing.
        # A TLS socket holds decrypted bytes the kernel no longer signals:
        # gevent's SSL socket reads and waits there.
        raw = self._raw_socket
        reading = raw if raw is not None else self._socket
        recv_into, recv = reading.recv_into, reading.recv
        wait = gevent.get_hub().wait if raw is not None else None
        watcher = self._watcher
        # One read buffer for the whole server: the parser copies only what an
        # incomplete frame needs, so idle connections hold none, and a chunk
        # is parsed before this greenlet can yield to another reader. The rest
        # of a large frame is received into bytes of its own, which the parser
        # keeps as they are (FrameParser.large_missing).
        buffer = self.table.read_buffer
        view = memoryview(buffer)
        parser = self._parser
        assert parser is not None
        read_size = _FIRST_READ
        unyielded = 0
        frames_at_yield = parser.frames
        # Whether the socket may have bytes: a reader starts when it has some
        # (or with received), and a read shorter than asked took all there were.
        ready = True
        chunk: bytes | memoryview
        # Both branches read the same way, written out twice: a shared form of
        # the loop cost a 32-byte echo 0.3 % more instructions (callgrind).
        while True:
            if wait is None or not ready:
                self._last_read_at = time.monotonic()
                self._in_recv = True
                try:
                    if wait is not None:
                        wait(watcher)
                    if parser.large_missing:
                        read_size = min(parser.large_missing, READ_SIZE)
                        size = len(chunk := recv(read_size))
                    else:
                        size = recv_into(buffer, read_size)
                        chunk = view[:size]
                except _Park:
                    return False
                except BlockingIOError:  # woken with nothing to read after all
                    continue
                # Reset, TLS failure, or shut down by _abort_transport (a TLS socket
                # that was shut down raises ValueError: "closed or unwrapped").
                except (OSError, ValueError):
                    return True
                finally:
                    self._in_recv = False
            else:
                try:
                    if parser.large_missing:
                        read_size = min(parser.large_missing, READ_SIZE)
                        size = len(chunk := recv(read_size))
                    else:
                        size = recv_into(buffer, read_size)
                        chunk = view[:size]
                except BlockingIOError:
                    ready = False
                    continue
                except OSError:
                    return True
            frames_before = parser.frames
            self.bytes_in += size
            if not size or self._handle_chunk(chunk):
                return True
            ready = size == read_size
            # Parsing costs about a microsecond a frame whatever its size: 256 KiB
            # of one-byte fragments is 37,000 frames, 40 ms. Size the next read
            # to hold about FRAME_BUDGET frames of the kind this client sends.
            frames = parser.frames - frames_before
            if frames:
                read_size = size * FRAME_BUDGET // frames
                if read_size < _MIN_READ:
                    read_size = _MIN_READ
                elif read_size > READ_SIZE:
                    read_size = READ_SIZE
            else:  # part of a large frame
                read_size = READ_SIZE
            # A client that never pauses fills every read, and the reader would
            # keep the hub from writers (this connection's own, for what a send
            # could not take), other readers and timers.
            unyielded += size
            if (
                unyielded >= READ_SIZE
                or parser.frames - frames_at_yield >= FRAME_BUDGET
                or self._outbox_bytes >= READ_SIZE
            ):
                unyielded = 0
                frames_at_yield = parser.frames
                # Not sleep(0): that only queues this greenlet behind the hub's
                # other callbacks, and gevent runs up to 50 of them before it
                # looks at the clock, let alone polls sockets, so a storm of
                # tiny frames held every other connection for the whole storm.
                # A timer makes the hub finish its callbacks, poll and fire timers.
                gevent.sleep(_YIELD)

    def _handle_chunk(self, chunk: bytes | memoryview) -> bool:
        """Run the pipelines for one chunk; True once the client's close has arrived.

        What the filters send leaves through the flusher, on the hub's next
        turn: once the chunk is handled, or as soon as a filter blocks, so an
        answer never waits for a slow call that follows it in the pipeline.
        """
        if self._failed:
            # After a protocol error, discard until the client closes (over TLS
            # the socket may be unwrapped by then: these bytes are not even data).
            return False
        table = self.table
        dispatch = table.dispatch
        if not table.pipelines["data"].empty:
            chunk = bytes(chunk)  # the filters may block: the shared buffer moves on
            dispatch("data", self, chunk)
        assert self._parser is not None
        try:
            events = self._parser.feed(chunk)
            failure = None
        except ProtocolError as exc:
            events, failure = exc.events, exc  # type: ignore[assignment]
        # One clock read a chunk: its messages arrived together, and the rate
        # limit and the idle timeout measure arrivals.
        now = time.monotonic()
        limited = self.settings.max_messages_per_second is not None
        for event in events:
            kind = type(event)
            if kind is bytes or kind is TextMessage:  # a message is its data
                self.messages_in += 1
                if self.state is _OPEN:
                    self._last_message_at = now
                    if limited and self._over_rate(now):
                        continue
                    dispatch("message", self, event)
            elif type(event) is Ping:
                if limited and self._over_rate(now):
                    continue
                # Counted against max_outbound_bytes like any message: a client
                # that floods pings and never reads is closed, not buffered for.
                self.send_frame(encode_frame(OP_PONG, event.payload), message=False)
            elif type(event) is Pong:
                self._awaiting_pong = False
            elif type(event) is Close:
                self.table.stats.close_codes_received[event.code] += 1
                self._close_received = True
                if self.state is _OPEN:
                    # The client started the closing handshake: answer with its code.
                    self._client_closed_first = True
                    self.state = State.CLOSING
                    self.close_info = CloseInfo(event.code, event.reason)
                    self._queue_close(event.code, "")
                return True
        if failure is not None:
            log.info("connection %s: protocol error: %s", self.id, failure)
            self._failed = True
            self._start_close(failure.code, failure.reason)
        return False

    def _over_rate(self, now: float) -> bool:
        """Count one message against the rate limit; close the connection if it is over.

        A token bucket as GCRA: one timestamp instead of a count and a refill
        time, and no clock read of its own (the caller has one). ``_rate_due``
        is when the bucket will be full again; a message moves it on by one
        interval, and a message that would move it more than ``message_burst``
        intervals past now is over the rate.
        """
        settings = self.settings
        due = max(self._rate_due, now) + settings.message_interval
        if due - now > settings.message_slack:
            if self.state is State.OPEN:
                log.info(
                    "connection %s: over %g messages a second, closing",
                    self.id,
                    settings.max_messages_per_second,
                )
                self._cut("rate_limit", "rate limit")
            return True
        self._rate_due = due
        return False

    def _finish(self) -> None:
        self.table.finishing.add(self)  # Server.stop waits for these too
        try:
            self._finish_now()
        finally:
            self.table.finishing.discard(self)

    def _finish_now(self) -> None:
        self._new_sent_run()  # before metrics stop seeing it among the users
        self.table.users.pop(self.id, None)
        self._watcher.close()
        writer = self._writer
        if writer is None and self._close_queued and self._outbox:
            # The close still waits for the flusher: send it before the socket goes.
            self._start_writer()
            writer = self._writer
        if writer is not None:
            if self._close_queued:
                writer.join(timeout=self.settings.close_timeout)
            writer.kill(block=False)
        if self._close_timer is not None:
            self._close_timer.kill(block=False)
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None
        assert self._socket is not None
        self._socket.close()
        self.state = State.CLOSED
        info = self.close_info or CloseInfo(1006, "", clean=False)
        if not self._close_received and info.clean:
            # We sent a close the client never answered (dead link, too slow...).
            info = CloseInfo(info.code, info.reason, clean=False)
        self.close_info = info
        self._log_end(info)
        self.table.dispatch("disconnect", self, info)
        self._leave_groups()
        self.table.storage.disconnected(self.id)

    def _log_path(self) -> str:
        """The request path for a log line: escaped, and (as ``request.path``) without the query.

        Query strings carry secrets (``?token=`` for ``jwt_auth``); ``%0a`` or
        ``%1b``, decoded in the path, must not forge a line or reach a terminal.
        """
        return printable(self.request.path)

    def _closed_by(self) -> str:
        """Who ended the connection: ``client``, ``server``, ``timeout`` or ``abort``.

        ``client``: the client sent the first close frame. ``server``: the
        server did, and the client answered. ``timeout``: the server did and
        the client never answered (cut after ``close_timeout``, or at server
        stop); a protocol error counts as ``server``. ``abort``: the TCP
        connection ended without a closing handshake (the client vanished, a
        reset, a failed write).
        """
        if self._client_closed_first:
            return "client"
        if self._close_queued:
            # After a protocol error the client's answer cannot be parsed: not a timeout.
            return "server" if self._close_received or self._failed else "timeout"
        return "abort"

    def _log_end(self, info: CloseInfo) -> None:
        """One INFO line per connection, with its totals (fields as ``extra`` for json logs)."""
        closed_by = self._closed_by()
        duration = time.monotonic() - self.opened_at
        peer = format_peer(self.peer)
        path = self._log_path()
        reason = printable(info.reason, 123)  # the most a close frame can carry
        log.info(
            "connection %s closed: code %d%s by %s; peer %s, path %s, %.3f s, "
            "in %d msgs %d B, out %d msgs %d B",
            self.id,
            info.code,
            f" ({reason})" if reason else "",
            closed_by,
            peer,
            path,
            duration,
            self.messages_in,
            self.bytes_in,
            self.messages_out,
            self.bytes_out,
            extra={
                "event": "connection_closed",
                "connection_id": self.id,
                "peer": peer,
                "path": path,
                "duration": round(duration, 3),
                "messages_in": self.messages_in,
                "messages_out": self.messages_out,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "close_code": info.code,
                "close_reason": reason,
                "closed_by": closed_by,
            },
        )

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value} {format_peer(self.peer)}>"


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


def _pure_flush_each(due: list[Connection]) -> None:
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


if _accel.speedups is not None:
    _accel.speedups.bind(Connection, State.OPEN, ConnectionSettings, _schedule_flush)
    fan_out: Callable[
        [Sequence[Connection | None], bytes, int, str | None, Callable[[Connection], bool]], int
    ] = _accel.speedups.fan_out
    _flush_each: Callable[[list[Connection]], None] = _accel.speedups.flush_each
else:
    fan_out = _pure_fan_out
    _flush_each = _pure_flush_each
