"""Supervised background greenlets: a task that dies is logged and restarted, never lost.

The server runs a few greenlets beside the connections: the consumer
pipeline's loop, the storage's pub/sub listener, the liveness watch (pings and
idle timeouts) and the parking watch. An exception that escapes one of them
would end it silently (gevent prints a traceback to stderr, and nothing
restarts it): the server would go on without pub/sub, or without keepalives.

``supervised`` runs such a task so that an unexpected exception is logged with
its traceback and the task restarted after a backoff (0.1 s, doubling up to
2 s). A task that dies ``max_deaths`` times within ``window`` seconds is
broken, not unlucky: ``on_give_up`` is called (the server stops itself and
the CLI exits 1, so a process manager restarts the whole process). A task
that returns has ended normally (a storage without pub/sub has nothing to
listen to), and ``GreenletExit`` is how the server stops a task.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import gevent

__all__ = ["FIRST_BACKOFF", "MAX_BACKOFF", "MAX_DEATHS", "WINDOW", "supervised"]

log = logging.getLogger("fws.supervise")

MAX_DEATHS = 5
WINDOW = 10.0
"""A task that dies ``MAX_DEATHS`` times within ``WINDOW`` seconds is given up on."""
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 2.0

# Not failures of the task: the server stopping it, or the process exiting.
_NOT_FAILURES = (gevent.GreenletExit, SystemExit, KeyboardInterrupt)


def supervised(
    name: str,
    task: Callable[[], None],
    on_give_up: Callable[[str, BaseException], None],
    *,
    max_deaths: int = MAX_DEATHS,
    window: float = WINDOW,
) -> gevent.Greenlet:
    """Spawn a greenlet that runs ``task`` and restarts it when it dies (see the module)."""
    return gevent.spawn(_run, name, task, on_give_up, max_deaths, window)


def _run(
    name: str,
    task: Callable[[], None],
    on_give_up: Callable[[str, BaseException], None],
    max_deaths: int,
    window: float,
) -> None:
    deaths: deque[float] = deque(maxlen=max_deaths)
    backoff = FIRST_BACKOFF
    while True:
        started = time.monotonic()
        try:
            task()
            return
        except _NOT_FAILURES:
            raise
        # BaseException too: a gevent.Timeout or a filter's own BaseException
        # escaping a pipeline kills the task just the same.
        except BaseException as exc:  # noqa: BLE001 - logged with traceback, then restarted
            now = time.monotonic()
            deaths.append(now)
            if now - started > window:
                backoff = FIRST_BACKOFF  # it ran well for a while: not a crash loop
            if len(deaths) == max_deaths and now - deaths[0] <= window:
                log.critical(
                    "background task %s died %d times in %.0f s; giving up",
                    name,
                    max_deaths,
                    now - deaths[0],
                    exc_info=exc,
                    extra={"event": "task_failed", "task": name},
                )
                on_give_up(name, exc)
                return
            log.error(
                "background task %s died; restarting it in %.1f s",
                name,
                backoff,
                exc_info=exc,
                extra={"event": "task_died", "task": name},
            )
        gevent.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
