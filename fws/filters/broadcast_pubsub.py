"""Each pub/sub message's data goes to every client of this server.

Data that is UTF-8 goes as a text frame (as in the original, which sent only
text), anything else as a binary frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fws.events import WebSocketConsumerFilter
from fws.frames import text_if_utf8
from fws.storage.base import PubSubMessage

if TYPE_CHECKING:
    from fws.server import Server


class BroadcastPubSub(WebSocketConsumerFilter):
    @classmethod
    def filter(cls, web_socket_instance: Server, data: Any) -> None:
        payload = data.data if isinstance(data, PubSubMessage) else data
        web_socket_instance.broadcast(text_if_utf8(payload))
