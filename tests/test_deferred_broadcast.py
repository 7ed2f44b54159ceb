"""A broadcast to every connection is deferred to the flusher: nothing may overtake it.

``Server.broadcast`` without ``to`` queues nothing at once; the flusher sends
each connection its share of the turn's broadcasts with its queue
(``fws.outbound.defer_broadcast``). These tests make the server do, in one
turn of its hub, a broadcast and then something else for the same client,
and check that the client sees them in the order the filter did them: real
servers, real clients, every burst written in one ``sendall`` so that the
server reads it in one turn.
"""

from __future__ import annotations

import logging
import socket
import struct
import time

import gevent
import gevent.queue
import gevent.socket
import pytest
import websockets.sync.client as ws_sync
from frame_builder import client_frame
from helpers import (
    connect,
    metric_values,
    raw_upgrade,
    read_server_frame,
    run_server,
    url,
    wait_for,
)
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import fws
import fws.frames
from fws import Pipeline
from fws.context import ConnectionSettings, ConnectionTable
from fws.deflate import DeflateSettings
from fws.filters.broadcast_messages import BroadcastMessages
from fws.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from fws.outbound import WrongThreadError, _flush_connections, defer_broadcast
from fws.storage.memory import MemoryStorage


def _texts(sock: socket.socket, count: int) -> list[str]:
    frames = [read_server_frame(sock) for _ in range(count)]
    assert all(opcode == OP_TEXT for opcode, _ in frames), frames
    return [payload.decode() for _, payload in frames]


def test_a_reply_sent_after_a_broadcast_arrives_after_it():
    def announce_then_reply(web_socket_instance, data):
        web_socket_instance.server.broadcast(f"all: {data}")
        web_socket_instance.send(f"reply: {data}")

    with run_server(message=Pipeline(announce_then_reply)) as server:
        sender = raw_upgrade(server.address[1])
        other = raw_upgrade(server.address[1])
        wait_for(lambda: len(server.users) == 2)
        sender.sendall(b"".join(client_frame(OP_TEXT, b"m%d" % i) for i in range(5)))
        expected = [line for i in range(5) for line in (f"all: m{i}", f"reply: m{i}")]
        assert _texts(sender, 10) == expected
        assert _texts(other, 5) == [f"all: m{i}" for i in range(5)]
        sender.close()
        other.close()


def test_a_frame_queued_with_send_frame_after_a_broadcast_arrives_after_it():
    def announce_then_send_frame(web_socket_instance, data):
        web_socket_instance.server.broadcast(f"all: {data}")
        web_socket_instance.send_frame(fws.frames.encode_message(f"frame: {data}"))

    with run_server(message=Pipeline(announce_then_send_frame)) as server:
        client = raw_upgrade(server.address[1])
        wait_for(lambda: len(server.users) == 1)
        client.sendall(client_frame(OP_TEXT, b"a") + client_frame(OP_TEXT, b"b"))
        assert _texts(client, 4) == ["all: a", "frame: a", "all: b", "frame: b"]
        client.close()


def test_a_large_binary_reply_and_a_pong_after_a_broadcast_arrive_after_it():
    # A binary message of 16 KiB or more is queued uncopied behind a header of
    # its own (_send_uncopied); a pong is a control frame (send_frame).
    large = b"L" * 20000

    def announce_then_send_large(web_socket_instance, data):
        web_socket_instance.server.broadcast(f"all: {data}")
        if data == "large":
            web_socket_instance.send(large)

    with run_server(message=Pipeline(announce_then_send_large)) as server:
        client = raw_upgrade(server.address[1])
        wait_for(lambda: len(server.users) == 1)
        client.sendall(client_frame(OP_TEXT, b"large") + client_frame(OP_PING, b"p"))
        assert _texts(client, 1) == ["all: large"]
        assert read_server_frame(client) == (OP_BINARY, large)
        assert read_server_frame(client) == (OP_PONG, b"p")
        # The pong alone after the broadcast a message made in the same read.
        client.sendall(client_frame(OP_TEXT, b"small") + client_frame(OP_PING, b"q"))
        assert _texts(client, 1) == ["all: small"]
        assert read_server_frame(client) == (OP_PONG, b"q")
        client.close()


