"""Busy polling: the hub polls without sleeping for a moment after a reader waits.

Why: a client that sends again as soon as it has its answer, or a sender
streaming a broadcast, has its next message on the wire a few microseconds
after its reader went to wait. If the hub then blocks in ``epoll_wait``, the
server pays the kernel for a sleep and a wake-up, and the message waits for
that wake-up: with one message in flight, that was most of fws's round trip
(``docs/performance.rst``). While a libev idle watcher is active the loop
polls with a zero timeout instead of blocking, so the message is read the
moment it arrives, on the same CPU, still warm.

Spinning only pays when the next message comes within the window, and it
burns CPU when it does not. So it adapts to what readers see, at the cost of
a clock read per wait and per wake:

- a reader woken less than ``window`` after it began to wait (a hit) turns
  spinning on;
- a window that runs out with no reader waiting again (a miss) is counted;
  two misses in a row turn spinning off until the next hit.

A server whose clients send now and then never spins; a burst costs at most
two wasted windows. ``Server(busy_poll_us=0)`` (``--busy-poll-us 0``) turns
it off altogether, for a host where an idle-looking CPU matters more than
tens of microseconds.

No gevent import: the caller hands in the hub's loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stats import ServerStats

__all__ = ["MISSES_TO_STOP", "BusyPoll"]

MISSES_TO_STOP = 2
"""Windows in a row that pass with nothing read before spinning stops."""

_monotonic = time.monotonic


class BusyPoll:
    """One server's spinning: an idle watcher on its hub and the rule that starts it.

    ``waiting(now)`` is called, when ``enabled``, as a reader begins to wait
    (``now`` from ``time.monotonic()``); ``woke(since)`` when the wait it
    began at ``since`` brought data. Both run for every message a waiting
    reader gets, so they do as little as they can.

    The state is the server's, not a connection's: one client sending back to
    back turns spinning on for every reader's waits. That still wastes at
    most two windows per hit, since only hits reset the misses.
    """

    __slots__ = ("window", "enabled", "misses", "until", "_stats", "_watcher")

    def __init__(self, loop: Any, window: float, stats: ServerStats) -> None:
        self.window = window
        """Seconds the hub polls without sleeping after a reader starts to wait."""
        self.enabled = False
        """Whether readers' waits start a window (recent waits were short)."""
        self.misses = 0
        self.until = 0.0
        self._stats = stats
        """Where windows and misses are counted, for the metrics."""
        # ref=False: a spinning hub is not a reason for the loop to keep running.
        self._watcher = loop.idle(ref=False)

    @property
    def spinning(self) -> bool:
        """Whether the hub is polling without sleeping right now."""
        return bool(self._watcher.active)

    def waiting(self, now: float) -> None:
        """A reader begins to wait: poll without sleeping until ``now + window``.

        The caller checks ``enabled`` first (a method call saved per wait while off).
        """
        self.until = now + self.window
        if not self._watcher.active:
            self._watcher.start(self._poll)
            self._stats.busy_poll_windows += 1

    def woke(self, since: float) -> None:
        """A reader's wait that began at ``since`` is over: was it short enough to spin for?"""
        if _monotonic() - since < self.window:
            self.misses = 0
            self.enabled = True

    def _poll(self) -> None:
        # libev calls an idle watcher on each loop iteration with nothing else
        # to run, after a zero-timeout poll.
        if _monotonic() > self.until:
            self._watcher.stop()
            self._stats.busy_poll_misses += 1
            self.misses += 1
            if self.misses >= MISSES_TO_STOP:
                self.enabled = False

    def close(self) -> None:
        """Stop spinning for good (the server stops).

        A reader still running holds this object: a negative window makes every
        wait too long to turn spinning on again, at no cost to ``woke``.
        """
        self.enabled = False
        self.window = -1.0
        self._watcher.stop()
        self._watcher.close()
