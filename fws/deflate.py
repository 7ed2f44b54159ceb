"""permessage-deflate (RFC 7692), without I/O: negotiation and a per-connection codec.

``negotiate`` reads the client's ``Sec-WebSocket-Extensions`` offers and, for
the first one the server can honour, returns the response header value and a
``PerMessageDeflate`` codec. ``FrameParser`` (``fws.frames``) inflates with
the codec's ``decompressor()``; ``encode_message`` deflates with ``compress()``.

Why websockets for the header and zlib for the data: the header grammar and
the parameter rules (every parameter with and without a value, duplicates,
8..15 bounds, what the server may add or lower) are subtle and websockets'
``headers.parse_extension`` and ``ServerPerMessageDeflateFactory`` get them
right and are maintained, so negotiation is theirs and runs once per
connection. Their ``PerMessageDeflate.encode``/``decode`` work on ``Frame``
objects and keep a compressor per connection; on our hot path a message is
bytes in, bytes out, and per-connection memory matters (an idle fws connection
costs ~2.6 kB, one zlib compressor ~270 kB), so the data path calls zlib
directly:

- without server context takeover (our default), no compressor is kept: one is
  made per message (measured faster than ``copy()`` of a pristine one, which
  duplicates the whole ~256 KiB state);
- without client context takeover (our default), the parser drops the
  inflater when the message ends;
- with context takeover, the codec keeps the object the client asked for,
  created on first use.

zlib cannot write a raw deflate stream with an 8-bit window (it silently uses
9, which a client honouring ``server_max_window_bits=8`` could not inflate), so
an offer demanding ``server_max_window_bits=8`` is declined, as websockets
does; the client's next offer, or no compression, follows.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Protocol

from websockets.exceptions import InvalidHeader, NegotiationError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

from .datatypes import ExtensionOffer

__all__ = [
    "COMPRESSION_CHOICES",
    "DeflateSettings",
    "Inflater",
    "PerMessageDeflate",
    "negotiate",
    "parse_offers",
]

COMPRESSION_CHOICES: Final = ("deflate", "off")
"""What ``--compression`` / ``Server(compression=...)`` take by name."""

EXTENSION_NAME: Final = "permessage-deflate"
EMPTY_BLOCK: Final = b"\x00\x00\xff\xff"
"""The tail a sync flush ends with; RFC 7692 strips it on send, re-adds it on receive."""

_LEVEL: Final = zlib.Z_DEFAULT_COMPRESSION


class Inflater(Protocol):
    """What ``decompressor()`` returns: a raw-deflate ``zlib.decompressobj``."""

    @property
    def eof(self) -> bool: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, /, max_length: int = 0) -> bytes: ...


@dataclass(frozen=True)
class DeflateSettings:
    """Server-side policy. Defaults are what a production server should ship.

    The two ``no_context_takeover`` defaults trade some compression of
    repetitive streams for memory: with them a connection keeps no zlib state
    between messages, instead of ~270 kB (compressor) plus ~40 kB (inflater).
    """

    server_no_context_takeover: bool = True
    """Reset our compressor for every message (we always do unless this is False)."""
    client_no_context_takeover: bool = True
    """Ask clients to reset theirs; RFC 7692 7.1.1.2 lets the server add it."""
    server_max_window_bits: int = 15
    """Largest window we compress with, 9..15; a client may ask for less (not 8)."""
    client_max_window_bits: int | None = None
    """Cap on the client's window, 8..15; ``None`` accepts what the client offers."""
    compress_min_size: int = 1024
    """Messages shorter than this, in bytes, are sent uncompressed (RSV1 unset).

    Node ws's threshold too: a deflate costs microseconds (a compressor is
    made per message) and saves a few dozen bytes on a short message, less
    than the TCP/IP headers of the packet carrying it."""
    memory_level: int = 8
    """zlib ``memLevel`` (1..9) of our compressor."""

    def __post_init__(self) -> None:
        if not 9 <= self.server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be between 9 and 15 (zlib cannot do 8)")
        bits = self.client_max_window_bits
        if bits is not None and not 8 <= bits <= 15:
            raise ValueError("client_max_window_bits must be between 8 and 15, or None")
        if self.compress_min_size < 0:
            raise ValueError("compress_min_size must not be negative")
        if not 1 <= self.memory_level <= 9:
            raise ValueError("memory_level must be between 1 and 9")


