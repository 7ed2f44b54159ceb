"""picows on uvloop: a Cython WebSocket library working at the frame level.

Usage: python picows_server.py PORT MODE; MODE is ``echo`` (every message
back to its sender) or ``broadcast`` (every message to every other client,
one ``send`` per client, as its examples do). The clients send whole
(unfragmented) messages, so a frame is a message here. picows has no
permessage-deflate: the compression scenarios show n/a. Frames up to 16 MiB;
pings are answered by picows itself (``enable_auto_pong``, its default).
"""

from __future__ import annotations

import argparse

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

CLIENTS: set[WSTransport] = set()


class Handler(WSListener):  # type: ignore[misc]
    """One connection: echo or relay its data frames, answer a close."""

    def __init__(self, broadcast: bool) -> None:
        self.broadcast = broadcast

    def on_ws_connected(self, transport: WSTransport) -> None:
        CLIENTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code() or WSCloseCode.OK)
            transport.disconnect()
        elif kind in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
            if not self.broadcast:
                transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
                return
            data = frame.get_payload_as_bytes()
            for client in CLIENTS:
                if client is not transport:
                    client.send(kind, data, frame.fin)


async def main(port: int, mode: str) -> None:
    broadcast = mode == "broadcast"
    server = await ws_create_server(
        lambda _request: Handler(broadcast),
        "127.0.0.1",
        port,
        max_frame_size=16 * 2**20,
        backlog=1024,
    )
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("mode", choices=("echo", "broadcast"))
    args = parser.parse_args()
    uvloop.run(main(args.port, args.mode))
