"""Prometheus metrics: turn what the server counted (``fws.stats``) into metric families.

The hot paths only bump plain ints in ``ServerStats``. ``Metrics.flush`` adds
what was counted since the previous flush to real prometheus_client metric
objects, and sets the gauges. One design serves both of prometheus_client's
modes:

- single process: the scrape flushes, then renders this server's own
  registry, so nothing runs between scrapes;
- multi-process (``PROMETHEUS_MULTIPROC_DIR`` names a directory, as the
  ``--workers`` supervisor sets it): each worker's values live in mmap files
  in that directory, a scrape on any worker aggregates them with
  ``MultiProcessCollector``, and so every worker also flushes every
  ``FLUSH_INTERVAL`` seconds (the server runs ``flush_forever``) and once
  more as it stops, when its live gauges are removed.

A custom collector reading ``ServerStats`` at scrape time would be simpler for
one process, but collectors do not aggregate across processes; deltas
flushed into real metrics do, for the same code.

prometheus_client is imported when a ``Metrics`` is made, not with this
module: it picks its value class (in-memory or mmap) from the environment
when it is first imported.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Literal

from .errors import ConfigurationError
from .http import respond
from .stats import FILTER_TIME_BUCKETS, ServerStats

__all__ = ["FLUSH_INTERVAL", "MULTIPROC_ENV", "Metrics", "metrics_settings_problem", "opcode_name"]

log = logging.getLogger("fws.metrics")

FLUSH_INTERVAL = 1.0
"""Seconds between flushes in multi-process mode, where a scrape reads other workers' files."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The ServerStats counters a flush exports, by shape; each is also the name of
# the Metrics attribute (the prometheus_client family) it goes to.
_BY_OPCODE = ("messages_received", "messages_sent", "bytes_received", "bytes_sent")
_LABELLED = (
    "handshakes",
    "close_codes_sent",
    "close_codes_received",
    "disconnects",
    "filter_errors",
    "redis_envelopes_dropped",
)
_SCALARS = (
    "consumer_dropped",
    "redis_outages",
    "redis_messages_lost",
    "busy_poll_windows",
    "busy_poll_misses",
    "broadcast_waits",
    "broadcast_waits_bounded",
    "upgrades_at_accept",
)

_OPCODES = {
    0x0: "continuation",
    0x1: "text",
    0x2: "binary",
    0x8: "close",
    0x9: "ping",
    0xA: "pong",
}

_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def metrics_settings_problem(metrics: bool, port: int | None, host: str | None) -> str | None:
    """What is contradictory in these metrics settings, or None.

    One wording for ``Server`` (a ConfigurationError) and ``fws_server``
    (a usage error, before any worker starts).
    """
    if port is not None and not metrics:
        return "--metrics-port needs metrics on (drop --no-metrics)"
    if host is not None and port is None:
        return "--metrics-host needs --metrics-port"
    return None


def opcode_name(opcode: int) -> str:
    """The label value for a frame opcode: ``text``, ``binary``, ``ping``... or ``0x3``."""
    return _OPCODES.get(opcode, f"{opcode:#x}")


