"""Prints ``--PUBSUB--`` and the item for each item the consumer pipeline gets.

Items come from pub/sub channels other programs (or clients, through filters
that publish) write to: the item is printed on one line, its control
characters escaped as ``stdout_messages`` does.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fws.escape import printable
from fws.events import WebSocketConsumerFilter

if TYPE_CHECKING:
    from fws.server import Server


class StdoutPubSub(WebSocketConsumerFilter):
    @classmethod
    def filter(cls, web_socket_instance: Server, data: Any) -> None:
        sys.stdout.write(f"--PUBSUB--\n{printable(str(data), None)}\n")
        sys.stdout.flush()
