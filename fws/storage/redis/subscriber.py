"""The pub/sub side: one session, its subscriptions, the heartbeat, reconnection.

:class:`Listener` owns every byte of the link's pub/sub session: other
threads only say which group channels they want (:meth:`Listener.want`) and
the listener subscribes between reads, at most ``POLL`` later. A join waits
on the returned event until Redis has confirmed the subscription, so a
member whose join returned receives every group message published after
that. The broadcast channel and this server's inbox are subscribed from the
start and never left: a client whose upgrade completed receives every
broadcast published after that, even the first client of an empty server.

The session is PINGed every ``PUBSUB_PING`` s and dropped when a connection
stays silent (:mod:`.liveness`). When the session fails, the listener logs
(through :class:`Health`), closes the command connections (callers blocked
on a hung primary get their error now, not after ``COMMAND_TIMEOUT``), waits
with redis-py's ``EqualJitterBackoff`` (0.1 s doubling to 2 s, times 0.5 to 1;
the first step again after ``PrimarySwitched``, when a new primary is up, and
after ``FailoverPending``, when one is about to be, ``QUICK_RETRIES`` times at
most since the last session that connected), opens a new session, resubscribes
everything and asks for a snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff

from .health import BACKOFF_CAP, BACKOFF_FIRST, Health
from .link import COMMAND_TIMEOUT, REDIS_ERRORS, Link, Subscriber
from .liveness import PUBSUB_PING, FailoverPending, PrimarySwitched
from .scripts import text

__all__ = ["POLL", "QUICK_RETRIES", "Listener"]

QUICK_RETRIES = 50
"""How many times FailoverPending retries at the first backoff step (0.05-0.1 s) since
the last session that connected: a few seconds for the promotion, then the usual
backoff, should none come."""

log = logging.getLogger("fws.storage.redis")

POLL = 0.02
"""How often the listener looks up from pub/sub: new group channels, heartbeat, stop.

