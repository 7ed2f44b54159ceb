"""The upgrade: RFC 6455 4.2.1 checks, subprotocols, response headers, bounds, proxies.

Raw sockets send the malformed requests (no client library would); real
clients check what a well-behaved client sees.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import pickle
import socket
import struct
import time
import weakref
from dataclasses import replace

import gevent
import pytest
import websocket
import websockets.sync.client as ws_sync
from frame_builder import client_frame
from helpers import (
    LOOPBACK,
    ServerProcess,
    connect,
    raw_upgrade,
    read_response_head,
    run_server,
    url,
    wait_for,
)

import fws
from fws.filters.echo import Echo
from fws.handshake import printable
from fws.handshake_rules import accept_key
from fws.proxies import ProxyNetworks

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def exchange(port: int, request: bytes, timeout: float = 5, send_buffer: int = 0) -> bytes:
    """Send ``request`` raw and return everything the server answers until it closes.

    ``send_buffer``: a small SO_SNDBUF, so that a large request is still being
    sent when the server answers (the kernel cannot take it all at once).
    """
    with socket.socket() as sock:
        if send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.settimeout(timeout)
        sock.connect((LOOPBACK, port))
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def upgrade_request(
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    host: bool = True,
    upgrade: str = "websocket",
    connection: str = "Upgrade",
    key: str | None = KEY,
    ws_version: str | None = "13",
    extra: str = "",
) -> bytes:
    lines = [f"{method} /chat {version}"]
    if host:
        lines.append("Host: 127.0.0.1")
    lines += [f"Upgrade: {upgrade}", f"Connection: {connection}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


class CountingConnect(fws.WebSocketConnectFilter):
    calls = 0

    @classmethod
    def filter(cls, web_socket_instance, request):
        cls.calls += 1


BAD_REQUESTS = {
    "HTTP/1.0": (dict(version="HTTP/1.0"), b"400", b"HTTP/1.1 or later"),
    "POST": (dict(method="POST"), b"405", b"must be a GET"),
    "no Host": (dict(host=False), b"400", b"Host header"),
    "two Hosts": (dict(extra="Host: elsewhere\r\n"), b"400", b"more than one Host"),
    "two Hosts, pywsgi": (
        dict(extra="Host: elsewhere\r\nX_Pywsgi: 1\r\n"),
        b"400",
        b"more than one Host",
    ),
    "no Upgrade in Connection": (dict(connection="keep-alive"), b"400", b"'Upgrade'"),
    "no key": (dict(key=None), b"400", b"Sec-WebSocket-Key"),
    "short key": (dict(key="c2hvcnQ="), b"400", b"16 base64 bytes"),
    "key not base64": (dict(key="not base64 at all!!!!!!!"), b"400", b"Sec-WebSocket-Key"),
    "version 8": (dict(ws_version="8"), b"426", b"version 13"),
    "no version": (dict(ws_version=None), b"426", b"version 13"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_rfc6455_checks_refuse_before_any_connect_filter_runs(case, caplog):
    kwargs, status, reason = BAD_REQUESTS[case]
    CountingConnect.calls = 0
    with caplog.at_level(logging.INFO, logger="fws"):
        with run_server(connect=CountingConnect, message=Echo) as server:
            answer = exchange(server.address[1], upgrade_request(**kwargs))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), answer
    assert reason in body and body.count(b"\n") == 1, body  # a one-line body
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13" in head
    assert CountingConnect.calls == 0
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    "body",
    [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["Content-Length", "chunked", "both"],
)
def test_an_upgrade_with_a_body_is_400_and_no_connect_filter_runs(body, capfd):
    """A body's bytes would otherwise reach the connection as frames after the 101
    (and pywsgi, discarding the unread body of a request already upgraded, raised)."""
    CountingConnect.calls = 0
    head, _, rest = body.partition("\r\n\r\n")
    request = upgrade_request(extra=head + "\r\n") + rest.encode()
    with run_server(connect=CountingConnect, message=Echo) as server:
        answer = exchange(server.address[1], request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.endswith(b"a WebSocket upgrade has no body\n"), answer
    assert CountingConnect.calls == 0
    assert "Traceback" not in capfd.readouterr().err


def test_an_upgrade_with_content_length_0_is_upgraded():
    with run_server(message=Echo) as server:
        answer = answer_head(server.address[1], upgrade_request(extra="Content-Length: 0\r\n"))
    assert answer.startswith(b"HTTP/1.1 101 "), answer


def test_http_1_0_upgrade_is_400_never_gevent_websockets_402():
    with run_server(message=Echo) as server:
        answer = exchange(server.address[1], upgrade_request(version="HTTP/1.0"))
    assert answer.startswith(b"HTTP/1.1 400 Bad Request"), answer
    assert b"402" not in answer


def test_token_lists_are_read_case_insensitively():
    request = upgrade_request(upgrade="WebSocket", connection="keep-alive, UPGRADE")
    with run_server(message=Echo) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.sendall(request)
            head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode() in head
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's own example


def test_plain_http_still_gets_426_and_a_request_without_websocket_upgrade_too():
    with run_server(message=Echo) as server:
        plain = exchange(server.address[1], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        h2c_request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        h2c = exchange(server.address[1], h2c_request)
    assert plain.startswith(b"HTTP/1.1 426"), plain
    assert h2c.startswith(b"HTTP/1.1 426"), h2c


# -- subprotocols and response headers ------------------------------------------------


def test_the_first_of_the_servers_subprotocols_the_client_offers_is_chosen():
    with run_server(message=Echo, subprotocols=["chat.v2", "chat.v1"]) as server:
        client = connect(server, subprotocols=["chat.v1", "chat.v2"])
        assert client.getsubprotocol() == "chat.v2"  # our preference, not the client's order
        client.close()
        other = connect(server, subprotocols=["chat.v1", "other"])
        assert other.getsubprotocol() == "chat.v1"
        other.close()
        with ws_sync.connect(url(server)) as plain:  # offers none: still let in
            assert plain.subprotocol is None
            plain.send("hi")
            assert plain.recv(timeout=5) == "hi"


def test_require_subprotocol_refuses_a_client_offering_none_with_400():
    with run_server(message=Echo, subprotocols=["chat.v1"], require_subprotocol=True) as server:
        offer = upgrade_request(extra="Sec-WebSocket-Protocol: x\r\n")
        answer = exchange(server.address[1], offer)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"chat.v1" in answer
        client = connect(server, subprotocols=["chat.v1"])
        assert client.getsubprotocol() == "chat.v1"
        client.close()


def test_require_subprotocol_without_a_subprotocol_is_a_configuration_error():
    with pytest.raises(fws.ConfigurationError, match="at least one subprotocol"):
        fws.Server(require_subprotocol=True)


class ChooseAndSetCookie(fws.WebSocketConnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        assert request.subprotocols == ("bearer.abc", "graphql-ws", "chat")
        web_socket_instance.subprotocol = "chat"
        web_socket_instance.add_response_header("Set-Cookie", "session=42; HttpOnly")


def test_a_connect_filter_chooses_the_subprotocol_and_adds_response_headers():
    request = upgrade_request(extra="Sec-WebSocket-Protocol: bearer.abc, graphql-ws,chat\r\n")
    with run_server(connect=ChooseAndSetCookie, message=Echo) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.sendall(request)
            head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"Sec-WebSocket-Protocol: chat\r\n" in head
    assert b"Set-Cookie: session=42; HttpOnly\r\n" in head
    assert b"bearer.abc" not in head


class ChooseUnoffered(fws.WebSocketConnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        web_socket_instance.subprotocol = request.query.get("pick", "never-offered")


@pytest.mark.parametrize("pick", ["never-offered", "bearer.secret-token"])
def test_choosing_a_subprotocol_the_client_did_not_offer_or_a_token_is_500(pick, caplog):
    offer = "Sec-WebSocket-Protocol: chat, bearer.secret-token\r\n"
    with run_server(connect=ChooseUnoffered, message=Echo) as server:
        request = upgrade_request(extra=offer).replace(b"/chat", f"/chat?pick={pick}".encode())
        answer = exchange(server.address[1], request)
    assert answer.startswith(b"HTTP/1.1 500"), answer
    assert b"secret-token" not in answer
    lines = [r.getMessage() for r in caplog.records if "subprotocol" in r.getMessage()]
    assert lines and not any("secret-token" in line for line in lines), lines


BAD_HEADERS = {
    "line break": ("X-Evil", "a\r\nSet-Cookie: injected=1"),
    "not ASCII": ("X-Name", "injectéd"),
    "not a string": ("X-Count", 42),
    "colon in the name": ("X-A: injected", "1"),
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=list(BAD_HEADERS))
def test_a_response_header_that_cannot_be_sent_is_our_bug_500_never_sent(header, caplog):
    class BadHeader(fws.WebSocketConnectFilter):
        @classmethod
        def filter(cls, web_socket_instance, request):
            if request.path == "/chat":
                web_socket_instance.add_response_header(*header)

    with run_server(connect=BadHeader, message=Echo) as server:
        answer = exchange(server.address[1], upgrade_request())  # to /chat
        client = connect(url(server, "/other"))  # nothing else is affected
        client.close()
    assert answer.startswith(b"HTTP/1.1 500"), answer
    assert b"injected" not in answer
    assert any("not sendable" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


held: list[weakref.ref[fws.Connection]] = []


def arm_a_long_close_after(web_socket_instance, request):
    web_socket_instance.close_after(3600, 1008, "token expired")  # as jwt_auth does
    held.append(weakref.ref(web_socket_instance))


def refuse(web_socket_instance, request):
    raise fws.Reject(403, "a later connect filter says no")


def test_a_refused_handshake_leaves_no_close_after_timer_holding_its_connection():
    held.clear()
    with run_server(connect=fws.Pipeline(arm_a_long_close_after, refuse)) as server:
        answer = exchange(server.address[1], upgrade_request())
        assert answer.startswith(b"HTTP/1.1 403"), answer
        # Without abandon() the armed libev timer keeps the connection for an hour.
        wait_for(lambda: gc.collect() is not None and held[0]() is None, 5)


# -- bounds and hostile clients -----------------------------------------------------------


def test_a_huge_request_head_is_refused_with_431_and_nothing_is_kept():
    # The numbers: 94 header lines of 22 KiB each (2 MB) were upgraded with 101.
    extra = "".join(f"X-Filler-{n}: {'a' * 22 * 1024}\r\n" for n in range(94))
    with run_server(message=Echo) as server:
        # A small send buffer keeps the client sending long after the server has
        # answered: the server must read the rest rather than reset the connection,
        # or the client never sees the 431.
        answer = exchange(server.address[1], upgrade_request(extra=extra), send_buffer=16384)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert server.users == {}


def test_the_head_bound_is_an_option_and_a_head_under_it_passes():
    extra = "".join(f"X-Filler-{n}: {'a' * 1000}\r\n" for n in range(20))  # about 20 KB
    with run_server(message=Echo) as server:  # 16 KiB by default
        answer = exchange(server.address[1], upgrade_request(extra=extra))
        assert answer.startswith(b"HTTP/1.1 431")
    with run_server(message=Echo, max_header_bytes=64 * 1024) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.sendall(upgrade_request(extra=extra))
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")


def test_more_than_100_header_lines_is_400_with_one_log_line_and_no_traceback(caplog):
    extra = "".join(f"X-{n}: 1\r\n" for n in range(101))
    with caplog.at_level(logging.INFO, logger="fws"):
        with run_server(message=Echo) as server:
            answer = exchange(server.address[1], upgrade_request(extra=extra))
    assert answer.startswith(b"HTTP/1.1 400"), answer
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1
    assert not any(r.exc_info for r in caplog.records)


def test_hostile_handshakes_print_no_traceback(tmp_path):
    """Slowloris cut by the timeout, clients that reset while we answer 400, 101+ headers."""
    args = ["-f", "echo", "--host", LOOPBACK, "-p", "0", "--handshake-timeout", "0.5"]
    with ServerProcess(args, cwd=tmp_path) as server:
        slow = []
        for _ in range(60):
            sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        for _ in range(60):  # a bad request, then a reset before the answer is read
            sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(upgrade_request(key="bad") * 50)
            sock.close()
        many = "".join(f"X-{n}: 1\r\n" for n in range(150))
        for _ in range(10):
            exchange(server.port, upgrade_request(extra=many))
        time.sleep(1.5)  # the slow ones are cut by now
        for sock in slow:
            sock.close()
        # The server still serves.
        client = connect(server.url)
        client.send("still here")
        assert client.recv() == "still here"
        client.close()
        server.stop()
    assert "Traceback" not in server.output, server.output
    assert "BrokenPipeError" not in server.output
    timeouts = server.output.count("timed out")
    assert 50 <= timeouts <= 60, server.output


def test_a_path_with_a_line_break_cannot_forge_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="fws"):
        with run_server(message=Echo) as server:
            request = upgrade_request(key="bad").replace(
                b"/chat", b"/x%0a2026-01-01 INFO forged\x1b[31m"
            )
            exchange(server.address[1], request)
    messages = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(messages) == 1
    assert "\n" not in messages[0] and "\x1b" not in messages[0], messages
    assert printable("a\nb\x1b[0m") == "a\\nb\\x1b[0m"


# -- what connect filters see -----------------------------------------------------------


class Capture(fws.WebSocketConnectFilter):
    seen: list[fws.Request] = []

    @classmethod
    def filter(cls, web_socket_instance, request):
        cls.seen.append(request)


class ReportRequest(fws.WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        request = web_socket_instance.request
        web_socket_instance.send(f"{request.peer[0]} {len(request.headers)} {request.path}")


def test_request_offers_are_parsed_and_the_connection_keeps_no_header_dict():
    Capture.seen.clear()
    settings = dict(compression="off", subprotocols=["b"])  # websocket-client wants a choice
    with run_server(connect=Capture, message=ReportRequest, **settings) as server:
        client = connect(
            url(server, "/room?x=1"),
            subprotocols=["a", "b"],
            header=["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-y"],
        )
        client.send("?")
        assert client.recv() == "127.0.0.1 0 /room"  # headers dropped after the upgrade
        client.close()
    request = Capture.seen[0]
    assert request.subprotocols == ("a", "b")
    assert request.extensions == (
        ("permessage-deflate", (("client_max_window_bits", None),)),
        ("x-y", ()),
    )
    assert request.headers["host"].startswith("127.0.0.1")


class SerializeRequest(fws.WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        request = copy.deepcopy(pickle.loads(pickle.dumps(web_socket_instance.request)))
        web_socket_instance.send(json.dumps(dataclasses.asdict(request)))


def test_an_upgraded_request_still_copies_pickles_and_turns_into_json():
    """Its shared empty headers are a dict: a mapping proxy could be none of those."""
    with run_server(message=SerializeRequest) as server:
        client = connect(url(server, "/room?x=1"))
        client.send("?")
        answer = json.loads(client.recv())
        client.close()
    assert answer["path"] == "/room" and answer["headers"] == {}


def test_trusted_proxy_headers_set_the_peer_and_others_are_ignored():
    Capture.seen.clear()
    forwarded = ["X-Forwarded-For: 203.0.113.9, 10.0.0.7"]
    with run_server(connect=Capture, message=Echo, trusted_proxies=["127.0.0.0/8"]) as server:
        connect(server, header=forwarded).close()
        connect(server, header=['Forwarded: for="[2001:db8::1]:4711";proto=https']).close()
    with run_server(connect=Capture, message=Echo, trusted_proxies=["10.9.9.0/24"]) as server:
        connect(server, header=forwarded).close()  # 127.0.0.1 is not trusted here
    assert Capture.seen[0].peer == ("10.0.0.7", 0)  # the hop nearest to us not trusted
    assert Capture.seen[1].peer == ("2001:db8::1", 0)
    assert Capture.seen[2].peer[0] == "127.0.0.1"


def test_proxy_chain_is_read_from_the_right_and_stops_at_garbage():
    proxies = ProxyNetworks(["127.0.0.1", "10.0.0.0/8"])
    peer = ("127.0.0.1", 5000)
    assert proxies.client_of(peer, {"x-forwarded-for": "1.2.3.4, 10.1.1.1"}) == ("1.2.3.4", 0)
    assert proxies.client_of(peer, {"x-forwarded-for": "1.2.3.4, junk"}) == peer
    assert proxies.client_of(("8.8.8.8", 1), {"x-forwarded-for": "1.2.3.4"}) == ("8.8.8.8", 1)
    assert proxies.client_of(peer, {"forwarded": "for=192.0.2.60:80;by=x"}) == ("192.0.2.60", 0)


def test_a_trusted_proxy_that_is_not_an_address_is_a_configuration_error():
    with pytest.raises(fws.ConfigurationError, match="trusted proxy"):
        fws.Server(trusted_proxies=["not-a-network"])


# -- the open event ------------------------------------------------------------------------


class Greet(fws.WebSocketOpenFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        # Another greenlet (a broadcast from another client, say) sends to this
        # connection while the filter waits on I/O: it must arrive after the greeting.
        gevent.spawn(web_socket_instance.send, "someone joined")
        gevent.sleep(0.05)
        web_socket_instance.send(f"welcome to {request.path}")


events: list[str] = []


def record_open(instance, request):
    events.append("open")


def record_message(instance, data):
    events.append(f"message {data}")


def record_disconnect(instance, info):
    events.append("disconnect")


def test_open_filters_send_before_anything_else_reaches_the_client():
    with run_server(open=Greet, message=Echo) as server:
        client = connect(url(server, "/lobby"))
        assert client.recv() == "welcome to /lobby"
        assert client.recv() == "someone joined"
        client.send("after")
        assert client.recv() == "after"
        client.close()


def test_per_connection_order_is_open_then_messages_then_disconnect_once():
    events.clear()
    with run_server(open=record_open, message=record_message, disconnect=record_disconnect) as s:
        raw = raw_upgrade(s.address[1])
        # Two frames sent at once with nothing read yet: open still comes first.
        mask = b"\x00\x00\x00\x00"
        frames = [b"\x81\x81" + mask + b"a", b"\x81\x81" + mask + b"b"]
        raw.sendall(b"".join(frames) + b"\x88\x82" + mask + b"\x03\xe8")
        wait_for(lambda: "disconnect" in events)
        raw.close()
    assert events == ["open", "message a", "message b", "disconnect"]


def test_the_open_event_is_exported_and_joins_the_registry_like_the_others(fresh_registry):
    class Hello(fws.WebSocketOpenFilter):
        @classmethod
        def filter(cls, web_socket_instance, request):
            web_socket_instance.send("hello from the registry")

    assert fresh_registry.filters(fws.WebSocketOpenFilter) == (Hello,)
    with run_server(registry=fresh_registry) as server:
        client = connect(server)
        assert client.recv() == "hello from the registry"
        client.close()


def test_websocket_client_and_websockets_both_complete_the_handshake():
    with run_server(message=Echo) as server:
        with ws_sync.connect(url(server)) as client:
            client.send("x")
            assert client.recv(timeout=5) == "x"
        other = websocket.create_connection(url(server), timeout=5)
        other.send("y")
        assert other.recv() == "y"
        other.close()


def test_the_access_log_leaves_query_strings_out(caplog):
    with caplog.at_level(logging.DEBUG, logger="fws.http"):
        with run_server(message=Echo) as server:
            exchange(server.address[1], b"GET /page?token=s3cr3t HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: any("GET /page" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.name == "fws.http"]
    assert any("GET /page?... HTTP/1.1" in line for line in lines), lines
    assert not any("s3cr3t" in line for line in lines)


def test_refusals_before_the_upgrade_are_counted_by_status():
    """400 (unparsable), 431 (head too large) and 408 (head too slow) reach the metrics."""
    from test_metrics import scrape, value

    with run_server(message=Echo, handshake_timeout=0.5, max_header_bytes=4096) as server:
        port = server.address[1]
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(b"NONSENSE\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 5000 + b"\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 431")
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
            assert sock.recv(100) == b""  # cut at the handshake timeout
        samples = scrape(port)
        for status in ("400", "431", "408"):
            assert value(samples, "fws_handshakes_total", status=status) == 1, status


# -- the fast path and pywsgi's ------------------------------------------------------------


class RejectWith401(fws.WebSocketConnectFilter):
    calls = 0

    @classmethod
    def filter(cls, web_socket_instance, request):
        cls.calls += 1
        raise fws.Reject(401, "who are you")


def answer_head(port: int, request: bytes) -> bytes:
    """The head of the server's answer to ``request``; the connection is then closed."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request)
        return read_response_head(sock)


