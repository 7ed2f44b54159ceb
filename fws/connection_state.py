"""What a connection holds: its slots, declared once with their types.

``Connection`` (its surface and its life), ``fws.inbound.Inbound`` (what it
receives) and ``fws.outbound.Outbound`` (what it sends) all read and set
this state; ``Connection.__init__`` gives every slot its first value and
says what each public one is for. Slots keep an idle connection small;
``__dict__`` stays for filters' own attributes, as the seed's set them.
``fws/_speedups_outbound.c`` reads some of these slots at their offsets: it checks
their names when it binds, at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

    import gevent

    from .context import ConnectionSettings, ConnectionTable
    from .datatypes import CloseInfo, Request, State
    from .deflate import PerMessageDeflate
    from .frames import FrameParser
    from .server import Server

__all__ = ["ConnectionState"]


class ConnectionState:
    """The slots of a connection, shared by ``Connection`` and its two halves."""

    __slots__ = (
        "id",
        "server",
        "settings",
        "table",
        "request",
        "token",
        "state",
        "close_info",
        "_socket",
        "_parser",
        "_watcher",
        "_reader",
        "_in_recv",
        "_last_read_at",
        "_outbox",
        "_outbox_bytes",
        "_close_queued",
        "_failed",
        "_close_received",
        "_writer",
        "_write_watcher",
        "_flush_due",
        "_raw_socket",
        "_close_timer",
        "_last_message_at",
        "_last_ping_at",
        "_awaiting_pong",
        "_rate_due",
        "_opening",
        "_deadline",
        "claims",
        "user",
        "subprotocol",
        "deflate",
        "_response_headers",
        "_groups",
        "opened_at",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "_client_closed_first",
        "_sent_counts",
        "_sent_bytes",
        "_run_first",
        "_run_messages",
        "_run_queued",
        "__dict__",
        "__weakref__",
    )

    # Who it is and what it serves.
    id: str
    server: Server | None
    settings: ConnectionSettings
    table: ConnectionTable
    request: Request
    token: str | None
    claims: dict[str, Any] | None
    user: str | None
    subprotocol: str | None
    deflate: PerMessageDeflate | None
    _response_headers: list[tuple[str, str]] | None
    _groups: frozenset[str]
    # Its life.
    state: State
    close_info: CloseInfo | None
    opened_at: float
    _opening: tuple[Any, list[bytes]] | None
    _close_timer: gevent.Greenlet | None
    _deadline: Any
    _last_message_at: float
    _last_ping_at: float
    _awaiting_pong: bool
    _client_closed_first: bool
    # Receiving (fws.inbound).
    _socket: socket.socket | None
    _parser: FrameParser | None
    _watcher: Any
    _reader: gevent.Greenlet | None
    _in_recv: bool
    _last_read_at: float
    _rate_due: float
    _failed: bool
    _close_received: bool
    messages_in: int
    bytes_in: int
    # Sending (fws.outbound).
    _raw_socket: socket.socket | None
    _outbox: list[bytes]
    _outbox_bytes: int
    _close_queued: bool
    _writer: gevent.Greenlet | None
    _write_watcher: Any
    _flush_due: bool
    messages_out: int
    bytes_out: int
    _sent_counts: list[int] | None
    _sent_bytes: list[int]
    _run_first: int
    _run_messages: int
    _run_queued: int
