"""fws._speedups (the compiled fan-out and flush) against the pure-Python loops.

Each scenario runs twice on fresh connections over socket pairs, once with
``fws.connection``'s pure-Python loops and once with the compiled ones, and
what they leave behind (queues, counters, closes, metrics, bytes on the
wire) must be the same. Skipped where the extension is not built or is
switched off (FWS_NO_SPEEDUPS=1), except under ``CI=true``, where CI's
install must have built it.
"""

from __future__ import annotations

import collections
import os
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.queue
import gevent.socket
import pytest
import websockets.sync.client as ws_sync
from frame_builder import client_frame
from helpers import connect, raw_upgrade, read_server_frame, run_server, url, wait_for

import fws
import fws.frames
from fws import ProtocolError, TextMessage, _accel
from fws.connection import State
from fws.context import ConnectionSettings, ConnectionTable
from fws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    encode_message,
)
from fws.outbound import _pure_fan_out, _pure_flush_each, _pure_send_broadcasts
from fws.storage.memory import MemoryStorage

EVENTS = ("connect", "open", "data", "message", "disconnect", "consumer")
BINARY = encode_message(b"b" * 64)
TEXT = encode_message("t" * 10)


def _compiled() -> Any:
    if _accel.speedups is None:
        if os.environ.get("CI") == "true" and not os.environ.get(_accel.SWITCH):
            pytest.fail(f"CI must build fws._speedups: {_accel.IMPLEMENTATION}", pytrace=False)
        pytest.skip(_accel.IMPLEMENTATION)
    return _accel.speedups


@pytest.fixture(params=["pure", "C"])
def loops(request: pytest.FixtureRequest) -> tuple[Callable[..., int], Callable[..., None]]:
    """(fan_out, flush_each) of one implementation."""
    if request.param == "pure":
        return _pure_fan_out, _pure_flush_each
    compiled = _compiled()
    return compiled.fan_out, compiled.flush_each


@dataclass
class World:
    table: ConnectionTable
    connections: list[fws.Connection]
    peers: list[socket.socket]

    def snapshot(self) -> dict[str, Any]:
        """Everything a fan-out or a flush may change, by connection index."""
        stats = self.table.stats
        for connection in self.connections:
            connection.flush_sent_counts()
        return {
            "connections": [
                {
                    "state": c.state,
                    "close_info": c.close_info,
                    "outbox": b"".join(c._outbox),
                    "outbox_bytes": c._outbox_bytes,
                    "held": None if c._opening is None else b"".join(c._opening[1]),
                    "messages_out": c.messages_out,
                    "bytes_out": c.bytes_out,
                    "flush_due": c._flush_due,
                    "writer": c._writer is not None,
                    "run_first": c._run_first,
                }
                for c in self.connections
            ],
            "to_flush": [self.connections.index(c) for c in self.table.to_flush],
            "flusher": self.table.flusher is not None,
            "messages_sent": list(stats.messages_sent),
            "bytes_sent": list(stats.bytes_sent),
            "disconnects": dict(stats.disconnects),
        }

    def received(self) -> list[bytes]:
        """What each peer can read now."""
        out = []
        for peer in self.peers:
            data = b""
            try:
                while chunk := peer.recv(1 << 20, socket.MSG_DONTWAIT):
                    data += chunk
            except BlockingIOError:
                pass
            out.append(data)
        return out


@pytest.fixture
def make_world() -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(
        count: int = 3,
        *,
        metrics: bool = True,
        limit: int | None = None,
        sndbuf: int | None = None,
    ) -> World:
        pipelines = {event: fws.Pipeline() for event in EVENTS}
        table = ConnectionTable(
            storage=MemoryStorage(),
            queue=gevent.queue.Queue(),
            pipelines=pipelines,
            dispatch=lambda event, instance, data: pipelines[event].run(instance, data),
        )
        table.stats.count_messages = metrics
        settings = ConnectionSettings(max_outbound_bytes=limit, ping_interval=None)
        connections, peers = [], []
        for _ in range(count):
            ours, theirs = gevent.socket.socketpair()
            if sndbuf is not None:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
            connection = fws.Connection(fws.Request("/"), settings, table)
            connection.open(ours)
            connections.append(connection)
            peers.append(theirs._sock)  # type: ignore[attr-defined]  # the plain socket
        world = World(table, connections, peers)
        made.append(world)
        return world

    yield make
    for world in made:
        for connection in world.connections:
            connection.abort()
        for peer in world.peers:
            peer.close()
    gevent.sleep(0.01)  # the flushers and readers end


def both(run: Callable[[Callable[..., int], Callable[..., None]], Any]) -> None:
    """``run(fan_out, flush_each)`` gives the same result with both implementations."""
    compiled = _compiled()
    pure = run(_pure_fan_out, _pure_flush_each)
    assert run(compiled.fan_out, compiled.flush_each) == pure


def deliver(frame: bytes) -> Callable[[fws.Connection], bool]:
    """What Server.broadcast hands the fan-out for a recipient without compression."""

    def one(connection: fws.Connection) -> bool:
        assert connection.deflate is None
        return connection.send_message_frame(frame, frame[0])

    return one


