"""What one WebSocket upgrade costs fws, measured in one process.

Usage: ``python3 bench/handshake_cost.py N [--memory]``

Starts an ``fws.Server`` (no filters at all, logging at INFO to /dev/null
as fws_server would) and opens ``N`` connections to it from greenlets in the
same process, 100 at a time, each a raw socket that sends one prebuilt
upgrade request and reads the 101; they then stay open and idle, as in the
bench's ``idle`` scenario. N is at most a little under half the descriptor
limit (both ends of each connection are in this process).

Wall-clock rates on a shared machine are noise; this script exists to be run
under a load-independent meter:

- instructions: ``valgrind --tool=callgrind --callgrind-out-file=/dev/null
  python3 bench/handshake_cost.py 2000`` minus the same with ``0``, divided
  by 2000 (the client side is the same few calls in every version of fws);
- memory: ``--memory`` prints what tracemalloc sees the server allocate per
  idle connection once all are open (Python objects only: not greenlet
  stacks, not the kernel's socket buffers), and the lines that allocated it.
"""

# ruff: noqa: E402 - gevent patches before anything else is imported
from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # as fws_server does: logging then sees a thread per greenlet

import argparse
import base64
import gc
import os
import sys
import tracemalloc

import gevent
import gevent.pool
import gevent.socket

import fws
from fws.logformat import configure_logging

CONCURRENCY = 100


def _request(port: int, number: int) -> bytes:
    key = base64.b64encode(number.to_bytes(16, "big")).decode()
    return (
        f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _open(port: int, number: int, sockets: list[gevent.socket.socket]) -> None:
    sock = gevent.socket.socket()
    sock.connect(("127.0.0.1", port))  # not create_connection: no getaddrinfo in a thread
    sock.sendall(_request(port, number))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection {number} closed during the handshake")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"connection {number}: {answer[:200]!r}")
    sockets.append(sock)


def _server_only(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Leave out what the client side of this script allocated (its sockets, its list)."""
    return snapshot.filter_traces([tracemalloc.Filter(False, __file__, all_frames=True)])


def _server_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in _server_only(snapshot).statistics("filename"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--memory", action="store_true", help="tracemalloc per connection")
    options = parser.parse_args()
    # As fws_server configures it, at INFO: the open lines are part of the cost.
    configure_logging("INFO", "text", open(os.devnull, "w"))  # noqa: SIM115
    server = fws.Server(
        host="127.0.0.1",
        port=0,
        registry=fws.Registry(),
        max_pending_handshakes=None,
        ping_interval=None,
    )
    server.start()
    port = server.address[1]
    sockets: list[gevent.socket.socket] = []
    # One connection first, so that lazy imports and caches are not counted.
    _open(port, 0, sockets)
    gevent.sleep(0.1)
    if options.memory:
        gc.collect()
        tracemalloc.start(64)
        before = _server_bytes(tracemalloc.take_snapshot())
    pool = gevent.pool.Pool(CONCURRENCY)
    for number in range(1, options.count + 1):
        pool.spawn(_open, port, number, sockets)
    pool.join(raise_error=True)
    gevent.sleep(0.5)  # let every connection park
    if options.memory and options.count:
        gc.collect()
        snapshot = _server_only(tracemalloc.take_snapshot())
        after = _server_bytes(snapshot)
        print(f"{(after - before) / options.count:.0f} B per connection (tracemalloc)")
        for stat in snapshot.statistics("lineno")[:30]:
            print(f"  {stat.size / options.count:7.1f} B  {stat.traceback}")
    print(f"{len(sockets) - 1} connections open", file=sys.stderr)
    sys.stdout.flush()
    # No stop and no interpreter teardown: closing N connections is not opening them.
    os._exit(0)


if __name__ == "__main__":
    main()
