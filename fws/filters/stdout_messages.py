"""Prints ``--MESSAGE--`` and ``<id> => <message>`` for each message.

A message is one printed line: its control characters (newlines, ``ESC`` and
the rest of an ANSI sequence's start, C1 controls, BEL...) are printed as
Python escapes (``\\n``, ``\\x1b``), so a client can neither forge lines nor
drive the terminal. Binary messages print as ``b'...'``, escaped already.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from fws.escape import printable
from fws.events import TextMessage, WebSocketMessageFilter

if TYPE_CHECKING:
    from fws.connection import Connection


class StdoutMessages(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        # One write per message, so lines of concurrent clients never interleave.
        shown = printable(data, None) if isinstance(data, str) else repr(data)  # b'...'
        sys.stdout.write(f"--MESSAGE--\n{web_socket_instance.id} => {shown}\n")
        sys.stdout.flush()
