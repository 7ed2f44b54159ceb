"""The floor of the broadcast scenarios in Python: ``socket.send`` in a plain loop.

The same program as ``floor.c`` (see there): a canned "101" for any request
head, the sender's bytes taken as 70-byte client frames, and for each one
prebuilt 66-byte server frame sent with one blocking ``socket.send`` per
other connection. No WebSocket parsing: what Python's own per-call cost adds
to the kernel's.

Usage: python floor_python.py PORT broadcast
"""

from __future__ import annotations

import selectors
import socket
import sys

ANSWER = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
CLIENT_FRAME = 70


def main(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    clients: list[socket.socket] = []
    pending: dict[socket.socket, bytes] = {}
    frame = bytearray(b"\x82\x40" + bytes(64))
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                client, _ = listener.accept()
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(client, selectors.EVENT_READ)
                pending[client] = b""
                continue
            data = sock.recv(65536)
            if not data:
                selector.unregister(sock)
                sock.close()
                if sock in clients:
                    clients.remove(sock)
                continue
            if sock not in clients:
                if b"\r\n\r\n" in data:  # the request head, whole on loopback
                    sock.sendall(ANSWER)
                    clients.append(sock)
                continue
            buffer = pending[sock] + data
            if buffer[:1] == b"\x88":  # a close frame
                selector.unregister(sock)
                sock.close()
                clients.remove(sock)
                continue
            while len(buffer) >= CLIENT_FRAME:
                mask = int.from_bytes(buffer[2:6] * 16, "big")
                payload = int.from_bytes(buffer[6:CLIENT_FRAME], "big") ^ mask
                frame[2:] = payload.to_bytes(64, "big")
                message = bytes(frame)
                for other in clients:
                    if other is not sock:
                        other.send(message)
                buffer = buffer[CLIENT_FRAME:]
            pending[sock] = buffer


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] != "broadcast":
        sys.exit("usage: python floor_python.py PORT broadcast")
    main(int(sys.argv[1]))
