"""Limits that protect the server: each on a real server, with real or raw clients."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import websocket
import websockets.sync.client as ws_sync
from helpers import connect, raw_upgrade, read_server_frame, read_until_eof, run_server, url
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
    args += ["--ping-interval", "0.2", "--ping-timeout", "5", "--handshake-timeout", "1"]
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
        sock = raw_upgrade(server.port)
        assert read_server_frame(sock)[0] == OP_PING
