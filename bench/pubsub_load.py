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
The offered rate is open loop (publishers send what is due each millisecond,
whatever Redis answers), raised step by step by :func:`saturate`.
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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- publisher ------------------------------------------------------------------------


def _publisher(setup: Setup, groups: int, seed: int, control: Any) -> None:
    """Sends, per step, ``rate`` messages/s for ``duration`` s to random groups."""
    verb = b"SPUBLISH" if setup.sharded else b"PUBLISH"
    sockets = {node.port: _connect(node.port) for node in setup.primaries}
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
    for sock in sockets.values():
        sock.setblocking(True)
    replies = {port: 0 for port in sockets}
    errors: list[bytes] = []

    def drain(block: bool) -> None:
        for port, sock in sockets.items():
            while True:
                try:
                    chunk = sock.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not chunk:
                    raise ConnectionError(f"Redis on {port} closed the publisher's connection")
                replies[port] += chunk.count(b"\r\n")
                if b"-" in chunk and not errors:
                    errors.append(chunk[:200])
                if block:
                    break

    position = 0
    while True:
        message = control.recv()
        if message is None:
            break
        step, rate, duration = message
        sent = {port: 0 for port in sockets}
        for port in replies:
            replies[port] = 0
        cpu_before, started = _cpu(), time.monotonic()
        done = 0
        prefix = b"S%03dT" % step
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration:
                break
            due = int(rate * elapsed) - done
            if due > 0:
                stamp = prefix + b"%019dE" % time.monotonic_ns()
                batches: dict[int, list[bytes]] = {port: [] for port in sockets}
                for _ in range(due):
                    group = order[position]
                    position = (position + 1) & 0xFFFF
                    batches[ports[group]].append(heads[group] + stamp + tails[group])
                for port, batch in batches.items():
                    if batch:
                        sockets[port].sendall(b"".join(batch))
                        sent[port] += len(batch)
                done += due
            drain(block=False)
            time.sleep(0.001)
        behind = rate * duration - done
        deadline = time.monotonic() + 10
        while any(replies[p] < sent[p] for p in sockets) and time.monotonic() < deadline:
            drain(block=False)
            time.sleep(0.002)
        control.send(
            {"sent": done, "acked": sum(replies.values()), "behind": behind,
             "cpu": _cpu() - cpu_before, "errors": [e.decode(errors="replace") for e in errors]}
        )  # fmt: skip
    for sock in sockets.values():
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
                    {"count": step.count, "delays": step.delays_ns, "lost": lost, "cpu": _cpu()}
                )
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
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


def saturate(
    setup: Setup,
    *,
    groups: int,
    servers: int,
    fanout: int,
    publishers: int,
    rates: list[float],
    step_seconds: float,
    limit_ms: float = 50.0,
    stand_in_processes: int = 2,
    log: Any = print,
) -> list[StepResult]:
    """Raise the offered rate through ``rates`` until p99 > ``limit_ms`` or messages are lost.

    Group ``i`` is hosted by ``fanout`` of the ``servers`` stand-ins, as if its
    members were spread over that many fws servers; stand-ins run in
    ``stand_in_processes`` processes.
    """
    from procs import cpu_busy_seconds, cpu_seconds

    context = multiprocessing.get_context("spawn")
    hosted: list[list[str]] = [[] for _ in range(servers)]
    for index in range(groups):
        for k in range(fanout):
            hosted[(index + k) % servers].append(channel(index))
    halves = [hosted[n::stand_in_processes] for n in range(stand_in_processes)]
    subscribers, publishers_ = [], []
    try:
        for share in halves:
            ours, theirs = context.Pipe()
            ready_ours, ready_theirs = context.Pipe()
            process = context.Process(target=_stand_ins, args=(setup, share, theirs, ready_theirs))
            process.start()
            subscribers.append((process, ours))
            if not ready_ours.poll(60):
                raise RuntimeError("stand-ins did not subscribe within 60 s")
            ready_ours.recv()
        for number in range(publishers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_publisher, args=(setup, groups, number, theirs))
            process.start()
            publishers_.append((process, ours))
        results: list[StepResult] = []
        stand_in_before = [0.0] * len(subscribers)
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
            delivered, delays, lost, stand_in_cpu = 0, [], "", []
            for number, (_process, pipe) in enumerate(subscribers):
                pipe.send(step)
                answer = pipe.recv()
                stand_in_cpu.append(answer["cpu"] - stand_in_before[number])
                stand_in_before[number] = answer["cpu"]
                delivered += answer["count"]
                delays += answer["delays"]
                lost = lost or answer["lost"]
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
            if over_limit(result, limit_ms):
                break
        return results
    finally:
        for process, pipe in publishers_:
            if process.is_alive():
                pipe.send(None)
        for process, pipe in subscribers:
            if process.is_alive():
                pipe.send(None)
                if pipe.poll(5):
                    pipe.recv()
        for process, _pipe in [*publishers_, *subscribers]:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


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
    nodes = " ".join(
        f"{node.role} {node.port} {result.redis_cpu[node.port] / wall:.0%}" for node in setup.nodes
    )
    pubs = max(result.publisher_cpu) / wall if result.publisher_cpu else 0.0
    subs = max(result.stand_in_cpu) / wall if result.stand_in_cpu else 0.0
    return (
        f"  offered {result.rate:>9,.0f}/s  sent {result.sent / wall:>9,.0f}/s  "
        f"delivered {result.delivered:,}/{result.expected:,}  "
        f"p50 {result.p50_ms:6.2f} p99 {result.p99_ms:7.2f} ms  redis CPU {nodes}  "
        f"busiest publisher {pubs:.0%} stand-in {subs:.0%}  "
        f"machine {result.machine_busy / result.wall:.2f}/{os.cpu_count()} cores "
        f"+ softirq {result.softirq / result.wall:.2f}"
        + (f"  LOST: {result.lost}" if result.lost else "")
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run bench/cluster.py")
