"""Upgrades done in the accept callback, and everything that must still take the greenlet.

Whether a client's head is in its socket when the server accepts it is a race
a test must not leave to chance: ``helpers.head_before_accept`` holds the
server's hub while the client connects and sends, and
``helpers.accepted_then_send`` sends only once the server has accepted.
"""

from __future__ import annotations

import _socket
import logging
import logging.handlers
import os
import signal
import socket
import struct
import threading
import time
import urllib.request

import pytest
from frame_builder import client_frame
from helpers import (
    LOOPBACK,
    ServerProcess,
    TLSFiles,
    accepted_then_send,
    connect,
    head_before_accept,
    hub_held,
    metric_values,
    read_response_head,
    read_server_frame,
    read_until_eof,
    run_server,
    stop_server,
    upgrade_request,
    url,
    wait_for,
)
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

import fws
import fws.at_accept
import fws.connection
from fws.filters.echo import Echo
from fws.frames import OP_BINARY, OP_CLOSE, OP_TEXT
from fws.storage.base import waits_in_connected
from fws.storage.memory import MemoryStorage
from fws.storage.redis import RedisStorage
from fws.storage.redis.publisher import Publisher


def port_request(server: fws.Server, path: str = "/", extra_headers: str = "") -> bytes:
    return upgrade_request(server.address[1], path, extra_headers)


def echoes(sock: socket.socket, text: bytes = b"hi") -> bool:
    sock.sendall(client_frame(OP_TEXT, text))
    return read_server_frame(sock) == (OP_TEXT, text)


