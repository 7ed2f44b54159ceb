"""The scale-out recipe, proven: HAProxy in front of three fws servers on one Redis.

Everything is real: Debian's ``haproxy`` on a free loopback port, three
``fws_server`` subprocesses with ``--storage redis`` on a test-started
``redis-server``, websocket-client clients through the balancer. A small
filter module tells a client which server (process id) it landed on.

The HAProxy configuration below is the one docs/operations/http.rst gives.
"""

from __future__ import annotations

import contextlib
import csv
import io
import socket
import textwrap
import time
from pathlib import Path

import websocket
from helpers import (
    LOOPBACK,
    ServerProcess,
    accepts,
    connect,
    free_port,
    haproxy,
    require_binary,
    wait_for,
)
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

from fws.storage.redis import KeyLayout

WHOAMI = textwrap.dedent(
    """
    import os

    from fws import DROP
    from fws.events import WebSocketMessageFilter


    class WhoAmI(WebSocketMessageFilter):
        @classmethod
        def filter(cls, connection, data):
            if data == "whoami":
                connection.send(f"pid:{os.getpid()}")
                return DROP
            return None
    """
)

HAPROXY_CFG = """\
global
    maxconn 256
    stats socket {stats_socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # An upgraded WebSocket is a tunnel: idle chats must not be cut at 30 s.
    timeout tunnel 1h
    # A server that refuses (connection failure, or 503 while draining) is
    # retried once on another one: the client does not see it.
    retries 2
    option redispatch
    retry-on conn-failure empty-response 503

frontend websockets
    bind {host}:{port}
    default_backend fws

backend fws
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
"""

DRAIN_DELAY = 8.0


def write_config(path: Path, port: int, backends: list[int]) -> Path:
    servers = "\n".join(
        f"    server fws{n} {LOOPBACK}:{backend} check" for n, backend in enumerate(backends)
    )
    config = path / "haproxy.cfg"
    config.write_text(
        HAPROXY_CFG.format(
            stats_socket=path / "haproxy.sock", host=LOOPBACK, port=port, servers=servers
        )
    )
    return config


def server_states(stats_socket: Path) -> dict[str, str]:
    """Each backend server's status (UP, DOWN...) from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode().lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        row["svname"]: row["status"]
        for row in rows
        if row["pxname"] == "fws" and row["svname"] not in ("BACKEND", "FRONTEND")
    }


def broadcast_followers(redis_server: RedisServer) -> int:  # noqa: F811
    """How many servers are subscribed to fws's cross-server broadcast channel."""
    counts = redis_server.client().pubsub_numsub(KeyLayout().broadcast_channel)
    return int(counts[0][1])


def whoami(client: websocket.WebSocket) -> int:
    client.send("whoami")
    answer = client.recv()
    assert answer.startswith("pid:"), answer
    return int(answer[4:])


def test_haproxy_spreads_clients_that_chat_and_drops_a_draining_server(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    require_binary("haproxy", "apt-get install haproxy")
    (tmp_path / "whoami.py").write_text(WHOAMI)
    args = [
        "--host", LOOPBACK, "-p", "0",
        "--storage", "redis", "--redis-url", redis_server.url,
        "-f", "whoami", "broadcast_messages",
        "--drain-delay", str(DRAIN_DELAY),
    ]  # fmt: skip
    servers = [ServerProcess(args, cwd=tmp_path) for _ in range(3)]
    clients: list[websocket.WebSocket] = []
    try:
        for server in servers:
            server.start()
        pids = {server.process.pid: server for server in servers if server.process}
        port = free_port()
        config = write_config(tmp_path, port, [server.port for server in servers])
        stats = tmp_path / "haproxy.sock"
        with haproxy(config, port):
            wait_for(
                lambda: set(server_states(stats).values()) == {"UP"},
                10,
                "haproxy did not see the three servers up",
            )
            balancer = f"ws://{LOOPBACK}:{port}/"

            # Clients through one port land on the three servers...
            by_pid: dict[int, websocket.WebSocket] = {}
            for _ in range(9):
                client = connect(balancer)
                clients.append(client)
                by_pid.setdefault(whoami(client), client)
            assert set(by_pid) == set(pids), "clients did not land on all three servers"

            # ...and chat with each other across them, through Redis (once each
            # server, having clients now, follows the broadcast channel).
            wait_for(
                lambda: broadcast_followers(redis_server) == 3,
                5,
                "the servers did not all follow the broadcast channel",
            )
            chatters = list(by_pid.values())
            chatters[0].send("hello from the first server")
            for other in chatters[1:]:
                assert other.recv() == "hello from the first server"
            chatters[2].send("and back from the third")
            for other in chatters[:2]:
                assert other.recv() == "and back from the third"

            # SIGTERM one server: during its drain /ready is 503, HAProxy marks
            # it down while its port is still open, and new clients go elsewhere.
            draining = servers[0]
            assert draining.process is not None
            draining.process.terminate()
            started = time.monotonic()
            wait_for(
                lambda: server_states(stats)["fws0"].startswith("DOWN"),
                DRAIN_DELAY,
                "haproxy did not take the draining server out of rotation",
            )
            assert draining.process.poll() is None  # still draining, not gone
            assert accepts(draining.port), "the draining server closed its port early"
            landed = set()
            for _ in range(6):
                client = connect(balancer)
                clients.append(client)
                landed.add(whoami(client))
            assert landed == set(pids) - {draining.process.pid}
            assert time.monotonic() - started < DRAIN_DELAY, "the check ran past the drain"
            assert draining.stop(timeout=DRAIN_DELAY + 10) == 0
            # Its clients were closed with 1001 (going away), through the balancer.
            old_client = by_pid[draining.process.pid]
            old_client.settimeout(5)
            opcode, payload = old_client.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert int.from_bytes(payload[:2], "big") == 1001
            # The two others still chat.
            survivors = [by_pid[servers[1].process.pid], by_pid[servers[2].process.pid]]  # type: ignore[union-attr]
            survivors[0].send("still here")
            assert survivors[1].recv() == "still here"
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close(timeout=1)
        # All at once: each drains for DRAIN_DELAY seconds.
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
        for server in servers:
            if server.process is not None:
                with contextlib.suppress(Exception):
                    server.stop(timeout=DRAIN_DELAY + 10)
                server.__exit__()
