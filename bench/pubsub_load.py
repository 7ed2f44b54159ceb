"""fws's group traffic straight into Redis, no fws in the path: what one Redis node carries.

Through fws on a 2-core machine, the Python servers and clients run out of
CPU long before redis-server does (each group message costs fws far more than
Redis). To find what a Redis node itself carries, this module plays fws's
part with lean processes: *publishers* send what an fws server sends for a
group message (one PUBLISH, or SPUBLISH to the slot's primary on a cluster,
of a real layout-2 envelope on ``fws:{g:NAME}``), and *stand-ins* subscribe as
fws servers do (each to the channels of the groups it hosts, one connection
per primary on a cluster), so each message goes out to FANOUT servers.
Messages carry their step and send time; stand-ins count every delivery
(``bytes.count``, C speed) and sample the delay of about one in ten.

Raw sockets and pre-encoded RESP: a redis-py client would saturate first.
Like an fws server, a publisher has a pool of connections to each primary
with one command in flight on each (``depth=1``): Redis reads, parses and
answers each PUBLISH on its own, as it does for fws. (``depth`` > 1
pipelines, an upper bound fws does not reach.) The offered rate is open
loop: a message is due at its time whatever Redis answers, and its delay
counts from then, so a publisher waiting for a free connection shows as
delay. :func:`saturate` raises the rate step by step.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from procs import LOOPBACK
from redis_setups import Setup

_STAMP = re.compile(rb"S(\d{3})T(\d{19})E")
_SAMPLE_STRIDE = 1500  # bytes between two delay samples (about one delivery in ten)


def channel(index: int) -> str:
    return f"fws:{{g:room-{index}}}"


def _slot(name: str) -> int:
    from redis.cluster import key_slot

    return int(key_slot(name.encode()))


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _envelope_parts(group: str) -> tuple[bytes, bytes]:
    """A real envelope of a ~30-byte client message, split where the step and time go."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fws.storage.redis.envelope import encode_envelope

    marker = "S000T" + "0" * 19 + "E"
    body = encode_envelope(
        f"17 42 {marker}", origin="3f2a9c4e1b7d", sender="c0a8011f-00001234", group=group
    )
    head, _, tail = body.partition(marker.encode())
    return head, tail


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def softirq_seconds() -> float:
    """Time all CPUs spent in softirqs (``/proc/stat``): on loopback, mostly the packets
    of this benchmark, which no process's CPU time includes."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def _read(key: selectors.SelectorKey) -> tuple[socket.socket, bytes | None]:
    """What a ready socket has: b"" once closed, None if it had nothing after all."""
    sock = key.fileobj
    assert isinstance(sock, socket.socket)
    try:
        return sock, sock.recv(1 << 20)
    except BlockingIOError:
        return sock, None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- publisher ------------------------------------------------------------------------


def _publisher(setup: Setup, groups: int, seed: int, pool: int, depth: int, control: Any) -> None:
    """Sends, per step, ``rate`` messages/s for ``duration`` s to random groups.

    ``pool`` connections to each primary, each with at most ``depth`` commands
    awaiting their reply: ``depth=1`` is what an fws server does (one PUBLISH
    per message from a pool of connections, waiting for the answer), a large
    depth is a pipeline. A message that finds no free connection waits, and
    its delay counts from when it was due.
    """
    verb = b"SPUBLISH" if setup.sharded else b"PUBLISH"
    connections = {
        node.port: [_connect(node.port) for _ in range(pool)] for node in setup.primaries
    }
    outstanding = {sock: 0 for socks in connections.values() for sock in socks}
    port_of = {sock: port for port, socks in connections.items() for sock in socks}
    free = {port: list(socks) for port, socks in connections.items()}  # may take a command
    heads, tails, ports = [], [], []
    for index in range(groups):
        name = channel(index)
        head, tail = _envelope_parts(f"room-{index}")
        length = len(head) + 24 + len(tail)
        heads.append(b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s" % (
            len(verb), verb, len(name), name.encode(), length, head))  # fmt: skip
        tails.append(tail + b"\r\n")
        ports.append(setup.primary_for_slot(_slot(name)).port)
    chooser = random.Random(seed)
    order = [chooser.randrange(groups) for _ in range(1 << 16)]
    selector = selectors.DefaultSelector()
    for sock in outstanding:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    errors: list[bytes] = []

    def drain(timeout: float) -> None:
        for key, _ in selector.select(timeout):
            sock, chunk = _read(key)
            if chunk is None:
                continue
            if not chunk:
                raise ConnectionError("Redis closed a publisher's connection")
            before = outstanding[sock]
            outstanding[sock] -= chunk.count(b"\r\n")
            if before >= depth > outstanding[sock]:
                free[port_of[sock]].append(sock)
            if b"-" in chunk and not errors:
                errors.append(chunk[:200])

    position = 0
    while True:
        message = control.recv()
        if message is None:
            break
        step, rate, duration = message
        cpu_before, started = _cpu(), time.monotonic()
        started_ns = time.monotonic_ns()
        done = 0
        prefix = b"S%03dT" % step
        total = int(rate * duration)
        while done < total:
            elapsed = time.monotonic() - started
            if elapsed >= duration + 1.0:
                break  # a second late: give up the rest (counted as behind)
            due = min(total, int(rate * elapsed)) - done
            batches: dict[socket.socket, list[bytes]] = {}
            for _ in range(max(due, 0)):
                group = order[position]
                candidates = free[ports[group]]
                if not candidates:
                    break  # every connection to that node waits for Redis
                sock = candidates[-1]
                outstanding[sock] += 1
                if outstanding[sock] >= depth:
                    candidates.pop()
                stamp = b"%019dE" % (started_ns + int(done * 1e9 / rate))
                batches.setdefault(sock, []).append(heads[group] + prefix + stamp + tails[group])
                position = (position + 1) & 0xFFFF
                done += 1
            for sock, batch in batches.items():
                data = b"".join(batch)
                written = sock.send(data)
                if written < len(data):  # a full socket buffer: wait for Redis to read
                    sock.setblocking(True)
                    sock.sendall(data[written:])
                    sock.setblocking(False)
            wait = (done + 1) / rate - (time.monotonic() - started)
            drain(min(max(wait, 0.0), 0.001))
        behind = total - done
        deadline = time.monotonic() + 10
        while any(outstanding.values()) and time.monotonic() < deadline:
            drain(0.01)
        control.send(
            {"sent": done, "behind": behind, "cpu": _cpu() - cpu_before,
             "errors": [e.decode(errors="replace") for e in errors]}
        )  # fmt: skip
    for sock in outstanding:
        sock.close()


# -- stand-ins for fws servers ----------------------------------------------------------


@dataclass
class _Step:
    count: int = 0
    delays_ns: list[int] = field(default_factory=list)


def _subscribe(setup: Setup, channels: list[str]) -> list[socket.socket]:
    """One stand-in's connections, subscribed (and confirmed) to ``channels``."""
    by_port: dict[int, list[str]] = {}
    for name in channels:
        by_port.setdefault(setup.primary_for_slot(_slot(name)).port, []).append(name)
    connections = []
    for port, names in by_port.items():
        sock = _connect(port)
        if setup.sharded:  # SSUBSCRIBE takes channels of one slot: one command each
            sock.sendall(b"".join(_command(b"SSUBSCRIBE", n.encode()) for n in names))
        else:
            sock.sendall(_command(b"SUBSCRIBE", *(n.encode() for n in names)))
        confirmed, data = 0, b""
        sock.settimeout(30)
        while confirmed < len(names):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"Redis on {port} closed a subscriber")
            data += chunk
            confirmed = data.count(b"subscribe\r\n")
        sock.setblocking(False)
        connections.append(sock)
    return connections