def masked_text(text: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + payload


@pytest.mark.parametrize(
    ("extra", "pywsgi_requests"),
    [("", 0), ("X_Underscore: 1\r\n", 1)],
    ids=["fast path", "pywsgi"],
)
def test_a_plain_upgrade_is_answered_without_pywsgi_reading_it(
    extra, pywsgi_requests, monkeypatch
):
    """The fast path is taken: every other test here would pass with pywsgi doing it all."""
    from fws.handshake import ConnectionHandler

    calls = []
    pywsgi_request = ConnectionHandler.handle_one_request

    def counted(self):
        calls.append(self)
        return pywsgi_request(self)

    monkeypatch.setattr(ConnectionHandler, "handle_one_request", counted)
    with run_server(message=Echo) as server:
        answer = answer_head(server.address[1], upgrade_request(extra=extra))
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert len(calls) == pywsgi_requests


def test_an_upgrade_and_its_first_frame_in_one_packet_are_both_read():
    with run_server(message=Echo) as server:
        port = server.address[1]
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(upgrade_request() + masked_text(b"at once"))
            response = b""
            while b"at once" not in response:
                chunk = sock.recv(4096)
                assert chunk, response
                response += chunk
            assert response.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize("extra", ["", "X_Underscore: 1\r\n"], ids=["fast path", "pywsgi"])
def test_frames_sent_with_the_head_reach_the_connection_whole_on_both_paths(extra):
    """Frames longer than pywsgi's 1 KiB read buffer: the fast path read them with the head.

    On pywsgi's path they were partly in its reader's buffer and partly still
    in the replay of what the fast path received; only the buffer reached the
    connection, which then read the next bytes as the rest of the frame.
    """
    first, second = b"1" * 3000 + b"<end of first>", b"second"
    frames = client_frame(0x1, first) + client_frame(0x1, second)
    with run_server(message=Echo) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.sendall(upgrade_request(extra=extra) + frames)
            answer = b""
            while not answer.endswith(second):
                chunk = sock.recv(65536)
                assert chunk, answer[-100:]
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert first in answer


@pytest.mark.parametrize("name", ["X-Pad", "X_Pad"], ids=["fast path", "pywsgi"])
def test_over_tls_a_frame_in_the_heads_record_is_read_when_the_head_fills_a_read(name, tmp_path):
    """A head of exactly one read (4,096 bytes) and a frame, sent in one TLS record.

    The fast path's read returned the head alone; the frame stayed decrypted
    in OpenSSL, where the descriptor's watcher never reports it, and the
    connection waited for the client's next bytes to read it.
    """
    from helpers import TLSFiles

    tls = TLSFiles(tmp_path)
    padding = 4096 - len(upgrade_request(extra=f"{name}: \r\n"))
    request = upgrade_request(extra=f"{name}: {'p' * padding}\r\n")
    assert len(request) == 4096
    with run_server(message=Echo, **tls.server_settings) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as raw:
            with tls.client_context.wrap_socket(raw, server_hostname=LOOPBACK) as sock:
                sock.sendall(request + client_frame(0x1, b"in the same record"))
                answer = b""
                while not answer.endswith(b"in the same record"):
                    chunk = sock.recv(65536)  # times out (5 s) without the fix
                    assert chunk, answer
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    "extra",
    [
        "X-Folded: a\r\n b\r\n",  # obs-fold: the fast parser leaves it to pywsgi
        "X_Underscore: 1\r\n",
        "X-Latin: caf\xe9\r\n",
    ],
)
def test_an_upgrade_the_fast_parser_leaves_to_pywsgi_is_still_upgraded(extra):
    Capture.seen.clear()
    with run_server(connect=Capture, message=Echo) as server:
        answer = answer_head(server.address[1], upgrade_request(extra=extra))
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert len(Capture.seen) == 1


