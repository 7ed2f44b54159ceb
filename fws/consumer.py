"""The consumer pipeline's queue: bounded, and a full queue drops items, never blocks.

Producers are the storage's pub/sub listener (every message that arrives on a
subscribed channel), ``Storage.publish`` and filters that put items on
``connection.queue`` themselves. If the consumer pipeline is slower than they
are, an unbounded queue grows until the process runs out of memory; a queue
that blocked its producer would stall the Redis listener, and with it every
broadcast from other servers. So a full queue drops the new item, counts it
(``ServerStats.consumer_dropped``, through ``on_drop``) and says so in the log:
one warning when a burst of drops starts, a summary at most every
``report_every`` seconds while it lasts, and one when it ends. A burst ends
when a put finds the queue at most half full, or when no item was dropped for
``report_every`` seconds: under steady overload the queue stays near full and
every put that fits between two drops would otherwise end one burst and start
the next, two warnings per dropped item.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent.queue

__all__ = ["ConsumerQueue"]

log = logging.getLogger("fws.consumer")


class ConsumerQueue(gevent.queue.Queue):
    """A gevent queue whose ``put`` never blocks: past ``maxsize`` items, it drops.

    ``maxsize`` ``None``: unbounded (nothing is ever dropped). ``on_drop`` is
    called once per dropped item (the server counts it for metrics).
    """

    def __init__(
        self,
        maxsize: int | None,
        *,
        on_drop: Callable[[], None] | None = None,
        report_every: float = 5.0,
    ) -> None:
        super().__init__(maxsize)
        self._on_drop = on_drop
        self._report_every = report_every
        self._burst_dropped = 0  # dropped since the burst began
        self._burst_started = 0.0
        self._dropped_at = 0.0  # the last drop
        self._unreported = 0  # dropped since the last log line
        self._reported_at = 0.0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``item`` at once, or drop it if the queue is full (``block`` is ignored).

        A producer is never suspended here: the pub/sub listener must keep
        reading whatever the consumer pipeline does.
        """
        try:
            super().put(item, False)
        except gevent.queue.Full:
            self._drop()
            return
        if self._burst_dropped and (
            # ``qsize() - 1``: the queue as this put found it.
            (self.qsize() - 1) * 2 <= self.maxsize
            or time.monotonic() - self._dropped_at >= self._report_every
        ):
            self.report_drops()

    def put_nowait(self, item: Any) -> None:
        self.put(item, False)

    def report_drops(self) -> None:
        """Log the end of a burst of drops, if one is going on (the server calls it at stop)."""
        if not self._burst_dropped:
            return
        log.warning(
            "consumer queue: %d items dropped in all, over %.1f s; it has room again",
            self._burst_dropped,
            time.monotonic() - self._burst_started,
            extra={"event": "consumer_queue_drops", "dropped": self._burst_dropped},
        )
        self._burst_dropped = self._unreported = 0

    def _drop(self) -> None:
        if self._on_drop is not None:
            self._on_drop()
        now = self._dropped_at = time.monotonic()
        self._burst_dropped += 1
        if self._burst_dropped == 1:
            self._burst_started = self._reported_at = now
            log.warning(
                "consumer queue full (%d items): dropping new items until the consumer "
                "pipeline catches up (see --max-consumer-queue)",
                self.maxsize,
                extra={"event": "consumer_queue_full", "maxsize": self.maxsize},
            )
            return
        self._unreported += 1
        if now - self._reported_at >= self._report_every:
            log.warning(
                "consumer queue still full: %d items dropped in the last %.0f s",
                self._unreported,
                now - self._reported_at,
                extra={"event": "consumer_queue_drops", "dropped": self._unreported},
            )
            self._reported_at = now
            self._unreported = 0
