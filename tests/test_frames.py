from __future__ import annotations

import os
import struct

import pytest
from frame_builder import client_frame

from fws import ProtocolError, TextMessage
from fws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameParser,
    Ping,
    Pong,
    encode_close,
    encode_frame,
    encode_message,
    text_if_utf8,
    unmask,
    unmask_portable,
)


def parse(*frames: bytes, **kwargs) -> list:
    return FrameParser(**kwargs).feed(b"".join(frames))


def test_text_and_binary_messages():
    events = parse(client_frame(OP_TEXT, "héllo".encode()), client_frame(OP_BINARY, b"\x00\xff"))
    assert events == [TextMessage("héllo"), b"\x00\xff"]
    assert [type(event) for event in events] == [TextMessage, bytes]  # a message is its data
    assert bytes(events[0]) == "héllo".encode()


def test_frames_split_at_every_byte_boundary_reassemble():
    stream = client_frame(OP_TEXT, b"x" * 300) + client_frame(OP_PING, b"p")
    parser = FrameParser()
    events = []
    for index in range(len(stream)):
        events += parser.feed(stream[index : index + 1])
    assert events == [TextMessage("x" * 300), Ping(b"p")]


def _feed_through_one_reused_buffer(parser: FrameParser, stream: bytes, cuts: list[int]) -> list:
    """Feed ``stream`` in pieces, each a view of one buffer that is overwritten after every
    feed, as the server's shared read buffer is."""
    buffer = bytearray(len(stream))
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        size = end - start
        buffer[:size] = stream[start:end]
        events += parser.feed(memoryview(buffer)[:size])
        buffer[:] = b"\xee" * len(buffer)  # whatever the parser kept must be its own copy
    return events


@pytest.mark.parametrize("shape", ["two pieces", "three pieces"])
def test_pieces_of_a_reused_read_buffer_reassemble_at_any_cut(shape):
    frames = [
        client_frame(OP_TEXT, b"hi"),  # 6-byte header
        client_frame(OP_BINARY, bytes(range(256)) * 2),  # 16-bit length
        client_frame(OP_BINARY, b"\x07" * 70_000),  # 64-bit length
        client_frame(OP_PING, b"p"),
    ]
    stream = b"".join(frames)
    boundaries = [0]
    for frame in frames:
        boundaries.append(boundaries[-1] + len(frame))
    cuts = sorted({b + d for b in boundaries for d in range(-3, 16)} & set(range(1, len(stream))))
    expected = [
        TextMessage("hi"),
        bytes(range(256)) * 2,
        b"\x07" * 70_000,
        Ping(b"p"),
    ]
    for cut in cuts:
        pieces = [cut] if shape == "two pieces" else [cut, min(cut + 7, len(stream) - 1)]
        pieces = sorted(set(pieces))
        assert _feed_through_one_reused_buffer(FrameParser(), stream, pieces) == expected, pieces


def test_size_limit_is_checked_when_a_split_header_becomes_whole():
    parser = FrameParser(max_message_size=1000)
    header = client_frame(OP_BINARY, b"", length=70_000)  # a 64-bit length, no payload
    assert parser.feed(header[:3]) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed(header[3:] + b"\x00" * 100)
    assert info.value.code == 1009


@pytest.mark.parametrize(
    "first_two",
    [
        b"\x89\x00",  # an unmasked ping
        b"\x89\xfe",  # a ping announcing a 16-bit length
        b"\x82\x7e",  # unmasked binary, 16-bit length
        b"\x82\x7f",  # unmasked binary, 64-bit length
        b"\xc2\xfe",  # a reserved bit set, 16-bit length
    ],
)
@pytest.mark.parametrize("split", [True, False])
def test_a_bad_header_is_refused_as_soon_as_its_first_two_bytes_are_in(first_two, split):
    parser = FrameParser()
    if split:  # the second byte completes a partial frame kept from an earlier read
        assert parser.feed(first_two[:1]) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed(first_two[1:] if split else first_two)  # then the client stalls
    assert info.value.code == 1002