def _stand_ins(setup: Setup, hosted: list[list[str]], control: Any, ready: Any) -> None:
    """Stand-ins for fws servers (one per entry of ``hosted``), all in this process."""
    connections = [sock for channels in hosted for sock in _subscribe(setup, channels)]
    ready.send(len(connections))
    selector = selectors.DefaultSelector()
    for sock in connections:
        selector.register(sock, selectors.EVENT_READ, b"")
    selector.register(control, selectors.EVENT_READ, None)
    steps: dict[int, _Step] = {}
    carry: dict[socket.socket, bytes] = {sock: b"" for sock in connections}
    lost = ""
    total = 0  # every delivery, tagged or not (the redis-benchmark load is not)
    cpu_start = _cpu()
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data is None:  # the parent
                message = control.recv()
                if message is None:
                    control.send({"cpu": _cpu() - cpu_start})
                    return
                step = steps.pop(message, _Step())
                control.send(
                    {"count": step.count, "delays": step.delays_ns, "lost": lost, "cpu": _cpu(),
                     "total": total}
                )  # fmt: skip
                continue
            sock, chunk = _read(key)
            if chunk is None:
                continue
            if not chunk:
                lost = "Redis closed a subscriber connection (output buffer limit?)"
                selector.unregister(sock)
                continue
            now = time.monotonic_ns()
            data = carry[sock] + chunk
            end = data.rfind(b"\r\n")
            carry[sock], data = data[end:], data[:end]
            position = 0
            while True:  # one delay sample every _SAMPLE_STRIDE bytes
                match = _STAMP.search(data, position)
                if match is None:
                    break
                steps.setdefault(int(match.group(1)), _Step()).delays_ns.append(
                    now - int(match.group(2))
                )
                position = match.end() + _SAMPLE_STRIDE
            for number, record in steps.items():
                record.count += data.count(b"S%03dT" % number)
            total += data.count(b"message\r\n")  # "message" or "smessage" pushes


