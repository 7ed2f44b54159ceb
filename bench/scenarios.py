"""The scenarios of issue 4, each a function of one running server.

A scenario's ``measure`` is one run against one running server and returns
metric name -> number. Throughput runs are repeated (by bench/run.py, round
robin over the servers, so that a burst of other load on the machine does not
hit one server's every run) and the run with the median headline number is
kept whole (so its p99 and CPU belong to the same run). The load
generator's own CPU (``client CPU %``) rides along with every throughput
number, so a reader can see the client was not what limited it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import loadgen
from procs import ServerProcess, cpu_seconds, rss_bytes


@dataclass(frozen=True)
class Settings:
    """How long and how often: ``--quick`` shortens everything."""

    repeats: int = 3
    warmup: float = 1.0
    duration: float = 2.0
    latency_duration: float = 3.0
    idle_connections: int = 10_000

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            repeats=1, warmup=0.5, duration=1.0, latency_duration=1.0, idle_connections=2_000
        )


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    label: str
    higher_is_better: bool
    digits: int = 0


CLIENT_CPU = Metric("client_cpu", "client CPU %", False)
SERVER_CPU = Metric("server_cpu", "server CPU %", True)
# The server's CPU time per message or delivery: which server does the work with
# less, also where the load generator's core is full and the rates are lower bounds.
SERVER_US_PER_DELIVERY = Metric("server_us_each", "server CPU us/delivery", False, 3)
SERVER_US_PER_MESSAGE = Metric("server_us_each", "server CPU us/message", False, 3)

Result = dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """A named measurement: the server mode it needs and the rows it fills."""

    name: str
    title: str
    mode: str  # "echo" or "broadcast": which server program to start
    metrics: tuple[Metric, ...]
    measure: Callable[[ServerProcess, Settings], Result]  # one run
    repeated: bool = True  # False: one run is the measurement (latency, memory)
    key: str | None = None  # the number whose median run is kept; None: the first metric's

    @property
    def headline(self) -> str:
        return self.key or self.metrics[0].key


def _url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/"


def median_run(runs: list[Result], key: str) -> Result:
    """The run whose ``key`` is the median (the upper one for an even count)."""
    ordered = sorted(runs, key=lambda run: run[key])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs"] = [run[key] for run in runs]
    chosen["spread"] = (
        (max(chosen["runs"]) - min(chosen["runs"])) / chosen[key] if chosen[key] else 0.0
    )
    return chosen


class Unsupported(RuntimeError):
    """The server cannot do what the scenario measures (permessage-deflate): n/a, not failed."""


def _deflated(result: Result, expected: int, config: Result) -> Result:
    """``result`` if every connection negotiated deflate when the client offered it.

    None of them: the server has no deflate (Unsupported, "n/a" in the table).
    Some but not all: something broke, and the run fails rather than show a
    quiet "n/a" (fws included).
    """
    negotiated = result.get("deflate_negotiated", 0)
    if config.get("compression") and negotiated < expected:
        message = f"permessage-deflate on {negotiated} of {expected} connections"
        if negotiated:
            raise loadgen.LoadgenError(message)
        raise Unsupported(f"not supported: {message}")
    return result


def _once(server: ServerProcess, settings: Settings, config: Result, connections: int) -> Result:
    base = {"url": _url(server), "warmup": settings.warmup, "duration": settings.duration}
    result = loadgen.run({**base, **config}, server.pid, server_pinned=server.pinned)
    if "server_rss_end" in result:
        # Busy connections: their buffers, codecs and greenlets, over a fresh
        # server's RSS (so one-off allocations of the first connections count too).
        grown = result["server_rss_end"] - result["server_rss_start"]
        result["busy_kb_per_connection"] = grown / connections / 1000
    rate = result.get("deliveries_per_s") or result.get("messages_per_s")
    if rate and result.get("server_cpu") is not None:
        result["server_us_each"] = result["server_cpu"] / 100 / rate * 1e6
    return result


def _echo(
    connections: int,
    inflight: int,
    size: int,
    payload: str = "binary",
    compression: bool = False,
    client: str = "ws",
) -> Callable[..., Result]:
    def measure(server: ServerProcess, settings: Settings) -> Result:
        config = {
            "scenario": "echo",
            "client": client,
            "connections": connections,
            "inflight": inflight,
            "size": size,
            "payload": payload,
            "compression": compression,
        }
        return _deflated(_once(server, settings, config, connections), connections, config)

    return measure


def _echo_latency(server: ServerProcess, settings: Settings) -> Result:
    # One message in flight: the round trip itself, no queueing.
    config = {
        "scenario": "echo",
        "url": _url(server),
        "connections": 1,
        "inflight": 1,
        "size": 32,
        "warmup": settings.warmup,
        "duration": settings.latency_duration,
    }
    return loadgen.run(config, server.pid, server_pinned=server.pinned)


def _broadcast(
    receivers: int,
    slow: int = 0,
    size: int = 64,
    payload: str = "binary",
    compression: bool = False,
    client: str = "ws",
) -> Callable[..., Result]:
    def measure(server: ServerProcess, settings: Settings) -> Result:
        config = {
            "scenario": "broadcast",
            "client": client,
            "receivers": receivers,
            "size": size,
            "window": 16,
            "slow": slow,
            "payload": payload,
            "compression": compression,
        }
        return _deflated(_once(server, settings, config, receivers + 1), receivers, config)

    return measure


def _slow_reader(server: ServerProcess, settings: Settings) -> Result:
    """The same 100-receiver broadcast without, then with, one receiver that never reads."""
    alone = _broadcast(100)(server, settings)
    with_slow = _broadcast(100, slow=1)(server, settings)
    codes = with_slow["slow_close_codes"]
    return {
        "fast_alone": alone["deliveries_per_s"],
        "fast_with_slow": with_slow["deliveries_per_s"],
        "unchanged": with_slow["deliveries_per_s"] / alone["deliveries_per_s"],
        "p99_ms": with_slow["p99_ms"],
        "client_cpu": with_slow["client_cpu"],
        "server_cpu": with_slow.get("server_cpu"),
        "slow_fate": f"closed by the server, {codes[0]}" if codes else "kept open to the end",
        "stalled": with_slow["stalled"] or alone["stalled"],
        "others_cpu": max(alone.get("others_cpu", 0), with_slow.get("others_cpu", 0)),
    }


def _idle(compression: bool = False) -> Callable[..., Result]:
    def measure(server: ServerProcess, settings: Settings) -> Result:
        return idle_run(server, settings, compression)

    return measure


def idle_run(server: ServerProcess, settings: Settings, compression: bool) -> Result:
    """Open N connections that say nothing; RSS before and after, time and server CPU to open.

    The server's CPU time from the first open to the last (``bench/open_cost.py``
    reports it) says what an open costs whatever else the machine is doing.
    """
    memory: dict[str, int] = {}
    cpu: dict[str, float] = {}

    def on_event(event: Result) -> str | None:
        if event["event"] == "baseline":
            time.sleep(0.5)
            memory["before"] = rss_bytes(server.pid)
            cpu["before"] = cpu_seconds(server.pid)
            return "go"
        if event["event"] == "opened":
            cpu["opened"] = cpu_seconds(server.pid)
            time.sleep(1.0)  # let the server finish whatever each handshake left to do
            memory["after"] = rss_bytes(server.pid)
            return "done"
        return None

    count = settings.idle_connections
    config = {
        "scenario": "idle",
        "url": _url(server),
        "connections": count,
        "concurrency": 100,
        "timeout": 120,
        "compression": compression,
    }
    result = loadgen.run(config, server.pid, on_event, server_pinned=server.pinned)
    if result["failed"]:
        raise loadgen.LoadgenError(
            f"{result['failed']} of {count} idle connections failed: {result['first_error']}"
        )
    _deflated(result, count, config)
    result["kb_per_connection"] = (memory["after"] - memory["before"]) / count / 1000
    result["opens_per_s"] = count / result["open_seconds"]
    result["cpu_ms_per_1000_opens"] = (cpu["opened"] - cpu["before"]) * 1e6 / count
    result["rss_before_mb"] = memory["before"] / 1e6
    return result


MS = 2
BROADCAST_METRICS = (
    Metric("deliveries_per_s", "deliveries/s", True),
    Metric("p50_ms", "p50 ms", False, MS),
    Metric("p99_ms", "p99 ms", False, MS),
    SERVER_CPU,
    SERVER_US_PER_DELIVERY,
    CLIENT_CPU,
)


def _json_metrics(rate: str, rate_label: str, unit: str) -> tuple[Metric, ...]:
    """The compression scenarios' rows: rate, tail, what crossed the wire, memory."""
    return (
        Metric(rate, rate_label, True),
        Metric("p99_ms", "p99 ms", False, MS),
        Metric(f"wire_bytes_per_{unit}", f"wire bytes/{unit}", False),
        Metric("busy_kb_per_connection", "server kB/connection, busy", False, 1),
        SERVER_CPU,
        CLIENT_CPU,
    )