@pytest.mark.parametrize("metrics", [True, False])
def test_a_fan_out_queues_the_same_and_lists_each_connection_once(make_world, metrics):
    def run(fan_out, flush_each):
        world = make_world(4, metrics=metrics)
        skipped = world.connections[1].id[:9] + world.connections[1].id[9:]  # equal, not same
        assert skipped is not world.connections[1].id
        recipients = [*world.connections, None]
        frames = (BINARY, BINARY, TEXT, BINARY)
        counts = [fan_out(recipients, f, f[0], skipped, deliver(f)) for f in frames]
        return counts, world.snapshot()

    both(run)


def test_a_fan_out_reaches_only_open_connections(make_world, loops):
    fan_out, _ = loops
    world = make_world(3)
    world.connections[0].state = State.CLOSING
    assert fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY)) == 2
    assert world.connections[0]._outbox == []
    world.connections[0].state = State.OPEN  # for the clean-up


def test_the_slow_client_limit_closes_the_same_way(make_world):
    frame = encode_message(b"x" * 1000)

    def run(fan_out, flush_each):
        world = make_world(3, limit=2500)
        # The first connection already has a large frame waiting.
        world.connections[0]._outbox.append(b"\0" * 2000)
        world.connections[0]._outbox_bytes = 2000
        counts = [
            fan_out(world.connections, frame, frame[0], None, deliver(frame)) for _ in range(3)
        ]
        return counts, world.snapshot()

    both(run)


def test_frames_queued_while_opening_are_held_the_same_way(make_world):
    def run(fan_out, flush_each):
        world = make_world(2)
        other = gevent.spawn(lambda: None)
        world.connections[0]._opening = (other, [])  # another greenlet runs open()
        world.connections[1]._opening = (gevent.getcurrent(), [])  # this one does
        count = fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
        snapshot = world.snapshot()
        for connection in world.connections:
            connection._opening = None
        return count, snapshot

    both(run)


def test_compressed_recipients_and_subclasses_go_to_deliver(make_world, loops):
    fan_out, _ = loops

    class Special(fws.Connection):
        pass

    world = make_world(3, metrics=False)  # with metrics, a first message starts a run
    world.connections[1].deflate = object()  # type: ignore[assignment]  # only compared with None
    world.connections[2].__class__ = Special
    delivered: list[int] = []

    def general(connection: fws.Connection) -> bool:
        delivered.append(world.connections.index(connection))
        if connection.deflate is not None:
            return False
        return connection.send_message_frame(BINARY, BINARY[0])

    assert fan_out(world.connections, BINARY, BINARY[0], None, general) == 2
    # Only the compressed recipient must go to deliver; the compiled loop sends
    # a subclass there too (it may have overridden send_message_frame).
    assert 1 in delivered and 0 not in delivered
    assert world.connections[2]._outbox == [BINARY]
    world.connections[1].deflate = None


def test_an_error_in_deliver_propagates(make_world, loops):
    fan_out, _ = loops
    world = make_world(2)
    world.connections[0].deflate = object()  # type: ignore[assignment]

    def broken(connection: fws.Connection) -> bool:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        fan_out(world.connections, BINARY, BINARY[0], None, broken)
    world.connections[0].deflate = None


def test_a_flush_sends_every_queue_the_same(make_world):
    def run(fan_out, flush_each):
        world = make_world(3)
        for frame in (BINARY, TEXT, BINARY):
            fan_out(world.connections, frame, frame[0], None, deliver(frame))
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        return due, world.snapshot(), world.received()

    both(run)


def test_a_partial_send_leaves_the_rest_to_a_writer_in_order(make_world):
    frame = encode_message(b"p" * 3000)

    def run(fan_out, flush_each):
        world = make_world(2, sndbuf=4096)
        for _ in range(40):
            fan_out(world.connections, frame, frame[0], None, deliver(frame))
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        after = world.snapshot()
        assert all(c["writer"] for c in after["connections"]), "nothing was left to a writer"
        assert all(0 < c["bytes_out"] < 40 * len(frame) for c in after["connections"])
        for connection in world.connections:  # the rest, as one bytes object
            assert len(connection._outbox) == 1
            assert connection._outbox_bytes == len(connection._outbox[0])
        received = [b""] * len(world.peers)
        with gevent.Timeout(10):
            while any(len(data) < 40 * len(frame) for data in received):
                received = [old + new for old, new in zip(received, world.received(), strict=True)]
                gevent.sleep(0.001)  # the writers go on
        assert received == [frame * 40] * len(world.peers)
        return after["connections"][0]["bytes_out"] > 0, world.snapshot()

    both(run)


@pytest.mark.parametrize("closed", ["by the peer", "here"])
def test_a_failed_send_is_left_to_the_writer_which_ends_the_connection(make_world, loops, closed):
    fan_out, flush_each = loops
    world = make_world(2)
    fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
    broken, fine = world.connections
    if closed == "here":  # EBADF (libev aborts on a closed descriptor it still watches)
        broken._watcher.stop()
        broken._raw_socket.close()  # type: ignore[union-attr]
    else:  # EPIPE
        world.peers[0].close()
    due, world.table.to_flush = world.table.to_flush, []
    flush_each(due)
    assert broken._writer is not None and broken._outbox == [BINARY]
    assert broken.bytes_out == 0 and broken._outbox_bytes == len(BINARY)
    assert fine._writer is None and fine.bytes_out == len(BINARY)
    gevent.sleep(0.01)  # the writer fails and aborts
    assert broken._writer is None
    if closed == "by the peer":
        world.peers[0] = socket.socket()  # for the clean-up


