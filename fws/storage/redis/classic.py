"""A classic (not sharded) pub/sub session: one node, or the primary the sentinels name.

redis-py's ``PubSub`` reconnects and resubscribes silently on the next call
after a lost connection. fws must know instead (messages were lost, the state
needs a resync, the outage is logged once), and every link must behave
alike for :class:`~fws.storage.redis.subscriber.Listener`: on any loss the
session raises ``redis.ConnectionError``/``TimeoutError`` once and afterwards
holds no subscriptions. A later ``subscribe`` opens a new connection (behind
a sentinel pool that asks the sentinels for the primary again).

No gevent here: the storage's greenlets call these blocking methods in a
monkey-patched process.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import PubSub

__all__ = ["ClassicSubscriber"]


class ClassicSubscriber:
    """SUBSCRIBE on a connection from ``pool``; a loss raises once and drops everything.

    ``pool`` is the link's pub/sub pool (one connection for a single node,
    a sentinel-managed pool for sentinel). fws's channels and raw channels
    are both classic channels here, on the same connection.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._pubsub: PubSub | None = None
        self._closed = False

    def _session(self) -> PubSub:
        if self._closed:
            raise redis.ConnectionError("subscriber is closed")
        if self._pubsub is None:
            self._pubsub = PubSub(self._pool)
        return self._pubsub

    def _lost(self, exc: Exception) -> Exception:
        """Forget the session and its subscriptions; ``exc`` for the caller to raise."""
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.reset()
            except Exception:  # noqa: BLE001 (closing the socket of a dead session)
                pass
        # A connection to a dead or demoted primary must not serve the next session.
        self._pool.disconnect()
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
            message: dict[str, Any] | None = pubsub.get_message(timeout=timeout)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None
        return message

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
