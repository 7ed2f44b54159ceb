"""RFC 6455 frames, without I/O: bytes in, events out; events in, bytes out.

The parser is fed whatever the socket returned, however many frames that is,
and returns every complete event. It enforces what a server must refuse
(unmasked frames, reserved bits, unknown opcodes, fragmented or oversized
control frames, bad UTF-8, bad close codes) and the message size limit, which
it checks from the frame header, before the payload is waited for. A violation
raises ``ProtocolError`` with the close code to answer with.

With permessage-deflate negotiated (``fws.deflate``), RSV1 on the first frame
of a message marks it compressed; the size limit then also bounds the inflated
size, enforced while inflating, so a small frame cannot inflate to a large
one. Corrupt compressed data is refused with 1002, as websockets does (its
``PerMessageDeflate.decode`` raises ``ProtocolError``); Node's ``ws`` uses
1007, and the Autobahn suite tests neither.
"""

from __future__ import annotations

import codecs
import io
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ._accel import speedups as _speedups
from .datatypes import TextMessage
from .errors import ProtocolError

if TYPE_CHECKING:
    from .deflate import Inflater, PerMessageDeflate

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_CONTROL_OPCODES: Final = frozenset((OP_CLOSE, OP_PING, OP_PONG))
_MAX_CONTROL_PAYLOAD: Final = 125
LARGE_FRAME: Final = 65536
"""A frame at least this large (header included) that spans reads is kept in the
pieces it arrives in (see ``FrameParser.large_missing``), not in a growing buffer."""
_MIN_PIECE: Final = 16384
"""Pieces smaller than this are gathered into one ``bytearray`` (see ``_add_piece``)."""
_EMPTY_BLOCK: Final = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: re-appended to a message


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Event = TextMessage | bytes | Ping | Pong | Close
"""A message is its data (``TextMessage`` for text, ``bytes`` for binary), with no
object around it: one less allocation a message, and its type says which it is."""


