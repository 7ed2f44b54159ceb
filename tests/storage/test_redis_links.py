"""The cluster and sentinel links against real redis-server processes.

Each module-scoped set-up (``redis_cluster``, ``redis_sentinel``) is shared
by the tests here; a test that SIGKILLs a process puts it back afterwards.
The tests run in the test thread, not monkey-patched: the links block, and
one scenario runs again in a ``gevent.monkey.patch_all()`` subprocess.

Measured times (kill -> first delivery) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_topologies import RedisClusterProcesses, RedisSentinelProcesses

from fws.errors import ConfigurationError
from fws.storage.redis.cluster_link import REFRESH_ATTEMPTS, ClusterLink
from fws.storage.redis.cluster_subscriber import failover_pending
from fws.storage.redis.sentinel_link import SentinelLink
from fws.storage.redis.urls import parse_cluster_url, parse_sentinel_url

Subscriber = Any


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def channels_on_distinct_shards(cluster: RedisClusterProcesses, count: int = 3) -> list[str]:
    """fws-style group channels whose slots live on ``count`` different primaries."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < count:
        channel = f"fws:{{g:room{index}}}"
        found.setdefault(cluster.node_for_key(channel).port, channel)
        index += 1
    return list(found.values())


def collect(subscriber: Subscriber, until: float, wanted: int = 1_000_000) -> list[dict[str, Any]]:
    """Messages of type message/smessage until ``until`` (monotonic) or ``wanted`` of them."""
    got: list[dict[str, Any]] = []
    while time.monotonic() < until and len(got) < wanted:
        message = subscriber.get_message(timeout=0.1)
        if message and text(message["type"]) in ("message", "smessage"):
            got.append(message)
    return got


