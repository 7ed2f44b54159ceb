"""Several ``fws_server`` processes sharing one Redis behave as one server.

Everything is real: a private redis-server on a free port, fws_server
subprocesses on free ports, websocket-client clients, redis-cli.

The ``check_*`` functions take any Redis set-up with a ``url`` (one node
here; a cluster or a sentinel set-up in ``test_redis_cluster.py``), so the
same scenarios prove the same behaviour on every topology.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import websocket
from helpers import (
    LOOPBACK,
    ServerProcess,
    assert_clean_failure,
    connect,
    free_port,
    fws_server_command,
    raw_upgrade,
    wait_for,
)
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

from fws.storage.redis import POOL_SIZE, Publisher

BASE = ["-p", "0", "--host", LOOPBACK, "--close-timeout", "1"]
REGISTERED = "Successfully registered with broadcast group: {}"
_SERVER_ID = re.compile(r"server id ([0-9a-f]{32})")


def server_id(server: ServerProcess) -> str:
    match = _SERVER_ID.search(server.output)
    assert match, server.output
    return match.group(1)


class RedisSetUp(Protocol):
    """One node, a cluster or a sentinel set-up: what fws_server's --redis-url needs."""

    @property
    def url(self) -> str: ...


@contextlib.contextmanager
def cluster(
    redis: RedisSetUp, count: int, *args: str, env: dict[str, str] | None = None
) -> Iterator[list[ServerProcess]]:
    """``count`` fws_server processes on one Redis set-up; stopped (or killed) at the end."""
    servers: list[ServerProcess] = []
    try:
        for _ in range(count):
            command = [*BASE, "--storage", "redis", "--redis-url", redis.url, *args]
            servers.append(ServerProcess(command, env=env).start())
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop(timeout=10)
            server.__exit__()


def receive_all(client: websocket.WebSocket, quiet: float = 0.5) -> list[str]:
    """Every message until none arrives for ``quiet`` seconds."""
    client.settimeout(quiet)
    received = []
    while True:
        try:
            received.append(client.recv())
        except websocket.WebSocketTimeoutException:
            return received


def join(client: websocket.WebSocket, group: str) -> None:
    client.send(f"token:{group}")
    assert client.recv() == REGISTERED.format(group)


# -- the seed's commands ------------------------------------------------------------


