"""``/metrics``: real servers and clients, scraped over HTTP, read with prometheus_client."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import gevent
import pytest
import websocket
from helpers import (
    LOOPBACK,
    ServerProcess,
    assert_clean_failure,
    closed_within,
    connect,
    free_port,
    raw_upgrade,
    run_fws_server,
    run_server,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

import fws
from fws import Pipeline
from fws.filters.echo import Echo
from fws.frames import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameParser,
    Ping,
)
from fws.metrics import opcode_name
from fws.stats import SAMPLE_INTERVAL

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, path: str = "/metrics", host: str = LOOPBACK) -> Samples:
    """GET ``path`` and parse it as Prometheus text; every sample by (name, labels)."""
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is absent (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def http_status(port: int, path: str, method: str = "GET") -> int:
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def client_frame_size(payload: bytes) -> int:
    """Bytes of a masked client frame with this payload (header, mask key, payload)."""
    return len(payload) + (6 if len(payload) < 126 else 8)


def server_frame_size(payload: bytes) -> int:
    return len(payload) + (2 if len(payload) < 126 else 4)


def test_the_parser_counts_frames_and_their_wire_bytes_by_opcode():
    from frame_builder import client_frame

    counts, wire = [0] * 16, [0] * 16
    parser = FrameParser(frame_counts=counts, wire_bytes=wire)
    first = client_frame(OP_TEXT, b"frag", fin=False)
    rest = client_frame(OP_CONTINUATION, b"mented")
    big = client_frame(OP_BINARY, b"b" * 300)  # a 16-bit length: 8-byte header
    ping = client_frame(OP_PING, b"")
    stream = first + rest + big + ping
    events = parser.feed(stream[:5]) + parser.feed(stream[5:])  # split inside a frame
    assert events == ["fragmented", b"b" * 300, Ping(b"")]
    assert (counts[OP_TEXT], counts[OP_CONTINUATION], counts[OP_BINARY], counts[OP_PING]) == (
        1,
        1,
        1,
        1,
    )
    assert (
        (wire[OP_TEXT], wire[OP_CONTINUATION], wire[OP_BINARY], wire[OP_PING])
        == (
            len(first),
            len(rest),
            len(big),
            len(ping),
        )
        == (10, 12, 308, 6)
    )
    assert sum(wire) == len(stream)
    assert [opcode_name(op) for op in (0, 1, 2, 8, 9, 10, 3)] == [
        "continuation", "text", "binary", "close", "ping", "pong", "0x3",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        FrameParser(frame_counts=counts)


def test_messages_bytes_handshakes_close_codes_and_filter_time_are_counted():
    texts = ["hello", "héllo wörld", "x" * 300, "a", "b", "c", "d"]
    binaries = [b"\x00\x01\x02", bytes(range(256)) * 2]
    with run_server(message=Echo, origins=["http://good.example"]) as server:
        port = server.address[1]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(server, origin="http://evil.example")
        assert refused.value.status_code == 403
        assert http_status(port, "/") == 426  # a plain GET: no upgrade asked for
        client = connect(server, origin="http://good.example")
        for text in texts:
            client.send(text)
            assert client.recv() == text
        for data in binaries:
            client.send_binary(data)
            assert client.recv() == data
        open_now = scrape(port)
        assert value(open_now, "fws_connections") == 1
        # Sent messages are counted by runs; a scrape counts the runs still going.
        assert value(open_now, "fws_messages_sent_total", opcode="text") == len(texts)
        assert value(open_now, "fws_messages_sent_total", opcode="binary") == len(binaries)
        assert value(open_now, "fws_bytes_sent_total", opcode="binary") == sum(
            map(server_frame_size, binaries)
        )
        client.close()  # code 1000
        wait_for(lambda: not server.users and not server.finishing, 5)
        samples = scrape(port)

    assert value(samples, "fws_connections") == 0
    assert value(samples, "fws_handshakes_total", status="101") == 1
    assert value(samples, "fws_handshakes_total", status="403") == 1
    assert value(samples, "fws_handshakes_total", status="426") == 1
    for family in ("fws_messages_received_total", "fws_messages_sent_total"):
        assert value(samples, family, opcode="text") == len(texts)
        assert value(samples, family, opcode="binary") == len(binaries)
        assert value(samples, family, opcode="close") == 1
    encoded = [text.encode() for text in texts]
    assert value(samples, "fws_bytes_received_total", opcode="text") == sum(
        map(client_frame_size, encoded)
    )
    assert value(samples, "fws_bytes_received_total", opcode="binary") == sum(
        map(client_frame_size, binaries)
    )
    assert value(samples, "fws_bytes_sent_total", opcode="text") == sum(
        map(server_frame_size, encoded)
    )
    assert value(samples, "fws_bytes_sent_total", opcode="binary") == sum(
        map(server_frame_size, binaries)
    )
    assert value(samples, "fws_close_codes_received_total", code="1000") == 1
    assert value(samples, "fws_close_codes_sent_total", code="1000") == 1  # the answer
    # Per-message pipelines are sampled in time: the first run is timed, then
    # at most one per SAMPLE_INTERVAL (these runs come back to back).
    timed = value(samples, "fws_filter_duration_seconds_count", event="message")
    assert 1 <= timed <= len(texts) + len(binaries)
    every_timed = value(samples, "fws_filter_duration_seconds_bucket", event="message", le="+Inf")
    assert every_timed == timed
    assert value(samples, "fws_filter_duration_seconds_sum", event="message") > 0
    assert value(samples, "fws_disconnects_total", reason="slow_client") == 0
    assert value(samples, "fws_filter_errors_total") == 0
    assert value(samples, "fws_pubsub_live") == 1  # the in-memory storage is always live
    assert value(samples, "fws_outbound_queue_bytes") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_runs_after_a_sample_are_untimed_for_the_interval_every_time():
    # One message per turn of the hub, as from a client with one message in
    # flight. The first interval passes before the runs are counted: libev
    # keeps a fired one-shot timer's expiry relative to when it fired, so a
    # timer restarted as it was fired at once, and every run was timed.
    server = fws.Server(
        host=LOOPBACK, port=0, registry=fws.Registry(), message=lambda ws, data: None
    )
    server.start()
    try:
        times = server.table.stats.filter_time("message")
        server.dispatch("message", None, "first")
        gevent.sleep(SAMPLE_INTERVAL * 3)  # the re-arming timer fires
        started = time.monotonic()
        server.dispatch("message", None, "timed")
        runs = 1
        while runs < 20 and time.monotonic() - started < SAMPLE_INTERVAL * 0.8:
            gevent.sleep(0.0002)  # a turn of the hub: due timers fire
            server.dispatch("message", None, "untimed")
            runs += 1
        assert runs >= 3
        assert sum(times.counts) == 2
    finally:
        server.stop(timeout=1)


def test_histogram_is_cumulative_and_per_message_runs_are_sampled_in_time():
    def slow_on_nap(ws, data):
        if data == "nap":
            time.sleep(0.3)  # not patched: this blocks the server thread, as intended

    def connect_slowly(ws, request):
        time.sleep(0.3)

    # Back to back, only the first of the quick ones is timed; after a pause
    # longer than SAMPLE_INTERVAL the next run (the nap) is timed too.
    with run_server(message=Pipeline(slow_on_nap) | Echo, connect=connect_slowly) as server:
        client = connect(server)
        client.send("quick")
        assert client.recv() == "quick"
        for _ in range(50):
            client.send("quick")
        for _ in range(50):
            assert client.recv() == "quick"
        time.sleep(SAMPLE_INTERVAL * 5)
        client.send("nap")
        assert client.recv() == "nap"
        samples = scrape(server.address[1])
        client.close()

    def bucket(le: str, event: str = "message") -> float:
        return value(samples, "fws_filter_duration_seconds_bucket", event=event, le=le)

    timed = value(samples, "fws_filter_duration_seconds_count", event="message")
    assert 2 <= timed < 51  # the first, some of the 50 back to back (not all), the nap
    assert bucket("0.25") == timed - 1  # cumulative: every quick run, not the nap
    assert bucket("+Inf") == timed
    assert value(samples, "fws_filter_duration_seconds_sum", event="message") >= 0.3
    # Per-connection events are timed every time.
    assert bucket("0.25", "connect") == 0
    assert bucket("+Inf", "connect") == 1


def test_a_broadcast_counts_one_message_per_recipient():
    from fws.filters.broadcast_messages import BroadcastMessages

    with run_server(message=BroadcastMessages) as server:
        sender, *receivers = [connect(server) for _ in range(4)]
        wait_for(lambda: len(server.users) == 4)
        sender.send_binary(b"to all" * 30)
        for receiver in receivers:
            assert receiver.recv() == b"to all" * 30
        samples = scrape(server.address[1])
        for client in (sender, *receivers):
            client.close()
    assert value(samples, "fws_messages_sent_total", opcode="binary") == 3  # not the sender
    assert value(samples, "fws_bytes_sent_total", opcode="binary") == 3 * server_frame_size(
        b"to all" * 30
    )


def test_filter_errors_are_counted_by_event_and_filter():
    def explode_on_boom(ws, data):
        if data == "boom":
            raise RuntimeError("kaboom")

    with run_server(message=Pipeline(explode_on_boom) | Echo) as server:
        client = connect(server)
        client.send("boom")
        client.send("boom")
        client.send("fine")
        assert client.recv() == "fine"
        samples = scrape(server.address[1])
        client.close()
    errors = value(samples, "fws_filter_errors_total", event="message", filter="explode_on_boom")
    assert errors == 2


def test_a_pipeline_set_after_start_runs_untimed():
    with run_server(message=Pipeline()) as server:  # no message filters at start
        server.pipelines["message"] = Pipeline(Echo)
        client = connect(server)
        client.send("hello")
        assert client.recv() == "hello"  # dispatch raised KeyError here
        client.close()


@pytest.mark.parametrize(("opcode", "size"), [(OP_PING, 125), (OP_TEXT, 125), (OP_BINARY, 20_000)])
def test_a_slow_client_cut_is_counted(opcode: int, size: int):
    # Pongs, echoed messages and large binary echoes (queued as a header and the
    # payload itself) take different send paths (the message path inlines the
    # limit test): each must cut and count a client that does not read.
    from frame_builder import client_frame

    with run_server(message=Echo, max_outbound_bytes=64 * 1024, close_timeout=0.5) as server:
        sock = raw_upgrade(server.address[1], receive_buffer=4096)
        wait_for(lambda: server.users)
        frames = client_frame(opcode, b"p" * size)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: at most 20 s of frames
            try:
                sock.sendall(frames * 100)
            except OSError:  # the server cut the connection
                break
        sock.close()
        wait_for(lambda: not server.users and not server.finishing, 5)
        samples = scrape(server.address[1])
    name = {OP_PING: "ping", OP_TEXT: "text", OP_BINARY: "binary"}[opcode]
    answer = "pong" if opcode == OP_PING else name
    assert value(samples, "fws_disconnects_total", reason="slow_client") == 1
    assert value(samples, "fws_close_codes_sent_total", code="1008") == 1
    assert value(samples, "fws_messages_received_total", opcode=name) >= 100
    assert value(samples, "fws_messages_sent_total", opcode=answer) >= 1


def test_outbound_queue_bytes_show_a_client_that_does_not_read():
    from frame_builder import client_frame

    big = b"q" * 65536
    with run_server(message=Echo, max_outbound_bytes=None) as server:
        sock = raw_upgrade(server.address[1], receive_buffer=4096)
        wait_for(lambda: server.users)
        queued = 0.0
        for _ in range(200):  # bounded: at most 13 MB of echoes waiting
            sock.sendall(client_frame(OP_BINARY, big))
            queued = value(scrape(server.address[1]), "fws_outbound_queue_bytes")
            if queued >= len(big):  # more than the rest of a partly written frame
                break
        assert queued >= len(big)  # whole frames wait, not yet written
        sock.close()
        wait_for(lambda: not server.users and not server.finishing, 10)
        assert value(scrape(server.address[1]), "fws_outbound_queue_bytes") == 0


def test_metrics_port_serves_metrics_apart_from_the_websocket_port():
    with run_server(message=Echo, metrics_port=0) as server:
        assert server.metrics_app is None
        assert server.metrics_address is not None
        metrics_port = server.metrics_address[1]
        assert metrics_port != server.address[1]
        client = connect(server)
        client.send("hi")
        assert client.recv() == "hi"
        samples = scrape(metrics_port)
        assert value(samples, "fws_messages_received_total", opcode="text") == 1
        assert http_status(server.address[1], "/metrics") == 426  # not on the public port
        assert http_status(metrics_port, "/") == 404
        assert http_status(metrics_port, "/metrics", "POST") == 405
        assert http_status(metrics_port, "/metrics", "HEAD") == 200
        client.close()


def test_metrics_port_closes_silent_and_trickling_clients_after_handshake_timeout():
    with run_server(metrics_port=0, handshake_timeout=0.5) as server:
        assert server.metrics_address is not None
        metrics_port = server.metrics_address[1]
        silent = socket.create_connection((LOOPBACK, metrics_port))
        partial = socket.create_connection((LOOPBACK, metrics_port))
        partial.sendall(b"GET /metr")  # half a request line, then nothing
        trickling = socket.create_connection((LOOPBACK, metrics_port))
        trickling.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(8):  # a header every 0.1 s: each byte is in time, the whole is not
            time.sleep(0.1)
            try:
                trickling.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        for sock in (silent, partial, trickling):
            with sock:
                assert closed_within(sock, 3.0)
        assert time.monotonic() - started < 3.0
        assert http_status(metrics_port, "/metrics") == 200  # the listener still serves


def test_metrics_host_binds_the_metrics_port_where_asked():
    with run_server(metrics_port=0, metrics_host="127.0.0.2") as server:
        assert server.metrics_address is not None
        host, metrics_port = server.metrics_address
        assert host == "127.0.0.2" and server.address[0] == LOOPBACK
        with urllib.request.urlopen(f"http://127.0.0.2:{metrics_port}/metrics", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, metrics_port), timeout=2).close()
    with pytest.raises(fws.ConfigurationError, match="--metrics-host needs --metrics-port"):
        fws.Server(metrics_host=LOOPBACK)


def test_metrics_port_answers_probes_when_the_main_port_is_full():
    with run_server(message=Echo, max_connections=1, metrics_port=0) as server:
        assert server.metrics_address is not None
        metrics_port = server.metrics_address[1]
        client = connect(server)
        wait_for(lambda: len(server.users) == 1, 5)
        assert http_status(server.address[1], "/health") == 503  # refused before its path
        assert http_status(metrics_port, "/health") == 200
        assert http_status(metrics_port, "/ready") == 200
        assert http_status(metrics_port, "/ready", "POST") == 405
        assert http_status(metrics_port, "/elsewhere") == 404
        client.close()


def test_no_metrics_serves_none_and_times_nothing():
    with run_server(message=Echo, metrics=False) as server:
        assert server.metrics is None and server.metrics_app is None
        client = connect(server)
        client.send("hi")
        assert client.recv() == "hi"
        assert http_status(server.address[1], "/metrics") == 426
        stats = server.table.stats  # nothing per message: no metrics cost nothing
        assert stats.filter_times == {}
        assert sum(stats.messages_received) == sum(stats.messages_sent) == 0
        client.close()


def test_cli_metrics_port_no_metrics_and_a_busy_metrics_port():
    metrics_port = free_port()
    args = ["-p", "0", "--host", LOOPBACK, "-f", "echo", "--metrics-port", str(metrics_port)]
    args += ["--metrics-host", "127.0.0.2"]  # another loopback address than the main port's
    with ServerProcess(args) as server:
        client = connect(server.url)
        client.send("one")
        assert client.recv() == "one"
        samples = scrape(metrics_port, host="127.0.0.2")
        assert value(samples, "fws_messages_received_total", opcode="text") == 1
        assert f"metrics at http://127.0.0.2:{metrics_port}/metrics" in server.output
        client.close()
        # The port is taken now: a second server says so, in one line, exit 2.
        busy = run_fws_server(args)
        assert_clean_failure(busy, 2, f"cannot listen on 127.0.0.2:{metrics_port} for metrics")
    with ServerProcess(["-p", "0", "--host", LOOPBACK, "--no-metrics"]) as server:
        assert http_status(server.port, "/metrics") == 426
    contradiction = run_fws_server(["--no-metrics", "--metrics-port", str(metrics_port)])
    assert contradiction.returncode == 2
    assert "--metrics-port needs metrics on" in contradiction.stderr
    # Refused once, before workers start (not by each worker as it fails).
    for args in (["--no-metrics", "--metrics-port", str(metrics_port)],
                 ["--metrics-host", "127.0.0.2"]):  # fmt: skip
        nowhere = f"redis://{LOOPBACK}:{free_port()}/0"  # never reached: refused first
        refused = run_fws_server([*args, "--workers", "2", "--storage", "redis",
                                  "--redis-url", nowhere])  # fmt: skip
        output = assert_clean_failure(refused, 2, "needs")
        assert "worker" not in output, output


def test_multiprocess_mode_aggregates_through_the_directory_and_cleans_up(tmp_path: Path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    args = ["-p", "0", "--host", LOOPBACK, "-f", "echo"]
    with ServerProcess(args, env=env) as first:
        client = connect(first.url)
        for n in range(3):
            client.send(f"m{n}")
            assert client.recv() == f"m{n}"
        samples = scrape(first.port)
        assert value(samples, "fws_messages_received_total", opcode="text") == 3
        assert value(samples, "fws_connections") == 1
        pid = first.process.pid
        assert (directory / f"gauge_livesum_{pid}.db").exists()
        # A process creating its files: empty for a moment, which must not fail a scrape.
        (directory / "counter_999999.db").touch()
        assert value(scrape(first.port), "fws_messages_received_total", opcode="text") == 3
        (directory / "counter_999999.db").unlink()
        # Another process (a second worker, in effect) writes within a second;
        # either one's scrape shows both.
        with ServerProcess(args, env=env) as second:
            other = connect(second.url)
            other.send("m")
            assert other.recv() == "m"

            def summed() -> Samples | None:
                seen = scrape(first.port)
                sent = value(seen, "fws_messages_received_total", opcode="text")
                return seen if sent == 4 and value(seen, "fws_connections") == 2 else None

            wait_for(summed, 5, "the first server's scrape did not sum both processes")
            other.close()
            assert second.stop() == 0
        wait_for(lambda: value(scrape(first.port), "fws_connections") == 1, 5)
        client.close()
        assert first.stop() == 0
    # The live gauges of exited processes are gone; counters stay, so totals never drop.
    assert not list(directory.glob("gauge_live*"))
    assert list(directory.glob("counter_*.db"))


def test_a_value_file_deleted_before_the_merge_is_left_out_of_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from fws.metrics import _SettledFiles

    for pid, total in ((1, 3.0), (2, 4.0)):
        values = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        values.write_value(mmap_key("fws_demo", "fws_demo_total", [], [], "demo"), total, 0.0)
        values.close()
    real_getsize = os.path.getsize

    def sized_then_deleted(name: str) -> int:
        size = real_getsize(name)
        if name.endswith("counter_2.db"):  # deleted after the listing, before the merge
            os.unlink(name)
        return size

    monkeypatch.setattr(os.path, "getsize", sized_then_deleted)
    metrics = list(_SettledFiles(str(tmp_path)).collect())  # was FileNotFoundError: 500
    assert [(s.name, s.value) for m in metrics for s in m.samples] == [("fws_demo_total", 3.0)]


def test_multiprocess_directory_that_does_not_exist_is_a_usage_error(tmp_path: Path):
    missing = tmp_path / "nowhere"
    result = run_fws_server(["-p", "0"], env={"PROMETHEUS_MULTIPROC_DIR": str(missing)})
    assert result.returncode == 2
    assert f"PROMETHEUS_MULTIPROC_DIR is not a directory: {missing}" in result.stderr


def test_pubsub_live_drops_to_zero_and_the_outage_is_counted_when_redis_stops(
    redis_server: RedisServer,  # noqa: F811
):
    args = ["-p", "0", "--host", LOOPBACK, "--close-timeout", "1"]
    args += ["--storage", "redis", "--redis-url", redis_server.url, "-f", "broadcast_messages"]
    with ServerProcess(args) as server:
        assert value(scrape(server.port), "fws_pubsub_live") == 1
        client = connect(server.url)
        redis_server.stop()
        wait_for(lambda: value(scrape(server.port), "fws_pubsub_live") == 0, 10)
        client.send("lost for the other servers")  # published nowhere: Redis is down
        samples = wait_for(
            lambda: (
                (s := scrape(server.port)) and value(s, "fws_redis_messages_lost_total") == 1 and s
            ),
            5,
        )
        assert value(samples, "fws_redis_outages_total") == 1
        redis_server.start()
        wait_for(lambda: value(scrape(server.port), "fws_pubsub_live") == 1, 15)
        client.close()


def test_metrics_survive_a_scrape_storm_without_disturbing_clients():
    """Scrapes are plain HTTP requests: many at once leave a WebSocket client unharmed."""
    with run_server(message=Echo) as server:
        port = server.address[1]
        client = connect(server)
        sockets = []
        for _ in range(20):
            sock = socket.create_connection((LOOPBACK, port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            sockets.append(sock)
        for sock in sockets:
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
            sock.close()
        client.send("still fine")
        assert client.recv() == "still fine"
        client.close()
