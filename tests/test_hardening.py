"""Connection-level hardening, on real servers with real clients.

The rate limit, pending handshakes bounded under a flood of silent
connections, the refusal above ``max_connections`` before any header is
read, and a fragment storm next to a normal client.
"""

from __future__ import annotations

import struct
import time

import pytest
import websockets.sync.client as ws_sync
from helpers import (
    ServerProcess,
    raw_upgrade,
    read_server_frame,
    run_fws_server,
    run_server,
    url,
)
from websockets.exceptions import ConnectionClosed

import fws
from fws.errors import ConfigurationError
from fws.filters.echo import Echo
from fws.frames import OP_CLOSE, OP_PING, OP_PONG


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])


def client_frame(first: int, payload: bytes) -> bytes:
    """A masked client frame with a zero mask (the payload goes as it is)."""
    assert len(payload) < 126
    return bytes([first, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


# -- the message rate limit -----------------------------------------------------


def test_a_burst_within_the_bucket_passes_and_the_next_message_closes_1008_rate_limit():
    # 0.5 a second: no token comes back during the test, however slow the machine.
    with run_server(message=Echo, max_messages_per_second=0.5, message_burst=10) as server:
        with ws_sync.connect(url(server)) as client:
            for number in range(10):
                client.send(f"message {number}")
            assert [client.recv(timeout=5) for _ in range(10)] == [
                f"message {number}" for number in range(10)
            ]
            client.send("one too many")
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1008
        assert info.value.rcvd.reason == "rate limit"
        assert server.table.stats.disconnects["rate_limit"] == 1


def test_a_client_under_the_rate_is_never_closed():
    with run_server(message=Echo, max_messages_per_second=50, message_burst=10) as server:
        with ws_sync.connect(url(server)) as client:
            for number in range(40):  # about 30 a second, for 1.3 s
                client.send(f"message {number}")
                assert client.recv(timeout=5) == f"message {number}"
                time.sleep(0.03)
        assert server.table.stats.disconnects["rate_limit"] == 0


def test_the_default_burst_is_twice_the_rate():
    with run_server(message=Echo, max_messages_per_second=2) as server:
        assert server.connection_settings.message_burst == 4
        with ws_sync.connect(url(server)) as client:
            for number in range(4):
                client.send(str(number))
            assert [client.recv(timeout=5) for _ in range(4)] == ["0", "1", "2", "3"]
            client.send("fifth")
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


def test_pings_count_against_the_rate():
    with run_server(message=Echo, max_messages_per_second=0.5, message_burst=3) as server:
        sock = raw_upgrade(server.address[1])
        sock.sendall(client_frame(0x80 | OP_PING, b"p") * 5)
        frames = [read_server_frame(sock) for _ in range(4)]
        assert frames[:3] == [(OP_PONG, b"p")] * 3
        opcode, payload = frames[3]
        assert opcode == OP_CLOSE
        assert close_code(payload) == 1008
        assert payload[2:] == b"rate limit"
        sock.close()


def test_the_rate_limit_is_off_by_default():
    with run_server(message=Echo) as server:
        assert server.connection_settings.max_messages_per_second is None
        with ws_sync.connect(url(server)) as client:
            for number in range(500):
                client.send(str(number))
            assert [client.recv(timeout=5) for _ in range(500)] == [str(n) for n in range(500)]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_messages_per_second": 0}, "max_messages_per_second must be more than 0"),
        ({"max_messages_per_second": -1}, "max_messages_per_second must be more than 0"),
        ({"max_messages_per_second": 5, "message_burst": 0}, "message_burst must be at least 1"),
        ({"message_burst": 5}, "message_burst needs max_messages_per_second"),
    ],
)
def test_rate_limit_settings_that_make_no_sense_are_refused(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        fws.Server(**settings)


def test_the_command_line_rate_limit_closes_a_fast_client(tmp_path):
    args = ["-f", "echo", "--host", "127.0.0.1", "--port", "0"]
    with ServerProcess([*args, "--max-messages-per-second", "0.5", "--message-burst", "2"]) as srv:
        with ws_sync.connect(srv.url) as client:
            client.send("one")
            client.send("two")
            client.send("three")
            assert client.recv(timeout=5) == "one"
            assert client.recv(timeout=5) == "two"
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        srv.stop()
        assert "over 0.5 messages a second" in srv.output


def test_a_burst_without_a_rate_is_a_usage_error():
    result = run_fws_server(["-f", "echo", "--message-burst", "5"])
    assert result.returncode == 2
    assert "message_burst needs max_messages_per_second" in result.stderr
