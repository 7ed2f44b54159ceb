"""Each message goes back to its sender, text as text and binary as binary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fws.events import TextMessage, WebSocketMessageFilter

if TYPE_CHECKING:
    from fws.connection import Connection


class Echo(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        web_socket_instance.send(data)
