"""Upgrading a client in the accept callback itself, when nothing can make it wait.

Most WebSocket clients send their request head in the same instant as the
TCP handshake completes, so by the time the server accepts the connection
the whole head is usually in the socket's buffer. When the server has no
connect or open filters and its storage's ``connected`` never waits, the
upgrade is then pure computation plus two non-blocking system calls (one
``recv``, one ``send``): ``upgrade_at_accept`` does it right there, in the
hub, with no greenlet, no pywsgi handler and no handshake timer, which were
most of an upgrade's CPU time.

Anything else goes to the handler greenlet (``fws.handshake``) with the
bytes read here, which it takes as its first read: a head not complete yet,
not a plain upgrade, or one refused (the handler decides the refusal again
from the same bytes, and answers and logs it as it always did). So a client
gets the same answer either way; only the time to get it differs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .connection import Connection
from .errors import Reject
from .escape import format_peer
from .handshake import check_request, plain_upgrade_request, response_head
from .handshake_rules import first_offered
from .head_reader import HEAD_READ
from .storage.base import connected_may_wait

if TYPE_CHECKING:
    from .server import Server

__all__ = ["can_upgrade_at_accept", "upgrade_at_accept"]

log = logging.getLogger("fws.handshake")


def can_upgrade_at_accept(server: Server) -> bool:
    """Whether an upgrade can run in the hub: nothing in it may wait.

    Connect and open filters may wait on I/O (a database, a token service),
    and so may a storage's ``connected`` unless it says otherwise
    (``fws.storage.base.connected_may_wait``). TLS needs its own handshake first.
    Read per connection: pipelines may be replaced while the server runs.
    """
    pipelines = server.pipelines
    return (
        server.ssl_context is None
        and not pipelines["connect"]
        and not pipelines["open"]
        and not connected_may_wait(server.storage_object)
    )


def upgrade_at_accept(server: Server, sock: Any, address: Any) -> bytes | None:
    """Upgrade ``sock`` now if its whole head is here and it is accepted: None.

    Otherwise the bytes read off the socket (perhaps none), for the handler
    greenlet to take as its first read. Never waits: the socket is gevent's,
    non-blocking underneath, and this runs in the hub.
    """
    raw = sock._sock  # gevent's socket wraps a non-blocking one
    try:
        received: bytes = raw.recv(HEAD_READ)
    except OSError:  # nothing yet (EAGAIN), or an error the handler meets again
        return b""
    request, length = plain_upgrade_request(server, received, address)
    if request is None or check_request(server, request, "GET", "HTTP/1.1", False) is not None:
        return received
    connection = Connection(request, server.connection_settings, server.table, server)
    connection.subprotocol = first_offered(server.subprotocols, request.subprotocols)
    response = response_head(server, connection, request)
    if isinstance(response, Reject):  # the handler answers it (500), as it always has
        connection.abandon()
        return received
    try:
        sent = raw.send(response)
    except OSError as exc:
        sent, failure = 0, exc.strerror or str(exc)
    else:
        failure = "" if sent == len(response) else "the response did not fit its send buffer"
    if failure:
        # An empty send buffer takes a few hundred bytes whole: only a client
        # that is already gone gets here. Nothing of the connection remains.
        log.info("client %s went away during the upgrade: %s", format_peer(address), failure)
        connection.abandon()
        sock.close()
        return None
    stats = server.table.stats
    stats.handshakes[101] += 1
    stats.upgrades_at_accept += 1
    connection.request = request.without_headers()  # as the handler's hand-over does
    connection.open(sock, received[length:])
    return None
