"""The HTTP upgrade: the one module that knows gevent-websocket's handler.

The handler reads the request head itself and parses it with
``fws.request_head``; a plain WebSocket upgrade (GET, HTTP/1.1, a head that
parser reads exactly as pywsgi would) is answered from there, without
pywsgi's line-by-line reading, ``email`` header parsing and WSGI environ.
Everything else (plain HTTP, an unusual or malformed head) goes to gevent's
pywsgi with the bytes already read replayed, and so does an upgrade refused
on that fast path, with the refusal already decided: the answer and the log
lines are pywsgi's, as they were before the fast path. Either way, a request
is decided in one place and in this order:

1. a request that does not ask for ``Upgrade: websocket`` is plain HTTP and
   goes to the server's WSGI application (static files, or 426);
2. the RFC 6455 section 4.2.1 checks, all of them, from the request alone:
   GET, HTTP/1.1 or later, no body, ``Host``, the ``Upgrade`` and ``Connection`` token
   lists, a key that decodes to 16 bytes, version 13 (otherwise 426 with
   ``Sec-WebSocket-Version: 13``); then the server's own: not stopping,
   an allowed origin, the connection limit, a required subprotocol;
3. only then the connect pipeline (so authentication or database work never
   runs for a request that is refused anyway), which may choose the
   subprotocol, add response headers, or refuse with ``Reject``;
4. permessage-deflate is negotiated, the 101 response is written, and the
   socket is handed to a ``Connection``; this greenlet and the handler end.

A client whose head is in its socket when it is accepted, on a server with
nothing in the upgrade that may wait, is upgraded in the accept callback
instead (``fws.at_accept``), by the same steps; anything that callback does
not upgrade comes here, with the bytes it read.

Every refusal is an HTTP status with a one-line body and one log line, never
a traceback; so is a client that breaks off mid-request. The request head is
bounded as a whole (``max_header_bytes``), not only line by line.

The reading itself (the fast path's read, the replay to pywsgi, the bound,
the lingering refusal) is ``fws.head_reader``'s; the rules a request alone
decides (the checks of step 2 that need no server, the accept key, the
subprotocol), ``fws.handshake_rules``'s; step 2 as a whole and the 101's
bytes, shared with the upgrade at the accept, ``fws.upgrade``'s; whom a
proxy's ``X-Forwarded-For`` names, ``fws.proxies``'s.
"""

from __future__ import annotations

import io
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.ssl
from gevent import GreenletExit
from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from .connection import Connection, State
from .datatypes import Request
from .errors import FilterError, Reject
from .escape import format_peer, printable
from .handshake_rules import header_tokens, upgrade_request
from .head_reader import (
    HEAD_READ,
    BoundedReader,
    HeadTooLarge,
    Replay,
    answer_and_linger,
    plain_response,
    read_get_head,
)
from .pipeline import DROP
from .upgrade import (
    check_request,
    new_connection,
    open_upgraded,
    plain_upgrade_request,
    response_head,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "ConnectionHandler",
    "printable",
    "refuse_at_capacity",
]

log = logging.getLogger("fws.handshake")

_HANDSHAKE_BUFFER = 1024
"""pywsgi's read buffer: the handshake needs little."""


def refuse_at_capacity(sock: Any, address: Any) -> None:
    """Answer 503 to a client accepted above ``max_connections``, without reading its request.

    Parsing a request head that will be refused anyway costs a greenlet, up
    to ``max_header_bytes`` of buffer and ``handshake_timeout`` seconds of a
    descriptor; at capacity, the answer is the same for every request.
    Health probes on this port get it too.
    """
    log.info("client %s refused: 503 server is at its connection limit", format_peer(address))
    answer_and_linger(sock, _AT_CAPACITY_RESPONSE)


