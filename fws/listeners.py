"""How the server listens: its sockets, TLS, and the pywsgi servers that accept on them.

``fws.server.Server`` decides what happens to a client once accepted; this
module is the plumbing that accepts one. ``tls_context`` makes the server's
TLS context; ``WebSocketPort`` is the WebSocket port (the TLS handshake under
a deadline, the pending-handshake bound, sockets handed over to open
connections); ``MetricsPort`` and its handler are the metrics port (a
deadline for reading each request), ``metrics_listener`` its socket, and
``http_logs`` routes pywsgi's logs. It is apart from ``Server`` because it
follows gevent's pywsgi internals (it overrides ``init_socket``,
``do_read``, ``do_handle``, ``do_close`` and ``wrap_socket_and_handle``), which change
for other reasons than the server's life cycle and pipelines do. Its
``do_handle`` runs in the hub for each accepted client: it upgrades the
client there when it can (``fws.at_accept``), and otherwise starts the
handler greenlet with what was read.

Its records go to the ``fws.server`` logger: to an operator a failed TLS
handshake is the server's news, and logging set-ups name that logger.
"""

from __future__ import annotations

import _socket
import logging
import os
import socket
import ssl
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer

from .at_accept import can_upgrade_at_accept, upgrade_at_accept
from .errors import ConfigurationError
from .escape import format_peer
from .handshake import refuse_at_capacity

__all__ = [
    "MetricsHandler",
    "MetricsPort",
    "WebSocketPort",
    "http_logs",
    "metrics_listener",
    "tls_context",
]