def test_a_head_ending_in_bare_line_feeds_is_answered_not_left_waiting():
    request = upgrade_request().replace(b"\r\n", b"\n")
    with run_server(message=Echo, handshake_timeout=30) as server:
        answer = answer_head(server.address[1], request)
    assert answer.startswith(b"HTTP/1.1 101 "), answer  # pywsgi reads bare LF heads


def test_both_paths_build_the_same_request():
    """The same upgrade, read by the fast parser and by pywsgi, reaches filters alike."""
    Capture.seen.clear()
    extra = (
        "Sec-WebSocket-Protocol: a, b\r\nsec-websocket-protocol: c\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        "Cookie: x=1\r\nCookie: y=2\r\nX-Value:  spaced \t\r\n"
        "X-Cookie-Id: a\r\nX-Cookie-Id: b\r\n"  # pywsgi: '; ' for any name with COOKIE
    )
    fast = upgrade_request(extra=extra).replace(b"/chat", b"/ch%61t%20room?q=%20")
    slow = fast.replace(b"\r\n\r\n", b"\r\nX_Dropped_By_Wsgi: 1\r\n\r\n")
    with run_server(connect=Capture, message=Echo, subprotocols=["c"]) as server:
        for request in (fast, slow):
            assert answer_head(server.address[1], request).startswith(b"HTTP/1.1 101 ")
    first, second = Capture.seen
    assert first == replace(second, peer=first.peer)  # the client's port differs
    assert first.path == "/chat room" and first.query_string == "q=%20"
    assert first.headers["cookie"] == "x=1; y=2"
    assert first.headers["sec-websocket-protocol"] == "a, b,c"
    assert first.headers["x-value"] == "spaced"
    assert first.subprotocols == ("a", "b", "c")


