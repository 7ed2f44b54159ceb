"""Limits that protect the server: each on a real server, with real or raw clients."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest
import websocket
import websockets.sync.client as ws_sync
from helpers import (
    TLSFiles,
    WssClient,
    connect,
    raw_upgrade,
    read_server_frame,
    read_until_eof,
    run_server,
    url,
    wait_for,
)
from websockets.exceptions import ConnectionClosed

from fws.filters.echo import Echo
from fws.frames import OP_CLOSE, OP_PING


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0]


def test_keepalive_pings_and_a_client_that_never_pongs_is_closed_1011():
    with run_server(message=Echo, ping_interval=0.2, ping_timeout=0.4) as server:
        sock = raw_upgrade(server.address[1])  # reads, but never answers pings
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_PING
        while opcode == OP_PING:
            opcode, payload = read_server_frame(sock)
        assert opcode == OP_CLOSE
        assert close_code(payload) == 1011
        assert b"keepalive" in payload


def test_a_client_that_answers_pings_stays_connected():
    with run_server(message=Echo, ping_interval=0.1, ping_timeout=0.3) as server:
        with ws_sync.connect(url(server)) as client:  # websockets answers pings itself
            time.sleep(1.0)
            client.send("alive")
            assert client.recv(timeout=5) == "alive"


def test_idle_timeout_closes_a_silent_client_with_1001():
    with run_server(message=Echo, idle_timeout=0.5, ping_interval=None) as server:
        with ws_sync.connect(url(server)) as client:
            client.send("one message resets the clock")
            assert client.recv(timeout=5) == "one message resets the clock"
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
            assert info.value.rcvd.code == 1001
            assert 0.4 < time.monotonic() - started < 4


def test_handshake_timeout_cuts_a_slowloris_client():
    with run_server(message=Echo, handshake_timeout=0.5) as server:
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never finishes the headers
        started = time.monotonic()
        read_until_eof(sock)
        assert time.monotonic() - started < 4
        # A client that completes the handshake in time is not affected later.
        client = connect(server)
        time.sleep(0.8)
        client.send("after the handshake timeout")
        assert client.recv() == "after the handshake timeout"


def test_max_connections_answers_503_at_the_handshake():
    with run_server(message=Echo, max_connections=2) as server:
        first, second = connect(server), connect(server)
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server)
        assert info.value.status_code == 503
        first.close()
        time.sleep(0.2)
        third = connect(server)
        third.send("room again")
        assert third.recv() == "room again"
        second.close()


def test_origin_allowlist_refuses_other_sites_with_403():
    allowed = "https://chat.example"
    with run_server(message=Echo, origins=[allowed]) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server, origin="https://evil.example")
        assert info.value.status_code == 403
        client = connect(server, origin=allowed)
        client.send("same site")
        assert client.recv() == "same site"
        # Non-browser clients send no Origin; the allowlist cannot protect against
        # them anyway, so they are let in.
        sock = raw_upgrade(server.address[1])
        sock.close()


def test_limits_are_command_line_options():
    from helpers import LOOPBACK, ServerProcess

    args = ["-f", "echo", "--host", LOOPBACK, "-p", "0", "--max-connections", "1"]
    args += ["--origin", "https://a.example", "https://b.example", "--max-message-size", "100"]
    args += ["--ping-interval", "0.2", "--ping-timeout", "0.4", "--handshake-timeout", "0.5"]
    with ServerProcess(args) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server.url, origin="https://c.example")
        assert info.value.status_code == 403
        client = connect(server.url, origin="https://b.example")
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server.url, origin="https://a.example")
        assert info.value.status_code == 503
        client.close()
        time.sleep(0.3)
        with ws_sync.connect(server.url) as limited:
            limited.send("x" * 101)
            with pytest.raises(ConnectionClosed) as closed:
                limited.recv(timeout=5)
            assert closed.value.rcvd.code == 1009
        time.sleep(0.3)
        # --ping-interval and --ping-timeout: pinged, then closed with 1011 for silence.
        sock = raw_upgrade(server.port)
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_PING
        while opcode == OP_PING:
            opcode, payload = read_server_frame(sock)
        assert (opcode, close_code(payload)) == (OP_CLOSE, 1011)
        sock.close()
        time.sleep(0.3)
        # --handshake-timeout: a client that never finishes its request is cut.
        slow = socket.create_connection((LOOPBACK, server.port), timeout=5)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        assert read_until_eof(slow) == b""
        assert time.monotonic() - started < 3


def test_a_client_flooding_pings_without_reading_is_closed_not_buffered_for():
    from frame_builder import client_frame

    with run_server(message=Echo, max_outbound_bytes=64 * 1024, close_timeout=0.5) as server:
        sock = raw_upgrade(server.address[1], receive_buffer=4096)
        wait_for(lambda: server.users)
        pings = client_frame(OP_PING, b"p" * 125) * 100
        deadline = time.monotonic() + 20
        cut = False
        while time.monotonic() < deadline:  # bounded: at most 20 s of pings
            try:
                sock.sendall(pings)
            except OSError:  # the server cut the connection
                cut = True
                break
        assert cut, "the server kept buffering pongs for a client that does not read"
        wait_for(lambda: not server.users, 5)


def test_slowloris_over_tls_is_cut_and_bad_tls_leaves_no_traceback(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="fws")
    tls = TLSFiles(tmp_path)
    context = tls.client_context
    with run_server(message=Echo, handshake_timeout=0.5, **tls.server_settings) as server:
        port = server.address[1]
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # no TLS hello
        started = time.monotonic()
        assert read_until_eof(silent) == b""
        assert time.monotonic() - started < 4
        plain = socket.create_connection(("127.0.0.1", port), timeout=5)
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # http:// to a wss port
        with contextlib.suppress(ConnectionResetError):  # EOF or a reset: refused either way
            read_until_eof(plain)
        with WssClient(f"wss://127.0.0.1:{port}/", context) as client:
            client.send("still fine")
            assert client.recv(timeout=5) == "still fine"
    assert "Traceback" not in caplog.text
    assert "TLS handshake from 127.0.0.1" in caplog.text


def test_a_tls_hello_trickled_byte_by_byte_is_cut_at_the_deadline(tmp_path):
    tls = TLSFiles(tmp_path)
    with run_server(message=Echo, handshake_timeout=1.0, **tls.server_settings) as server:
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 512  # a record header, then a trickle
        started = time.monotonic()
        cut = False
        for byte in hello:  # bounded: 517 bytes, 0.2 s apart at most
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # cut while a byte of ours was still unread
                cut = True
                break
            if time.monotonic() - started > 6:
                break
        assert cut, "a client trickling its TLS hello was never cut"
        assert time.monotonic() - started < 4


def test_handshake_timeout_off_still_serves_tls(tmp_path):
    tls = TLSFiles(tmp_path)
    files, context = tls.server_settings, tls.client_context
    with run_server(message=Echo, handshake_timeout=None, **files) as server:
        with WssClient(url(server, scheme="wss"), context) as client:
            client.send("no deadline")
            assert client.recv(timeout=5) == "no deadline"
    with run_server(message=Echo, handshake_timeout=0, **files) as server:
        with WssClient(url(server, scheme="wss"), context) as client:
            client.send("zero means off")
            assert client.recv(timeout=5) == "zero means off"


def test_max_connections_holds_under_a_burst_of_slow_handshakes():
    import threading

    import gevent

    def slow_auth(ws, request):
        gevent.sleep(0.3)  # I/O in a connect filter, while others arrive

    with run_server(message=Echo, connect=slow_auth, max_connections=2) as server:
        outcomes: list[object] = []

        def attempt() -> None:
            try:
                outcomes.append(connect(server))
            except websocket.WebSocketBadStatusException as exc:
                outcomes.append(exc.status_code)

        threads = [threading.Thread(target=attempt) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(o for o in outcomes if isinstance(o, int)) == [503] * 4
        # The client may see the 101 a moment before the server lists it.
        wait_for(lambda: len(server.users) == 2, 5)


def test_a_client_upgrading_while_the_server_stops_gets_1001():
    import threading

    import gevent
    from helpers import stop_server

    arrived = threading.Event()

    def slow_auth(ws, request):
        arrived.set()
        gevent.sleep(0.5)

    with run_server(message=Echo, connect=slow_auth, close_timeout=5) as server:
        codes: list[int] = []

        def client() -> None:
            with ws_sync.connect(url(server)) as conn:
                try:
                    conn.recv(timeout=5)
                except ConnectionClosed as exc:
                    codes.append(exc.rcvd.code if exc.rcvd else 1006)

        thread = threading.Thread(target=client)
        thread.start()
        assert arrived.wait(5)
        stop_server(server)
        thread.join(10)
        assert codes == [1001]


@pytest.mark.parametrize("key", [b"abc", b"YWJj"])  # not base64; base64 of 3 bytes, not 16
def test_malformed_key_is_refused_before_connect_filters_run(key, caplog):
    seen = []
    with run_server(message=Echo, connect=lambda ws, request: seen.append(request)) as server:
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400")
    assert seen == []
    assert "Traceback" not in caplog.text


def test_unanswered_server_close_is_reported_as_not_clean():
    closes = []

    def close_on_request(ws, data):
        ws.close(4000, "bye")

    with run_server(
        message=close_on_request,
        disconnect=lambda ws, info: closes.append(info),
        close_timeout=0.5,
    ) as server:
        from frame_builder import client_frame

        from fws.frames import OP_TEXT

        sock = raw_upgrade(server.address[1])
        sock.sendall(client_frame(OP_TEXT, b"close me"))  # then never answers the close
        opcode, payload = read_server_frame(sock)
        assert (opcode, close_code(payload)) == (OP_CLOSE, 4000)
        wait = time.monotonic() + 5
        while not closes and time.monotonic() < wait:
            time.sleep(0.05)
    assert len(closes) == 1
    assert (closes[0].code, closes[0].reason, closes[0].clean) == (4000, "bye", False)


def test_close_timeout_must_be_positive():
    import fws

    with pytest.raises(ValueError, match="close_timeout"):
        fws.Server(close_timeout=0)
