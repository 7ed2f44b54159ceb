"""In-process micro-measurement of what metrics cost on fws's hot paths.

No load generator, no TCP: connections of a real, started ``fws.Server`` are
opened on socket pairs, and the time goes to fws's own per-message code
(parse, dispatch through the pipeline, queue, write). Two paths:

- echo: one connection is fed chunks of 100 masked 32-byte text frames; the
  Echo filter answers each; the answers are drained from the socket pair;
- broadcast: ``server.broadcast`` of a 64-byte message to 200 connections.

Run it on two checkouts to compare (it only uses what every version has)::

    PYTHONPATH=$PWD python3 bench/metrics_cost.py           # metrics on and off
    PYTHONPATH=/tmp/fws-base python3 bench/metrics_cost.py  # a checkout from before metrics

With metrics off the server neither counts per message nor times pipelines
(it still counts per connection: handshakes, close codes). On and off run in
one process, interleaved.

Each speed is the best of ``--repeats`` runs, timed in CPU time
(``time.process_time``) so that other processes on the machine disturb it
less; the on/off ratio is the median over pairs of runs made one after the
other, with its quartiles.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from typing import Any

import gevent
import gevent.socket
from inprocess import flush_turn

import fws
from fws.filters.echo import Echo

FRAME = bytes([0x81, 0x80 | 32]) + b"\0\0\0\0" + b"m" * 32  # masked with a zero key
CHUNK = FRAME * 100


def _server(metrics: bool) -> fws.Server:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "message": Echo}
    settings["registry"] = fws.Registry()
    settings["ping_interval"] = None
    if "metrics" in inspect.signature(fws.Server).parameters:
        settings["metrics"] = metrics
    server = fws.Server(**settings)
    server.start()
    return server


def _connection(server: fws.Server) -> tuple[Any, Any, gevent.Greenlet]:
    ours, theirs = gevent.socket.socketpair()
    connection = fws.Connection(fws.Request("/"), server.connection_settings, server.table, server)
    connection.open(ours)

    def drain() -> None:
        while theirs.recv(1 << 20):
            pass

    return connection, theirs, gevent.spawn(drain)


def echo(server: fws.Server, chunks: int) -> float:
    """Messages per second through parse, the message pipeline, queue and write."""
    connection, theirs, drainer = _connection(server)
    started = time.process_time()
    for _ in range(chunks):
        connection._handle_chunk(CHUNK)
        gevent.sleep(0)  # the writer sends the batch of answers
    while connection._outbox_bytes:  # every answer written
        gevent.sleep(0)
    elapsed = time.process_time() - started
    drainer.kill()
    connection.abort()
    theirs.close()
    return chunks * 100 / elapsed


def broadcast(server: fws.Server, rounds: int, receivers: int = 200) -> float:
    """Deliveries per second of ``server.broadcast`` (encode once, queue, write)."""
    opened = [_connection(server) for _ in range(receivers)]
    gevent.sleep(0.05)
    message = b"b" * 64
    started = time.process_time()
    for n in range(rounds):
        server.broadcast(message)
        if n % 10 == 9:
            flush_turn(server)
    flush_turn(server)
    elapsed = time.process_time() - started
    for connection, theirs, drainer in opened:
        drainer.kill()
        connection.abort()
        theirs.close()
    return rounds * receivers / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if "metrics" in inspect.signature(fws.Server).parameters:
        variants = {"metrics on": _server(True), "metrics off": _server(False)}
    else:
        variants = {"before metrics": _server(True)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for server in variants.values():  # warm-up
        echo(server, 200)
        broadcast(server, 50)
    # Interleaved, so that a burst of load elsewhere hits every variant alike.
    for _ in range(args.repeats):
        for name, server in variants.items():
            runs[name].append((echo(server, 300), broadcast(server, 300)))
    for name, measured in runs.items():
        echoed = max(run[0] for run in measured)
        delivered = max(run[1] for run in measured)
        print(f"{name}: echo {echoed:,.0f} messages/s; broadcast {delivered:,.0f} deliveries/s")
    if len(runs) == 2:
        # Each on run against the off run next to it: the median of those
        # ratios, with the quartiles, says how much of a difference is noise.
        pairs = list(zip(runs["metrics on"], runs["metrics off"], strict=True))
        for index, scenario in enumerate(("echo", "broadcast")):
            ratios = sorted(on[index] / off[index] for on, off in pairs)
            low, median, high = statistics.quantiles(ratios, n=4)
            print(
                f"on/off {scenario}: median {median:.3f} "
                f"(quartiles {low:.3f}-{high:.3f}, {len(ratios)} pairs)"
            )
    for server in variants.values():
        server.stop(timeout=1)


if __name__ == "__main__":
    main()
