"""The Redis Cluster pub/sub session: sharded fws channels, classic raw channels.

fws's channels are SSUBSCRIBEd, each on the primary of its slot; the raw
``--redis_channels`` are SUBSCRIBEd on one node, any node (a classic
PUBLISH on a cluster reaches every node).

What redis-py 8.1 does on a topology change, as read in ``redis/cluster.py``
and measured against real clusters (``tests/storage/test_redis_links.py``):

- ``ClusterPubSub`` keeps one ``PubSub`` per node. When the node of a shard
  channel dies, that per-node pubsub raises ConnectionError on every
  ``get_sharded_message`` for ever: nothing refreshes the topology for it.
  Only when the *same* ``RedisCluster`` refreshes its slot table (for example
  after one of its commands failed) does ``on_slots_changed`` move the
  channels, on a worker thread of its own (``reinitialize_shard_subscriptions``
  in a ThreadPoolExecutor), racing the thread that reads messages; and
  ``initialize()`` also disconnects the healthy nodes' pubsub connections,
  which then resubscribe silently (messages published meanwhile are lost
  without anyone knowing).
- A slot migrated away makes the old node push ``sunsubscribe`` for the
  channels of that slot; ``get_sharded_message`` hands it to the caller and
  leaves the channel tracked on the old node.

So the subscriber here does not let redis-py resubscribe behind fws's back:
each ``Subscriber`` has its own ``RedisCluster`` (its slot table is refreshed
only by the subscriber, so redis-py's reconciliation thread never runs, as
there are no tracked channels whenever it refreshes), and any loss (a node's
connection failing, or an ``sunsubscribe`` fws did not ask for) tears the
whole session down and raises ``redis.ConnectionError``. The storage then
subscribes again (the topology is refreshed first) and resyncs, and counts
the outage: at most once, but never silently less. A shard primary that
hangs instead of closing is caught per node connection by :mod:`.liveness`
(silent for ``PUBSUB_SILENCE`` s) and reported to the link
(``ClusterLink.node_failed``): every later refresh asks that node last,
until it answers a subscriber again.

Until its replica is promoted, the slot table still names the hung node,
and the kernel still accepts connections to it: a subscription sent there
would give up only after ``PUBSUB_SILENCE`` (measured: 2.0 s lost in half
the reconnections, plus a backoff). So when the primary of a channel to
subscribe is the node that failed, the subscriber first asks another node
whether the cluster flags it ``fail`` with a replica to take over; if so it
raises :class:`~.liveness.FailoverPending` at once, and the listener tries
again a moment later.

No gevent here: the storage's greenlets call these blocking methods in a
monkey-patched process; the Publisher uses them in a plain one.

The subscriber reads redis-py internals (``ClusterPubSub.node_pubsub_mapping``,
``get_sharded_message(target_node=...)``, ``Connection._sock``): hence
``redis>=8.1`` in setup.cfg, the version this was written and measured against.
"""

from __future__ import annotations

import random
import select
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.client import PubSub
from redis.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.exceptions import RedisClusterException

from .liveness import FailoverPending, Heard, Silent

if TYPE_CHECKING:
    from .cluster_link import ClusterLink

__all__ = ["ClusterSubscriber", "cluster_error", "failover_pending"]


def cluster_error(exc: Exception) -> redis.ConnectionError:
    """``RedisClusterException`` (no seed answers, slots uncovered) as a ConnectionError.

    The storage treats ConnectionError as "Redis unreachable, retry with
    backoff"; RedisClusterException is not one, so it is translated here.
    """
    error = redis.ConnectionError(str(exc))  # callers name the URL
    error.__cause__ = exc
    return error


def failover_pending(nodes: str, name: str) -> bool:
    """Whether ``CLUSTER NODES`` output ``nodes`` says primary ``name`` failed and is replaced.

    That is: ``name`` is flagged ``fail`` (a majority of primaries agreed,
    not one node's ``fail?`` suspicion), and either a replica of it that is
    not failing too will be promoted, or it serves no slot any more (its
    replica was promoted already; the caller's slot table is older). A
    failed primary with no replica and its slots is no failover (nor is one
    whose replicas are flagged ``nofailover``): waiting for one would be
    pointless. ``name`` is ``host:port``, as in redis-py's
    node names.
    """
    failed_id: str | None = None
    owns_slots = False
    replicas_of: dict[str, list[set[str]]] = {}
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, primary = fields[0], fields[1], fields[3]
        flags = set(fields[2].split(","))
        if address.split("@", 1)[0] == name:
            if "master" not in flags or "fail" not in flags:
                return False
            failed_id, owns_slots = node_id, len(fields) > 8
        elif primary != "-":
            replicas_of.setdefault(primary, []).append(flags)
    if failed_id is None:
        return False
    if not owns_slots:
        return True
    return any(
        not flags & {"fail", "fail?", "nofailover"} for flags in replicas_of.get(failed_id, [])
    )


