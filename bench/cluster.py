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
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import LOOPBACK, cpu_seconds, fws_command, redis_server

_LISTENING = re.compile(r"fws listening on ws://[^:]+:(\d+)")


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
    cpu: float = 0.0
    error: str = ""


async def _client_main(
    indexes: list[int],
    urls: list[str],
    group_size: int,
    rate: float,
    duration: float,
    ready: Any,
    go: Any,
    result: WorkerResult,
) -> None:
    from websockets.asyncio.client import connect

    servers = len(urls)
    connections = {}
    for index in indexes:
        ws = await connect(urls[index % servers], max_queue=None, compression=None)
        await ws.send(f"token:g{index // group_size}")
        await ws.recv()
        connections[index] = ws
    ready.wait()  # every worker connected and joined
    await asyncio.get_running_loop().run_in_executor(None, go.wait)

    async def receive(index: int, ws: Any) -> None:
        own_server = index % servers
        with contextlib.suppress(Exception):
            async for message in ws:
                now = time.monotonic_ns()
                sender, _seq, sent_ns = message.split(" ", 2)
                delay = now - int(sent_ns)
                if int(sender) % servers == own_server:
                    result.same_ns.append(delay)
                else:
                    result.cross_ns.append(delay)
                result.received += 1

    async def send(index: int, ws: Any) -> None:
        interval = 1 / rate
        start = time.monotonic() + (index % 100) / 100 * interval  # spread the sends
        seq = 0
        while True:
            due = start + seq * interval
            if due - start >= duration:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await ws.send(f"{index} {seq} {time.monotonic_ns()}")
            result.sent += 1
            seq += 1

    receivers = [asyncio.create_task(receive(i, ws)) for i, ws in connections.items()]
    await asyncio.gather(*(send(i, ws) for i, ws in connections.items()))
    await asyncio.sleep(1.5)  # let the last deliveries land
    for ws in connections.values():
        await ws.close()
    for task in receivers:
        task.cancel()


def _worker(
    indexes: list[int],
    urls: list[str],
    group_size: int,
    rate: float,
    duration: float,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    result = WorkerResult()
    try:
        asyncio.run(_client_main(indexes, urls, group_size, rate, duration, ready, go, result))
    except Exception as exc:  # reported by the parent, which fails the run
        result.error = f"{type(exc).__name__}: {exc}"
        ready.abort()  # do not leave the others waiting at the barrier
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu = usage.ru_utime + usage.ru_stime
    out.put(result)


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
    redis_cpu: float | None = None


def run_load(name: str, ports: list[tuple[int, int]], args: argparse.Namespace) -> RunResult:
    urls = [f"ws://{LOOPBACK}:{port}/" for _pid, port in ports]
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(args.workers + 1)
    go = context.Event()
    out = context.Queue()
    shares = [list(range(w, args.clients, args.workers)) for w in range(args.workers)]
    workers = [
        context.Process(
            target=_worker,
            args=(share, urls, args.group_size, args.rate, args.duration, ready, go, out),
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=60)
    except threading.BrokenBarrierError:
        go.set()
        failed = [out.get(timeout=30) for _ in workers]
        errors = sorted((r.error for r in failed if r.error), key=lambda e: "Barrier" in e)
        errors = errors or ["clients did not connect within 60 s"]
        for worker in workers:
            worker.join(10)
        raise RuntimeError(f"{name}: client worker failed: {errors[0]}") from None
    server_cpu_before = [cpu_seconds(pid) for pid, _port in ports]
    started = time.monotonic()
    go.set()
    results = [out.get(timeout=args.duration + 60) for _ in workers]
    wall = time.monotonic() - started
    server_cpu = [
        cpu_seconds(pid) - before
        for (pid, _port), before in zip(ports, server_cpu_before, strict=True)
    ]
    for worker in workers:
        worker.join(10)
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"client worker failed: {errors[0]}")
    sent = sum(r.sent for r in results)
    return RunResult(
        name=name,
        same_ns=[d for r in results for d in r.same_ns],
        cross_ns=[d for r in results for d in r.cross_ns],
        sent=sent,
        received=sum(r.received for r in results),
        expected=sent * (args.group_size - 1),
        wall=wall,
        client_cpu=[r.cpu for r in results],
        server_cpu=server_cpu,
    )


def _ms(values: list[int], quantile: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    position = min(len(ordered) - 1, int(quantile * len(ordered)))
    return f"{ordered[position] / 1e6:.2f}"


def report(run: RunResult, args: argparse.Namespace) -> None:
    delivering = max(run.wall - 1.5, 1e-9)  # the drain time carries no new sends
    print(f"\n== {run.name}")
    print(
        f"  sent {run.sent} messages, delivered {run.received} of {run.expected} expected "
        f"({run.expected - run.received} missing)"
    )
    print(
        f"  delivered msg/s: {run.received / delivering:,.0f} "
        f"(offered {args.clients * args.rate * (args.group_size - 1):,.0f}/s)"
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
    if run.redis_cpu is not None:
        print(f"  redis-server CPU: {run.redis_cpu:.2f} s ({run.redis_cpu / run.wall:.0%})")
    busiest = max(run.client_cpu)
    print(
        f"  client CPU: {sum(run.client_cpu):.2f} s over {len(run.client_cpu)} processes, "
        f"busiest {busiest:.2f} s ({busiest / run.wall:.0%} of a core, incl. connecting)"
    )


def redis_pid(url: str) -> int | None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="messages/s per client")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending")
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    args = parser.parse_args()
    if not (1 <= args.clients <= 2000 and 0 < args.duration <= 60 and 0 < args.rate <= 100):
        parser.error("keep it bounded: clients 1..2000, duration <= 60 s, rate <= 100/s")
    filters = ["-f", "broadcast_messages_by_token"]
    print(
        f"{args.clients} clients in groups of {args.group_size}, {args.rate:g} msg/s each "
        f"for {args.duration:g} s; every message goes to the {args.group_size - 1} other "
        f"members. CPU: {os.cpu_count()} cores."
    )
    with tempfile.TemporaryDirectory(prefix="fws-bench-") as tmp:
        directory = Path(tmp)
        with fws_servers(1, [*filters, "--storage", "memory"], directory) as ports:
            one = run_load("1 server, memory storage", ports, args)
        report(one, args)
        with redis_server(directory) as url:
            pid = redis_pid(url)
            redis_args = [*filters, "--storage", "redis", "--redis-url", url]
            with fws_servers(2, redis_args, directory) as ports:
                before = cpu_seconds(pid) if pid else 0.0
                two = run_load("2 servers, redis storage (members alternate servers)", ports, args)
                two.redis_cpu = cpu_seconds(pid) - before if pid else None
        report(two, args)
        with redis_server(directory) as url:
            redis_args = [*filters, "--storage", "redis", "--redis-url", url]
            with fws_servers(1, redis_args, directory) as ports:
                alone = run_load(
                    "1 server, redis storage (Redis in the path, no peer)", ports, args
                )
        report(alone, args)
    if statistics.mean([one.received, two.received]) == 0:
        sys.exit("nothing was delivered")


if __name__ == "__main__":
    main()
