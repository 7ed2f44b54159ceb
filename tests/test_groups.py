"""Connection groups: ``join``, ``leave``, ``groups``, backed by the storage."""

from __future__ import annotations

import json

import pytest
import websocket
from helpers import connect, run_server, url, wait_for

from fws import CloseInfo, Pipeline
from fws.filters.broadcast_messages_by_token import NO_TOKEN, BroadcastMessagesByToken
from fws.groups import MAX_GROUP_NAME_BYTES, check_group_name


def commands(connection, data):
    """``join NAME``, ``leave NAME``, ``send NAME TEXT``; answers with the groups or the error."""
    verb, _, rest = str(data).partition(" ")
    try:
        if verb == "join":
            connection.join(rest)
        elif verb == "leave":
            connection.leave(rest)
        elif verb == "send":
            name, _, text = rest.partition(" ")
            connection.storage_object.send_to_group(name, text, sender=connection.id)
            return
    except ValueError as exc:
        connection.send(f"ValueError: {exc}")
        return
    connection.send(json.dumps(sorted(connection.groups)))


def test_group_names_are_bounded_non_empty_text():
    check_group_name("x")
    check_group_name("é" * (MAX_GROUP_NAME_BYTES // 2))  # 256 bytes of UTF-8
    for bad in ("", "é" * 128 + "x", "x" * 257, "\udc80"):
        with pytest.raises(ValueError):
            check_group_name(bad)
    with pytest.raises(TypeError):
        check_group_name(b"bytes")  # type: ignore[arg-type]


def test_join_and_leave_track_groups_and_the_storage():
    with run_server(message=Pipeline(commands)) as server:
        alice, bob = connect(server), connect(server)
        wait_for(lambda: len(server.users) == 2)
        alice.send("join red")
        assert json.loads(alice.recv()) == ["red"]
        alice_id = next(c.id for c in server.users.values() if c.groups)
        alice.send("join blue")
        assert json.loads(alice.recv()) == ["blue", "red"]
        alice.send("join red")  # twice is harmless
        assert json.loads(alice.recv()) == ["blue", "red"]
        assert server.storage_object.get("red") == {alice_id}
        bob.send("send red hello reds")
        assert alice.recv() == "hello reds"
        alice.send("leave red")
        assert json.loads(alice.recv()) == ["blue"]
        assert server.storage_object.get("red") == set()
        alice.send("leave never-joined")
        assert json.loads(alice.recv()) == ["blue"]
        alice.send("leave blue")
        assert json.loads(alice.recv()) == []


def test_a_name_over_256_bytes_is_refused_and_nothing_is_stored():
    with run_server(message=Pipeline(commands)) as server:
        client = connect(server)
        ok, too_long = "é" * 128, "é" * 128 + "x"
        client.send(f"join {too_long}")
        assert client.recv() == "ValueError: group name longer than 256 bytes"
        assert server.storage_object.get(too_long) == set()
        (connection,) = server.users.values()
        assert connection.groups == frozenset()
        client.send("join ")
        assert client.recv() == "ValueError: a group name cannot be empty"
        client.send(f"join {ok}")
        assert json.loads(client.recv()) == [ok]
        assert server.storage_object.get(ok) == {connection.id}


def test_a_connection_leaves_its_groups_when_it_ends_after_its_disconnect_filters():
    seen: list[frozenset[str]] = []

    def remember(connection, info: CloseInfo):
        seen.append(connection.groups)

    with run_server(message=Pipeline(commands), disconnect=Pipeline(remember)) as server:
        leaving, staying = connect(server), connect(server)
        for client in (leaving, staying):
            client.send("join red")
            client.recv()
        leaving.send("join blue")
        leaving.recv()
        assert len(server.storage_object.get("red")) == 2
        leaving.close()
        wait_for(lambda: len(server.storage_object.get("red")) == 1)
        assert server.storage_object.get("blue") == set()
        assert seen == [frozenset({"red", "blue"})]  # the disconnect filters still saw them
        staying.close()
        wait_for(lambda: not server.storage_object.get("red"))


def test_join_before_the_upgrade_is_an_error_and_stores_nothing():
    def join_early(connection, request):
        connection.join("early")

    with run_server(connect=Pipeline(join_early)) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server)
        assert info.value.status_code == 500  # a broken connect filter fails closed
        assert server.storage_object.get("early") == set()


def test_by_token_answers_are_the_seeds_and_long_names_are_refused():
    with run_server(message=BroadcastMessagesByToken) as server:
        client, other = connect(server), connect(server)
        client.send("hello")
        assert client.recv() == NO_TOKEN
        client.send("token:" + "x" * 257)
        assert client.recv() == "Error: group name longer than 256 bytes"
        assert server.storage_object.get("x" * 257) == set()
        client.send("hello")
        assert client.recv() == NO_TOKEN  # still in no group
        client.send("please token:" + "x" * 256 + " thanks")
        assert client.recv() == "Successfully registered with broadcast group: " + "x" * 256
        other.send("token:" + "x" * 256)
        other.recv()
        client.send("to the group")
        assert other.recv() == "to the group"
        # A refused name leaves the client in the group it was in.
        client.send("token:" + "y" * 300)
        assert client.recv() == "Error: group name longer than 256 bytes"
        client.send("still here")
        assert other.recv() == "still here"


def test_by_token_never_routes_by_a_token_another_filter_set():
    def secret_in_token(connection, request):
        connection.token = request.query.get("token")

    with run_server(connect=Pipeline(secret_in_token), message=BroadcastMessagesByToken) as server:
        spy = connect(server)
        spy.send("token:s3cret")  # someone who joins a group named like the secret
        spy.recv()
        client = connect(url(server, "/?token=s3cret"))
        client.send("private")
        assert client.recv() == NO_TOKEN
        spy.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            spy.recv()
