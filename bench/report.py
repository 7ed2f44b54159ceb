"""One table (scenario x server, with fws/other ratios), the targets, as text and RST.

The text and the reStructuredText come from the same rows, so the table in
docs/performance.rst is the one the terminal showed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from scenarios import CLIENT_CPU, SERVER_CPU, Metric, Scenario

# scenario name -> server name -> result, or the error text if that run failed
Results = dict[str, dict[str, Any]]

CLIENT_BUSY = 90.0  # % of a core above which the load generator may be the limit


@dataclass(frozen=True)
class Target:
    """A goal of issue 4: fws's number over another server's, compared with a ratio."""

    text: str
    scenario: str
    key: str
    other: str  # server name, or "" for an absolute limit
    bound: float
    at_least: bool  # True: the ratio (or value) must be >= bound

    def check(self, results: Results) -> tuple[str, float | None]:
        """("met" | "MISSED" | "not measured", the ratio or value)."""
        row = results.get(self.scenario, {})
        ours = _number(row.get("fws"), self.key)
        theirs = _number(row.get(self.other), self.key) if self.other else 1.0
        if ours is None or theirs is None or theirs == 0:
            return "not measured", None
        value = ours / theirs
        ok = value >= self.bound if self.at_least else value <= self.bound
        return ("met" if ok else "MISSED"), value

    def shown(self, value: float, results: Results) -> str:
        """How ``value`` (from ``check``) reads after the target's text."""
        return f" ({value:.2f}{'x' if self.other else ''})"


@dataclass(frozen=True)
class AheadOfAll(Target):
    """fws's number over the best of ``others`` in this run (``other`` is left empty).

    For a goal against a group ("ahead of every Python server"): one line, met
    only if fws is ahead of the fastest of them that was measured.
    """

    others: tuple[str, ...] = ()

    def rival(self, results: Results) -> str | None:
        """The fastest of ``others`` in ``results`` (None: none measured)."""
        row = results.get(self.scenario, {})
        measured = [
            (value, name)
            for name in self.others
            if (value := _number(row.get(name), self.key)) is not None
        ]
        return max(measured)[1] if measured else None

    def check(self, results: Results) -> tuple[str, float | None]:
        rival = self.rival(results)
        if rival is None:
            return "not measured", None
        return Target.check(replace(self, other=rival), results)

    def shown(self, value: float, results: Results) -> str:
        return f" ({value:.2f}x the fastest, {self.rival(results)})"


PYTHON_SERVERS = ("gevent-websocket", "websockets", "websockets+uvloop", "picows", "socketify")
"""The Python servers issue 10 wants the echoes ahead of (socketify: Python on uWebSockets)."""

TARGETS: tuple[Target, ...] = (
    Target(
        "echo 100x10 messages/s >= 1.5 x websockets+uvloop",
        "echo-100x10",
        "messages_per_s",
        "websockets+uvloop",
        1.5,
        True,
    ),
    Target("echo 100x10 p99 <= websockets", "echo-100x10", "p99_ms", "websockets", 1.0, False),
    Target(
        "echo 64 KiB MB/s >= 0.8 x websockets+uvloop",
        "echo-64k",
        "mb_per_s",
        "websockets+uvloop",
        0.8,
        True,
    ),
    Target(
        "broadcast 100 deliveries/s >= node ws",
        "broadcast-100",
        "deliveries_per_s",
        "node ws",
        1.0,
        True,
    ),
    Target(
        "broadcast 1000 deliveries/s >= node ws",
        "broadcast-1000",
        "deliveries_per_s",
        "node ws",
        1.0,
        True,
    ),
    # Issue 9: metrics (on by default) cost under 3 % of the hot path's rate.
    Target(
        "metrics: echo 100x10 messages/s >= 0.97 x --no-metrics",
        "echo-100x10",
        "messages_per_s",
        "fws-no-metrics",
        0.97,
        True,
    ),
    Target(
        "metrics: broadcast 1000 deliveries/s >= 0.97 x --no-metrics",
        "broadcast-1000",
        "deliveries_per_s",
        "fws-no-metrics",
        0.97,
        True,
    ),
    Target("idle connection <= 8 kB (value in kB)", "idle", "kb_per_connection", "", 8.0, False),
    # Issue 10: uWebSockets-class broadcast, latency and handshakes.
    *(
        Target(
            f"issue 10: broadcast {n} deliveries/s >= {other}",
            f"broadcast-{n}",
            "deliveries_per_s",
            other,
            1.0,
            True,
        )
        for n in (100, 1000)
        for other in ("bun", "socketify")
    ),
    *(
        Target(
            f"issue 10: broadcast {n} p99 <= 1.5 x {other}",
            f"broadcast-{n}",
            "p99_ms",
            other,
            1.5,
            False,
        )
        for n in (100, 1000)
        for other in ("bun", "socketify")
    ),
    *(
        AheadOfAll(
            f"issue 10: {what} >= every Python server",
            scenario,
            key,
            "",
            1.0,
            True,
            others=PYTHON_SERVERS,
        )
        for scenario, key, what in (
            ("echo-100x10", "messages_per_s", "echo 100x10 messages/s"),
            ("echo-64k", "mb_per_s", "echo 64 KiB MB/s"),
            ("echo-1m", "mb_per_s", "echo 1 MiB MB/s"),
        )
    ),
    Target(
        "issue 10: echo 1 connection p50 <= picows", "echo-latency", "p50_ms", "picows", 1.0, False
    ),
    Target("issue 10: opens/s >= 5,000 (value)", "idle", "opens_per_s", "", 5000.0, True),
    Target(
        "issue 10: idle connection <= 2 kB (value in kB)",
        "idle",
        "kb_per_connection",
        "",
        2.0,
        False,
    ),
    Target(
        "slow reader: fast readers keep >= 0.9 of their rate",
        "slow-reader",
        "unchanged",
        "",
        0.9,
        True,
    ),
)


