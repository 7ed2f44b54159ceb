"""In-process measurement of a broadcast's fan-out and flush, without a load generator.

A real, started ``fws.Server`` (metrics on, as ``fws_server`` runs) gets
``--receivers`` connections on socket pairs, plus one sender that each
broadcast skips. A round is what the 64-byte broadcast scenarios make the
server do per read of the sender: ``--batch`` calls of ``server.broadcast``
(the fan-out: encode once, queue for every recipient), then one turn of the
hub, whose flusher writes each connection's queue with one ``send``. The
peers are drained after each round, outside the timing, so the time is fws's
own code and the ``send`` system calls, not a client's.

Times are CPU time of this process (``time.process_time``), so that other
processes on the machine disturb them less; pin it to one CPU for steadier
numbers. Each speed is the best of ``--repeats`` blocks of ``--rounds``::

    taskset -c 1 python3 bench/fanout_cost.py                  # as installed
    FWS_NO_SPEEDUPS=1 taskset -c 1 python3 bench/fanout_cost.py  # the pure-Python path
"""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any

import gevent
import gevent.socket
from inprocess import flush_turn

import fws

MESSAGE = b"b" * 64


def _server() -> fws.Server:
    server = fws.Server(host="127.0.0.1", port=0, registry=fws.Registry(), ping_interval=None)
    server.start()
    return server


def _connection(server: fws.Server) -> tuple[fws.Connection, socket.socket]:
    ours, theirs = gevent.socket.socketpair()
    # Room for a whole round, so that every send of the flusher completes.
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    connection = fws.Connection(fws.Request("/"), server.connection_settings, server.table, server)
    connection.open(ours)
    peer: socket.socket = theirs._sock  # type: ignore[attr-defined]  # gevent's plain socket
    peer.setblocking(False)
    return connection, peer


def _drain(peers: list[socket.socket]) -> None:
    for peer in peers:
        try:
            while peer.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def measure(
    server: fws.Server, peers: list[socket.socket], rounds: int, batch: int, exclude: str
) -> tuple[float, float]:
    """CPU seconds of ``rounds`` rounds: (fan-out, flush)."""
    broadcast = server.broadcast
    clock = time.process_time
    fanout = flush = 0.0
    for _ in range(rounds):
        started = clock()
        for _ in range(batch):
            broadcast(MESSAGE, exclude=exclude)
        queued = clock()
        flush_turn(server)  # the hub's turn: the flusher sends every queue
        flushed = clock()
        fanout += queued - started
        flush += flushed - queued
        _drain(peers)
    return fanout, flush


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch", type=int, default=16, help="broadcasts per hub turn")
    parser.add_argument("--rounds", type=int, default=200, help="rounds per block")
    parser.add_argument("--repeats", type=int, default=15, help="blocks; the best counts")
    args = parser.parse_args()
    try:
        from fws import _accel  # what the server runs: compiled or pure

        implementation = _accel.IMPLEMENTATION
    except ImportError:
        implementation = "pure Python (no accelerator)"
    print(f"fws {fws.__version__}, fan-out and flush: {implementation}")
    for receivers in args.receivers:
        server = _server()
        sender, sender_peer = _connection(server)
        opened = [_connection(server) for _ in range(receivers)]
        peers = [peer for _, peer in opened]
        gevent.sleep(0.05)
        rounds = max(1, args.rounds * 100 // receivers)
        measure(server, peers, rounds, args.batch, sender.id)  # warm-up
        best: tuple[float, float] | None = None
        for _ in range(args.repeats):
            fanout, flush = measure(server, peers, rounds, args.batch, sender.id)
            if best is None or fanout + flush < sum(best):
                best = (fanout, flush)
        assert best is not None
        deliveries = rounds * args.batch * receivers
        fanout, flush = best
        print(
            f"{receivers} receivers, {args.batch} broadcasts a turn: "
            f"{deliveries / (fanout + flush):,.0f} deliveries/s "
            f"(fan-out {fanout / deliveries * 1e9:.0f} ns, "
            f"flush {flush / deliveries * 1e9:.0f} ns a delivery)"
        )
        closing: list[Any] = [sender, *(connection for connection, _ in opened)]
        for connection in closing:
            connection.abort()
        server.stop(timeout=1)


if __name__ == "__main__":
    main()