def test_a_compressed_reply_after_a_broadcast_keeps_a_context_takeover_stream_intact():
    # With context takeover each compressed frame depends on the ones compressed
    # before it for that client: the broadcast must be compressed, and sent,
    # before the reply.
    text = "compress me " * 200
    settings = DeflateSettings(
        server_no_context_takeover=False, client_no_context_takeover=False, compress_min_size=0
    )

    def announce_then_reply(web_socket_instance, data):
        web_socket_instance.server.broadcast(f"all {data} {text}")
        web_socket_instance.send(f"reply {data} {text}")

    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    with run_server(message=Pipeline(announce_then_reply), compression=settings) as server:
        with ws_sync.connect(url(server), extensions=[factory], compression=None) as client:
            (extension,) = client.protocol.extensions
            assert not extension.remote_no_context_takeover
            for n in range(5):
                client.send(str(n))
                assert client.recv(timeout=5) == f"all {n} {text}"
                assert client.recv(timeout=5) == f"reply {n} {text}"


def test_a_close_after_a_broadcast_goes_after_it():
    def announce_then_close(web_socket_instance, data):
        web_socket_instance.server.broadcast(f"goodbye {data}")
        web_socket_instance.close(1000, "done")

    with run_server(message=Pipeline(announce_then_close)) as server:
        leaving = raw_upgrade(server.address[1])
        staying = connect(server)
        wait_for(lambda: len(server.users) == 2)
        leaving.sendall(client_frame(OP_TEXT, b"alice"))
        assert _texts(leaving, 1) == ["goodbye alice"]
        opcode, payload = read_server_frame(leaving)
        assert opcode == OP_CLOSE and payload == struct.pack("!H", 1000) + b"done"
        assert staying.recv() == "goodbye alice"
        leaving.close()


def test_a_client_that_closes_gets_the_broadcasts_made_before_its_close():
    # The message and the close arrive in one read: the broadcast the message
    # makes is for the client, which is open then; the close reply goes after it.
    def announce(web_socket_instance, data):
        web_socket_instance.server.broadcast(f"heard {data}")

    with run_server(message=Pipeline(announce)) as server:
        client = raw_upgrade(server.address[1])
        wait_for(lambda: len(server.users) == 1)
        client.sendall(
            client_frame(OP_TEXT, b"last words") + client_frame(OP_CLOSE, struct.pack("!H", 1000))
        )
        assert _texts(client, 1) == ["heard last words"]
        opcode, payload = read_server_frame(client)
        assert opcode == OP_CLOSE and payload[:2] == struct.pack("!H", 1000)
        client.close()


def test_an_open_filter_s_broadcast_reaches_everyone_and_the_newcomer_where_it_was_made():
    # While a connection opens, broadcasts are not deferred: the open pipeline's
    # own frames go first to the newcomer, then what was broadcast meanwhile.
    def welcome(web_socket_instance, data):
        web_socket_instance.server.broadcast("someone joined")
        web_socket_instance.send("welcome")

    with run_server(open=Pipeline(welcome)) as server:
        first = connect(server)
        assert [first.recv(), first.recv()] == ["someone joined", "welcome"]
        second = connect(server)
        assert [second.recv(), second.recv()] == ["someone joined", "welcome"]
        assert first.recv() == "someone joined"
        assert server.table.opening == 0  # both opened: broadcasts are deferred again


def test_an_open_filter_that_yields_keeps_its_broadcast_where_it_made_it():
    # Deferred, the broadcast would reach the newcomer through the flusher while
    # its open pipeline sleeps, be held as if another client had sent it, and
    # arrive after everything the pipeline sends later.
    def welcome_slowly(web_socket_instance, data):
        web_socket_instance.send("first")
        web_socket_instance.server.broadcast("someone joined")
        gevent.sleep(0.05)  # the hub turns: the flusher runs meanwhile
        web_socket_instance.send("last")

    with run_server(open=Pipeline(welcome_slowly)) as server:
        client = connect(server)
        assert [client.recv() for _ in range(3)] == ["first", "someone joined", "last"]


