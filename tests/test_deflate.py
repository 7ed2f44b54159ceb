"""permessage-deflate: negotiation, the codec, and compressed frames in the parser.

Real zlib throughout: the client side of each test is a zlib raw deflater or
inflater, as a browser's would be.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
from frame_builder import client_frame

import fws.deflate as fws_deflate
from fws import ProtocolError, TextMessage
from fws.deflate import DeflateSettings, PerMessageDeflate, negotiate, parse_offers
from fws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameParser,
    Ping,
    encode_message,
)

RSV1 = 4  # client_frame's rsv argument is RSV1..RSV3 as three bits
TAIL = b"\x00\x00\xff\xff"
CHAT = (
    b'{"type":"message","user":"alice","room":"general",'
    b'"text":"see you all at the standup in ten minutes","ts":1732890000123}'
)
NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAKEOVER = DeflateSettings(server_no_context_takeover=False, client_no_context_takeover=False)


def codec_for(*header_values: str, settings: DeflateSettings | None = None) -> PerMessageDeflate:
    result = negotiate(parse_offers(header_values), settings or DeflateSettings())
    assert result is not None
    return result[1]


def response_for(*header_values: str, settings: DeflateSettings | None = None) -> str | None:
    result = negotiate(parse_offers(header_values), settings or DeflateSettings())
    return None if result is None else result[0]


class ClientDeflater:
    """A client's compressor: keeps its context unless ``no_context_takeover``."""

    def __init__(self, *, no_context_takeover: bool = True, wbits: int = 15) -> None:
        self.no_context_takeover = no_context_takeover
        self.wbits = wbits
        self._compressor = zlib.compressobj(wbits=-wbits)

    def message(self, payload: bytes) -> bytes:
        if self.no_context_takeover:
            self._compressor = zlib.compressobj(wbits=-self.wbits)
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(TAIL)
        return data[:-4]


def client_inflate(data: bytes, inflater=None) -> bytes:
    """What a client does with a compressed message from the server."""
    inflater = inflater or zlib.decompressobj(wbits=-15)
    return inflater.decompress(data + TAIL)


def parse_server_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """(opcode, rsv1, payload) of one unmasked server frame."""
    first, second = frame[0], frame[1]
    assert not second & 0x80, "servers never mask"
    length, position = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack_from("!H", frame, 2)
        position = 4
    elif length == 127:
        (length,) = struct.unpack_from("!Q", frame, 2)
        position = 10
    assert len(frame) == position + length
    return first & 0x0F, bool(first & 0x40), frame[position:]