def test_tls_and_a_close_after_a_protocol_error_are_left_to_the_writer(make_world, loops):
    fan_out, flush_each = loops
    world = make_world(3)
    fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
    tls, failed, closing = world.connections
    raw = tls._raw_socket
    tls._raw_socket = None  # as over TLS
    failed._close_queued = failed._failed = True  # the writer shuts our side down after it
    closing._close_queued = True
    due, world.table.to_flush = world.table.to_flush, []
    flush_each(due)
    assert tls._writer is not None and failed._writer is not None
    assert tls._outbox == failed._outbox == [BINARY]  # untouched: the writers send them
    # Any other queued close leaves in the flusher's send, as any frame: no writer.
    assert closing._writer is None and closing._outbox == []
    gevent.sleep(0.01)
    assert world.received() == [BINARY, BINARY, BINARY]
    tls._raw_socket = raw
    failed._close_queued = failed._failed = closing._close_queued = False


def test_a_flush_that_raises_leaves_the_rest_in_due(loops):
    _, flush_each = loops
    flushed: list[str] = []

    class Due:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def _flush(self) -> None:
            if self.fail:
                raise RuntimeError("a bug in one connection's flush")
            flushed.append(self.name)

    due = [Due("a"), Due("b", fail=True), Due("c"), Due("d")]
    with pytest.raises(RuntimeError):
        flush_each(due)
    assert flushed == ["a"]
    assert [d.name for d in due] == ["c", "d"]
    flush_each(due)
    assert flushed == ["a", "c", "d"] and due == []


def test_a_flush_reads_the_queue_after_the_socket_s_fileno(make_world, loops):
    # fileno() is a method call: Python code may run in it and queue more (as
    # _end_opening extends the queue directly). The compiled flush once read
    # the queue's length before calling it, sent the frames it had counted,
    # and left the new one behind with no writer and _outbox_bytes too low.
    fan_out, flush_each = loops
    world = make_world(1, metrics=False)
    connection = world.connections[0]
    later = encode_message(b"queued by fileno()")
    ran: list[bool] = []

    class Sneaky(socket.socket):
        def fileno(self) -> int:
            if not ran:
                ran.append(True)
                connection._outbox.append(later)
                connection._outbox_bytes += len(later)
            return super().fileno()

    raw = connection._raw_socket
    assert raw is not None
    sneaky = Sneaky(fileno=os.dup(raw.fileno()))
    connection._raw_socket = sneaky
    try:
        fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        gevent.sleep(0.01)  # a writer, if one was started
        expected = BINARY + (later if ran else b"")
        assert world.received() == [expected]
        assert connection._outbox == [] and connection._outbox_bytes == 0
        assert connection.bytes_out == len(expected)
    finally:
        connection._raw_socket = raw
        sneaky.close()


class _FailingList(list):
    """A connection table's ``to_flush`` whose append raises (a bug in the table)."""

    def append(self, item: Any) -> None:
        raise RuntimeError("to_flush refused it")


@pytest.mark.parametrize("to_flush", ["deque", "append raises"])
def test_listing_for_the_flusher_calls_append_and_counts_the_message_last(make_world, to_flush):
    # _queue calls to_flush.append: the compiled loop used PyList_Append, which
    # raises SystemError for anything but a list; and it counted the message
    # before listing the connection, where send_message_frame counts it after.
    def run(fan_out, flush_each):
        world = make_world(2, metrics=False)
        world.table.to_flush = collections.deque() if to_flush == "deque" else _FailingList()
        try:
            fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
            outcome = "returned"
        except Exception as exc:
            outcome = repr(exc)
        listed = list(world.table.to_flush)
        world.table.to_flush = []
        return outcome, [world.connections.index(c) for c in listed], world.snapshot()

    both(run)


@pytest.mark.parametrize("counter", ["_outbox_bytes", "messages_out", "bytes_out"])
def test_counters_past_the_c_integer_range_count_as_python_ints(make_world, counter):
    # The compiled loops keep the counters as Py_ssize_t: 2**63 - 1 plus a frame
    # was signed overflow (undefined; it wrapped to a negative count).
    def run(fan_out, flush_each):
        world = make_world(1, metrics=False)
        connection = world.connections[0]
        setattr(connection, counter, 2**63 - 1)
        counters = []
        fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
        counters.append((connection._outbox_bytes, connection.messages_out, connection.bytes_out))
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        counters.append((connection._outbox_bytes, connection.messages_out, connection.bytes_out))
        connection._outbox_bytes = 0  # for the clean-up
        return counters, world.received()

    both(run)


# -- trying to break them: long queues, full sockets, callbacks that change things