def test_a_refusal_on_the_fast_path_is_answered_by_pywsgi_after_one_filter_run(caplog):
    RejectWith401.calls = 0
    with caplog.at_level(logging.INFO, logger="fws.handshake"):
        with run_server(connect=RejectWith401) as server:
            answer = exchange(server.address[1], upgrade_request())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), answer
    assert b"\r\nDate: " in head and b"\r\nConnection: close" in head  # pywsgi's writing
    assert body == b"who are you\n"
    assert RejectWith401.calls == 1
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "401" in refused[0], refused


def test_plain_http_keep_alive_after_the_fast_path_read_the_first_head():
    """Two pipelined plain requests: the fast path read both, pywsgi answers both."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with run_server() as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.sendall(request + request)
            answer = b""
            while answer.count(b"HTTP/1.1 200") < 2:
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk


def test_a_head_trickled_byte_by_byte_is_upgraded_within_the_timeout():
    with run_server(message=Echo, handshake_timeout=5) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in upgrade_request():
                sock.send(bytes([byte]))
                time.sleep(0.001)
            assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")


def test_a_slow_head_that_pywsgi_reads_is_still_cut_at_the_handshake_timeout():
    """The fast path hands a POST to pywsgi at its first bytes; the timer runs on."""
    with run_server(message=Echo, handshake_timeout=1.0) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /x HTTP/1.1\r\n")  # not a GET: pywsgi reads on at once
            time.sleep(0.6)
            sock.sendall(b"Host: x\r\n")
            assert sock.recv(4096) == b""  # cut, no answer
            assert time.monotonic() - started < 1.5


def test_over_tls_the_fast_path_upgrades_and_pywsgi_answers_the_rest(tmp_path):
    from helpers import TLSFiles

    tls = TLSFiles(tmp_path)

    def ask(port: int, request: bytes) -> bytes:
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
            with tls.client_context.wrap_socket(raw, server_hostname=LOOPBACK) as sock:
                sock.sendall(request)
                return read_response_head(sock)

    with run_server(message=Echo, **tls.server_settings) as server:
        port = server.address[1]
        assert ask(port, upgrade_request()).startswith(b"HTTP/1.1 101 ")
        assert ask(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
        refused = ask(port, upgrade_request(ws_version="8"))
        assert refused.startswith(b"HTTP/1.1 426 "), refused