def zero_bomb(mebibytes: int) -> bytes:
    """A raw deflate stream (tail stripped) of ``mebibytes`` MiB of zeros, about 1 KiB per MiB.

    One MiB is compressed once, fully flushed: byte-aligned and referring to
    nothing before it, so repeating it repeats the data.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return (one * mebibytes)[:-4]


# --- negotiation -------------------------------------------------------------


def test_plain_offer_gets_both_no_context_takeover_by_default():
    assert response_for("permessage-deflate") == NO_TAKEOVER
    codec = codec_for("permessage-deflate")
    assert codec.response == NO_TAKEOVER
    assert codec.server_no_context_takeover and codec.client_no_context_takeover


def test_with_context_takeover_allowed_a_plain_offer_is_answered_plainly():
    assert response_for("permessage-deflate", settings=TAKEOVER) == "permessage-deflate"
    codec = codec_for("permessage-deflate", settings=TAKEOVER)
    assert not codec.server_no_context_takeover and not codec.client_no_context_takeover


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("; server_no_context_takeover", "; server_no_context_takeover"),
        ("; client_no_context_takeover", "; client_no_context_takeover"),
        ("; server_max_window_bits=10", "; server_max_window_bits=10"),
        ('; server_max_window_bits="9"', "; server_max_window_bits=9"),
        # Without a value the client only says it could take a limit: none is set.
        ("; client_max_window_bits", ""),
        ("; client_max_window_bits=8", "; client_max_window_bits=8"),
        (";client_max_window_bits=12", "; client_max_window_bits=12"),
    ],
)
def test_each_parameter_is_honoured_and_echoed(offered, answered):
    response = response_for(f"permessage-deflate{offered}", settings=TAKEOVER)
    assert response == f"permessage-deflate{answered}"


def test_window_bits_reach_the_codec():
    codec = codec_for("permessage-deflate; server_max_window_bits=10; client_max_window_bits=11")
    assert (codec.server_window_bits, codec.client_window_bits) == (10, 11)
    assert (codec_for("permessage-deflate").server_window_bits, codec.memory_level) == (15, 8)
    # zlib inflates an 8-bit window's output with a 9-bit window, and cannot do 8 itself.
    assert codec_for("permessage-deflate; client_max_window_bits=8").client_window_bits == 9


def test_our_server_window_limit_is_announced_and_lowers_the_clients_request():
    settings = DeflateSettings(server_max_window_bits=12)
    assert response_for("permessage-deflate", settings=settings).endswith(
        "server_max_window_bits=12"
    )
    codec = codec_for("permessage-deflate; server_max_window_bits=14", settings=settings)
    assert codec.server_window_bits == 12 and codec.response.endswith("server_max_window_bits=12")
    codec = codec_for("permessage-deflate; server_max_window_bits=10", settings=settings)
    assert codec.server_window_bits == 10


def test_our_client_window_limit_applies_when_the_client_can_take_one():
    settings = DeflateSettings(client_max_window_bits=10)
    assert response_for("permessage-deflate; client_max_window_bits", settings=settings).endswith(
        "client_max_window_bits=10"
    )
    assert response_for(
        "permessage-deflate; client_max_window_bits=13", settings=settings
    ).endswith("client_max_window_bits=10")
    assert response_for(
        "permessage-deflate; client_max_window_bits=9", settings=settings
    ).endswith("client_max_window_bits=9")
    # A client that did not offer the parameter cannot be limited; it still gets compression.
    assert "client_max_window_bits" not in response_for("permessage-deflate", settings=settings)


@pytest.mark.parametrize(
    "bad_offer",
    [
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot write an 8-bit window
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
        "permessage-deflate; x-unknown",
    ],
)
def test_an_offer_we_cannot_honour_is_declined_and_the_next_one_taken(bad_offer):
    assert response_for(bad_offer) is None
    assert response_for(f"{bad_offer}, permessage-deflate; client_max_window_bits=9") == (
        f"{NO_TAKEOVER}; client_max_window_bits=9"
    )


def test_offers_on_several_header_lines_are_one_list_in_order():
    assert response_for("x-webkit-deflate-frame", "permessage-deflate") == NO_TAKEOVER
    assert (
        response_for(
            "permessage-deflate; server_max_window_bits=8",
            "foo, permessage-deflate; server_max_window_bits=11",
            "permessage-deflate",
        )
        == f"{NO_TAKEOVER}; server_max_window_bits=11"
    )
    assert response_for("x-webkit-deflate-frame", "foo; bar=1") is None
    assert response_for() is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ",",
        ";",
        "permessage-deflate;",
        "permessage-deflate; =",
        "permessage-deflate; server_max_window_bits=",
        'permessage-deflate; server_max_window_bits="10',
        'permessage-deflate; server_max_window_bits="1 0"',
        "permessage-deflate server_no_context_takeover",
        "permessage-déflate",
        "\x00permessage-deflate",
        "permessage-deflate; client_max_window_bits=" + "9" * 5000,
        "PERMESSAGE-DEFLATE",
    ],
)
def test_garbage_headers_mean_no_compression_without_an_exception(garbage):
    assert negotiate(parse_offers([garbage]), DeflateSettings()) is None


def test_a_line_that_does_not_parse_does_not_hide_the_next_one():
    assert response_for("permessage-deflate;;", "permessage-deflate") == NO_TAKEOVER


@pytest.mark.parametrize(
    "bad",
    [
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"compress_min_size": -1},
        {"memory_level": 0},
        {"memory_level": 10},
    ],
)
def test_impossible_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DeflateSettings(**bad)


# --- the server's messages ------------------------------------------------------


def test_compressed_messages_inflate_on_a_client_without_context():
    codec = codec_for("permessage-deflate")
    for payload in (CHAT, b"", bytes(range(256)) * 100, CHAT):
        data = codec.compress(payload)
        assert not data.endswith(TAIL)
        assert client_inflate(data) == payload  # a fresh inflater each time: no context used


def test_with_server_context_takeover_later_messages_use_the_earlier_ones():
    codec = codec_for("permessage-deflate", settings=TAKEOVER)
    client = zlib.decompressobj(wbits=-15)
    first, second = codec.compress(CHAT), codec.compress(CHAT)
    assert len(second) < len(first) / 3  # the repeat is a back-reference into message one
    assert client_inflate(first, client) == CHAT
    assert client_inflate(second, client) == CHAT


def test_encode_message_compresses_from_compress_min_size():
    codec = codec_for("permessage-deflate", settings=DeflateSettings(compress_min_size=100))
    small = "x" * 99
    assert encode_message(small, codec) == encode_message(small)  # RSV1 unset, not compressed
    opcode, rsv1, payload = parse_server_frame(encode_message("é" * 50, codec))  # 100 bytes
    assert (opcode, rsv1) == (OP_TEXT, True)
    assert client_inflate(payload).decode() == "é" * 50
    opcode, rsv1, payload = parse_server_frame(encode_message(bytearray(CHAT * 3), codec))
    assert (opcode, rsv1) == (OP_BINARY, True)
    assert client_inflate(payload) == CHAT * 3


def test_codecs_negotiated_alike_share_a_key_and_compress_byte_identically():
    one = codec_for("permessage-deflate")
    other = codec_for("permessage-deflate; client_max_window_bits=10")  # our side is the same
    assert one is not other
    assert one.shared_key == other.shared_key and one.shared_key is not None
    hash(one.shared_key)
    payload = CHAT * 20
    assert one.compress(payload) == other.compress(payload)
    assert one.compress(payload) == one.compress(payload)  # no context carried over
    assert codec_for("permessage-deflate; server_max_window_bits=10").shared_key != one.shared_key
    small = codec_for("permessage-deflate", settings=DeflateSettings(compress_min_size=0))
    assert small.shared_key != one.shared_key  # they would frame the same message differently


def test_with_server_context_takeover_there_is_no_shared_key():
    assert codec_for("permessage-deflate", settings=TAKEOVER).shared_key is None
    # The client asking for no server context takeover makes output shareable again.
    asked = codec_for("permessage-deflate; server_no_context_takeover", settings=TAKEOVER)
    assert asked.shared_key is not None


# --- the client's messages ------------------------------------------------------


def test_compressed_text_and_binary_messages_are_inflated():
    client = ClientDeflater()
    parser = FrameParser(deflate=codec_for("permessage-deflate"))
    events = parser.feed(
        client_frame(OP_TEXT, client.message("héllo".encode() * 30), rsv=RSV1)
        + client_frame(OP_BINARY, client.message(CHAT), rsv=RSV1)
        + client_frame(OP_TEXT, b"not compressed")  # RSV1 unset: sent as is
        + client_frame(OP_BINARY, client.message(b""), rsv=RSV1)
    )
    assert events == [
        TextMessage("héllo" * 30),
        CHAT,
        TextMessage("not compressed"),
        b"",
    ]
    assert isinstance(events[0], TextMessage)


def test_fragmented_compressed_message_with_interleaved_ping():
    data = ClientDeflater().message("☃ snow ".encode() * 200)
    parser = FrameParser(deflate=codec_for("permessage-deflate"))
    stream = (
        client_frame(OP_TEXT, data[:7], rsv=RSV1, fin=False)
        + client_frame(OP_CONTINUATION, b"", fin=False)
        + client_frame(OP_PING, b"hb")
        + client_frame(OP_CONTINUATION, data[7:20], fin=False)
        + client_frame(OP_CONTINUATION, data[20:])
    )
    events = []
    for index in range(0, len(stream), 5):  # split across reads, too
        events += parser.feed(stream[index : index + 5])
    assert events == [Ping(b"hb"), TextMessage("☃ snow " * 200)]
    assert parser._inflater is None  # a per-message inflater is not kept once the message ends


def test_uncompressed_fragmented_message_on_a_deflate_connection():
    parser = FrameParser(deflate=codec_for("permessage-deflate"))
    events = parser.feed(
        client_frame(OP_BINARY, b"ab", fin=False) + client_frame(OP_CONTINUATION, b"cd")
    )
    assert events == [b"abcd"]


def test_with_client_context_takeover_messages_build_on_earlier_ones():
    codec = codec_for("permessage-deflate", settings=TAKEOVER)
    assert codec.decompressor() is codec.decompressor()  # the connection keeps its inflater
    client = ClientDeflater(no_context_takeover=False)
    parser = FrameParser(deflate=codec)
    first, second = client.message(CHAT), client.message(CHAT)
    assert len(second) < len(first) / 3
    assert parser.feed(client_frame(OP_BINARY, first, rsv=RSV1)) == [CHAT]
    assert parser.feed(client_frame(OP_BINARY, second, rsv=RSV1)) == [CHAT]
    third = client.message(CHAT * 3)  # fragmented, still in the same context
    events = parser.feed(
        client_frame(OP_BINARY, third[:3], rsv=RSV1, fin=False)
        + client_frame(OP_CONTINUATION, third[3:])
    )
    assert events == [CHAT * 3]


def test_without_client_context_takeover_each_message_inflates_alone():
    codec = codec_for("permessage-deflate")
    assert codec.decompressor() is not codec.decompressor()
    client = ClientDeflater(no_context_takeover=False)  # a client ignoring what it agreed to
    parser = FrameParser(deflate=codec)
    assert parser.feed(client_frame(OP_BINARY, client.message(CHAT), rsv=RSV1)) == [CHAT]
    with pytest.raises(ProtocolError) as info:  # refers back to a context we did not keep
        parser.feed(client_frame(OP_BINARY, client.message(CHAT), rsv=RSV1))
    assert info.value.code == 1002


def test_a_client_may_end_a_message_with_a_final_block():
    codec = codec_for("permessage-deflate", settings=TAKEOVER)
    parser = FrameParser(deflate=codec)
    for payload in (CHAT, b"second"):  # the ended stream is replaced for the next message
        compressor = zlib.compressobj(wbits=-15)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_FINISH)
        assert parser.feed(client_frame(OP_BINARY, data, rsv=RSV1)) == [payload]


def test_invalid_deflate_data_closes_with_1002():
    parser = FrameParser(deflate=codec_for("permessage-deflate"))
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(OP_BINARY, b"\xff\xff\xff\xff\xff", rsv=RSV1))
    assert info.value.code == 1002
    assert "deflate" in info.value.reason


def test_compressed_text_that_is_not_utf8_closes_with_1007():
    client = ClientDeflater()
    with pytest.raises(ProtocolError) as info:
        FrameParser(deflate=codec_for("permessage-deflate")).feed(
            client_frame(OP_TEXT, client.message(b"ok \xff\xfe"), rsv=RSV1)
        )
    assert info.value.code == 1007
    parser = FrameParser(deflate=codec_for("permessage-deflate"))
    data = client.message(b"ok\xc0\xaf" + b"x" * 1000)
    with pytest.raises(ProtocolError) as info:  # fails at the first fragment, before the end
        parser.feed(client_frame(OP_TEXT, data, rsv=RSV1, fin=False))
    assert info.value.code == 1007


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        (
            [
                client_frame(OP_TEXT, ClientDeflater().message(CHAT), rsv=RSV1, fin=False),
                client_frame(OP_CONTINUATION, b"", rsv=RSV1),
            ],
            "continuation",
        ),
        ([client_frame(OP_PING, b"", rsv=RSV1)], "control"),
        ([client_frame(OP_CLOSE, b"", rsv=RSV1)], "control"),
        ([client_frame(OP_TEXT, b"", rsv=2)], "reserved"),  # RSV2
        ([client_frame(OP_TEXT, b"", rsv=1)], "reserved"),  # RSV3
        ([client_frame(OP_TEXT, b"", rsv=RSV1 | 1)], "reserved"),
    ],
)
def test_rsv_bits_out_of_place_close_with_1002(frames, words):
    parser = FrameParser(deflate=codec_for("permessage-deflate"))
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"".join(frames))
    assert info.value.code == 1002
    assert words in info.value.reason


def test_rsv1_without_deflate_negotiated_closes_with_1002():
    with pytest.raises(ProtocolError) as info:
        FrameParser().feed(client_frame(OP_TEXT, ClientDeflater().message(CHAT), rsv=RSV1))
    assert info.value.code == 1002


# --- the size limit on inflated data ----------------------------------------------


@pytest.mark.parametrize("fragmented", [False, True])
def test_the_limit_applies_to_the_inflated_size_to_the_byte(fragmented):
    limit = 10_000
    for size, accepted in ((limit, True), (limit + 1, False)):
        payload = b"a" * size
        data = ClientDeflater().message(payload)
        assert len(data) < 100  # the wire size is far under the limit
        parser = FrameParser(max_message_size=limit, deflate=codec_for("permessage-deflate"))
        if fragmented:
            stream = client_frame(OP_BINARY, data[:10], rsv=RSV1, fin=False) + client_frame(
                OP_CONTINUATION, data[10:]
            )
        else:
            stream = client_frame(OP_BINARY, data, rsv=RSV1)
        if accepted:
            assert parser.feed(stream) == [payload]
        else:
            with pytest.raises(ProtocolError) as info:
                parser.feed(stream)
            assert info.value.code == 1009


def test_a_decompression_bomb_is_refused_without_inflating_it():
    bomb = zero_bomb(1024)  # 1 GiB of zeros in about 1 MiB (deflate's ratio is at most ~1032:1)
    assert len(bomb) < 1_100_000
    frame = client_frame(OP_BINARY, bomb, rsv=RSV1)
    parser = FrameParser(max_message_size=2**21, deflate=codec_for("permessage-deflate"))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            parser.feed(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert "inflated" in info.value.reason
    # The frame is ~1 MiB and copied twice (unmasking, the tail); inflating 1 GiB would show.
    assert peak < 8 * 2**20, peak


def test_a_fragmented_bomb_is_refused_once_the_fragments_inflate_past_the_limit():
    bomb = zero_bomb(64)
    pieces = [bomb[index : index + 1024] for index in range(0, len(bomb), 1024)]
    parser = FrameParser(max_message_size=2**20, deflate=codec_for("permessage-deflate"))
    parser.feed(client_frame(OP_BINARY, pieces[0], rsv=RSV1, fin=False))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            for piece in pieces[1:]:
                parser.feed(client_frame(OP_CONTINUATION, piece, fin=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 4 * 2**20, peak
    assert pieces.index(piece) < 10  # ~1 KiB of the stream inflates to ~1 MiB: refused early


def test_the_wire_size_stays_limited_by_the_frame_header():
    parser = FrameParser(max_message_size=1000, deflate=codec_for("permessage-deflate"))
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(OP_BINARY, b"", rsv=RSV1, length=1001))  # no payload yet
    assert info.value.code == 1009


def test_no_limit_on_inflated_size_when_none():
    payload = bytes(3 * 2**20)
    data = ClientDeflater().message(payload)
    parser = FrameParser(max_message_size=None, deflate=codec_for("permessage-deflate"))
    assert parser.feed(client_frame(OP_BINARY, data, rsv=RSV1)) == [payload]


def test_deflate_and_frames_import_without_gevent():
    # fws/__init__ imports the server; load the two modules without it, with gevent blocked.
    probe = (
        "import sys, types\n"
        "sys.modules['gevent'] = None\n"
        "package = types.ModuleType('fws')\n"
        f"package.__path__ = [{str(Path(fws_deflate.__file__).parent)!r}]\n"
        "sys.modules['fws'] = package\n"
        "import fws.deflate, fws.frames\n"
        "assert not any(name.startswith('gevent') for name in sys.modules if sys.modules[name])\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