def test_more_frames_than_iov_max_go_out_whole_and_in_order(make_world):
    frames = [encode_message(b"%05d" % i) for i in range(3000)]  # one sendmsg takes 1024

    def run(fan_out, flush_each):
        world = make_world(2, sndbuf=4096)
        for frame in frames:
            fan_out(world.connections, frame, frame[0], None, deliver(frame))
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        flushed = [(c._writer is not None, len(c._outbox)) for c in world.connections]
        received = [b""] * len(world.peers)
        with gevent.Timeout(10):
            while any(len(data) < len(b"".join(frames)) for data in received):
                received = [old + new for old, new in zip(received, world.received(), strict=True)]
                gevent.sleep(0.001)
        assert received == [b"".join(frames)] * len(world.peers)
        return flushed, world.snapshot()

    both(run)


def test_a_callback_that_closes_recipients_mid_fan_out(make_world):
    # deliver (Python) runs in the middle of the compiled loop: what it does to
    # recipients later in the list must be seen, as the pure loop sees it.
    def run(fan_out, flush_each):
        world = make_world(5, metrics=False)
        world.connections[1].deflate = object()  # type: ignore[assignment]
        recipients = list(world.connections)

        def closing(connection: fws.Connection) -> bool:
            if connection.deflate is None:
                return connection.send_message_frame(BINARY, BINARY[0])
            world.connections[2]._start_close(1001, "going")
            world.connections[3].abort()
            del recipients[4:]
            return False

        count = fan_out(recipients, BINARY, BINARY[0], None, closing)
        world.connections[1].deflate = None
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        return count, world.snapshot(), world.received()

    both(run)


def test_a_burst_beyond_iov_max_reaches_full_plain_and_compressed_clients_in_order():
    count, size = 3000, 200  # 600 kB: beyond the socket buffers, within the queue limit

    class Burst(fws.WebSocketMessageFilter):
        registry = fws.Registry()

        @classmethod
        def filter(cls, web_socket_instance, data):
            server = web_socket_instance.server
            for i in range(count):  # no yield: one flush of 3,000 frames per client
                server.broadcast(f"{i:0{size}d}", exclude=web_socket_instance.id)

    with run_server(message=Burst) as server:
        full = raw_upgrade(server.address[1], receive_buffer=4096)  # reads only afterwards
        plain = connect(server, timeout=10)
        with ws_sync.connect(url(server)) as compressed:  # deflate: the Python deliver
            assert compressed.protocol.extensions
            sender = connect(server, timeout=10)
            wait_for(lambda: len(server.users) == 4)
            sender.send("go")
            for i in range(count):
                assert plain.recv() == f"{i:0{size}d}"
                assert compressed.recv(timeout=10) == f"{i:0{size}d}"
            for i in range(count):
                assert read_server_frame(full) == (OP_TEXT, f"{i:0{size}d}".encode())
        for client in (plain, sender):
            client.close()
        full.close()


def test_a_raw_socket_that_is_not_a_socket_is_sent_on_with_its_send(make_world):
    # _flush calls raw.send(); the compiled flush took any object's fileno()
    # and wrote to that descriptor itself, past the object's own send().
    class Recording:
        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.sent = sock, []

        def fileno(self) -> int:
            return self.sock.fileno()

        def send(self, data: bytes) -> int:
            self.sent.append(bytes(data))
            return self.sock.send(data)

    def run(fan_out, flush_each):
        world = make_world(1, metrics=False)
        connection = world.connections[0]
        raw = connection._raw_socket
        recording = connection._raw_socket = Recording(raw)  # type: ignore[assignment]
        fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
        fan_out(world.connections, TEXT, TEXT[0], None, deliver(TEXT))
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
        connection._raw_socket = raw
        return recording.sent, world.received(), world.snapshot()

    both(run)


@pytest.mark.parametrize("method", ["send_message_frame", "_queue", "_flush"])
def test_a_method_patched_on_the_class_is_called_as_by_the_pure_loops(
    make_world, monkeypatch, method
):
    # The compiled loops do these methods' work themselves for the common case:
    # a patch on the class (a test's, a tracer's) went unseen, where the pure
    # loops call it for every connection.
    original = getattr(fws.Connection, method)

    def run(fan_out, flush_each):
        calls: list[int] = []

        def patched(self: fws.Connection, *args: Any) -> Any:
            calls.append(world.connections.index(self))
            return original(self, *args)

        world = make_world(2, metrics=False)
        monkeypatch.setattr(fws.Connection, method, patched)
        try:
            fan_out(world.connections, BINARY, BINARY[0], None, deliver(BINARY))
            due, world.table.to_flush = world.table.to_flush, []
            flush_each(due)
        finally:
            monkeypatch.undo()
        return calls, world.received(), world.snapshot()

    both(run)


def test_after_a_patch_is_undone_the_compiled_loops_do_the_work_again(make_world, monkeypatch):
    compiled = _compiled()
    world = make_world(1, metrics=False)
    connection = world.connections[0]
    monkeypatch.setattr(fws.Connection, "bytes_out", fws.Connection.bytes_out)  # same object
    monkeypatch.setattr(fws.Connection, "_queue", fws.Connection._queue)
    monkeypatch.undo()
    # Setting class attributes gives the class a new version tag; with every
    # attribute back as bind() found it, the common case is done in C again
    # (deliver is not called), not handed to Python for good.
    delivered: list[fws.Connection] = []

    def recording(connection: fws.Connection) -> bool:
        delivered.append(connection)
        return connection.send_message_frame(BINARY, BINARY[0])

    assert compiled.fan_out(world.connections, BINARY, BINARY[0], None, recording) == 1
    assert delivered == [] and connection._outbox == [BINARY]


