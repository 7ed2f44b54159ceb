"""``fws_server --workers N``: a supervisor and N worker processes on one port.

Everything is real: fws_server subprocesses, a private redis-server on a
free port, websocket clients. Which worker a client landed on is told by a
small filter module (``pid?`` is answered with the worker's pid).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    LOOPBACK,
    ServerProcess,
    TLSFiles,
    WssClient,
    raw_upgrade,
    run_fws_server,
    run_server,
    wait_for,
)
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)
from websockets.exceptions import ConnectionClosed
from websockets.sync import client as ws_sync

from fws.metrics import FLUSH_INTERVAL
from fws.supervisor import resolve_workers

PID_FILTER = '''
import os
from fws import DROP, WebSocketMessageFilter

VERSION = {version!r}
if os.path.exists({crash_marker!r}):
    raise RuntimeError("crash at start, as the test asked")


class WhoAmI(WebSocketMessageFilter):
    """'pid?' is answered with VERSION:pid; anything else goes on down the pipeline."""

    @classmethod
    def filter(cls, connection, data):
        if data == "pid?":
            connection.send(f"{{VERSION}}:{{os.getpid()}}")
            return DROP
        if data == "metrics dir?":
            connection.send(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "unset"))
            return DROP
        return None
'''

# Clients here are closed explicitly or by the server under test, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def write_filter(directory: Path, version: str = "v1") -> Path:
    path = directory / "whoami.py"
    path.write_text(PID_FILTER.format(version=version, crash_marker=str(directory / "crash")))
    return path


@contextlib.contextmanager
def workers(
    redis: RedisServer, directory: Path, *args: str, count: int = 2
) -> Iterator[ServerProcess]:
    """``fws_server --workers count`` on a free port, with the whoami filter first."""
    filter_path = directory / "whoami.py"
    if not filter_path.exists():
        write_filter(directory)
    command = [
        "--workers", str(count), "--storage", "redis", "--redis-url", redis.url,
        "-p", "0", "--host", LOOPBACK, "--close-timeout", "1",
        "-f", "./whoami.py", "broadcast_messages", *args,
    ]  # fmt: skip
    server = ServerProcess(command, cwd=directory)
    server.start()
    # Every worker is ready once the supervisor says where it listens.
    wait_for(lambda: f"with {count} workers" in server.output, 20, server.output)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop(timeout=20)
        server.__exit__()


def whoami(client: ws_sync.ClientConnection | WssClient) -> tuple[str, int]:
    """(filter version, pid) of the worker serving ``client``."""
    client.send("pid?")
    version, _, pid = str(client.recv(timeout=5)).partition(":")
    return version, int(pid)


def clients_per_worker(
    server: ServerProcess, wanted: int = 2, limit: int = 60
) -> dict[int, list[ws_sync.ClientConnection]]:
    """Connect until ``wanted`` clients are on each of two distinct workers (at most ``limit``)."""
    by_pid: dict[int, list[ws_sync.ClientConnection]] = {}
    spare = []
    for _ in range(limit):
        client = ws_sync.connect(server.url, open_timeout=5)
        _, pid = whoami(client)
        if len(by_pid.get(pid, [])) < wanted and (pid in by_pid or len(by_pid) < 2):
            by_pid.setdefault(pid, []).append(client)
        else:
            spare.append(client)
        if len(by_pid) == 2 and all(len(c) == wanted for c in by_pid.values()):
            break
    for client in spare:
        client.close()
    assert len(by_pid) == 2 and all(len(c) == wanted for c in by_pid.values()), (
        f"{limit} connections did not reach two workers {wanted} times each: {by_pid}"
    )
    # Every worker follows broadcasts from its start: no wait for a first client.
    return by_pid


def chat(sender: ws_sync.ClientConnection, receiver: ws_sync.ClientConnection, text: str) -> None:
    """``receiver`` gets ``text`` from ``sender`` (after earlier broadcasts it had not read)."""
    sender.send(text)
    received = []
    deadline = time.monotonic() + 5
    while text not in received:
        received.append(receiver.recv(timeout=max(deadline - time.monotonic(), 0.01)))


def worker_pids(server: ServerProcess) -> set[int]:
    """Pids of workers the supervisor started and has not (yet) reported dead."""
    started = {int(m.group(2)) for m in _STARTED.finditer(server.output)}
    ended = re.findall(r"\(pid (\d+)\) (?:was killed|exited|drained)", server.output)
    gone = {int(pid) for pid in ended}
    return started - gone


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:  # noqa: F811
    """A private redis-server (tests/redis_helpers.py) for the workers to share."""
    return redis_server


# -- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "environment"])
def test_memory_storage_is_refused_with_several_workers(how):
    args, env = (["--workers", "2"], {}) if how == "option" else ([], {"FWS_WORKERS": "2"})
    result = run_fws_server([*args, "-p", "0", "--host", LOOPBACK], env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "fws_server: error: --workers 2 needs a shared storage (--storage redis): "
        "with the in-memory storage each worker would see only its own clients"
    ]


def test_memory_storage_refusal_also_comes_from_a_config_file(tmp_path):
    config = tmp_path / "fws.json"
    config.write_text('{"workers": 2, "port": 0, "host": "127.0.0.1"}')
    result = run_fws_server(["-c", str(config)])
    assert result.returncode == 2
    assert "--workers 2 needs a shared storage (--storage redis)" in result.stderr


def test_options_that_cannot_work_together_are_refused_once_before_any_worker(redis):
    result = run_fws_server(
        ["--workers", "2", "--storage", "redis", "--redis-url", redis.url,
         "-p", "0", "--host", LOOPBACK, "--message-burst", "3"]
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("--message-burst needs --max-messages-per-second") == 1
    assert "worker" not in result.stderr  # refused by the command, not by each worker


def test_a_busy_port_is_reported_before_any_worker_starts(redis):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_fws_server(
            ["--workers", "2", "--storage", "redis", "--redis-url", redis.url,
             "-p", str(port), "--host", LOOPBACK]
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on {LOOPBACK}:{port}: Address already in use" in result.stderr
    assert "worker 0 started" not in result.stderr


def test_workers_auto_is_one_per_cpu_and_nonsense_is_a_usage_error():
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    result = run_fws_server(["--workers", "0"])
    assert result.returncode == 2
    assert "'0' is not a positive number of workers or 'auto'" in result.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_status(redis, tmp_path):
    result = run_fws_server(
        ["--workers", "2", "--storage", "redis", "--redis-url", redis.url,
         "-p", "0", "--host", LOOPBACK, "-f", "./no_such_filter.py"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "no_such_filter.py" in result.stderr
    assert "before it was ready; stopping" in result.stderr
    assert "fws listening" not in result.stderr


# -- the library: Server(listener=...) --------------------------------------------------


def test_server_accepts_on_a_listening_socket_it_is_given():
    from fws.filters.echo import Echo

    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with run_server(listener=listener, port=1, message=[Echo]) as server:
            assert server.address[1] == port  # the socket's port, not the port keyword
            with ws_sync.connect(f"ws://{LOOPBACK}:{port}/", open_timeout=5) as client:
                client.send("through the given socket")
                assert client.recv(timeout=5) == "through the given socket"


# -- sharing one port, through the storage -----------------------------------------------


def test_clients_on_different_workers_chat(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        (first,), (second,) = by_pid.values()
        chat(first, second, "hello from one worker")
        chat(second, first, "and back from the other")
        assert set(by_pid) == worker_pids(server)
        for client in (first, second):
            client.close()


def test_a_module_in_the_current_directory_does_not_shadow_the_standard_library(redis, tmp_path):
    """Workers append the current directory to sys.path (as ``-f ./x.py`` does), not first."""
    (tmp_path / "json.py").write_text('raise RuntimeError("./json.py shadowed the stdlib")\n')
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        (first,), (second,) = by_pid.values()
        chat(first, second, "the stdlib json it is")
        for client in (first, second):
            client.close()
    assert "shadowed the stdlib" not in server.output


def test_a_killed_worker_comes_back_and_the_others_clients_keep_chatting(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=2)
        victim, survivor = list(by_pid)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: f"(pid {victim}) was killed by SIGKILL" in server.output,
            10,
            server.output,
        )
        # The victim's clients see their connection cut; they reconnect.
        for client in by_pid[victim]:
            with pytest.raises(ConnectionClosed):
                client.recv(timeout=5)
        # The survivor's clients noticed nothing: same connections, still chatting.
        left, right = by_pid[survivor]
        chat(left, right, "still here")
        # A replacement worker is started and takes new clients.
        wait_for(lambda: len(worker_pids(server)) == 2, 10, server.output)
        (replacement,) = worker_pids(server) - {survivor}
        wait_for(lambda: f"(pid {replacement}) is ready" in server.output, 20, server.output)
        newcomer = None
        for _ in range(60):
            candidate = ws_sync.connect(server.url, open_timeout=5)
            if whoami(candidate)[1] == replacement:
                newcomer = candidate
                break
            candidate.close()
        assert newcomer is not None, "no client reached the restarted worker"
        chat(newcomer, left, "hello from the new worker")
        chat(right, newcomer, "welcome")
        for client in (left, right, newcomer):
            client.close()


def test_a_worker_crashing_at_start_is_restarted_with_growing_delays(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        victim, survivor = list(by_pid)
        (tmp_path / "crash").touch()  # every new worker now fails to import its filter
        os.kill(victim, signal.SIGKILL)
        slot = re.search(rf"worker (\d+) started \(pid {victim}\)", server.output).group(1)
        delays_seen = re.compile(rf"worker {slot} restarts in ([0-9.]+) s")
        # Four failures take 0.1 + 0.2 + 0.4 + 0.8 s of waiting plus four starts.
        wait_for(lambda: len(delays_seen.findall(server.output)) >= 5, 30, server.output)
        delays = [float(d) for d in delays_seen.findall(server.output)]
        assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.6], delays
        assert "crash at start, as the test asked" in server.output
        # Meanwhile the other worker serves as before.
        (client,) = by_pid[survivor]
        assert whoami(client)[1] == survivor
        # Once the cause is gone, the next attempt succeeds.
        (tmp_path / "crash").unlink()
        wait_for(lambda: len(worker_pids(server)) == 2, 30, server.output)
        client.close()


# -- signals ----------------------------------------------------------------------------


def test_sighup_replaces_every_worker_without_closing_the_port(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        old_pids = set(by_pid)
        write_filter(tmp_path, version="v2")
        failures: list[str] = []
        connected = 0
        stop = threading.Event()

        def keep_connecting() -> None:
            nonlocal connected
            while not stop.is_set():
                try:
                    with ws_sync.connect(server.url, open_timeout=5) as probe:
                        whoami(probe)
                    connected += 1
                except Exception as exc:  # refused, reset, 503...: all count
                    failures.append(repr(exc))
                time.sleep(0.01)

        prober = threading.Thread(target=keep_connecting, daemon=True)
        prober.start()
        server.process.send_signal(signal.SIGHUP)
        try:
            wait_for(lambda: "reload done" in server.output, 60, server.output)
        finally:
            stop.set()
            prober.join(10)
        assert failures == [], failures
        assert connected > 0
        # The old workers' clients were closed as at a shutdown: 1001.
        for client in (c for clients in by_pid.values() for c in clients):
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        new_pids = worker_pids(server)
        assert len(new_pids) == 2 and not new_pids & old_pids
        # New workers run the changed filter file.
        with ws_sync.connect(server.url, open_timeout=5) as client:
            version, pid = whoami(client)
        assert version == "v2" and pid in new_pids


def test_a_wedged_worker_is_killed_and_the_reload_completes(redis, tmp_path):
    """A replaced worker that does not stop gets SIGKILL after the shutdown timeout."""
    with workers(redis, tmp_path) as server:
        wedged, other = sorted(worker_pids(server))
        os.kill(wedged, signal.SIGSTOP)
        server.process.send_signal(signal.SIGHUP)
        # --close-timeout 1: killed 1 + 10 s after its SIGTERM.
        wait_for(lambda: "reload done" in server.output, 60, server.output)
        assert re.search(
            rf"reload: worker \d \(pid {wedged}\) did not stop within 11 s; killing it",
            server.output,
        ), server.output
        assert f"(pid {wedged}) drained and was killed by SIGKILL" in server.output
        assert not worker_pids(server) & {wedged, other}
        # A second reload is not refused as "already in progress".
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: server.output.count("reload done") == 2, 60, server.output)
        assert "already in progress" not in server.output


def test_a_replaced_worker_does_not_sit_out_the_drain_delay(redis, tmp_path):
    """It stopped accepting at SIGUSR1: no client can arrive for a drain to turn away."""
    with workers(redis, tmp_path, "--drain-delay", "6") as server:
        old_pids = worker_pids(server)
        started = time.monotonic()
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload done" in server.output, 60, server.output)
        assert "draining for" not in server.output
        # Two workers drained one after the other would take 2 x 6 s and more.
        assert time.monotonic() - started < 12, server.output
        assert not worker_pids(server) & old_pids


def test_sighup_without_a_supervisor_is_logged_and_ignored(tmp_path):
    """``--workers 1`` (or auto on one CPU): a service manager's reload must not kill it."""
    write_filter(tmp_path)
    args = ["--workers", "1", "-p", "0", "--host", LOOPBACK, "--close-timeout", "1",
            "-f", "./whoami.py", "broadcast_messages"]  # fmt: skip
    with ServerProcess(args, cwd=tmp_path) as server:
        with ws_sync.connect(server.url, open_timeout=5) as client:
            _, pid = whoami(client)
            server.process.send_signal(signal.SIGHUP)
            wait_for(
                lambda: "SIGHUP: reloading needs --workers N (N > 1); ignored" in server.output,
                10,
                server.output,
            )
            assert server.process.poll() is None
            assert whoami(client) == ("v1", pid)  # the same connection, still served
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert server.stop() == 0


