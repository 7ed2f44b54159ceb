"""permessage-deflate on a real server: real clients with and without compression, raw bombs."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import zlib

import pytest
import websocket
import websockets.sync.client as ws_sync
from helpers import (
    LOOPBACK,
    ServerProcess,
    raw_upgrade,
    read_response_head,
    read_server_frame,
    run_server,
    upgrade_request,
    url,
)
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import fws
from fws.deflate import DeflateSettings
from fws.filters.echo import Echo
from fws.frames import OP_CLOSE
from fws.outbound import deliver_deferred

OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
LARGE = json.dumps([{"id": n, "user": f"user{n}", "text": "hello " * 8} for n in range(200)])


def deflate(payload: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


def masked_frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = bytes([first, 0x80 | size])
    elif size < 65536:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, 0x80 | 127]) + struct.pack("!Q", size)
    return header + b"\0\0\0\0" + payload  # a zero mask leaves the payload as it is


def handshake_response(port: int, extra: str) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(upgrade_request(port, extra_headers=extra))
        return read_response_head(sock)


def test_websockets_client_negotiates_deflate_and_large_messages_round_trip():
    with run_server(message=Echo) as server:
        with ws_sync.connect(url(server)) as client:  # websockets offers deflate by default
            names = [extension.name for extension in client.protocol.extensions]
            assert names == ["permessage-deflate"]
            client.send(LARGE)
            assert client.recv(timeout=5) == LARGE
            client.send("short, sent uncompressed")  # under compress_min_size
            assert client.recv(timeout=5) == "short, sent uncompressed"
            client.send(LARGE.encode())
            assert client.recv(timeout=5) == LARGE.encode()


def test_the_response_names_the_parameters_and_large_server_frames_are_compressed():
    with run_server(message=Echo) as server:
        head = handshake_response(server.address[1], OFFER)
        assert (
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
            b"client_no_context_takeover\r\n" in head
        ), head
        sock = raw_upgrade(server.address[1], extra_headers=OFFER)
        sock.sendall(masked_frame(0xC1, deflate(LARGE.encode())))  # FIN + RSV1 + text
        first, payload = _read_raw_frame(sock)
        assert first == 0xC1  # compressed: RSV1 set
        assert len(payload) < len(LARGE) / 3
        assert inflate(payload) == LARGE.encode()
        sock.sendall(masked_frame(0x81, b"tiny"))  # uncompressed frames stay allowed
        assert _read_raw_frame(sock) == (0x81, b"tiny")
        sock.close()


def _read_raw_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "closed mid-frame"
            data += chunk
        return data

    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return first, exactly(length)


def test_compression_off_negotiates_nothing_and_websocket_client_works_without_it():
    with run_server(message=Echo, compression="off") as server:
        head = handshake_response(server.address[1], OFFER)
        assert head.startswith(b"HTTP/1.1 101") and b"Sec-WebSocket-Extensions" not in head
        with ws_sync.connect(url(server)) as client:
            assert client.protocol.extensions == []
            client.send(LARGE)
            assert client.recv(timeout=5) == LARGE
    with run_server(message=Echo) as server:  # websocket-client offers no extension at all
        client = websocket.create_connection(url(server), timeout=5)
        client.send(LARGE)
        assert client.recv() == LARGE
        client.close()


def test_context_takeover_when_the_server_allows_it():
    settings = DeflateSettings(
        server_no_context_takeover=False, client_no_context_takeover=False, compress_min_size=0
    )
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    with run_server(message=Echo, compression=settings) as server:
        with ws_sync.connect(url(server), extensions=[factory], compression=None) as client:
            (extension,) = client.protocol.extensions
            assert not extension.local_no_context_takeover
            assert not extension.remote_no_context_takeover
            for n in range(20):  # each message depends on the ones before it
                client.send(f"{LARGE[:500]} {n}")
                assert client.recv(timeout=5) == f"{LARGE[:500]} {n}"


def test_a_decompression_bomb_is_closed_with_1009_after_inflating_no_more_than_the_limit():
    bomb = deflate(b"\0" * (64 * 2**20))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 100_000
    with run_server(message=Echo, max_message_size=2**20) as server:
        bystander = websocket.create_connection(url(server), timeout=5)
        sock = raw_upgrade(server.address[1], extra_headers=OFFER)
        sock.sendall(masked_frame(0xC2, bomb))
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1009
        sock.close()
        bystander.send("unaffected")
        assert bystander.recv() == "unaffected"


def test_a_fragmented_bomb_is_refused_too():
    fragment = deflate(b"\0" * (8 * 2**20))  # each continuation inflates to 8 MiB
    with run_server(message=Echo, max_message_size=2**20) as server:
        sock = raw_upgrade(server.address[1], extra_headers=OFFER)
        sock.sendall(masked_frame(0x42, fragment[: len(fragment) // 2]))  # RSV1, not FIN
        sock.sendall(masked_frame(0x80, fragment[len(fragment) // 2 :]))
        opcode, payload = read_server_frame(sock)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, 1009)
        sock.close()


@pytest.mark.parametrize(
    "frames",
    [
        [masked_frame(0xC9, b"")],  # RSV1 on a ping
        # RSV1 on a continuation frame
        [masked_frame(0x41, deflate(b"a" * 200)), masked_frame(0xC0, deflate(b"b"))],
    ],
    ids=["control", "continuation"],
)
def test_rsv1_where_rfc7692_forbids_it_is_1002(frames):
    with run_server(message=Echo) as server:
        sock = raw_upgrade(server.address[1], extra_headers=OFFER)
        sock.sendall(b"".join(frames))
        opcode, payload = read_server_frame(sock)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, 1002)
        sock.close()


def test_rsv1_without_negotiation_is_1002():
    with run_server(message=Echo) as server:
        sock = raw_upgrade(server.address[1])  # no offer
        sock.sendall(masked_frame(0xC1, deflate(b"x" * 100)))
        opcode, payload = read_server_frame(sock)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, 1002)


class BroadcastAndInspect(fws.WebSocketMessageFilter):
    """Broadcast, then report whether every compressed client got the very same bytes."""

    @classmethod
    def filter(cls, web_socket_instance, data):
        server = web_socket_instance.server
        server.broadcast(LARGE, exclude=web_socket_instance.id)
        deliver_deferred(server.table)  # queued now, not by the flusher's next turn
        # No greenlet switch since: the frames are still the last in each outbox.
        queued = [c._outbox[-1] for c in server.users.values() if c is not web_socket_instance]
        compressed = [frame for frame in queued if frame[0] & 0x40]
        web_socket_instance.send(
            f"{len(compressed)} {len({id(frame) for frame in compressed})} {len(queued)}"
        )


def test_a_broadcast_compresses_once_for_every_client_that_keeps_no_context():
    with run_server(message=BroadcastAndInspect) as server, contextlib.ExitStack() as stack:
        deflating = [stack.enter_context(ws_sync.connect(url(server))) for _ in range(3)]
        plain = websocket.create_connection(url(server), timeout=5)
        with ws_sync.connect(url(server)) as sender:
            sender.send("go")
            # Three compressed frames, one object among them; four recipients in all.
            assert sender.recv(timeout=5) == "3 1 4"
        for client in deflating:
            assert client.recv(timeout=5) == LARGE
        assert plain.recv() == LARGE
        plain.close()


def test_cli_compression_off_and_min_size(tmp_path):
    args = ["-f", "echo", "--host", LOOPBACK, "-p", "0", "--compression", "off"]
    with ServerProcess(args, cwd=tmp_path) as server:
        head = handshake_response(server.port, OFFER)
        assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" not in head
    args = ["-f", "echo", "--host", LOOPBACK, "-p", "0", "--compression-min-size", "0"]
    with ServerProcess(args, cwd=tmp_path) as server:
        sock = raw_upgrade(server.port, extra_headers=OFFER)
        sock.sendall(masked_frame(0x81, b"hi"))
        first, payload = _read_raw_frame(sock)
        assert first == 0xC1 and inflate(payload) == b"hi"  # even 2 bytes are compressed
        sock.close()
    bad = subprocess.run(
        [sys.executable, "-m", "fws", "--compression", "brotli"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "brotli" in bad.stderr


def test_an_unknown_compression_name_is_a_configuration_error():
    with pytest.raises(fws.ConfigurationError, match="deflate, off"):
        fws.Server(compression="gzip")


def test_close_frames_are_never_compressed():
    with run_server(message=Echo, compression=DeflateSettings(compress_min_size=0)) as server:
        sock = raw_upgrade(server.address[1], extra_headers=OFFER)
        sock.sendall(masked_frame(0x88, struct.pack("!H", 1000) + b"bye" * 30))
        first, payload = _read_raw_frame(sock)
        assert first == 0x80 | OP_CLOSE  # RSV1 clear
        assert payload[:2] == struct.pack("!H", 1000)
        sock.close()
