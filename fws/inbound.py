"""What a connection receives: its reader greenlet, parking while quiet, the pipelines.

A connection is served by a greenlet of its own while it is active, and by
none while it is idle. Its reader greenlet reads and runs the pipelines; once
it has waited ``PARK_AFTER`` seconds for more, the server's watch greenlet
ends it and the connection waits on a libev watcher instead, whose next
readiness starts a new reader. A greenlet blocked in recv costs about 7 kB on
CPython 3.11 (its saved C stack and a page of Python frame stack), more than
everything else an idle connection holds. At most one reader runs per
connection, so its events stay in order, and a filter that blocks blocks only
its own connection.

``Inbound`` is the receiving half of ``fws.connection.Connection``, which
holds the state (its slots).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent

from .connection_state import ConnectionState
from .context import READ_SIZE
from .datatypes import CloseInfo, State, TextMessage
from .errors import ProtocolError
from .frames import OP_PONG, Close, Ping, Pong, encode_frame
from .outbound import deliver_deferred

__all__ = ["FRAME_BUDGET", "PARK_AFTER", "Inbound"]

log = logging.getLogger("fws.connection")

PARK_AFTER = 1.0
"""Seconds a reader waits for more before it may give way to a watcher (see park_if_quiet)."""


FRAME_BUDGET = 1024
"""Frames a reader parses before it lets the hub run other connections and timers."""

_FIRST_READ = 16384
"""Bytes a burst's first read may take, before the reader has seen how large the frames are."""

_MIN_READ = 4096

_YIELD = 1e-6
"""A sleep this long ends the hub's run of callbacks: it polls I/O and fires timers.

libev starts the timer from the time it cached before this reader ran, so it
is already due when the hub next polls: the poll does not block."""

_OPEN = State.OPEN  # a global: see fws.outbound._OPEN


class _Park(Exception):
    """Thrown into a reader that waits for data, to end it in favour of a watcher."""


class Inbound(ConnectionState):
    """The receiving half of ``Connection``: the reader, parking, and each chunk's events.

    A mixin with no slots of its own: ``ConnectionState`` declares them, and
    ``Connection.__init__`` sets them.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # what it calls of the other half and of Connection

        def send_frame(self, frame: bytes, *, message: bool = True) -> bool: ...
        def _start_close(self, code: int, reason: str) -> None: ...
        def _queue_close(self, code: int, reason: str) -> None: ...
        def _cut(self, why: str, reason: str) -> None: ...
        def _finish(self) -> None: ...

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
        busy_poll = self.table.busy_poll
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
                self._last_read_at = since = time.monotonic()
                # Whether this read waits for the client, for busy polling: over
                # TCP always, here; over TLS not when it reads bytes already there
                # (a burst's first read, or a record gevent has decrypted).
                timing = None
                if busy_poll is not None and (
                    wait is not None or not (ready or reading.pending())  # type: ignore[attr-defined]
                ):
                    timing = busy_poll
                    if busy_poll.enabled:
                        busy_poll.waiting(since)
                self._in_recv = True
                try:
                    if wait is not None:
                        wait(watcher)
                        # Waiting ran the hub (the flusher, other readers, timers):
                        # a yield, so the budget for the next one starts again.
                        unyielded = 0
                        frames_at_yield = parser.frames
                    if parser.large_missing:
                        read_size = min(parser.large_missing, READ_SIZE)
                        size = len(chunk := recv(read_size))
                    else:
                        size = recv_into(buffer, read_size)
                        chunk = view[:size]
                    if timing is not None and size:  # over TLS, recv was the wait
                        timing.woke(since)
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
            # could not take), other readers and timers. After a short read over
            # TCP the next read waits on the watcher, which yields already: a
            # timer first cost a 64 KiB echo a tenth of its rate (two hub turns
            # where one does).
            unyielded += size
            if (ready or wait is None) and (
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
                    # The client started the closing handshake: answer with its code,
                    # after the broadcasts made while it was open.
                    if self.table.deferred:
                        deliver_deferred(self.table)
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