def test_a_reload_whose_new_worker_fails_keeps_the_old_workers(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=2)
        old_pids = set(by_pid)
        (tmp_path / "crash").touch()  # the new code is broken
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the old workers" in server.output, 30, server.output)
        assert "crash at start, as the test asked" in server.output
        assert worker_pids(server) == old_pids
        # Nobody was drained: every old client still chats, across workers too.
        (a1, a2), (b1, b2) = by_pid.values()
        chat(a1, b1, "still on the old code")
        chat(b2, a2, "and so am I")
        # A later reload, once the code is fixed, goes through.
        (tmp_path / "crash").unlink()
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload done" in server.output, 60, server.output)
        assert not worker_pids(server) & old_pids
        for client in (a1, a2, b1, b2):
            client.close()


def test_sighup_loads_new_tls_certificates(redis, tmp_path):
    old, new = TLSFiles(_mkdir(tmp_path / "old")), TLSFiles(_mkdir(tmp_path / "new"))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(old.cert.read_bytes())
    key.write_bytes(old.key.read_bytes())
    with workers(redis, tmp_path, "--cert", str(cert), "--key", str(key)) as server:
        assert server.scheme == "wss"
        assert "fws listening on wss://" in server.output
        with WssClient(server.url, old.client_context, open_timeout=5) as client:
            assert whoami(client)[0] == "v1"
        cert.write_bytes(new.cert.read_bytes())  # the operator renews the certificate
        key.write_bytes(new.key.read_bytes())
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload done" in server.output, 60, server.output)
        with WssClient(server.url, new.client_context, open_timeout=5) as client:
            assert whoami(client)[0] == "v1"
        with pytest.raises(ssl.SSLCertVerificationError):
            WssClient(server.url, old.client_context, open_timeout=5)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_sigterm_drains_every_worker_with_1001_and_exits_0(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        server.process.send_signal(signal.SIGTERM)
        for client in (c for clients in by_pid.values() for c in clients):
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        # stop() sends SIGTERM again: a repeated SIGTERM does not cut the drain short.
        assert server.stop(timeout=20) == 0
        assert "fws stopped" in server.output
        assert "Traceback" not in server.output
        for pid in by_pid:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_a_drain_longer_than_the_close_timeout_is_waited_for(redis, tmp_path):
    """The supervisor waits for the workers' --drain-delay, /ready says 503 meanwhile."""
    from test_metrics import http_status

    with workers(redis, tmp_path, "--drain-delay", "12") as server:
        assert http_status(server.port, "/ready") == 200
        with ws_sync.connect(server.url, open_timeout=5) as client:
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: http_status(server.port, "/ready") == 503, 5, server.output)
            assert whoami(client)  # clients already there are still served
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=20)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        # 12 s of drain is more than --close-timeout 1 + 10: not killed, exit 0.
        assert server.process.wait(20) == 0
        assert "killing them" not in server.output