def test_64_bit_length_frames():
    payload = bytes(range(256)) * 300
    assert parse(client_frame(OP_BINARY, payload)) == [payload]


def test_fragmented_message_with_interleaved_control_frame():
    snowman = "☃".encode()
    events = parse(
        client_frame(OP_TEXT, b"a" + snowman[:1], fin=False),
        client_frame(OP_PING, b"hb"),
        client_frame(OP_CONTINUATION, snowman[1:], fin=False),
        client_frame(OP_CONTINUATION, b"z"),
    )
    assert events == [Ping(b"hb"), TextMessage("a☃z")]


def test_close_and_pong_frames():
    events = parse(
        client_frame(OP_PONG, b""), client_frame(OP_CLOSE, struct.pack("!H", 4000) + b"bye")
    )
    assert events == [Pong(b""), Close(4000, "bye")]
    assert parse(client_frame(OP_CLOSE, b"")) == [Close(1005, "")]


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        (client_frame(OP_TEXT, b"x", masked=False), 1002, "masked"),
        (client_frame(OP_TEXT, b"x", rsv=4), 1002, "reserved"),
        (client_frame(0x3, b""), 1002, "opcode"),
        (client_frame(0xB, b""), 1002, "opcode"),
        (client_frame(OP_PING, b"x", fin=False), 1002, "fragmented"),
        (client_frame(OP_PING, b"x" * 126), 1002, "125"),
        (client_frame(OP_CONTINUATION, b"x"), 1002, "continuation"),
        (client_frame(OP_BINARY, b"", length=2**63), 1002, "most significant bit"),
        (client_frame(OP_TEXT, b"\xff\xfe"), 1007, "UTF-8"),
        (client_frame(OP_CLOSE, b"\x03"), 1002, "1-byte"),
        (client_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002, "close code"),
        (client_frame(OP_CLOSE, struct.pack("!H", 999)), 1002, "close code"),
        (client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007, "UTF-8"),
    ],
)
def test_violations_raise_with_the_close_code(frame, code, words):
    with pytest.raises(ProtocolError) as info:
        parse(frame)
    assert info.value.code == code
    assert words in info.value.reason


def test_new_message_inside_a_fragmented_one_is_refused():
    with pytest.raises(ProtocolError, match="fragmented one"):
        parse(client_frame(OP_TEXT, b"a", fin=False), client_frame(OP_TEXT, b"b"))


def test_bad_utf8_in_a_fragment_fails_before_the_message_ends():
    parser = FrameParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(OP_TEXT, b"ok\xc0\xaf", fin=False))
    assert info.value.code == 1007


def test_size_limit_is_checked_from_the_header_before_the_payload_arrives():
    parser = FrameParser(max_message_size=1000)
    header_only = client_frame(OP_BINARY, b"", length=1001)  # claims 1001 bytes, sends none
    with pytest.raises(ProtocolError) as info:
        parser.feed(header_only)
    assert info.value.code == 1009


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_a_short_message_over_a_small_limit_is_refused_from_its_header(opcode):
    # Frames under 126 bytes take the parser's short path: the limit holds there too.
    parser = FrameParser(max_message_size=10)
    assert parser.feed(client_frame(opcode, b"x" * 10)) == [b"x" * 10 if opcode == 2 else "x" * 10]
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(opcode, b"x" * 11)[:6])  # the header only
    assert info.value.code == 1009


def test_short_messages_before_bad_utf8_are_kept_and_counted():
    counts, wire = [0] * 16, [0] * 16
    parser = FrameParser(frame_counts=counts, wire_bytes=wire)
    good = client_frame(OP_TEXT, b"ok") + client_frame(OP_BINARY, b"\x00")
    with pytest.raises(ProtocolError) as info:
        parser.feed(good + client_frame(OP_TEXT, b"\xc0\xaf") + client_frame(OP_TEXT, b"later"))
    assert info.value.code == 1007
    assert info.value.events == ["ok", b"\x00"]
    assert parser.frames == 3  # the bad frame was parsed, the one after it not
    assert (counts[OP_TEXT], counts[OP_BINARY]) == (2, 1)


