"""Each message goes back to its sender, text as text and binary as binary."""

from __future__ import annotations

from fws.connection import Connection
from fws.events import TextMessage, WebSocketMessageFilter


class Echo(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        web_socket_instance.send(data)