def test_workers_stop_when_the_supervisor_is_killed(redis, tmp_path, monkeypatch):
    # A killed supervisor cannot remove a metrics directory of its own: give it
    # one in tmp_path.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(_mkdir(tmp_path / "metrics")))
    with workers(redis, tmp_path) as server:
        pids = worker_pids(server)
        assert len(pids) == 2
        server.process.kill()
        server.process.wait(10)

        def all_gone() -> bool:
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        state = stat.read().rpartition(")")[2].split()[0]
                except FileNotFoundError:
                    continue
                if state != "Z":  # a zombie until init reaps it counts as gone
                    return False
            return True

        wait_for(all_gone, 15, f"workers {pids} outlived their supervisor")


@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_worker_whose_supervisor_died_before_it_started_stops(parent_alive):
    """The orphan check compares the parent with the supervisor's pid, from the environment."""
    import subprocess

    from fws.supervisor import SUPERVISOR_PID_ENV, worker_command

    # This test process is the worker's parent; another pid stands for a
    # supervisor that died and left the worker to a reaper.
    supervisor = os.getpid() if parent_alive else os.getppid()
    result = subprocess.run(
        worker_command(),
        env={**os.environ, SUPERVISOR_PID_ENV: str(supervisor)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if parent_alive:  # goes on, and stops only for want of a socket
        assert result.returncode == 1, result.stderr
        assert "run by fws_server --workers N, not by hand" in result.stderr
    else:
        assert result.returncode == -signal.SIGTERM, (result.returncode, result.stderr)


def _silent_client(port: int) -> socket.socket:
    """A client that never answers the server's close: the drain waits close_timeout."""
    return raw_upgrade(port)


@pytest.mark.parametrize("count", [1, 2])
def test_a_second_sigint_exits_at_once(redis, tmp_path, count):
    write_filter(tmp_path)
    args = [
        "--workers", str(count), "-p", "0", "--host", LOOPBACK, "--close-timeout", "60",
        "-f", "./whoami.py", "broadcast_messages",
    ]  # fmt: skip
    if count > 1:
        args += ["--storage", "redis", "--redis-url", redis.url]
    with ServerProcess(args, cwd=tmp_path) as server:
        if count > 1:
            wait_for(lambda: "with 2 workers" in server.output, 20, server.output)
        silent = [_silent_client(server.port) for _ in range(4)]
        server.process.send_signal(signal.SIGINT)
        if count > 1:
            wait_for(lambda: "SIGINT: draining the workers" in server.output, 10, server.output)
        time.sleep(1)  # the first signal's drain is under way
        assert server.process.poll() is None, "the drain should wait for the silent clients"
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        code = server.process.wait(15)
        elapsed = time.monotonic() - started
        # The issue asks for an immediate exit: far less than the 60 s close_timeout.
        assert elapsed < 10, elapsed
        assert code == 130, server.output
        assert "SIGINT while draining" in server.output
        for sock in silent:
            sock.close()


# -- metrics: prometheus_client's multi-process directory -----------------------------------


def test_workers_get_a_fresh_metrics_directory_removed_at_exit(redis, tmp_path):
    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        directories = set()
        for (client,) in by_pid.values():
            client.send("metrics dir?")
            directories.add(client.recv(timeout=5))
            client.close()
        (directory,) = directories  # the same for every worker
        assert Path(directory).is_dir() and Path(directory).name.startswith("fws-metrics-")
        assert server.stop(timeout=20) == 0
    assert not Path(directory).exists()


def test_an_operators_metrics_directory_is_used_and_kept(redis, tmp_path, monkeypatch):
    mine = tmp_path / "metrics"
    mine.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mine))
    with workers(redis, tmp_path) as server:
        with ws_sync.connect(server.url, open_timeout=5) as client:
            client.send("metrics dir?")
            assert client.recv(timeout=5) == str(mine)
        assert server.stop(timeout=20) == 0
    assert mine.is_dir()