# -- the run --------------------------------------------------------------------------


@dataclass
class StepResult:
    rate: float  # offered group messages/s
    sent: int
    expected: int  # deliveries Redis should make: sent * fanout
    delivered: int
    p50_ms: float
    p99_ms: float
    wall: float  # the sending time, and the wait for Redis's replies to the last commands
    active: float  # the sending time alone
    redis_cpu: dict[int, float]  # port -> CPU seconds during the step
    publisher_cpu: list[float]
    stand_in_cpu: list[float]  # CPU seconds of each stand-in process since the last step
    machine_busy: float  # CPU seconds all processes (anyone's) used, all cores
    softirq: float  # CPU seconds in softirqs, all cores (loopback network work)
    behind: float
    lost: str = ""
    errors: list[str] = field(default_factory=list)


def _quantile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


class _StandIns:
    """The stand-in processes of one run: ``fanout`` of ``servers`` host each channel."""

    def __init__(
        self, setup: Setup, channels: list[str], servers: int, fanout: int, processes: int
    ) -> None:
        context = multiprocessing.get_context("spawn")
        hosted: list[list[str]] = [[] for _ in range(servers)]
        for index, name in enumerate(channels):
            for k in range(fanout):
                hosted[(index + k) % servers].append(name)
        self.processes: list[tuple[Any, Any]] = []
        self.cpu_before = [0.0] * processes
        self.total_before = [0] * processes
        try:
            for n in range(processes):
                ours, theirs = context.Pipe()
                ready_ours, ready_theirs = context.Pipe()
                process = context.Process(
                    target=_stand_ins, args=(setup, hosted[n::processes], theirs, ready_theirs)
                )
                process.start()
                self.processes.append((process, ours))
                if not ready_ours.poll(60):
                    raise RuntimeError("stand-ins did not subscribe within 60 s")
                ready_ours.recv()
        except BaseException:
            self.close()
            raise

    def report(self, step: int) -> tuple[int, list[int], str, list[float], int]:
        """(tagged deliveries of ``step``, delay samples, loss, CPU each, all deliveries)."""
        delivered, delays, lost, cpu, total = 0, [], "", [], 0
        for number, (_process, pipe) in enumerate(self.processes):
            pipe.send(step)
            answer = pipe.recv()
            delivered += answer["count"]
            delays += answer["delays"]
            lost = lost or answer["lost"]
            cpu.append(answer["cpu"] - self.cpu_before[number])
            self.cpu_before[number] = answer["cpu"]
            total += answer["total"] - self.total_before[number]
            self.total_before[number] = answer["total"]
        return delivered, delays, lost, cpu, total

    def close(self) -> None:
        for process, pipe in self.processes:
            if process.is_alive():
                pipe.send(None)
                if pipe.poll(5):
                    pipe.recv()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


