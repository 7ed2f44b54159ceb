"""A Connection on its own: a socket pair, a table and settings, no server, no HTTP."""

from __future__ import annotations

import struct

import gevent
import gevent.event
import gevent.queue
import gevent.socket
from frame_builder import client_frame
from helpers import read_server_frame

import fws
from fws.context import READ_SIZE, ConnectionSettings, ConnectionTable
from fws.filters.echo import Echo
from fws.frames import OP_BINARY, OP_CLOSE, OP_TEXT, encode_close
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


def test_a_flush_that_raises_leaves_the_other_connections_their_turn():
    from fws.outbound import _flush_connections

    class Due:
        def __init__(self, name: str, flushed: list[str], fail: bool = False) -> None:
            self.name, self.flushed, self.fail = name, flushed, fail

        def _flush(self) -> None:
            if self.fail:
                raise RuntimeError("a bug in one connection's flush")
            self.flushed.append(self.name)

    class Table:
        to_flush: list[Due]
        flusher: object = None
        deferred: tuple[()] = ()
        hub: object = None

    flushed: list[str] = []
    table = Table()
    table.to_flush = [Due("a", flushed), Due("b", flushed, fail=True), Due("c", flushed)]
    try:
        _flush_connections(table)  # type: ignore[arg-type]
    except RuntimeError:
        pass
    else:
        raise AssertionError("the bug was swallowed")
    assert flushed == ["a"]
    assert table.flusher is not None  # scheduled again for "c"
    gevent.sleep(0)  # the hub runs the callback
    assert flushed == ["a", "c"]
    assert table.flusher is None and not table.to_flush


def test_a_broadcast_reaches_every_socket_pair_connection_whole_and_in_order():
    server = fws.Server(host="127.0.0.1", port=0, registry=fws.Registry(), ping_interval=None)
    server.start()
    try:
        pairs = []
        for _ in range(50):
            ours, theirs = gevent.socket.socketpair()
            connection = fws.Connection(
                fws.Request("/"), server.connection_settings, server.table, server
            )
            connection.open(ours)
            theirs.settimeout(5)
            pairs.append(theirs)
        gevent.sleep(0.05)
        for number in range(200):
            server.broadcast(f"{number:04d}")
            if number % 7 == 0:
                gevent.sleep(0)  # some rounds flushed one by one, some in batches
        expected = b"".join(b"\x81\x04" + f"{number:04d}".encode() for number in range(200))
        for theirs in pairs:
            received = b""
            while len(received) < len(expected):
                received += theirs.recv(65536)
            assert received == expected
    finally:
        server.stop(timeout=1)


def _table(message: fws.Pipeline) -> ConnectionTable:
    pipelines = {
        "open": fws.Pipeline(),
        "data": fws.Pipeline(),
        "message": message,
        "disconnect": fws.Pipeline(),
    }
    return ConnectionTable(
        storage=MemoryStorage(),
        queue=gevent.queue.Queue(),
        pipelines=pipelines,
        dispatch=lambda event, instance, data: pipelines[event].run(instance, data),
    )


def _open(table: ConnectionTable) -> tuple[fws.Connection, gevent.socket.socket]:
    ours, theirs = gevent.socket.socketpair()
    theirs.settimeout(5)
    connection = fws.Connection(fws.Request("/"), ConnectionSettings(close_timeout=1), table)
    connection.open(ours)
    return connection, theirs


def test_an_answer_leaves_while_the_filter_that_sent_it_still_blocks():
    # A filter that answers and then makes a slow call: the answer goes on the
    # hub's next turn, not when the chunk is handled; so does a frame another
    # greenlet queues for the connection meanwhile.
    release = gevent.event.Event()
    blocked = gevent.event.Event()
    unblocked = gevent.event.Event()

    def echo_then_block(connection, data):
        connection.send(data)
        blocked.set()
        release.wait(5)
        unblocked.set()

    table = _table(fws.Pipeline(echo_then_block))
    connection, theirs = _open(table)
    theirs.sendall(masked(OP_TEXT, b"first"))
    assert blocked.wait(5)
    assert read_frame(theirs) == (OP_TEXT, b"first")
    connection.send("from elsewhere")  # this greenlet is not the reader
    assert read_frame(theirs) == (OP_TEXT, b"from elsewhere")
    assert not unblocked.is_set()  # both arrived while the filter still blocked
    release.set()
    connection.abort()


