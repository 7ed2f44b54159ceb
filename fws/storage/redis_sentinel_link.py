"""The Sentinel link: one sentinel-managed primary, found and followed through redis-py.

``redis.sentinel.Sentinel(...).master_for(SERVICE)`` gives a client whose
``SentinelConnectionPool`` asks the sentinels for the primary's address
whenever it opens a connection; a connection that finds the old primary
demoted (READONLY) is dropped with a ConnectionError. So after a failover
the first command fails (fws must see the outage: no retries) and the next
one reaches the new primary. Pub/sub uses a connection from the same pool,
so it follows the primary too.

redis-py's ``PubSub`` would reconnect and resubscribe silently on the next
``get_message`` after a lost connection. fws wants to know (messages were
lost, the state needs a resync), so the subscriber raises on the first
failure and drops its subscriptions; the storage subscribes again.

Channels are classic (SUBSCRIBE/PUBLISH), ``sharded`` is False: one primary
carries everything, as with a single node.

No gevent here (see ``redis_cluster_link``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.client import PubSub
from redis.sentinel import Sentinel

from .redis_link_urls import SentinelSettings, connection_kwargs, parse_sentinel_url

__all__ = ["SentinelLink", "SentinelSubscriber", "parse_sentinel_url"]

POOL_SIZE = 32
"""Most command connections to the primary (as the single-node storage)."""


class SentinelLink:
    """Commands, PUBLISH and subscribers on the primary the sentinels name.

    Nothing connects before the first command: ``MasterNotFoundError`` (a
    ``redis.ConnectionError``) until the sentinels name a reachable primary.
    """

    sharded = False

    def __init__(self, url: str, name: str = "fws") -> None:
        self.settings: SentinelSettings = parse_sentinel_url(url)
        self.url = self.settings.url
        self.name = name
        self._lock = threading.Lock()
        self.sentinel = Sentinel(
            self.settings.nodes, sentinel_kwargs=self.settings.sentinel_credentials()
        )
        self._commands = self._master(name, max_connections=POOL_SIZE)
        self._closed = False

    def _master(self, name: str, **extra: Any) -> redis.Redis:
        kwargs = connection_kwargs(name)
        kwargs.update(self.settings.credentials())
        kwargs.update(extra)
        return self.sentinel.master_for(self.settings.service, db=self.settings.db, **kwargs)

    def commands(self) -> redis.Redis:
        """The client for keys, pipelines and scripts on the current primary."""
        if self._closed:
            raise redis.ConnectionError(f"link to {self.url} is closed")
        return self._commands

    def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH on the current primary; how many subscribers it reached."""
        return int(self.commands().publish(channel, data))

    def subscriber(self) -> SentinelSubscriber:
        """A new pub/sub session (a dedicated connection from its own sentinel pool)."""
        return SentinelSubscriber(self._master(f"{self.name}-pubsub", max_connections=2))

    def close(self) -> None:
        self._closed = True
        self._commands.close()
        self._commands.connection_pool.disconnect()
        for sentinel in self.sentinel.sentinels:
            sentinel.close()

    def __repr__(self) -> str:
        return f"<SentinelLink {self.url}>"


class SentinelSubscriber:
    """SUBSCRIBE on the primary; a loss raises once and drops every subscription.

    ``subscribe``/``subscribe_raw`` after a raise open a new connection,
    which asks the sentinels for the primary again.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._closed = False

    def _session(self) -> PubSub:
        if self._closed:
            raise redis.ConnectionError("subscriber is closed")
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
        return self._pubsub

    def _lost(self, exc: Exception) -> Exception:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.reset()
            except Exception:  # noqa: BLE001 (closing the socket of a dead session)
                pass
        # Connections to a demoted primary must not be reused for the next session.
        self._client.connection_pool.disconnect()
        return exc

    def subscribe(self, *channels: str) -> None:
        if not channels:
            return
        try:
            self._session().subscribe(*channels)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None

    def unsubscribe(self, *channels: str) -> None:
        if not channels or self._pubsub is None:
            return
        try:
            self._pubsub.unsubscribe(*channels)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None

    subscribe_raw = subscribe
    """Raw channels are classic channels too, on the same connection."""

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message within ``timeout`` s; ConnectionError/TimeoutError on a loss."""
        pubsub = self._session()
        try:
            return pubsub.get_message(timeout=timeout)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None

    def ping(self) -> None:
        """PING on the pub/sub connection; the answer arrives as a ``pong`` message."""
        if self._pubsub is None:
            return
        try:
            self._pubsub.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None

    def close(self) -> None:
        self._closed = True
        self._lost(redis.ConnectionError("closed"))
        self._client.close()
