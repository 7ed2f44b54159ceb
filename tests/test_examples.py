"""The examples the documentation shows (docs/guide/), run as a user would."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import websocket
from helpers import LOOPBACK, ServerProcess, connect

EXAMPLES = Path(__file__).parent.parent / "examples"
ANY_PORT = {"FWS_HOST": LOOPBACK, "FWS_PORT": "0", "FWS_CLOSE_TIMEOUT": "1"}


def test_script_composing_a_pipeline_and_calling_serve():
    script = ServerProcess(
        [],
        env={"HOST": LOOPBACK, "PORT": "0"},
        command=[sys.executable, str(EXAMPLES / "chat_script.py")],
    ).start()
    alice, bob = connect(script.url), connect(script.url)
    alice.send("from a script")
    assert bob.recv() == "from a script"
    alice.close()
    bob.close()
    assert script.stop() == 0  # SIGTERM: a clean stop
    assert "=> from a script" in script.output


def test_filter_module_in_the_current_directory_with_drop():
    with ServerProcess(["-f", "shout"], cwd=EXAMPLES, env=ANY_PORT) as server:
        client = connect(server.url)
        client.send("   ")
        client.send("hello")
        assert client.recv() == "HELLO"  # the empty message was dropped, not echoed


def test_token_auth_example_refuses_at_the_handshake():
    env = {**ANY_PORT, "FWS_TOKENS": "s3cret,other"}
    with ServerProcess(
        ["-f", "token_auth", "broadcast_messages"], cwd=EXAMPLES, env=env
    ) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server.url)
        assert info.value.status_code == 401
        alice = connect(server.url + "?token=s3cret")
        bob = connect(server.url, header=["X-Token: other"])
        alice.send("authenticated")
        assert bob.recv() == "authenticated"


def test_token_auth_with_token_groups_routes_by_the_group_never_by_the_secret():
    env = {**ANY_PORT, "FWS_TOKENS": "s3cret"}
    args = ["-f", "token_auth", "broadcast_messages_by_token"]
    with ServerProcess(args, cwd=EXAMPLES, env=env) as server:
        alice = connect(server.url + "?token=s3cret")
        bob = connect(server.url + "?token=s3cret")
        eve = connect(server.url + "?token=s3cret")
        # Authenticated, but in no group yet: the secret is not a group.
        alice.send("hello?")
        assert alice.recv() == "Error: No token has been set"
        eve.send("token:s3cret")  # a group named like the secret hears nothing
        assert eve.recv() == "Successfully registered with broadcast group: s3cret"
        for client in (alice, bob):
            client.send("token:room1")
            assert client.recv() == "Successfully registered with broadcast group: room1"
        alice.send("to room1")
        assert bob.recv() == "to room1"
        eve.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            eve.recv()


def receive_json(client: websocket.WebSocket) -> dict:
    return json.loads(client.recv())


def test_chat_page_and_its_filters_from_one_command():
    with ServerProcess(
        ["--static", ".", "-f", "chat"], cwd=EXAMPLES / "chat", env=ANY_PORT
    ) as server:
        base = f"http://{LOOPBACK}:{server.port}"
        with urllib.request.urlopen(base + "/?room=kitchen") as page:
            assert page.headers["Content-Type"] == "text/html; charset=utf-8"
            assert b'<script src="chat.js"' in page.read()
        with urllib.request.urlopen(base + "/chat.js") as script:
            assert script.headers["Content-Type"] == "application/javascript"
            assert b"innerHTML" not in script.read().replace(b"never innerHTML", b"")

        alice = connect(server.url + "?room=kitchen")
        assert receive_json(alice) == {"type": "welcome", "user": "anonymous", "room": "kitchen"}
        bob = connect(server.url + "?room=kitchen")
        assert receive_json(bob)["type"] == "welcome"
        assert receive_json(alice) == {"type": "joined", "user": "anonymous", "room": "kitchen"}
        carol = connect(server.url + "?room=garden")
        assert receive_json(carol)["room"] == "garden"
        dave = connect(server.url)
        assert receive_json(dave)["room"] == "lobby"

        alice.send(json.dumps({"type": "message", "text": "grüß dich ☃ <b>"}))
        expected = {"type": "message", "user": "anonymous", "room": "kitchen",
                    "text": "grüß dich ☃ <b>"}  # fmt: skip
        assert receive_json(bob) == expected
        assert receive_json(alice) == expected  # the sender too: everyone sees one order
        carol.send(json.dumps({"text": "in the garden"}))
        assert receive_json(carol)["text"] == "in the garden"
        alice.send("not json")
        assert receive_json(alice)["type"] == "error"
        bob.close()
        assert receive_json(alice) == {"type": "left", "user": "anonymous", "room": "kitchen"}
        for client in (carol, dave):  # other rooms heard nothing of the kitchen
            client.settimeout(0.5)
            with pytest.raises(websocket.WebSocketTimeoutException):
                client.recv()
        long_room = connect(server.url + "?room=" + "x" * 257)
        opcode, payload = long_room.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert payload == (1008).to_bytes(2, "big") + b"group name longer than 256 bytes"
