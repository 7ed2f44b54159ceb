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

import loadgen
from procs import free_port, fws_command, run_server
from scenarios import Settings, idle_run


def one_run(connections: int, info: bool, extra: list[str]) -> dict[str, float]:
    """The bench's idle scenario against a fresh ``fws_server``; what it cost the server."""
    port = free_port()
    quiet = [] if info else ["-q"]
    command = [*fws_command(), *quiet, "--host", "127.0.0.1", "-p", str(port), "-f", "echo"]
    command += extra
    with run_server("fws", command, port) as server:
        try:
            result = idle_run(server, Settings(idle_connections=connections), compression=False)
        except loadgen.LoadgenError as exc:
            raise SystemExit(str(exc)) from None
    return {
        "cpu_ms_per_1000": result["cpu_ms_per_1000_opens"],
        "kb_per_connection": result["kb_per_connection"],
        "opens_per_s": result["opens_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--info", action="store_true", help="log at INFO (the open lines)")
    parser.add_argument("server_options", nargs="*")
    options = parser.parse_args()
    if not (1 <= options.runs <= 20 and 1 <= options.connections <= 100_000):
        parser.error("keep it bounded: runs 1..20, connections 1..100,000")
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
        + ", ".join(f"{key} {statistics.median(run[key] for run in runs):.3f}" for key in runs[0])
    )


if __name__ == "__main__":
    main()