log = logging.getLogger("fws.server")


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server TLS context, or ``ConfigurationError`` naming the unusable file.

    The context is gevent's: the standard library's would block the whole hub
    on every TLS read when the process is not monkey-patched.
    """
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        # ssl's FileNotFoundError and PermissionError carry no file name: find it.
        for path in (certfile, keyfile):
            if path is not None and not os.path.exists(path):
                raise ConfigurationError(f"TLS file not found: {path}") from None
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigurationError(f"TLS file not readable: {path}") from None
        names = certfile if keyfile is None else f"{certfile} / {keyfile}"
        raise ConfigurationError(
            f"cannot load TLS certificate and key from {names}: {exc}"
        ) from None
    return context


class WebSocketPort(WSGIServer):
    """pywsgi's server, with the TLS handshake under ``handshake_timeout`` too.

    gevent performs the TLS handshake before any handler exists, on a socket
    without a timeout: a client that opens TCP and says nothing would hold a
    greenlet and a descriptor forever, and a failed handshake (a scanner, or
    plain HTTP sent to a wss port) would print a traceback.

    Every accepted connection not upgraded at the accept (``fws.at_accept``)
    is pending (``Server.pending_handshakes``) from the accept until its
    upgrade or its end; above ``max_connections`` a client gets 503 before a
    byte of its request is read.
    """

    _handed_over: set[Any]
    """Plain sockets whose handler just gave them to a connection: do_close leaves
    them open. Each is in it only from its handler's return to do_close, right after."""

    _no_delay_per_socket: bool | None = None
    """Whether each accepted socket needs TCP_NODELAY set (None: not known before the
    first accept). Linux copies it from the listener (``init_socket``): no call per client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handed_over = set()

    def init_socket(self) -> None:
        super().init_socket()
        # fws batches its writes itself; Nagle's algorithm would only add delay.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP listener: no Nagle to turn off

    def do_read(self) -> tuple[_socket.socket, Any] | None:
        """Accept one client as a plain non-blocking socket, not gevent's object.

        gevent's socket object is a cost an upgraded connection gets nothing
        for: its constructor's system calls (4-5 µs against under 1 for the
        plain socket, measured in stop 23) and two libev watchers it never
        uses, as it waits on watchers of its own: 0.4 kB of the 1.7 an idle
        connection held. A client upgraded at the accept keeps the plain
        socket; ``do_handle`` makes gevent's object only for one that goes to
        a handler greenlet (pywsgi, TLS).
        """
        listener = self.socket
        try:
            fd, address = listener._accept()
        except BlockingIOError:  # another process or a reset took it first
            return None
        sock = _socket.socket(listener.family, listener.type, listener.proto, fd)
        sock.setblocking(False)
        return sock, address

    def do_handle(self, client_socket: Any, address: Any) -> None:
        # In the hub, as the connection is accepted; client_socket is do_read's.
        self._set_no_delay(client_socket)
        server = self.application
        received: bytes | None = b""
        if can_upgrade_at_accept(server) and not server.at_connection_limit():
            try:
                received = upgrade_at_accept(server, client_socket, address)
            except Exception:  # a bug: this one client is cut, the accept loop goes on
                log.exception("upgrading %s at its accept failed", format_peer(address))
                client_socket.close()
                return
            if received is None:
                return  # upgraded, or gone: no greenlet, nothing pending
        # pywsgi's handler and gevent's TLS need gevent's socket object.
        sock = gevent.socket.socket(
            client_socket.family, client_socket.type, client_socket.proto, client_socket.detach()
        )
        # The bound holds even for connections whose greenlet has not started yet.
        server.pending_handshakes.add(sock, sock.fileno())
        super().do_handle(sock, address, received)

    def _set_no_delay(self, sock: Any) -> None:
        if self._no_delay_per_socket is None:  # the first client tells
            try:
                self._no_delay_per_socket = not sock.getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY
                )
            except OSError:
                self._no_delay_per_socket = False  # not TCP
        if self._no_delay_per_socket:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP

    def do_close(self, sock: Any, *args: Any) -> None:  # args: the address, what was received
        self.application.pending_handshakes.discard(sock)
        if sock in self._handed_over:  # it now belongs to an open connection
            self._handed_over.discard(sock)
            return
        super().do_close(sock, *args)

    def wrap_socket_and_handle(self, client_socket: Any, address: Any, received: bytes) -> Any:
        # received: always empty, as nothing is read before the TLS handshake.
        # One deadline for the whole handshake: a socket timeout would restart
        # at every byte, and a client trickling its hello would never be cut.
        deadline = self.application.handshake_timeout or None
        try:
            with gevent.Timeout(deadline, TimeoutError("TLS handshake timed out")):
                tls_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError as exc:  # ssl.SSLError and our TimeoutError are OSErrors
            log.info("TLS handshake from %s failed: %s", format_peer(address), exc)
            client_socket.close()
            return None
        detached = False
        try:
            detached = self.handle(tls_socket, address, token=client_socket)
        finally:
            if not detached:
                tls_socket.close()
        return None

    def handle(self, sock: Any, address: Any, received: bytes = b"", token: object = None) -> bool:
        """Handle one client; True when its socket now belongs to an open connection.

        ``received``: what was read off the socket at the accept. ``token``:
        the connection's entry in ``pending_handshakes`` when it is not
        ``sock`` (the accepted socket, under TLS).
        """
        server = self.application
        if server.at_connection_limit():
            server.table.stats.handshakes[503] += 1
            refuse_at_capacity(sock, address)
            return False
        handler = self.handler_class(sock, address, self)
        handler.pending_token = sock if token is None else token
        handler.received_first = received
        try:
            handler.handle()
        finally:
            if handler.detached and token is None:
                # gevent's server closes a plain socket once this returns (do_close),
                # a TLS one only if it is not detached (wrap_socket_and_handle); even
                # if opening raised, the connection owns it and closes it itself.
                self._handed_over.add(sock)
        return handler.detached


class MetricsHandler(WSGIHandler):
    """pywsgi's handler, with a deadline for reading each request (the metrics port).

    Without it a client that sends half a request line, or nothing, or
    trickles its headers, holds a descriptor forever; enough of them starve
    the WebSocket port of descriptors too. One deadline per request, armed as
    the request line is awaited (which bounds an idle keep-alive as well) and
    cancelled once the headers are read, so a slow scrape is never cut.
    pywsgi's bounds on the request line and headers apply as they are.
    """

    _deadline: gevent.Timeout | None = None

    def read_requestline(self) -> str:
        timeout = self.server.read_timeout
        if timeout:
            self._deadline = gevent.Timeout.start_new(
                timeout, TimeoutError("request not read in time")
            )
        return str(super().read_requestline())

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        finally:
            self._cancel_deadline()

    def handle(self) -> None:
        try:
            super().handle()
        finally:
            self._cancel_deadline()

    def _handle_client_error(self, ex: Exception) -> Any:
        if isinstance(ex, OSError):  # our deadline, or a reset: close, no traceback
            log.debug("metrics port: closing %s: %s", format_peer(self.client_address), ex)
            return None
        return super()._handle_client_error(ex)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None


class MetricsPort(WSGIServer):
    """The ``metrics_port`` listener; ``read_timeout`` bounds reading a request."""

    handler_class = MetricsHandler

    def __init__(
        self, listener: Any, application: Any, *, read_timeout: float | None, **kwargs: Any
    ) -> None:
        super().__init__(listener, application, **kwargs)
        self.read_timeout = read_timeout


def http_logs() -> dict[str, LoggingLogAdapter]:
    """pywsgi's access log (DEBUG) and error log (ERROR), both through ``fws.http``."""
    http_log = logging.getLogger("fws.http")
    return {
        "log": LoggingLogAdapter(http_log, logging.DEBUG),
        "error_log": LoggingLogAdapter(http_log, logging.ERROR),
    }


def metrics_listener(host: str, port: int, shared: bool) -> Any:
    """The metrics port's listening socket; ``shared``: workers bind it together.

    With workers (multi-process mode) every worker binds the port with
    SO_REUSEPORT and any of them answers a scrape with the sum of all;
    otherwise a second server on the port is an error, as for the main port.
    """
    family = gevent.socket.AF_INET6 if ":" in host else gevent.socket.AF_INET
    sock = gevent.socket.socket(family, gevent.socket.SOCK_STREAM)
    try:
        sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
