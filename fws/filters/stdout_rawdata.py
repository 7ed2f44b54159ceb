"""Prints ``--RAWDATA--`` and the raw bytes of every chunk read from a client.

The bytes are printed as their ``repr`` (``b'\\x81\\x85...'``): ASCII only,
every control byte escaped, so nothing a client sends reaches the terminal raw.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from fws.events import WebSocketDataFilter

if TYPE_CHECKING:
    from fws.connection import Connection


class StdoutRawData(WebSocketDataFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: bytes) -> None:
        sys.stdout.write(f"--RAWDATA--\n{data!r}\n")
        sys.stdout.flush()
