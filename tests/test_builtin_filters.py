"""Each built-in filter module, on a real server with real clients."""

from __future__ import annotations

import ast

import pytest
import websocket
from helpers import connect, read_stdout_until, run_server, wait_for

from fws.filters.broadcast_messages import BroadcastMessages
from fws.filters.broadcast_messages_by_token import NO_TOKEN, BroadcastMessagesByToken
from fws.filters.broadcast_pubsub import BroadcastPubSub
from fws.filters.echo import Echo
from fws.filters.stdout_messages import StdoutMessages
from fws.filters.stdout_pubsub import StdoutPubSub
from fws.filters.stdout_rawdata import StdoutRawData
from fws.storage import PubSubMessage


def assert_silent(client: websocket.WebSocket, seconds: float = 0.3) -> None:
    client.settimeout(seconds)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv()
    client.settimeout(5)


def test_broadcast_messages_reaches_every_other_client_exactly_once():
    with run_server(message=BroadcastMessages) as server:
        clients = [connect(server) for _ in range(4)]
        wait_for(lambda: len(server.users) == 4)
        clients[0].send("one")
        clients[2].send_binary(b"\x00two")
        for index, client in enumerate(clients):
            expected = [m for m, sender in (("one", 0), (b"\x00two", 2)) if sender != index]
            received = [client.recv() for _ in expected]
            # Two senders: their messages may arrive in either order.
            assert sorted(received, key=repr) == sorted(expected, key=repr)
            assert_silent(client, 0.1)


def test_echo_answers_only_the_sender():
    with run_server(message=Echo) as server:
        alice, bob = connect(server), connect(server)
        alice.send("ping")
        assert alice.recv() == "ping"
        assert_silent(bob)


def test_token_groups_register_answer_and_route_within_the_group():
    with run_server(message=BroadcastMessagesByToken) as server:
        red1, red2, blue, loner = (connect(server) for _ in range(4))
        loner.send("anyone?")
        assert loner.recv() == NO_TOKEN
        for client, group in ((red1, "red"), (red2, "red"), (blue, "blue")):
            client.send(f"token:{group}")
            assert client.recv() == f"Successfully registered with broadcast group: {group}"
        assert server.storage_object.get("red") == {
            c.id for c in server.users.values() if c.token == "red"
        }
        red1.send("hi reds")
        assert red2.recv() == "hi reds"
        assert_silent(red1)  # not back to the sender
        assert_silent(blue)  # not to another group
        assert_silent(loner)
        # Switching groups leaves the old one.
        red2.send("token:blue")
        assert red2.recv() == "Successfully registered with broadcast group: blue"
        blue.send("hi blues")
        assert red2.recv() == "hi blues"
        assert len(server.storage_object.get("red")) == 1
        # Disconnecting leaves the group (the connection does it: no filter needed).
        red2.close()
        wait_for(lambda: len(server.storage_object.get("blue")) == 1)


def test_broadcast_pubsub_sends_each_queue_item_to_every_client():
    with run_server(consumer=BroadcastPubSub) as server:
        clients = [connect(server) for _ in range(3)]
        wait_for(lambda: len(server.users) == 3)
        put = server.queue.put
        server.hub.loop.run_callback_threadsafe(put, PubSubMessage("global", b"hello"))
        server.hub.loop.run_callback_threadsafe(put, PubSubMessage("global", b"\xff\x00"))
        server.hub.loop.run_callback_threadsafe(put, "plain item")
        for client in clients:
            assert client.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"hello")
            assert client.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\xff\x00")
            assert client.recv() == "plain item"


def test_memory_storage_publish_feeds_the_consumer_pipeline():
    def publish(ws, data):
        ws.storage_object.publish("chat", data)

    with run_server(message=publish, consumer=BroadcastPubSub) as server:
        alice, bob = connect(server), connect(server)
        wait_for(lambda: len(server.users) == 2)
        alice.send("via pubsub")
        assert bob.recv() == "via pubsub"
        assert alice.recv() == "via pubsub"  # pub/sub reaches every client, sender included


def test_stdout_filters_print_the_seed_formats(capsys):
    with run_server(data=StdoutRawData, message=StdoutMessages, consumer=StdoutPubSub) as server:
        client = connect(server)
        wait_for(lambda: server.users)
        client_id = next(iter(server.users))
        client.send("hello stdout")
        server.hub.loop.run_callback_threadsafe(server.queue.put, PubSubMessage("global", b"news"))
        output = read_stdout_until(capsys, lambda o: "--PUBSUB--" in o and "--MESSAGE--" in o)
    assert f"--MESSAGE--\n{client_id} => hello stdout\n" in output
    assert "--PUBSUB--\nglobal: news\n" in output
    raw_line = output.split("--RAWDATA--\n", 1)[1].split("\n", 1)[0]
    raw = ast.literal_eval(raw_line)
    assert isinstance(raw, bytes) and raw[0] == 0x81  # a text frame, as read from the socket


def test_memory_storage_reaches_one_client_by_id_and_reports_health():
    def whisper(ws, data):
        target, _, text = data.partition(" ")
        if not ws.storage_object.send_to_client(target, text):
            ws.send(f"no client {target}")

    with run_server(message=whisper) as server:
        alice, bob = connect(server), connect(server)
        wait_for(lambda: len(server.users) == 2)
        bob_port = bob.sock.getsockname()[1]
        bob_id = next(c.id for c in server.users.values() if c.peer[1] == bob_port)
        alice.send(f"{bob_id} psst")
        assert bob.recv() == "psst"
        alice.send("nobody hello")
        assert alice.recv() == "no client nobody"
        assert server.pubsub_live is True  # in-memory pub/sub never goes away
