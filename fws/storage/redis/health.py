"""Whether this server is in step with Redis, and the one warning per outage.

The writer, the subscriber and the publishing calls all report here. Three
facts decide everything:

* ``down_since``: a Redis call failed and nothing has proven Redis back yet.
  Meanwhile messages for other servers are counted as lost, not queued
  (pub/sub is at most once), and reads raise ``StorageUnavailable``.
* ``dirty``: Redis may not hold this server's state (a write failed, Redis
  restarted, keys expired): a snapshot must be written. Only a snapshot that
  was started after the last failure clears it (``epoch``).
* ``subscribed``: the pub/sub session is up with every subscription confirmed.

An outage ends when the session is subscribed, a snapshot has succeeded,
and the session has proven alive *after* the failure (``alive``: opened
after it, or every connection answered since): a session still listening
to a hung or replaced primary must not end it. Then one line says how long
it lasted and how many messages were lost. A failed PUBLISH starts an
outage too but leaves the state alone (``state_lost=False``): it says
nothing about this server's keys, and forcing full snapshots for it would
be heavy, self-inflicted load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .liveness import describe

__all__ = ["BACKOFF_CAP", "BACKOFF_FIRST", "Health"]

log = logging.getLogger("fws.storage.redis")

BACKOFF_FIRST = 0.1
BACKOFF_CAP = 2.0
"""Reconnection delays double from BACKOFF_FIRST up to this many seconds (with jitter)."""


class Health:
    """The outage state of one storage; safe to call from any thread or greenlet."""

    def __init__(self, url: str, stats: Callable[[], Any]) -> None:
        self.url = url
        self._stats = stats  # the server's ServerStats, or None before open/after close
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.dirty = True  # nothing written yet: the first snapshot writes everything
        self.epoch = 0
        self.subscribed = False
        self.closing = False
        self._lost = 0
        self._alive_since = 0.0  # the session is known alive since then

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def live(self) -> bool:
        """Messages from other servers arrive now (``pubsub_live``)."""
        return self.subscribed and self.down_since is None

    def failed(self, exc: BaseException, *, state_lost: bool = True) -> None:
        """A Redis call failed: an outage; the first failure of one is logged.

        ``state_lost``: the call may have left this server's keys wrong (a
        write, the pub/sub session): a snapshot must rewrite them.
        """
        with self._lock:
            if state_lost:
                self.dirty = True
                self.epoch += 1
            if self.down_since is not None:
                log.debug("Redis still unreachable: %s", describe(exc))
                return
            self.down_since = time.monotonic()
            if self.closing:
                return  # quietly: the server is stopping anyway
            stats = self._stats()
            if stats is not None:
                stats.redis_outages += 1
        log.warning(
            "Redis at %s unreachable (%s); serving local clients only, reconnecting "
            "with backoff up to %.0f s",
            self.url,
            describe(exc),
            BACKOFF_CAP,
        )

    def mark_dirty(self) -> None:
        """Redis lost this server's keys (restart, eviction) though it answers: rewrite them."""
        with self._lock:
            self.dirty = True
            self.epoch += 1

    def lost_one(self) -> None:
        """A message for other servers could not be published."""
        with self._lock:
            self._lost += 1
        stats = self._stats()
        if stats is not None:
            stats.redis_messages_lost += 1

    def synced(self, epoch: int) -> None:
        """A snapshot built at ``epoch`` is in Redis."""
        with self._lock:
            if epoch == self.epoch:
                self.dirty = False
        self._maybe_recovered()

    def set_subscribed(self, subscribed: bool, since: float = 0.0) -> None:
        """The session is (not) subscribed; ``since``: when it was opened (monotonic)."""
        with self._lock:
            self.subscribed = subscribed
            self._alive_since = since if subscribed else 0.0
        if subscribed:
            self._maybe_recovered()

    def alive(self, since: float) -> None:
        """Every connection of the session answered at or after ``since`` (monotonic)."""
        with self._lock:
            if not self.subscribed or since <= self._alive_since:
                return
            self._alive_since = since
        self._maybe_recovered()

    def _maybe_recovered(self) -> None:
        with self._lock:
            if self.down_since is None or not self.subscribed or self.dirty:
                return
            if self._alive_since < self.down_since:
                return  # the session may be listening to the node that failed
            outage = time.monotonic() - self.down_since
            self.down_since = None
            lost, self._lost = self._lost, 0
        if lost:
            log.warning(
                "Redis at %s is back after %.1f s; resubscribed and rewrote this server's "
                "groups; %d message(s) for other servers could not be sent meanwhile",
                self.url,
                outage,
                lost,
            )
        else:
            log.info(
                "Redis at %s is back after %.1f s; resubscribed and rewrote this server's groups",
                self.url,
                outage,
            )
