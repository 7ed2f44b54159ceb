"""A real fws server on a loopback port, real WebSocket clients."""

from __future__ import annotations

import gc
import socket
import struct
import threading
import time

import gevent
import greenlet
import pytest
import websocket
import websockets.sync.client as ws_sync
from frame_builder import client_frame
from helpers import (
    TLSFiles,
    WssClient,
    connect,
    raw_upgrade,
    read_server_frame,
    read_until_eof,
    run_server,
    stop_server,
    url,
    wait_for,
)
from websockets.exceptions import ConnectionClosed

import fws
import fws.frames
from fws import DROP, Pipeline, Reject, WebSocketConnectFilter, WebSocketMessageFilter
from fws.filters.broadcast_messages import BroadcastMessages
from fws.filters.echo import Echo
from fws.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT


def test_echo_text_and_binary_with_websocket_client():
    with run_server(message=Echo) as server:
        client = connect(server)
        client.send("héllo ☃")
        assert client.recv() == "héllo ☃"
        client.send_binary(b"\x00\xffbin")
        opcode, data = client.recv_data()
        assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, b"\x00\xffbin")
        client.close()


def test_echo_with_the_websockets_client_fragmented_and_ping():
    with run_server(message=Echo) as server, ws_sync.connect(url(server)) as client:
        client.send(iter(["frag", "ment", "ed"]))
        assert client.recv(timeout=5) == "fragmented"
        client.send([b"\x01", b"\x02"])
        assert client.recv(timeout=5) == b"\x01\x02"
        pong = client.ping(b"are you there")
        assert pong.wait(5)
        big = "x" * (500 * 1024)
        client.send(big)
        assert client.recv(timeout=5) == big


def test_seed_chat_server_example_reaches_clients_as_text():
    class ChatServer(WebSocketMessageFilter):
        @classmethod
        def filter(cls, web_socket_instance, data):
            for client_id, client in web_socket_instance.users.items():  # noqa: B007 (seed)
                client.sendMessage(bytes(data))

    with run_server(registry=fws.active_registry()) as server:
        alice, bob = connect(server), connect(server)
        wait_for(lambda: len(server.users) == 2)
        alice.send("grüß dich")
        for client in (alice, bob):
            opcode, data = client.recv_data()
            assert opcode == websocket.ABNF.OPCODE_TEXT
            assert data.decode() == "grüß dich"


def test_broadcast_pipe_stdout_composes_with_pipe(capsys):
    from fws.filters.stdout_messages import StdoutMessages

    with run_server(message=BroadcastMessages | StdoutMessages) as server:
        alice, bob, carol = connect(server), connect(server), connect(server)
        wait_for(lambda: len(server.users) == 3)
        alice.send("hello all")
        assert bob.recv() == "hello all"
        assert carol.recv() == "hello all"
        alice.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            alice.recv()  # never back to the sender
        wait_for(lambda: "hello all" in capsys.readouterr().out or None, 5)


def test_return_values_and_drop_steer_the_pipeline():
    def censor(ws, data):
        return DROP if "spam" in data else None

    def shout(ws, data):
        return data.upper()

    with run_server(message=Pipeline(censor) | shout | Echo) as server:
        client = connect(server)
        client.send("spam spam")
        client.send("hello")
        assert client.recv() == "HELLO"  # the spam never reached Echo


def test_registry_builds_pipelines_unless_one_is_passed(fresh_registry):
    class Registered(WebSocketMessageFilter):
        @classmethod
        def filter(cls, ws, data):
            ws.send("from registry: " + data)

    with run_server(registry=fresh_registry) as server:
        client = connect(server)
        client.send("a")
        assert client.recv() == "from registry: a"
    with run_server(registry=fresh_registry, message=Echo) as server:
        client = connect(server)
        client.send("b")
        assert client.recv() == "b"


def test_raising_filter_is_logged_and_the_connection_and_others_go_on(caplog):
    def explode_on_boom(ws, data):
        if data == "boom":
            raise RuntimeError("kaboom")

    with run_server(message=Pipeline(explode_on_boom) | Echo) as server:
        victim, bystander = connect(server), connect(server)
        victim.send("boom")
        victim.send("still here")
        assert victim.recv() == "still here"
        bystander.send("me too")
        assert bystander.recv() == "me too"
    assert "message filter explode_on_boom raised on <Connection" in caplog.text
    assert "RuntimeError: kaboom" in caplog.text


