"""Each client message is published to a pub/sub channel (``global`` by default).

With ``broadcast_pubsub`` after it, this makes a chat that spans every server
sharing the storage: ``fws_server --storage redis -f publish_messages
broadcast_pubsub``. Every subscribed server's consumer pipeline gets the
message, so every client receives it, the sender included (the message comes
back the way everyone else's does). With the in-memory storage the message
reaches this server's consumer pipeline, so the same setup works on one server.

To publish elsewhere, subclass in your own module::

    class PublishToRoom(PublishMessages):
        channel = "room"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from fws.events import TextMessage, WebSocketMessageFilter

if TYPE_CHECKING:
    from fws.connection import Connection


class PublishMessages(WebSocketMessageFilter):
    channel: ClassVar[str] = "global"

    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        payload = str(data) if isinstance(data, str) else bytes(data)
        web_socket_instance.storage_object.publish(cls.channel, payload)
