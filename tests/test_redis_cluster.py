"""fws on a Redis Cluster, end to end: real nodes, real fws_server processes, real clients.

The six-node cluster (three shards) is the module-scoped ``redis_cluster``
fixture; a test that kills a node restarts it (it rejoins as a replica), one
that moves a slot moves it back. The scenarios are the single-Redis ones of
``test_cluster.py`` (its ``check_*`` functions), run against
``redis+cluster://``, plus what only a cluster has: groups on different
shards, a shard's primary SIGKILLed or SIGSTOPped (hung: nothing answers,
nothing closes) under traffic, and a busy group's slot migrated to another
primary under traffic.

Measured times are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator

import pytest
import websocket
from helpers import connect, wait_for
from redis.cluster import RedisCluster, key_slot
from redis_topologies import RedisClusterProcesses
from test_cluster import (
    BASE,
    ServerProcess,
    check_backend_targets_one_group_or_one_client,
    check_broadcast_exactly_once,
    check_publish_messages_chat,
    check_raw_publish_reaches_clients,
    check_sigkilled_server_members_are_purged,
    check_token_groups_exactly_once,
    cluster,
    join,
    receive_all,
)

from fws.storage.redis import KeyLayout, Publisher

LAYOUT = KeyLayout("fws")


def groups_on_distinct_shards(
    redis_cluster: RedisClusterProcesses, count: int, prefix: str = "room"
) -> list[str]:
    """Group names whose channels (``fws:{g:NAME}``) live on ``count`` different primaries."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < count:
        name = f"{prefix}{index}"
        found.setdefault(redis_cluster.node_for_key(LAYOUT.group_channel(name)).port, name)
        index += 1
    names = list(found.values())
    slots = {key_slot(LAYOUT.group_channel(name).encode()) for name in names}
    assert len(slots) == count
    return names


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterProcesses) -> Iterator[RedisCluster]:
    client = RedisCluster(startup_nodes=None, host=redis_cluster.nodes[0].address[0],
                          port=redis_cluster.nodes[0].port)  # fmt: skip
    yield client
    client.close()


def cluster_keys(client: RedisCluster, pattern: str) -> list[bytes]:
    """KEYS ``pattern`` on every primary."""
    found = client.keys(pattern, target_nodes=RedisCluster.PRIMARIES)
    return list(found)


def test_broadcast_reaches_every_client_but_the_sender_once(
    redis_cluster: RedisClusterProcesses,
) -> None:
    check_broadcast_exactly_once(redis_cluster)


def test_token_groups_on_three_shards_exactly_once(redis_cluster: RedisClusterProcesses) -> None:
    names = groups_on_distinct_shards(redis_cluster, 3)

    def subscribers(channel: str) -> int:
        """SHARDNUMSUB on the channel's primary; no other node may have a subscriber."""
        counts = redis_cluster.shard_subscribers(channel)
        owner = redis_cluster.node_for_key(channel).name
        assert sum(counts.values()) == counts[owner], counts
        return counts[owner]

    check_token_groups_exactly_once(redis_cluster, names, subscribers)


def test_publisher_with_the_cluster_url(redis_cluster: RedisClusterProcesses) -> None:
    check_backend_targets_one_group_or_one_client(redis_cluster)


def test_seed_broadcast_pubsub_and_redis_cli_publish_on_any_node(
    redis_cluster: RedisClusterProcesses, cluster_client: RedisCluster
) -> None:
    args = [*BASE, "--storage", "redis", "--redis-url", redis_cluster.url,
            "-f", "broadcast_pubsub", "--redis_channels", "global"]  # fmt: skip
    with ServerProcess(args) as one, ServerProcess(args) as two:
        # redis-cli on the last node, a Publisher (classic PUBLISH) for the binary one
        publisher = Publisher(redis_cluster.url)
        try:
            check_raw_publish_reaches_clients(
                [one, two], redis_cluster.nodes[-1].port, publisher.publish
            )
        finally:
            publisher.close()
            for server in (one, two):  # cleanly: a later test counts the live servers
                server.stop()