def _number(result: Any, key: str) -> float | None:
    if not isinstance(result, dict):
        return None
    value = result.get(key)
    return float(value) if isinstance(value, int | float) else None


def format_value(value: float | None, metric: Metric) -> str:
    if value is None:
        return "-"
    if metric.digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{metric.digits}f}"


def saturated(result: Any) -> bool:
    """Whether the load generator's core was over ``CLIENT_BUSY`` in that run."""
    value = _number(result, CLIENT_CPU.key)
    return value is not None and value > CLIENT_BUSY


def rows(
    scenarios: Sequence[Scenario],
    servers: Sequence[str],
    results: Results,
    ratios: bool = True,
) -> list[list[str]]:
    """Header + one row per (scenario, metric): values, then fws / each other server.

    In a run where the load generator's core was over ``CLIENT_BUSY``, the
    rates (and the client CPU) get a ``*``: that figure is a lower bound.
    """
    others = [name for name in servers if name != "fws"] if ratios else []
    header = ["scenario", "metric", *servers, *(f"fws/{_short(name)}" for name in others)]
    table = [header]
    for scenario in scenarios:
        row_results = results.get(scenario.name, {})
        for metric in scenario.metrics:
            values = [_number(row_results.get(name), metric.key) for name in servers]
            cells = []
            for name, value in zip(servers, values, strict=True):
                outcome = row_results.get(name)
                if not isinstance(outcome, str):
                    cell = format_value(value, metric)
                else:  # "not installed: ...", "not supported: ..." or why it failed
                    cell = "n/a" if outcome.startswith("not ") else "failed"
                if value is not None and saturated(outcome):
                    if metric is CLIENT_CPU or (
                        metric.higher_is_better and metric is not SERVER_CPU
                    ):
                        cell += "*"
                cells.append(cell)
            ours = values[servers.index("fws")] if "fws" in servers else None
            ratios = []
            for name in others:
                theirs = values[servers.index(name)]
                if metric.key in ("client_cpu", "server_cpu") or ours is None or not theirs:
                    ratios.append("")
                else:
                    ratios.append(f"{ours / theirs:.2f}x")
            table.append([scenario.name, metric.label, *cells, *ratios])
    return table


def _short(name: str) -> str:
    return {
        "gevent-websocket": "gws",
        "websockets": "ws",
        "websockets+uvloop": "uvloop",
        "node ws": "node",
        "fws+takeover": "takeover",
        "fws-no-metrics": "no-metrics",
        "fws (pure Python)": "pure",
        "fws --workers 2": "workers",
        "floor-batched": "floor-b",
        "floor-python": "floor-py",
    }.get(name, name)


def as_text(table: list[list[str]]) -> str:
    """Aligned columns: text left, numbers right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for number, row in enumerate(table):
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def as_rst(table: list[list[str]]) -> str:
    """An RST simple table (every row's first cell is filled, as simple tables need)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    rule = "  ".join("=" * width for width in widths)
    lines = [rule]
    for number, row in enumerate(table):
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)


def saturated_cells(results: Results) -> list[str]:
    """Scenario / server pairs where the generator's core was over ``CLIENT_BUSY``."""
    return [
        f"{scenario} / {server}: client CPU {result[CLIENT_CPU.key]:.0f}%"
        for scenario, row in results.items()
        for server, result in row.items()
        if saturated(result)
    ]


def targets(results: Results) -> list[str]:
    """One line per target of issue 4: met or MISSED, with the ratio."""
    lines = []
    for target in TARGETS:
        verdict, value = target.check(results)
        shown = "" if value is None else target.shown(value, results)
        lines.append(f"{verdict:>12}  {target.text}{shown}")
    return lines


def legend(scenarios: Sequence[Scenario]) -> list[str]:
    """What each scenario name stands for."""
    return [f"{scenario.name}: {scenario.title}" for scenario in scenarios]