class ConnectionHandler(WebSocketHandler):
    """pywsgi's per-client handler, with fws's upgrade in place of gevent-websocket's.

    ``application`` is the fws ``Server``: pywsgi gives every handler the
    application, which saves a second back-reference.
    """

    socket: Any  # pywsgi's; None once the connection owns it
    environ: dict[str, Any]
    requestline: str | None
    detached = False
    """True once the upgraded socket belongs to a ``Connection``, not to pywsgi."""
    pending_token: Any = None
    """This connection's entry in ``server.pending_handshakes``, ended at the upgrade."""
    _refused: tuple[Request, Reject] | None = None
    """An upgrade the fast path refused: pywsgi re-reads the head, then answers this."""
    _leftover: bytes | None = None
    """What the client sent after a fast-path upgrade's head (frames sent right away)."""
    _replay: Replay | None = None
    """pywsgi's input, from the bytes the fast path received on."""
    received_first = b""
    """What was read off the socket at the accept (``fws.at_accept``): the first read."""

    def __init__(self, sock: socket.socket, address: Any, server: Any) -> None:
        # TCP_NODELAY is set by WebSocketPort (fws.listeners), on its listener.
        # pywsgi's reader is made only if pywsgi gets the request (_read_head).
        super().__init__(sock, address, server, rfile=_NO_READER)
        self.application = server.application  # pywsgi sets it per request; the fast path first

    @property
    def logger(self) -> logging.Logger:  # gevent-websocket would install its own handler
        return log

    # -- pywsgi's request loop, made quiet about clients that misbehave ----------

    _handshake_timer: Any = None
    _holds_place = False
    _timed_out = False

    def handle(self) -> None:
        # Slowloris: a client gets handshake_timeout seconds for each request
        # head (the first from the accept, on keep-alive from the previous
        # answer), and for the whole upgrade; then its socket is shut down and
        # the handler returns. A plain HTTP request's own time (a slow app, a
        # long download) is not bounded by it: the timer pauses once its head
        # is read.
        self._start_handshake_timer()
        try:
            if self._read_head():
                return
            super().handle()
        except OSError as exc:
            # A client that hung up while we answered (a broken pipe writing a
            # 400): one line, no traceback. The socket is closed below.
            log.info("client %s went away: %s", self._peer_text(), exc.strerror or exc)
        finally:
            self._stop_handshake_timer()
            self._release_place()  # killed mid-handshake (server stop)

    def handle_one_request(self) -> Any:
        # The first head is timed since the accept and counted from its first
        # byte (the fast path's bytes are replayed through the count).
        result = super().handle_one_request()
        if result is True:  # answered, keep-alive: the next head, from now
            self.rfile.reset()  # each request head has the whole bound
            if self._handshake_timer is not None:
                # A new timer: libev's stop() keeps a timer's remaining time
                # and start() resumes it, so a restarted one gave this head only
                # what the previous head had left of its timeout.
                self._stop_handshake_timer()
                self._start_handshake_timer()
        return result

    # -- the fast path ----------------------------------------------------------------

    def _read_head(self) -> bool:
        """Read the first request head; upgrade at once if it is a plain WebSocket upgrade.

        True: the request is done with (upgraded, or the client went away
        during the upgrade). False: pywsgi takes it, from ``self.rfile``,
        which replays what was read here; and if the upgrade was refused
        here, ``_upgrade`` answers that refusal once pywsgi has re-read it.
        """
        sock = self.socket
        limit = self.application.max_header_bytes
        received, length, error = read_get_head(sock, limit, self.received_first)
        if length is not None:
            request, length = plain_upgrade_request(
                self.application, received, self.client_address
            )
            if request is not None:
                self._leftover = bytes(received[length:])
                # No body: is_plain_upgrade left any head with a body's headers to pywsgi.
                refusal = self._negotiate(request, "GET", "HTTP/1.1", has_body=False)
                if refusal is None:
                    return True
                self._refused = (request, refusal)
                self._leftover = None
        self._replay = Replay(received, sock.makefile("rb", buffering=0), error)
        self.rfile = BoundedReader(io.BufferedReader(self._replay, _HANDSHAKE_BUFFER), limit)
        return False

    def _handle_client_error(self, ex: BaseException) -> None:
        """A request pywsgi could not parse: one log line and a 400 or 431, no traceback.

        Reached for a head over ``max_header_bytes``, more than 100 header
        lines (http.client's limit), a bad request line and the like.
        """
        if self._timed_out:
            return None  # the cut head of a client already counted and logged as 408
        stats = self.server.application.table.stats
        if isinstance(ex, HeadTooLarge):
            stats.handshakes[431] += 1
            log.info("request from %s refused: 431 %s", self._peer_text(), ex)
            self._answer_and_linger(
                "431", plain_response(431, "Request Header Fields Too Large", str(ex))
            )
            return None
        stats.handshakes[400] += 1
        reason = printable(str(ex) or type(ex).__name__)
        log.info("request from %s refused: 400 %s", self._peer_text(), reason)
        malformed = plain_response(400, "Bad Request", "malformed HTTP request")
        self._answer_and_linger("400", malformed)
        return None

    def _log_error(self, type_: Any, value: Any, tb: Any) -> None:
        """The WSGI application raised: a log record (escaped, formatted), not raw stderr.

        pywsgi hands the error to the hub, which prints a traceback straight to
        stderr: outside ``--log-format json`` and with client text in it (an
        exception message quoting a header) unescaped.
        """
        if issubclass(type_, GreenletExit):
            return
        environ = getattr(self, "environ", None) or {}
        log.error(
            "application raised on %s %s from %s; answered 500",
            printable(str(environ.get("REQUEST_METHOD", "-")), 20),
            printable(str(environ.get("PATH_INFO", "-"))),
            self._peer_text(),
            exc_info=(type_, value, tb),
        )

    def _answer_and_linger(self, status: str, response: bytes) -> None:
        """Send an error response, then discard what the client still sends, for a while."""
        self.status = status
        self.close_connection = True
        answer_and_linger(self.socket, response)

    def _peer_text(self) -> str:
        return format_peer(self.client_address)

    def log_request(self) -> None:
        if self.server.log is not None and "101" not in str(self.status):
            self.server.log.write(printable(self.format_request(), 1000) + "\n")

    def format_request(self) -> str:
        """pywsgi's access log line, with the query string left out.

        Query strings carry secrets (``?token=`` for ``jwt_auth``): an access
        log must not hold them.
        """
        requestline = self.requestline
        if requestline and "?" in requestline:
            method, _, rest = requestline.partition(" ")
            target, _, version = rest.partition(" ")
            self.requestline = f"{method} {target.partition('?')[0]}?... {version}".rstrip()
        try:
            return str(super().format_request())
        finally:
            self.requestline = requestline

    def _start_handshake_timer(self) -> None:
        timeout = self.server.application.handshake_timeout
        if timeout:
            self._handshake_timer = gevent.get_hub().loop.timer(timeout)
            self._handshake_timer.start(self._handshake_expired)

    def _stop_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.close()
            self._handshake_timer = None

    def _handshake_expired(self) -> None:
        # Counted as 408 (Request Timeout), although no answer is sent: the
        # socket is cut, and a slowloris would not read one.
        self._timed_out = True
        self.server.application.table.stats.handshakes[408] += 1
        log.info("handshake from %s timed out", self._peer_text())
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass  # already closed: nothing left to cut

    # -- the upgrade ----------------------------------------------------------------

    def run_application(self) -> None:
        upgrade = self.environ.get("HTTP_UPGRADE", "")
        if "websocket" not in header_tokens(upgrade):
            # Plain HTTP (a browser fetching the page, a health probe): the app,
            # with as long as it needs, and its body unbounded by the head's limit.
            if self._handshake_timer is not None:
                self._handshake_timer.stop()
            self.rfile.head_done()
            WSGIHandler.run_application(self)
            return
        self.result = self._upgrade()
        if self.result is not None:
            self.process_result()

    def _upgrade(self) -> list[bytes] | None:
        """pywsgi's path: a refusal's body, or None once the 101 is sent."""
        if self._refused is not None:  # decided on the fast path, from the same head
            return self._refuse(*self._refused)
        parsed = Request.from_environ(self.environ, self.client_address)
        request = upgrade_request(
            self.application.trusted_proxies,
            parsed.path,
            parsed.query_string,
            parsed.headers,
            self.client_address,
        )
        method = str(self.environ.get("REQUEST_METHOD"))
        # pywsgi's parse: Content-Length is dropped when Transfer-Encoding is chunked.
        has_body = bool(self.content_length) or "transfer-encoding" in self.headers
        refusal = self._negotiate(request, method, str(self.request_version), has_body)
        return None if refusal is None else self._refuse(request, refusal)

    def _negotiate(
        self, request: Request, method: str, version: str, has_body: bool
    ) -> Reject | None:
        """Check the request, run the connect pipeline, answer 101 and hand the socket over.

        Returns the refusal to answer, or None once done (upgraded, or the
        client went away meanwhile).
        """
        server: Server = self.application
        early = check_request(server, request, method, version, has_body)
        if early is not None:
            return early
        # Hold a place under max_connections from now until the connection is in
        # server.users: connect filters may wait on I/O while others arrive.
        server.upgrades_in_progress += 1
        self._holds_place = True
        connection = new_connection(server, request)
        try:
            return self._accept(server, connection, request)
        finally:
            if connection.state is State.CONNECTING:  # refused, or the client went away
                connection.abandon()
                self._release_place()

    def _accept(self, server: Server, connection: Connection, request: Request) -> Reject | None:
        """Run the connect pipeline, then refuse, or answer 101 and hand the socket over."""
        stats = server.table.stats
        started = time.perf_counter()  # once per handshake: cheap next to the handshake
        try:
            outcome = server.pipelines["connect"].run(connection, request)
            if outcome is DROP:
                raise Reject(403)
        except FilterError as exc:
            if isinstance(exc.__cause__, Reject):
                refusal = exc.__cause__
            else:  # fail closed: a broken auth filter must not let everyone in
                log.error("connect filter %s raised", exc.filter_name, exc_info=exc.__cause__)
                stats.filter_errors["connect", exc.filter_name] += 1
                refusal = Reject(500, "internal server error")
            return refusal
        except Reject as rejected:
            return rejected
        finally:
            if server.pipelines["connect"]:
                stats.filter_time("connect").observe(time.perf_counter() - started)
        response = response_head(server, connection, request)
        if isinstance(response, Reject):
            return response
        try:
            self.socket.sendall(response)
        except OSError as exc:
            log.info("client %s went away during the upgrade: %s", self._peer_text(), exc)
            self._release_place()
            self.close_connection = True
            return None
        self.status = "101 Switching Protocols"
        self.headers_sent = True
        self._hand_over(connection)
        return None

    def _hand_over(self, connection: Connection) -> None:
        """Give the socket, and what the client sent after its request, to the connection."""
        self._stop_handshake_timer()
        received = self._take_buffered()
        self._release_place()  # open() puts the connection in users before it yields
        # No longer pending: a flood must not cut an open WebSocket.
        self.application.pending_handshakes.discard(self.pending_token)
        # The connection owns the socket from here on; this greenlet, the
        # handler and its buffers end with the handshake.
        sock = self._detach_socket()
        self.close_connection = True
        self.environ = {}
        open_upgraded(self.application, connection, sock, received)

    def _release_place(self) -> None:
        if self._holds_place:
            self._holds_place = False
            self.application.upgrades_in_progress -= 1

    def _take_buffered(self) -> bytes:
        """Bytes read past the request (frames sent right away).

        On pywsgi's path they may be in two places: its reader's buffer, and
        the replay of what the fast path received (up to ``HEAD_READ`` bytes
        a read, so more than the buffer holds). Over TLS, in a third: what
        OpenSSL decrypted but was not asked for yet (the rest of a record
        that held the head and a frame), which no watcher on the descriptor
        would ever report. All of them, in order; nothing from the kernel,
        where the connection reads on.
        """
        if self._leftover is not None:
            taken = [self._leftover]
        else:
            assert self._replay is not None
            self._replay.end_after_received()
            taken = []
            while chunk := self.rfile.read1(HEAD_READ):
                taken.append(chunk)
        sock = self.socket
        if isinstance(sock, gevent.ssl.SSLSocket):
            try:
                while pending := sock.pending():
                    taken.append(sock.recv(pending))
            except OSError:
                pass  # the connection meets it on its first read
        return b"".join(taken)

    def _refuse(self, request: Request, refusal: Reject) -> list[bytes]:
        self._release_place()
        self.application.table.stats.handshakes[refusal.status.value] += 1
        peer = format_peer(request.peer)
        path, reason = printable(request.path), printable(str(refusal))
        log.info("handshake from %s %s refused: %s", peer, path, reason)
        body = (printable(refusal.reason) + "\n").encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        if refusal.status.value == 426:
            headers.append(("Sec-WebSocket-Version", "13"))
        if refusal.status.value == 405:
            headers.append(("Allow", "GET"))
        self.start_response(f"{refusal.status.value} {refusal.status.phrase}", headers)
        self.close_connection = True
        return [body]

    def _detach_socket(self) -> socket.socket:
        """Take the socket from pywsgi, which closes its own on return.

        The socket itself, not a new one on its descriptor: fws.listeners.WebSocketPort
        closes the socket of a detached handler neither after a TLS handshake
        nor after a plain one (``WebSocketPort.handle``), and a new gevent socket
        cost three getsockopt calls and two libev watchers per connection.
        """
        sock, self.socket = self.socket, None
        self.detached = True
        # The handshake reader holds a reference that would keep a closed TLS
        # socket's descriptor open until the garbage collector found it.
        self.rfile.close()
        return sock


def _closed_reader() -> io.BytesIO:
    reader = io.BytesIO()
    reader.close()
    return reader


_NO_READER: Any = _closed_reader()
"""pywsgi's handler wants a reader at once; ours is made when pywsgi gets the request.

One for every handler, so closed from the start: closing it again does
nothing, reading it raises, and no handler can change it for the next one.
"""


_AT_CAPACITY_RESPONSE = plain_response(
    503, "Service Unavailable", "server is at its connection limit"
)
