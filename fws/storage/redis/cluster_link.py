"""The Redis Cluster link: commands through ``RedisCluster``, fws channels sharded.

fws's channels (``P:{broadcast}``, ``P:{g:NAME}``, ``P:{s:SID}:inbox``) go
through SPUBLISH/SSUBSCRIBE, so each lives on the shard of its hash slot and
group traffic spreads over the shards. Raw ``--redis_channels`` stay classic
SUBSCRIBE: a classic PUBLISH on a cluster reaches every node, so one
subscription on any node is enough.

Commands follow MOVED/ASK/TRYAGAIN by themselves in redis-py 8.1 (up to 16
redirections, whatever ``retry`` says); a ConnectionError refreshes the slot
table (``NodesManager.initialize``) and is then retried
``retry.get_retries()`` times *without* backoff (``CLUSTER_RETRIES``).
Pub/sub is another matter: see :mod:`.cluster_subscriber`.

A primary that hangs (SIGSTOP, a stuck host) fails no command by itself:
the kernel still accepts connections to it, so a command sent there waits
``COMMAND_TIMEOUT`` before redis-py refreshes its slot table. Hence
``ClusterLink.reset(refresh=True)`` (the listener calls it when it has a
new session after an outage) also refreshes the command client's slot
table, and the node a subscriber found silent (:meth:`ClusterLink.node_failed`)
is asked last by every refresh and left out of a new client's seeds: after
the promotion, the first write (the snapshot that ends the outage) goes to
the new primary instead of waiting 5 s, once 10 s, on the hung one.

No gevent here: the storage's greenlets call these blocking methods in a
monkey-patched process; the Publisher uses them in a plain one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .cluster_subscriber import ClusterSubscriber, cluster_error
from .liveness import cut_connections
from .urls import POOL_SIZE, POOL_WAIT, connection_kwargs, parse_cluster_url

__all__ = [
    "CLUSTER_RETRIES",
    "REFRESH_ATTEMPTS",
    "ClusterLink",
    "ClusterSubscriber",
    "parse_cluster_url",
    "seed_lists",
]

CLUSTER_RETRIES = 1
"""Immediate re-tries of a cluster command after a ConnectionError/TimeoutError.

The single-node storage allows none. On a cluster one is worth it: redis-py
refreshes the slot table before the re-try, so a command that hit a primary
already replaced by its replica succeeds on the new one instead of failing
the whole write batch. More would only hide a shard that is really down
(redis-py re-tries without backoff); the storage backs off itself.
"""


REFRESH_ATTEMPTS = 4
"""Slot-table reads in one ``reset(refresh=True)`` while the table still names the failed node.

The table comes from whichever node answers first, and a node learns of a
promotion by gossip, a few milliseconds after the new primary knows. A
server whose subscriber just found the new primary can thus read a table
from a node that has not heard yet, and its first write would wait
``COMMAND_TIMEOUT`` on the hung primary (the likely cause of a CI failure
seen once in six runs: both servers back exactly 5.00 s after the
promotion). A table that still
routes to the failed node is read again, ``REFRESH_PAUSE`` apart; a node
that really is still a primary costs three pauses (0.15 s) and three more
reads, on the outage path only (a read that first tries a hung seed other
than the failed node waits for its timeout, as any refresh does).
"""

REFRESH_PAUSE = 0.05
"""Seconds between those reads: about what gossip needs to reach every node."""

log = logging.getLogger("fws.storage.redis")


class _WaitingPool(redis.BlockingConnectionPool):
    """A node's pool: a command waits ``POOL_WAIT`` s for a free connection, as on one node.

    (RedisCluster hands its keyword arguments to ``redis.Redis`` too, which
    knows no ``timeout``, so the wait is set here.)
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", POOL_WAIT)
        super().__init__(**kwargs)