def test_seed_storage_variable_lists_the_redis_options() -> None:
    env = {**os.environ, "STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.redis"}
    result = subprocess.run(
        [*fws_server_command(), "-h"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "--redis_host",
        "--redis_port",
        "--redis_channels",
        "--redis_key",
        "--redis-url",
    ):
        assert option in result.stdout


def test_seed_pubsub_command_and_redis_cli_publish(redis_server: RedisServer) -> None:  # noqa: F811
    env = {"STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.redis"}
    args = [
        *BASE,
        "-f",
        "filtered_websocket.filters.broadcast_pubsub",
        "--redis_channels",
        "global",
        "--redis_host",
        LOOPBACK,
        "--redis_port",
        str(redis_server.port),
    ]
    with ServerProcess(args, env=env) as server, ServerProcess(args, env=env) as other:
        check_raw_publish_reaches_clients(
            [server, other], redis_server.port, redis_server.client().publish
        )


def check_raw_publish_reaches_clients(
    servers: Sequence[ServerProcess], port: int, publish: Callable[[str, bytes], object]
) -> None:
    """``redis-cli -p PORT publish global hello`` (the seed's recipe) reaches every client.

    ``port``: any node the servers use (on a cluster a classic PUBLISH reaches
    them all); ``publish`` sends the non-UTF-8 message, which becomes a binary frame.
    """
    clients = [connect(server.url) for server in servers]
    time.sleep(0.2)
    redis_cli = shutil.which("redis-cli")
    if redis_cli:
        subprocess.run([redis_cli, "-h", LOOPBACK, "-p", str(port), "PUBLISH", "global",
                        "hello"], check=True, capture_output=True, timeout=10)  # fmt: skip
    else:
        publish("global", b"hello")
    publish("global", b"\xff\x00")  # not UTF-8: a binary frame
    for client in clients:
        assert client.recv() == "hello"
        assert client.recv() == b"\xff\x00"
        client.close()


def test_json_config_with_redis_options(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    config = tmp_path / "config.json"
    config.write_text(
        "# a comment line\n"
        + json.dumps(
            {
                "storage": "redis",
                "host": LOOPBACK,
                "port": "0",
                "filters": [
                    "filtered_websocket.filters.broadcast_messages_by_token",
                    "filtered_websocket.filters.stdout_messages",
                ],
                "redis_host": LOOPBACK,
                "redis_port": str(redis_server.port),
                "redis_channels": ["global", "news"],
                "redis_key": "cfg",
            }
        )
    )
    with ServerProcess(["-c", str(config)]) as a, ServerProcess(["-c", str(config)]) as b:
        first, second = connect(a.url), connect(b.url)
        join(first, "room")
        join(second, "room")
        first.send("across servers")
        assert second.recv() == "across servers"
        assert redis_server.client().keys("cfg:{g:room}:members:*")
        assert "channels global news" in a.output
        first.close()
        second.close()


def test_modern_spellings_and_environment(redis_server: RedisServer) -> None:  # noqa: F811
    env = {
        "FWS_REDIS_URL": redis_server.url,
        "FWS_REDIS_CHANNELS": "alpha beta",
        "FWS_REDIS_KEY": "envkey",
    }
    with ServerProcess([*BASE, "--storage", "redis", "-f", "broadcast_pubsub"], env=env) as server:
        client = connect(server.url)
        time.sleep(0.2)
        redis_server.client().publish("beta", "via env")
        assert client.recv() == "via env"
        assert "key prefix 'envkey'" in server.output
        client.close()


# -- delivery across servers -------------------------------------------------------


def test_broadcast_exactly_once_across_servers_never_to_sender(redis_server: RedisServer) -> None:  # noqa: F811
    check_broadcast_exactly_once(redis_server)


def check_broadcast_exactly_once(redis: RedisSetUp, servers: int = 3) -> None:
    """Every client of ``servers`` servers broadcasts once: all others get it, once."""
    with cluster(redis, servers, "-f", "broadcast_messages") as processes:
        clients = [connect(server.url) for server in processes for _ in range(3)]
        time.sleep(0.3)
        for number, client in enumerate(clients):
            client.send(f"from {number}")
        for number, client in enumerate(clients):
            received = Counter(receive_all(client))
            expected = Counter(f"from {n}" for n in range(len(clients)) if n != number)
            assert received == expected, f"client {number}"
        for client in clients:
            client.close()


def test_token_groups_exactly_once_across_servers(redis_server: RedisServer) -> None:  # noqa: F811
    def subscribers(channel: str) -> int:
        with redis_server.client() as client:
            return int(client.pubsub_numsub(channel)[0][1])

    check_token_groups_exactly_once(redis_server, ("red", "blue"), subscribers)


def check_token_groups_exactly_once(
    redis: RedisSetUp, names: Sequence[str], subscribers: Callable[[str], int]
) -> None:
    """Three clients per group of ``names``, group ``k`` on servers ``0..k`` (of three).

    Each member's message reaches every other member of its group once,
    nobody else; and only the servers hosting a group follow its channel:
    ``subscribers(channel)`` (PUBSUB NUMSUB, SHARDNUMSUB on a cluster) is the
    number of hosting servers, then 0 once every member has left.
    """
    with cluster(redis, 3, "-f", "broadcast_messages_by_token") as servers:
        groups: dict[str, list[websocket.WebSocket]] = {}
        hosts: dict[str, set[int]] = {}
        for k, group in enumerate(names):
            placement = [0, min(k, 1), min(k, 2)]
            hosts[group] = set(placement)
            groups[group] = [connect(servers[index].url) for index in placement]
            for client in groups[group]:
                join(client, group)
        for group, members in groups.items():
            for number, client in enumerate(members):
                client.send(f"{group} {number}")
        for group, members in groups.items():
            for number, client in enumerate(members):
                expected = Counter(f"{group} {n}" for n in range(len(members)) if n != number)
                assert Counter(receive_all(client)) == expected, (group, number)
        for group in names:
            channel = f"fws:{{g:{group}}}"
            assert subscribers(channel) == len(hosts[group]), (group, sorted(hosts[group]))
        for members in groups.values():
            for client in members:
                client.close()
        for group in names:
            channel = f"fws:{{g:{group}}}"
            wait_for(lambda channel=channel: subscribers(channel) == 0, 5, f"{channel} followed")


def test_publish_messages_and_broadcast_pubsub_make_a_cluster_chat(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    check_publish_messages_chat(redis_server)


def check_publish_messages_chat(redis: RedisSetUp) -> None:
    """publish_messages + broadcast_pubsub: a chat through the raw channel ``global``."""
    with cluster(redis, 2, "-f", "publish_messages", "broadcast_pubsub") as servers:
        clients = [connect(server.url) for server in servers for _ in range(2)]
        time.sleep(0.2)
        clients[0].send("chat line")
        for client in clients:  # the sender too: its message comes back like everyone's
            assert receive_all(client) == ["chat line"]
            client.close()


def test_backend_targets_one_group_or_one_client(redis_server: RedisServer) -> None:  # noqa: F811
    check_backend_targets_one_group_or_one_client(redis_server)


def check_backend_targets_one_group_or_one_client(redis: RedisSetUp) -> None:
    """A ``Publisher`` on ``redis.url`` reaches a group's members on two servers, or one client."""
    with cluster(redis, 2, "-f", "broadcast_messages_by_token") as servers:
        in_room = [connect(servers[0].url), connect(servers[1].url)]
        outsider = connect(servers[1].url)
        for client in in_room:
            join(client, "room")
        join(outsider, "hall")
        backend = Publisher(redis.url)
        try:
            members = backend.group_members("room")
            assert len(members) == 2
            assert backend.send_to_group("room", "to the room") == 2
            for client in in_room:
                assert receive_all(client) == ["to the room"]
            assert receive_all(outsider) == []
            (hall_member,) = backend.group_members("hall")
            assert backend.send_to_client(hall_member, "just you") is True
            assert receive_all(outsider) == ["just you"]
            assert all(receive_all(client) == [] for client in in_room)
            assert backend.send_to_client("no-such-client", "lost") is False
            assert backend.broadcast("to everyone") == 2  # both servers
            for client in [*in_room, outsider]:
                assert receive_all(client) == ["to everyone"]
        finally:
            backend.close()
        for client in [*in_room, outsider]:
            client.close()


# -- failures ---------------------------------------------------------------------


def test_redis_restart_under_traffic(redis_server: RedisServer) -> None:  # noqa: F811
    with cluster(redis_server, 2, "-f", "broadcast_messages_by_token") as (a, b):
        sender, neighbour, remote = connect(a.url), connect(a.url), connect(b.url)
        for client in (sender, neighbour, remote):
            join(client, "room")
        sender.send("before")
        assert remote.recv() == "before" and neighbour.recv() == "before"

        redis_server.stop()
        for number in range(30):
            sender.send(f"during {number}")
        # local delivery never stopped
        assert receive_all(neighbour) == [f"during {n}" for n in range(30)]
        assert receive_all(remote, quiet=0.2) == []

        redis_server.start()
        started = time.monotonic()
        remote.settimeout(0.2)
        while True:  # cross-server delivery resumes by itself
            sender.send("after")
            try:
                if remote.recv() == "after":
                    break
            except websocket.WebSocketTimeoutException:
                pass
            assert time.monotonic() - started < 8, "pub/sub did not resume"
        resumed = time.monotonic() - started
        backend = Publisher(redis_server.url)
        try:
            wait_for(lambda: len(backend.group_members("room")) == 3, 5, "groups not rewritten")
        finally:
            backend.close()
        for server in (a, b):
            wait_for(lambda server=server: "is back" in server.output, 5, server.output)
            assert server.output.count("unreachable") == 1, server.output
        assert resumed < 8
        for client in (sender, neighbour, remote):
            client.close()


def test_sigterm_with_a_hung_redis_exits_cleanly(redis_server: RedisServer) -> None:  # noqa: F811
    # Redis stops answering (SIGSTOP) but keeps its connections open: every
    # clean-up write at shutdown times out. The server must still exit 0, and
    # log no traceback from writes cut short when the storage closes.
    with cluster(redis_server, 1, "-f", "broadcast_messages_by_token") as (server,):
        clients = [connect(server.url) for _ in range(20)]
        for client in clients[:10]:
            join(client, "room")
        silent = [raw_upgrade(server.port) for _ in range(100)]
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(3)  # the heartbeat and the listener are stuck by now
            assert server.stop(timeout=30) == 0
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert "Traceback" not in server.output, server.output
        assert "internal error" not in server.output, server.output
        for client in clients:
            client.close()
        for sock in silent:
            sock.close()


def test_sigkilled_server_members_are_purged(redis_server: RedisServer) -> None:  # noqa: F811
    check_sigkilled_server_members_are_purged(redis_server, redis_server.client().keys)


def check_sigkilled_server_members_are_purged(
    redis: RedisSetUp, keys: Callable[[str], list[bytes]]
) -> None:
    """A SIGKILLed server's members and keys are gone within its ``--redis_ttl`` (2 s)."""
    with cluster(redis, 2, "-f", "broadcast_messages_by_token", "--redis_ttl", "2") as (
        doomed,
        survivor,
    ):
        victims = [connect(doomed.url), connect(doomed.url)]
        keeper = connect(survivor.url)
        for client in [*victims, keeper]:
            join(client, "room")
        backend = Publisher(redis.url)
        try:
            assert len(backend.group_members("room")) == 3
            doomed_id = server_id(doomed)
            doomed.stop(sig=signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: len(backend.group_members("room")) == 1, 6, "ghost members stayed")
            wait_for(lambda: not keys(f"*{doomed_id}*"), 6, "keys stayed")
            assert time.monotonic() - killed < 6
            assert backend.servers() == {server_id(survivor)}
            assert backend.send_to_group("room", "x") == 1  # the dead inbox is skipped
            assert receive_all(keeper) == ["x"]
        finally:
            backend.close()
        keeper.close()


def test_start_up_fails_clearly_without_redis() -> None:
    port = free_port()
    for url, message in ((f"redis://{LOOPBACK}:{port}/0", "cannot reach Redis"),
                         (f"redis+cluster://{LOOPBACK}:{port}", "cannot reach Redis"),
                         (f"redis+sentinel://{LOOPBACK}:{port}/mymaster",
                          "No master found for 'mymaster'"),
                         ("http://nowhere/0", "invalid Redis URL")):  # fmt: skip
        result = subprocess.run(
            [*fws_server_command(), *BASE, "--storage", "redis", "--redis-url", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        output = assert_clean_failure(result, 2, message)
        # One short line: not the reprs of redis-py's clients, not the URL twice.
        (line,) = [text for text in output.splitlines() if text.startswith("Error:")]
        assert len(line) < 300 and line.count(url) == 1 and "<redis." not in line, line


def test_rediss_url_talks_tls_to_redis(tmp_path: Path) -> None:
    tls_redis = RedisServer(tmp_path, tls=True).start()
    try:
        args = [*BASE, "--storage", "redis", "--redis-url", tls_redis.url]
        args += ["-f", "broadcast_pubsub"]
        with ServerProcess(args) as server:
            client = connect(server.url)
            time.sleep(0.2)
            tls_redis.client().publish("global", "over tls")
            assert client.recv() == "over tls"
            assert "rediss://" in server.output
        # A plain redis:// URL to the TLS port fails at start-up, clearly.
        plain = f"redis://{LOOPBACK}:{tls_redis.port}/0"
        result = subprocess.run(
            [*fws_server_command(), *BASE, "--storage", "redis", "--redis-url", plain],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert_clean_failure(result, 2, "cannot reach Redis")
    finally:
        tls_redis.stop()


def test_clients_coming_and_going_do_not_leak_redis_connections(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    with cluster(redis_server, 1, "-f", "broadcast_messages_by_token") as (server,):
        sid = server_id(server)
        counts = []
        for _wave in range(3):
            clients = [connect(server.url) for _ in range(40)]
            for number, client in enumerate(clients):
                client.send(f"token:g{number % 5}")
            for client in clients:
                client.recv()
                client.close()
            names = [entry["name"] for entry in redis_server.client().client_list()]
            assert names.count(f"fws-{sid}-pubsub") == 1
            counts.append(names.count(f"fws-{sid}"))
        # The pool grows with concurrency (on a loaded machine in a later wave
        # too) up to its cap of 32; a connection leaked per client would pass
        # the cap in the first wave and starve the later ones, whose token
        # joins and answers above would then fail.
        assert all(1 <= count <= POOL_SIZE for count in counts), counts
        wait_for(lambda: not redis_server.client().keys("fws:{g:*"), 5, "members left over")


def test_chat_rooms_span_servers(redis_server: RedisServer) -> None:  # noqa: F811
    """Connection.join is backed by the storage: a room spans the servers."""
    chat = Path(__file__).parent.parent / "examples" / "chat"
    args = [*BASE, "--storage", "redis", "--redis-url", redis_server.url, "-f", "chat"]
    with ServerProcess(args, cwd=chat) as one, ServerProcess(args, cwd=chat) as two:
        alice = connect(one.url + "?room=kitchen")
        assert json.loads(alice.recv())["type"] == "welcome"
        # Once alice's join returned, her server follows the room: bob's
        # "joined", published by the other server, reaches her.
        bob = connect(two.url + "?room=kitchen")
        carol = connect(two.url + "?room=garden")
        for client in (bob, carol):
            assert json.loads(client.recv())["type"] == "welcome"
        assert json.loads(alice.recv())["type"] == "joined"  # bob, from the other server
        alice.send(json.dumps({"text": "über Redis"}))
        for client in (alice, bob):
            # Room notices travel through Redis too: bob may yet hear that alice joined.
            received = json.loads(client.recv())
            while received["type"] == "joined":
                received = json.loads(client.recv())
            assert received["text"] == "über Redis"
        bob.close()
        assert json.loads(alice.recv())["type"] == "left"
        assert receive_all(carol) == []


def test_nothing_published_after_an_upgrade_or_a_join_is_missed(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """A client whose upgrade completed gets every broadcast sent after that, even
    the first client of an empty server; a member whose join returned gets every
    group message sent after that. Repeated: a race would show within 20 rounds."""
    with cluster(redis_server, 2, "-f", "broadcast_messages") as (a, b):
        sender = connect(a.url)
        for number in range(20):
            newcomer = connect(b.url)  # b's only client: b was empty before
            sender.send(f"hello {number}")
            newcomer.settimeout(5)
            assert newcomer.recv() == f"hello {number}"
            newcomer.close()
            wait_for(lambda: closed(b), 5, "b kept its client")
        sender.close()
    with cluster(redis_server, 2, "-f", "broadcast_messages_by_token") as (a, b):
        sender, member = connect(a.url), connect(b.url)
        for number in range(20):
            join(sender, f"room{number}")
            join(member, f"room{number}")  # the answer comes once the join returned
            sender.send(f"to room{number}")
            member.settimeout(5)
            assert member.recv() == f"to room{number}"
        sender.close()
        member.close()


def closed(server: ServerProcess) -> bool:
    """Every connection the server opened has ended (as its log says)."""
    return server.output.count(" opened from ") == server.output.count(" closed: code ")