def test_connect_filter_sees_the_request_and_can_refuse_with_a_status():
    seen = []

    class TokenAuth(WebSocketConnectFilter):
        @classmethod
        def filter(cls, ws, request):
            seen.append(request)
            if request.query.get("token") != "sesame":
                raise Reject(401, "a valid token is required")
            ws.token = request.query["token"]

    def greet(ws, data):
        ws.send(f"{ws.token}:{data}")

    with run_server(connect=TokenAuth, message=greet) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(url(server, "/chat?token=wrong"))
        assert info.value.status_code == 401
        assert b"a valid token is required" in info.value.resp_body
        client = connect(url(server, "/chat?token=sesame"), header=["X-Client: tests"])
        client.send("hi")
        assert client.recv() == "sesame:hi"
        request = seen[-1]
        assert request.path == "/chat"
        assert request.headers["x-client"] == "tests"
        assert request.peer[0] == "127.0.0.1"
        assert len(server.users) == 1  # the refused client never became a user


def test_request_query_keeps_blank_values_and_the_last_of_a_repeated_name():
    request = fws.Request(path="/", query_string="room=a&room=b&token=&x=1")
    assert request.query == {"room": "b", "token": "", "x": "1"}


def test_connect_filter_drop_means_403_and_a_raising_one_means_500():
    def refuse_all(ws, request):
        return DROP

    with run_server(connect=refuse_all) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server)
        assert info.value.status_code == 403

    def buggy(ws, request):
        raise KeyError("oops")

    with run_server(connect=buggy) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server)
        assert info.value.status_code == 500


def test_disconnect_pipeline_gets_the_close_code_and_reason():
    closes = []
    with run_server(disconnect=lambda ws, info: closes.append(info)) as server:
        client = connect(server)
        client.close(status=4001, reason=b"bye now")
        wait_for(lambda: closes)
        raw = raw_upgrade(server.address[1])
        raw.close()  # no closing handshake at all
        wait_for(lambda: len(closes) == 2)
    assert closes[0] == fws.CloseInfo(4001, "bye now")
    assert closes[1].code == 1006 and not closes[1].clean


def test_server_answers_a_close_with_the_clients_code():
    with run_server(message=Echo) as server:
        sock = raw_upgrade(server.address[1])
        sock.sendall(client_frame(OP_CLOSE, struct.pack("!H", 3123) + b"done"))
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 3123
        assert read_until_eof(sock) == b""  # then the server closes the TCP connection


def test_a_filter_can_close_its_client_with_a_code():
    def quit_command(ws, data):
        if data == "quit":
            ws.close(4000, "bye")
            return DROP
        return None

    with run_server(message=Pipeline(quit_command) | Echo) as server:
        with ws_sync.connect(url(server)) as client:
            client.send("still open")
            assert client.recv(timeout=5) == "still open"
            client.send("quit")
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")
        with pytest.raises(ValueError):
            connection = fws.Connection(fws.Request("/"), server.connection_settings, server.table)
            connection.close(1005)


def test_server_answers_pings_with_pongs():
    with run_server(message=Echo) as server:
        sock = raw_upgrade(server.address[1])
        sock.sendall(client_frame(OP_PING, b"12345"))
        assert read_server_frame(sock) == (OP_PONG, b"12345")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(OP_TEXT, b"unmasked", masked=False), 1002),
        (client_frame(OP_TEXT, b"x", rsv=2), 1002),
        (client_frame(0x5, b"x"), 1002),
        (client_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
        (client_frame(OP_PING, b"x", fin=False), 1002),
        (client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xc3\x28"), 1007),
        (client_frame(OP_CLOSE, struct.pack("!H", 1004)), 1002),
    ],
)
def test_protocol_violations_close_with_the_right_code_and_spare_others(frame, code):
    with run_server(message=Echo) as server:
        bystander = connect(server)
        sock = raw_upgrade(server.address[1])
        sock.sendall(frame)
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == code
        sock.close()
        bystander.send("unaffected")
        assert bystander.recv() == "unaffected"


def test_frames_sent_together_with_the_handshake_are_not_lost():
    with run_server(message=Echo) as server:
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        frames = client_frame(OP_TEXT, b"early") + client_frame(OP_TEXT, b"x" * 3000)
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + frames
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101")
        assert read_server_frame(sock) == (OP_TEXT, b"early")
        assert read_server_frame(sock) == (OP_TEXT, b"x" * 3000)


