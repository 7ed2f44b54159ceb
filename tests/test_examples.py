"""The examples README.rst shows, run as a user would."""

from __future__ import annotations

import sys
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