class Metrics:
    """The Prometheus metrics of one server, fed from its ``ServerStats``.

    ``connections`` and ``pubsub_live`` are read at each flush for the
    gauges; ``settle_connections`` is called first: it brings every open
    connection's sent-message counts into ``stats`` (connections count them
    by runs) and returns the bytes queued to clients, for the gauge.
    ``multiprocess_dir`` (default: the ``PROMETHEUS_MULTIPROC_DIR``
    environment variable; ``None``: single process) is the directory
    workers share.
    """

    def __init__(
        self,
        stats: ServerStats,
        *,
        connections: Callable[[], int],
        settle_connections: Callable[[], int],
        pubsub_live: Callable[[], bool],
        multiprocess_dir: str | None = None,
    ) -> None:
        if multiprocess_dir is None:
            multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        if multiprocess_dir is not None and not os.path.isdir(multiprocess_dir):
            raise ConfigurationError(
                f"{MULTIPROC_ENV} is not a directory: {multiprocess_dir} (create it, empty, "
                "before the workers start)"
            )
        self.multiprocess_dir = multiprocess_dir
        self._stats = stats
        self._connections = connections
        self._settle_connections = settle_connections
        self._pubsub_live = pubsub_live
        self._closed = False

        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        # The value class is chosen when prometheus_client is first imported;
        # if that was before the environment named the directory (or after it
        # was removed), values would silently stay in this process's memory.
        multiprocess_values = values.ValueClass is not values.MutexValue
        if multiprocess_values != (multiprocess_dir is not None):
            if multiprocess_dir is not None:
                os.environ[MULTIPROC_ENV] = multiprocess_dir
            values.ValueClass = values.get_value_class()

        # Metrics are registered in a registry of this server's own, never the
        # global one: tests run several servers in one process.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Any:
            return Counter(name, doc, tuple(labels), registry=registry)

        def gauge(name: str, doc: str, mode: Literal["livesum", "livemin"]) -> Any:
            return Gauge(name, doc, registry=registry, multiprocess_mode=mode)

        self.connections = gauge("fws_connections", "Open WebSocket connections.", "livesum")
        self.outbound_queue = gauge(
            "fws_outbound_queue_bytes",
            "Bytes queued to clients and not yet written to their sockets.",
            "livesum",
        )
        self.pubsub_live = gauge(
            "fws_pubsub_live",
            "1 while messages from other servers can arrive (subscribed and in sync), else 0; "
            "the lowest over workers.",
            "livemin",
        )
        self.handshakes = counter(
            "fws_handshakes_total", "WebSocket upgrade requests by HTTP status.", ["status"]
        )
        self.messages_received = counter(
            "fws_messages_received_total",
            "Messages (text, binary) and control frames received from clients.",
            ["opcode"],
        )
        self.messages_sent = counter(
            "fws_messages_sent_total",
            "Frames queued to clients (messages and control frames).",
            ["opcode"],
        )
        self.bytes_received = counter(
            "fws_bytes_received_total",
            "WebSocket frame bytes received (headers included), by frame opcode.",
            ["opcode"],
        )
        self.bytes_sent = counter(
            "fws_bytes_sent_total",
            "WebSocket frame bytes queued to clients (headers included, compressed if so).",
            ["opcode"],
        )
        self.close_codes_sent = counter(
            "fws_close_codes_sent_total", "Close frames sent to clients, by close code.", ["code"]
        )
        self.close_codes_received = counter(
            "fws_close_codes_received_total",
            "Close frames received from clients, by close code (1005: no code).",
            ["code"],
        )
        self.disconnects = counter(
            "fws_disconnects_total",
            "Connections the server cut, by reason (slow_client, rate_limit...).",
            ["reason"],
        )
        self.filter_errors = counter(
            "fws_filter_errors_total",
            "Filters that raised, by event and filter.",
            ["event", "filter"],
        )
        self.filter_seconds = Histogram(
            "fws_filter_duration_seconds",
            "Time an event's pipeline took to run, in seconds.",
            ("event",),
            buckets=FILTER_TIME_BUCKETS,
            registry=registry,
        )
        self.consumer_dropped = counter(
            "fws_consumer_dropped_total", "Consumer-queue items dropped because it was full."
        )
        self.redis_outages = counter(
            "fws_redis_outages_total", "Times this server lost Redis (one per outage)."
        )
        self.redis_messages_lost = counter(
            "fws_redis_messages_lost_total",
            "Messages for other servers that could not be published during Redis outages.",
        )
        self.redis_envelopes_dropped = counter(
            "fws_redis_envelopes_dropped_total",
            "Envelopes from Redis dropped undelivered, by reason (version, op, size, malformed).",
            ["reason"],
        )
        self.busy_poll_windows = counter(
            "fws_busy_poll_windows_total",
            "Times the server began to poll without sleeping after a client's message "
            "(see --busy-poll-us).",
        )
        self.busy_poll_misses = counter(
            "fws_busy_poll_misses_total",
            "Busy-polling windows that ran out with nothing read; each spent up to "
            "--busy-poll-us of CPU for nothing.",
        )
        self.broadcast_waits = counter(
            "fws_broadcast_waits_total",
            "Times broadcasts to every client waited for the server to read what had arrived "
            "(see --broadcast-wait-us).",
        )
        self.broadcast_waits_bounded = counter(
            "fws_broadcast_waits_bounded_total",
            "Broadcast waits that lasted the whole --broadcast-wait-us: the server always had "
            "a client to read, and the broadcasts waited that long.",
        )
        self.upgrades_at_accept = counter(
            "fws_upgrades_at_accept_total",
            "Upgrades (of fws_handshakes_total's 101s) done as the client was accepted, with "
            "no greenlet: the server has no connect or open filters and the client's request "
            "had arrived.",
        )
        # Series a dashboard expects to see at 0 before anything happened.
        for opcode in ("text", "binary"):
            for family in (self.messages_received, self.messages_sent):
                family.labels(opcode)
        for reason in ("slow_client", "rate_limit"):
            self.disconnects.labels(reason)
        self.handshakes.labels("101")

        # What was flushed already: flushes add only the difference.
        self._seen_lists: dict[str, list[int]] = {name: [0] * 16 for name in _BY_OPCODE}
        self._seen_counters: dict[str, dict[Any, int]] = {name: {} for name in _LABELLED}
        self._seen_scalars: dict[str, int] = dict.fromkeys(_SCALARS, 0)
        self._seen_times: dict[str, tuple[list[int], float]] = {}

        self._render_registry: Any = registry
        if multiprocess_dir is not None:
            self._render_registry = CollectorRegistry()
            self._render_registry.register(_SettledFiles(multiprocess_dir))
        else:
            from prometheus_client import ProcessCollector

            # Memory, CPU and descriptors of this process; in multi-process
            # mode these would be one random worker's, so they are left out.
            ProcessCollector(registry=registry)
        self.flush()

    @property
    def multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    # -- flushing ------------------------------------------------------------------

    def flush(self) -> None:
        """Add what ``ServerStats`` counted since the last flush; set the gauges.

        Runs without yielding, so it sees one consistent moment of the counters.
        """
        if self._closed:
            return
        outbound = self._settle_connections()  # first: the counts below are then complete
        stats = self._stats
        for name in _BY_OPCODE:
            counts, seen = getattr(stats, name), self._seen_lists[name]
            family = getattr(self, name)
            for opcode, value in enumerate(counts):
                # Continuation frames are fragments of messages counted already.
                if value != seen[opcode] and (opcode or name != "messages_received"):
                    family.labels(opcode_name(opcode)).inc(value - seen[opcode])
                    seen[opcode] = value
        for name in _LABELLED:
            counted = getattr(stats, name)
            seen_counts, family = self._seen_counters[name], getattr(self, name)
            for key, value in tuple(counted.items()):
                before = seen_counts.get(key, 0)
                if value != before:
                    labels = key if isinstance(key, tuple) else (key,)
                    family.labels(*(str(label) for label in labels)).inc(value - before)
                    seen_counts[key] = value
        for name in _SCALARS:
            value = getattr(stats, name)
            if value != self._seen_scalars[name]:
                getattr(self, name).inc(value - self._seen_scalars[name])
                self._seen_scalars[name] = value
        for event, times in tuple(stats.filter_times.items()):
            self._flush_times(event, times.counts, times.total)
        self.connections.set(self._connections())
        self.outbound_queue.set(outbound)
        self.pubsub_live.set(1 if self._pubsub_live() else 0)

    def _flush_times(self, event: str, counts: list[int], total: float) -> None:
        seen_counts, seen_total = self._seen_times.get(event, ([0] * len(counts), 0.0))
        if counts == seen_counts:
            return
        child = self.filter_seconds.labels(event)
        # Histogram has no public way to add many observations at once, and
        # observing each run again would cost what the counters save. Its
        # buckets are non-cumulative values (prometheus_client >= 0.4, and
        # tests/test_metrics.py checks the rendered histogram).
        for index, value in enumerate(counts):
            if value != seen_counts[index]:
                child._buckets[index].inc(value - seen_counts[index])
        child._sum.inc(total - seen_total)
        self._seen_times[event] = (list(counts), total)

    def close(self) -> None:
        """Flush a last time; in multi-process mode, drop this process's live gauges.

        Counters stay in their files, so totals do not go down when a worker
        exits. A directory the supervisor made for its workers is its own and
        goes with it; one the operator set (PROMETHEUS_MULTIPROC_DIR) is never
        cleared by fws, so it must be emptied before each start, or counters
        carry over from the last run (prometheus_client's documented rule).
        """
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    # -- serving ---------------------------------------------------------------------

    def render(self) -> bytes:
        """The metrics in Prometheus text format, flushed first."""
        from prometheus_client import generate_latest

        self.flush()
        return generate_latest(self._render_registry)

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI application: ``GET /metrics`` (or HEAD) renders; anything else is refused."""
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path != "/metrics":
            not_found = b"not found: metrics are at /metrics\n"
            return respond(start_response, "404 Not Found", not_found)
        if method not in ("GET", "HEAD"):
            return respond(
                start_response,
                "405 Method Not Allowed",
                b"/metrics answers GET and HEAD only\n",
                extra=[("Allow", "GET, HEAD")],
            )
        try:
            body = self.render()
        except Exception:  # our bug or an unreadable directory: not the scraper's fault
            log.exception("rendering /metrics failed")
            return respond(start_response, "500 Internal Server Error", b"metrics failed\n")
        return respond(
            start_response, "200 OK", body, content_type=_TEXT_FORMAT, head=method == "HEAD"
        )


class _SettledFiles:
    """``MultiProcessCollector``, minus the files another process is creating right now.

    prometheus_client creates a value file empty and then sizes it; a scrape
    that reads it in between fails (``struct.error``), and so would the whole
    scrape. Such a file holds no value yet: leaving it out loses nothing.
    Likewise a file deleted between the listing and the merge (a stopped
    process's live gauge, or a directory being cleared) is left out, rather
    than fail the scrape with 500.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = self._files()
        while True:
            try:
                return MultiProcessCollector.merge(files, accumulate=True)
            except FileNotFoundError as exc:
                if exc.filename not in files:
                    raise
                # Each pass drops the missing file, so this ends.
                files = [name for name in files if name != exc.filename]

    def _files(self) -> list[str]:
        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            try:
                if os.path.getsize(name):
                    files.append(name)
            except FileNotFoundError:  # a live gauge of a process that just stopped
                continue
        return files
