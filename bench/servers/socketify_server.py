"""socketify.py: Python bindings (CFFI) to uWebSockets, the C++ server Bun is built on.

Usage: python socketify_server.py PORT MODE; MODE is ``echo`` or
``broadcast``: every client subscribes to one topic and a message is
``ws.publish``-ed to it, which in uWebSockets reaches every subscriber but the
sender. Messages up to 16 MiB; 16 MiB of backpressure per connection before
uWebSockets drops sends (its default, 64 KiB, would drop 1 MiB echoes, where
the other servers queue). Compression is socketify's default (none): the
compression scenarios show n/a.
"""

from __future__ import annotations

import argparse
from typing import Any

from socketify import App, OpCode

TOPIC = "all"


def main(port: int, mode: str) -> None:
    app = App()

    def on_open(ws: Any) -> None:
        if mode == "broadcast":
            ws.subscribe(TOPIC)

    def on_message(ws: Any, message: Any, opcode: OpCode) -> None:
        if mode == "echo":
            ws.send(message, opcode)
        else:
            ws.publish(TOPIC, message, opcode)

    app.ws(
        "/*",
        {
            "max_payload_length": 16 * 2**20,
            "max_backpressure": 16 * 2**20,
            "idle_timeout": 0,
            "open": on_open,
            "message": on_message,
        },
    )
    app.listen({"port": port, "host": "127.0.0.1"}, lambda config: None)
    app.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("mode", choices=("echo", "broadcast"))
    args = parser.parse_args()
    main(args.port, args.mode)
