"""Run a callback once the hub has read what arrived, within a bound.

A broadcast to 1,000 clients costs 1,000 sends whether each send carries
one message or sixteen, and the sends are most of its cost (the kernel's
TCP path, not fws). A sender's messages come as a burst of separate
segments: a flusher that runs as soon as the first few are parsed sends
those alone, and the rest of the burst waits for the next 1,000 sends.
Measured on broadcast-1000 (``bench/syscalls.py``, window 16): fws read 1
to 16 messages a turn, 11 on average, socketify.py 15.

``AfterInput`` is the wait: a libev idle watcher, which libev calls only
after a poll (a zero-timeout one, while the watcher is active) found
nothing else to run; and a check watcher, called after every poll, which
runs the callback anyway once ``limit`` seconds have passed, so that a hub
that always has a reader to run still sends. The check runs when libev
polls, which gevent delays while it runs queued callbacks (up to its
switch interval, 5 ms): ``overdue()`` lets the code that starts the wait
see that the bound has passed (``fws.outbound.defer_broadcast`` then
flushes on the hub's next turn). (A libev timer was the first
bound tried: restarted each turn, it fired 14-83 µs after its start
instead of milliseconds later. A fired one-shot timer that is started
again fires at once, as ``Server._timed_run`` notes; a new timer
a turn would do, but the check watcher needs no allocation.)

No gevent import here: the server hands in its hub's loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["AFTER_INPUT_LIMIT", "AfterInput"]

AFTER_INPUT_LIMIT = 0.0005
"""Seconds a callback waits at most for the readers.

About what one broadcast to 100 clients takes (a tenth of one to 1,000), so
that a hub busy with other readers adds at most that to a broadcast's
latency.
"""

_monotonic = time.monotonic


class AfterInput:
    """``callback``, run in the hub once no reader is ready after ``start()``, or at the bound.

    The callback gets one argument: True when the bound ran it (the hub was
    never idle), False when the idle watcher did.

    ``start()`` while it is pending changes nothing: the first start's
    bound holds.
    """

    __slots__ = ("pending", "limit", "_deadline", "_callback", "_idle", "_check")

    def __init__(
        self, loop: Any, callback: Callable[[bool], object], limit: float = AFTER_INPUT_LIMIT
    ) -> None:
        self.pending = False
        """Whether the callback waits to run."""
        self.limit = limit
        self._deadline = 0.0
        self._callback = callback
        # ref=False: a waiting callback is not a reason for the loop to keep running.
        self._idle = loop.idle(ref=False)
        self._check = loop.check(ref=False)

    def start(self) -> None:
        """Run the callback once no reader is ready, or ``limit`` s from now at the latest."""
        if not self.pending:
            self._deadline = _monotonic() + self.limit
            self._idle.start(self._run, False)
            self._check.start(self._run_if_due)
            self.pending = True  # only once both watch: else the next start tries again

    def overdue(self) -> bool:
        """Whether the callback waits past its bound (libev has not had the hub since).

        gevent runs queued callbacks for up to its switch interval (5 ms)
        before libev polls again, so a greenlet that loops on
        ``gevent.sleep(0)`` keeps the check watcher from running; the caller
        asks this instead, and runs the callback's work itself.
        """
        return self.pending and _monotonic() >= self._deadline

    def stop(self) -> None:
        """Run nothing (the server stops)."""
        self.pending = False
        self._idle.stop()
        self._check.stop()

    def _run_if_due(self) -> None:
        if _monotonic() >= self._deadline:
            self._run(True)

    def _run(self, bounded: bool) -> None:
        self.stop()
        self._callback(bounded)