# --- The parser's common frame: fws.frames with and without parse_messages ---


def _random_frame(rng: random.Random) -> bytes:
    """One client frame, mostly the kinds parse_messages takes, often one it must leave."""
    kind = rng.random()
    size = rng.choice([0, 1, 3, 4, 7, 8, 9, 31, 32, 125, 126, 127, 200, 1000, 65535, 65536])
    if kind < 0.3:
        text = "".join(rng.choice("aé€😀") for _ in range(size // 3))
        payload = text.encode()
        if rng.random() < 0.2 and payload:  # not UTF-8: cut, a lone byte, a surrogate
            payload = rng.choice([payload[:-1], payload + b"\xff", b"\xed\xa0\x80" + payload])
        return client_frame(OP_TEXT, payload)
    if kind < 0.6:
        return client_frame(OP_BINARY, rng.randbytes(size))
    if kind < 0.65:  # a short length in the 16-bit form: allowed
        return _long_form(rng, rng.randbytes(rng.randrange(126)))
    small = rng.randbytes(rng.randrange(20))
    return rng.choice(
        [
            client_frame(OP_PING, small),
            client_frame(OP_PONG, small),
            client_frame(OP_CLOSE, b"\x03\xe8" + small.hex().encode()),
            client_frame(OP_TEXT, b"frag", fin=False),
            client_frame(OP_CONTINUATION, b"ment"),
            client_frame(OP_BINARY, small, masked=False),
            client_frame(OP_TEXT, small, rsv=rng.choice([1, 2, 4])),
            client_frame(rng.choice([3, 7, 0xB, 0xF]), small),
            client_frame(OP_BINARY, small, length=1 << 63 | 5)[:10],
        ]
    )


def _long_form(rng: random.Random, payload: bytes) -> bytes:
    opcode = rng.choice([OP_TEXT, OP_BINARY])
    if opcode == OP_TEXT:
        payload = payload.hex().encode()[: len(payload)]
    mask = rng.randbytes(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0xFE)) + struct.pack("!H", len(payload)) + mask + body


def _run_parser(stream: bytes, cuts: list[int], limit: int | None) -> list[Any]:
    """What a parser makes of ``stream`` read in pieces of one reused buffer."""
    counts, sizes = [0] * 16, [0] * 16
    parser = FrameParser(max_message_size=limit, frame_counts=counts, wire_bytes=sizes)
    buffer = bytearray(len(stream))
    outcome: list[Any] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buffer[: end - start] = stream[start:end]
        failure = None
        try:
            events = parser.feed(memoryview(buffer)[: end - start])
        except ProtocolError as exc:
            events, failure = exc.events, (exc.code, exc.reason)
        outcome.append(([(type(event), event) for event in events], failure))
        buffer[:] = b"\xee" * len(buffer)
        if failure is not None:
            break
    pieces = b"".join(parser._pieces or [])
    kept = (bytes(parser._buffer or b""), pieces, parser.large_missing)
    outcome.append((parser.frames, counts, sizes, kept, parser._opcode))
    return outcome


@pytest.mark.parametrize("seed", range(200))
def test_the_compiled_frame_loop_parses_as_the_pure_parser(seed, monkeypatch):
    """Random streams, cut at random, with and without a size limit: the same events,
    errors (code, reason, the events before them), counters and leftovers."""
    compiled = _compiled()
    rng = random.Random(seed)
    stream = b"".join(_random_frame(rng) for _ in range(rng.randrange(1, 12)))
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(4))))
    limit = rng.choice([None, 2**20, 125, 126, 200, 0, 2**70, -(2**70)])
    monkeypatch.setattr(fws.frames, "_parse_messages", compiled.parse_messages)
    monkeypatch.setattr(fws.frames, "_unmask_pieces", compiled.unmask_pieces)
    with_c = _run_parser(stream, cuts, limit)
    monkeypatch.setattr(fws.frames, "_parse_messages", None)
    monkeypatch.setattr(fws.frames, "_unmask_pieces", fws.frames._pure_unmask_pieces)
    assert _run_parser(stream, cuts, limit) == with_c


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(OP_TEXT, b"\xff"),
        client_frame(OP_TEXT, "é".encode()[:1]),
        client_frame(OP_TEXT, b"\xed\xa0\x80"),  # a surrogate
        client_frame(OP_BINARY, b"x", masked=False),
        client_frame(OP_TEXT, b"x", rsv=4),
        client_frame(OP_BINARY, b"x", rsv=1),  # RSV1 with no deflate negotiated
        client_frame(3, b"x"),
        client_frame(OP_CONTINUATION, b"x"),
        client_frame(OP_BINARY, b"x" * 300),  # over the limit, 16-bit length
        client_frame(OP_BINARY, b"x" * 70_000),  # 64-bit length
        client_frame(OP_PING, b"x"),
    ],
)
def test_the_compiled_loop_leaves_other_frames_to_python_after_the_good_ones(frame, monkeypatch):
    compiled = _compiled()
    good = client_frame(OP_TEXT, "é€".encode()) + client_frame(OP_BINARY, b"\x00" * 130)
    counts, sizes = [0] * 16, [0] * 16
    events: list[Any] = []
    assert compiled.parse_messages(good + frame, 0, events, 250, counts, sizes) == len(good)
    assert events == ["é€", b"\x00" * 130] and type(events[0]) is TextMessage
    assert counts[OP_TEXT] == counts[OP_BINARY] == 1 and sum(sizes) == len(good)
    outcomes = []
    for parse_messages in (compiled.parse_messages, None):
        monkeypatch.setattr(fws.frames, "_parse_messages", parse_messages)
        try:
            outcomes.append((None, None, FrameParser(max_message_size=250).feed(good + frame)))
        except ProtocolError as exc:
            outcomes.append((exc.code, exc.reason, exc.events))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2][:2] == events


