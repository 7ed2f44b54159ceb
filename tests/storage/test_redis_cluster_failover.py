"""What the cluster link remembers of a failed node, and what it does with it.

A subscriber that finds a shard primary silent reports it
(``ClusterLink.node_failed``): new clients leave it out of their seeds,
refreshes ask it last, and a subscription whose channel it serves raises
``FailoverPending`` while the cluster flags it failed and a replica is
about to take over; the listener then retries quickly, ``QUICK_RETRIES``
times at most. Pure logic is tested directly; the rest against the
module-scoped ``redis_cluster`` (a test that stops a node restarts it).
"""

from __future__ import annotations

import pytest
from helpers import wait_for
from redis_topologies import RedisClusterProcesses, RedisProcess
from test_redis_links import channels_on_distinct_shards, confirmations

from fws.storage.redis.cluster_link import ClusterLink, seed_lists
from fws.storage.redis.health import BACKOFF_FIRST, Health
from fws.storage.redis.liveness import FailoverPending, PrimarySwitched
from fws.storage.redis.subscriber import QUICK_RETRIES, Listener

SEEDS = [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)]


def listener(link: ClusterLink) -> Listener:
    """A listener on ``link`` that does nothing with what it hears."""

    def nothing(*_args: object) -> None:
        pass

    return Listener(link, Health(link.url, lambda: None), fixed=("fws:{broadcast}",), raw=(),
                    interval=60, on_message=nothing, on_connected=nothing,
                    on_beat=nothing, on_dirty=nothing)  # fmt: skip


# -- pure logic -------------------------------------------------------------------


def test_a_failed_node_is_remembered_until_it_answers_or_another_fails() -> None:
    link = ClusterLink("redis+cluster://127.0.0.1:7000")  # connects on first use only
    assert link.failed_node is None
    link.node_failed("127.0.0.1:7000")
    link.node_answered("127.0.0.1:7001")  # another node answering changes nothing
    assert link.failed_node == "127.0.0.1:7000"
    link.node_failed("127.0.0.1:7001")  # only the last failure is remembered
    assert link.failed_node == "127.0.0.1:7001"
    link.node_answered("127.0.0.1:7001")
    assert link.failed_node is None


@pytest.mark.parametrize(
    ("failed", "lists"),
    [
        (None, [SEEDS]),
        ("127.0.0.1:7009", [SEEDS]),  # not a seed
        ("127.0.0.1:7001", [[SEEDS[0], SEEDS[2]], SEEDS]),  # left out, then asked last
    ],
)
def test_seed_lists_leave_the_failed_node_out_of_the_first_try(
    failed: str | None, lists: list[list[tuple[str, int]]]
) -> None:
    assert seed_lists(SEEDS, failed) == lists


def test_seed_lists_keep_a_failed_node_that_is_the_only_seed() -> None:
    assert seed_lists(SEEDS[:1], "127.0.0.1:7000") == [SEEDS[:1]]


def test_seed_lists_name_seeds_as_redis_py_does() -> None:
    seeds = [("localhost", 7000), ("127.0.0.1", 7001)]  # localhost is 127.0.0.1 in redis-py
    assert seed_lists(seeds, "127.0.0.1:7000") == [[("127.0.0.1", 7001)], seeds]


def test_failover_pending_retries_at_the_first_step_quick_retries_times_at_most() -> None:
    quick = listener(ClusterLink("redis+cluster://127.0.0.1:7000"))  # never connects
    pending = FailoverPending("flagged failed")
    for attempt in range(QUICK_RETRIES):
        assert quick.pause_after(pending) <= BACKOFF_FIRST, attempt
    # No promotion came: the usual backoff, doubling (with jitter, 0.5-1 times the step).
    assert quick.pause_after(pending) >= BACKOFF_FIRST
    assert quick.pause_after(pending) >= 2 * BACKOFF_FIRST
    assert quick.pause_after(PrimarySwitched("a new primary")) <= BACKOFF_FIRST  # it is up


# -- against the cluster ----------------------------------------------------------