def test_size_limit_counts_all_fragments():
    parser = FrameParser(max_message_size=10)
    assert parser.feed(client_frame(OP_BINARY, b"123456", fin=False)) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(OP_CONTINUATION, b"12345"))
    assert info.value.code == 1009


def test_no_limit_when_none():
    payload = b"x" * (2**20 + 1)
    assert parse(client_frame(OP_BINARY, payload), max_message_size=None) == [payload]


@pytest.mark.parametrize("implementation", [unmask, unmask_portable])
def test_unmask_matches_the_rfc_definition_and_is_its_own_inverse(implementation):
    data = bytes(range(256)) * 5 + b"abc"
    mask = b"\x01\x80\xff\x10"
    masked = implementation(data, mask)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert implementation(masked, mask) == data
    assert implementation(memoryview(bytearray(data))[3:10], mask) == unmask_portable(
        data[3:10], mask
    )
    assert implementation(b"", mask) == b""


@pytest.mark.parametrize("portable", [False, True])
def test_the_parser_unmasks_views_of_a_read_buffer_with_either_implementation(
    portable, monkeypatch
):
    import fws.frames

    if portable:  # a platform without websockets' C extension
        monkeypatch.setattr(fws.frames, "_apply_mask", unmask_portable)
    stream = client_frame(OP_BINARY, b"short") + client_frame(OP_TEXT, b"t" * 300)
    events = FrameParser().feed(memoryview(bytearray(stream)))
    assert events == [b"short", "t" * 300]


def test_encoders_use_the_shortest_length_form_and_never_mask():
    assert encode_frame(OP_TEXT, b"hi") == b"\x81\x02hi"
    assert encode_frame(OP_BINARY, b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert encode_frame(OP_BINARY, b"x" * 65536)[:10] == b"\x82\x7f" + struct.pack("!Q", 65536)
    assert encode_message("é") == b"\x81\x02" + "é".encode()
    assert encode_message(b"\x00") == b"\x82\x01\x00"
    assert encode_close(1001, "bye") == b"\x88\x05\x03\xe9bye"
    assert encode_close(1005) == b"\x88\x00"
    long_reason = encode_close(1000, "é" * 100)
    assert len(long_reason) <= 2 + 125
    long_reason[4:].decode("utf-8")  # still valid UTF-8 after cutting


def test_encode_frame_sets_rsv1_only_when_asked():
    assert encode_frame(OP_TEXT, b"hi", rsv1=True) == b"\xc1\x02hi"
    assert encode_frame(OP_BINARY, b"x" * 70_000, rsv1=True)[:2] == b"\xc2\x7f"
    assert encode_frame(OP_TEXT, b"hi") == b"\x81\x02hi"


def test_events_before_a_violation_are_kept_on_the_error():
    parser = FrameParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(OP_TEXT, b"valid") + client_frame(OP_TEXT, b"bad", rsv=1))
    assert info.value.events == [TextMessage("valid")]


def test_endless_empty_continuation_frames_do_not_accumulate():
    parser = FrameParser(max_message_size=1024)
    parser.feed(client_frame(OP_TEXT, b"a", fin=False))
    empty = client_frame(OP_CONTINUATION, b"", fin=False)
    for _ in range(20):
        assert parser.feed(empty * 1000) == []
    assert parser._text is not None and parser._text.tell() == 1  # "a", nothing more
    assert parser.feed(client_frame(OP_CONTINUATION, b"z")) == [TextMessage("az")]


@pytest.mark.parametrize("bad", [42, None, ["list"], {"a": 1}])
def test_encoding_anything_but_text_or_bytes_is_a_type_error(bad):
    with pytest.raises(TypeError, match="str or bytes"):
        encode_message(bad)
    with pytest.raises(TypeError, match="str or bytes"):
        text_if_utf8(bad)


def test_text_if_utf8_keeps_binary_that_is_not_utf8():
    assert text_if_utf8("é") == "é"
    assert text_if_utf8("é".encode()) == "é"
    assert text_if_utf8(bytearray(b"\xff\x00")) == b"\xff\x00"