JSON_BROADCAST_METRICS = _json_metrics("deliveries_per_s", "deliveries/s", "delivery")
JSON_ECHO_METRICS = _json_metrics("messages_per_s", "messages/s", "message")
IDLE_METRICS = (
    Metric("open_seconds", "seconds to open", False, 2),
    Metric("opens_per_s", "opens/s", True),
    Metric("kb_per_connection", "server kB/connection", False, 1),
)
JSON_SIZE = 2048
CHAT_SIZE = 200

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "echo-latency",
        "echo, 1 connection, 32 B, 1 in flight",
        "echo",
        (Metric("p50_ms", "p50 ms", False, MS), Metric("p99_ms", "p99 ms", False, MS), CLIENT_CPU),
        _echo_latency,
        # Repeated although one run holds thousands of round trips: on stop 21's
        # machine fws's p50 flipped between runs, 0.05 or 0.08 ms, as the client's
        # round trip fell just inside or outside the 50 us busy-polling window.
    ),
    Scenario(
        "echo-100x10",
        "echo, 100 connections x 10 in flight, 32 B",
        "echo",
        (
            Metric("messages_per_s", "messages/s", True),
            Metric("p99_ms", "p99 ms", False, MS),
            Metric("fairness", "least served / mean", True, MS),
            SERVER_CPU,
            SERVER_US_PER_MESSAGE,
            CLIENT_CPU,
        ),
        _echo(100, 10, 32),
    ),
    Scenario(
        "echo-64k",
        "echo, 10 connections x 2 in flight, 64 KiB",
        "echo",
        (Metric("mb_per_s", "MB/s echoed", True, 1), SERVER_CPU, CLIENT_CPU),
        _echo(10, 2, 64 * 1024),
    ),
    Scenario(
        "echo-1m",
        "echo, 10 connections x 2 in flight, 1 MiB",
        "echo",
        (Metric("mb_per_s", "MB/s echoed", True, 1), SERVER_CPU, CLIENT_CPU),
        _echo(10, 2, 2**20),
    ),
    Scenario(
        "broadcast-100",
        "broadcast, 1 sender -> 100 receivers, 64 B",
        "broadcast",
        BROADCAST_METRICS,
        _broadcast(100),
    ),
    Scenario(
        "broadcast-1000",
        "broadcast, 1 sender -> 1000 receivers, 64 B",
        "broadcast",
        BROADCAST_METRICS,
        _broadcast(1000),
    ),
    Scenario(
        "idle",
        "idle connections (10,000; --quick: 2,000)",
        "echo",
        IDLE_METRICS,
        _idle(),
        repeated=False,
    ),
    Scenario(
        "slow-reader",
        "broadcast to 100 fast + 1 paused receiver, 64 B",
        "broadcast",
        (
            Metric("fast_alone", "fast deliveries/s, alone", True),
            Metric("fast_with_slow", "fast deliveries/s, + slow", True),
            Metric("unchanged", "with / without", True, 2),
            CLIENT_CPU,
        ),
        _slow_reader,
        key="unchanged",
    ),
    # permessage-deflate: the client offers it (as ws clients do by default) or
    # not; every server runs with its library's deflate defaults either way.
    Scenario(
        "broadcast-100-json",
        "broadcast, 1 sender -> 100 receivers, 2 KiB JSON, no deflate offered",
        "broadcast",
        JSON_BROADCAST_METRICS,
        _broadcast(100, size=JSON_SIZE, payload="json", client="lean"),
    ),
    Scenario(
        "broadcast-100-deflate",
        "the same with permessage-deflate negotiated",
        "broadcast",
        JSON_BROADCAST_METRICS,
        _broadcast(100, size=JSON_SIZE, payload="json", compression=True, client="lean"),
    ),
    Scenario(
        "broadcast-100-chat-deflate",
        "broadcast to 100, 200 B JSON (under the 1024 B threshold), deflate negotiated",
        "broadcast",
        JSON_BROADCAST_METRICS,
        _broadcast(100, size=CHAT_SIZE, payload="json", compression=True, client="lean"),
    ),
    Scenario(
        "echo-100x10-json",
        "echo, 100 connections x 10 in flight, 2 KiB JSON, no deflate offered",
        "echo",
        JSON_ECHO_METRICS,
        _echo(100, 10, JSON_SIZE, payload="json", client="lean"),
    ),
    Scenario(
        "echo-100x10-deflate",
        "the same with permessage-deflate negotiated (both directions compressed)",
        "echo",
        JSON_ECHO_METRICS,
        _echo(100, 10, JSON_SIZE, payload="json", compression=True, client="lean"),
    ),
    Scenario(
        "idle-deflate",
        "idle connections as idle, permessage-deflate negotiated",
        "echo",
        IDLE_METRICS,
        _idle(compression=True),
        repeated=False,
    ),
)


def select(only: list[str] | None) -> list[Scenario]:
    """Scenarios named in ``only``, or starting with a word of it that names none (all if None).

    An exact name selects that scenario alone: ``broadcast-100`` is not also
    ``broadcast-1000`` and the JSON variants; ``broadcast`` still takes them all.
    """
    if not only:
        return list(SCENARIOS)
    names = {s.name for s in SCENARIOS}
    exact = {o for o in only if o in names}
    prefixes = [o for o in only if o not in names]
    chosen = [
        s for s in SCENARIOS if s.name in exact or any(s.name.startswith(o) for o in prefixes)
    ]
    if not chosen:
        names = ", ".join(s.name for s in SCENARIOS)
        raise SystemExit(f"no scenario matches {only}; scenarios: {names}")
    return chosen