@dataclass(frozen=True)
class Traffic:
    """What both loads share: group channels, who hosts them, how long a step lasts."""

    groups: int  # channels (per primary, for the redis-benchmark load)
    servers: int  # stand-ins for fws servers
    fanout: int  # stand-ins hosting each group: deliveries per message
    stand_in_processes: int
    step_seconds: float
    limit_ms: float = 50.0


def saturate(
    setup: Setup,
    traffic: Traffic,
    *,
    publishers: int,
    rates: list[float],
    pool: int = 16,
    depth: int = 1,
    log: Any = print,
) -> list[StepResult]:
    """Raise the offered rate through ``rates`` until p99 > the limit or messages are lost.

    Group ``i`` is hosted by ``fanout`` of the ``servers`` stand-ins, as if its
    members were spread over that many fws servers.
    """
    from procs import cpu_busy_seconds, cpu_seconds

    context = multiprocessing.get_context("spawn")
    groups, fanout, step_seconds = traffic.groups, traffic.fanout, traffic.step_seconds
    channels = [channel(index) for index in range(groups)]
    stand_ins = _StandIns(setup, channels, traffic.servers, fanout, traffic.stand_in_processes)
    publishers_ = []
    try:
        for number in range(publishers):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_publisher, args=(setup, groups, number, pool, depth, theirs)
            )
            process.start()
            publishers_.append((process, ours))
        results: list[StepResult] = []
        for step, rate in enumerate(rates):
            redis_before = {node.port: cpu_seconds(node.pid) for node in setup.nodes}
            busy_before = sum(cpu_busy_seconds().values())
            softirq_before = softirq_seconds()
            started = time.monotonic()
            for _process, pipe in publishers_:
                pipe.send((step, rate / publishers, step_seconds))
            reports = [pipe.recv() for _process, pipe in publishers_]
            wall = time.monotonic() - started
            redis_cpu = {
                node.port: cpu_seconds(node.pid) - redis_before[node.port] for node in setup.nodes
            }
            machine = sum(cpu_busy_seconds().values()) - busy_before
            softirq = softirq_seconds() - softirq_before
            time.sleep(0.5)  # the last deliveries
            delivered, delays, lost, stand_in_cpu, _total = stand_ins.report(step)
            sent = sum(r["sent"] for r in reports)
            result = StepResult(
                rate=rate, sent=sent, expected=sent * fanout, delivered=delivered,
                p50_ms=_quantile(delays, 0.5), p99_ms=_quantile(delays, 0.99), wall=wall,
                active=step_seconds,
                redis_cpu=redis_cpu, publisher_cpu=[r["cpu"] for r in reports],
                stand_in_cpu=stand_in_cpu,
                machine_busy=machine, softirq=softirq, lost=lost,
                behind=sum(r["behind"] for r in reports),
                errors=[e for r in reports for e in r["errors"]],
            )  # fmt: skip
            results.append(result)
            log(describe(setup, result))
            if result.errors:
                raise RuntimeError(f"Redis answered with an error: {result.errors[0]}")
            if over_limit(result, traffic.limit_ms):
                break
        return results
    finally:
        for process, pipe in publishers_:
            if process.is_alive():
                pipe.send(None)
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        stand_ins.close()