def test_half_a_frame_then_a_stall_blocks_nobody():
    with run_server(message=Echo) as server:
        sock = raw_upgrade(server.address[1])
        frame = client_frame(OP_TEXT, b"patience")
        sock.sendall(frame[:5])  # header and part of the mask, then nothing
        bystander = connect(server)
        bystander.send("not blocked")
        assert bystander.recv() == "not blocked"
        sock.sendall(frame[5:])  # the rest arrives later: the message is whole
        assert read_server_frame(sock) == (OP_TEXT, b"patience")


def _live_greenlets() -> int:
    # type(), not isinstance(): the heap may hold dead weak proxies, which raise on access.
    return sum(1 for g in gc.get_objects() if issubclass(type(g), greenlet.greenlet) and g)


def test_idle_connections_hold_no_greenlet_and_wake_when_spoken_to():
    # An idle connection waits on a libev watcher; a parked greenlet would cost
    # about 7 kB per connection (make bench measures the memory itself).
    with run_server(message=Echo) as server:
        baseline = _live_greenlets()
        clients = [connect(server) for _ in range(40)]
        for number, client in enumerate(clients):
            client.send(f"hello {number}")
            assert client.recv() == f"hello {number}"
        wait_for(lambda: len(server.users) == 40)
        wait_for(
            lambda: _live_greenlets() <= baseline + 2,
            message=f"{_live_greenlets() - baseline} more greenlets with 40 idle clients",
        )
        for number, client in enumerate(clients):  # every parked connection wakes up
            client.send(f"again {number}")
        for number, client in enumerate(clients):
            assert client.recv() == f"again {number}"
            client.close()


