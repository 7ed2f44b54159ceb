"""The server events filters attach to, and the data each event carries.

Subclass one of the five event base classes to add a filter to that event's
pipeline (the seed's names are kept)::

    WebSocketConnectFilter     handshake, before the upgrade   data: Request
    WebSocketDataFilter        raw bytes read from the socket  data: bytes
    WebSocketMessageFilter     each complete message           data: TextMessage or bytes
    WebSocketDisconnectFilter  the client is gone              data: CloseInfo
    WebSocketConsumerFilter    each item off the server queue  data: the item (instance: server)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

from .registry import FilterBase

__all__ = [
    "EVENTS",
    "CloseInfo",
    "Request",
    "TextMessage",
    "WebSocketConnectFilter",
    "WebSocketConsumerFilter",
    "WebSocketDataFilter",
    "WebSocketDisconnectFilter",
    "WebSocketMessageFilter",
]


class WebSocketConnectFilter(FilterBase):
    """Runs at the handshake; raise ``fws.Reject`` (or return ``DROP``, 403) to refuse."""


class WebSocketDataFilter(FilterBase):
    """Runs on every chunk of raw bytes read from a client, before frame parsing.

    The raw stream is observed, not rewritten: what the filters return does not
    change what the frame parser sees (that would break the protocol).
    """


class WebSocketMessageFilter(FilterBase):
    """Runs on every complete message: ``TextMessage`` for text, ``bytes`` for binary."""


class WebSocketDisconnectFilter(FilterBase):
    """Runs once per connection when it is gone; data is a ``CloseInfo``."""


class WebSocketConsumerFilter(FilterBase):
    """Runs on each item taken off the server's queue; the instance is the server."""


EVENTS: Final[dict[str, type[FilterBase]]] = {
    "connect": WebSocketConnectFilter,
    "data": WebSocketDataFilter,
    "message": WebSocketMessageFilter,
    "disconnect": WebSocketDisconnectFilter,
    "consumer": WebSocketConsumerFilter,
}
"""Event name (the keyword ``Server``/``serve`` take its pipeline by) -> base class."""


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
    client, 1002/1007/1009 for a protocol error, 1011 for a dead link). 1005
    means the close frame carried no code; 1006 that the connection dropped
    with no close frame at all. ``clean`` says whether the closing handshake
    completed (both sides sent a close frame).
    """

    code: int
    reason: str = ""
    clean: bool = True


@dataclass(frozen=True)
class Request:
    """The HTTP upgrade request, as connect filters see it."""

    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Header names are lower case: ``request.headers["origin"]``."""
    peer: tuple[str, int] = ("", 0)

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; of a repeated name, the last value wins."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

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
