"""What going through Redis costs: 2 fws servers + Redis next to 1 server, same load.

Starts a private redis-server and fws_server processes on free 127.0.0.1 ports
(nothing else is touched), connects CLIENTS websocket clients spread over the
servers, puts them in token groups of GROUP_SIZE whose members alternate
between servers, and has every client send RATE messages a second for
DURATION seconds. Each message carries its send time; receivers record the
delay, split into same-server and cross-server deliveries.

Run: python bench/cluster.py [--clients 200] [--rate 2] [--duration 5]

The clients run in WORKERS processes (asyncio + websockets); their CPU use is
printed so that one can check the client was not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pubsub_load
import redis_setups
from procs import LOOPBACK, cpu_busy_seconds, cpu_seconds, fws_command
from redis_setups import Node, Setup

_LISTENING = re.compile(r"fws listening on ws://[^:]+:(\d+)")
_OUTAGE = re.compile(r"unreachable \(([^)]*)\)")
LOGS: dict[int, Path] = {}  # fws server pid -> its log


@contextlib.contextmanager
def fws_servers(count: int, args: list[str], directory: Path) -> Iterator[list[tuple[int, int]]]:
    """``count`` fws_server processes; yields (pid, port) pairs."""
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for index in range(count):
            log = directory / f"fws-{len(list(directory.glob('fws-*.log')))}-{index}.log"
            logs.append(log)
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [
                            *fws_command(),
                            "-p",
                            "0",
                            "--host",
                            LOOPBACK,
                            "--log-level",
                            "info",
                            "--close-timeout",
                            "1",
                            *args,
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        ports = []
        for process, log in zip(processes, logs, strict=True):
            deadline = time.monotonic() + 20
            while True:
                match = _LISTENING.search(log.read_text(errors="replace"))
                if match:
                    ports.append(int(match.group(1)))
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fws_server did not start:\n{log.read_text()}")
                time.sleep(0.05)
        LOGS.update((process.pid, log) for process, log in zip(processes, logs, strict=True))
        yield [(process.pid, port) for process, port in zip(processes, ports, strict=True)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# -- the client workers ---------------------------------------------------------------


@dataclass
class WorkerResult:
    same_ns: list[int] = field(default_factory=list)
    cross_ns: list[int] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    behind: float = 0.0  # messages due but not sent: the client could not keep up
    cpu: float = 0.0
    error: str = ""


async def _client_main(
    indexes: list[int], urls: list[str], group_size: int, control: Any, out: Any
) -> None:
    """Connect and join, then run the steps the parent sends: (step, rate, duration)."""
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    servers = len(urls)
    connections = {}
    for index in indexes:
        ws = await connect(urls[index % servers], max_queue=None, compression=None)
        await ws.send(f"token:g{index // group_size}")
        await ws.recv()
        connections[index] = ws
    out.put(WorkerResult())  # connected and joined
    results: dict[int, WorkerResult] = {}

    async def receive(index: int, ws: Any) -> None:
        own_server = index % servers
        with contextlib.suppress(Exception):
            async for message in ws:
                now = time.monotonic_ns()
                sender, step, _seq, sent_ns = message.split(" ", 3)
                result = results.setdefault(int(step), WorkerResult())
                delay = now - int(sent_ns)
                if int(sender) % servers == own_server:
                    result.same_ns.append(delay)
                else:
                    result.cross_ns.append(delay)
                result.received += 1

    async def send(index: int, ws: Any, step: int, rate: float, duration: float) -> None:
        result = results[step]
        interval = 1 / rate
        start = time.monotonic() + (index % 100) / 100 * interval  # spread the sends
        seq = 0
        while True:
            due = start + seq * interval
            if due - start >= duration:
                return
            late = time.monotonic() - due
            if late > 0.5:  # this client is behind its schedule: count, do not pile up
                skipped = int(late / interval)
                result.behind += skipped
                seq += skipped
                continue
            await asyncio.sleep(max(0.0, -late))
            await ws.send(f"{index} {step} {seq} {time.monotonic_ns()}")
            result.sent += 1
            seq += 1

    receivers = [asyncio.create_task(receive(i, ws)) for i, ws in connections.items()]
    while True:
        command = await loop.run_in_executor(None, control.get)
        if command is None:
            break
        step, rate, duration = command
        results.setdefault(step, WorkerResult())
        cpu_before = _cpu()
        await asyncio.gather(*(send(i, ws, step, rate, duration) for i, ws in connections.items()))
        await asyncio.sleep(1.0)  # let the last deliveries land
        result = results.pop(step)
        result.cpu = _cpu() - cpu_before
        out.put(result)
    for ws in connections.values():
        await ws.close()
    for task in receivers:
        task.cancel()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(indexes: list[int], urls: list[str], group_size: int, control: Any, out: Any) -> None:
    try:
        asyncio.run(_client_main(indexes, urls, group_size, control, out))
    except Exception as exc:  # reported by the parent, which fails the run
        out.put(WorkerResult(error=f"{type(exc).__name__}: {exc}"))


@dataclass
class RunResult:
    name: str
    same_ns: list[int]
    cross_ns: list[int]
    sent: int
    received: int
    expected: int
    wall: float
    client_cpu: list[float]
    server_cpu: list[float]
    offered: float = 0.0  # group messages/s offered (all clients)
    active: float = 1.0  # seconds of sending: CPU shares are of this time (the drain is idle)
    behind: float = 0.0
    redis_cpu: dict[int, float] = field(default_factory=dict)  # port -> CPU seconds
    machine_busy: float = 0.0  # CPU seconds anyone used on any core during the run
    softirq: float = 0.0  # CPU seconds in softirqs (loopback packets), all cores

    @property
    def p99_ms(self) -> float:
        both = self.same_ns + self.cross_ns
        return float(_ms(both, 0.99)) if both else float("inf")


class Clients:
    """``clients`` websocket clients in ``workers`` processes, in token groups, kept open."""

    def __init__(self, urls: list[str], clients: int, group_size: int, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.clients, self.group_size = clients, group_size
        self.out = context.Queue()
        self.controls = [context.Queue() for _ in range(workers)]
        shares = [list(range(w, clients, workers)) for w in range(workers)]
        self.workers = [
            context.Process(target=_worker, args=(share, urls, group_size, control, self.out))
            for share, control in zip(shares, self.controls, strict=True)
        ]
        for worker in self.workers:
            worker.start()
        self.step_number = 0
        try:
            self._collect(60)
        except BaseException:
            self.close()
            raise

    def _collect(self, timeout: float) -> list[WorkerResult]:
        try:
            results = [self.out.get(timeout=timeout) for _ in self.workers]
        except queue.Empty:
            raise RuntimeError(f"client workers did not answer within {timeout:g} s") from None
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"client worker failed: {errors[0]}")
        return results

    def step(
        self, name: str, rate: float, duration: float, servers: list[int], redis: Iterable[Node]
    ) -> RunResult:
        """Every client sends ``rate`` messages/s for ``duration`` s; CPU of everyone measured."""
        nodes = list(redis)
        redis_before = {node.port: cpu_seconds(node.pid) for node in nodes}
        server_before = [cpu_seconds(pid) for pid in servers]
        busy_before = sum(cpu_busy_seconds().values())
        softirq_before = pubsub_load.softirq_seconds()
        started = time.monotonic()
        for control in self.controls:
            control.put((self.step_number, rate, duration))
        self.step_number += 1
        results = self._collect(duration + 60)
        wall = time.monotonic() - started
        sent = sum(r.sent for r in results)
        return RunResult(
            name=name,
            same_ns=[d for r in results for d in r.same_ns],
            cross_ns=[d for r in results for d in r.cross_ns],
            sent=sent,
            received=sum(r.received for r in results),
            expected=sent * (self.group_size - 1),
            wall=wall,
            client_cpu=[r.cpu for r in results],
            server_cpu=[cpu_seconds(pid) - before for pid, before in zip(servers, server_before,
                                                                            strict=True)],
            offered=rate * self.clients,
            active=duration,
            behind=sum(r.behind for r in results),
            redis_cpu={n.port: cpu_seconds(n.pid) - redis_before[n.port] for n in nodes},
            machine_busy=sum(cpu_busy_seconds().values()) - busy_before,
            softirq=pubsub_load.softirq_seconds() - softirq_before,
        )  # fmt: skip

    def close(self) -> None:
        for control in self.controls:
            control.put(None)
        for worker in self.workers:
            worker.join(15)
            if worker.is_alive():
                worker.kill()
                worker.join()


def run_load(
    name: str,
    ports: list[tuple[int, int]],
    args: argparse.Namespace,
    redis: Iterable[Node] = (),
) -> RunResult:
    """One run of ``args.rate`` messages/s per client for ``args.duration`` s."""
    urls = [f"ws://{LOOPBACK}:{port}/" for _pid, port in ports]
    clients = Clients(urls, args.clients, args.group_size, args.workers)
    try:
        return clients.step(name, args.rate, args.duration, [pid for pid, _ in ports], redis)
    finally:
        clients.close()


def _ms(values: list[int], quantile: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    position = min(len(ordered) - 1, int(quantile * len(ordered)))
    return f"{ordered[position] / 1e6:.2f}"


def report(run: RunResult, nodes: Iterable[Node] = ()) -> None:
    delivering = max(run.wall - 1.0, 1e-9)  # the drain time carries no new sends
    print(f"\n== {run.name}")
    print(
        f"  sent {run.sent} messages, delivered {run.received} of {run.expected} expected "
        f"({run.expected - run.received} missing)"
        + (f", {run.behind:,.0f} not sent in time (clients behind)" if run.behind else "")
    )
    group = run.expected / max(run.sent, 1)
    print(
        f"  delivered msg/s: {run.received / delivering:,.0f} "
        f"(offered {run.offered * group:,.0f}/s: {run.offered:,.0f} group messages/s)"
    )
    for label, values in (("same-server", run.same_ns), ("cross-server", run.cross_ns)):
        if values:
            print(
                f"  latency {label:12s} p50 {_ms(values, 0.5)} ms  p99 {_ms(values, 0.99)} ms  "
                f"max {_ms(values, 1.0)} ms  (n={len(values)})"
            )
    print(
        "  server CPU: "
        + ", ".join(f"{cpu:.2f} s ({cpu / run.wall:.0%} of a core)" for cpu in run.server_cpu)
    )
    if run.redis_cpu:
        print("  redis-server CPU: " + _redis_cpu(run.redis_cpu, run.wall, nodes))
    busiest = max(run.client_cpu)
    print(
        f"  client CPU: {sum(run.client_cpu):.2f} s over {len(run.client_cpu)} processes, "
        f"busiest {busiest:.2f} s ({busiest / run.wall:.0%} of a core); the machine: "
        f"{run.machine_busy / run.wall:.2f} of {os.cpu_count()} cores busy (anyone's processes)"
    )


def _redis_cpu(cpu: dict[int, float], wall: float, nodes: Iterable[Node]) -> str:
    roles = {node.port: node.role for node in nodes}
    return ", ".join(
        f"{roles.get(port, 'node')} {port} {seconds / wall:.0%}" for port, seconds in cpu.items()
    )


def spread(setup: Setup, groups: Iterable[str]) -> str:
    """How many of ``groups`` have their channel on each primary (``fws:{g:NAME}``)."""
    from redis.cluster import key_slot

    counts = {node.port: 0 for node in setup.primaries}
    for name in groups:
        counts[setup.primary_for_slot(key_slot(f"fws:{{g:{name}}}".encode())).port] += 1
    return ", ".join(f"{port}: {count}" for port, count in counts.items())


@contextlib.contextmanager
def topology(kind: str, directory: Path) -> Iterator[Setup]:
    with redis_setups.single(directory) if kind == "single" else redis_setups.cluster() as setup:
        yield setup


def redis_rows(args: argparse.Namespace, directory: Path, kind: str) -> list[str]:
    """Rows (b) and (c) for one Redis set-up; returns the summary lines."""
    summary = []
    with topology(kind, directory) as setup:
        print(f"\n#### {setup.name}: " + ", ".join(
            f"{node.role} {node.port} (pid {node.pid})" for node in setup.nodes))  # fmt: skip
        redis_args = ["-f", "broadcast_messages_by_token", "--storage", "redis",
                      "--redis-url", setup.url]  # fmt: skip
        try:
            servers_cm = fws_servers(args.servers, redis_args, directory)
            ports = servers_cm.__enter__()
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1]
            print(f"\n== {setup.name}: fws refused it, rows through fws skipped: {reason}")
            summary.append(f"{setup.name}, through fws: skipped ({reason})")
            ports = None
        if ports is not None:
            try:
                summary += fws_rows(args, setup, ports)
            finally:
                servers_cm.__exit__(None, None, None)
        summary += direct_rows(args, setup)
    return summary


def fws_rows(args: argparse.Namespace, setup: Setup, ports: list[tuple[int, int]]) -> list[str]:
    summary = []
    groups = [f"g{n}" for n in range((args.clients + args.group_size - 1) // args.group_size)]
    if setup.sharded:
        print(f"  group channels per primary: {spread(setup, groups)}")
    pids = [pid for pid, _port in ports]
    same = run_load(f"{args.servers} fws servers, {setup.name}: {args.clients} clients",
                    ports, args, setup.nodes)  # fmt: skip
    report(same, setup.nodes)
    summary.append(
        f"{setup.name}, {args.clients} clients at {args.rate:g}/s: p99 {same.p99_ms:.2f} ms, "
        f"{same.received:,}/{same.expected:,} delivered"
    )
    # Saturation through fws: smaller groups (more of them, spread over the shards).
    urls = [f"ws://{LOOPBACK}:{port}/" for _pid, port in ports]
    print(f"\n== saturation through fws, {setup.name}: {args.clients} clients in groups of "
          f"{args.sat_group_size} ({args.clients // args.sat_group_size} groups), "
          f"{args.workers} client processes, {args.servers} fws servers, "
          f"{args.step:g} s a step")  # fmt: skip
    clients = Clients(urls, args.clients, args.sat_group_size, args.workers)
    best: RunResult | None = None
    try:
        for rate in args.fws_rates:
            run = clients.step("step", rate, args.step, pids, setup.nodes)
            print(_step_line(run, setup.nodes))
            if _failed(run):
                print("  stopped: " + _verdict(run))
                break
            best = run
    finally:
        clients.close()
    lost_redis = outages(pids)
    if lost_redis:
        print(f"  the fws servers lost Redis (outages, messages dropped): {lost_redis}")
    if best is None:
        summary.append(f"{setup.name}, saturation through fws: no step under 50 ms")
    else:
        summary.append(
            f"{setup.name}, through fws: {best.offered:,.0f} group msg/s "
            f"({best.received / best.active:,.0f} deliveries/s, p99 {best.p99_ms:.1f} ms) "
            "under 50 ms p99; CPU of the sending time: "
            f"redis {_redis_cpu(best.redis_cpu, best.active, setup.nodes)}; fws servers "
            + "/".join(f"{c / best.active:.0%}" for c in best.server_cpu)
            + f"; busiest client {max(best.client_cpu) / best.active:.0%}; machine "
            f"{best.machine_busy / best.wall:.2f}/{os.cpu_count()} cores; next step: "
            + _verdict(run)
            + (f"; fws logged Redis outages: {lost_redis}" if lost_redis else "")
        )
    return summary


def _failed(run: RunResult) -> bool:
    return (
        run.p99_ms > 50
        or run.received < 0.999 * run.expected
        or run.behind > 0.05 * run.offered * run.wall
    )


def _verdict(run: RunResult) -> str:
    """Which component ran out: the one at (nearly) a whole core, else the machine."""
    wall = run.active
    parts = [f"p99 {run.p99_ms:.1f} ms"]
    if run.received < 0.999 * run.expected:
        parts.append(f"{run.expected - run.received} missing")
    if run.behind:
        parts.append(f"clients {run.behind:,.0f} messages behind")
    loads = {
        "fws server": max(run.server_cpu) / wall,
        "client process": max(run.client_cpu) / wall,
        "redis-server": max(run.redis_cpu.values(), default=0.0) / wall,
    }
    name, load = max(loads.items(), key=lambda item: item[1])
    machine = run.machine_busy / run.wall
    cores = os.cpu_count() or 1
    if load >= 0.85:
        parts.append(f"limit: a {name} at {load:.0%} of a core")
    elif machine + run.softirq / run.wall >= 0.9 * cores:
        parts.append(f"limit: the machine ({machine:.2f} of {cores} cores busy + softirq; "
                     f"busiest of ours: {name} at {load:.0%})")  # fmt: skip
    else:
        parts.append(f"limit: inside fws, not CPU (busiest: {name} at {load:.0%}; the machine "
                     f"{machine:.2f} of {cores} cores)")  # fmt: skip
    return ", ".join(parts)


def outages(pids: Iterable[int]) -> str:
    """What the fws servers' logs say about losing Redis ("unreachable (REASON)")."""
    reasons: dict[str, int] = {}
    for pid in pids:
        log = LOGS.get(pid)
        text = log.read_text(errors="replace") if log and log.exists() else ""
        for reason in _OUTAGE.findall(text):
            reasons[reason] = reasons.get(reason, 0) + 1
    return ", ".join(f"{count} x '{reason}'" for reason, count in reasons.items())