def test_a_message_of_many_fragments_is_kept_in_one_buffer():
    parser = FrameParser(max_message_size=2**20)
    parser.feed(client_frame(OP_BINARY, b"a", fin=False))
    assert parser.feed(client_frame(OP_CONTINUATION, b"b", fin=False) * 10_000) == []
    assert isinstance(parser._fragments, bytearray)
    assert len(parser._fragments) == 10_001
    (message,) = parser.feed(client_frame(OP_CONTINUATION, b"c"))
    assert message == b"a" + b"b" * 10_000 + b"c"
    assert parser._fragments is None  # the next message starts afresh, and none is held


def test_a_character_split_across_fragments_is_decoded_once_whole():
    euro = "€".encode()  # three bytes, one per fragment
    parser = FrameParser()
    events = parser.feed(
        client_frame(OP_TEXT, euro[:1], fin=False)
        + client_frame(OP_CONTINUATION, euro[1:2], fin=False)
        + client_frame(OP_CONTINUATION, euro[2:])
    )
    assert events == [TextMessage("€")]
    assert type(events[0]) is TextMessage


def test_the_parser_counts_every_frame_it_parses():
    parser = FrameParser()
    parser.feed(client_frame(OP_TEXT, b"one") + client_frame(OP_PING, b"") + b"\x81")
    assert parser.frames == 2  # the third frame is not complete yet
    parser.feed(client_frame(OP_TEXT, b"two")[1:])
    assert parser.frames == 3


def test_frame_counts_and_wire_bytes_by_opcode_across_runs_reads_and_errors():
    counts, sizes = [0] * 16, [0] * 16
    parser = FrameParser(frame_counts=counts, wire_bytes=sizes)
    texts = [client_frame(OP_TEXT, b"a" * n) for n in (1, 2, 200)]
    binary = client_frame(OP_BINARY, b"\x00" * 70_000)  # 64-bit length form
    ping = client_frame(OP_PING, b"p")
    start = client_frame(OP_TEXT, b"frag", fin=False)
    rest = client_frame(OP_CONTINUATION, b"ment")
    # Runs of one opcode, broken by others, one frame cut between two reads.
    stream = texts[0] + texts[1] + ping + binary + texts[2] + start + ping + rest
    cut = len(stream) - 3
    parser.feed(stream[:cut])
    parser.feed(stream[cut:])
    assert counts[OP_TEXT] == 4 and sizes[OP_TEXT] == sum(map(len, texts)) + len(start)
    assert counts[OP_PING] == 2 and sizes[OP_PING] == 2 * len(ping)
    assert counts[OP_BINARY] == 1 and sizes[OP_BINARY] == len(binary)
    assert counts[OP_CONTINUATION] == 1 and sizes[OP_CONTINUATION] == len(rest)
    assert sum(counts) == parser.frames == 8
    # A frame that fails after parsing (bad UTF-8) counts; one refused from its header does not.
    bad_text = client_frame(OP_TEXT, b"\xff")
    with pytest.raises(ProtocolError):
        parser.feed(texts[0] + bad_text + client_frame(OP_PING, b"x" * 126))
    assert counts[OP_TEXT] == 6 and sizes[OP_TEXT] == sum(map(len, texts)) + len(start) + len(
        texts[0]
    ) + len(bad_text)
    assert counts[OP_PING] == 2


# --- Large frames: kept in the pieces they arrive in, unmasked once whole ---


@pytest.mark.parametrize("cut", [1, 2, 9, 14, 15, 5000, 70_000, 200_013])
def test_a_large_frame_cut_anywhere_arrives_whole_through_a_reused_buffer(cut):
    payload = bytes(range(256)) * 800  # 204,800 bytes: over LARGE_FRAME
    frame = client_frame(OP_BINARY, payload)
    counts, sizes = [0] * 16, [0] * 16
    parser = FrameParser(frame_counts=counts, wire_bytes=sizes)
    small = client_frame(OP_TEXT, b"after")
    events = _feed_through_one_reused_buffer(parser, frame + small, sorted({cut, 100_000}))
    assert events == [payload, "after"]
    assert parser.large_missing == 0 and parser._pieces is None and parser._buffer is None
    assert (counts[OP_BINARY], sizes[OP_BINARY]) == (1, len(frame))
    assert parser.frames == 2