A join of a group new to this server waits for the subscription: about half of
this, plus a round trip. Short, because only the listener may touch the session."""

_CONFIRMATIONS = frozenset({"subscribe", "ssubscribe", "unsubscribe", "sunsubscribe"})
_MESSAGES = frozenset({"message", "smessage"})


class Listener:
    """Reads pub/sub for one storage until ``closing`` is set.

    ``fixed`` channels (broadcast, inbox) and ``raw`` ones are subscribed on
    every session; group channels follow :meth:`want`/:meth:`unwant`.
    ``on_message(channel, data, raw)`` gets each message; ``on_connected`` runs
    once a session has every subscription confirmed (the storage queues a
    snapshot); ``on_beat`` every ``interval`` seconds; ``on_dirty`` when the
    state needs a snapshot and none is under way.
    """

    def __init__(
        self,
        link: Link,
        health: Health,
        *,
        fixed: tuple[str, ...],
        raw: tuple[str, ...],
        interval: float,
        on_message: Callable[[str, Any, bool], None],
        on_connected: Callable[[], None],
        on_beat: Callable[[], None],
        on_dirty: Callable[[], None],
    ) -> None:
        self.link = link
        self.health = health
        self.fixed = fixed
        self.raw = raw
        self.interval = interval
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_beat = on_beat
        self._on_dirty = on_dirty
        self.closing = threading.Event()
        self._session: Subscriber | None = None
        self._backoff = EqualJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_FIRST)
        self._failures = 0
        self._pending = 0  # FailoverPending retries without backoff since the last session
        self._retry_at = 0.0
        # Group channels: what the storage wants, and what this session has.
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._changed = False
        self._sent: dict[str, bool] = {}  # last command sent: True = subscribe
        self._inflight: dict[str, int] = {}  # commands sent, not yet confirmed
        self._confirmed: set[str] = set()
        self._waiters: dict[str, threading.Event] = {}

    # -- asked by other threads ------------------------------------------------------

    def want(self, channel: str) -> threading.Event | None:
        """Follow ``channel``; an event set once Redis confirms (None: already confirmed)."""
        with self._lock:
            if channel not in self._wanted:
                self._wanted.add(channel)
                self._changed = True
            if channel in self._confirmed:
                return None
            return self._waiters.setdefault(channel, threading.Event())

    def unwant(self, channel: str) -> None:
        with self._lock:
            if channel in self._wanted:
                self._wanted.discard(channel)
                self._changed = True

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Read, heartbeat and reconnect until ``closing`` is set."""
        try:
            while not self.closing.is_set():
                try:
                    if self._session is None:
                        self.connect()
                    self._read_loop()
                except REDIS_ERRORS as exc:
                    self.drop()
                    if self.closing.is_set():
                        break
                    self.health.failed(exc)
                    self._release_commands()
                    self.closing.wait(self.pause_after(exc))
                except Exception:
                    if self.closing.is_set():
                        break  # close() disconnected the pools under a command
                    # Our bug, not Redis's: say so loudly, but keep the link.
                    log.exception("redis listener failed; reconnecting")
                    self.drop()
                    self.closing.wait(self.pause_after(None))
        finally:
            self.drop()

    def pause_after(self, exc: BaseException | None) -> float:
        """Seconds to wait before the next session after ``exc`` (None: our bug); counts it.

        The backoff grows with each failure since the last session that
        connected; it starts over after ``PrimarySwitched`` (the new primary
        is up) and after ``FailoverPending`` (one is about to be), that one
        ``QUICK_RETRIES`` times in a row at most: should no replica ever be
        promoted, the usual backoff then.
        """
        if isinstance(exc, PrimarySwitched):
            self._failures = 0
        elif isinstance(exc, FailoverPending) and self._pending < QUICK_RETRIES:
            self._pending += 1
            self._failures = 0
        delay = self._backoff.compute(self._failures)
        self._failures += 1
        return float(delay)

    def connect(self) -> None:
        """Open a session, subscribe everything, and wait until Redis confirms it all.

        The wait is bounded by progress, not by a fixed budget: it fails when
        no confirmation came for ``COMMAND_TIMEOUT`` s (a server hosting tens
        of thousands of groups may need longer in all), or when the session
        goes silent for ``PUBSUB_SILENCE`` s (a hung primary).
        """
        started = time.monotonic()
        session = self.link.subscriber()
        self._session = session
        with self._lock:
            self._changed = True
        session.subscribe(*self.fixed)
        if self.raw:
            session.subscribe_raw(*self.raw)
        pending = set(self.fixed) | set(self.raw)
        self._reconcile(session)
        progress = next_ping = time.monotonic()
        while pending or any(self._inflight.values()):
            now = time.monotonic()
            if now - progress > COMMAND_TIMEOUT:
                raise redis.TimeoutError("Redis stopped confirming the subscriptions")
            if now >= next_ping:
                next_ping = now + PUBSUB_PING
                session.ping()
            message = session.get_message(timeout=POLL)
            if message is None:
                continue
            if message["type"] in _CONFIRMATIONS:
                progress = time.monotonic()
                channel = text(message["channel"])
                if channel in pending:
                    pending.discard(channel)
                    continue
            self._handle(message)
        self._failures = self._pending = 0
        if self.health.down:
            # None opened during the outage serves after it; a cluster's slot
            # table is re-read (the old one may name a hung primary).
            self._release_commands(refresh=True)
        self.health.set_subscribed(True, since=started)
        self._on_connected()

    def _release_commands(self, *, refresh: bool = False) -> None:
        """Close the link's command connections (see ``Link.reset``): none stays stuck."""
        try:
            self.link.reset(refresh=refresh)
        except REDIS_ERRORS as exc:
            log.debug("closing the command connections: %s", exc)

    def _read_loop(self) -> None:
        """Deliver messages; PING every ``PUBSUB_PING`` s; heartbeat every ``interval`` s.

        Liveness (the PINGs, see :mod:`.liveness`) is independent of the TTL:
        a hung or replaced primary ends the session 2-3 s after it stopped
        answering, whatever ``--redis_ttl`` says.
        """
        session = self._session
        assert session is not None
        interval = self.interval
        now = time.monotonic()
        next_beat = now + interval
        next_ping = now + PUBSUB_PING
        while not self.closing.is_set():
            if self._changed:
                self._reconcile(session)
            message = session.get_message(timeout=POLL)
            if message is not None:
                self._handle(message)
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + PUBSUB_PING
                self.health.alive(session.ping())
            if now >= next_beat:
                next_beat = now + interval
                self._on_beat()
            elif self.health.dirty and now >= self._retry_at:
                self._retry_at = now + self._backoff.compute(self._failures)
                self._on_dirty()

    def _reconcile(self, session: Subscriber) -> None:
        """Send the (un)subscriptions that make the session follow ``_wanted``."""
        with self._lock:
            self._changed = False
            following = {channel for channel, on in self._sent.items() if on}
            add = sorted(self._wanted - following)
            remove = sorted(following - self._wanted)
            for channel in add:
                self._sent[channel] = True
                self._inflight[channel] = self._inflight.get(channel, 0) + 1
            for channel in remove:
                self._sent[channel] = False
                self._inflight[channel] = self._inflight.get(channel, 0) + 1
                self._confirmed.discard(channel)  # no longer sure to receive it
        if add:
            session.subscribe(*add)
        if remove:
            session.unsubscribe(*remove)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in _MESSAGES:
            channel = text(message["channel"])
            self._on_message(channel, message["data"], channel in self.raw)
        elif kind in _CONFIRMATIONS:
            self._confirm(text(message["channel"]))

    def _confirm(self, channel: str) -> None:
        """Redis answered one (un)subscribe of ``channel``; in order, as it does."""
        with self._lock:
            left = self._inflight.get(channel, 0) - 1
            if left > 0:
                self._inflight[channel] = left
                return
            self._inflight.pop(channel, None)
            if self._sent.get(channel):
                self._confirmed.add(channel)
                waiter = self._waiters.pop(channel, None)
                if waiter is not None:
                    waiter.set()
            else:
                self._sent.pop(channel, None)

    def drop(self) -> None:
        """Forget the session (closing it); waiting joins are released."""
        self.health.set_subscribed(False)
        session, self._session = self._session, None
        with self._lock:
            self._sent.clear()
            self._inflight.clear()
            self._confirmed.clear()
            waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.set()  # an outage: joins do not wait for it
        if session is not None:
            try:
                session.close()
            except REDIS_ERRORS as exc:
                log.debug("closing the pub/sub connection: %s", exc)
