"""Log lines and printed lines with hostile input: nothing a client sends reaches them raw."""

from __future__ import annotations

import json
import logging
import socket
import struct

import pytest
import websocket
from helpers import (
    LOOPBACK,
    ServerProcess,
    connect,
    raw_upgrade,
    read_response_head,
    read_stdout_until,
    read_until_eof,
    run_server,
    upgrade_request,
    url,
    wait_for,
)

from fws.escape import printable
from fws.filters.echo import Echo
from fws.filters.stdout_messages import StdoutMessages
from fws.filters.stdout_pubsub import StdoutPubSub
from fws.filters.stdout_rawdata import StdoutRawData
from fws.logformat import JsonFormatter, TextFormatter
from fws.storage import PubSubMessage

HOSTILE = "red\x1b[31m alert\r\nFORGED LINE\x07\x9b2J\u2028end"
"""ANSI colour, CR/LF, BEL, a C1 CSI (clear screen) and a line separator."""

RAW = ("\x1b", "\r", "\n", "\x07", "\x9b", "\u2028")


def _assert_clean(text: str) -> None:
    for char in RAW:
        assert char not in text, f"{char!r} reached {text!r}"


def _closed_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "connection_closed"]


def test_printable_escapes_controls_and_ansi_and_bounds_length():
    assert printable(HOSTILE, None) == (
        "red\\x1b[31m alert\\r\\nFORGED LINE\\x07\\x9b2J\\u2028end"
    )
    assert printable("plain text, ünïcode") == "plain text, ünïcode"
    assert printable("x" * 300, 10) == "x" * 10 + "..."


def test_stdout_messages_prints_a_hostile_message_on_one_escaped_line(capsys):
    with run_server(message=StdoutMessages) as server:
        client = connect(server)
        wait_for(lambda: server.users)
        client_id = next(iter(server.users))
        client.send(HOSTILE)
        client.send_binary(b"\x1b[31m\n")
        output = read_stdout_until(capsys, lambda out: out.count("--MESSAGE--") == 2)
    assert output == (
        f"--MESSAGE--\n{client_id} => red\\x1b[31m alert\\r\\nFORGED LINE\\x07\\x9b2J\\u2028end\n"
        f"--MESSAGE--\n{client_id} => b'\\x1b[31m\\n'\n"
    )


def test_stdout_pubsub_and_rawdata_escape_what_arrives(capsys):
    with run_server(data=StdoutRawData, consumer=StdoutPubSub) as server:
        client = connect(server)
        wait_for(lambda: server.users)
        client.send(HOSTILE)
        item = PubSubMessage("chat", HOSTILE.encode())
        server.hub.loop.run_callback_threadsafe(server.queue.put, item)
        output = read_stdout_until(capsys, lambda o: "--PUBSUB--" in o and "--RAWDATA--" in o)
    assert f"--PUBSUB--\nchat: {printable(HOSTILE, None)}\n" in output
    lines = output.split("\n")
    # Every line is a marker or one escaped item: nothing forged a line of its own.
    assert not [line for line in lines if line.startswith("FORGED")]
    for line in lines:
        assert line.isprintable(), line


def test_connection_end_line_has_its_totals_and_an_escaped_path(caplog):
    caplog.set_level(logging.INFO, logger="fws")
    with run_server(message=Echo) as server:
        # %0a and %1b decode to LF and ESC in the path; the query string holds a secret.
        client = websocket.create_connection(
            url(server, "/room%0aFORGED%1b[31m?token=secret"), timeout=5
        )
        client.send("hello")
        assert client.recv() == "hello"
        client.send_binary(b"\x00\x01")
        assert client.recv() == b"\x00\x01"
        client.close(status=4000, reason=b"bye\nFORGED\x1b[2J")
        wait_for(lambda: _closed_lines(caplog), 5, "no connection end line")
    (record,) = _closed_lines(caplog)
    fields = vars(record)
    assert fields["path"] == "/room\\nFORGED\\x1b[31m"
    assert fields["messages_in"] == 2
    assert fields["messages_out"] == 2
    assert fields["bytes_in"] > 2 + len("hello")  # frames, with headers and masks
    assert fields["bytes_out"] >= (2 + 5) + (2 + 2) + 2  # two echoes and the close
    assert fields["close_code"] == 4000
    assert fields["close_reason"] == "bye\\nFORGED\\x1b[2J"
    assert fields["closed_by"] == "client"
    assert fields["peer"].startswith(f"{LOOPBACK}:")
    assert 0 <= fields["duration"] < 30
    message = record.getMessage()
    assert "secret" not in message
    assert "closed: code 4000 (bye\\nFORGED\\x1b[2J) by client;" in message
    assert "in 2 msgs" in message and "out 2 msgs" in message
    for logged in caplog.records:
        _assert_clean(logged.getMessage())


