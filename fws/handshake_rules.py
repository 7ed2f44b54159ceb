"""The opening handshake's rules (RFC 6455 section 4.2): what a request alone decides.

Plain functions, no I/O: no socket, no gevent, no pywsgi. ``fws.handshake``
(the one module that knows gevent-websocket's handler) reads the request,
asks these, and writes the answer; kept apart so that the rules read as the
RFC does, and can be tested, without a server, a socket or a greenlet. The
checks that depend on the server's state of the moment (stopping, the
connection limit) stay with the handler that holds that server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .datatypes import Request, bearer_token
from .deflate import parse_offers
from .errors import Reject
from .escape import printable

if TYPE_CHECKING:
    from .proxies import ProxyNetworks

__all__ = [
    "accept_key",
    "check_upgrade",
    "first_offered",
    "header_tokens",
    "is_header_safe",
    "is_plain_upgrade",
    "loggable_subprotocol",
    "path_info",
    "upgrade_request",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def header_tokens(value: str) -> list[str]:
    """A comma-separated header value as lower-case tokens: ``keep-alive, Upgrade``."""
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def path_info(path: str) -> str:
    """``PATH_INFO`` from a target's path, as pywsgi decodes it (latin-1)."""
    return unquote(path, encoding="latin-1") if "%" in path else path


def is_plain_upgrade(method: str, version: str, headers: Mapping[str, str]) -> bool:
    """A GET asking for ``Upgrade: websocket`` and nothing a WSGI environ treats apart.

    A body's headers (``Content-Length``, ``Transfer-Encoding``), and
    ``Content-Type``, which a WSGI environ does not list among the headers:
    such a request goes to pywsgi, whose checks and environ it was always
    read by.
    """
    return (
        method == "GET"
        and version == "HTTP/1.1"
        and "websocket" in header_tokens(headers.get("upgrade", ""))
        and "content-length" not in headers
        and "transfer-encoding" not in headers
        and "content-type" not in headers
    )


def upgrade_request(
    trusted_proxies: ProxyNetworks,
    path: str,
    query: str,
    headers: Mapping[str, str],
    address: Any,
) -> Request:
    """The ``Request`` connect filters see, built once, for either path."""
    # One string per client address, not one per connection: many connections
    # come from few addresses (a proxy, a NAT, a load generator), and each kept
    # its own copy of the host for as long as it was open.
    peer = (sys.intern(str(address[0])), int(address[1])) if address else ("", 0)
    return Request(
        path=path,
        query_string=query,
        headers=headers,
        peer=trusted_proxies.client_of(peer, headers),
        subprotocols=tuple(
            entry.strip()
            for entry in headers.get("sec-websocket-protocol", "").split(",")
            if entry.strip()
        ),
        extensions=parse_offers([headers.get("sec-websocket-extensions", "")]),
    )


def check_upgrade(request: Request, method: str, version: str, has_body: bool) -> Reject | None:
    """The RFC 6455 section 4.2.1 checks, all of them, in order: the first refusal, or None.

    ``has_body``: a Content-Length above 0 or a Transfer-Encoding. The
    body's bytes would follow the head, where the connection reads frames:
    a proxy and this server would disagree on where the request ends.
    """
    if method != "GET":
        return Reject(405, "a WebSocket upgrade must be a GET request")
    if version in ("HTTP/0.9", "HTTP/1.0"):
        return Reject(400, "a WebSocket upgrade needs HTTP/1.1 or later")
    if has_body:
        return Reject(400, "a WebSocket upgrade has no body")
    headers = request.headers
    host = headers.get("host", "").strip()
    if not host:
        return Reject(400, "Host header is missing")
    if "," in host:  # repeated Host lines, joined (RFC 9112 3.2: 400)
        return Reject(400, "more than one Host header")
    if "upgrade" not in header_tokens(headers.get("connection", "")):
        return Reject(400, "Connection header must include 'Upgrade'")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        key_is_valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        key_is_valid = False
    if not key_is_valid:
        return Reject(400, "Sec-WebSocket-Key header is missing or not 16 base64 bytes")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return Reject(426, "only WebSocket version 13 is supported")
    return None


def loggable_subprotocol(offer: str) -> str:
    """A subprotocol as a log line may show it: never the token of a ``bearer.`` entry."""
    return "bearer.<token>" if bearer_token(offer) is not None else printable(offer, 60)


def first_offered(ours: Sequence[str], offered: Sequence[str]) -> str | None:
    """The first of our subprotocols, in our order, that the client offered."""
    for name in ours:
        if name in offered:
            return name
    return None


def is_header_safe(name: object, value: object) -> bool:
    """A header a filter added is sendable: ASCII strings, no line breaks or NULs, a name."""
    return (
        isinstance(name, str)
        and isinstance(value, str)
        and name.isascii()
        and value.isascii()
        and name.strip() != ""
        and not any(c in text for text in (name, value) for c in "\r\n\0")
        and ":" not in name
    )