def test_an_open_filter_that_lets_a_timeout_escape_does_not_stop_deferring():
    # A gevent.Timeout is a BaseException, not an Exception: the opening must
    # still end (and be counted as ended), or no broadcast is deferred again.
    def escapes(web_socket_instance, data):
        if web_socket_instance.request.path == "/escape":
            raise gevent.Timeout(0.01)

    deferred: list[bool] = []

    def record(web_socket_instance, data):
        deferred.append(bool(web_socket_instance.table.deferred))

    with run_server(open=Pipeline(escapes), message=BroadcastMessages | record) as server:
        failing = raw_upgrade(server.address[1], path="/escape")
        failing.settimeout(5)
        wait_for(lambda: not server.users and server.table.opening == 0)
        sender, receiver = connect(server), connect(server)
        wait_for(lambda: len(server.users) == 2)
        sender.send("still deferred")
        assert receiver.recv() == "still deferred"
        assert deferred == [True]  # the broadcast waited for the flusher
        failing.close()


def test_broadcast_returns_how_many_open_connections_it_is_for():
    counts: list[int] = []

    def count(web_socket_instance, data):
        server = web_socket_instance.server
        counts.append(server.broadcast("to all"))
        counts.append(server.broadcast("not to the sender", exclude=web_socket_instance.id))
        counts.append(server.broadcast("nobody skipped", exclude="no such id"))

    with run_server(message=Pipeline(count)) as server:
        clients = [connect(server) for _ in range(3)]
        wait_for(lambda: len(server.users) == 3)
        clients[0].send("go")
        assert clients[1].recv() == "to all"
        assert counts == [3, 2, 3]
        for client in clients:
            client.close()


def test_broadcasts_wait_for_an_idle_hub_but_go_on_its_next_turn_once_overdue():
    # A filter that never lets libev poll (gevent runs queued callbacks for up
    # to 5 ms first) must not hold the broadcasts past their bound: the next
    # broadcast after it schedules the flusher itself (fws.after_input).
    seen: list[tuple[bool, bool]] = []

    def announce_past_the_bound(web_socket_instance, data):
        server = web_socket_instance.server
        table = server.table
        server.broadcast(f"first: {data}")
        seen.append((table.after_input.pending, table.flusher is None))
        bound = time.monotonic() + 2 * table.after_input.limit
        while time.monotonic() < bound:  # no yield: the hub cannot poll
            pass
        server.broadcast(f"second: {data}")
        seen.append((table.after_input.pending, table.flusher is None))

    with run_server(message=Pipeline(announce_past_the_bound)) as server:
        client = connect(server)
        wait_for(lambda: len(server.users) == 1)
        client.send("go")
        assert [client.recv(), client.recv()] == ["first: go", "second: go"]
        # waiting for an idle hub, then overdue: flushed on the next turn
        assert seen == [(True, True), (True, False)]
        # one wait, which the bound ended: what the metrics say
        stats = server.table.stats
        assert (stats.broadcast_waits, stats.broadcast_waits_bounded) == (1, 1)
        metrics = metric_values(server)
        assert metrics["fws_broadcast_waits_total"] == 1
        assert metrics["fws_broadcast_waits_bounded_total"] == 1
        client.close()


@pytest.mark.parametrize("wait_us", [0, 2000])
def test_broadcast_wait_us_sets_the_wait_or_turns_it_off(wait_us):
    flusher_due: list[bool] = []

    def announce_then_reply(web_socket_instance, data):
        server = web_socket_instance.server
        server.broadcast(f"all: {data}")
        flusher_due.append(server.table.flusher is not None)
        web_socket_instance.send(f"reply: {data}")

    with run_server(message=Pipeline(announce_then_reply), broadcast_wait_us=wait_us) as server:
        after_input = server.table.after_input
        assert (after_input is None) if wait_us == 0 else (after_input.limit == wait_us * 1e-6)
        client = connect(server)
        wait_for(lambda: len(server.users) == 1)
        client.send("go")
        assert [client.recv(), client.recv()] == ["all: go", "reply: go"]
        # off: the flusher is due on the next turn at once; on: it waits for an idle hub
        assert flusher_due == [wait_us == 0]
        assert server.table.stats.broadcast_waits == (0 if wait_us == 0 else 1)
        client.close()
    assert server.table.after_input is None  # stopping the server ended the wait