def test_the_compiled_loop_takes_whole_frames_in_each_length_form():
    compiled = _compiled()
    sizes = (0, 125, 126, 65535, 65536, 200_001)  # 7-, 16- and 64-bit lengths
    payloads = [bytes([size % 251]) * size for size in sizes]
    data = b"".join(client_frame(OP_BINARY, payload) for payload in payloads)
    events: list[Any] = []
    assert compiled.parse_messages(data, 0, events, None, None, None) == len(data)
    assert events == payloads
    # A 64-bit length with its most significant bit set stops it: Python refuses that.
    huge = client_frame(OP_BINARY, b"", length=1 << 63 | 5)[:14] + b"x" * 5
    assert compiled.parse_messages(data + huge, 0, [], None, None, None) == len(data)


def test_the_compiled_loop_takes_a_buffer_from_any_position_and_stops_at_a_partial_frame():
    compiled = _compiled()
    frame = client_frame(OP_BINARY, b"abc" * 50)
    data = bytearray(b"junk" + frame * 2 + frame[:-1])
    events: list[Any] = []
    assert compiled.parse_messages(data, 4, events, None, None, None) == 4 + 2 * len(frame)
    assert events == [b"abc" * 50] * 2
    data.extend(b"x")  # the buffer was released: the bytearray can grow
    with pytest.raises(ValueError):
        compiled.parse_messages(data, len(data) + 1, events, None, None, None)