def confirmations(subscriber: Subscriber, count: int, timeout: float = 5) -> list[str]:
    """The next ``count`` (s)subscribe confirmations' channels."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {seen} confirmed"
        message = subscriber.get_message(timeout=0.1)
        if message and text(message["type"]) in ("subscribe", "ssubscribe"):
            seen.append(text(message["channel"]))
    return seen


class Publisher(threading.Thread):
    """Publishes ``n <monotonic time>`` on each channel every 20 ms through ``send``."""

    def __init__(self, send: Any, channels: list[str]) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.channels = channels
        self.done = threading.Event()
        self.errors = 0

    def run(self) -> None:
        number = 0
        while not self.done.is_set():
            for channel in self.channels:
                try:
                    self.send(channel, f"{number} {time.monotonic()}".encode())
                except redis.RedisError:
                    self.errors += 1
            number += 1
            time.sleep(0.02)

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(5)


def resubscribe_until_delivered(
    subscriber: Subscriber,
    channels: list[str],
    raw: list[str],
    deadline: float,
    wanted: str,
    since: float,
) -> tuple[float, int]:
    """Drive a subscriber as the storage will: on a loss, subscribe again (with a short pause).

    Returns (monotonic time of the first message on ``wanted`` that the
    ``Publisher`` sent after ``since``, how many losses were raised).
    Messages sent earlier may still sit in the socket buffer: they prove nothing.
    """
    losses = 0
    while time.monotonic() < deadline:
        try:
            message = subscriber.get_message(timeout=0.1)
        except (redis.ConnectionError, redis.TimeoutError):
            losses += 1
            while time.monotonic() < deadline:
                try:
                    subscriber.subscribe(*channels)
                    if raw:
                        subscriber.subscribe_raw(*raw)
                    break
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.05)
            continue
        if message and text(message["type"]) in ("message", "smessage"):
            sent_at = float(text(message["data"]).split()[1])
            if text(message["channel"]) == wanted and sent_at > since:
                return time.monotonic(), losses
    raise AssertionError(f"no message on {wanted} before the deadline ({losses} losses)")


# -- URLs -------------------------------------------------------------------------


def test_cluster_url_parsing() -> None:
    settings = parse_cluster_url("rediss+cluster://alice:s3cret@10.0.0.1:7000,[::1]:7001,h")
    assert settings.nodes == [("10.0.0.1", 7000), ("::1", 7001), ("h", 6379)]
    assert settings.tls and settings.username == "alice" and settings.password == "s3cret"
    assert "s3cret" not in settings.url and "***" in settings.url
    assert "s3cret" not in repr(settings)


def test_sentinel_url_parsing() -> None:
    settings = parse_sentinel_url("redis+sentinel://:pw@s1:26380,s2/mymaster/2")
    assert settings.nodes == [("s1", 26380), ("s2", 26379)]
    assert (settings.service, settings.db, settings.password) == ("mymaster", 2, "pw")
    assert not settings.tls


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://:hunter2@h:notaport",
        "redis+cluster://:hunter2@h:1/5",
        "redis+cluster://:hunter2@h:1?bogus=1",
        "redis+sentinel://:hunter2@h:1",
        "redis+sentinel://:hunter2@h:1/svc/db",
        "redis+sentinel://:hunter2@h:1/svc/1/extra",
        "redis+sentinel://h:1/svc?sentinel_password=hunter2&bogus=1",
        "http://:hunter2@h:1",
    ],
)
def test_malformed_urls_are_configuration_errors_without_the_password(url: str) -> None:
    parse = parse_sentinel_url if "sentinel" in url else parse_cluster_url
    with pytest.raises(ConfigurationError) as caught:
        parse(url)
    assert "hunter2" not in str(caught.value)
    assert "invalid Redis URL" in str(caught.value)


# -- cluster ----------------------------------------------------------------------

_FAILED = "aaaa 127.0.0.1:7000@17000,host-a {flags} - 0 1 1 connected{slots}"
_REPLICA = "bbbb 127.0.0.1:7001@17001 slave aaaa 0 1 1 connected"
_PROMOTED = "bbbb 127.0.0.1:7001@17001 master - 0 1 3 connected 0-8191"
_OTHER = "cccc 127.0.0.1:7002@17002 myself,master - 0 0 2 connected 8192-16383"


@pytest.mark.parametrize(
    ("flags", "slots", "replica", "pending"),
    [
        ("master,fail", " 0-8191", _REPLICA, True),  # flagged, a replica to promote
        ("master,fail", "", _PROMOTED, True),  # promoted already: no slots left
        ("master,fail?", " 0-8191", _REPLICA, False),  # one node's suspicion only
        ("master", " 0-8191", _REPLICA, False),
        ("master,fail", " 0-8191", _REPLICA.replace("slave", "slave,fail"), False),
        ("master,fail", " 0-8191", "", False),  # no replica: no failover coming
        ("master,fail", " 0-8191", _REPLICA.replace("slave", "slave,nofailover"), False),
    ],
)
def test_failover_pending_reads_cluster_nodes(
    flags: str, slots: str, replica: str, pending: bool
) -> None:
    nodes = "\n".join([_FAILED.format(flags=flags, slots=slots), _OTHER, replica]) + "\n"
    assert failover_pending(nodes, "127.0.0.1:7000") is pending
    assert failover_pending(nodes, "127.0.0.1:7009") is False  # not in the cluster


def test_cluster_link_commands_and_sharded_pubsub(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    assert cluster_link.sharded
    channels = channels_on_distinct_shards(redis_cluster)
    subscriber = cluster_link.subscriber()
    try:
        subscriber.subscribe(*channels)
        assert sorted(confirmations(subscriber, len(channels))) == sorted(channels)
        # Each channel's subscription sits on the primary of its slot.
        for channel in channels:
            node = redis_cluster.node_for_key(channel)
            with node.client() as client:
                assert client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
        other = ClusterLink(redis_cluster.url)
        try:
            for channel in channels:
                assert other.publish(channel, channel.encode() + b"!") == 1
            commands = other.commands()
            commands.set("fws:{s:x}:info", "1")
            assert cluster_link.commands().get("fws:{s:x}:info") == b"1"
        finally:
            other.close()
        got = collect(subscriber, time.monotonic() + 5, wanted=len(channels))
        assert sorted(text(m["data"]) for m in got) == sorted(c + "!" for c in channels)
        assert {text(m["type"]) for m in got} == {"smessage"}
        # Unsubscribing one channel stops its delivery, the others go on.
        subscriber.unsubscribe(channels[0])
        time.sleep(0.2)
        assert cluster_link.publish(channels[0], b"gone") == 0
        assert cluster_link.publish(channels[1], b"still") == 1
        got = collect(subscriber, time.monotonic() + 3, wanted=1)
        assert [text(m["data"]) for m in got] == ["still"]
    finally:
        subscriber.close()


def test_cluster_raw_channels_are_classic_pubsub(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    subscriber = cluster_link.subscriber()
    try:
        subscriber.subscribe_raw("global")
        assert confirmations(subscriber, 1) == ["global"]
        # A classic PUBLISH on any node reaches the subscriber, wherever it is.
        for node in redis_cluster.nodes:
            with node.client() as client:
                client.publish("global", node.name)
        got = collect(subscriber, time.monotonic() + 5, wanted=len(redis_cluster.nodes))
        assert sorted(text(m["data"]) for m in got) == sorted(n.name for n in redis_cluster.nodes)
    finally:
        subscriber.close()


def test_cluster_primary_sigkill_subscriber_resumes_on_promoted_replica(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    """The subscriber raises link-lost once; subscribing again reaches the new primary."""
    channels = channels_on_distinct_shards(redis_cluster)
    victim_channel = channels[0]
    victim = redis_cluster.node_for_key(victim_channel)
    subscriber = cluster_link.subscriber()
    publisher_link = ClusterLink(redis_cluster.url, name="fws-test-publisher")
    try:
        subscriber.subscribe(*channels)
        confirmations(subscriber, len(channels))
        with Publisher(publisher_link.publish, channels):
            assert collect(subscriber, time.monotonic() + 3, wanted=6)
            killed_at = redis_cluster.kill(victim)
            first, losses = resubscribe_until_delivered(
                subscriber, channels, [], time.monotonic() + 30, victim_channel, killed_at
            )
            _, promoted_at = redis_cluster.wait_for_failover(victim)
            # After that, every channel delivers again.
            got = collect(subscriber, time.monotonic() + 2)
        print(
            f"\ncluster: kill -> first delivery on the failed shard {first - killed_at:.2f}s"
            f" (failover agreed by all nodes {promoted_at - killed_at:.2f}s after the kill,"
            f" {losses} link-lost raised)"
        )
        assert losses >= 1, "the loss must be reported, not hidden"
        assert {text(m["channel"]) for m in got} == set(channels)
    finally:
        subscriber.close()
        publisher_link.close()
        redis_cluster.restart(victim)


def test_cluster_reset_refreshes_the_command_slot_table_past_a_hung_primary(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    """After a promotion, no command waits COMMAND_TIMEOUT on the hung primary it replaced.

    The hung node still accepts connections (the kernel does), so a command
    routed by the old slot table would only fail after 5 s. The listener
    resets the link when it has a new session; from then on the table is
    the promoted one.
    """
    key = channels_on_distinct_shards(redis_cluster, 1)[0] + ":key"
    victim = redis_cluster.node_for_key(key)
    client = cluster_link.commands()
    client.set(key, "before")  # the slot table names the victim
    try:
        redis_cluster.kill(victim, pause=True)
        redis_cluster.wait_for_failover(victim)
        cluster_link.node_failed(victim.name)  # as its subscriber reports it
        started = time.monotonic()
        cluster_link.reset(refresh=True)
        client.set(key, "after")
        took = time.monotonic() - started
        print(f"\ncluster: reset and a write after a promotion took {took:.3f} s")
        assert took < 2.0  # COMMAND_TIMEOUT (5 s) without the refresh
        assert client.get(key) == b"after"
    finally:
        redis_cluster.restart(victim)


def test_cluster_reset_reads_a_table_naming_a_live_failed_node_a_bounded_number_of_times(
    redis_cluster: RedisClusterProcesses,
    cluster_link: ClusterLink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refreshed table that still names the failed node is read again, but not for ever.

    The re-reads are for a node that has not heard of a promotion yet. When
    the node was only slow, not replaced, it is still the primary: after
    ``REFRESH_ATTEMPTS`` reads the link says so once and commands go there.
    """
    key = channels_on_distinct_shards(redis_cluster, 1)[0] + ":key"
    owner = redis_cluster.node_for_key(key)
    client = cluster_link.commands()
    client.set(key, "before")
    caplog.set_level("INFO", logger="fws.storage.redis")
    cluster_link.node_failed(owner.name)  # reported silent, yet it answers
    try:
        cluster_link.reset(refresh=True)
    finally:
        cluster_link.node_answered(owner.name)
    gave_up = [r.getMessage() for r in caplog.records if "still names" in r.getMessage()]
    assert gave_up == [
        f"the slot table still names {owner.name} a primary after {REFRESH_ATTEMPTS} reads: "
        "commands go there"
    ]
    client.set(key, "after")
    assert client.get(key) == b"after"
    assert cluster_link.commands().get_node_from_key(key).name == owner.name


