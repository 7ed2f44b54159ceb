"""Is a pub/sub session still alive? Silence on a connection, not its TTL, says no.

A primary that dies with its host, hangs (SIGSTOP, a stuck disk) or is cut
off by a partition resets no socket: reads just stay empty, as they do on
an idle channel. The only proof of life is an answer, so every subscriber
PINGs each of its connections every ``PUBSUB_PING`` seconds and declares the
session lost when one of them has said nothing for ``PUBSUB_SILENCE``
seconds (:class:`Heard`). Behind Sentinel a switch of primary is noticed
too: the sentinels are asked about once a second whether the session's
primary is still the one they name (:class:`PrimarySwitched`).

No gevent here: the link modules use this from a monkey-patched process or
from plain threads alike.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Hashable, Iterable
from typing import Any

import redis

__all__ = [
    "PUBSUB_PING",
    "PUBSUB_SILENCE",
    "FailoverPending",
    "Heard",
    "PrimarySwitched",
    "Silent",
    "cut_connections",
    "describe",
]

PUBSUB_PING = 1.0
"""Seconds between PINGs on each pub/sub connection (and sentinel checks).

Independent of ``--redis_ttl``: the TTL is how long a dead *server's* state
stays in Redis, while this bounds how long a dead *primary* goes unnoticed.
One PING a second per connection is nothing for Redis."""

PUBSUB_SILENCE = 2.0
"""A connection that answered nothing (no pong, no message) for this long is lost.

Two PING periods: one pong may be late on a loaded Redis without a false
alarm, and a hung primary is still noticed 2-3 s after it stopped, in time
for the "delivery resumes within 5 s of the promotion" promise. Data that
arrived but was not read yet (a busy listener) counts as an answer."""


class Silent(redis.ConnectionError):
    """A connection answered nothing for ``PUBSUB_SILENCE`` s; ``key`` names it."""

    def __init__(self, message: str, key: Hashable) -> None:
        super().__init__(message)
        self.key = key


class PrimarySwitched(redis.ConnectionError):
    """The sentinels name another primary than the one this session listens to.

    A ConnectionError, so every caller treats it as a loss; the listener
    also reconnects at once instead of backing off, as the new primary is up.
    """


class FailoverPending(redis.ConnectionError):
    """The cluster flags the primary of a needed slot as failed; no replica is promoted yet.

    A hung primary still accepts connections (the kernel does), so
    subscribing there would only give up after the read timeout, and the
    promotion usually follows the flag within a second or two. So the
    session fails at once instead, and the listener tries again soon
    instead of backing off.
    """


def describe(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of ``exc``, at most ``limit`` characters, for one log line.

    Some redis-py errors (``MasterNotFoundError``) embed the reprs of every
    sentinel client: kilobytes per line otherwise.
    """
    lines = str(exc).strip().splitlines()
    # MasterNotFoundError: "No master found for 'x' : <the clients' reprs>".
    first = lines[0].split(" : <", 1)[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_unread_data(connection: Any) -> bool:
    """Whether bytes from Redis wait on ``connection`` (read or not yet): it is alive."""
    if connection is None or getattr(connection, "_sock", None) is None:
        return False
    try:
        return bool(connection.can_read(timeout=0))
    except (redis.RedisError, OSError, ValueError):
        return False  # a broken socket: the next read will say so


class Heard:
    """When each connection of one session last gave a sign of life."""

    def __init__(self) -> None:
        self._last: dict[Hashable, float] = {}

    def start(self, key: Hashable) -> None:
        """Start ``key``'s clock (when a command first went out on it)."""
        self._last.setdefault(key, time.monotonic())

    def heard(self, key: Hashable) -> None:
        self._last[key] = time.monotonic()

    def clear(self) -> None:
        self._last.clear()

    def check(self, connections: Iterable[tuple[Hashable, Any]]) -> float:
        """Raise :class:`Silent` if a connection was silent too long; else the proof time.

        ``connections`` are (key, redis-py connection) pairs. The result is
        the oldest sign of life among them: every connection was alive then,
        which :class:`~.health.Health` needs to end an outage.
        """
        now = time.monotonic()
        oldest = now
        for key, connection in connections:
            last = self._last.setdefault(key, now)
            if now - last > PUBSUB_SILENCE:
                if not _has_unread_data(connection):
                    raise Silent(
                        f"no answer from Redis ({key}) on the pub/sub connection "
                        f"for {now - last:.1f} s",
                        key,
                    )
                last = self._last[key] = now
            oldest = min(oldest, last)
        return oldest


def cut_connections(pool: Any) -> None:
    """Shut down (not close) the sockets of every connection of a redis-py pool.

    A caller blocked on a hung primary then reads EOF at once and gets
    redis-py's ConnectionError in its own thread or greenlet; an idle
    connection is reopened (asking the sentinels again) on its next use.
    ``pool.disconnect()`` would close sockets under their users instead,
    which redis-py answers with ``ValueError``s from a closed buffer.
    Reads the pools' connection lists (redis-py 8.1 internals).
    """
    connections = list(getattr(pool, "_connections", ()))  # BlockingConnectionPool
    connections += list(getattr(pool, "_available_connections", ()))
    connections += list(getattr(pool, "_in_use_connections", ()))
    for connection in connections:
        sock = getattr(connection, "_sock", None)
        if sock is None:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected
