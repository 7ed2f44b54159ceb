"""Plain counters the server's hot paths bump, for metrics to export.

Counting an event costs one integer increment here; ``fws.metrics`` reads
these when it is scraped (or flushes them periodically), so the cost of
metrics stays off the per-message path. Keys are short stable strings, and
every module that counts something uses the names documented below.

Per-opcode counts are lists indexed by the frame opcode (0-15). Per message
even an increment costs about 1 % of an echo, so the counts are added by
runs: the parser adds each run of frames with one opcode in a chunk at once,
and a connection adds each run of messages it sent with one first byte when
the run ends (``Connection.flush_sent_counts``), from totals it keeps anyway.
``bench/metrics_cost.py`` measures what is left.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

__all__ = [
    "FILTER_TIME_BUCKETS",
    "SAMPLED_EVENTS",
    "SAMPLE_INTERVAL",
    "FilterTimes",
    "ServerStats",
]

FILTER_TIME_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds, in seconds, of the filter-time histogram (a filter run is µs to s)."""


SAMPLED_EVENTS: frozenset[str] = frozenset({"data", "message", "consumer"})
"""Events that run per message: their pipeline runs are sampled in time, not all timed."""

SAMPLE_INTERVAL = 0.01
"""After a timed run of a per-message event, seconds before its next run is timed.

Two clock reads and a bucket search cost about 0.2 µs, several per cent of
an echo, and even counting runs to time one in 64 cost about 1 % of an
echo (``bench/metrics_cost.py``). Sampled in time, an untimed run takes
exactly the path it takes with metrics off: the server times the next run
once the interval has passed (a one-shot timer arms it, so an idle server
wakes for nothing). That is at most 100 timed runs a second per event:
thousands a minute, plenty for a histogram. The other events (connect,
open, disconnect) run once per connection: every run is timed.
"""


class FilterTimes:
    """A histogram of one event's pipeline run times, in plain ints: bucket counts and a sum.

    ``counts[i]`` counts runs that took at most ``FILTER_TIME_BUCKETS[i]``
    seconds and more than the bound before it; the last slot counts the rest
    (+Inf). Not cumulative, as prometheus_client keeps its buckets.

    ``sampled``: only the runs the server chose to time are in it (see
    ``SAMPLE_INTERVAL``), so its count is that of the timed runs, not of all.
    """

    __slots__ = ("counts", "sampled", "total")

    def __init__(self, sampled: bool = False) -> None:
        self.counts = [0] * (len(FILTER_TIME_BUCKETS) + 1)
        self.total = 0.0
        self.sampled = sampled

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(FILTER_TIME_BUCKETS, seconds)] += 1
        self.total += seconds


class ServerStats:
    """What one server process has counted since it started."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "broadcast_waits",
        "broadcast_waits_bounded",
        "busy_poll_misses",
        "busy_poll_windows",
        "close_codes_received",
        "close_codes_sent",
        "consumer_dropped",
        "count_messages",
        "disconnects",
        "filter_errors",
        "filter_times",
        "handshakes",
        "messages_received",
        "messages_sent",
        "redis_envelopes_dropped",
        "redis_messages_lost",
        "redis_outages",
        "upgrades_at_accept",
    )

    def __init__(self) -> None:
        self.handshakes: Counter[int] = Counter()
        """Upgrade requests by the HTTP status they got (101, 400, 401, 403, 426, 503...)."""
        self.upgrades_at_accept = 0
        """Of the 101s, those done in the accept callback, with no greenlet
        (``fws.at_accept``)."""
        self.disconnects: Counter[str] = Counter()
        """Connections the server cut, by why: ``slow_client``, ``rate_limit``..."""
        self.consumer_dropped = 0
        """Consumer-queue items dropped because the queue was full."""
        self.count_messages = True
        """Whether the per-message counts below (messages and bytes by opcode) are kept:
        the server turns them off with its metrics, so that no metrics cost nothing."""
        self.messages_received = [0] * 16
        """Frames by opcode, counted by the parser: text and binary ones start a message
        (its other fragments count as continuation, 0), ping, pong and close are one each."""
        self.bytes_received = [0] * 16
        """By each frame's opcode, continuation (0) included: bytes on the wire, headers too."""
        self.messages_sent = [0] * 16
        """By opcode, every frame queued to a client (fws never fragments what it sends)."""
        self.bytes_sent = [0] * 16
        """By opcode: bytes of the frames queued to clients, headers too, compressed if so."""
        self.close_codes_sent: Counter[int] = Counter()
        """Close frames the server sent (or answered with), by code."""
        self.close_codes_received: Counter[int] = Counter()
        """Close frames clients sent, by code (1005: a close frame without a code)."""
        self.filter_errors: Counter[tuple[str, str]] = Counter()
        """Filters that raised, by (event, filter name)."""
        self.filter_times: dict[str, FilterTimes] = {}
        """Per event: how long its pipeline ran (events with filters only)."""
        self.redis_outages = 0
        """Times the Redis storage lost Redis (one per outage, however many failures it saw)."""
        self.redis_messages_lost = 0
        """Messages for other servers that could not be published during Redis outages."""
        self.busy_poll_windows = 0
        """Times the hub began to poll without sleeping (``fws.busy_poll``)."""
        self.broadcast_waits = 0
        """Turns whose broadcasts waited for the hub to read what arrived (``fws.after_input``)."""
        self.broadcast_waits_bounded = 0
        """Those the bound ended, the hub never idle: broadcasts that waited the whole bound."""
        self.busy_poll_misses = 0
        """Busy-polling windows that ran out with nothing read: CPU spent for nothing."""
        self.redis_envelopes_dropped: Counter[str] = Counter()
        """Envelopes from Redis refused undelivered, by reason (a fixed set: ``version``,
        ``op``, ``size``, ``malformed``; see ``fws.storage.redis.envelope``)."""

    def count_sent(self, frame: bytes) -> None:
        """Count a control frame (ping, pong, close) queued to a client; connections
        count their messages by runs (``Connection.flush_sent_counts``)."""
        if self.count_messages:
            opcode = frame[0] & 0x0F
            self.messages_sent[opcode] += 1
            self.bytes_sent[opcode] += len(frame)

    def filter_time(self, event: str) -> FilterTimes:
        """The histogram of ``event``'s pipeline run times, made on first use."""
        times = self.filter_times.get(event)
        if times is None:
            times = self.filter_times[event] = FilterTimes(event in SAMPLED_EVENTS)
        return times