def is_valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 7.4; 1004-1006 and 1015 are never sent)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def unmask_portable(
    payload: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview
) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` as two big integers.

    C-speed arithmetic, but about 0.3-0.8 GB/s: the fallback when the
    websockets C extension is not available.
    """
    size = len(payload)
    if not size:
        return b""
    key = (bytes(mask) * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")


try:
    # websockets' C extension unmasks at ~50 GB/s (measured here: 64 KiB in
    # 1.2 us against 85 us for the big-integer XOR), which decides large-message
    # throughput: unmasking was 77% of the server's time in the 64 KiB echo.
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # a platform without the compiled extension
    _apply_mask = unmask_portable  # type: ignore[assignment]


_parse_messages = None if _speedups is None else _speedups.parse_messages
"""The C extension's loop over whole text and binary frames (``fws/_speedups_frames.c``), which
``FrameParser.feed`` runs first; None: pure Python (``_parse`` does it all)."""


def _pure_unmask_pieces(pieces: list[bytes | bytearray], start: int, mask: bytes) -> bytes:
    """The payload from ``start`` of the frame that ``pieces`` make up, unmasked."""
    return _apply_mask(memoryview(b"".join(pieces))[start:], mask)


_unmask_pieces = _pure_unmask_pieces if _speedups is None else _speedups.unmask_pieces
"""In C, one pass from the pieces to the payload; in Python, a join and then an unmask."""


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` (RFC 6455 5.3)."""
    return _apply_mask(payload, mask)


class FrameParser:
    """Turns the bytes a client sends into events: messages, ``Ping``, ``Pong``, ``Close``.

    A message event is the message itself: a ``TextMessage`` or ``bytes``.

    ``max_message_size`` limits a whole message, all fragments together, in
    bytes; ``None`` disables the limit. For a compressed message it limits
    both the bytes on the wire and the inflated size.

    ``deflate`` is the connection's negotiated permessage-deflate codec;
    ``None``: not negotiated, and RSV1 is a protocol error.

    ``frame_counts`` and ``wire_bytes``, lists of 16 ints, get 1 and each
    complete frame's size (header included) added at its opcode's index, for
    metrics; ``None``: not counted.
    """

    # Every connection holds one, idle or not: slots keep it small.
    __slots__ = (
        "max_message_size",
        "frame_counts",
        "wire_bytes",
        "deflate",
        "_buffer",
        "_opcode",
        "_fragments",
        "_text",
        "_size",
        "_decoder",
        "_inflater",
        "_inflated",
        "frames",
        "_pieces",
        "large_missing",
    )

    def __init__(
        self,
        *,
        max_message_size: int | None = 2**20,
        deflate: PerMessageDeflate | None = None,
        frame_counts: list[int] | None = None,
        wire_bytes: list[int] | None = None,
    ) -> None:
        if (frame_counts is None) != (wire_bytes is None):
            raise ValueError("frame_counts and wire_bytes go together")
        self.max_message_size = max_message_size
        self.frame_counts = frame_counts
        self.wire_bytes = wire_bytes
        self.deflate = deflate
        # The start of a frame not yet whole; None when there is none, as on
        # almost every idle connection (an empty bytearray is 56 bytes).
        self._buffer: bytearray | None = None
        self._opcode: int | None = None  # of the fragmented message in progress
        # The fragmented message in progress, in one buffer: a message sent as
        # 500,000 one-byte fragments kept as 500,000 bytes objects took 66 MB.
        self._fragments: bytearray | None = None
        self._text: io.StringIO | None = None  # of a fragmented text message, decoded
        self._size = 0  # bytes on the wire of the fragmented message in progress
        self._decoder: codecs.IncrementalDecoder | None = None
        # Of the fragmented compressed message in progress: its inflater, and
        # the bytes it has inflated so far.
        self._inflater: Inflater | None = None
        self._inflated = 0
        self.frames = 0
        """Frames parsed so far: a reader paces a client by frames, not only by bytes."""
        # A large frame in progress, as the pieces it arrived in (the first
        # holds its header): unmasked into one payload when whole, so its bytes
        # are copied once, not into a growing buffer first. None: no such frame.
        self._pieces: list[bytes | bytearray] | None = None
        self.large_missing = 0
        """Bytes the large frame in progress still needs (0: none). A reader can
        ``recv`` them into ``bytes`` of their own and feed those, which the parser
        keeps as they are, instead of copying them out of a shared read buffer."""

    def feed(self, data: bytes | memoryview) -> list[Event]:
        """Parse ``data`` (after what was left over) into complete events.

        ``data`` may be a view of a buffer that is reused once ``feed``
        returns: what an incomplete frame needs later is copied.

        On a violation, ``ProtocolError.events`` holds the events completed
        before it, so that valid messages ahead of a bad frame are not lost.
        """
        events: list[Event] = []
        buffer = self._buffer
        try:
            if self.large_missing:
                taken = self._add_piece(data, events)
                if taken == len(data):
                    return events
                data = memoryview(data)[taken:]
            if buffer:
                # Grow the frame in progress only up to its own end: appending
                # whole reads would make the buffer large and short-lived.
                data = memoryview(data)
                while buffer and data:
                    header_size, frame_size = self._extent(buffer, 0)
                    missing = (frame_size or header_size) - len(buffer)
                    buffer += data[:missing]
                    data = data[missing:]
                    if len(buffer) == self._extent(buffer, 0)[1]:
                        self._parse(buffer, events)
                        buffer.clear()
                if buffer:
                    self._pieces_if_large()
                    return events
                self._buffer = None
            position = 0
            if _parse_messages is not None and self._opcode is None:
                # Whole text and binary messages in C, up to the first other frame.
                before = len(events)  # what a frame left over from the last read completed
                position = _parse_messages(
                    data, 0, events, self.max_message_size, self.frame_counts, self.wire_bytes
                )
                self.frames += len(events) - before
                if position == len(data):
                    return events
            # In place; only a partial frame is kept.
            consumed = self._parse(data, events, position)
            if consumed < len(data):
                self._buffer = bytearray(data[consumed:])
                self._pieces_if_large()
        except ProtocolError as exc:
            exc.events = list(events)
            raise
        return events

    def _pieces_if_large(self) -> None:
        """Keep the frame begun in the buffer as the first of its pieces if it is large."""
        buffer = self._buffer
        # A frame of LARGE_FRAME bytes has a 16- or 64-bit length: most kept
        # starts (short frames cut by a read) are told apart by their 2nd byte.
        if buffer is None or len(buffer) < 2 or buffer[1] & 0x7F < 126:
            return
        frame_size = self._extent(buffer, 0)[1]
        if frame_size >= LARGE_FRAME:
            # The buffer itself becomes the first piece: not even its bytes are copied.
            self._pieces, self._buffer = [buffer], None
            self.large_missing = frame_size - len(buffer)

    def _add_piece(self, data: bytes | memoryview, events: list[Event]) -> int:
        """Add what the large frame in progress still needs of ``data``; return how much.

        ``bytes`` are immutable, so a piece the reader received on its own is
        kept as it is. Small pieces are gathered into a ``bytearray``: a client
        trickling a megabyte byte by byte must not make a million objects.
        """
        pieces = self._pieces
        assert pieces is not None
        size = len(data)
        taken = self.large_missing if self.large_missing < size else size
        if taken >= _MIN_PIECE:
            pieces.append(data if taken == size and type(data) is bytes else bytes(data[:taken]))
        elif type(pieces[-1]) is bytearray:
            pieces[-1] += data[:taken]
        else:
            pieces.append(bytearray(data[:taken]))
        self.large_missing -= taken
        if not self.large_missing:
            self._end_pieces(events)
        return taken

    def _end_pieces(self, events: list[Event]) -> None:
        """Unmask the whole large frame in one pass over its pieces and handle it."""
        pieces = self._pieces
        assert pieces is not None
        self._pieces = None
        head = pieces[0]
        first = head[0]
        header_size = self._extent(head, 0)[0]  # checked once already: passes again
        payload = _unmask_pieces(pieces, header_size, bytes(head[header_size - 4 : header_size]))
        opcode = first & 0x0F
        self.frames += 1
        if self.wire_bytes is not None:
            self.frame_counts[opcode] += 1  # type: ignore[index]
            self.wire_bytes[opcode] += header_size + len(payload)
        event = self._event(first, payload)
        if event is not None:
            events.append(event)

    def _event(self, first: int, payload: bytes) -> Event | None:
        """The event of a whole frame with first byte ``first`` (None: a fragment)."""
        if first & 0x40:  # _check_header let RSV1 through: a compressed message
            return self._compressed_frame(first & 0x0F, bool(first & 0x80), payload)
        return self._frame(first & 0x0F, bool(first & 0x80), payload)

    def _extent(self, data: bytes | bytearray | memoryview, position: int) -> tuple[int, int]:
        """(header size, frame size) of the frame at ``position``; frame size 0 until known.

        While the frame size is 0, the header size is what the header still
        needs. The header is checked as soon as its first two bytes are in,
        and again with the extended length, before any payload is kept.
        """
        available = len(data) - position
        if available < 2:
            return 2, 0
        first, second = data[position], data[position + 1]
        length = second & 0x7F
        if length < 126:  # the whole length is in the first two bytes
            self._check_header(first, second, length)
            return 6, 6 + length
        header_size = 8 if length == 126 else 14
        if available < header_size:
            self._check_header(first, second, None)
            return header_size, 0
        (length,) = struct.unpack_from("!H" if header_size == 8 else "!Q", data, position + 2)
        self._check_header(first, second, length)
        return header_size, header_size + length

    def _parse(
        self, data: bytes | bytearray | memoryview, events: list[Event], position: int = 0
    ) -> int:
        """Append the events of the complete frames in ``data`` from ``position``; return
        where they end."""
        end = len(data)
        view = data if type(data) is memoryview else memoryview(data)
        limit = self.max_message_size
        # Counted by runs of frames with one opcode (a client sends long runs of
        # text frames): one comparison a frame, the additions once a run.
        frame_counts, wire_bytes = self.frame_counts, self.wire_bytes
        frames = self.frames
        run_opcode, run_start, run_frames = -1, 0, frames
        try:
            while end - position >= 2:
                first = data[position]
                second = data[position + 1]
                # The common frame, decided here from its first two bytes: a whole
                # text or binary message (FIN, no RSV bit), masked, under 126 bytes,
                # outside a fragmented message. The others go through _extent.
                whole = (first == 0x82 or first == 0x81) and 0x80 <= second < 0xFE
                if whole and self._opcode is None:
                    header_size = 6
                    frame_size = second - 0x7A  # 6 + length
                    if limit is not None and frame_size - 6 > limit:
                        self._check_header(first, second, frame_size - 6)  # raises 1009
                else:
                    whole = False
                    header_size, frame_size = self._extent(data, position)
                    if not frame_size:
                        break
                if end - position < frame_size:
                    break
                opcode = first & 0x0F
                if opcode != run_opcode:
                    if wire_bytes is not None and run_opcode >= 0:
                        frame_counts[run_opcode] += frames - run_frames  # type: ignore[index]
                        wire_bytes[run_opcode] += position - run_start
                    run_opcode, run_start, run_frames = opcode, position, frames
                frames += 1
                payload_start = position + header_size
                position = frame_end = position + frame_size
                # Both as views: no copy of the payload before it is unmasked.
                mask = view[payload_start - 4 : payload_start]
                payload = _apply_mask(view[payload_start:frame_end], mask)  # type: ignore[arg-type]
                if whole:
                    if opcode == OP_BINARY:
                        events.append(payload)
                    else:
                        try:
                            events.append(TextMessage(payload, "utf-8"))
                        except UnicodeDecodeError:
                            raise ProtocolError(1007, "text message is not valid UTF-8") from None
                    continue
                event = self._event(first, payload)
                if event is not None:
                    events.append(event)
            return position
        finally:
            if view is not data:
                view.release()  # a bytearray (feed's buffer) must stay resizable
            self.frames = frames
            # The last run; frames parsed before a protocol error count too.
            if wire_bytes is not None and frames != run_frames:
                frame_counts[run_opcode] += frames - run_frames  # type: ignore[index]
                wire_bytes[run_opcode] += position - run_start

    def _check_header(self, first: int, second: int, length: int | None) -> None:
        """Refuse a bad frame from its header; ``None``: the extended length is not in yet.

        Everything but the size is decided by the first two bytes, so a client
        that sends those and stalls is refused at once.
        """
        opcode = first & 0x0F
        if first & 0x70:
            self._check_reserved_bits(first)
        if not second & 0x80:
            raise ProtocolError(1002, "client frames must be masked")
        if opcode in _CONTROL_OPCODES:
            if not first & 0x80:
                raise ProtocolError(1002, "control frames must not be fragmented")
            if second & 0x7F > _MAX_CONTROL_PAYLOAD:  # 126 and 127 announce longer lengths
                raise ProtocolError(1002, "control frame payload over 125 bytes")
            return
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise ProtocolError(1002, "continuation frame without a message to continue")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode is not None:
                raise ProtocolError(1002, "new message before the fragmented one finished")
        else:
            raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
        if length is None:
            return
        if length >> 63:
            raise ProtocolError(1002, "frame length has its most significant bit set")
        limit = self.max_message_size
        if limit is not None and self._size + length > limit:
            raise ProtocolError(1009, f"message over the {limit}-byte limit")

    def _check_reserved_bits(self, first: int) -> None:
        """RSV1 is allowed on the first frame of a message, with permessage-deflate only."""
        if first & 0x30 or self.deflate is None:
            raise ProtocolError(1002, "reserved bits set, but no extension uses them")
        opcode = first & 0x0F
        if opcode in _CONTROL_OPCODES:
            raise ProtocolError(1002, "RSV1 set on a control frame")
        if opcode == OP_CONTINUATION:
            raise ProtocolError(1002, "RSV1 set on a continuation frame")

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _parse_close(payload)
        if opcode != OP_CONTINUATION:
            if fin:  # a whole message in one frame (_parse decodes most of these)
                return _text(payload) if opcode == OP_TEXT else payload
            self._begin_fragmented(opcode)
        return self._fragment(payload, fin)

    def _compressed_frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        """The first frame of a compressed text or binary message (the header checked that)."""
        assert self.deflate is not None
        inflater = self.deflate.decompressor()
        if fin:  # the common case: a whole message in one frame
            data = self._inflate(inflater, payload, final=True)
            return _text(data) if opcode == OP_TEXT else data
        self._begin_fragmented(opcode)
        self._inflater = inflater
        return self._fragment(payload, fin)

    def _begin_fragmented(self, opcode: int) -> None:
        """A message comes in fragments: binary gets its buffer, text a decoder and a buffer."""
        self._opcode = opcode
        if opcode == OP_BINARY:
            self._fragments = bytearray()
        else:
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._text = io.StringIO()

    def _fragment(self, payload: bytes, fin: bool) -> Event | None:
        self._size += len(payload)
        if self._inflater is not None:
            payload = self._inflate(self._inflater, payload, final=fin)
            self._inflated += len(payload)
        if self._text is not None:
            # Decoded fragment by fragment (a bad text message fails early), into
            # one text buffer: each fragment is decoded once.
            self._text.write(self._decode(payload, final=fin))
        else:
            assert self._fragments is not None
            self._fragments += payload
        if not fin:
            return None
        text = self._text
        self._opcode, self._size, self._decoder, self._text = None, 0, None, None
        self._inflater, self._inflated = None, 0  # a per-message inflater is freed here
        if text is not None:
            return TextMessage(text.getvalue())
        fragments, self._fragments = self._fragments, None
        assert fragments is not None
        return bytes(fragments)

    def _inflate(self, inflater: Inflater, data: bytes, *, final: bool) -> bytes:
        """Inflate one frame's payload, refusing output beyond the message size limit.

        zlib is asked for at most one byte more than the message may still
        grow, so a bomb costs no more than the limit in memory and time.
        """
        if final:
            data += _EMPTY_BLOCK
        limit = self.max_message_size
        try:
            if limit is None:
                return inflater.decompress(data)
            room = limit - self._inflated
            inflated = inflater.decompress(data, room + 1)
        except zlib.error:
            raise ProtocolError(1002, "compressed message is not valid deflate data") from None
        if len(inflated) > room:
            raise ProtocolError(1009, f"message over the {limit}-byte limit once inflated")
        return inflated

    def _decode(self, payload: bytes, *, final: bool) -> str:
        assert self._decoder is not None
        try:
            return self._decoder.decode(payload, final)
        except UnicodeDecodeError:
            raise ProtocolError(1007, "text message is not valid UTF-8") from None


def _text(payload: bytes) -> TextMessage:
    try:
        return TextMessage(payload, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "text message is not valid UTF-8") from None


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not is_valid_close_code(code):
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not valid UTF-8") from None
    return Close(code, reason)


_SHORT_HEADERS: Final = {
    opcode: tuple(bytes((0x80 | opcode, size)) for size in range(126))
    for opcode in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
}
"""Headers of uncompressed frames under 126 bytes, by opcode and size: looked up, not packed."""


def frame_header(opcode: int, size: int, rsv1: bool = False) -> bytes:
    """The header of an unfragmented, unmasked frame of ``size`` payload bytes."""
    if size < 126 and not rsv1:
        return _SHORT_HEADERS[opcode][size]
    first = 0xC0 | opcode if rsv1 else 0x80 | opcode
    if size < 126:
        return struct.pack("!BB", first, size)
    if size < 65536:
        return struct.pack("!BBH", first, 126, size)
    return struct.pack("!BBQ", first, 127, size)


def encode_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """One unfragmented, unmasked frame (servers never mask); ``rsv1``: compressed."""
    return frame_header(opcode, len(payload), rsv1) + payload


_TEXT_HEADERS: Final = _SHORT_HEADERS[OP_TEXT]
_BINARY_HEADERS: Final = _SHORT_HEADERS[OP_BINARY]


def encode_message(
    data: str | bytes | bytearray | memoryview, deflate: PerMessageDeflate | None = None
) -> bytes:
    """A text frame for ``str``, a binary frame for bytes-like data.

    ``deflate`` is the connection's permessage-deflate codec: a payload of at
    least its ``compress_min_size`` bytes is compressed (RSV1 set). ``None``:
    never compress. With server context takeover, frames must be sent in the
    order they were encoded.
    """
    # Exact types first: an echo sends the bytes or TextMessage the parser made.
    payload: bytes
    if type(data) is bytes:
        opcode, payload, headers = OP_BINARY, data, _BINARY_HEADERS
    elif isinstance(data, str):
        opcode, payload, headers = OP_TEXT, data.encode("utf-8"), _TEXT_HEADERS
    elif isinstance(data, (bytes, bytearray, memoryview)):
        opcode, payload, headers = OP_BINARY, bytes(data), _BINARY_HEADERS
    else:  # bytes(42) would silently send 42 zero bytes.
        raise TypeError(f"a message is str or bytes, not {type(data).__name__}")
    size = len(payload)
    if deflate is not None and deflate.compresses(size):
        return encode_frame(opcode, deflate.compress(payload), rsv1=True)
    if size < 126:
        return headers[size] + payload
    return encode_frame(opcode, payload)


_pure_encode_message = encode_message
if _speedups is not None:
    # The same bytes, built in C for str and bytes sent uncompressed; the
    # rest (compression, other types, errors) goes to the function above.
    encode_message = _speedups.message_encoder(_pure_encode_message)


def text_if_utf8(data: str | bytes | bytearray | memoryview) -> str | bytes:
    """Bytes that are UTF-8 as ``str`` (a text frame), others unchanged (binary).

    The original sent only text frames; where fws gets bytes it must send the
    way the original did (``sendMessage``, pub/sub data), valid UTF-8 becomes
    text, and anything else goes as binary rather than as an invalid text frame.
    """
    if isinstance(data, str):
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        # bytes(42) would silently be 42 zero bytes.
        raise TypeError(f"a message is str or bytes, not {type(data).__name__}")
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def encode_close(code: int = 1000, reason: str = "") -> bytes:
    """A close frame; code 1005 ("no code") sends an empty payload."""
    if code == 1005:
        return encode_frame(OP_CLOSE, b"")
    encoded = reason.encode("utf-8")[: _MAX_CONTROL_PAYLOAD - 2]
    # Cutting may split a character; keep the reason valid UTF-8.
    encoded = encoded.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + encoded)
