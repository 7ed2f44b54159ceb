"""The Sentinel link: one sentinel-managed primary, found and followed through redis-py.

``redis.sentinel.Sentinel(...).master_for(SERVICE)`` gives a client whose
``SentinelConnectionPool`` asks the sentinels for the primary's address
whenever it opens a connection; a connection that finds the old primary
demoted (READONLY) is dropped with a ConnectionError. So after a failover
the first command fails (fws must see the outage: no retries) and the next
one reaches the new primary. Pub/sub uses a pool of its own from the same
sentinels, so it follows the primary too; its session is a
:class:`~.classic.ClassicSubscriber`, with the same loss semantics as on one
node.

Channels are classic (SUBSCRIBE/PUBLISH), ``sharded`` is False: one primary
carries everything, as with a single node.

No gevent here: the storage's greenlets call these blocking methods in a
monkey-patched process; the Publisher uses them in a plain one.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from .classic import ClassicSubscriber
from .liveness import cut_connections
from .urls import POOL_SIZE, POOL_WAIT, SentinelSettings, connection_kwargs, parse_sentinel_url

__all__ = ["SentinelLink"]


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A sentinel-managed pool that waits for a free connection (``POOL_WAIT`` s).

    redis-py's ``SentinelConnectionPool`` is a plain pool: past its
    ``max_connections`` a command fails at once with "Too many connections".
    On one node fws uses a ``BlockingConnectionPool`` so that a burst of
    greenlets waits its turn; the sentinel link must behave the same. The MRO
    puts the sentinel's address lookup in front of the blocking pool's
    get/release, which are what ``ConnectionPool`` would otherwise provide.
    """


class SentinelLink:
    """Commands, PUBLISH and subscribers on the primary the sentinels name.

    Nothing connects before the first command: ``MasterNotFoundError`` (a
    ``redis.ConnectionError``) until the sentinels name a reachable primary.
    """

    sharded = False

    def __init__(self, url: str, name: str = "fws", *, pool_size: int = POOL_SIZE) -> None:
        self.settings: SentinelSettings = parse_sentinel_url(url)
        self.url = self.settings.url
        self.name = name
        self.sentinel = Sentinel(
            self.settings.nodes, sentinel_kwargs=self.settings.sentinel_credentials()
        )
        self._commands = self._master(name, max_connections=pool_size, timeout=POOL_WAIT)
        self._pubsub = self._master(
            f"{name}-pubsub", pubsub=True, max_connections=1, timeout=POOL_WAIT
        )
        self._closed = False

    def _master(self, name: str, *, pubsub: bool = False, **pool: Any) -> redis.Redis:
        kwargs = connection_kwargs(name, pubsub=pubsub)
        kwargs.update(self.settings.credentials())
        kwargs.update(pool)
        return self.sentinel.master_for(
            self.settings.service,
            db=self.settings.db,
            connection_pool_class=_BlockingSentinelPool,
            **kwargs,
        )

    def commands(self) -> redis.Redis:
        """The client for keys, pipelines and scripts on the current primary."""
        if self._closed:
            raise redis.ConnectionError(f"link to {self.url} is closed")
        return self._commands

    def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH on the current primary; how many subscribers it reached."""
        return int(self.commands().publish(channel, data))

    def subscriber(self) -> ClassicSubscriber:
        """A new pub/sub session on the link's pub/sub pool (one connection).

        Its ``ping`` also asks the sentinels for the primary, so a failover
        (the old primary maybe hung, not closed) ends the session within a PING period.
        """
        return ClassicSubscriber(self._pubsub.connection_pool, primary=self.primary_address)

    def primary_address(self) -> tuple[str, int]:
        """The primary the sentinels name now (``MasterNotFoundError`` if none)."""
        host, port = self.sentinel.discover_master(self.settings.service)
        return str(host), int(port)

    def reset(self, *, refresh: bool = False) -> None:
        """Cut every command connection, in use or not (see ``Link.reset``).

        Nothing to refresh: a connection asks the sentinels when it opens.
        """
        cut_connections(self._commands.connection_pool)

    def close(self) -> None:
        self._closed = True
        for client in (self._commands, self._pubsub):
            client.close()
            client.connection_pool.disconnect()
        for sentinel in self.sentinel.sentinels:
            sentinel.close()

    def __repr__(self) -> str:
        return f"<SentinelLink {self.url}>"