def test_metrics_are_summed_over_workers_and_survive_a_killed_worker(redis, tmp_path):
    """Any worker answering /metrics reports every worker's counts (multi-process mode)."""
    from test_metrics import scrape, value

    def received() -> float:
        return value(scrape(server.port), "fws_messages_received_total", opcode="text")

    with workers(redis, tmp_path) as server:
        by_pid = clients_per_worker(server, wanted=1)
        (first,), (second,) = by_pid.values()
        # Counts reach the shared files at the next flush of each worker: read
        # the baseline once two scrapes a few flushes apart agree.
        before = -1.0
        while before != (before := received()):
            time.sleep(3 * FLUSH_INTERVAL)
        for client in (first, second):
            for _ in range(5):
                whoami(client)
        # Each worker flushes its counts every second; every scrape, whichever
        # worker answers it, must then see all ten messages.
        wait_for(lambda: received() == before + 10, 10, "workers' counts were not summed")
        assert all(received() == before + 10 for _ in range(6))
        assert value(scrape(server.port), "fws_connections") == 2
        victim = next(iter(by_pid))
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(worker_pids(server)) == 2 and victim not in worker_pids(server),
            10,
            server.output,
        )
        # The dead worker's connection no longer counts; its counted messages do.
        wait_for(
            lambda: value(scrape(server.port), "fws_connections") == 1,
            10,
            "the killed worker's live gauge was not removed",
        )
        assert received() >= before + 10
        first.close()
        second.close()


