"""Plain counters the server's hot paths bump, for metrics to export.

Counting an event costs one integer increment here; ``fws.metrics`` reads
these when it is scraped (or flushes them periodically), so the cost of
metrics stays off the per-message path. Keys are short stable strings, and
every module that counts something uses the names documented below.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["ServerStats"]


class ServerStats:
    """What one server process has counted since it started."""

    __slots__ = ("consumer_dropped", "disconnects", "handshakes")

    def __init__(self) -> None:
        self.handshakes: Counter[int] = Counter()
        """Upgrade requests by the HTTP status they got (101, 400, 401, 403, 426, 503...)."""
        self.disconnects: Counter[str] = Counter()
        """Connections the server cut, by why: ``slow_client``, ``rate_limit``..."""
        self.consumer_dropped = 0
        """Consumer-queue items dropped because the queue was full."""
