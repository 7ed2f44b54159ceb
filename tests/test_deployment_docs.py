"""The deployment guide's configurations, run for real: HAProxy, the Redis ACL.

The HAProxy block of docs/deployment.rst is read from the page (so the test
follows the docs), with only what cannot run here swapped out: TLS on :443
becomes a loopback port, the two machines one local fws_server. The Redis ACL
line of the security model is given to a private redis-server.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import websocket
from helpers import (
    LOOPBACK,
    ServerProcess,
    connect,
    free_port,
    haproxy,
    wait_for,
)
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

from fws.cli import build_command
from fws.modules import load_storage_class
from fws.storage.redis import Publisher

DEPLOYMENT = Path(__file__).parent.parent / "docs" / "deployment.rst"

PEER_FILTER = """
from fws import WebSocketOpenFilter


class SayPeer(WebSocketOpenFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        web_socket_instance.send(request.peer[0])
"""


def literal_block(title: str) -> str:
    """The ``::`` block right under section ``title`` of the deployment guide."""
    text = DEPLOYMENT.read_text()
    start = text.index(f"\n{title}\n{'-' * len(title)}\n")
    block = text[start:].partition("::\n\n")[2]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def haproxy_config(front: int, back: int) -> str:
    config = literal_block("HAProxy")
    # What the guide tells operators to keep, checked before it is adapted.
    for needle in ("mode http", "option forwardfor", "timeout tunnel", "balance leastconn",
                   "option httpchk GET /ready"):  # fmt: skip
        assert needle in config, needle
    config = re.sub(r"bind :443 ssl crt \S+", f"bind {LOOPBACK}:{front}", config)
    # The /ready check belongs to the http endpoint's own tests; here the one
    # local server must be up from the start.
    config = config.replace("option httpchk GET /ready\n", "")
    config = re.sub(r"\n *http-check expect status 200", "", config)
    config = re.sub(r"server a \S+ check", f"server a {LOOPBACK}:{back}", config)
    config = re.sub(r"\n *server b \S+ check", "", config)
    assert f"bind {LOOPBACK}:{front}" in config and f"server a {LOOPBACK}:{back}" in config
    return config


@contextlib.contextmanager
def behind_documented_haproxy(tmp_path: Path, fws_args: list[str]) -> Iterator[int]:
    """fws_server with ``fws_args`` behind HAProxy run with the guide's config; yields its port."""
    (tmp_path / "say_peer.py").write_text(PEER_FILTER)
    front, back = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(front, back))
    args = ["--host", LOOPBACK, "-p", str(back), "--close-timeout", "1", *fws_args]
    with ServerProcess(args, cwd=tmp_path).start(port=back), haproxy(config, front):
        yield front


def connect_from(address: str, port: int) -> websocket.WebSocket:
    """A WebSocket client whose TCP source address is ``address`` (another loopback)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5, source_address=(address, 0))
    return connect(f"ws://{LOOPBACK}:{port}/", socket=sock)


def test_documented_haproxy_config_passes_the_upgrade_and_names_the_client(tmp_path):
    fws_args = ["--trusted-proxy", LOOPBACK, "-f", "say_peer", "echo"]
    with behind_documented_haproxy(tmp_path, fws_args) as port:
        # The client speaks from 127.0.0.3, HAProxy from 127.0.0.1: only
        # X-Forwarded-For, believed from the trusted proxy, can name .3.
        client = connect_from("127.0.0.3", port)
        assert client.recv() == "127.0.0.3"
        client.send("through the tunnel")
        assert client.recv() == "through the tunnel"
        client.close()


def test_without_trusted_proxy_the_forwarded_address_is_ignored(tmp_path):
    with behind_documented_haproxy(tmp_path, ["-f", "say_peer"]) as port:
        client = connect_from("127.0.0.3", port)
        assert client.recv() == LOOPBACK  # the proxy's own address, not the header's
        client.close()


def test_the_documented_redis_acl_is_all_fws_needs(redis_server: RedisServer) -> None:  # noqa: F811
    """fws and Publisher work as the guide's ACL user, and Redis logs no denial."""
    line = next(
        line.strip()
        for line in DEPLOYMENT.read_text().splitlines()
        if line.strip().startswith("ACL SETUSER fws ")
    )
    admin = redis_server.client()
    admin.execute_command(*line.replace("LONG-RANDOM-PASSWORD", "s3cret").split())
    url = f"redis://fws:s3cret@{LOOPBACK}:{redis_server.port}/0"
    env = {"FWS_HOST": LOOPBACK, "FWS_PORT": "0", "FWS_CLOSE_TIMEOUT": "1"}
    storage = ["--storage", "redis", "--redis_url", url]
    filters = ["-f", "broadcast_messages_by_token", "broadcast_pubsub"]
    with (
        ServerProcess([*storage, *filters], env=env) as one,
        ServerProcess([*storage, *filters], env=env) as two,
    ):
        alice, bob = connect(one.url), connect(two.url)
        for client in (alice, bob):
            client.send("token:room")
            assert client.recv() == "Successfully registered with broadcast group: room"
        wait_for(lambda: admin.zcard("fws:{g:room}:servers") == 2)
        alice.send("across servers")
        assert bob.recv() == "across servers"
        publisher = Publisher(url, key="fws")
        try:
            assert publisher.send_to_group("room", "from a backend") == 2
            assert publisher.publish("global", "into the consumer pipelines") == 2
        finally:
            publisher.close()
        assert {alice.recv(), alice.recv()} == {"from a backend", "into the consumer pipelines"}
        alice.close()
        bob.close()
        assert one.stop() == 0 and two.stop() == 0
    assert admin.execute_command("ACL", "LOG") == []
    assert "NOPERM" not in one.output + two.output


def test_the_documented_config_file_is_one_fws_server_accepts(tmp_path):
    text = DEPLOYMENT.read_text()
    lines = []
    for line in text[text.index("    # /etc/fws/config.json\n") :].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    config = tmp_path / "config.json"
    config.write_text("\n".join(lines))
    storage = json.loads("\n".join(config.read_text().splitlines()[1:]))["storage"]
    command = build_command(storage, load_storage_class(storage))
    params = command.make_context("fws_server", ["-c", str(config)]).params
    assert params["port"] == 9000
    assert params["origins"] == ("https://chat.example",)
    assert params["trusted_proxies"] == ("127.0.0.1",)
    assert params["filters"] == ("jwt_auth", "chat")