def test_the_rest_of_a_large_frame_is_asked_for_and_kept_as_the_bytes_fed():
    payload = b"\x07" * 300_000
    frame = client_frame(OP_BINARY, payload)
    parser = FrameParser()
    assert parser.large_missing == 0
    assert parser.feed(frame[:1000]) == []
    assert parser.large_missing == len(frame) - 1000  # the header is in: the size is known
    rest = frame[1000:100_000]
    assert parser.feed(rest) == []
    assert parser._pieces is not None and parser._pieces[-1] is rest  # kept, not copied
    assert parser.large_missing == len(frame) - 100_000
    assert parser.feed(frame[100_000:]) == [payload]
    assert parser.large_missing == 0


def test_a_large_frame_trickled_byte_by_byte_is_not_kept_as_a_million_objects():
    import tracemalloc

    payload = bytes(range(256)) * 512  # 128 KiB
    frame = client_frame(OP_BINARY, payload)
    parser = FrameParser()
    tracemalloc.start()
    try:
        events = [event for i in range(len(frame)) for event in parser.feed(frame[i : i + 1])]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert events == [payload]
    # One bytes object per byte would be 34 bytes of memory for each (4.5 MB here).
    assert peak < 4 * len(frame), f"peak {peak} bytes for a {len(frame)}-byte frame"


def test_large_text_frames_are_decoded_and_invalid_utf8_refused_after_the_good_ones():
    text = "é€😀" * 20_000
    good = client_frame(OP_TEXT, text.encode())
    parser = FrameParser()
    assert _feed_through_one_reused_buffer(parser, good, [70_000]) == [text]
    bad = client_frame(OP_TEXT, b"\xff" + b"a" * 100_000)
    stream = client_frame(OP_BINARY, b"ok") + bad
    with pytest.raises(ProtocolError) as info:
        _feed_through_one_reused_buffer(FrameParser(), stream, [50_000])
    assert (info.value.code, info.value.events) == (1007, [])  # b"ok" came in an earlier feed


def test_a_fragmented_message_with_large_fragments_and_a_control_frame_between():
    one, two = b"a" * 100_000, b"b" * 150_000
    stream = (
        client_frame(OP_BINARY, one, fin=False)
        + client_frame(OP_PING, b"hi")
        + client_frame(OP_CONTINUATION, two)
    )
    parser = FrameParser(max_message_size=300_000)
    events = _feed_through_one_reused_buffer(parser, stream, [70_000, 100_010, 180_000])
    assert events == [Ping(b"hi"), one + two]


def test_a_large_compressed_frame_in_pieces_is_inflated():
    import zlib

    from fws.deflate import DeflateSettings, negotiate, parse_offers

    negotiated = negotiate(parse_offers(["permessage-deflate"]), DeflateSettings())
    assert negotiated is not None
    payload = os.urandom(100_000)  # incompressible: the frame stays over LARGE_FRAME
    compressor = zlib.compressobj(wbits=-15)
    body = (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    frame = client_frame(OP_BINARY, body, rsv=4)
    parser = FrameParser(deflate=negotiated[1])
    assert _feed_through_one_reused_buffer(parser, frame, [20, 66_000]) == [payload]


def test_a_large_frame_over_the_limit_is_refused_from_its_header_before_any_piece():
    parser = FrameParser(max_message_size=100_000)
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(OP_BINARY, b"", length=200_000)[:14])
    assert info.value.code == 1009 and parser.large_missing == 0


def test_a_parser_holds_no_buffer_unless_a_frame_or_message_is_in_progress():
    # Every connection holds a parser: an idle one must not hold empty buffers.
    parser = FrameParser()
    assert parser._buffer is None and parser._fragments is None
    frame = client_frame(OP_TEXT, b"split in two")
    assert parser.feed(frame[:5]) == [] and parser._buffer is not None
    assert parser.feed(frame[5:]) == ["split in two"]
    assert parser._buffer is None
