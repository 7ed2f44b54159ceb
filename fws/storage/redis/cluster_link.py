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

No gevent here: the storage's greenlets call these blocking methods in a
monkey-patched process; the Publisher uses them in a plain one.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .cluster_subscriber import ClusterSubscriber, cluster_error
from .liveness import cut_connections
from .urls import POOL_SIZE, POOL_WAIT, connection_kwargs, parse_cluster_url

__all__ = ["CLUSTER_RETRIES", "ClusterLink", "ClusterSubscriber", "parse_cluster_url"]

CLUSTER_RETRIES = 1
"""Immediate re-tries of a cluster command after a ConnectionError/TimeoutError.

The single-node storage allows none. On a cluster one is worth it: redis-py
refreshes the slot table before the re-try, so a command that hit a primary
already replaced by its replica succeeds on the new one instead of failing
the whole write batch. More would only hide a shard that is really down
(redis-py re-tries without backoff); the storage backs off itself.
"""


class _WaitingPool(redis.BlockingConnectionPool):
    """A node's pool: a command waits ``POOL_WAIT`` s for a free connection, as on one node.

    (RedisCluster hands its keyword arguments to ``redis.Redis`` too, which
    knows no ``timeout``, so the wait is set here.)
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", POOL_WAIT)
        super().__init__(**kwargs)


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

    def new_client(self, name: str, *, pubsub: bool = False) -> RedisCluster:
        """A ``RedisCluster`` with fws's timeouts; ConnectionError if no seed answers."""
        kwargs = connection_kwargs(name, pubsub=pubsub)
        del kwargs["retry"]  # the cluster-level retry below; node connections get none
        kwargs.update(self.settings.credentials())
        # redis-py builds a node's pool from connection_pool_class only for a
        # client made from a URL (NodesManager.create_redis_node); otherwise
        # each node gets a plain ConnectionPool, which past max_connections
        # fails with "Too many connections" (fws would take that for an
        # outage, and lose messages under load). Hence the first seed as a URL,
        # its scheme choosing TLS instead of the ``ssl`` flag.
        host, port = self.settings.nodes[0]
        scheme = "rediss" if kwargs.pop("ssl", False) else "redis"
        try:
            return RedisCluster(
                url=f"{scheme}://{_bracketed(host)}:{port}",
                startup_nodes=[ClusterNode(host, port) for host, port in self.settings.nodes[1:]],
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
        except RedisClusterException as exc:
            raise cluster_error(exc) from exc

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

    def reset(self) -> None:
        """Cut every node's command connections, in use or not (see ``Link.reset``).

        The slot table is kept: redis-py refreshes it when the next command
        fails, asking the node that failed last.
        """
        with self._lock:
            client = self._client
        if client is None:
            return
        for node in list(client.nodes_manager.nodes_cache.values()):
            if node.redis_connection is not None:
                cut_connections(node.redis_connection.connection_pool)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<ClusterLink {self.url}>"
