"""Upgrades done in the accept callback, and everything that must still take the greenlet.

Whether a client's head is in its socket when the server accepts it is a race
a test must not leave to chance. ``head_before_accept`` decides it: it holds
the server's hub (a real ``time.sleep`` in a hub callback, on the server's
own thread) while the client connects and sends, so the server accepts a
socket with the head already in it. A client that waits until it has been
accepted before sending (``accepted_then_send``) is the other case.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from frame_builder import client_frame
from helpers import (
    LOOPBACK,
    ServerProcess,
    TLSFiles,
    connect,
    metric_values,
    read_response_head,
    read_server_frame,
    run_server,
    upgrade_request,
    url,
    wait_for,
)
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

import fws
import fws.quick_upgrade
from fws.filters.echo import Echo
from fws.frames import OP_TEXT
from fws.storage.memory import MemoryStorage
from fws.storage.redis.publisher import Publisher

HOLD = 0.3
"""Seconds the server's hub is held: a loopback connect and send take far less."""


@contextlib.contextmanager
def hub_held(server: fws.Server, seconds: float = HOLD) -> Iterator[None]:
    """Hold the server's hub for ``seconds`` from when the block starts: nothing is accepted."""
    holding = threading.Event()

    def hold() -> None:
        holding.set()
        time.sleep(seconds)  # a real sleep: the server's thread is not monkey-patched

    server.hub.loop.run_callback_threadsafe(hold)  # type: ignore[attr-defined]
    assert holding.wait(5), "the server's hub did not run the hold"
    yield


def head_before_accept(server: fws.Server, request: bytes) -> socket.socket:
    """A raw client whose ``request`` is in its socket before the server accepts it."""
    with hub_held(server):
        sock = socket.create_connection((LOOPBACK, server.address[1]), timeout=5)
        sock.sendall(request)
    return sock


def accepted_then_send(server: fws.Server, request: bytes) -> socket.socket:
    """A raw client that sends ``request`` only once the server has accepted it."""
    sock = socket.create_connection((LOOPBACK, server.address[1]), timeout=5)
    wait_for(lambda: len(server.pending_handshakes) == 1, message="not accepted")
    sock.sendall(request)
    return sock


def port_request(server: fws.Server, path: str = "/", extra_headers: str = "") -> bytes:
    return upgrade_request(server.address[1], path, extra_headers)


def echoes(sock: socket.socket, text: bytes = b"hi") -> bool:
    sock.sendall(client_frame(OP_TEXT, text))
    return read_server_frame(sock) == (OP_TEXT, text)


# -- the quick path ------------------------------------------------------------------


def test_a_head_in_the_socket_at_the_accept_is_upgraded_there():
    with run_server(message=Echo) as server:
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        stats = server.table.stats
        assert (stats.upgrades_at_accept, stats.handshakes[101]) == (1, 1)
        assert len(server.pending_handshakes) == 0
        sock.close()


def test_a_head_sent_after_the_accept_is_upgraded_by_the_handler():
    with run_server(message=Echo) as server:
        sock = accepted_then_send(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 101 ")
        assert echoes(sock)
        stats = server.table.stats
        assert (stats.upgrades_at_accept, stats.handshakes[101]) == (0, 1)
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


def test_at_the_connection_limit_the_accept_answers_503_without_reading():
    with run_server(message=Echo, max_connections=1) as server:
        holder = connect(server)
        sock = head_before_accept(server, port_request(server))
        assert read_response_head(sock).startswith(b"HTTP/1.1 503 ")
        assert server.table.stats.handshakes[503] == 1
        sock.close()
        holder.close()


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


def test_over_tls_the_handler_upgrades_whatever_was_sent(tmp_path):
    tls = TLSFiles(tmp_path)
    with run_server(message=Echo, **tls.server_settings) as server:
        with hub_held(server):
            # The TLS hello is in the socket at the accept; the head cannot be yet.
            client = connect(url(server, scheme="wss"), sslopt={"context": tls.client_context})
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
        (clients,) = redis.keys("*:clients")
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
        assert server._wsgi._nodelay_per_socket is False
        sock.close()


def test_a_bug_in_the_upgrade_at_the_accept_cuts_that_client_only(monkeypatch, caplog):
    real = fws.quick_upgrade.check_request
    calls = []

    def broken_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("fws bug")
        return real(*args)

    monkeypatch.setattr(fws.quick_upgrade, "check_request", broken_once)
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
