"""Deciding an upgrade and writing its 101: what both ways of upgrading share.

A client is upgraded either by the handler greenlet (``fws.handshake``,
pywsgi's handler) or, when nothing in the upgrade can wait, in the accept
callback itself (``fws.at_accept``). Both take the request from the same
strict parse (``plain_upgrade_request``), refuse by the same rules in the
same order (``check_request``), make the connection the same way
(``new_connection``), answer with the same bytes (``response_head``) and
start serving it the same way (``open_upgraded``), so a client cannot tell
which way it went. Nothing here reads or writes a socket: each way does
its own I/O.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .connection import Connection
from .datatypes import Request, bearer_token
from .errors import Reject
from .escape import printable
from .handshake_rules import (
    accept_key,
    check_upgrade,
    first_offered,
    is_header_safe,
    is_plain_upgrade,
    loggable_subprotocol,
    path_info,
    upgrade_request,
)
from .request_head import head_length, parse_head

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "check_request",
    "new_connection",
    "open_upgraded",
    "plain_upgrade_request",
    "response_head",
]

log = logging.getLogger("fws.handshake")


def plain_upgrade_request(
    server: Server, received: bytes, address: Any
) -> tuple[Request | None, int]:
    """The request of a complete plain upgrade head at the start of ``received``.

    (None, 0) when the head is incomplete, over ``max_header_bytes``, or
    anything but a plain upgrade (``is_plain_upgrade``): pywsgi's to read.
    Otherwise the request and the head's length (frames may follow it).
    """
    length = head_length(received)
    limit = server.max_header_bytes
    if length is None or (limit is not None and length > limit):
        return None, 0
    head = parse_head(received[:length])
    if head is None or not is_plain_upgrade(head.method, head.version, head.headers):
        return None, 0
    path, _, query = head.target.partition("?")
    request = upgrade_request(
        server.trusted_proxies, path_info(path), query, head.headers, address
    )
    return request, length


def check_request(
    server: Server, request: Request, method: str, version: str, has_body: bool
) -> Reject | None:
    """Every refusal decided from the request alone, before any connect filter runs.

    The RFC's (``check_upgrade``, which says what ``has_body`` is), then
    the server's own: they read its state of the moment.
    """
    rfc_refusal = check_upgrade(request, method, version, has_body)
    if rfc_refusal is not None:
        return rfc_refusal
    headers = request.headers
    if server.stopping or server.draining:
        return Reject(503, "server is shutting down")
    if server.origins is not None:
        origin = headers.get("origin")
        if origin is not None and origin not in server.origins:
            return Reject(403, f"origin {printable(origin, 100)} is not allowed")
    if server.at_connection_limit():
        return Reject(503, "server is at its connection limit")
    if server.require_subprotocol and not first_offered(server.subprotocols, request.subprotocols):
        wanted = ", ".join(server.subprotocols)
        return Reject(400, f"no supported subprotocol offered (this server speaks {wanted})")
    return None


def response_head(server: Server, connection: Connection, request: Request) -> bytes | Reject:
    """The 101 response, or a 500 when a filter chose what cannot be sent (our bug)."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: " + accept_key(request.headers["sec-websocket-key"].strip()),
    ]
    chosen = connection.subprotocol
    if chosen is not None:
        is_token = bearer_token(chosen) is not None
        if chosen not in request.subprotocols or is_token:
            log.error(
                "connection %s: subprotocol %r chosen, but the client offered %r%s",
                connection.id,
                loggable_subprotocol(chosen),
                [loggable_subprotocol(offer) for offer in request.subprotocols],
                " (a bearer token is never echoed)" * is_token,
            )
            return Reject(500, "internal server error")
        lines.append("Sec-WebSocket-Protocol: " + chosen)
    deflate = server.negotiate_compression(request.extensions)
    if deflate is not None:
        connection.deflate = deflate
        lines.append("Sec-WebSocket-Extensions: " + deflate.response)
    for name, value in connection.take_response_headers():
        if not is_header_safe(name, value):
            log.error("connection %s: response header %r is not sendable", connection.id, name)
            return Reject(500, "internal server error")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def new_connection(server: Server, request: Request) -> Connection:
    """The connection an accepted request becomes, with the server's subprotocol chosen.

    The first of ``--subprotocol``'s names that the client offered; a
    connect filter may choose another before ``response_head`` writes it.
    """
    connection = Connection(request, server.connection_settings, server.table, server)
    connection.subprotocol = first_offered(server.subprotocols, request.subprotocols)
    return connection


def open_upgraded(server: Server, connection: Connection, sock: Any, received: bytes) -> None:
    """The 101 is sent: count it, and serve ``sock`` from now on, headers dropped.

    ``received``: what the client sent after its request head. The
    connection keeps its request without the header dict (a browser's is a
    kilobyte or more per connection).
    """
    server.table.stats.handshakes[101] += 1
    connection.request = connection.request.without_headers()
    connection.open(sock, received)
