"""Busy polling (fws.busy_poll): spins while clients send back to back, stops by itself.

Real servers and real clients. The windows here are milliseconds, not the
default 50 microseconds, so that a Python client in the test thread, with its
slower turnaround, counts as a client that sends back to back.
"""

from __future__ import annotations

import os
import time
import urllib.request

import pytest
import websocket
from helpers import (
    LOOPBACK,
    ServerProcess,
    TLSFiles,
    connect,
    metric_values,
    run_server,
    url,
    wait_for,
)

import fws
from fws.busy_poll import MISSES_TO_STOP
from fws.filters.echo import Echo

WINDOW_US = 20_000


def echo_back_to_back(client: websocket.WebSocket, count: int = 50) -> None:
    for number in range(count):
        client.send_binary(b"%d" % number)
        assert client.recv() == b"%d" % number


def loop_iterations_over(server: fws.Server, seconds: float) -> int:
    """How many times the server's hub went round its loop in ``seconds`` of no traffic."""
    loop = server.hub.loop  # type: ignore[attr-defined]
    before = loop.iteration
    time.sleep(seconds)
    return loop.iteration - before


def test_back_to_back_messages_make_the_hub_poll_without_sleeping_until_they_stop():
    with run_server(message=Echo, busy_poll_us=200_000) as server:
        busy = server.table.busy_poll
        assert busy is not None and not busy.enabled
        client = connect(server)
        echo_back_to_back(client)
        assert busy.enabled and busy.spinning
        # Spinning: the loop goes round on its own, with nothing to do (tens of
        # thousands of times in 0.1 s on an idle machine; asleep, a few).
        assert loop_iterations_over(server, 0.1) > 200
        # The window runs out with nothing read: a miss, and the hub sleeps again.
        wait_for(lambda: not busy.spinning, 2, "the spinning did not stop")
        assert busy.misses == 1
        assert loop_iterations_over(server, 0.1) < 50
        # A message after a long pause is no hit: its window is the second miss in a
        # row, and spinning is off until clients send back to back again.
        client.send_binary(b"late")
        assert client.recv() == b"late"
        wait_for(lambda: not busy.enabled, 2, "spinning was not turned off")
        assert busy.misses == MISSES_TO_STOP and not busy.spinning
        client.send_binary(b"later")
        assert client.recv() == b"later"
        assert not busy.spinning  # off: a wait after a long pause starts no window
        # The metrics count windows and misses: two of each so far (the first
        # burst's window and the late message's), and nothing runs to change them.
        stats = server.table.stats
        assert (stats.busy_poll_windows, stats.busy_poll_misses) == (2, 2)
        metrics = metric_values(server)
        assert metrics["fws_busy_poll_windows_total"] == 2
        assert metrics["fws_busy_poll_misses_total"] == 2
        echo_back_to_back(client)
        assert busy.enabled and busy.misses == 0
        client.close()
    assert server.table.busy_poll is None  # stopping the server closed its watcher


def test_over_tls_only_back_to_back_messages_turn_it_on(tmp_path):
    """Over TLS the reader's first read of a burst finds its bytes there already:
    that is no short wait, or every message of a sparse client would count as one."""
    tls = TLSFiles(tmp_path)
    with run_server(message=Echo, busy_poll_us=WINDOW_US, **tls.server_settings) as server:
        busy = server.table.busy_poll
        client = websocket.create_connection(
            url(server, scheme="wss"), timeout=5, sslopt={"context": tls.client_context}
        )
        for number in range(3):
            time.sleep(0.1)  # five windows apart
            client.send_binary(b"sparse %d" % number)
            assert client.recv() == b"sparse %d" % number
            assert not busy.enabled and not busy.spinning
        assert server.table.stats.busy_poll_windows == 0
        echo_back_to_back(client)
        assert busy.enabled
        wait_for(lambda: not busy.spinning, 2, "the spinning did not stop")
        client.close()


def test_busy_poll_off_never_spins():
    with run_server(message=Echo, busy_poll_us=0) as server:
        assert server.table.busy_poll is None
        client = connect(server)
        echo_back_to_back(client)
        assert loop_iterations_over(server, 0.1) < 50
        client.close()


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_a_quiet_server_uses_no_cpu_after_a_burst():
    """The option on the command line; after the burst, the process sleeps.

    With 20 ms windows, at most two are wasted after the burst (40 ms of CPU);
    a server that kept spinning would use the whole second.
    """
    args = ["-f", "echo", "--host", LOOPBACK, "-p", "0"]
    with ServerProcess([*args, "--busy-poll-us", str(WINDOW_US)]) as server:
        client = connect(server.url)
        echo_back_to_back(client, 200)
        client.send_binary(b"one more after the burst")
        client.recv()
        time.sleep(0.2)  # the burst's windows run out
        before = process_cpu_seconds(server.process.pid)
        time.sleep(1.0)
        assert process_cpu_seconds(server.process.pid) - before < 0.15
        # It did spin during the burst: the option reached the server.
        metrics_url = f"http://{LOOPBACK}:{server.port}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
        assert "fws_busy_poll_windows_total 0.0" not in text
        assert "fws_busy_poll_windows_total " in text
        client.close()