def test_publish_messages_and_broadcast_pubsub_chat(redis_cluster: RedisClusterProcesses) -> None:
    check_publish_messages_chat(redis_cluster)


def test_sigkilled_server_is_purged_from_the_cluster(
    redis_cluster: RedisClusterProcesses, cluster_client: RedisCluster
) -> None:
    check_sigkilled_server_members_are_purged(
        redis_cluster, lambda pattern: cluster_keys(cluster_client, pattern)
    )


class Traffic(threading.Thread):
    """Sends ``N`` every 20 ms on ``client``; remembers when each was sent."""

    def __init__(self, client: websocket.WebSocket) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.sent: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.done.is_set():
            self.sent[number] = time.monotonic()
            self.client.send(str(number))
            number += 1
            self.done.wait(0.02)

    def stop(self) -> None:
        """No more sends once this returns (idempotent)."""
        self.done.set()
        self.join(5)


def first_delivery_after(
    receiver: websocket.WebSocket, traffic: Traffic, after: float, timeout: float
) -> float:
    """When ``receiver`` first got a message that was sent after ``after`` (monotonic)."""
    receiver.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            number = int(receiver.recv())
        except websocket.WebSocketTimeoutException:
            continue
        if traffic.sent.get(number, 0.0) > after:
            return time.monotonic()
    raise AssertionError(f"no delivery within {timeout} s")


@contextlib.contextmanager
def busy_group(
    redis_cluster: RedisClusterProcesses, busy: str
) -> Iterator[tuple[list[ServerProcess], websocket.WebSocket, Traffic]]:
    """Two servers with a member of ``busy`` each, one sending every 20 ms; flowing on entry.

    Yields the servers, the receiving client and the traffic (``stop()`` it
    before reading the receiver for anything else).
    """
    with cluster(redis_cluster, 2, "-f", "broadcast_messages_by_token") as servers:
        sender, receiver = connect(servers[0].url), connect(servers[1].url)
        join(sender, busy)
        join(receiver, busy)
        traffic = Traffic(sender)
        traffic.start()
        try:
            first_delivery_after(receiver, traffic, time.monotonic(), 5)
            yield servers, receiver, traffic
        finally:
            traffic.stop()
            sender.close()
            receiver.close()


def check_group_reachable(
    redis_cluster: RedisClusterProcesses, busy: str, receiver: websocket.WebSocket
) -> None:
    """Both members are in Redis (again) and a Publisher's group message reaches them."""
    backend = Publisher(redis_cluster.url)
    try:
        wait_for(lambda: len(backend.group_members(busy)) == 2, 10, "members not in Redis")
        receive_all(receiver, quiet=0.3)
        assert backend.send_to_group(busy, "reachable") == 2
        assert receive_all(receiver) == ["reachable"]
    finally:
        backend.close()


RESUME_AFTER_PROMOTION = {"kill": 5.0, "stop": 5.0}
"""A shard primary's failure: delivery resumes and every server is back this soon after promotion.

Back means the outage is over: subscribed again and this server's state
rewritten; a server publishes to the others only then. A hung
(SIGSTOPped) primary resets nothing: it is noticed 2-3 s after it stopped
(PUBSUB_SILENCE), a reconnection meanwhile does not subscribe on the node
the cluster flags failed, and the command client's slot table is refreshed
with the new session. Measured 0.04-1.4 s (both cores kept busy
included), the last server back as soon; a SIGKILLed one 0.2-1.6 s.
Before that refresh, the snapshot that ends an outage waited
COMMAND_TIMEOUT on the hung node: servers were back 5.3-13.2 s after the
promotion, and delivery resumed once 11.17 s after it in CI. (The issue's
5 s is Sentinel's, which tests/test_redis_sentinel.py asserts for both.)
"""
_LOST = re.compile(r"(\d+) message\(s\) for other servers could not be sent meanwhile")


