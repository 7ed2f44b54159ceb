"""The server events filters attach to, and the data each event carries.

Subclass one of the six event base classes to add a filter to that event's
pipeline (the seed's names are kept)::

    WebSocketConnectFilter     handshake, before the upgrade   data: Request
    WebSocketOpenFilter        once, right after the upgrade   data: Request
    WebSocketDataFilter        raw bytes read from the socket  data: bytes
    WebSocketMessageFilter     each complete message           data: TextMessage or bytes
    WebSocketDisconnectFilter  the client is gone              data: CloseInfo
    WebSocketConsumerFilter    each item off the server queue  data: the item (instance: server)

Per connection the order is fixed: connect, open, then data and message events
in the order the bytes arrived, then disconnect exactly once. The data types
themselves live in ``fws.datatypes``, which the wire layer can import without
the registry.
"""

from __future__ import annotations

from typing import Final

from .datatypes import CloseInfo, Request, TextMessage
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
    "WebSocketOpenFilter",
]


class WebSocketConnectFilter(FilterBase):
    """Runs at the handshake; raise ``fws.Reject`` (or return ``DROP``, 403) to refuse."""


class WebSocketOpenFilter(FilterBase):
    """Runs once per connection, after the upgrade and before any data or message event.

    The storage already knows the connection, so filters may ``send()`` here
    (a greeting, the initial state) and the client receives it before
    anything else the server sends it. Data: the ``Request`` (without headers).
    """


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
    "open": WebSocketOpenFilter,
    "data": WebSocketDataFilter,
    "message": WebSocketMessageFilter,
    "disconnect": WebSocketDisconnectFilter,
    "consumer": WebSocketConsumerFilter,
}
"""Event name (the keyword ``Server``/``serve`` take its pipeline by) -> base class."""
