"""A classic (not sharded) pub/sub session: one node, or the primary the sentinels name.

redis-py's ``PubSub`` reconnects and resubscribes silently on the next call
after a lost connection. fws must know instead (messages were lost, the state
needs a resync, the outage is logged once), and every link must behave
alike for :class:`~fws.storage.redis.subscriber.Listener`: on any loss the
session raises ``redis.ConnectionError``/``TimeoutError`` once and afterwards
holds no subscriptions. A later ``subscribe`` opens a new connection (behind
a sentinel pool that asks the sentinels for the primary again).

A connection that hangs without closing (a stopped or partitioned
primary) is caught by :mod:`.liveness`: ``ping()`` raises once it has been
silent for ``PUBSUB_SILENCE`` s, and, given ``primary`` (Sentinel), once the
sentinels name another primary than the one the session listens to.

No gevent here: the storage's greenlets call these blocking methods in a
monkey-patched process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.client import PubSub

from .liveness import Heard, PrimarySwitched

__all__ = ["ClassicSubscriber"]


class ClassicSubscriber:
    """SUBSCRIBE on a connection from ``pool``; a loss raises once and drops everything.

    ``pool`` is the link's pub/sub pool (one connection for a single node,
    a sentinel-managed pool for sentinel). fws's channels and raw channels
    are both classic channels here, on the same connection. ``primary``
    (Sentinel) returns the address the sentinels name now.
    """

    def __init__(
        self,
        pool: redis.ConnectionPool,
        primary: Callable[[], tuple[str, int]] | None = None,
    ) -> None:
        self._pool = pool
        self._primary = primary
        self._pubsub: PubSub | None = None
        self._closed = False
        self._heard = Heard()

    def _session(self) -> PubSub:
        if self._closed:
            raise redis.ConnectionError("subscriber is closed")
        if self._pubsub is None:
            self._pubsub = PubSub(self._pool)
        return self._pubsub

    def _lost(self, exc: Exception) -> Exception:
        """Forget the session and its subscriptions; ``exc`` for the caller to raise."""
        pubsub, self._pubsub = self._pubsub, None
        self._heard.clear()
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
            self._heard.start("pubsub")
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
        if message is not None:
            self._heard.heard("pubsub")
        return message

    def ping(self) -> float:
        """Check the session is alive, then PING (the ``pong`` arrives as a message).

        Raises (after dropping the session) when the connection was silent
        for ``PUBSUB_SILENCE`` s or the sentinels name another primary;
        returns since when the session is known alive.
        """
        pubsub = self._pubsub
        if pubsub is None:
            raise self._lost(redis.ConnectionError("no pub/sub session"))
        try:
            alive_since = self._heard.check([("pubsub", pubsub.connection)])
            self._check_primary(pubsub)
            pubsub.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._lost(exc) from None
        return alive_since

    def _check_primary(self, pubsub: PubSub) -> None:
        """PrimarySwitched if the sentinels moved on from this session's node."""
        connection = pubsub.connection
        if self._primary is None or connection is None:
            return
        try:
            host, port = self._primary()
        except (redis.RedisError, OSError):
            return  # sentinels unreachable: no news, the PINGs still watch the node
        listening = (str(connection.host), int(connection.port))
        if listening != (str(host), int(port)):
            raise PrimarySwitched(
                f"the sentinels promoted {host}:{port}; pub/sub was on "
                f"{listening[0]}:{listening[1]}"
            )

    def close(self) -> None:
        self._closed = True
        self._lost(redis.ConnectionError("closed"))
