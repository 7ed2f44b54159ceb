"""The strict request-head parser of the upgrade's fast path: plain Python, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fws.request_head import (
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    RequestHead,
    head_length,
    parse_head,
)

UPGRADE = (
    b"GET /chat?room=1 HTTP/1.1\r\n"
    b"Host: example.com:9000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def head(*lines: bytes, request_line: bytes = b"GET / HTTP/1.1") -> bytes:
    return b"\r\n".join((request_line, *lines)) + b"\r\n\r\n"


def test_an_upgrade_head_is_parsed_with_lower_case_names():
    parsed = parse_head(UPGRADE)
    assert parsed == RequestHead(
        "GET",
        "/chat?room=1",
        "HTTP/1.1",
        {
            "host": "example.com:9000",
            "upgrade": "websocket",
            "connection": "Upgrade",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version": "13",
        },
    )


def test_values_lose_surrounding_spaces_and_tabs_and_may_be_empty():
    parsed = parse_head(head(b"X-A:  a b \t", b"X-B:", b"X-C:\tc"))
    assert parsed is not None
    assert parsed.headers == {"x-a": "a b", "x-b": "", "x-c": "c"}


def test_repeated_headers_are_joined_as_a_wsgi_environ_joins_them():
    parsed = parse_head(
        head(
            b"Sec-WebSocket-Protocol: a",
            b"sec-websocket-protocol: b",
            b"Cookie: x=1",
            b"Cookie: y=2",
        )
    )
    assert parsed is not None
    assert parsed.headers == {"sec-websocket-protocol": "a,b", "cookie": "x=1; y=2"}


def test_the_method_is_kept_as_sent_and_other_versions_are_read():
    lowercase = parse_head(head(request_line=b"get / HTTP/1.1"))
    assert lowercase is not None and lowercase.method == "get"
    old = parse_head(head(request_line=b"GET / HTTP/1.0"))
    assert old is not None and old.version == "HTTP/1.0"


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://example.com/ HTTP/1.1",  # absolute-form: pywsgi's PATH_INFO rules
        b"OPTIONS * HTTP/1.1",
        b"GET  / HTTP/1.1",  # two spaces
        b"GET / HTTP/1.1 ",  # trailing space
        b"GET /a b HTTP/1.1",
        b"GET /",  # HTTP/0.9
        b"GET / HTTP/11",
        b"GET / http/1.1",
        b"G(T / HTTP/1.1",  # not a token
        b"",
    ],
)
def test_unusual_request_lines_are_left_to_pywsgi(request_line):
    assert parse_head(head(b"Host: x", request_line=request_line)) is None


@pytest.mark.parametrize(
    "line",
    [
        b" folded continuation",  # obs-fold
        b"\tfolded continuation",
        b"Host : x",  # space before the colon
        b"No colon here",
        b": no name",
        b"X_Token: a",  # "_": WSGI servers drop it
        b"X-Bell: \x07",  # control character
        b"X-Del: \x7f",
        b"X-Latin: caf\xe9",  # non-ASCII
        b"X-Bare: a\nY: b",  # bare LF inside the head
        b"X-Cr: a\rb",
    ],
)
def test_unusual_header_lines_are_left_to_pywsgi(line):
    assert parse_head(head(b"Host: x", line)) is None


def test_a_head_must_end_in_crlf_crlf():
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x\n\n") is None
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert parse_head(b"GET / HTTP/1.1\nHost: x\r\n\r\n") is None


def test_pywsgi_bounds_on_lines_and_header_count_are_kept():
    target = b"/" + b"a" * (MAX_REQUEST_LINE - len(b"GET / HTTP/1.1\r\n"))
    assert parse_head(head(request_line=b"GET " + target[:-1] + b" HTTP/1.1")) is not None
    assert parse_head(head(request_line=b"GET " + target + b" HTTP/1.1")) is None  # 414
    value = b"v" * (MAX_HEADER_LINE - len(b"X: \r\n"))
    assert parse_head(head(b"X: " + value)) is not None
    assert parse_head(head(b"X: " + value + b"v")) is None
    many = [b"X-%d: v" % number for number in range(MAX_HEADERS)]
    assert parse_head(head(*many)) is not None
    assert parse_head(head(*many, b"One-More: v")) is None


def test_head_length_finds_the_first_empty_line():
    assert head_length(UPGRADE) == len(UPGRADE)
    assert head_length(UPGRADE + b"\x81\x00") == len(UPGRADE)  # a frame sent at once
    assert head_length(UPGRADE[:-1]) is None
    assert head_length(b"GET / HTTP/1.1\nHost: x\n\nrest") == len(b"GET / HTTP/1.1\nHost: x\n\n")
    assert head_length(b"GET / HTTP/1.1\r\n\r\n\n\n") == len(b"GET / HTTP/1.1\r\n\r\n")


def test_head_length_resumes_where_a_growing_buffer_was_searched():
    buffer = bytearray()
    found = None
    for byte in UPGRADE:
        start = max(0, len(buffer) - 2)
        buffer.append(byte)
        found = head_length(buffer, start)
        if found is not None:
            break
    assert found == len(UPGRADE)


@pytest.mark.parametrize("module", ["fws.request_head", "fws.head_reader", "fws.proxies"])
def test_the_parser_the_head_reader_and_proxies_import_no_gevent(module):
    probe = f"import sys, {module}; print('gevent' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
