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

import socket
import struct

import gevent
import gevent.queue
import gevent.socket
import pytest
from frame_builder import client_frame
from helpers import connect, raw_upgrade, read_server_frame, run_server, wait_for

import fws
import fws.frames
from fws import WebSocketMessageFilter, WebSocketOpenFilter
from fws.context import ConnectionSettings, ConnectionTable
from fws.frames import OP_CLOSE, OP_TEXT
from fws.outbound import _flush_connections, defer_broadcast
from fws.storage.memory import MemoryStorage


def _texts(sock: socket.socket, count: int) -> list[str]:
    frames = [read_server_frame(sock) for _ in range(count)]
    assert all(opcode == OP_TEXT for opcode, _ in frames), frames
    return [payload.decode() for _, payload in frames]


def test_a_reply_sent_after_a_broadcast_arrives_after_it():
    class AnnounceThenReply(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            web_socket_instance.server.broadcast(f"all: {data}")
            web_socket_instance.send(f"reply: {data}")

    with run_server(message=AnnounceThenReply) as server:
        sender = raw_upgrade(server.address[1])
        other = raw_upgrade(server.address[1])
        wait_for(lambda: len(server.users) == 2)
        sender.sendall(b"".join(client_frame(OP_TEXT, b"m%d" % i) for i in range(5)))
        expected = [line for i in range(5) for line in (f"all: m{i}", f"reply: m{i}")]
        assert _texts(sender, 10) == expected
        assert _texts(other, 5) == [f"all: m{i}" for i in range(5)]
        sender.close()
        other.close()


def test_a_close_after_a_broadcast_goes_after_it():
    class AnnounceThenClose(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            web_socket_instance.server.broadcast(f"goodbye {data}")
            web_socket_instance.close(1000, "done")

    with run_server(message=AnnounceThenClose) as server:
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
    class Announce(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            web_socket_instance.server.broadcast(f"heard {data}")

    with run_server(message=Announce) as server:
        client = raw_upgrade(server.address[1])
        wait_for(lambda: len(server.users) == 1)
        client.sendall(
            client_frame(OP_TEXT, b"last words") + client_frame(OP_CLOSE, struct.pack("!H", 1000))
        )
        assert _texts(client, 1) == ["heard last words"]
        opcode, payload = read_server_frame(client)
        assert opcode == OP_CLOSE and payload[:2] == struct.pack("!H", 1000)
        client.close()


def test_an_open_filter_s_broadcast_reaches_everyone_and_the_newcomer_after_its_welcome():
    # While a connection opens, broadcasts are not deferred: the open pipeline's
    # own frames go first to the newcomer, then what was broadcast meanwhile.
    class Welcome(WebSocketOpenFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            web_socket_instance.server.broadcast("someone joined")
            web_socket_instance.send("welcome")

    with run_server(open=Welcome) as server:
        first = connect(server)
        assert [first.recv(), first.recv()] == ["someone joined", "welcome"]
        second = connect(server)
        assert [second.recv(), second.recv()] == ["someone joined", "welcome"]
        assert first.recv() == "someone joined"


def test_an_open_filter_that_yields_keeps_its_broadcast_where_it_made_it():
    # Deferred, the broadcast would reach the newcomer through the flusher while
    # its open pipeline sleeps, be held as if another client had sent it, and
    # arrive after everything the pipeline sends later.
    class WelcomeSlowly(WebSocketOpenFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            web_socket_instance.send("first")
            web_socket_instance.server.broadcast("someone joined")
            gevent.sleep(0.05)  # the hub turns: the flusher runs meanwhile
            web_socket_instance.send("last")

    with run_server(open=WelcomeSlowly) as server:
        client = connect(server)
        assert [client.recv() for _ in range(3)] == ["first", "someone joined", "last"]


def test_broadcast_returns_how_many_open_connections_it_is_for():
    counts: list[int] = []

    class Count(WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            server = web_socket_instance.server
            counts.append(server.broadcast("to all"))
            counts.append(server.broadcast("not to the sender", exclude=web_socket_instance.id))
            counts.append(server.broadcast("nobody skipped", exclude="no such id"))

    with run_server(message=Count) as server:
        clients = [connect(server) for _ in range(3)]
        wait_for(lambda: len(server.users) == 3)
        clients[0].send("go")
        assert clients[1].recv() == "to all"
        assert counts == [3, 2, 3]
        for client in clients:
            client.close()


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