def test_messages_stay_in_order_while_a_filter_blocks():
    class Slow(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            if data == "first":
                gevent.sleep(0.2)  # meanwhile the client's next messages arrive
            web_socket_instance.send(data)

    with run_server(message=Slow) as server:
        client, bystander = connect(server), connect(server)
        for word in ("first", "second", "third", "fourth"):
            client.send(word)
        bystander.send("not blocked")
        assert bystander.recv() == "not blocked"
        assert [client.recv() for _ in range(4)] == ["first", "second", "third", "fourth"]


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_the_server_closes_tcp_right_after_the_close_handshake(scheme, tmp_path):
    # A client waits for the server's EOF before it reports the close (RFC 6455 7.1.1).
    tls = TLSFiles(tmp_path) if scheme == "wss" else None
    settings = tls.server_settings if tls is not None else {}
    with run_server(message=Echo, close_timeout=30, **settings) as server:
        sock = raw_upgrade(server.address[1], tls=tls and tls.client_context)
        sock.sendall(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert read_server_frame(sock) == (OP_CLOSE, struct.pack("!H", 1000))
        assert read_until_eof(sock, timeout=5) == b""  # raises if the server holds on
        wait_for(lambda: not server.users)


def test_a_client_streaming_without_pause_gets_every_echo_and_is_not_called_slow():
    # Its data is always waiting, so recv never blocks: the reader must still let
    # the writer run, or the echoes pile up past max_outbound_bytes (4 MiB).
    count, payload = 100, bytes(range(256)) * 256  # 100 x 64 KiB = 6.4 MiB
    with run_server(message=Echo) as server:
        sock = raw_upgrade(server.address[1])
        sock.settimeout(10)
        stream = client_frame(OP_BINARY, payload) * count
        sender = threading.Thread(target=sock.sendall, args=(stream,))
        sender.start()
        echoes = [read_server_frame(sock) for _ in range(count)]
        sender.join(10)
        assert echoes == [(OP_BINARY, payload)] * count
        assert len(server.users) == 1
        sock.close()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_large_message_sent_in_parts_is_read_into_pieces_and_echoed_whole(
    scheme, tmp_path, monkeypatch
):
    # The reader receives the rest of a large frame into bytes of its own, which
    # the parser keeps uncopied; the echo leaves as a header and the payload.
    fed: list[tuple[type, int]] = []
    add_piece = fws.frames.FrameParser._add_piece

    def recording(parser, data, events):
        fed.append((type(data), len(data)))
        return add_piece(parser, data, events)

    monkeypatch.setattr(fws.frames.FrameParser, "_add_piece", recording)
    tls = TLSFiles(tmp_path) if scheme == "wss" else None
    settings = tls.server_settings if tls is not None else {}
    payload = bytes(range(256)) * 3000  # 768,000 bytes
    frame = client_frame(OP_BINARY, payload)
    with run_server(message=Echo, **settings) as server:
        sock = raw_upgrade(server.address[1], tls=tls and tls.client_context)
        sock.settimeout(10)
        for start, end in [(0, 1000), (1000, 300_000), (300_000, len(frame))]:
            sock.sendall(frame[start:end])
            time.sleep(0.05)  # each part arrives on its own
        assert read_server_frame(sock) == (OP_BINARY, payload)
        sock.sendall(client_frame(OP_TEXT, b"and then a small one"))
        assert read_server_frame(sock) == (OP_TEXT, b"and then a small one")
        sock.close()
    # Most of the frame was read straight into pieces (bytes), not copied out of
    # the shared read buffer (a memoryview).
    assert sum(size for kind, size in fed if kind is bytes) > len(frame) // 2, fed


def test_oversized_message_is_refused_from_the_header_with_1009():
    # A long close_timeout: after a protocol error the server must not wait for it.
    with run_server(message=Echo, max_message_size=1024, close_timeout=30) as server:
        sock = raw_upgrade(server.address[1])
        sock.sendall(client_frame(OP_BINARY, b"", length=10 * 2**20)[:14])  # header only
        opcode, payload = read_server_frame(sock)
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1009
        assert read_until_eof(sock, timeout=5) == b""  # the server ended its side at once
        sock.close()
        with ws_sync.connect(url(server)) as client:
            client.send("x" * 1024)
            assert client.recv(timeout=5) == "x" * 1024
            client.send("x" * 1025)
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
            assert info.value.rcvd.code == 1009


def test_garbage_instead_of_http_gets_400_and_no_traceback(caplog):
    with run_server(message=Echo) as server:
        bystander = connect(server)
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        sock.sendall(b"\x16\x03\x01\x02\x00garbage garbage\r\n\r\n")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400")
        bystander.send("fine")
        assert bystander.recv() == "fine"
    assert "Traceback" not in caplog.text


def test_plain_http_request_gets_426_with_an_explanation():
    import urllib.error
    import urllib.request

    with run_server(message=Echo) as server:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/", timeout=5)
        assert info.value.code == 426
        body = info.value.read().decode()
        assert "WebSocket" in body and body.count("\n") == 1


def test_bad_upgrade_request_gets_a_clean_400():
    with run_server(message=Echo) as server:
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"  # no Sec-WebSocket-Key
        )
        response = read_until_eof(sock)
        assert response.startswith(b"HTTP/1.1 400"), response
        assert b"Sec-WebSocket-Key" in response


def test_consumer_pipeline_runs_on_items_put_on_the_queue():
    seen = []

    def consume(server, item):
        seen.append((server, item))
        server.broadcast(f"queued: {item}")

    with run_server(consumer=consume) as server:
        client = connect(server)
        wait_for(lambda: server.users)
        server.hub.loop.run_callback_threadsafe(server.queue.put, "job-1")
        assert client.recv() == "queued: job-1"
        assert seen == [(server, "job-1")]


def test_slow_reader_is_cut_off_while_sender_and_fast_readers_go_on():
    payload = "y" * 16384
    rounds = 300  # 4.9 MB: far beyond the slow client's socket buffers and queue limit
    with run_server(message=BroadcastMessages, max_outbound_bytes=256 * 1024) as server:
        slow = raw_upgrade(server.address[1], receive_buffer=4096)  # connected, never reads
        fast = [connect(server, timeout=10) for _ in range(3)]
        sender = connect(server, timeout=10)
        wait_for(lambda: len(server.users) == 5)
        slow_port = slow.getsockname()[1]
        slow_id = next(c.id for c in server.users.values() if c.peer[1] == slow_port)
        for round_number in range(rounds):
            sender.send(payload)
            # Every fast reader gets every message, although one client reads nothing.
            for client in fast:
                assert client.recv() == payload, round_number
        # The slow client was cut off (1008) instead of buffering without bound.
        wait_for(lambda: slow_id not in server.users, 15, "slow client was not disconnected")
        # Its socket reaches EOF (read_until_eof raises on timeout) well short of
        # everything: the close frame could not pass the data stuck ahead of it.
        assert len(read_until_eof(slow, timeout=10)) < rounds * len(payload)
        slow.close()


def test_stop_closes_clients_with_1001():
    with run_server(message=Echo) as server, ws_sync.connect(url(server)) as client:
        wait_for(lambda: server.users)
        stop_server(server)
        with pytest.raises(ConnectionClosed) as info:
            client.recv(timeout=10)
        assert info.value.rcvd.code == 1001
        stop_server(server)  # idempotent


def test_stop_cuts_a_connection_whose_filter_never_returns():
    class Stuck(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            gevent.sleep(3600)

    closed = []

    class Record(fws.WebSocketDisconnectFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            closed.append(data.code)

    with run_server(message=Stuck, disconnect=Record, close_timeout=0.5) as server:
        client = connect(server)
        client.send("hang")
        wait_for(lambda: server.users)
        stop_server(server)
        wait_for(lambda: not server.users, timeout=10, message="the stuck connection was kept")
        # Its disconnect pipeline runs once its socket is closed, after it leaves users.
        wait_for(lambda: closed, message="the disconnect pipeline did not run")
        assert closed == [1001]  # the close it was sent, never answered: not clean
        client.close()


def test_stop_waits_for_the_disconnect_pipeline_to_finish():
    finished = []

    class SlowGoodbye(fws.WebSocketDisconnectFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            gevent.sleep(0.2)  # storage clean-up, say
            finished.append(data.code)

    with run_server(message=Echo, disconnect=SlowGoodbye) as server:
        with ws_sync.connect(url(server)) as client:  # answers the server's close itself
            wait_for(lambda: server.users)
            stop_server(server)
            with pytest.raises(ConnectionClosed):
                client.recv(timeout=10)
    # run_server has waited for stop() to return.
    assert finished == [1001]


def test_stop_ends_a_connection_whose_reader_has_not_started_yet():
    # Server.stop aborts what is left; a reader spawned by the watcher but not
    # yet run must still end the connection (killing it unstarted would not).
    seen: dict[str, bool] = {}
    with run_server(message=Echo, close_timeout=0.5) as server:
        sock = raw_upgrade(server.address[1])
        wait_for(lambda: server.users)
        (connection,) = server.users.values()
        polling = threading.Event()

        def abort_as_the_reader_is_spawned() -> None:
            polling.set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                reader = connection._reader
                if reader is not None and reader.gr_frame is None and not reader.dead:
                    connection.abort()
                    seen["aborted unstarted"] = True
                    return
                gevent.sleep(0)

        server.hub.loop.run_callback_threadsafe(gevent.spawn, abort_as_the_reader_is_spawned)
        assert polling.wait(5)
        sock.sendall(client_frame(OP_TEXT, b"wake up"))
        wait_for(lambda: seen, message="the reader was never caught before its start")
        wait_for(lambda: not server.users, message="the aborted connection was kept")
        assert connection.state.value == "closed"
        sock.close()


def test_stop_ends_a_connection_whose_storage_registration_never_returns():
    # Server.stop kills the handshake greenlet stuck in storage.connected();
    # the connection it had registered must not outlive the server.
    from fws.storage.memory import MemoryStorage

    class StuckStorage(MemoryStorage):
        def connected(self, connection_id: str) -> None:
            gevent.sleep(3600)

    with run_server(message=Echo, storage=StuckStorage(), close_timeout=0.5) as server:
        sock = raw_upgrade(server.address[1])  # the 101 is sent before connected()
        wait_for(lambda: server.users)
        stop_server(server)
        wait_for(lambda: not server.users, timeout=10, message="the connection was kept")
        sock.close()


def test_a_tls_client_cut_after_a_protocol_error_logs_no_traceback(tmp_path, caplog):
    tls = TLSFiles(tmp_path)
    with run_server(message=Echo, close_timeout=0.5, **tls.server_settings) as server:
        sock = raw_upgrade(server.address[1], tls=tls.client_context)
        sock.sendall(client_frame(OP_TEXT, b"bad", rsv=1))
        opcode, payload = read_server_frame(sock)
        assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, 1002)
        sock.sendall(client_frame(OP_CLOSE, struct.pack("!H", 1002)))
        wait_for(lambda: not server.users)
        sock.close()
    assert "internal error" not in caplog.text
    assert "Traceback" not in caplog.text


def test_a_storage_that_fails_to_register_a_client_closes_it_with_1011(caplog):
    from fws.storage.memory import MemoryStorage

    class BrokenStorage(MemoryStorage):
        def connected(self, connection_id: str) -> None:
            raise RuntimeError("storage bug")

    with run_server(message=Echo, storage=BrokenStorage()) as server:
        with ws_sync.connect(url(server)) as client:
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
        assert info.value.rcvd.code == 1011
    assert "RuntimeError: storage bug" in caplog.text  # our bug: logged with its traceback


def test_an_internal_error_in_the_reader_closes_with_1011_and_spares_others():
    with run_server(message=Echo) as server:
        bystander = connect(server)
        real_dispatch = server.table.dispatch

        def broken_dispatch(event, instance, data):
            if data == "break":
                raise RuntimeError("fws bug")
            return real_dispatch(event, instance, data)

        server.table.dispatch = broken_dispatch
        with ws_sync.connect(url(server)) as client:
            client.send("break")
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
        assert info.value.rcvd.code == 1011
        bystander.send("still here")
        assert bystander.recv() == "still here"


def test_one_frame_larger_than_the_outbound_limit_still_goes_to_a_reading_client():
    # The limit is on a backlog: a single message bigger than it is not one.
    with run_server(message=Echo, max_outbound_bytes=1000) as server:
        client = connect(server)
        client.send_binary(b"x" * 5000)
        assert client.recv() == b"x" * 5000


def test_messages_after_the_server_closes_are_not_dispatched_and_send_says_false():
    seen, sent_while_closing = [], []

    class ByeCloses(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            seen.append(str(data))
            if data == "bye":
                web_socket_instance.close(1000, "bye")
                sent_while_closing.append(web_socket_instance.send("too late"))

    with run_server(message=ByeCloses) as server:
        sock = raw_upgrade(server.address[1])
        sock.sendall(client_frame(OP_TEXT, b"bye") + client_frame(OP_TEXT, b"after"))
        opcode, _payload = read_server_frame(sock)
        assert opcode == OP_CLOSE
        sock.sendall(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        wait_for(lambda: not server.users)
        sock.close()
    assert seen == ["bye"]
    assert sent_while_closing == [False]


def test_a_handshake_that_arrives_after_stop_began_gets_503():
    with run_server(message=Echo, close_timeout=0.5) as server:
        sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
        stop_server(server)  # the connection is accepted; its request comes next
        wait_for(lambda: server.stopping)
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert read_until_eof(sock).startswith(b"HTTP/1.1 503")
        sock.close()


def test_port_in_use_raises_oserror():
    with run_server(message=Echo) as first:
        with pytest.raises(OSError), run_server(port=first.address[1]):
            pass


def test_tls_with_a_certificate_generated_in_the_test(tmp_path):
    import ssl

    tls = TLSFiles(tmp_path)
    cert_file, key_file, client_context = tls.cert, tls.key, tls.client_context

    with run_server(message=Echo, certfile=str(cert_file), keyfile=str(key_file)) as server:
        with WssClient(url(server, scheme="wss"), client_context) as client:
            client.send("secret")
            assert client.recv(timeout=5) == "secret"
            client.send(b"\x00" * 100_000)
            assert client.recv(timeout=5) == b"\x00" * 100_000
        with pytest.raises(ssl.SSLError):  # an untrusting client is refused by TLS itself
            WssClient(url(server, scheme="wss"), ssl.create_default_context())

    # One PEM file holding both the key and the chain works as the certificate alone.
    both = tmp_path / "both.pem"
    both.write_bytes(key_file.read_bytes() + cert_file.read_bytes())
    with run_server(message=Echo, certfile=str(both)) as server:
        with WssClient(url(server, scheme="wss"), client_context) as client:
            client.send("one file")
            assert client.recv(timeout=5) == "one file"


def test_tls_tests_use_a_client_that_keeps_its_tls_socket_on_one_thread():
    # websockets' sync client reads in a thread while the test writes: over TLS
    # it loses about 1 upgrade in 250 (helpers.WssClient says why and how measured).
    import re
    from pathlib import Path

    threaded_wss = re.compile(r"ws_sync\.connect\(.*\bssl=")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(Path(__file__).parent.glob("test_*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if threaded_wss.search(line)
    ]
    assert offenders == [], "use helpers.WssClient for wss:// in tests"


def test_stdlib_ssl_context_is_refused_with_a_clear_error():
    import ssl

    with pytest.raises(TypeError, match="gevent.ssl.SSLContext"):
        fws.Server(ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def test_broadcast_to_an_id_named_twice_delivers_once():
    class ToTwice(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            ids = [web_socket_instance.id] * 2
            if data == "generator":  # any iterable, not only a list
                queued = web_socket_instance.server.broadcast("to a generator", to=iter(ids))
            else:
                queued = web_socket_instance.server.broadcast("to a list", to=ids)
            web_socket_instance.send(f"queued {queued}")

    with run_server(message=ToTwice) as server:
        client = connect(server)
        client.send("list")
        assert [client.recv(), client.recv()] == ["to a list", "queued 1"]
        client.send("generator")
        assert [client.recv(), client.recv()] == ["to a generator", "queued 1"]
        client.close()