@pytest.mark.parametrize("failure", ["kill", "stop"])
def test_shard_primary_failure_under_traffic_delivery_resumes(
    redis_cluster: RedisClusterProcesses, failure: str
) -> None:
    """SIGKILL (sockets reset) or SIGSTOP (hung, nothing answers) of a busy group's shard."""
    (busy,) = groups_on_distinct_shards(redis_cluster, 1, prefix="busy")
    victim = redis_cluster.node_for_key(LAYOUT.group_channel(busy))
    try:
        with busy_group(redis_cluster, busy) as (servers, receiver, traffic):
            killed = redis_cluster.kill(victim, pause=failure == "stop")
            promoted_node, promoted = redis_cluster.wait_for_failover(victim)
            delivered = first_delivery_after(receiver, traffic, killed, 20)
            back = [  # when each server's outage was seen over (at the earliest, now)
                wait_for(lambda server=server: "is back" in server.output, 20, server.output)
                and time.monotonic()
                for server in servers
            ]
            traffic.stop()
            print(
                f"\ncluster: SIG{failure.upper()} of {victim.name} -> {promoted_node.name} "
                f"promoted {promoted - killed:.2f} s later, first delivery "
                f"{delivered - promoted:.2f} s after the promotion "
                f"({delivered - killed:.2f} s after the SIG{failure.upper()}), servers back "
                + ", ".join(f"{when - promoted:.2f}" for when in back)
                + " s after the promotion"
            )
            assert delivered - promoted < RESUME_AFTER_PROMOTION[failure]
            assert max(back) - promoted < RESUME_AFTER_PROMOTION[failure], servers[1].output
            check_group_reachable(redis_cluster, busy, receiver)  # the state was rewritten
            for server in servers:
                assert server.output.count("unreachable") == 1, server.output  # logged once
            lost = _LOST.search(servers[0].output)  # the sender's server could not publish
            assert lost and int(lost.group(1)) > 0, servers[0].output
    finally:
        redis_cluster.restart(victim)


def test_slot_migration_under_traffic_moves_the_subscriptions(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """The slot of a busy group's channel and keys moves to another primary mid-traffic.

    The old owner pushes ``sunsubscribe`` for the slot's channels; each server
    must resubscribe where the slot now lives, and its keys (migrated with the
    slot) must still answer ``group_members``.
    """
    (busy,) = groups_on_distinct_shards(redis_cluster, 1, prefix="migrating")
    channel = LAYOUT.group_channel(busy)
    slot = key_slot(channel.encode())
    source = redis_cluster.node_for_key(channel)
    target = next(node for node in redis_cluster.primaries() if node is not source)
    with busy_group(redis_cluster, busy) as (servers, receiver, traffic):
        began = time.monotonic()
        redis_cluster.move_slot(slot, target)
        moved = time.monotonic()
        delivered = first_delivery_after(receiver, traffic, moved, 10)
        traffic.stop()
        print(
            f"\ncluster: slot {slot} moved {source.name} -> {target.name} in "
            f"{moved - began:.2f} s, first delivery {delivered - moved:.2f} s after"
        )
        assert redis_cluster.node_for_key(channel) is target
        for server in servers:  # the migration itself was seen, not some other blip
            wait_for(lambda server=server: "(slot moved)" in server.output, 5, server.output)
        wait_for(lambda: redis_cluster.shard_subscribers(channel)[target.name] == 2, 10,
                 f"not resubscribed on {target.name}")  # fmt: skip
        assert redis_cluster.shard_subscribers(channel)[source.name] == 0
        check_group_reachable(redis_cluster, busy, receiver)
        for server in servers:  # cleanly: nothing of theirs is left in the slot
            server.stop()
    redis_cluster.move_slot(slot, source)  # the fixture's layout for the next tests