def test_python_m_fws_workers_runs_from_a_checkout_no_interpreter_installed(redis, tmp_path):
    """``python -m fws --workers 2`` in a source tree: the workers find that fws too.

    A venv holds fws's dependencies (the base interpreter's site-packages as a
    plain path: its .pth files, an editable install of fws among them, are
    not run) but not fws itself; only the checkout, the current directory,
    has it. Workers start with ``python -P``, which leaves that out.
    """
    import sysconfig

    import fws

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(venv / "bin" / "python")
    not_installed = subprocess.run([python, "-P", "-c", "import fws"], capture_output=True)
    if not_installed.returncode == 0:  # fws installed normally, not editable: nothing to prove
        if os.environ.get("CI") == "true":  # CI installs it editable (make install)
            pytest.fail("fws is importable in the venv: the test proves nothing")
        pytest.skip("fws is installed into the base site-packages, not editable")
    checkout = Path(fws.__file__).resolve().parent.parent
    args = ["--workers", "2", "--storage", "redis", "--redis-url", redis.url]
    args += ["-p", "0", "--host", LOOPBACK, "--close-timeout", "1", "-f", "echo"]
    server = ServerProcess(args, cwd=checkout, command=[python, "-m", "fws"])
    server.start()
    try:
        wait_for(lambda: "with 2 workers" in server.output, 20, server.output)
        with ws_sync.connect(server.url) as client:
            client.send("from the checkout")
            assert client.recv(timeout=5) == "from the checkout"
        assert server.stop(timeout=20) == 0
    finally:
        server.__exit__()
    assert "No module named" not in server.output