def seed_lists(seeds: list[tuple[str, int]], failed: str | None) -> list[list[tuple[str, int]]]:
    """The seed lists a new client tries in turn: without ``failed``, then all of them.

    ``failed`` (``host:port``, a redis-py node name; None: no node failed) is
    left out of the first list, and only then: when it is not among the
    seeds, or is the only one, there is a single list, every seed. Seeds are
    named as redis-py names nodes (localhost is 127.0.0.1 there); seeds given
    as other host names than the cluster announces never match.
    """
    everyone = list(seeds)
    others = [seed for seed in everyone if ClusterNode(*seed).name != failed]
    if others and len(others) < len(everyone):
        return [others, everyone]
    return [everyone]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ClusterLink:
    """Commands, SPUBLISH and subscribers on one Redis Cluster.

    Nothing connects before the first use: a link can be made while the
    cluster is down; ``commands()``, ``publish()`` and ``subscriber()`` raise
    ``redis.ConnectionError`` until it answers.
    """

    sharded = True

    def __init__(self, url: str, name: str = "fws", *, pool_size: int = POOL_SIZE) -> None:
        self.settings = parse_cluster_url(url)
        self.url = self.settings.url
        self.name = name
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._client: RedisCluster | None = None
        self._closed = False
        self._failed_node: str | None = None  # "host:port" that went silent last

    @property
    def failed_node(self) -> str | None:
        """The node a subscriber found silent or failing last (``host:port``), if any."""
        return self._failed_node

    def node_failed(self, name: str) -> None:
        """A subscriber found ``name`` (``host:port``) silent: slot-table refreshes ask it last.

        Until it answers a subscriber again (:meth:`node_answered`) or
        another node fails.
        """
        self._failed_node = name

    def node_answered(self, name: str) -> None:
        """A subscriber heard from ``name``: it is no longer :attr:`failed_node`."""
        if self._failed_node == name:
            self._failed_node = None

    def new_client(self, name: str, *, pubsub: bool = False) -> RedisCluster:
        """A ``RedisCluster`` with fws's timeouts; ConnectionError if no seed answers.

        The slot table comes from the seeds but :attr:`failed_node` (a hung
        seed would cost a read timeout first); from that one too only if no
        other seed answers. The client keeps the seeds it was made from: one
        made while a node was failed keeps it out of its seeds for good, which
        matters only if the whole topology changes. When no seed answers, the
        healthy ones are asked twice (their timeouts too): the outage path only.
        """
        kwargs = connection_kwargs(name, pubsub=pubsub)
        del kwargs["retry"]  # the cluster-level retry below; node connections get none
        kwargs.update(self.settings.credentials())
        *first, every = seed_lists(self.settings.nodes, self._failed_node)
        for seeds in first:
            try:
                return self._new_client(seeds, kwargs)
            except RedisClusterException:
                pass  # only the failed node answers, perhaps: all of them, then
        try:
            return self._new_client(every, kwargs)
        except RedisClusterException as exc:
            raise cluster_error(exc) from exc

    def _new_client(self, seeds: list[tuple[str, int]], kwargs: dict[str, Any]) -> RedisCluster:
        kwargs = dict(kwargs)
        # redis-py builds a node's pool from connection_pool_class only for a
        # client made from a URL (NodesManager.create_redis_node); otherwise
        # each node gets a plain ConnectionPool, which past max_connections
        # fails with "Too many connections" (fws would take that for an
        # outage, and lose messages under load). Hence the first seed as a URL,
        # its scheme choosing TLS instead of the ``ssl`` flag.
        host, port = seeds[0]
        scheme = "rediss" if kwargs.pop("ssl", False) else "redis"
        return RedisCluster(
            url=f"{scheme}://{_bracketed(host)}:{port}",
            startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]],
            retry=Retry(NoBackoff(), CLUSTER_RETRIES),
            # As on one node: at most pool_size connections per node, and a
            # command waits for a free one instead of failing at once.
            connection_pool_class=_WaitingPool,
            max_connections=self.pool_size,
            # Keep the seeds the user gave: they are the way back in after
            # the nodes redis-py discovered have all changed.
            dynamic_startup_nodes=False,
            **kwargs,
        )

    def commands(self) -> RedisCluster:
        """The shared ``RedisCluster`` for keys, pipelines and scripts (one hash tag each)."""
        with self._lock:
            if self._closed:
                raise redis.ConnectionError(f"link to {self.url} is closed")
            if self._client is None:
                self._client = self.new_client(self.name)
            return self._client

    def publish(self, channel: str, data: bytes) -> int:
        """SPUBLISH ``data`` on the shard of ``channel``; the subscribers it reached there."""
        try:
            return int(self.commands().spublish(channel, data))
        except RedisClusterException as exc:
            raise cluster_error(exc) from exc

    def subscriber(self) -> ClusterSubscriber:
        """A new pub/sub session with its own ``RedisCluster`` (see the module docstring)."""
        return ClusterSubscriber(self, f"{self.name}-pubsub")

    def reset(self, *, refresh: bool = False) -> None:
        """Cut every node's command connections, in use or not (see ``Link.reset``);
        with ``refresh``, re-read the slot table too, asking :attr:`failed_node` last.

        Waiting for a command to fail before refreshing is not enough: one
        sent to a hung primary fails only after ``COMMAND_TIMEOUT``, and
        redis-py would keep routing the slot there until then (measured: the
        snapshot that ends an outage took 5.0 s, once 10.0 s, after a SIGSTOP).
        Not on a loss (the table would be no newer, and with every node hung
        each would cost ``COMMAND_TIMEOUT``). Raises ``redis.ConnectionError``
        if no node answers.
        """
        with self._lock:
            client = self._client
        if client is None:
            return
        for node in list(client.nodes_manager.nodes_cache.values()):
            if node.redis_connection is not None:
                cut_connections(node.redis_connection.connection_pool)
        if not refresh:
            return
        try:
            self._refresh_slot_table(client)
        except RedisClusterException as exc:
            raise cluster_error(exc) from exc

    def _refresh_slot_table(self, client: RedisCluster) -> None:
        """Re-read the slot table, again while it still names :attr:`failed_node` a primary.

        See ``REFRESH_ATTEMPTS``: the first node to answer may not have heard
        of the promotion yet.
        """
        for attempt in range(1, REFRESH_ATTEMPTS + 1):
            failed = self._failed_node
            client.nodes_manager.initialize(last_failed_node_name=failed)
            if failed is None or all(node.name != failed for node in client.get_primaries()):
                if attempt > 1:
                    log.info("slot table read %d times before it left out %s", attempt, failed)
                return
            if attempt < REFRESH_ATTEMPTS:
                time.sleep(REFRESH_PAUSE)
        log.info(
            "the slot table still names %s a primary after %d reads: commands go there",
            failed,
            REFRESH_ATTEMPTS,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<ClusterLink {self.url}>"
