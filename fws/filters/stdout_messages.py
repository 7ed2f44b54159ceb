"""Prints ``--MESSAGE--`` and ``<id> => <message>`` for each message."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from fws.events import TextMessage, WebSocketMessageFilter

if TYPE_CHECKING:
    from fws.connection import Connection


class StdoutMessages(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        # One write per message, so lines of concurrent clients never interleave.
        shown = data if isinstance(data, str) else repr(data)  # binary: b'...'
        sys.stdout.write(f"--MESSAGE--\n{web_socket_instance.id} => {shown}\n")
        sys.stdout.flush()
