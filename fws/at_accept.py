"""Upgrading a client in the accept callback itself, when nothing can make it wait.

Most WebSocket clients send their request head in the same instant as the
TCP handshake completes, so by the time the server accepts the connection
the whole head is usually in the socket's buffer. When nothing in the
upgrade can wait (``can_upgrade_at_accept``), it is then pure computation
plus two non-blocking system calls (one ``recv``, one ``send``):
``upgrade_at_accept`` does it right there, in the hub, with no greenlet, no
pywsgi handler and no handshake timer, which were over a third of an
upgrade's CPU time.

Anything else goes to the handler greenlet (``fws.handshake``) with the
bytes read here, which it takes as its first read: a head not complete yet,
not a plain upgrade, or one refused (the handler decides the refusal again
from the same bytes, and answers and logs it as it always did). So a client
gets the same answer either way; only the time to get it differs.
"""

from __future__ import annotations

import _socket
import logging
from typing import TYPE_CHECKING, Any

from .errors import Reject
from .escape import format_peer
from .head_reader import HEAD_READ
from .storage.base import waits_in_connected
from .upgrade import (
    check_request,
    new_connection,
    open_upgraded,
    plain_upgrade_request,
    response_head,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = ["can_upgrade_at_accept", "upgrade_at_accept"]

log = logging.getLogger("fws.handshake")


_NEVER_WAITING_HANDLERS = (logging.StreamHandler, logging.NullHandler)
"""Log handlers that write to a file (``FileHandler`` is a ``StreamHandler``) or nowhere."""

_LOGGERS = (log, logging.getLogger("fws.connection"), logging.getLogger("fws.server"))
"""What an upgrade at the accept may log to: its failures, and the connection's "opened"."""


def can_upgrade_at_accept(server: Server) -> bool:
    """Whether an upgrade can run in the hub: nothing in it may wait.

    Connect and open filters may wait on I/O (a database, a token service),
    and so may a storage's ``connected`` unless it says otherwise
    (``fws.storage.base.waits_in_connected``), and a log handler that
    sends over the network (under monkey-patching it holds its lock while
    it waits, and the hub cannot wait for the lock). TLS needs its own
    handshake first. Read per connection: pipelines and log handlers may be
    replaced while the server runs.
    """
    pipelines = server.pipelines
    return (
        server.ssl_context is None
        and not pipelines["connect"]
        and not pipelines["open"]
        and not waits_in_connected(server.storage_object)
        and _log_handlers_never_wait()
    )


def _log_handlers_never_wait() -> bool:
    for logger in _LOGGERS:
        current: logging.Logger | None = logger
        while current is not None:
            for handler in current.handlers:
                if not isinstance(handler, _NEVER_WAITING_HANDLERS):
                    return False
            if not current.propagate:
                break
            current = current.parent
    return True


def upgrade_at_accept(server: Server, sock: _socket.socket, address: Any) -> bytes | None:
    """Upgrade ``sock`` now if its whole head is here and it is accepted: None.

    Otherwise the bytes read off the socket (perhaps none), for the handler
    greenlet to take as its first read. Never waits: ``sock`` is a plain
    non-blocking socket (``WebSocketPort.do_read``), and this runs in the hub.
    """
    try:
        received: bytes = sock.recv(HEAD_READ)
    except OSError:  # nothing yet (EAGAIN); or a reset, after which the handler reads an end
        return b""
    request, length = plain_upgrade_request(server, received, address)
    if request is None:
        return received
    if check_request(server, request, "GET", "HTTP/1.1", has_body=False) is not None:
        return received
    connection = new_connection(server, request)
    response = response_head(server, connection, request)
    if isinstance(response, Reject):
        # A --subprotocol the server may not choose (bearer.*): logged there, and
        # once more by the handler, which decides it again and answers the 500.
        connection.abandon()
        return received
    try:
        sent = sock.send(response)
    except OSError as exc:
        failure: object = exc
    else:
        # An empty send buffer takes a few hundred bytes whole: not seen happen.
        failure = "" if sent == len(response) else f"only {sent} bytes of the 101 were sent"
    if failure:
        log.info("client %s went away during the upgrade: %s", format_peer(address), failure)
        connection.abandon()
        sock.close()
        return None
    server.table.stats.upgrades_at_accept += 1
    open_upgraded(server, connection, sock, received[length:])
    return None
