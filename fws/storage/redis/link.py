"""The link to Redis: the one place that knows what kind of Redis fws talks to.

Everything above (:mod:`.writer`, :mod:`.subscriber`, :mod:`.storage`,
:mod:`.publisher`) is written against :class:`Link` and :class:`Subscriber`
and is the same for every deployment; a link is chosen from the URL by
:func:`open_link`:

==============================================  ==========================================
``redis://``, ``rediss://``, ``unix://``         :class:`SingleLink`: one node
``redis+cluster://``, ``rediss+cluster://``       :class:`~.cluster_link.ClusterLink`
``redis+sentinel://``, ``rediss+sentinel://``     :class:`~.sentinel_link.SentinelLink`
==============================================  ==========================================

Every link's subscriber has the same loss semantics: on any loss it raises
redis-py's ``ConnectionError``/``TimeoutError`` once and then holds no
subscriptions, so the listener treats the three alike (resubscribe, resync,
count the outage). A new strategy implements the two protocols below and one
branch of :func:`open_link`; nothing else changes. Timeouts and connection
settings are in :mod:`.urls`, shared by all links.
"""

from __future__ import annotations

from typing import Any, Protocol

import redis
from redis.exceptions import RedisClusterException, RedisError

from ...errors import ConfigurationError
from .classic import ClassicSubscriber
from .cluster_link import ClusterLink
from .liveness import cut_connections
from .sentinel_link import SentinelLink
from .urls import COMMAND_TIMEOUT, CONNECT_TIMEOUT, POOL_SIZE, POOL_WAIT, connection_kwargs, redact

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "POOL_SIZE",
    "REDIS_ERRORS",
    "ClusterLink",
    "Link",
    "SentinelLink",
    "SingleLink",
    "Subscriber",
    "open_link",
    "redact",
]

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
"""What a call through any link raises when Redis is unreachable or refuses.

``RedisClusterException`` is no ``RedisError``: redis-py raises it when no
cluster node answers or the slots are not covered, which for fws is an
outage like any other.
"""

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


class Subscriber(Protocol):
    """One pub/sub session. Owned by one thread (the storage's listener) at a time."""

    def subscribe(self, *channels: str) -> None:
        """fws's own channels (sharded pub/sub on a cluster)."""

    def unsubscribe(self, *channels: str) -> None: ...

    def subscribe_raw(self, *channels: str) -> None:
        """``--redis_channels``: always classic SUBSCRIBE, as the seed's ``redis-cli publish``."""

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next redis-py message dict (confirmations included), or None after ``timeout``.

        Raises redis-py's ``ConnectionError``/``TimeoutError`` when the session is
        lost, and then holds no subscriptions: the caller opens a new one,
        resubscribes and resyncs.
        """

    def ping(self) -> float:
        """Check the session is alive, then ask each connection for a ``pong`` message.

        Raises like ``get_message`` when a connection has been silent for
        ``PUBSUB_SILENCE`` s (see :mod:`.liveness`) or its node is no longer the
        primary; returns the ``time.monotonic()`` since which every connection
        of the session is known to have been alive.
        """

    def close(self) -> None: ...


class Link(Protocol):
    """A connection strategy: commands, publishing on fws's channels, pub/sub sessions."""

    url: str
    """The URL with its password redacted, for logs."""
    sharded: bool
    """True on a cluster: fws's channels use SPUBLISH/SSUBSCRIBE."""

    def commands(self) -> Any:
        """A ``redis.Redis`` or ``RedisCluster`` for commands, pipelines and scripts.

        Pipelines are ``transaction=False`` of idempotent commands; each script
        touches one hash tag; on a cluster redis-py routes both by slot.
        """

    def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH (SPUBLISH on a cluster) on an fws channel; how many servers got it."""

    def subscriber(self) -> Subscriber:
        """A new pub/sub session."""

    def reset(self, *, refresh: bool = False) -> None:
        """Cut the command connections, also those in use (their callers get a ConnectionError).

        Called by the listener when it loses its session and when it has a new
        one: commands blocked on a hung or demoted primary are released at once
        instead of after ``COMMAND_TIMEOUT``, and no connection opened before
        a failover serves a command after it. ``refresh`` (when the session is
        new): the topology that session found is the one to use; a cluster
        link re-reads its slot table, which may still name a hung primary.
        """

    def close(self) -> None: ...


class SingleLink:
    """One Redis node (or a primary with replicas fws does not use): ``redis://`` et al.

    A blocking pool of at most ``pool_size`` command connections, whatever
    the number of clients, and a pool of one for pub/sub.
    """

    sharded = False

    def __init__(self, url: str, name: str, *, pool_size: int = POOL_SIZE) -> None:
        self.url = redact(url)
        self._pool: redis.ConnectionPool
        self._pubsub_pool: redis.ConnectionPool
        try:
            self._pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=POOL_WAIT, **connection_kwargs(name)
            )
            self._pubsub_pool = redis.ConnectionPool.from_url(
                url, max_connections=1, **connection_kwargs(f"{name}-pubsub", pubsub=True)
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {self.url}: {exc}") from None
        self._redis = redis.Redis(connection_pool=self._pool)
        self._owned = True
        """False for a caller's client: its pool is the caller's to close."""

    @classmethod
    def from_client(cls, client: redis.Redis) -> SingleLink:
        """A link on a client the caller made (``Publisher(client=...)``)."""
        link = cls.__new__(cls)
        link.url = "<given client>"
        link._redis = client
        link._pool = client.connection_pool
        link._pubsub_pool = client.connection_pool
        link._owned = False
        return link

    def commands(self) -> redis.Redis:
        return self._redis

    def publish(self, channel: str, data: bytes) -> int:
        return int(self._redis.publish(channel, data))

    def subscriber(self) -> Subscriber:
        return ClassicSubscriber(self._pubsub_pool)

    def reset(self, *, refresh: bool = False) -> None:
        cut_connections(self._pool)

    def close(self) -> None:
        """Disconnect the pools this link made; a caller's client is left as it was."""
        if not self._owned:
            return
        self._pool.disconnect()
        self._pubsub_pool.disconnect()

    def __repr__(self) -> str:
        return f"<SingleLink {self.url}>"


def open_link(url: str, name: str, *, pool_size: int = POOL_SIZE) -> Link:
    """The link for ``url``, chosen by its scheme; ``ConfigurationError`` if none fits.

    ``name`` is the client name Redis shows in ``CLIENT LIST`` (``-pubsub``
    appended for the pub/sub session), so an operator can tell fws's
    connections apart.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        return SingleLink(url, name, pool_size=pool_size)
    if scheme in CLUSTER_SCHEMES:
        return ClusterLink(url, name, pool_size=pool_size)
    if scheme in SENTINEL_SCHEMES:
        return SentinelLink(url, name, pool_size=pool_size)
    raise ConfigurationError(
        f"invalid Redis URL {redact(url)}: the scheme must be one of "
        + ", ".join(f"{known}://" for known in SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES)
    )