@dataclass
class BenchmarkStep:
    connections: int  # per primary: PUBLISH commands in flight at once, per shard
    requests: int  # all shards
    rps: float  # all shards
    p50_ms: float  # PUBLISH round trip (deliveries leave Redis in the same event loop turn)
    p99_ms: float
    expected: int
    delivered: int
    wall: float
    redis_cpu: dict[int, float]
    benchmark_cpu: float  # every redis-benchmark process together
    stand_in_cpu: list[float]
    machine_busy: float
    softirq: float


def _shard_tags(setup: Setup) -> dict[int, str]:
    """A hash tag per primary whose slot that primary serves (one for a single node)."""
    if not setup.sharded:
        return {setup.primaries[0].port: ""}
    tags: dict[int, str] = {}
    for n in range(10_000):
        port = setup.primary_for_slot(_slot(f"fws:{{g:t{n}}}")).port
        tags.setdefault(port, f"t{n}")
        if len(tags) == len(setup.primaries):
            return tags
    raise RuntimeError("no hash tag found for every primary")


def benchmark(
    setup: Setup, traffic: Traffic, *, connections: list[int], log: Any = print
) -> list[BenchmarkStep]:
    """Redis alone, loaded by ``redis-benchmark`` (C): unpipelined PUBLISH/SPUBLISH.

    Each connection has one command in flight, as fws's pool connections do;
    ``connections`` (per primary) is raised until p99 passes the limit or
    the throughput stops growing (Redis saturated). Channels: ``groups``
    names per primary (``fws:{g:room-NNN}``; on a cluster the hash tag is
    chosen per primary, ``fws:{g:TAG}room-NNN``, as redis-benchmark cannot
    route), each hosted by ``fanout`` stand-ins: the same work per message
    for Redis as fws's group channels, with a real envelope as payload.
    """
    import shutil
    import subprocess

    from procs import cpu_busy_seconds, cpu_seconds

    groups, fanout, step_seconds = traffic.groups, traffic.fanout, traffic.step_seconds
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("needs redis-benchmark (apt-get install redis-tools)")
    verb = "SPUBLISH" if setup.sharded else "PUBLISH"
    tags = _shard_tags(setup)
    patterns = {
        port: (f"fws:{{g:{tag}}}room-__rand_int__" if tag else "fws:{g:room-__rand_int__}")
        for port, tag in tags.items()
    }
    channels = [
        pattern.replace("__rand_int__", f"{n:012d}")
        for pattern in patterns.values()
        for n in range(groups)
    ]
    head, tail = _envelope_parts("room-1")
    payload = (head + b"S000T" + b"0" * 19 + b"E" + tail).decode()
    stand_ins = _StandIns(setup, channels, traffic.servers, fanout, traffic.stand_in_processes)
    results: list[BenchmarkStep] = []
    try:
        estimate = 20_000.0  # requests/s per primary, refined by each step
        for step, count in enumerate(connections):
            requests = max(5_000, int(estimate * 1.5 * step_seconds))
            redis_before = {node.port: cpu_seconds(node.pid) for node in setup.nodes}
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy_before = sum(cpu_busy_seconds().values())
            softirq_before = softirq_seconds()
            started = time.monotonic()
            runs = [
                subprocess.Popen(
                    [
                        binary,
                        "-h",
                        LOOPBACK,
                        "-p",
                        str(port),
                        "-c",
                        str(count),
                        "-n",
                        str(requests),
                        "-r",
                        str(groups),
                        "--csv",
                        verb,
                        pattern,
                        payload,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )  # fmt: skip
                for port, pattern in patterns.items()
            ]
            outputs = [run.communicate(timeout=120)[0] for run in runs]
            wall = time.monotonic() - started
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            redis_cpu = {
                node.port: cpu_seconds(node.pid) - redis_before[node.port] for node in setup.nodes
            }
            machine = sum(cpu_busy_seconds().values()) - busy_before
            softirq = softirq_seconds() - softirq_before
            time.sleep(0.5)
            _tagged, _delays, lost, stand_in_cpu, delivered = stand_ins.report(step)
            rows = []
            for output in outputs:  # the last line: "test","rps",...,"max_latency_ms"
                last = output.strip().splitlines()[-1] if output.strip() else ""
                fields = [field.strip('"') for field in last.rsplit(",", 7)[1:]]
                names = ["rps", "avg", "min", "p50_latency_ms", "p95", "p99_latency_ms", "max"]
                try:
                    rows.append(dict(zip(names, map(float, fields), strict=True)))
                except ValueError:
                    raise RuntimeError(f"redis-benchmark: {output[-500:]}") from None
            rps = sum(float(row["rps"]) for row in rows)
            result = BenchmarkStep(
                connections=count, requests=requests * len(runs), rps=rps,
                p50_ms=max(float(row["p50_latency_ms"]) for row in rows),
                p99_ms=max(float(row["p99_latency_ms"]) for row in rows),
                expected=requests * len(runs) * fanout, delivered=delivered, wall=wall,
                redis_cpu=redis_cpu,
                benchmark_cpu=(children.ru_utime + children.ru_stime)
                - (children_before.ru_utime + children_before.ru_stime),
                stand_in_cpu=stand_in_cpu, machine_busy=machine, softirq=softirq,
            )  # fmt: skip
            results.append(result)
            log(describe_benchmark(setup, result) + (f"  LOST: {lost}" if lost else ""))
            if (
                lost
                or result.p99_ms > traffic.limit_ms
                or result.delivered < 0.999 * result.expected
            ):
                break
            if len(results) > 2 and rps < 1.1 * min(r.rps for r in results[-3:-1]):
                break  # twice and four times the load, (almost) no more throughput: saturated
            estimate = max(estimate, rps / len(runs))
        return results
    finally:
        stand_ins.close()


def machine(run: Any) -> str:
    """CPU the whole machine was busy (anyone's processes), and softirq (loopback packets)."""
    return (
        f"machine {run.machine_busy / run.wall:.2f}/{os.cpu_count()} cores "
        f"+ softirq {run.softirq / run.wall:.2f}"
    )


def _outcome(setup: Setup, result: StepResult | BenchmarkStep, wall: float) -> str:
    """Deliveries, delays and each redis-server's CPU share of ``wall``."""
    nodes = " ".join(
        f"{node.role} {node.port} {result.redis_cpu[node.port] / wall:.0%}" for node in setup.nodes
    )
    return (
        f"delivered {result.delivered:,}/{result.expected:,}  "
        f"p50 {result.p50_ms:6.2f} p99 {result.p99_ms:7.2f} ms  redis CPU {nodes}  "
    )


def describe_benchmark(setup: Setup, result: BenchmarkStep) -> str:
    wall = max(result.wall, 1e-9)
    head = f"  {result.connections:>3} connection(s)/primary: {result.rps:>9,.0f} msg/s  "
    load = f"redis-benchmark {result.benchmark_cpu / wall:.0%} "
    return _line(setup, result, wall, head, load)


def over_limit(result: StepResult, limit_ms: float) -> bool:
    """The step failed: p99 over the limit, a delivery missing, or publishers fell behind."""
    return (
        not result.p99_ms <= limit_ms
        or result.delivered < result.expected * 0.999
        or result.behind > 0.05 * result.rate * result.active
        or bool(result.lost)
    )


def describe(setup: Setup, result: StepResult) -> str:
    wall = max(result.active, 1e-9)  # CPU shares and rates: of the sending time
    head = f"  offered {result.rate:>9,.0f}/s  sent {result.sent / wall:>9,.0f}/s  "
    pubs = max(result.publisher_cpu) / wall if result.publisher_cpu else 0.0
    line = _line(setup, result, wall, head, f"busiest publisher {pubs:.0%} ")
    return line + (f"  LOST: {result.lost}" if result.lost else "")


def _line(
    setup: Setup, result: StepResult | BenchmarkStep, wall: float, head: str, load: str
) -> str:
    subs = max(result.stand_in_cpu) / wall if result.stand_in_cpu else 0.0
    return head + _outcome(setup, result, wall) + load + f"stand-in {subs:.0%}  " + machine(result)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run bench/cluster.py")
