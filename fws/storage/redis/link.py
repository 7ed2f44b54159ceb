"""The link to Redis: the one place that knows what kind of Redis fws talks to.

Everything above (:mod:`.writer`, :mod:`.subscriber`, :mod:`.storage`,
:mod:`.publisher`) is written against :class:`Link` and :class:`Subscriber`
and is the same for every deployment; a link is chosen from the URL by
:func:`open_link`:

=============================================  ===================================
``redis://``, ``rediss://``, ``unix://``        :class:`SingleLink`: one node
``redis+cluster://``, ``rediss+cluster://``      ``ClusterLink`` (not yet: issue 11)
``redis+sentinel://``, ``rediss+sentinel://``    ``SentinelLink`` (not yet: issue 11)
=============================================  ===================================

A new strategy implements the two protocols below and one branch of
:func:`open_link`; nothing else changes.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from ...errors import ConfigurationError

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "POOL_SIZE",
    "Link",
    "SingleLink",
    "Subscriber",
    "open_link",
    "redact",
]

# Timeouts are short: a Redis that does not answer in time is treated as gone,
# and the server goes on serving its local clients meanwhile.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
POOL_SIZE = 32
"""Most Redis connections one server opens for commands (plus one for pub/sub)."""
POOL_WAIT = 5.0

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
        lost: the caller then opens a new one, resubscribes and resyncs.
        """

    def ping(self) -> None:
        """Ask for a ``pong`` message: proof the session still answers."""

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

    def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connection_kwargs(name: str) -> dict[str, Any]:
    """What every fws connection to Redis uses: short timeouts, no hidden retries."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_keepalive": True,
        # fws retries itself, with backoff and a resync; redis-py's own retries
        # would hide outages and stall the greenlet that made the call.
        "retry": Retry(NoBackoff(), 0),
        "client_name": name,
    }


class _SingleSubscriber:
    """A redis-py ``PubSub`` on the link's one pub/sub connection."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pubsub = PubSub(pool)

    def subscribe(self, *channels: str) -> None:
        self._pubsub.subscribe(*channels)

    def unsubscribe(self, *channels: str) -> None:
        self._pubsub.unsubscribe(*channels)

    subscribe_raw = subscribe  # one node: fws's channels are classic channels too

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = self._pubsub.get_message(timeout=timeout)
        return message

    def ping(self) -> None:
        self._pubsub.ping()

    def close(self) -> None:
        self._pubsub.close()


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
                url, max_connections=1, **connection_kwargs(f"{name}-pubsub")
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {self.url}: {exc}") from None
        self._redis = redis.Redis(connection_pool=self._pool)

    @classmethod
    def from_client(cls, client: redis.Redis) -> SingleLink:
        """A link on a client the caller made (``Publisher(client=...)``)."""
        link = cls.__new__(cls)
        link.url = "<given client>"
        link._redis = client
        link._pool = client.connection_pool
        link._pubsub_pool = client.connection_pool
        return link

    def commands(self) -> redis.Redis:
        return self._redis

    def publish(self, channel: str, data: bytes) -> int:
        return int(self._redis.publish(channel, data))

    def subscriber(self) -> Subscriber:
        return _SingleSubscriber(self._pubsub_pool)

    def close(self) -> None:
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
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme in SINGLE_SCHEMES:
        return SingleLink(url, name, pool_size=pool_size)
    if scheme in CLUSTER_SCHEMES or scheme in SENTINEL_SCHEMES:
        raise ConfigurationError(
            f"Redis URL {redact(url)}: {scheme}:// is not yet supported "
            "(use redis://, rediss:// or unix://)"
        )
    raise ConfigurationError(
        f"invalid Redis URL {redact(url)}: the scheme must be one of redis://, rediss://, "
        "unix://"
    )
