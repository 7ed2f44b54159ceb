"""System calls of a server during a broadcast: how many, per delivery and per second.

Wall-clock throughput on a shared two-core machine is noisy; what a server
asks of the kernel per delivery is not, and it shows how a server schedules
its work: sends per delivery (how many frames each send carries), reads of
the sender per second (how many messages each read takes), and epoll waits
per second (how often the server goes back to the kernel for more, which is
how often it can overlap with the load generator).

    python3 bench/syscalls.py --servers fws socketify --receivers 1000
    python3 bench/syscalls.py --servers fws --repeats 3 --record
    python3 bench/syscalls.py --servers fws fws@/tmp/fws-before   # another checkout

``--record`` also records each send's and each read's size (``perf record``
on the ``sys_exit_*`` tracepoints, which slows the server a little): bytes
per send, bytes per read. Needs ``perf`` and permission to use tracepoints
(root, or ``kernel.perf_event_paranoid`` <= -1).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import loadgen
from procs import free_port, run_server
from targets import Target, all_targets

COUNTED = (
    "sendmsg",
    "sendto",
    "write",
    "writev",
    "recvfrom",
    "read",
    "recvmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
)

EXTRA = ("task-clock", "context-switches", "sched:sched_wakeup")
"""Server CPU time (ms), the times it slept, and the tasks it woke (the load generator)."""


def _perf(pid: int, seconds: float, *arguments: str) -> subprocess.Popen[bytes]:
    """``perf ARGUMENTS -p PID -- sleep SECONDS``, quietly, in the background."""
    return subprocess.Popen(
        ["perf", *arguments, "-p", str(pid), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _perf_stat(pid: int, seconds: float, output: str) -> subprocess.Popen[bytes]:
    events = ",".join([*(f"syscalls:sys_enter_{name}" for name in COUNTED), *EXTRA])
    return _perf(pid, seconds, "stat", "-x", ",", "-o", output, "-e", events)


def _perf_record(pid: int, seconds: float, output: str) -> subprocess.Popen[bytes]:
    events = []
    for name in ("sendmsg", "sendto", "write", "writev", "recvfrom", "read"):
        events += ["-e", f"syscalls:sys_exit_{name}"]
    return _perf(pid, seconds, "record", "-q", "-o", output, *events)


def _read_stat(path: str) -> dict[str, int]:
    counts = {}
    with open(path) as lines:
        for line in lines:
            fields = line.strip().split(",")
            if len(fields) > 2 and (fields[2].startswith("syscalls:") or fields[2] in EXTRA):
                name = fields[2].removeprefix("syscalls:sys_enter_").removeprefix("sched:")
                try:
                    counts[name] = float(fields[0])
                except ValueError:
                    counts[name] = 0.0
    return counts


def _read_record(path: str) -> dict[str, list[int]]:
    """Return values (bytes, or -errno) of each recorded system call."""
    script = subprocess.run(
        ["perf", "script", "-i", path, "-F", "event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    returns: dict[str, list[int]] = collections.defaultdict(list)
    for line in script.splitlines():
        # "syscalls:sys_exit_sendto: 0x40"
        name, _, value = line.partition(":")[2].partition(":")
        name = name.strip().removeprefix("sys_exit_")
        try:
            returns[name].append(int(value.strip(), 16))
        except ValueError:
            continue
    return returns


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def measure(target: Any, port: int, receivers: int, seconds: float, record: bool) -> dict:
    config = {
        "scenario": "broadcast",
        "url": f"ws://127.0.0.1:{port}/",
        "receivers": receivers,
        "size": 64,
        "window": 16,
        "slow": 0,
        "warmup": 1.0,
        "duration": seconds + 1.0,
    }
    with (
        tempfile.TemporaryDirectory() as scratch,
        run_server(target.name, target.command(port, "broadcast"), port) as server,
    ):
        stat_file = os.path.join(scratch, "stat")
        record_file = os.path.join(scratch, "record")
        started: list[subprocess.Popen[bytes]] = []

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "start":
                start = _perf_record if record else _perf_stat
                started.append(start(server.pid, seconds, record_file if record else stat_file))

        result = loadgen.run(config, server.pid, on_event)
        for process in started:
            process.wait(30)
        row = {
            "deliveries_per_s": result["deliveries_per_s"],
            "server_cpu": result["server_cpu"],
            "client_cpu": result["client_cpu"],
            "others_cpu": result.get("others_cpu", 0.0),
        }
        deliveries = result["deliveries_per_s"] * seconds
        if record:
            returns = _read_record(record_file)
            for name, values in sorted(returns.items()):
                sizes = [_signed(v) for v in values]
                good = [size for size in sizes if size > 0]
                row[f"{name}/s"] = len(sizes) / seconds
                row[f"{name} mean B"] = statistics.fmean(good) if good else 0
                row[f"{name} <=0"] = len(sizes) - len(good)
        else:
            counts = _read_stat(stat_file)
            if counts.get("task-clock"):  # milliseconds
                row["cpu us/delivery"] = counts.pop("task-clock") * 1000 / deliveries
            for name in [*COUNTED, "context-switches", "sched_wakeup"]:
                if counts.get(name):
                    row[f"{name}/s"] = counts[name] / seconds
                    row[f"{name}/delivery"] = counts[name] / deliveries
        return row


def _checkout(name: str, directory: str) -> Target:
    def command(port: int, mode: str) -> list[str]:
        fws = all_targets()[0].command(port, mode)
        # -P: without it ``-m`` puts the working directory (this checkout) first.
        return ["env", f"PYTHONPATH={directory}", sys.executable, "-P", "-m", "fws", *fws[-7:]]

    return Target(name, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=["fws", "socketify"])
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="sizes of sends and reads")
    args = parser.parse_args()
    targets = {target.name: target for target in all_targets()}
    for name in args.servers:
        if name.startswith("fws@"):  # another checkout's fws, to compare before and after
            targets[name] = _checkout(name, name.partition("@")[2])
    port = free_port()
    for repeat in range(args.repeats):
        order = args.servers if repeat % 2 == 0 else args.servers[::-1]
        for name in order:
            row = measure(targets[name], port, args.receivers, args.seconds, args.record)
            cells = ", ".join(
                f"{key} {value:,.3f}"
                if isinstance(value, float) and value < 10
                else f"{key} {value:,.0f}"
                for key, value in row.items()
            )
            print(f"{name}: {cells}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
