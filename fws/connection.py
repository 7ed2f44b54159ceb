"""One client connection: the object filters receive as ``web_socket_instance``.

After the handshake (``fws.handshake``, on gevent's pywsgi) answers 101, the
upgraded socket is the connection's, and fws's own frame layer
(``fws.frames``) reads it, so that it can see the raw bytes for the data
event, enforce limits from frame headers and answer closes correctly.

``Connection`` holds a client's state (in slots: an idle connection must be
small) and its public surface, and runs its life: opening, keepalive pings,
the closing handshake, the end. What it receives is read by its other half,
``fws.inbound`` (the reader greenlet, parked while the client is quiet);
what it sends is queued and written by ``fws.outbound`` (the flusher and the
writer). Together they are the only code that touches a client's socket.
"""

from __future__ import annotations

import _socket
import logging
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket

from . import _accel
from .context import ConnectionSettings, ConnectionTable
from .datatypes import CloseInfo, Request, State
from .escape import format_peer, printable
from .frames import (
    OP_PING,
    FrameParser,
    encode_close,
    encode_frame,
    encode_message,
    is_valid_close_code,
    text_if_utf8,
)
from .groups import check_group_name
from .inbound import PARK_AFTER, Inbound
from .outbound import UNCOPIED_PAYLOAD, Outbound, _schedule_flush, deliver_deferred

if TYPE_CHECKING:
    from .server import Server

__all__ = ["PARK_AFTER", "Connection", "State"]

log = logging.getLogger("fws.connection")

_NO_GROUPS: frozenset[str] = frozenset()
"""Shared by every connection in no group (each empty frozenset() would be its own object)."""

_KEEPALIVE_PING = encode_frame(OP_PING, b"fws")


class Connection(Inbound, Outbound):
    """A WebSocket client, with the seed's surface (``id``, ``users``, ``sendMessage``...).

    Filters may set attributes of their own on it, as the seed's did.
    """

    __slots__ = ()  # ConnectionState has them

    def __init__(
        self,
        request: Request,
        settings: ConnectionSettings,
        table: ConnectionTable,
        server: Server | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.request = request
        self.settings = settings
        self.table = table
        self.server = server
        """The server, for filters (the seed's reached it this way); fws reads the table."""
        self.token = None
        """The group joined with ``token:NAME`` (``broadcast_messages_by_token``); see ``join``."""
        self.state = State.CONNECTING
        self.close_info = None
        self._socket = None
        self._parser = None
        self._watcher = None  # libev read watcher while the connection is parked
        self._reader = None
        self._in_recv = False  # the reader waits for data, and only there
        self._last_read_at = 0.0
        self._outbox = []  # a list: an empty deque costs 600 bytes
        self._outbox_bytes = 0
        self._close_queued = False
        self._failed = False  # a protocol error ended the frame stream
        self._close_received = False
        self._writer = None
        """A greenlet writing for this connection: one that waits for a slow client."""
        self._write_watcher = None
        """The libev write watcher the writer waits on over TCP, made the first time it waits."""
        self._flush_due = False
        """Queued in the table's ``to_flush``: the flusher writes this connection's queue."""
        self._raw_socket = None
        """The plain socket of a TCP connection (None over TLS): the reader, the
        flusher and the writer use it without blocking, each waiting on its own
        watcher. It is ``_socket`` itself for a client upgraded at the accept,
        and the one under gevent's socket object for one upgraded by a handler."""
        self._close_timer = None
        self._last_message_at = self._last_ping_at = time.monotonic()
        self._awaiting_pong = False
        self._rate_due = 0.0  # the rate limit's theoretical arrival time (see _over_rate)
        # While open() runs (storage registration, the open pipeline): the greenlet
        # running it (the hub, for an upgrade at the accept), and the frames other
        # greenlets queued meanwhile, held back.
        self._opening = None
        self._deadline = None  # libev timer of close_after, if one was set
        self.claims = None
        """The verified token's claims, set by ``jwt_auth`` (or any connect filter)."""
        self.user = None
        """Who the client is: ``jwt_auth`` sets the token's ``sub`` here."""
        self.subprotocol = None
        """The subprotocol the 101 response names; a connect filter may choose one the
        client offered (``request.subprotocols``). ``--subprotocol`` preselects it."""
        self.deflate = None
        """The permessage-deflate codec, when the handshake negotiated one."""
        self._response_headers = None
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
        self._sent_counts = None
        self._sent_bytes = []
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
        if self.table.deferred:
            # Before compressing: with context takeover, frames must go out in
            # the order they were compressed, and the broadcasts go first.
            deliver_deferred(self.table)
        # Anything else (a str, None, 42) goes to encode_message, which says so.
        if type(data) is bytes and len(data) >= UNCOPIED_PAYLOAD:
            deflate = self.deflate
            if deflate is None or not deflate.compresses(len(data)):
                return self._send_uncopied(data)
        frame = encode_message(data, self.deflate)
        return self.send_message_frame(frame, frame[0])

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
        if self.table.deferred:  # broadcasts made while it was open go before the close
            deliver_deferred(self.table)
        self.state = State.CLOSING
        self.close_info = CloseInfo(code, reason)
        self._queue_close(code, reason)
        self._close_timer = gevent.spawn_later(self.settings.close_timeout, self._abort_transport)

    def _queue_close(self, code: int, reason: str) -> None:
        self._close_queued = True
        self.table.stats.close_codes_sent[code] += 1
        self._queue_counted(encode_close(code, reason))

    def _cut(self, why: str, reason: str) -> None:
        """Close with 1008 for a limit the client broke; counted by ``why`` for metrics."""
        self.table.stats.disconnects[why] += 1
        self._start_close(1008, reason)

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

        Called in the handshake's greenlet, or in the hub itself for an upgrade
        done at the accept (``fws.at_accept``), where nothing may wait: then the
        end of a connection that failed to open is left to a greenlet.
        ``received`` is what the client sent right after the handshake and the
        HTTP parser had already buffered.
        """
        self._socket = sock
        if type(sock) is _socket.socket:  # accepted plain (WebSocketPort.do_read)
            self._raw_socket = sock
        elif type(sock) is gevent.socket.socket:  # not TLS: the flusher may send on it directly
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
        table = self.table
        if table.deferred:  # broadcasts made before it opened are not for it
            deliver_deferred(table)
        self.state = State.OPEN
        self._opening = (gevent.getcurrent(), [])
        table.opening += 1  # no broadcast is deferred while it opens: see Server.broadcast
        table.users[self.id] = self
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
        except BaseException:  # the server, stopping, killed this handshake (GreenletExit)
            self._end_opening()
            self._finish()
            raise
        self._end_opening()
        if failed:
            if gevent.getcurrent() is table.hub:  # _finish waits for the 1011 to be sent
                gevent.spawn(self._finish)
            else:
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
        self.table.opening -= 1
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
            # The close still waits for the flusher: flush it now, before the socket
            # goes. The flusher's rules decide whether a writer must send it.
            self._flush()
            writer = self._writer
        if writer is not None:
            if self._close_queued:
                writer.join(timeout=self.settings.close_timeout)
            writer.kill(block=False)
        if self._write_watcher is not None:
            # Not left active on a descriptor about to close (the killed writer,
            # if it still waits, stops it again: harmless).
            self._write_watcher.close()
            self._write_watcher = None
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


if _accel.speedups is not None:
    _accel.speedups.bind(Connection, State.OPEN, ConnectionSettings, _schedule_flush)
