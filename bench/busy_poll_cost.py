"""What busy polling (``--busy-poll-us``) costs and buys at a given message rate.

Usage: ``python3 bench/busy_poll_cost.py [--rates 100 1000 5000 0] [--windows 0 50]
[--seconds 3]``

Busy polling keeps the hub polling without sleeping for a moment after a
reader starts to wait (``fws.busy_poll``). It pays when the next message
comes within the window and costs CPU when it does not, so this measures
both: one client on the load generator's CPU echoes 32-byte messages at a
fixed rate (0: back to back, as fast as the client goes), against
``fws_server -q -f echo --no-metrics`` on the server CPU with each window;
it prints the server's CPU share (user + system, ``/proc/PID/stat``) over
the run, the client's round-trip p50 and the rate reached. The client is
websocket-client, in Python: slower to turn round than the bench's C load
generator, so its back-to-back rate is lower than the echo-latency
scenario's; the comparison between windows is what counts. Bounded: each
cell runs ``--seconds`` after 200 warm-up messages, on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import websocket
from procs import CLIENT_CPU, cpu_seconds, free_port, fws_command, run_server


def one_cell(rate: int, window_us: int, seconds: float) -> tuple[float, float, float]:
    """(server CPU %, p50 ms, messages/s) for one rate (0: back to back) and window."""
    port = free_port()
    command = [*fws_command(), "-q", "--host", "127.0.0.1", "-p", str(port), "-f", "echo"]
    command += ["--no-metrics", "--busy-poll-us", str(window_us)]
    with run_server("fws", command, port) as server:
        client = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
        payload = b"x" * 32
        for _ in range(200):
            client.send_binary(payload)
            client.recv()
        interval = 1.0 / rate if rate else 0.0
        round_trips: list[float] = []
        cpu_before = cpu_seconds(server.pid)
        began = next_send = time.monotonic()
        end = began + seconds
        while (now := time.monotonic()) < end:
            if interval and now < next_send:
                time.sleep(next_send - now)
            sent = time.perf_counter()
            client.send_binary(payload)
            client.recv()
            round_trips.append(time.perf_counter() - sent)
            next_send += interval
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(server.pid) - cpu_before
        client.close()
    return cpu / elapsed * 100, statistics.median(round_trips) * 1e3, len(round_trips) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 1000, 5000, 0])
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and CLIENT_CPU < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"{'rate':>14}  {'window':>9}  {'server CPU':>10}  {'p50 ms':>7}  {'reached/s':>9}")
    for rate in options.rates:
        for window in options.windows:
            cpu, p50, reached = one_cell(rate, window, options.seconds)
            label = f"{rate:,}/s" if rate else "back to back"
            print(
                f"{label:>14}  {window:>6} us  {cpu:>9.1f}%  {p50:>7.3f}  {reached:>9,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
