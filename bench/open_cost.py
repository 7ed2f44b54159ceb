"""The CPU time fws_server spends per connection it opens, not the wall-clock rate.

Usage: ``python3 bench/open_cost.py [--runs 3] [--connections 10000] [-- SERVER OPTIONS]``

The bench's ``idle`` scenario reports opens/s, which on a shared machine
says as much about the other processes as about fws. This runs the same
load (bench/loadgen.c opening idle connections, 100 at a time, against
``fws_server -q -f echo``) and reports the server's own CPU time (user +
system, ``/proc/PID/stat``) from the first connection to the last, per
1,000 opens, with the resident memory per connection. A fresh server for
each run; the median is printed last. ``--info`` logs at INFO (the lines
for each open) instead of ``-q``; options after ``--`` go to fws_server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import loadgen
from procs import cpu_seconds, free_port, fws_command, rss_bytes, run_server


def one_run(connections: int, info: bool, extra: list[str]) -> dict[str, float]:
    port = free_port()
    quiet = [] if info else ["-q"]
    command = [*fws_command(), *quiet, "--host", "127.0.0.1", "-p", str(port), "-f", "echo"]
    command += extra
    marks: dict[str, float] = {}
    with run_server("fws", command, port) as server:

        def on_event(event: dict[str, Any]) -> str | None:
            if event["event"] == "baseline":
                time.sleep(0.5)
                marks["rss"] = rss_bytes(server.pid)
                marks["cpu"] = cpu_seconds(server.pid)
                return "go"
            if event["event"] == "opened":
                marks["cpu_opened"] = cpu_seconds(server.pid)
                time.sleep(1.0)  # as the bench: let each handshake's leftovers settle
                marks["rss_opened"] = rss_bytes(server.pid)
                return "done"
            return None

        config = {
            "scenario": "idle",
            "url": f"ws://127.0.0.1:{port}/",
            "connections": connections,
            "concurrency": 100,
            "timeout": 120,
            "compression": False,
        }
        result = loadgen.run(config, server.pid, on_event, server_pinned=server.pinned)
    if result["failed"]:
        raise SystemExit(f"{result['failed']} connections failed: {result['first_error']}")
    return {
        "cpu_ms_per_1000": (marks["cpu_opened"] - marks["cpu"]) * 1e6 / connections,
        "kb_per_connection": (marks["rss_opened"] - marks["rss"]) / connections / 1000,
        "opens_per_s": connections / result["open_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--info", action="store_true", help="log at INFO (the open lines)")
    parser.add_argument("server_options", nargs="*")
    options = parser.parse_args()
    runs = [
        one_run(options.connections, options.info, options.server_options)
        for _ in range(options.runs)
    ]
    for run in runs:
        print(
            f"server CPU {run['cpu_ms_per_1000']:6.0f} ms per 1,000 opens, "
            f"{run['kb_per_connection']:.3f} kB/connection, {run['opens_per_s']:,.0f} opens/s"
        )
    print(
        "median: "
        + ", ".join(
            f"{key} {statistics.median(run[key] for run in runs):.3f}" for key in runs[0]
        ),
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
