"""The `websockets` library's asyncio server, as the issue's field runs it.

Usage: python websockets_server.py PORT MODE [--uvloop]; MODE is ``echo``
(every message back to its sender) or ``broadcast`` (every message to every
other client, with ``websockets.broadcast``, as fws's ``broadcast_messages``
does). Limits are the library's defaults (1 MiB messages), and so is
permessage-deflate: accepted when a client offers it (only the compression
scenarios do), with server context takeover, 12-bit windows and memLevel 5,
so every client gets its own compressor and ``broadcast`` compresses per client.
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


CLIENTS: set[ServerConnection] = set()


async def relay(websocket: ServerConnection) -> None:
    CLIENTS.add(websocket)
    try:
        async for message in websocket:
            broadcast([client for client in CLIENTS if client is not websocket], message)
    finally:
        CLIENTS.discard(websocket)


async def main(port: int, mode: str) -> None:
    handler = echo if mode == "echo" else relay
    async with serve(handler, "127.0.0.1", port, compression="deflate", backlog=1024) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("mode", choices=("echo", "broadcast"))
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.port, args.mode))
    else:
        asyncio.run(main(args.port, args.mode))
