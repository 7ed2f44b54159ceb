"""The data that events carry: plain values, importable without the registry.

The wire layer (``fws.frames``) builds ``TextMessage`` values and the
handshake builds ``Request`` values; neither needs to know about filters, so
these types live apart from ``fws.events`` (which imports the registry).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NoReturn
from urllib.parse import parse_qsl

__all__ = [
    "BEARER_PREFIX",
    "CloseInfo",
    "ExtensionOffer",
    "Request",
    "State",
    "TextMessage",
    "bearer_token",
]

BEARER_PREFIX = "bearer."
"""A ``Sec-WebSocket-Protocol`` entry ``bearer.<token>`` carries a token (browsers cannot
set an Authorization header on a WebSocket); the server never echoes it as chosen."""


def bearer_token(subprotocol: str) -> str | None:
    """The token a ``bearer.<token>`` subprotocol entry carries (prefix in any case), or None."""
    if subprotocol[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        return subprotocol[len(BEARER_PREFIX) :]
    return None


class State(enum.Enum):
    """Where a connection is in its life (``Connection.state``)."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class TextMessage(str):
    """A text message: a ``str`` that ``bytes()`` turns into its UTF-8 encoding.

    The seed's filters call ``bytes(data)`` on every message; this keeps that
    working without making modern filters deal with bytes for text.
    """

    __slots__ = ()

    def __bytes__(self) -> bytes:
        return self.encode("utf-8")


@dataclass(frozen=True)
class CloseInfo:
    """Why a connection ended.

    ``code`` and ``reason`` are those of the first close frame, whoever sent
    it: the client's, or the server's own (1001 at shutdown, 1008 for a slow
    client or an expired token, 1002/1007/1009 for a protocol error, 1011 for
    a dead link). 1005 means the close frame carried no code; 1006 that the
    connection dropped with no close frame at all. ``clean`` says whether the
    closing handshake completed (both sides sent a close frame).
    """

    code: int
    reason: str = ""
    clean: bool = True


ExtensionOffer = tuple[str, tuple[tuple[str, str | None], ...]]
"""One offer of ``Sec-WebSocket-Extensions``: (name, ((parameter, value or None), ...))."""


class _NoHeaders(dict[str, str]):
    """The empty headers every upgraded request shares: a dict that refuses writes.

    A dict, not a ``MappingProxyType``: a request is a plain dataclass that
    filters copy, pickle and turn into JSON (``dataclasses.asdict``), and a
    mapping proxy can be none of those.
    """

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("an upgraded request keeps no headers; they are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


_NO_HEADERS: Mapping[str, str] = _NoHeaders()


@dataclass(frozen=True)
class Request:
    """The HTTP upgrade request, as connect filters see it.

    ``peer`` is the client's address: the TCP peer, or, when that peer is a
    trusted proxy (``--trusted-proxy``), the client the proxy names in
    ``X-Forwarded-For`` or ``Forwarded``.

    After the upgrade the connection keeps a copy without ``headers``
    (``Request.without_headers``): a connect filter that needs a header later
    stores what it needs on the connection.
    """

    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Header names are lower case; a repeated header's values are joined with ","
    (with "; " for a name holding ``cookie``), as a WSGI environ joins them."""
    peer: tuple[str, int] = ("", 0)
    subprotocols: tuple[str, ...] = ()
    """``Sec-WebSocket-Protocol`` as the client offered it, in its order of preference."""
    extensions: tuple[ExtensionOffer, ...] = ()
    """``Sec-WebSocket-Extensions`` offers, parsed, in the client's order."""

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; of a repeated name, the last value wins."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    def without_headers(self) -> Request:
        """The request as a connection keeps it once upgraded: headers dropped.

        Every such request shares one empty, read-only mapping: an empty dict
        per open connection was 64 bytes of nothing.
        """
        return replace(self, headers=_NO_HEADERS) if self.headers else self

    @classmethod
    def from_environ(cls, environ: Mapping[str, object], peer: tuple[str, int]) -> Request:
        """Build from a WSGI environ (header ``X-Token`` arrives as ``HTTP_X_TOKEN``)."""
        headers = {
            key[5:].replace("_", "-").lower(): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        return cls(
            path=str(environ.get("PATH_INFO", "/")),
            query_string=str(environ.get("QUERY_STRING", "")),
            headers=headers,
            peer=(str(peer[0]), int(peer[1])) if peer else ("", 0),
        )
