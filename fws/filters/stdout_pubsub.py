"""Prints ``--PUBSUB--`` and the item for each item the consumer pipeline gets."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fws.events import WebSocketConsumerFilter

if TYPE_CHECKING:
    from fws.server import Server


class StdoutPubSub(WebSocketConsumerFilter):
    @classmethod
    def filter(cls, web_socket_instance: Server, data: Any) -> None:
        sys.stdout.write(f"--PUBSUB--\n{data}\n")
        sys.stdout.flush()