def test_end_line_says_who_closed(caplog):
    caplog.set_level(logging.INFO, logger="fws")

    def close_on_request(connection, data):
        connection.close(1000, "as asked")

    with run_server(message=close_on_request, close_timeout=0.5) as server:
        # The server closes; this client answers.
        client = connect(server)
        client.send("close me")
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                client.recv()
        # The server closes; this one never answers, and is cut after close_timeout.
        silent = raw_upgrade(server.address[1])
        silent.sendall(_masked_text(b"close me"))
        # This one vanishes without a closing handshake.
        gone = raw_upgrade(server.address[1])
        wait_for(lambda: len(_closed_lines(caplog)) >= 1, 5)
        gone.close()
        wait_for(lambda: len(_closed_lines(caplog)) == 3, 5, "not three end lines")
        silent.close()
        client.close()
    closed_by = sorted(vars(r)["closed_by"] for r in _closed_lines(caplog))
    assert closed_by == ["abort", "server", "timeout"]


def _masked_text(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


def test_refusals_escape_a_hostile_origin_and_path(caplog):
    caplog.set_level(logging.INFO, logger="fws")
    with run_server(origins=["https://ok.example"]) as server:
        port = server.address[1]
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            # A control character in a header value, percent-escapes in the path.
            sock.sendall(
                upgrade_request(port, "/x%0aFORGED%1b[31m", "Origin: https://evil\x1b[31m\x07\r\n")
            )
            assert read_response_head(sock).startswith(b"HTTP/1.1 403")
            read_until_eof(sock)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals, [r.getMessage() for r in caplog.records]
    for logged in caplog.records:
        _assert_clean(logged.getMessage())
    assert any("/x\\nFORGED\\x1b[31m" in line for line in refusals), refusals


def test_formatters_escape_a_message_that_was_not_escaped_at_the_source():
    record = logging.LogRecord("fws.test", logging.INFO, __file__, 1, "path %s", (HOSTILE,), None)
    record.peer = "127.0.0.1:1"
    text = TextFormatter().format(record)
    assert text.endswith("INFO fws.test: path " + printable(HOSTILE, None))
    _assert_clean(text)
    line = JsonFormatter().format(record)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "path " + printable(HOSTILE, None)
    assert entry["level"] == "INFO" and entry["logger"] == "fws.test"
    assert entry["peer"] == "127.0.0.1:1"
    assert entry["time"].endswith("Z")


def test_json_log_format_from_the_command_line():
    with ServerProcess(
        ["-p", "0", "--host", LOOPBACK, "-f", "echo", "--log-format", "json"]
    ) as server:
        client = websocket.create_connection(server.url + "a%0ab?token=secret", timeout=5)
        client.send("ping")
        assert client.recv() == "ping"
        client.close()
        wait_for(lambda: "connection_closed" in server.output, 5, server.output)
        assert server.stop() == 0
    entries = [json.loads(line) for line in server.output.splitlines() if line.strip()]
    (closed,) = [e for e in entries if e.get("event") == "connection_closed"]
    assert closed["path"] == "/a\\nb"
    assert closed["messages_in"] == closed["messages_out"] == 1
    assert closed["closed_by"] == "client" and closed["close_code"] == 1000
    assert {"time", "level", "logger", "message"} <= closed.keys()
    assert "secret" not in server.output


def test_an_app_error_quoting_a_header_is_one_escaped_json_record(tmp_path):
    """pywsgi would print the app's traceback raw to stderr, past the JSON format."""
    (tmp_path / "shop.py").write_text(
        "def app(environ, start_response):\n"
        "    raise ValueError('bad header ' + environ.get('HTTP_X_EVIL', ''))\n"
    )
    with ServerProcess(
        ["-p", "0", "--host", LOOPBACK, "--app", "shop:app", "--log-format", "json"],
        cwd=tmp_path,
    ) as server:
        with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
            sock.sendall(
                b"GET /x%1b HTTP/1.1\r\nHost: x\r\nX-Evil: \x1b[31mRED\x07\r\n"
                b"Connection: close\r\n\r\n"
            )
            assert read_until_eof(sock).startswith(b"HTTP/1.1 500")
        wait_for(lambda: "application raised" in server.output, 5, server.output)
        assert server.stop() == 0
    lines = [line for line in server.output.split("\n") if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    (error,) = [e for e in entries if "application raised" in e["message"]]
    assert error["level"] == "ERROR" and "ValueError: bad header" in error["exc_info"]
    for line in lines:
        _assert_clean(line)


def test_a_filter_error_quoting_a_message_keeps_the_text_log_escaped(tmp_path):
    (tmp_path / "picky.py").write_text(
        "from fws import WebSocketMessageFilter\n"
        "class Picky(WebSocketMessageFilter):\n"
        "    @classmethod\n"
        "    def filter(cls, connection, data):\n"
        "        raise ValueError('cannot take ' + data)\n"
    )
    args = ["-p", "0", "--host", LOOPBACK, "-f", "./picky.py"]
    with ServerProcess(args, cwd=tmp_path) as server:
        client = websocket.create_connection(server.url, timeout=5)
        client.send(HOSTILE)
        wait_for(lambda: "ValueError: cannot take" in server.output, 5, server.output)
        client.close()
        assert server.stop() == 0
    for line in server.output.split("\n"):  # a traceback keeps its lines; none holds raw text
        _assert_clean(line)