def test_a_session_that_connects_allows_quick_retries_again(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    quick = listener(cluster_link)
    pending = FailoverPending("flagged failed")
    for _ in range(QUICK_RETRIES + 2):
        quick.pause_after(pending)
    assert quick.pause_after(pending) > BACKOFF_FIRST
    try:
        quick.connect()  # a session: the next failover may be waited for quickly again
        for attempt in range(3):  # past the first, the usual backoff would be above it
            assert quick.pause_after(pending) <= BACKOFF_FIRST, attempt
    finally:
        quick.drop()


def test_a_new_client_leaves_the_failed_node_out_of_its_seeds(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    failed = redis_cluster.nodes[0].name
    cluster_link.node_failed(failed)
    client = cluster_link.new_client("fws-test-seeds")
    try:
        assert client.ping()
        assert set(client.nodes_manager.startup_nodes) == {
            node.name for node in redis_cluster.nodes[1:]
        }
    finally:
        client.close()
    alone = ClusterLink("redis+cluster://" + failed, name="fws-test-alone")
    alone.node_failed(failed)  # the only seed: asked all the same
    try:
        assert alone.commands().ping()
    finally:
        alone.close()


def test_a_failed_node_that_answers_again_is_subscribed_on_and_forgotten(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    """No FailoverPending for a healthy primary, however it was reported before.

    A hung primary that was replaced and rejoined (as a replica) stays the
    link's failed node: no subscriber hears from a replica. That only
    orders seeds and raw subscriptions; if it is promoted again, the cluster
    does not flag it ``fail``, so its channels are subscribed on as usual,
    and its first answer makes the link forget it.
    """
    (channel,) = channels_on_distinct_shards(redis_cluster, 1)
    owner = redis_cluster.node_for_key(channel)
    cluster_link.node_failed(owner.name)  # e.g. it hung, then came back
    subscriber = cluster_link.subscriber()
    try:
        subscriber.subscribe(channel)
        assert confirmations(subscriber, 1) == [channel]
        assert cluster_link.failed_node is None  # its confirmation was an answer
    finally:
        subscriber.close()


def _flagged_failed_everywhere(redis_cluster: RedisClusterProcesses, node: RedisProcess) -> bool:
    """Whether every live node's ``CLUSTER NODES`` flags ``node`` ``fail``."""
    for other in redis_cluster.nodes:
        if other is node or not other.alive or other.paused:
            continue
        with other.client(decode_responses=True) as client:
            nodes = str(client.execute_command("CLUSTER", "NODES"))
        line = next(line for line in nodes.splitlines() if f" {node.name}@" in line)
        if "fail" not in line.split()[2].split(","):
            return False
    return True


def test_failover_pending_for_a_channel_on_the_hung_primary_then_the_promoted_one(
    redis_cluster: RedisClusterProcesses, cluster_link: ClusterLink
) -> None:
    """The slot table still names the hung primary: FailoverPending at once, not a wait.

    The subscriber's table is read before the SIGSTOP and not refreshed
    (its only subscription is on another shard), so its channel's owner is
    the hung node whether or not the replica was promoted yet; either way
    the cluster flags it ``fail`` with a successor, which is all it asks.
    """
    victim_channel, other_channel = channels_on_distinct_shards(redis_cluster, 2)
    victim = redis_cluster.node_for_key(victim_channel)
    subscriber = cluster_link.subscriber()
    try:
        subscriber.subscribe(other_channel)
        confirmations(subscriber, 1)
        redis_cluster.kill(victim, pause=True)
        wait_for(lambda: _flagged_failed_everywhere(redis_cluster, victim), 10,
                 f"{victim.name} not flagged fail by every live node")  # fmt: skip
        cluster_link.node_failed(victim.name)  # as the subscriber of its channels reports it
        with pytest.raises(FailoverPending):
            subscriber.subscribe(victim_channel)
        # Once promoted, the next try (from a refreshed table) subscribes there.
        promoted, _ = redis_cluster.wait_for_failover(victim)
        subscriber.subscribe(victim_channel, other_channel)
        assert sorted(confirmations(subscriber, 2)) == sorted([victim_channel, other_channel])
        assert redis_cluster.shard_subscribers(victim_channel)[promoted.name] == 1
    finally:
        subscriber.close()
        redis_cluster.restart(victim)
