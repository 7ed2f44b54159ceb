"""A Connection on its own: a socket pair, a table and settings, no server, no HTTP."""

from __future__ import annotations

import gevent
import gevent.queue
import gevent.socket

import fws
from fws.context import ConnectionSettings, ConnectionTable
from fws.filters.echo import Echo
from fws.frames import OP_CLOSE, OP_TEXT, encode_close
from fws.storage.memory import MemoryStorage


def masked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def read_frame(sock) -> tuple[int, bytes]:
    head = sock.recv(2)
    return head[0] & 0x0F, sock.recv(head[1] & 0x7F)


def test_a_connection_runs_its_events_with_only_a_table_and_settings():
    seen: list[object] = []
    pipelines = {
        "open": fws.Pipeline(lambda connection, request: connection.send("hello")),
        "data": fws.Pipeline(),
        "message": fws.Pipeline(Echo),
        "disconnect": fws.Pipeline(lambda connection, info: seen.append(info)),
    }
    table = ConnectionTable(
        storage=MemoryStorage(),
        queue=gevent.queue.Queue(),
        pipelines=pipelines,
        dispatch=lambda event, instance, data: pipelines[event].run(instance, data),
    )
    ours, theirs = gevent.socket.socketpair()
    theirs.settimeout(5)
    connection = fws.Connection(fws.Request("/solo"), ConnectionSettings(close_timeout=1), table)
    assert connection.server is None
    connection.open(ours)
    assert table.users == {connection.id: connection}
    assert read_frame(theirs) == (OP_TEXT, b"hello")
    theirs.sendall(masked(OP_TEXT, b"ping me back"))
    assert read_frame(theirs) == (OP_TEXT, b"ping me back")
    theirs.sendall(masked(OP_CLOSE, encode_close(1000, "done")[2:]))
    assert read_frame(theirs)[0] == OP_CLOSE
    with gevent.Timeout(5):
        while not seen:
            gevent.sleep(0.01)
    assert seen == [fws.CloseInfo(1000, "done")]
    assert table.users == {}
    theirs.close()