@pytest.fixture
def table() -> ConnectionTable:
    pipelines = {event: fws.Pipeline() for event in ("open", "disconnect")}
    return ConnectionTable(
        storage=MemoryStorage(),
        queue=gevent.queue.Queue(),
        pipelines=pipelines,
        dispatch=lambda event, instance, data: None,
    )


def test_a_broadcast_deferred_before_a_connection_opened_is_not_for_it(table):
    # In one turn: a broadcast, then a client opens. The broadcast was for the
    # connections open when it was made; the newcomer must not get it.
    settings = ConnectionSettings(ping_interval=None)
    peers, connections = [], []

    def open_one() -> None:
        ours, theirs = gevent.socket.socketpair()
        connection = fws.Connection(fws.Request("/"), settings, table)
        connection.open(ours)
        connections.append(connection)
        peers.append(theirs._sock)  # type: ignore[attr-defined]

    open_one()
    frame = fws.frames.encode_message("before the newcomer")
    defer_broadcast(table, frame, frame[0], None, lambda c: c.send_message_frame(frame, frame[0]))
    open_one()  # queues the deferred broadcast first, for the first connection only
    assert table.deferred == []
    _flush_connections(table)
    received = []
    for peer in peers:
        peer.setblocking(False)
        try:
            received.append(peer.recv(1000))
        except BlockingIOError:
            received.append(b"")
    assert received == [frame, b""]
    for connection in connections:
        connection.abort()
    for peer in peers:
        peer.close()
    gevent.sleep(0.01)


def test_a_broadcast_that_fails_in_the_flusher_is_logged_and_the_other_queues_still_go(
    table, caplog
):
    settings = ConnectionSettings(ping_interval=None)
    ours, theirs = gevent.socket.socketpair()
    connection = fws.Connection(fws.Request("/"), settings, table)
    connection.open(ours)
    peer = theirs._sock  # type: ignore[attr-defined]
    frame = fws.frames.encode_message("queued before")

    def broken(_connection: fws.Connection) -> bool:
        raise RuntimeError("a bug in one broadcast")

    connection._flush_due = True  # listed, as _queue lists it
    connection._outbox.append(frame)
    connection._outbox_bytes += len(frame)
    table.to_flush.append(connection)
    connection.deflate = object()  # type: ignore[assignment]  # off the common case: deliver
    defer_broadcast(table, b"\x81\x01x", 0x81, None, broken)
    try:
        with caplog.at_level(logging.ERROR, logger="fws.connection"):
            gevent.sleep(0.01)  # the flusher runs
        assert "could not be sent to every connection" in caplog.text
        assert "a bug in one broadcast" in caplog.text
        peer.settimeout(5)
        assert peer.recv(1000) == frame  # the queue still went
        assert table.flusher is None and table.to_flush == []
    finally:
        connection.deflate = None
        connection.abort()
        peer.close()
        gevent.sleep(0.01)


def test_sending_from_another_thread_is_refused_and_the_server_keeps_sending():
    # The flusher runs in the server's hub; scheduled from another thread's hub
    # it never ran, and with a deferred broadcast nothing was sent again.
    with run_server(message=BroadcastMessages) as server:
        sender, receiver = connect(server), connect(server)
        wait_for(lambda: len(server.users) == 2)
        with pytest.raises(WrongThreadError, match="from the thread that started the server"):
            server.broadcast("from the test's thread")
        connection = next(iter(server.users.values()))
        with pytest.raises(WrongThreadError):
            connection.send("from the test's thread too")
        sender.send("from a client")
        assert receiver.recv() == "from a client"
        receiver.send("and back")
        assert sender.recv() == "and back"