class ClusterSubscriber:
    """Sharded channels through ``ClusterPubSub``, raw channels through one classic PubSub.

    On any loss ``get_message``/``ping`` tear the session down and raise
    ``redis.ConnectionError``: afterwards the subscriber holds no
    subscriptions, and ``subscribe``/``subscribe_raw`` (on this object or a
    new one) start over from a refreshed slot table.
    """

    def __init__(self, link: ClusterLink, name: str) -> None:
        self._link = link
        self._name = name
        self._cluster: RedisCluster | None = None
        self._sharded: ClusterPubSub | None = None
        self._raw: PubSub | None = None
        self._channels: set[str] = set()
        self._unsubscribing: set[str] = set()
        self._stale = False
        self._closed = False
        self._heard = Heard()
        self._raw_node: str | None = None  # the node of the raw subscriptions

    # -- sessions ----------------------------------------------------------------

    def _session(self) -> ClusterPubSub:
        """The ClusterPubSub, with a slot table refreshed after any loss."""
        if self._closed:
            raise redis.ConnectionError("subscriber is closed")
        if self._cluster is None:
            self._cluster = self._link.new_client(self._name, pubsub=True)
            self._stale = False
        elif self._stale:
            try:
                self._cluster.nodes_manager.initialize(
                    last_failed_node_name=self._link.failed_node
                )
            except RedisClusterException as exc:
                raise cluster_error(exc) from exc
            self._stale = False
        if self._sharded is None:
            self._sharded = self._cluster.pubsub()
        return self._sharded

    def _lost(self, exc: BaseException) -> redis.ConnectionError:
        """Drop every subscription; the exception to raise for the storage."""
        raw_node = self._raw_node
        self._teardown()
        self._stale = True
        if isinstance(exc, Silent):
            failed = raw_node if exc.key == "raw" else str(exc.key)
            if failed is not None:
                self._link.node_failed(failed)
        if isinstance(exc, redis.ConnectionError):
            return exc
        error = redis.ConnectionError(f"Redis Cluster pub/sub lost: {exc}")
        error.__cause__ = exc
        return error

    def _teardown(self) -> None:
        for pubsub in (self._sharded, self._raw):
            if pubsub is not None:
                try:
                    pubsub.reset()  # ClusterPubSub.reset() also resets the per-node ones
                except Exception:  # noqa: BLE001 (closing sockets of a dead session)
                    pass
        self._sharded = None
        self._raw = None
        self._raw_node = None
        self._channels.clear()
        self._unsubscribing.clear()
        self._heard.clear()

    # -- the Subscriber protocol -------------------------------------------------

    def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE, each channel on the primary of its slot; confirmations come as messages."""
        if not channels:
            return
        try:
            session = self._session()
            self._check_failed_owner(channels)
            session.ssubscribe(*channels)
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
            raise self._lost(exc) from None
        self._channels.update(channels)
        self._unsubscribing.difference_update(channels)
        for name in list(session.node_pubsub_mapping):
            self._heard.start(name)  # a new node's clock starts with its first command

    def _check_failed_owner(self, channels: tuple[str, ...]) -> None:
        """FailoverPending if a channel's primary is the failed node, about to be replaced."""
        failed = self._link.failed_node
        assert self._cluster is not None
        if failed is None or all(
            self._cluster.get_node_from_key(channel).name != failed for channel in channels
        ):
            return
        if self._cluster_flags_failover(failed):
            raise FailoverPending(
                f"the cluster flags {failed} failed; waiting for its replica's promotion"
            )

    def _cluster_flags_failover(self, failed: str) -> bool:
        """Whether another node's ``CLUSTER NODES`` says ``failed`` is being replaced.

        The first node other than ``failed`` that answers decides; if none
        does, False (subscribe as usual and let the read timeout decide).
        """
        assert self._cluster is not None
        for node in self._cluster.get_nodes():
            if node.name == failed:
                continue
            try:
                reply = self._cluster.get_redis_connection(node).execute_command(
                    "CLUSTER", "NODES"
                )
            except redis.RedisError:  # down, or refused (an ACL without CLUSTER NODES)
                continue
            text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
            return failover_pending(text, failed)
        return False

    def unsubscribe(self, *channels: str) -> None:
        """SUNSUBSCRIBE on the node that holds the subscription."""
        wanted = [channel for channel in channels if channel in self._channels]
        if not wanted or self._sharded is None:
            return
        try:
            self._sharded.sunsubscribe(*wanted)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None
        self._channels.difference_update(wanted)
        self._unsubscribing.update(wanted)

    def subscribe_raw(self, *channels: str) -> None:
        """Classic SUBSCRIBE on one node, any node: a classic PUBLISH reaches them all.

        Nodes are tried in random order (spreading servers over the cluster),
        the node that failed last at the end, so a dead node that the slot
        table still lists is simply skipped.
        """
        if not channels:
            return
        if self._raw is None:
            self._session()
            assert self._cluster is not None
            nodes = self._cluster.get_nodes()
            random.shuffle(nodes)
            nodes.sort(key=lambda node: node.name == self._link.failed_node)
            failure: BaseException | None = None
            for node in nodes:
                pubsub = self._cluster.get_redis_connection(node).pubsub()
                try:
                    pubsub.subscribe(*channels)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    failure = exc
                    pubsub.reset()
                    continue
                self._raw = pubsub
                self._raw_node = node.name
                self._heard.start("raw")
                return
            raise self._lost(failure or redis.ConnectionError("no cluster node"))
        try:
            self._raw.subscribe(*channels)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None

    def _pubsubs(self) -> list[tuple[ClusterNode | None, PubSub]]:
        """(node, pubsub) for each per-node sharded session, then (None, raw)."""
        found: list[tuple[ClusterNode | None, PubSub]] = []
        if self._sharded is not None and self._cluster is not None:
            for node_name, pubsub in list(self._sharded.node_pubsub_mapping.items()):
                node = self._cluster.get_node(node_name=node_name)
                if node is None:  # no longer in the topology: keep the pubsub readable
                    host, _, port = node_name.rpartition(":")
                    node = ClusterNode(host, int(port))
                found.append((node, pubsub))
        if self._raw is not None:
            found.append((None, self._raw))
        return found

    def _poll_once(self) -> dict[str, Any] | None:
        """A message already readable on any connection, without blocking."""
        for node, pubsub in self._pubsubs():
            if node is None:
                message = pubsub.get_message(timeout=0.0)
            else:
                assert self._sharded is not None
                if self._sharded.node_pubsub_mapping.get(node.name) is not pubsub:
                    continue  # dropped by redis-py meanwhile (its last sunsubscribe)
                message = self._sharded.get_sharded_message(timeout=0.0, target_node=node)
            if message is not None:
                self._heard.heard("raw" if node is None else node.name)
                failed = self._link.failed_node  # almost always None: one read a message
                if failed is not None and failed == (
                    self._raw_node if node is None else node.name
                ):
                    self._link.node_answered(failed)  # alive after all: no longer avoided
                self._check(message)
                return message
        return None

    def _check(self, message: dict[str, Any]) -> None:
        """A ``sunsubscribe`` fws did not ask for means the slot moved: a loss."""
        if message.get("type") not in ("sunsubscribe", b"sunsubscribe"):
            return
        raw = message.get("channel")
        channel = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if channel in self._unsubscribing:
            self._unsubscribing.discard(channel)
            return
        if channel in self._channels:
            raise redis.ConnectionError(
                f"shard channel {channel!r} was unsubscribed by the server (slot moved)"
            )

    def _sockets(self) -> list[Any]:
        sockets: list[Any] = []
        for _node, pubsub in self._pubsubs():
            connection = pubsub.connection
            sock = getattr(connection, "_sock", None) if connection is not None else None
            if sock is not None:
                sockets.append(sock)
        return sockets

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message from any shard or the raw channels, waiting up to ``timeout`` s.

        Waits on all the session's sockets at once (``select``, cooperative
        once gevent patched it), instead of redis-py's round robin that would
        wait ``timeout`` per node. Raises ``redis.ConnectionError`` (after
        dropping every subscription) when a connection is lost or a shard
        channel was moved away.
        """
        deadline = time.monotonic() + timeout
        try:
            while True:
                message = self._poll_once()
                if message is not None:
                    return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sockets = self._sockets()
                if not sockets:
                    time.sleep(remaining)
                    return None
                select.select(sockets, [], [], remaining)
        except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError) as exc:
            # ValueError: select() on a socket redis-py closed meanwhile.
            raise self._lost(exc) from None

    def ping(self) -> float:
        """Check every connection answered lately, then PING each (``pong`` messages).

        A node silent for ``PUBSUB_SILENCE`` s (a hung or cut-off shard
        primary) loses the session; returns since when all were alive.
        """
        pubsubs = self._pubsubs()
        if not pubsubs:
            raise self._lost(redis.ConnectionError("no pub/sub session"))
        try:
            alive_since = self._heard.check(
                ("raw" if node is None else node.name, pubsub.connection)
                for node, pubsub in pubsubs
            )
            for _node, pubsub in pubsubs:
                pubsub.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None
        return alive_since

    def close(self) -> None:
        self._closed = True
        self._teardown()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()