def test_cluster_raw_subscription_survives_its_node_dying(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    """Raw channels: link-lost on the node's death, then any other node serves them."""
    subscriber = cluster_link.subscriber()
    holder = None
    try:
        subscriber.subscribe_raw("global")
        confirmations(subscriber, 1)
        # The node holding the raw subscription (PUBSUB NUMSUB counts per node).
        holder = next(
            node
            for node in redis_cluster.nodes
            if node.client().execute_command("PUBSUB", "NUMSUB", "global")[1] == 1
        )
        alive = next(node for node in redis_cluster.nodes if node is not holder)

        def send(channel: str, data: bytes) -> None:
            with alive.client() as client:
                client.publish(channel, data)

        with Publisher(send, ["global"]):
            killed_at = redis_cluster.kill(holder)
            first, losses = resubscribe_until_delivered(
                subscriber, [], ["global"], time.monotonic() + 20, "global", killed_at
            )
        print(f"\ncluster raw channel: kill -> first delivery {first - killed_at:.2f}s")
        assert losses >= 1
    finally:
        subscriber.close()
        if holder is not None and not holder.alive:
            with contextlib.suppress(LookupError):  # it was a replica: nothing to fail over
                redis_cluster.wait_for_failover(holder)
            redis_cluster.restart(holder)


# -- sentinel ---------------------------------------------------------------------


@pytest.fixture
def sentinel_link(redis_sentinel: RedisSentinelProcesses) -> Iterator[SentinelLink]:
    link = SentinelLink(redis_sentinel.url, name="fws-test")
    yield link
    link.close()


def test_sentinel_link_commands_and_pubsub(
    redis_sentinel: RedisSentinelProcesses, sentinel_link: SentinelLink
) -> None:
    assert not sentinel_link.sharded
    commands = sentinel_link.commands()
    commands.set("fws:{s:x}:info", "1")
    with redis_sentinel.primary.client() as client:
        assert client.get("fws:{s:x}:info") == b"1"
    subscriber = sentinel_link.subscriber()
    try:
        subscriber.subscribe("fws:{broadcast}")
        subscriber.subscribe_raw("global")
        assert sorted(confirmations(subscriber, 2)) == ["fws:{broadcast}", "global"]
        assert sentinel_link.publish("fws:{broadcast}", b"hello") == 1
        assert sentinel_link.publish("global", b"raw") == 1
        got = collect(subscriber, time.monotonic() + 3, wanted=2)
        assert [text(m["data"]) for m in got] == ["hello", "raw"]
    finally:
        subscriber.close()


def test_sentinel_command_pool_waits_for_a_free_connection(
    redis_sentinel: RedisSentinelProcesses,
) -> None:
    """Past pool_size a command waits (as on one node) instead of 'Too many connections'."""
    link = SentinelLink(redis_sentinel.url, name="fws-test", pool_size=1)
    try:
        pool = link.commands().connection_pool
        held = pool.get_connection()
        timer = threading.Timer(0.3, pool.release, args=(held,))
        timer.start()
        began = time.monotonic()
        assert link.commands().ping()
        assert time.monotonic() - began >= 0.2
        timer.join()
    finally:
        link.close()


def test_cluster_node_pools_wait_for_a_free_connection(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """Past pool_size a command waits (as on one node) instead of 'Too many connections'."""
    link = ClusterLink(redis_cluster.url, name="fws-test", pool_size=1)
    try:
        client = link.commands()
        node = client.get_node_from_key("fws:{g:pool}")
        pool = node.redis_connection.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        held = pool.get_connection()
        timer = threading.Timer(0.3, pool.release, args=(held,))
        timer.start()
        began = time.monotonic()
        assert client.set("fws:{g:pool}", "x")
        assert time.monotonic() - began >= 0.2
        timer.join()
    finally:
        link.close()


def test_sentinel_failover_commands_and_pubsub_resume_within_5s_of_promotion(
    redis_sentinel: RedisSentinelProcesses, sentinel_link: SentinelLink
) -> None:
    subscriber = sentinel_link.subscriber()
    publisher_link = SentinelLink(redis_sentinel.url, name="fws-test-publisher")
    try:
        subscriber.subscribe("fws:{broadcast}")
        confirmations(subscriber, 1)
        with Publisher(publisher_link.publish, ["fws:{broadcast}"]):
            assert collect(subscriber, time.monotonic() + 2, wanted=3)
            killed_at = redis_sentinel.kill_primary()
            promotion: dict[str, Any] = {}
            waiter = threading.Thread(
                target=lambda: promotion.update(at=redis_sentinel.wait_for_promotion()[1])
            )
            waiter.start()
            first, losses = resubscribe_until_delivered(
                subscriber,
                ["fws:{broadcast}"],
                [],
                time.monotonic() + 30,
                "fws:{broadcast}",
                killed_at,
            )
            waiter.join(30)
        promoted_at = promotion["at"]
        # Commands reach the new primary too.
        deadline = time.monotonic() + 5
        while True:
            try:
                sentinel_link.commands().set("after", "failover")
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        commands_at = time.monotonic()
        print(
            f"\nsentinel: promotion {promoted_at - killed_at:.2f}s after the kill;"
            f" first delivery {first - promoted_at:.2f}s after the promotion,"
            f" commands {commands_at - promoted_at:.2f}s after ({losses} link-lost raised)"
        )
        assert losses >= 1
        assert first - promoted_at < 5
        with redis_sentinel.primary.client() as client:
            assert client.get("after") == b"failover"
    finally:
        subscriber.close()
        publisher_link.close()
        redis_sentinel.restart_old_primary()


# -- gevent -----------------------------------------------------------------------

_GEVENT_SCENARIO = """
from gevent import monkey
monkey.patch_all()
import sys, time
import gevent
from fws.storage.redis.cluster_link import ClusterLink
from fws.storage.redis.sentinel_link import SentinelLink

def run(link, channels, kind):
    subscriber = link.subscriber()
    subscriber.subscribe(*channels)
    got = []
    def listen():
        while len(got) < len(channels):
            message = subscriber.get_message(timeout=0.5)
            if message and message["type"] in (kind, kind.encode()):
                got.append(message["channel"])
    def ticker():
        ticks = 0
        while len(got) < len(channels):
            ticks += 1
            gevent.sleep(0.01)
        return ticks
    listener, tick = gevent.spawn(listen), gevent.spawn(ticker)
    gevent.sleep(0.3)  # the confirmations first
    for channel in channels:
        link.publish(channel, b"x")
    gevent.joinall([listener, tick], timeout=10, raise_error=True)
    assert len(got) == len(channels), got
    # The hub kept running while get_message waited: the links do not block it.
    assert tick.value and tick.value > 5, tick.value
    subscriber.close()
    link.close()

run(ClusterLink(sys.argv[1]), sys.argv[3].split(","), "smessage")
run(SentinelLink(sys.argv[2]), ["fws:{broadcast}"], "message")
print("ok")
"""


def test_links_under_gevent_monkey_patching(
    redis_cluster: RedisClusterProcesses, redis_sentinel: RedisSentinelProcesses
) -> None:
    channels = channels_on_distinct_shards(redis_cluster)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_GEVENT_SCENARIO),
            redis_cluster.url,
            redis_sentinel.url,
            ",".join(channels),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