@pytest.mark.parametrize("seed", range(20))
def test_the_compiled_unmask_of_pieces_matches_join_then_unmask(seed):
    compiled = _compiled()
    rng = random.Random(seed)
    pieces: list[bytes | bytearray] = [
        rng.choice([bytes, bytearray])(rng.randbytes(rng.choice([0, 1, 3, 7, 8, 9, 4096, 70_001])))
        for _ in range(rng.randrange(1, 6))
    ]
    total = sum(len(piece) for piece in pieces)
    mask = rng.randbytes(4)
    for start in {0, min(total, rng.randrange(15)), total // 2, total}:
        expected = fws.frames._pure_unmask_pieces(pieces, start, mask)
        assert compiled.unmask_pieces(pieces, start, mask) == expected


def test_the_compiled_unmask_of_pieces_refuses_what_it_cannot_read():
    compiled = _compiled()
    with pytest.raises(ValueError, match="4 bytes"):
        compiled.unmask_pieces([b"abcdef"], 0, b"abc")
    with pytest.raises(ValueError, match="start"):
        compiled.unmask_pieces([b"abcdef"], 7, b"abcd")
    with pytest.raises(TypeError, match="bytes or a bytearray"):
        compiled.unmask_pieces([b"ab", memoryview(b"cd")], 0, b"abcd")
    with pytest.raises(TypeError, match="list"):
        compiled.unmask_pieces((b"ab",), 0, b"abcd")


class _StubDeflate:
    """Enough of PerMessageDeflate for encode_message: compresses from 10 bytes."""

    compress_min_size = 10

    def compresses(self, size: int) -> bool:
        return size >= self.compress_min_size

    def compress(self, payload: bytes) -> bytes:
        return payload[::-1]


class _LoudText(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"LOUD"


@pytest.mark.parametrize(
    "data",
    [
        *(b"b" * size for size in (0, 1, 125, 126, 127, 65535, 65536, 70_000)),
        *("t" * size for size in (0, 125, 126, 65535, 65536)),
        "é" * 63,  # 126 bytes of UTF-8 from 63 characters
        "😀€é",
        TextMessage("héllo"),
        TextMessage("x" * 200),
        _LoudText("quiet"),
        bytearray(b"array"),
        memoryview(b"view" * 40),
        "\ud800",  # a lone surrogate cannot be encoded
        42,
        None,
    ],
    ids=repr,
)
@pytest.mark.parametrize("deflate", [None, _StubDeflate(), "keyword"])
def test_the_compiled_encoder_makes_the_bytes_and_errors_of_the_pure_one(data, deflate):
    compiled = _compiled().message_encoder(fws.frames._pure_encode_message)
    outcomes = []
    for encode in (compiled, fws.frames._pure_encode_message):
        try:
            if deflate == "keyword":
                outcomes.append(encode(data, deflate=None))
            elif deflate is None:
                outcomes.append(encode(data))
            else:
                outcomes.append(encode(data, deflate))
        except (TypeError, UnicodeEncodeError) as exc:
            outcomes.append((type(exc), str(exc)))
    assert outcomes[0] == outcomes[1]
    if fws.frames.encode_message is not fws.frames._pure_encode_message:
        assert fws.frames.encode_message.__self__ is fws.frames._pure_encode_message


# -- deferred broadcasts: send_broadcasts, the flusher's send of a turn's broadcasts


def both_deferred(run: Callable[[Callable[..., None], Callable[..., None]], Any]) -> None:
    """``run(send_broadcasts, flush_each)`` gives the same result with both implementations."""
    compiled = _compiled()
    pure = run(_pure_send_broadcasts, _pure_flush_each)
    assert run(compiled.send_broadcasts, compiled.flush_each) == pure


def flush_deferred(
    send_broadcasts: Callable[..., None],
    flush_each: Callable[..., None],
    world: World,
    deferred: list[Any],
) -> None:
    """What the flusher does with a turn's deferred broadcasts, then with its queues."""
    world.table.flusher = "running"  # as while the flusher runs: no other is scheduled
    try:
        send_broadcasts(list(world.connections), deferred)
        due, world.table.to_flush = world.table.to_flush, []
        flush_each(due)
    finally:
        world.table.flusher = None


def deferred_of(*frames: bytes, exclude: str | None = None) -> list[Any]:
    return [(frame, frame[0], exclude, deliver(frame)) for frame in frames]


@pytest.mark.parametrize("metrics", [True, False])
@pytest.mark.parametrize("frames", [(BINARY, BINARY, BINARY), (BINARY, TEXT, BINARY)])
def test_deferred_broadcasts_reach_the_sockets_as_if_queued_then_flushed(
    make_world, metrics, frames
):
    def run(send_broadcasts, flush_each):
        world = make_world(4, metrics=metrics)
        # One connection already has a frame queued: it goes first.
        world.connections[2].send_message_frame(TEXT, TEXT[0])
        skipped = world.connections[1].id[:9] + world.connections[1].id[9:]  # equal, not same
        flush_deferred(send_broadcasts, flush_each, world, deferred_of(*frames, exclude=skipped))
        return world.snapshot(), world.received()

    both_deferred(run)
    # And what arrives is what was meant, not only the same both ways.
    world = make_world(3, metrics=metrics)
    world.connections[2].send_message_frame(TEXT, TEXT[0])
    flush_deferred(
        _compiled().send_broadcasts,
        _compiled().flush_each,
        world,
        deferred_of(*frames, exclude=world.connections[1].id),
    )
    assert world.received() == [b"".join(frames), b"", TEXT + b"".join(frames)]


class _Id(str):
    """A connection id as a str subclass: only Python's == may compare it."""


@pytest.mark.parametrize("kind", ["str subclass", "not a str"])
def test_a_deferred_broadcast_whose_exclude_is_not_an_exact_str(make_world, kind):
    # The compiled send once took "cannot tell" for "excluded" and sent the
    # broadcast to nobody; Python's == decides, as in fan_out.
    def run(send_broadcasts, flush_each):
        world = make_world(3, metrics=False)
        exclude: Any = _Id(world.connections[1].id) if kind == "str subclass" else 42
        deferred = [(BINARY, BINARY[0], exclude, deliver_general(BINARY, exclude))]
        flush_deferred(send_broadcasts, flush_each, world, deferred)
        return world.snapshot(), world.received()

    both_deferred(run)
    world = make_world(3, metrics=False)
    exclude: Any = _Id(world.connections[1].id) if kind == "str subclass" else 42
    deferred = [(BINARY, BINARY[0], exclude, deliver_general(BINARY, exclude))]
    flush_deferred(_compiled().send_broadcasts, _compiled().flush_each, world, deferred)
    skipped = b"" if kind == "str subclass" else BINARY
    assert world.received() == [BINARY, skipped, BINARY]


def deliver_general(frame: bytes, exclude: Any) -> Callable[[fws.Connection], bool]:
    """Server.broadcast's deliver: it skips ``exclude`` itself."""

    def one(connection: fws.Connection) -> bool:
        if connection.id == exclude:
            return False
        return connection.send_message_frame(frame, frame[0])

    return one


def test_deferred_broadcasts_past_the_slow_client_limit_close_it_the_same_way(make_world):
    frame = encode_message(b"x" * 1000)

    def run(send_broadcasts, flush_each):
        world = make_world(3, limit=2500)
        world.connections[0]._outbox.append(b"\0" * 2000)  # already waiting
        world.connections[0]._outbox_bytes = 2000
        flush_deferred(send_broadcasts, flush_each, world, deferred_of(frame, frame, frame))
        return world.snapshot(), world.received()

    both_deferred(run)


def test_deferred_broadcasts_a_socket_cannot_take_go_to_a_writer_in_order(make_world):
    frames = [encode_message(b"%04d" % i + b"p" * 600) for i in range(60)]

    def run(send_broadcasts, flush_each):
        world = make_world(2, sndbuf=4096)
        flush_deferred(send_broadcasts, flush_each, world, deferred_of(*frames))
        after = world.snapshot()
        assert all(c["writer"] for c in after["connections"]), "nothing was left to a writer"
        for connection in world.connections:  # the rest, as one bytes object
            assert len(connection._outbox) == 1
            assert connection._outbox_bytes == len(connection._outbox[0])
        received = [b""] * len(world.peers)
        with gevent.Timeout(10):
            while any(len(data) < len(b"".join(frames)) for data in received):
                received = [old + new for old, new in zip(received, world.received(), strict=True)]
                gevent.sleep(0.001)  # the writers go on
        assert received == [b"".join(frames)] * len(world.peers)
        return after, world.snapshot()

    both_deferred(run)


def test_a_deferred_broadcast_too_large_to_gather_goes_whole_and_in_order(make_world):
    large = encode_message(b"L" * 70000)  # past the compiled send's gathering buffer
    middle = encode_message(b"m" * 3000)  # gathered no more, sent from where it is

    def run(send_broadcasts, flush_each):
        world = make_world(2)
        flush_deferred(
            send_broadcasts, flush_each, world, deferred_of(BINARY, large, middle, TEXT)
        )
        received = [b""] * len(world.peers)
        expected = BINARY + large + middle + TEXT
        with gevent.Timeout(10):
            while any(len(data) < len(expected) for data in received):
                received = [old + new for old, new in zip(received, world.received(), strict=True)]
                gevent.sleep(0.001)
        assert received == [expected] * len(world.peers)
        return world.snapshot()

    both_deferred(run)


@pytest.mark.parametrize(
    "case", ["compressed", "closing", "opening", "tls", "writer running", "close queued"]
)
def test_deferred_broadcasts_to_a_connection_off_the_common_case(make_world, case):
    # The compiled send takes only the common case; anything else is queued
    # as fan_out queues it, and sent by the flusher or a writer, in order.
    def run(send_broadcasts, flush_each):
        world = make_world(3, metrics=False)
        special = world.connections[1]
        restore: Callable[[], None] = lambda: None  # noqa: E731
        if case == "compressed":
            special.deflate = object()  # type: ignore[assignment]  # only compared with None

            def restore() -> None:
                special.deflate = None

        elif case == "closing":
            special.state = State.CLOSING

            def restore() -> None:
                special.state = State.OPEN

        elif case == "opening":
            special._opening = (gevent.spawn(lambda: None), [])

            def restore() -> None:
                special._end_opening()
                world.table.opening += 1  # it was never counted as opening

        elif case == "tls":
            raw = special._raw_socket
            special._raw_socket = None

            def restore() -> None:
                special._raw_socket = raw

        elif case == "writer running":
            special._writer = gevent.spawn(lambda: None)

            def restore() -> None:
                special._writer = None

        else:
            special._close_queued = True

            def restore() -> None:
                special._close_queued = False

        delivered: list[int] = []

        def general(frame: bytes) -> Callable[[fws.Connection], bool]:
            def one(connection: fws.Connection) -> bool:
                delivered.append(world.connections.index(connection))
                if connection.deflate is not None:
                    return connection.send_frame(frame)  # as if compressed for it
                return connection.send_message_frame(frame, frame[0])

            return one

        deferred = [(f, f[0], None, general(f)) for f in (BINARY, TEXT)]
        flush_deferred(send_broadcasts, flush_each, world, deferred)
        snapshot = world.snapshot()
        restore()
        gevent.sleep(0.01)  # writers, if any, send
        # Only the compressed one must go to deliver; the compiled loops hand it
        # an opening one too (fan_out's rule).
        compiled = send_broadcasts is not _pure_send_broadcasts
        assert (1 in delivered) is (case == "compressed" or (case == "opening" and compiled))
        assert 0 not in delivered and 2 not in delivered
        return snapshot, world.received()

    both_deferred(run)


def test_an_error_in_a_deferred_broadcast_s_deliver_propagates(make_world):
    def broken(connection: fws.Connection) -> bool:
        raise RuntimeError("a bug")

    for send_broadcasts in (_pure_send_broadcasts, _compiled().send_broadcasts):
        world = make_world(2)
        world.connections[0].deflate = object()  # type: ignore[assignment]
        with pytest.raises(RuntimeError, match="a bug"):
            send_broadcasts(world.connections, [(BINARY, BINARY[0], None, broken)])
        world.connections[0].deflate = None


@pytest.mark.parametrize(
    "broadcasts, error",
    [
        ([(BINARY, BINARY[0], None)], "each broadcast is a tuple"),
        ([[BINARY, BINARY[0], None, print]], "each broadcast is a tuple"),
        ([(bytearray(BINARY), BINARY[0], None, print)], "each broadcast is a tuple"),
        ([(b"", 0, None, print)], "each broadcast is a tuple"),
        ([(BINARY, "first", None, print)], "integer"),
        (None, "not iterable"),
    ],
)
def test_the_compiled_send_of_broadcasts_refuses_what_it_cannot_read(
    make_world, broadcasts, error
):
    world = make_world(1)
    with pytest.raises(TypeError, match=error):
        _compiled().send_broadcasts(world.connections, broadcasts)
    with pytest.raises(TypeError):
        _compiled().send_broadcasts(world.connections)
    assert world.connections[0]._outbox == [] and world.received() == [b""]
