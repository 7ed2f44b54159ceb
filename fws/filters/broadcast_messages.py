"""Each message goes to every other client (never back to the sender)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fws.events import TextMessage, WebSocketMessageFilter

if TYPE_CHECKING:
    from fws.connection import Connection


class BroadcastMessages(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        web_socket_instance.broadcast(data)
