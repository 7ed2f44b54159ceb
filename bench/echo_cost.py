"""In-process cost of one echo round trip on one connection (issue 10's echo latency).

A real, started ``fws.Server`` with the Echo filter serves one connection
opened on a socket pair; a client greenlet sends one masked 32-byte binary
frame and waits for its echo, ``--rounds`` times. Everything the server
does per message runs, in the order it runs under ``bench/loadgen.c``: the
reader's recv, parsing, the message pipeline, queueing, the flush and the
hub's polling; only TCP is replaced by a Unix socket pair, and the client's
side costs a little too.

Time (CPU time, so that other processes on the machine disturb it less)::

    PYTHONPATH=$PWD python3 bench/echo_cost.py

Instructions, independent of the machine's load: the difference of two
callgrind runs, divided by the difference in rounds, leaves out start-up::

    PYTHONPATH=$PWD python3 bench/echo_cost.py --callgrind
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import gevent
import gevent.socket

import fws
from fws.filters.echo import Echo

MASK = b"\x12\x34\x56\x78"
PAYLOAD = b"m" * 32
MASKED = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(PAYLOAD))
FRAME = bytes([0x82, 0x80 | len(PAYLOAD)]) + MASK + MASKED
REPLY = bytes([0x82, len(PAYLOAD)]) + PAYLOAD


def round_trips(rounds: int, metrics: bool = True) -> float:
    """Seconds of CPU per round trip, after a warm-up of 200 rounds."""
    server = fws.Server(
        host="127.0.0.1",
        port=0,
        message=Echo,
        registry=fws.Registry(),
        ping_interval=None,
        metrics=metrics,
    )
    server.start()
    ours, theirs = gevent.socket.socketpair()
    connection = fws.Connection(fws.Request("/"), server.connection_settings, server.table, server)
    connection.open(ours)

    def run(count: int) -> None:
        for _ in range(count):
            theirs.sendall(FRAME)
            reply = theirs.recv(64)
            while len(reply) < len(REPLY):
                reply += theirs.recv(64)
            assert reply == REPLY, reply

    run(200)
    started = time.process_time()
    run(rounds)
    elapsed = time.process_time() - started
    connection.abort()
    theirs.close()
    server.stop(timeout=1)
    return elapsed / rounds if rounds else 0.0


def _instructions(rounds: int, metrics: bool) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--rounds",
            str(rounds),
            "--quiet",
        ]
        if not metrics:
            command.append("--no-metrics")
        subprocess.run(command, check=True, capture_output=True)
        with open(out) as file:
            totals = re.search(r"^totals: (\d+)", file.read(), re.MULTILINE)
    assert totals is not None
    return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-metrics", action="store_true")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    metrics = not args.no_metrics
    if args.quiet:  # one measured run, under valgrind
        round_trips(args.rounds, metrics)
        return
    if args.callgrind:
        few, many = 1000, 6000
        per_round = (_instructions(many, metrics) - _instructions(few, metrics)) / (many - few)
        print(f"{per_round:,.0f} instructions per round trip (callgrind, {many} - {few} rounds)")
        return
    best: Any = min(round_trips(args.rounds, metrics) for _ in range(args.repeats))
    print(f"{best * 1e6:.2f} µs of CPU per round trip (best of {args.repeats} x {args.rounds})")


if __name__ == "__main__":
    main()
