"""Reading a request head off the socket once, and giving it to pywsgi after all.

The handshake's I/O, apart from its decisions (``fws.handshake``) and from
parsing (``fws.request_head``): ``read_get_head`` reads until a GET's head
is complete; ``Replay`` gives pywsgi the same bytes as if it were the first
to read them; ``BoundedReader`` counts a head against ``max_header_bytes``
as pywsgi reads it; ``answer_and_linger`` sends a refusal that a client still
sending its head gets to read. Any socket with ``recv``, ``sendall``,
``shutdown`` and ``settimeout`` (gevent's, plain or TLS): nothing here
imports gevent.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

from .request_head import head_length

__all__ = [
    "HEAD_READ",
    "LINGER_BYTES",
    "LINGER_SECONDS",
    "BoundedReader",
    "HeadTooLarge",
    "Replay",
    "answer_and_linger",
    "plain_response",
    "read_get_head",
]

HEAD_READ = 4096
"""What the fast path asks the socket for at a time: most heads in one read."""
UNBOUNDED_HEAD = 65536
"""Without ``max_header_bytes``, how much the fast path reads before leaving the head to pywsgi."""
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 2**20
"""After refusing a malformed request: how long, and how much, of the rest to discard."""


def read_get_head(
    sock: Any, limit: int | None, received_first: bytes = b""
) -> tuple[bytes, int | None, OSError | None]:
    """Read a request head that starts with ``GET ``: (bytes received, head length, read error).

    The length (through the empty line) is None when there is no complete
    head within ``limit`` bytes (``UNBOUNDED_HEAD`` for None): the request is
    not a GET (reading stops at its first byte that says so), the client
    stopped or failed mid-head, or the head is too large. The bytes received,
    head and anything after it, are returned either way, for ``Replay``.
    ``received_first``: what was read off the socket already (at the accept,
    ``fws.at_accept``), taken as the first read.
    """
    bound = UNBOUNDED_HEAD if limit is None else limit
    received = bytearray(received_first)
    length = None
    error = None
    if received:
        if not received.startswith(b"GET "[: len(received)]):
            return bytes(received), None, None  # not an upgrade: pywsgi reads it
        length = head_length(received)
    while length is None and len(received) <= bound:
        try:
            chunk = sock.recv(HEAD_READ)
        except OSError as exc:
            error = exc
            break
        if not chunk:
            break
        start = max(0, len(received) - 2)
        received += chunk
        if not received.startswith(b"GET "[: len(received)]):
            break  # not an upgrade: pywsgi reads it from the first line
        length = head_length(received, start)
    if length is not None and limit is not None and length > limit:
        length = None
    return bytes(received), length, error


class HeadTooLarge(ValueError):
    """The request head is over ``max_header_bytes`` (a ValueError: pywsgi's client error)."""


class BoundedReader:
    """The handshake's reader: counts every byte of the request head against one bound.

    pywsgi bounds the request line (8 KiB) and each header line (64 KiB), and
    http.client the number of header lines (100), but not the whole: 94 lines
    of 22 KiB were upgraded and held. ``reset`` starts a new request's count.
    """

    __slots__ = ("_raw", "_limit", "_used", "_counting")

    def __init__(self, raw: Any, limit: int | None) -> None:
        self._raw = raw
        self._limit = limit
        self._used = 0
        self._counting = True

    def reset(self) -> None:
        """A new request head starts: it gets the whole bound."""
        self._used = 0
        self._counting = True

    def head_done(self) -> None:
        """The head is parsed: what follows is a body, read line by line by some apps."""
        self._counting = False

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._raw.readline(size)
        if self._counting:
            self._used += len(line)
            if self._limit is not None and self._used > self._limit:
                raise HeadTooLarge(f"request head over {self._limit} bytes")
        return line

    def __getattr__(self, name: str) -> Any:  # read, read1, close, closed...
        return getattr(self._raw, name)


class Replay(io.RawIOBase):
    """The socket's input, starting with the bytes the fast path already read.

    pywsgi then reads the request as if it were the first to: same bytes,
    same answer. A read error the fast path met is raised once they are
    replayed, where pywsgi would have met it.
    """

    def __init__(self, received: bytes, raw: Any, error: OSError | None) -> None:
        super().__init__()
        self._received = memoryview(received)
        self._raw = raw
        self._error = error
        self._ended = False

    def end_after_received(self) -> None:
        """Read as at end of file once what was received is replayed: the socket's own
        bytes are the connection's to read (an upgrade's frames sent with its head)."""
        self._ended, self._error = True, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self._received:
            count = min(len(buffer), len(self._received))
            buffer[:count] = self._received[:count]
            self._received = self._received[count:]
            return count
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._ended:
            return 0
        result: int | None = self._raw.readinto(buffer)
        return result

    def close(self) -> None:
        self._raw.close()  # the socket's reference count of open files
        super().close()


def answer_and_linger(sock: Any, response: bytes) -> None:
    """Send an error response, then read what the client is still sending, for a while.

    Closing a socket with unread bytes sends a reset, and the client's
    kernel then drops our answer unread: a client still sending a 2 MB
    head would see "connection reset" instead of the 431. So, as nginx's
    lingering close does, stop writing and discard input for up to
    ``LINGER_SECONDS`` or ``LINGER_BYTES`` first.
    """
    try:
        sock.sendall(response)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        discarded = 0
        while discarded < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            discarded += len(chunk)
    except OSError:
        pass  # the client is gone or too slow: nothing more is owed to it


def plain_response(status: int, phrase: str, reason: str) -> bytes:
    """A whole ``Connection: close`` response with a one-line text body."""
    body = (reason + "\n").encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body