# -- the upgrade at the accept ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "at_accept"),
    [(head_before_accept, 1), (accepted_then_send, 0)],
    ids=["head-there-at-the-accept", "head-sent-after-the-accept"],
)
def test_a_head_at_the_accept_is_upgraded_there_and_a_later_one_by_the_handler(send, at_accept):
    with run_server(message=Echo) as server:
        sock = send(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        stats = server.table.stats
        assert (stats.upgrades_at_accept, stats.handshakes[101]) == (at_accept, 1)
        sock.close()


def test_frames_sent_with_the_head_are_the_connections_first_messages():
    with run_server(message=Echo) as server:
        first = port_request(server) + client_frame(OP_TEXT, b"one") + client_frame(OP_TEXT, b"2")
        sock = head_before_accept(server, first)
        answer = read_response_head(sock)  # the echoes may come in the same read
        echoed = b"\x81\x03one\x81\x012"
        while len(answer.partition(b"\r\n\r\n")[2]) < len(echoed):
            answer += sock.recv(4096)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ") and rest == echoed
        assert server.table.stats.upgrades_at_accept == 1
        sock.close()


def test_half_a_head_at_the_accept_is_finished_by_the_handler():
    """What the accept read is the handler's first read: nothing is lost or read twice."""
    with run_server(message=Echo) as server:
        request = port_request(server, "/half?x=1")
        sock = head_before_accept(server, request[:20])
        wait_for(lambda: len(server.pending_handshakes) == 1, message="not accepted")
        sock.sendall(request[20:])
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        assert server.table.stats.upgrades_at_accept == 0
        sock.close()


def test_plain_http_at_the_accept_is_answered_by_pywsgi():
    with run_server(message=Echo) as server:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock = head_before_accept(server, request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert server.table.stats.upgrades_at_accept == 0
        sock.close()


@pytest.mark.parametrize(
    ("settings", "extra", "status"),
    [
        ({"origins": ["https://good.example"]}, "Origin: https://evil.example\r\n", b"403"),
        ({"subprotocols": ["chat"], "require_subprotocol": True}, "", b"400"),
        ({}, "Sec-WebSocket-Version: 8\r\n", b"426"),
    ],
)
def test_a_refusal_at_the_accept_is_answered_and_logged_once_by_the_handler(
    settings, extra, status, caplog
):
    caplog.set_level(logging.INFO, logger="fws.handshake")
    with run_server(message=Echo, **settings) as server:
        request = port_request(server, "/r", extra)
        if b"Version: 8" in request:  # replace the 13 helpers put in
            request = request.replace(b"Sec-WebSocket-Version: 13\r\n", b"")
        sock = head_before_accept(server, request)
        assert read_response_head(sock).split(b" ")[1] == status
        sock.close()
        stats = server.table.stats
        assert stats.handshakes[int(status)] == 1
        assert (stats.upgrades_at_accept, stats.handshakes[101]) == (0, 0)
    assert caplog.text.count("refused") == 1


def test_at_the_connection_limit_a_head_at_the_accept_still_gets_503():
    with run_server(message=Echo, max_connections=1) as server:
        holder = connect(server)
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 503 ")
        assert server.table.stats.handshakes[503] == 1
        sock.close()
        holder.close()


def test_a_draining_server_answers_a_head_at_the_accept_503():
    with run_server(message=Echo, drain_delay=1.0) as server:
        stop_server(server)  # drains for a second, /ready and upgrades answering 503
        wait_for(lambda: server.draining, message="not draining")
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 503 ")
        assert server.table.stats.upgrades_at_accept == 0
        sock.close()


class ReportPeer(fws.WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        web_socket_instance.send(web_socket_instance.request.peer[0])


def test_a_trusted_proxys_client_address_is_the_peer_at_the_accept_too():
    with run_server(message=ReportPeer, trusted_proxies=[LOOPBACK]) as server:
        forwarded = "X-Forwarded-For: 203.0.113.9\r\n"
        sock = head_before_accept(server, port_request(server, "/", forwarded))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        sock.sendall(client_frame(OP_TEXT, b"?"))
        assert read_server_frame(sock) == (OP_TEXT, b"203.0.113.9")
        assert server.table.stats.upgrades_at_accept == 1
        sock.close()


class Departures(fws.WebSocketDisconnectFilter):
    seen: list[str] = []

    @classmethod
    def filter(cls, web_socket_instance, info):
        cls.seen.append(web_socket_instance.id)


class FailingStorage(MemoryStorage):
    """Says its connected never waits, and then fails: a storage bug."""

    connected_may_wait = False

    def connected(self, connection_id: str) -> None:
        raise RuntimeError("storage bug")


def test_a_storage_failing_at_the_accept_closes_with_1011_and_runs_disconnect(caplog):
    """As on the handler's path: the 1011 is sent and the end runs, in a greenlet."""
    Departures.seen.clear()
    with run_server(message=Echo, disconnect=Departures, storage=FailingStorage()) as server:
        sock = head_before_accept(server, port_request(server))
        head, _, frames = read_until_eof(sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert frames[0] == 0x80 | OP_CLOSE and frames[2:4] == (1011).to_bytes(2, "big")
        sock.close()
        wait_for(lambda: Departures.seen, message="the disconnect pipeline did not run")
        assert not server.users and server.table.opening == 0
        assert server.table.stats.upgrades_at_accept == 1
    assert "RuntimeError: storage bug" in caplog.text
    assert "at its accept failed" not in caplog.text


def test_a_log_handler_that_may_wait_keeps_upgrades_in_greenlets():
    """A network log handler holds its lock while it waits; the hub could not wait for it."""
    handler = logging.handlers.MemoryHandler(capacity=1000)
    logging.getLogger("fws").addHandler(handler)
    try:
        with run_server(message=Echo) as server:
            sock = head_before_accept(server, port_request(server))
            assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
            assert echoes(sock)
            assert server.table.stats.upgrades_at_accept == 0
            sock.close()
    finally:
        logging.getLogger("fws").removeHandler(handler)


# -- what keeps the greenlet ------------------------------------------------------------


class SlowConnect(fws.WebSocketConnectFilter):
    """A connect filter that waits, as one asking a database would."""

    @classmethod
    def filter(cls, web_socket_instance, request):
        import gevent

        gevent.sleep(0.01)


class SlowOpen(fws.WebSocketOpenFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        import gevent

        gevent.sleep(0.01)
        web_socket_instance.send("opened")


class WaitingStorage(MemoryStorage):
    """Registers each client somewhere that takes a while (a database)."""

    def connected(self, connection_id: str) -> None:
        import gevent

        gevent.sleep(0.01)


@pytest.mark.parametrize(
    "settings",
    [{"connect": SlowConnect}, {"open": SlowOpen}, {"storage": "waiting"}],
    ids=["connect-filter", "open-filter", "storage-connected-overridden"],
)
def test_what_may_wait_is_upgraded_in_a_greenlet_even_with_the_head_there(settings):
    if settings.get("storage") == "waiting":
        settings = {"storage": WaitingStorage()}
    with run_server(message=Echo, **settings) as server:
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        if "open" in settings:
            assert read_server_frame(sock) == (OP_TEXT, b"opened")
        assert echoes(sock)
        stats = server.table.stats
        assert (stats.upgrades_at_accept, stats.handshakes[101]) == (0, 1)
        sock.close()


def test_a_storage_subclass_says_its_connected_never_waits():
    class Declared(WaitingStorage):
        connected_may_wait = False

        def connected(self, connection_id: str) -> None:
            self.registered = connection_id

    with run_server(message=Echo, storage=Declared()) as server:
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)  # the server has done with the upgrade: its counts are final
        assert server.table.stats.upgrades_at_accept == 1
        assert server.storage_object.registered in server.users
        sock.close()


def test_whether_connected_waits_is_read_from_the_class_that_defines_it():
    class Overrides(MemoryStorage):
        def connected(self, connection_id: str) -> None:
            pass

    class SaysSo(Overrides):
        connected_may_wait = False

    class SaysItWaits(MemoryStorage):
        connected_may_wait = True

    assert waits_in_connected(MemoryStorage()) is False  # the base's: records nothing
    assert waits_in_connected(Overrides()) is True  # not inherited past an override
    assert waits_in_connected(SaysSo()) is False
    assert waits_in_connected(SaysItWaits()) is True
    assert waits_in_connected(RedisStorage.__new__(RedisStorage)) is False  # not connected


def test_over_tls_the_handler_upgrades_whatever_was_sent(tmp_path):
    tls = TLSFiles(tmp_path)
    with run_server(message=Echo, **tls.server_settings) as server:
        box = {}

        def connect_over_tls() -> None:
            box["client"] = connect(
                url(server, scheme="wss"), sslopt={"context": tls.client_context}
            )

        with hub_held(server):
            # The TLS hello is in the socket at the accept; the head cannot be yet.
            connecting = threading.Thread(target=connect_over_tls)
            connecting.start()
            time.sleep(0.1)
        connecting.join(10)
        client = box["client"]
        client.send("hi")
        assert client.recv() == "hi"
        assert server.table.stats.upgrades_at_accept == 0
        client.close()


def test_a_redis_storage_client_is_upgraded_at_the_accept_and_reachable_by_id(
    redis_server: RedisServer,  # noqa: F811
):
    """fws_server with Redis: its ``connected`` queues the registration, and never waits."""
    args = ["-p", "0", "--host", LOOPBACK, "--storage", "redis", "-f", "echo"]
    with ServerProcess(args, env={"FWS_REDIS_URL": redis_server.url}) as server:
        server.process.send_signal(signal.SIGSTOP)  # nothing is accepted until SIGCONT
        try:
            sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
            sock.sendall(upgrade_request(server.port))
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{server.port}/metrics") as response:
            assert "fws_upgrades_at_accept_total 1.0" in response.read().decode()
        redis = redis_server.client()
        (clients,) = wait_for(lambda: redis.keys("*:clients"), message="not registered")
        (connection_id,) = redis.smembers(clients)
        backend = Publisher(redis_server.url)
        try:
            assert backend.send_to_client(connection_id.decode(), "by id") is True
        finally:
            backend.close()
        assert read_server_frame(sock) == (OP_TEXT, b"by id")
        sock.close()


# -- the edges ------------------------------------------------------------------------------


class ReportNoDelay(fws.WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        sock = web_socket_instance._socket
        web_socket_instance.send(str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


@pytest.mark.parametrize("path", ["at-accept", "handler"])
def test_every_accepted_socket_has_nagle_off(path):
    with run_server(message=ReportNoDelay) as server:
        send = head_before_accept if path == "at-accept" else accepted_then_send
        sock = send(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        sock.sendall(client_frame(OP_TEXT, b"?"))
        opcode, answer = read_server_frame(sock)
        assert int(answer) != 0
        assert server.table.stats.upgrades_at_accept == (path == "at-accept")
        # Linux copies it from the listener: no system call per client for it.
        assert server._wsgi._no_delay_per_socket is False
        sock.close()


def test_a_bug_in_the_upgrade_at_the_accept_cuts_that_client_only(monkeypatch, caplog):
    real = fws.at_accept.check_request
    calls = []

    def broken_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("fws bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(fws.at_accept, "check_request", broken_once)
    with run_server(message=Echo) as server:
        victim = head_before_accept(server, port_request(server))
        assert victim.recv(4096) == b""  # cut, no answer
        victim.close()
        after = head_before_accept(server, port_request(server))
        assert read_response_head(after).startswith(b"HTTP/1.1 101 ")
        assert echoes(after)
        after.close()
    assert "at its accept failed" in caplog.text and "RuntimeError: fws bug" in caplog.text


class ReportHeaders(fws.WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        web_socket_instance.send(str(len(web_socket_instance.request.headers)))


def test_a_connection_upgraded_at_the_accept_keeps_no_headers():
    """As after the handler's upgrade: a dict of headers per open connection is memory."""
    with run_server(message=ReportHeaders) as server:
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        sock.sendall(client_frame(OP_TEXT, b"?"))
        assert read_server_frame(sock) == (OP_TEXT, b"0")
        assert server.table.stats.upgrades_at_accept == 1
        sock.close()


def test_upgrades_at_the_accept_are_on_metrics():
    with run_server(message=Echo) as server:
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        assert metric_values(server)["fws_upgrades_at_accept_total"] == 1
        sock.close()


# -- the plain socket of a connection upgraded at the accept -----------------------------------

FLOOD_PAYLOAD = bytes(range(256)) * 1024  # 256 KiB


class Flood(fws.WebSocketMessageFilter):
    """Answers a message "N" with N binary messages of 256 KiB."""

    @classmethod
    def filter(cls, web_socket_instance, data):
        for _ in range(int(data)):
            web_socket_instance.send(FLOOD_PAYLOAD)


def slow_client_at_the_accept(server: fws.Server) -> socket.socket:
    """A client upgraded at the accept with a small receive window: its writes must wait."""
    with hub_held(server):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.settimeout(5)
        sock.connect((LOOPBACK, server.address[1]))
        sock.sendall(port_request(server))
        time.sleep(0.05)
    assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
    return sock


def only_connection(server: fws.Server) -> fws.Connection:
    """The server's one open connection (the 101 may reach the client before it is listed)."""
    wait_for(lambda: len(server.table.users) == 1, message="no open connection")
    (connection,) = server.table.users.values()
    return connection


def test_a_connection_upgraded_at_the_accept_waits_for_a_slow_client_on_its_plain_socket():
    """No gevent socket object (WebSocketPort.do_read): the writer waits on its own watcher."""
    with run_server(message=Flood) as server:
        sock = slow_client_at_the_accept(server)
        sock.sendall(client_frame(OP_TEXT, b"12"))  # 3 MiB, under the 4 MiB outbound limit
        connection = only_connection(server)
        assert type(connection._socket) is _socket.socket
        wait_for(lambda: connection._write_watcher is not None, message="the writer never waited")
        for _ in range(12):
            assert read_server_frame(sock) == (OP_BINARY, FLOOD_PAYLOAD)
        assert server.table.stats.upgrades_at_accept == 1
        sock.close()


def test_a_slow_client_gone_while_its_writer_waits_ends_that_connection_only():
    with run_server(message=Flood, close_timeout=0.5) as server:
        sock = slow_client_at_the_accept(server)
        sock.sendall(client_frame(OP_TEXT, b"12"))
        connection = only_connection(server)
        wait_for(lambda: connection._write_watcher is not None, message="the writer never waited")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset: the waiting writer's next send fails
        wait_for(lambda: not server.table.users, message="the connection did not end")
        assert connection._write_watcher is None  # closed before its descriptor was
        # The next client (likely on the same descriptor) is served as usual.
        after = head_before_accept(server, port_request(server))
        assert read_response_head(after).startswith(b"HTTP/1.1 101 ")
        after.sendall(client_frame(OP_TEXT, b"1"))
        assert read_server_frame(after) == (OP_BINARY, FLOOD_PAYLOAD)
        after.close()


def test_a_close_reply_the_socket_takes_whole_needs_no_writer_greenlet(monkeypatch):
    """The connection's end sends it itself: a writer is a spawn and two switches per close."""
    started = []
    real = fws.connection.Connection._start_writer

    def counting(self):
        started.append(self.id)
        real(self)

    monkeypatch.setattr(fws.connection.Connection, "_start_writer", counting)
    with run_server(message=Echo) as server:
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        sock.sendall(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert read_server_frame(sock) == (OP_CLOSE, struct.pack("!H", 1000))
        wait_for(lambda: not server.table.users, message="the connection did not end")
        assert read_until_eof(sock) == b""
        assert started == []
        sock.close()


def test_an_ipv6_client_is_upgraded_at_the_accept_on_a_plain_socket_of_its_family():
    """do_read makes the plain socket from the listener's family, type and protocol."""
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("no IPv6 loopback on this machine")
    with run_server(message=Echo, host="::1") as server:
        with hub_held(server):
            sock = socket.create_connection(("::1", server.address[1]), timeout=5)
            sock.sendall(port_request(server))
            time.sleep(0.05)
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        connection = only_connection(server)
        assert type(connection._socket) is _socket.socket
        assert connection._socket.family == socket.AF_INET6
        assert connection.peer[0] == "::1"
        assert server.table.stats.upgrades_at_accept == 1
        sock.close()
