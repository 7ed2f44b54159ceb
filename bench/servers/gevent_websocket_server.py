"""A bare gevent-websocket server: what fws would be without its own frame layer.

Usage: python gevent_websocket_server.py PORT MODE; MODE is ``echo`` or
``broadcast`` (every message to every other client, sent from the sender's
greenlet, as a plain gevent-websocket application does it).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

from geventwebsocket import WebSocketError, WebSocketServer  # noqa: E402

CLIENTS: set[Any] = set()


def make_app(mode: str) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        websocket = environ.get("wsgi.websocket")
        if websocket is None:
            start_response("426 Upgrade Required", [("Content-Type", "text/plain")])
            return [b"WebSocket only\n"]
        CLIENTS.add(websocket)
        try:
            while True:
                message = websocket.receive()
                if message is None:
                    break
                binary = not isinstance(message, str)
                if mode == "echo":
                    websocket.send(message, binary=binary)
                    continue
                for client in list(CLIENTS):
                    if client is not websocket:
                        try:
                            client.send(message, binary=binary)
                        except WebSocketError:
                            CLIENTS.discard(client)
        except WebSocketError:
            pass  # the client went away: nothing to answer
        finally:
            CLIENTS.discard(websocket)
        return []

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("mode", choices=("echo", "broadcast"))
    args = parser.parse_args()
    WebSocketServer(
        ("127.0.0.1", args.port), make_app(args.mode), log=None, backlog=1024
    ).serve_forever()