class PerMessageDeflate:
    """One connection's negotiated codec.

    ``shared_key`` is equal for codecs whose ``compress()`` gives byte-identical
    output for the same payload and which compress the same messages
    (``compress_min_size``), so a broadcast can compress once for all of them.
    It is ``None`` with server context takeover, where the output depends on
    the connection's earlier messages.
    """

    __slots__ = (
        "response",
        "shared_key",
        "compress_min_size",
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_window_bits",
        "client_window_bits",
        "memory_level",
        "_compressor",
        "_decompressor",
    )

    def __init__(
        self,
        *,
        response: str,
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        server_window_bits: int,
        client_window_bits: int,
        compress_min_size: int,
        memory_level: int,
    ) -> None:
        self.response = response
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_window_bits = server_window_bits
        # An inflater with a 9-bit window reads everything an 8-bit one does,
        # and also what a client that claims 8 but is zlib (so uses 9) sends.
        self.client_window_bits = max(client_window_bits, 9)
        self.compress_min_size = compress_min_size
        self.memory_level = memory_level
        self.shared_key: Hashable | None = (
            _shared_key(server_window_bits, memory_level, compress_min_size)
            if server_no_context_takeover
            else None
        )
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def __repr__(self) -> str:
        return f"PerMessageDeflate({self.response!r})"

    def compresses(self, size: int) -> bool:
        """Whether a message payload of ``size`` bytes is sent compressed.

        The one rule: ``encode_message`` compresses by it, and
        ``Connection.send`` sends a large payload uncopied only when it does not.
        """
        return size >= self.compress_min_size

    def compress(self, payload: bytes) -> bytes:
        """Deflate one whole message payload, without the 00 00 ff ff tail."""
        compressor = self._compressor
        if compressor is None:
            if self.server_no_context_takeover:
                # A fresh compressor per message: its hash table (2 ** (memLevel
                # + 7) entries, cleared at creation) need not outgrow the
                # message. 184 bytes of JSON: 34 us at memLevel 8, 9 us at 1,
                # the same output. Decided by the size alone, so codecs that
                # share a shared_key still produce identical bytes.
                level = min(self.memory_level, max(1, len(payload).bit_length() - 7))
                window = -self.server_window_bits
                compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, window, level)
            else:
                compressor = self._compressor = zlib.compressobj(
                    _LEVEL, zlib.DEFLATED, -self.server_window_bits, self.memory_level
                )
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4]

    def decompressor(self) -> Inflater:
        """The inflater for a new compressed message.

        Without client context takeover a fresh one, for the caller to drop
        when the message ends; with it, the connection's own, made on first
        use (and again if a client ended its stream with a final block).
        """
        if self.client_no_context_takeover:
            return zlib.decompressobj(-self.client_window_bits)
        decompressor = self._decompressor
        if decompressor is None or decompressor.eof:
            decompressor = self._decompressor = zlib.decompressobj(-self.client_window_bits)
        return decompressor


@lru_cache(maxsize=64)
def _shared_key(window_bits: int, memory_level: int, compress_min_size: int) -> Hashable:
    # One tuple for all the connections alike, rather than one each.
    return (EXTENSION_NAME, window_bits, memory_level, compress_min_size)


_CACHED_LINE = 200
"""Lines up to this long are parsed once: browsers of one kind all send the same line."""


def parse_offers(header_values: Sequence[str]) -> tuple[ExtensionOffer, ...]:
    """The offers of ``Sec-WebSocket-Extensions`` header lines, in the client's order.

    Each line is a comma list of offers; a line that does not parse is
    skipped whole, the others still count. Never raises on client input.
    """
    offers: list[ExtensionOffer] = []
    for value in header_values:
        if len(value) <= _CACHED_LINE:
            offers.extend(_parse_common_line(value))
        else:
            offers.extend(_parse_line(value))
    return tuple(offers)


def _parse_line(value: str) -> tuple[ExtensionOffer, ...]:
    try:
        parsed = parse_extension(value)
    except InvalidHeader:  # also a client that offers none: parse_extension("") raises
        return ()
    return tuple((name, tuple(params)) for name, params in parsed)


# At most 64 lines of 200 characters: a client sending new lines only evicts.
_parse_common_line = lru_cache(maxsize=64)(_parse_line)


def negotiate(
    offers: Sequence[ExtensionOffer], settings: DeflateSettings
) -> tuple[str, PerMessageDeflate] | None:
    """Accept the client's first permessage-deflate offer that we can honour.

    ``offers`` are parsed ``Sec-WebSocket-Extensions`` offers
    (``parse_offers``; the handshake keeps them as ``request.extensions``).
    An offer with bad, duplicate or unknown parameters, window bits outside
    8..15, or ``server_max_window_bits=8`` is declined and the next one tried.
    Returns the ``Sec-WebSocket-Extensions`` response value and a new codec,
    or ``None``: no compression. Never raises on client input.
    """
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=settings.server_no_context_takeover,
        client_no_context_takeover=settings.client_no_context_takeover,
        # 15 is what an absent parameter means: no need to say it.
        server_max_window_bits=(
            None if settings.server_max_window_bits == 15 else settings.server_max_window_bits
        ),
        client_max_window_bits=settings.client_max_window_bits,
    )
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            response_params, extension = factory.process_request_params(params, [])
        except NegotiationError:
            continue
        # Interned: thousands of connections share a handful of responses.
        response = sys.intern(build_extension([(EXTENSION_NAME, response_params)]))  # type: ignore[list-item]
        codec = PerMessageDeflate(
            response=response,
            server_no_context_takeover=extension.local_no_context_takeover,
            client_no_context_takeover=extension.remote_no_context_takeover,
            server_window_bits=extension.local_max_window_bits,
            client_window_bits=extension.remote_max_window_bits,
            compress_min_size=settings.compress_min_size,
            memory_level=settings.memory_level,
        )
        return response, codec
    return None