def _step_line(run: RunResult, nodes: Iterable[Node]) -> str:
    wall = run.active  # CPU shares of the sending time
    return (
        f"  offered {run.offered:>7,.0f} group msg/s: delivered {run.received:,}/"
        f"{run.expected:,}  p50 {_ms(run.same_ns + run.cross_ns, 0.5)} p99 {run.p99_ms:.2f} ms"
        f"  fws "
        + "/".join(f"{c / wall:.0%}" for c in run.server_cpu)
        + f"  redis {_redis_cpu(run.redis_cpu, wall, nodes)}"
        + f"  busiest client {max(run.client_cpu) / wall:.0%}"
        + f"  machine {run.machine_busy / run.wall:.2f}/{os.cpu_count()} cores"
        + f" + softirq {run.softirq / run.wall:.2f}"
    )


def direct_rows(args: argparse.Namespace, setup: Setup) -> list[str]:
    """Redis alone: redis-benchmark as fws servers publish, then pipelined with delays."""
    print(f"\n== saturation of Redis alone, {setup.name}: unpipelined {'S' * setup.sharded}"
          f"PUBLISH from redis-benchmark, one command in flight per connection as fws's "
          f"pool connections; {args.direct_groups} channels, each subscribed by {args.fanout} "
          f"of {args.direct_servers} stand-in servers; more connections each step")  # fmt: skip
    traffic = pubsub_load.Traffic(
        groups=args.direct_groups // len(setup.primaries), servers=args.direct_servers,
        fanout=args.fanout, stand_in_processes=args.stand_in_processes, step_seconds=args.step,
    )  # fmt: skip
    steps = pubsub_load.benchmark(setup, traffic, connections=args.connections)
    summary = []
    good = [s for s in steps if s.p99_ms <= 50 and s.delivered >= 0.999 * s.expected]
    if good:
        best = max(good, key=lambda s: s.rps)
        primaries = sum(best.redis_cpu[n.port] for n in setup.primaries)
        per_message = primaries / (best.rps * best.wall)
        summary.append(
            f"{setup.name}, Redis alone, unpipelined: {best.rps:,.0f} group msg/s "
            f"({best.rps * args.fanout:,.0f} deliveries/s at fan-out {args.fanout}), p99 "
            f"{best.p99_ms:.1f} ms, {best.connections} connection(s) per primary; redis CPU "
            + _redis_cpu(best.redis_cpu, best.wall, setup.nodes)
            + f"; {per_message * 1e6:.1f} us of primary CPU per message (= "
            f"{1 / per_message:,.0f} msg/s per primary core); redis-benchmark "
            f"{best.benchmark_cpu / best.wall:.0%}, busiest stand-in "
            f"{max(best.stand_in_cpu) / best.wall:.0%}; " + pubsub_load.machine(best)
        )
    else:
        summary.append(f"{setup.name}, Redis alone, unpipelined: no step under 50 ms")
    print(f"\n== saturation of Redis alone, {setup.name}: the same traffic pipelined (an upper "
          f"bound fws does not reach), open loop, delays measured at the subscribers "
          f"({args.publishers} publisher and {args.stand_in_processes} stand-in processes; "
          f"{args.step:g} s a step)")  # fmt: skip
    if setup.sharded:
        names = [f"room-{n}" for n in range(args.direct_groups)]
        print(f"  fws group channels per primary: {spread(setup, names)}")
    rates = pubsub_load.saturate(
        setup, dataclasses.replace(traffic, groups=args.direct_groups),
        publishers=args.publishers, rates=args.direct_rates, pool=1, depth=1_000_000,
    )  # fmt: skip
    ok = [s for s in rates if not pubsub_load.over_limit(s, 50.0)]
    last = rates[-1]
    if not ok:
        return [*summary, f"{setup.name}, Redis alone, pipelined: no step under 50 ms"]
    best_rate = ok[-1]
    wall = best_rate.active
    primaries = sum(best_rate.redis_cpu[n.port] for n in setup.primaries) / wall
    ended = "the last step offered passed" if last is best_rate else f"next {last.rate:,.0f}/s: "
    if last is not best_rate:
        ended += f"p99 {last.p99_ms:.1f} ms, {last.expected - last.delivered} missing"
    return [
        *summary,
        f"{setup.name}, Redis alone, pipelined: {best_rate.sent / wall:,.0f} group msg/s "
        f"(p99 {best_rate.p99_ms:.1f} ms); redis CPU "
        + _redis_cpu(best_rate.redis_cpu, wall, setup.nodes)
        + f" (primaries {primaries:.2f} cores); {pubsub_load.machine(best_rate)}; {ended}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="messages/s per client")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending")
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--servers", type=int, default=2, help="fws servers on Redis")
    parser.add_argument("--only", choices=["compare", "single", "cluster"], action="append",
                        help="rows to run (default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="shorter steps, fewer of them")
    parser.add_argument(
        "--fanout", type=int, default=4, help="Redis alone: fws servers hosting each group"
    )
    args = parser.parse_args()
    if not (1 <= args.clients <= 2000 and 0 < args.duration <= 60 and 0 < args.rate <= 100):
        parser.error("keep it bounded: clients 1..2000, duration <= 60 s, rate <= 100/s")
    if not 1 <= args.fanout <= 32:
        parser.error("--fanout: 1..32")
    # Saturation: messages/s per client through fws; group messages/s into Redis alone.
    args.sat_group_size = 4
    args.fws_rates = [2, 5, 10, 20, 35, 50, 75, 100]
    args.direct_rates = [25_000, 50_000, 100_000, 150_000, 200_000, 300_000, 400_000, 600_000]
    args.direct_groups, args.direct_servers = 1000, max(8, 2 * args.fanout)
    args.publishers, args.stand_in_processes = 2, 4
    args.connections = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    args.step = 2.0
    if args.quick:
        args.duration, args.step = 2.0, 1.0
        args.fws_rates = [5, 20, 50, 100]
        args.direct_rates = [50_000, 150_000, 300_000, 600_000]
        args.connections = [1, 4, 16, 64, 256]
    wanted = args.only or ["compare", "single", "cluster"]
    print(
        f"{args.clients} clients in groups of {args.group_size}, {args.rate:g} msg/s each "
        f"for {args.duration:g} s; every message goes to the {args.group_size - 1} other "
        f"members. CPU: {os.cpu_count()} cores, shared with whatever else runs (see 'machine')."
    )
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fws-bench-") as tmp:
        directory = Path(tmp)
        if "compare" in wanted:
            compare(args, directory)
        for kind in ("single", "cluster"):
            if kind in wanted:
                summary += redis_rows(args, directory, kind)
    if summary:
        print("\n== summary (saturation: highest step with delivery p99 <= 50 ms, nothing lost)")
        for line in summary:
            print("  " + line)


def compare(args: argparse.Namespace, directory: Path) -> None:
    """Row (a): 1 server, 2 servers through Redis, 1 server with Redis in the path."""
    filters = ["-f", "broadcast_messages_by_token"]
    with fws_servers(1, [*filters, "--storage", "memory"], directory) as ports:
        one = run_load("1 server, memory storage", ports, args)
    report(one)
    runs = []
    for count, name in (
        (2, "2 servers, redis storage (members alternate servers)"),
        (1, "1 server, redis storage (Redis in the path, no peer)"),
    ):
        with redis_setups.single(directory) as setup:
            redis_args = [*filters, "--storage", "redis", "--redis-url", setup.url]
            with fws_servers(count, redis_args, directory) as ports:
                runs.append(run_load(name, ports, args, setup.nodes))
        report(runs[-1], setup.nodes)
    if one.received + runs[0].received == 0:
        sys.exit("nothing was delivered")


if __name__ == "__main__":
    main()