def test_a_large_binary_message_is_queued_uncopied_behind_its_own_header():
    from fws.deflate import DeflateSettings, negotiate, parse_offers
    from fws.outbound import UNCOPIED_PAYLOAD

    server = fws.Server(host="127.0.0.1", port=0, registry=fws.Registry(), ping_interval=None)
    server.start()
    try:
        ours, theirs = gevent.socket.socketpair()
        theirs.settimeout(5)
        connection = fws.Connection(
            fws.Request("/"), server.connection_settings, server.table, server
        )
        connection.open(ours)
        large, small = b"\x01" * UNCOPIED_PAYLOAD, b"\x02" * (UNCOPIED_PAYLOAD - 1)
        assert connection.send(large) and connection.send(small)
        header = bytes([0x82, 126]) + struct.pack("!H", len(large))
        assert connection._outbox[:2] == [header, large] and connection._outbox[1] is large
        assert len(connection._outbox) == 3  # the smaller one: one frame, header and all
        assert connection.outbound_bytes == 4 + len(large) + 4 + len(small)
        received = b""
        while len(received) < connection.outbound_bytes + connection.bytes_out:
            received += theirs.recv(65536)
        assert received == header + large + bytes([0x82, 126, 0x3F, 0xFF]) + small
        assert connection.messages_out == 2
        # Compression, when negotiated and due, still applies: one compressed frame.
        negotiated = negotiate(parse_offers(["permessage-deflate"]), DeflateSettings())
        assert negotiated is not None
        connection.deflate = negotiated[1]
        assert connection.send(large)
        assert len(connection._outbox) == 1 and connection._outbox[0][0] == 0xC2
        theirs.close()
    finally:
        server.stop()


def test_send_of_something_that_is_no_message_says_so():
    # Connection.send measures a message before it encodes it (a large one goes
    # uncopied); what has no length must still get encode_message's words.
    connection = fws.Connection(fws.Request("/"), ConnectionSettings(), _table(fws.Pipeline()))
    for value in (42, None, 3.5):
        try:
            connection.send(value)  # type: ignore[arg-type]
        except TypeError as exc:
            assert str(exc) == f"a message is str or bytes, not {type(value).__name__}"
        else:
            raise AssertionError(f"send({value!r}) was accepted")


def test_connection_state_declares_each_slot_once_with_its_type():
    """``__slots__`` and the annotations list the same names: one cannot drift from the other."""
    from fws.connection_state import ConnectionState

    slots = set(ConnectionState.__slots__) - {"__dict__", "__weakref__"}
    assert slots == set(ConnectionState.__annotations__)
    assert len(ConnectionState.__slots__) == len(set(ConnectionState.__slots__))


def _count_yields(monkeypatch) -> list[float]:
    """The reader's timer yields (gevent.sleep(_YIELD)) from now on, as a list to count."""
    from fws.inbound import _YIELD

    yields: list[float] = []
    real_sleep = gevent.sleep

    def counting_sleep(seconds: float = 0, **kwargs) -> None:
        if seconds == _YIELD:
            yields.append(seconds)
        real_sleep(seconds, **kwargs)

    monkeypatch.setattr(gevent, "sleep", counting_sleep)
    return yields


def test_a_reader_that_waits_between_messages_needs_no_timer_to_yield(monkeypatch):
    # Eight 64 KiB messages, each echoed before the next is sent: more than
    # READ_SIZE in all, but the reader waits on its watcher (in the hub) after
    # each, which yields; a timer on top cost a 64 KiB echo a tenth of its rate.
    yields = _count_yields(monkeypatch)
    connection, theirs = _open(_table(fws.Pipeline(Echo)))
    payload = bytes(range(256)) * 256
    frame = client_frame(OP_BINARY, payload)
    for _ in range(8):
        theirs.sendall(frame)
        assert read_server_frame(theirs) == (OP_BINARY, payload)
    assert connection.bytes_in == 8 * len(frame) > READ_SIZE
    assert yields == []
    connection.abort()


def test_a_client_that_never_pauses_still_makes_its_reader_yield(monkeypatch):
    # The other side of the rule above: full reads back to back, no wait
    # between them, and the reader gives the hub a turn at least every
    # READ_SIZE bytes.
    yields = _count_yields(monkeypatch)
    connection, theirs = _open(_table(fws.Pipeline(lambda connection, data: None)))
    burst = client_frame(OP_BINARY, b"x" * 100) * 20_000  # 2.1 MB, no answers
    sender = gevent.spawn(theirs.sendall, burst)
    with gevent.Timeout(10):
        while connection.bytes_in < len(burst):
            gevent.sleep(0.01)
    sender.join(5)
    assert connection.messages_in == 20_000
    assert len(yields) >= 2
    connection.abort()
