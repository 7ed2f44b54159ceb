"""The CPU time fws_server spends per connection the client closes, over the close phase only.

Usage: ``python3 bench/close_cost.py [--runs 3] [--connections 5000] [--server-first]``

Opens ``--connections`` idle connections to ``fws_server -q -f echo`` (on
127.0.0.1, one blocking client in this process), waits until every reader
has parked, then has each client send a close frame (code 1000) and read
the server's reply, and reports the server's CPU time (user + system,
``/proc/PID/stat``) from the first close sent until the server has closed
every socket (each client reads the reply, then the end of the stream), per
1,000 closes. With ``--server-first`` the server starts each closing
handshake instead (a filter module, written to a temporary directory, closes
the connection with 1000 when it gets a message; each client sends one,
reads the close, answers it and reads the end of the stream). A fresh server
for each run; the median is printed last.
Compare two checkouts with ``PYTHONPATH=<checkout> python3 bench/close_cost.py``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import tempfile
import time
from pathlib import Path

from procs import LOOPBACK, cpu_seconds, free_port, fws_command, run_server

PARKED_AFTER = 1.5
"""Seconds to wait after the opens: a reader idle for a second parks (its connection waits
on a watcher), as the readers of most connections being closed in production have."""

REQUEST = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

# Masked frames with a zero mask (the payload is as sent): a close with code 1000, and "bye".
CLOSE = bytes([0x88, 0x82, 0, 0, 0, 0]) + struct.pack("!H", 1000)
BYE = bytes([0x81, 0x83, 0, 0, 0, 0]) + b"bye"

CLOSING_FILTER = """
from fws import WebSocketMessageFilter


class CloseOnMessage(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        web_socket_instance.close(1000)
"""


def one_run(connections: int, server_first: bool) -> float:
    """Server CPU milliseconds per 1,000 closes, on a fresh server."""
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        filters = "echo"
        if server_first:
            module = Path(directory) / "close_on_message.py"
            module.write_text(CLOSING_FILTER)
            filters = str(module)
        command = [*fws_command(), "-q", "--host", LOOPBACK, "-p", str(port), "-f", filters]
        return _closes(command, port, connections, server_first)


def _closes(command: list[str], port: int, connections: int, server_first: bool) -> float:
    request = REQUEST.format(host=f"{LOOPBACK}:{port}").encode()
    with run_server("fws", command, port) as server:
        clients = []
        try:
            for _ in range(connections):
                client = socket.create_connection((LOOPBACK, port), timeout=10)
                clients.append(client)
                client.sendall(request)
                if not client.recv(4096).startswith(b"HTTP/1.1 101 "):
                    raise SystemExit("fws_server refused a connection")
            time.sleep(PARKED_AFTER)
            before = cpu_seconds(server.pid)
            for client in clients:
                client.sendall(BYE if server_first else CLOSE)
            for client in clients:
                if client.recv(16)[:1] != b"\x88":
                    raise SystemExit("no close frame from the server")
                if server_first:
                    client.sendall(CLOSE)  # the client's answer ends the handshake
            for client in clients:  # the server has closed its socket: its work is done
                if client.recv(16) != b"":
                    raise SystemExit("data after the close frame")
            after = cpu_seconds(server.pid)
        finally:
            for client in clients:
                client.close()
    return 1000 * (after - before) / connections * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=5_000)
    parser.add_argument("--server-first", action="store_true", help="the server closes first")
    options = parser.parse_args()
    if not (1 <= options.runs <= 20 and 1 <= options.connections <= 20_000):
        parser.error("keep it bounded: runs 1..20, connections 1..20,000")
    runs = [one_run(options.connections, options.server_first) for _ in range(options.runs)]
    for run in runs:
        print(f"server CPU {run:6.1f} ms per 1,000 closes")
    print(f"median: cpu_ms_per_1000 {statistics.median(runs):.1f}")


if __name__ == "__main__":
    main()
