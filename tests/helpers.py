"""Test helpers: real servers on ephemeral loopback ports, real clients."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

import fws

LOOPBACK = "127.0.0.1"
LOOPBACK_ANY_PORT = {"FWS_HOST": LOOPBACK, "FWS_PORT": "0", "FWS_CLOSE_TIMEOUT": "1"}
"""Environment for an fws_server on loopback, a free port, closes that wait 1 s."""


@contextlib.contextmanager
def run_server(**settings: Any) -> Iterator[fws.Server]:
    """Run an ``fws.Server`` on 127.0.0.1, port 0, in a thread with its own gevent hub.

    The test thread is not monkey-patched, so blocking clients can talk to
    the server freely. The server always stops when the block ends.
    """
    settings.setdefault("host", LOOPBACK)
    settings.setdefault("port", 0)
    settings.setdefault("registry", fws.Registry())
    # Clients that a test leaves open do not answer the 1001 close; do not wait long.
    settings.setdefault("close_timeout", 1.0)
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            server = fws.Server(**settings)
            server.start()
        except BaseException as exc:
            box["error"] = exc
            started.set()
            return
        box["server"] = server
        box["hub"] = gevent.get_hub()
        server.hub = box["hub"]  # type: ignore[attr-defined]
        started.set()
        server.serve_forever()

    thread = threading.Thread(target=run, name="fws-test-server", daemon=True)
    thread.start()
    assert started.wait(10), "server did not start"
    if "error" in box:
        raise box["error"]
    server = box["server"]
    try:
        yield server
    finally:
        box["hub"].loop.run_callback_threadsafe(gevent.spawn, server.stop)
        thread.join(15)
        assert not thread.is_alive(), "server thread did not stop"


def assert_clean_failure(
    result: subprocess.CompletedProcess[str], code: int, *phrases: str
) -> str:
    """``fws_server`` exited ``code`` saying each of ``phrases``, with no traceback.

    Returns its whole output (stdout and stderr), for further checks.
    """
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    for phrase in phrases:
        assert phrase in output, output
    return output


@contextlib.contextmanager
def haproxy(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real HAProxy run with ``config`` (checked first) until it accepts on ``port``."""
    binary = require_binary("haproxy", "apt-get install haproxy")
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: accepts(port) or process.poll() is not None, 10, "haproxy did not start")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """SIGTERM ``process`` if it still runs, SIGKILL it after ``timeout`` s; reaped either way.

    One copy for every helper process a test starts (haproxy, redis-server,
    cluster nodes, sentinels), so none is left running when a stop hangs.
    """
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def require_binary(name: str, install: str) -> str:
    """The path of ``name``; skip the test where it is missing, but fail under ``CI=true``.

    CI installs every binary the tests drive: a missing one there must fail
    the build rather than silently test less.
    """
    binary = shutil.which(name)
    if binary is None:
        reason = f"{name} is not installed ({install})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return binary


def url(server: fws.Server, path: str = "/", scheme: str = "ws") -> str:
    return f"{scheme}://{LOOPBACK}:{server.address[1]}{path}"


def metric_values(server: fws.Server) -> dict[str, float]:
    """The unlabelled samples of the server's /metrics."""
    with urllib.request.urlopen(url(server, "/metrics", scheme="http"), timeout=5) as response:
        families = text_string_to_metric_families(response.read().decode())
    return {sample.name: sample.value for family in families for sample in family.samples}


def connect(target: fws.Server | str, **kwargs: Any) -> websocket.WebSocket:
    """A websocket-client connection with a timeout, so a broken test fails, not hangs."""
    address = target if isinstance(target, str) else url(target)
    kwargs.setdefault("timeout", 5)
    return websocket.create_connection(address, **kwargs)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(0.01)


def read_stdout_until(
    capsys: pytest.CaptureFixture[str], done: Callable[[str], bool], timeout: float = 5.0
) -> str:
    """What the server printed, read as it comes until ``done(printed so far)``."""
    output = ""

    def finished() -> bool:
        nonlocal output
        output += capsys.readouterr().out
        return done(output)

    wait_for(finished, timeout, f"stdout so far: {output!r}")
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def fws_server_command() -> list[str]:
    """The installed console script if on PATH, else ``python -m fws``."""
    script = shutil.which("fws_server")
    return [script] if script else [sys.executable, "-m", "fws"]


def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` now."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def run_fws_server(
    args: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run ``fws_server`` to completion (for commands that fail or print and exit)."""
    return subprocess.run(
        [*fws_server_command(), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_LISTENING = re.compile(r"fws listening on (wss?)://(?:\[[^\]]*\]|[^:]+):(\d+)")


class ServerProcess:
    """``fws_server`` (or another ``command``) as a subprocess; its output is kept."""

    def __init__(
        self,
        args: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ):
        self.command = command if command is not None else fws_server_command()
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.scheme = "ws"
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 20, port: int | None = None) -> ServerProcess:
        """Start and wait until it listens: for the log line, or for ``port`` to accept."""
        self.process = subprocess.Popen(
            [*self.command, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if port is not None:
            wait_for(
                lambda: accepts(port) or self.process.poll() is not None,
                timeout,
                f"fws_server did not start: {self.output}",
            )
            if self.process.poll() is not None:
                raise AssertionError(f"fws_server exited early: {self.output}")
            self.port = port
            return self
        match = wait_for(
            lambda: self._listening() or self.process.poll() is not None,
            timeout,
            f"fws_server did not start: {self.output}",
        )
        if match is True:
            raise AssertionError(f"fws_server exited early: {self.output}")
        self.scheme, self.port = match.group(1), int(match.group(2))
        return self

    def _listening(self) -> re.Match[str] | None:
        for line in list(self.lines):
            match = _LISTENING.search(line)
            if match:
                return match
        return None

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}/"

    def stop(self, sig: int = 15, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def __enter__(self) -> ServerProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def raw_upgrade(
    port: int,
    path: str = "/",
    extra_headers: str = "",
    receive_buffer: int | None = None,
    tls: Any = None,
) -> socket.socket:
    """A socket that has completed the HTTP upgrade (for hand-made frames).

    ``tls``: an ``ssl.SSLContext`` to speak TLS with (``TLSFiles.client_context``).
    """
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect((LOOPBACK, port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=LOOPBACK)
    sock.sendall(upgrade_request(port, path, extra_headers))
    response = read_response_head(sock)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def upgrade_request(port: int, path: str = "/", extra_headers: str = "") -> bytes:
    """A well-formed upgrade request; ``extra_headers`` are whole lines ending in CRLF."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    ).encode()


def read_response_head(sock: socket.socket) -> bytes:
    """Read until the end of an HTTP response head; return all that was read."""
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed during the handshake: {response!r}"
        response += chunk
    return response


def read_server_frame(sock: socket.socket) -> tuple[int, bytes]:
    """Read one unmasked server frame: (opcode, payload)."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed mid-frame")
            data += chunk
        return data

    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    return first & 0x0F, exactly(length)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def read_until_eof(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def stop_server(server: fws.Server) -> None:
    """Ask the server (running in its own thread) to stop, from the test thread."""
    hub = server.hub  # type: ignore[attr-defined]
    hub.loop.run_callback_threadsafe(gevent.spawn, server.stop)


class TLSFiles:
    """A CA and a certificate for 127.0.0.1 made for one test, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        import trustme

        ca = trustme.CA()
        issued = ca.issue_cert(LOOPBACK, "localhost")
        self.cert, self.key = directory / "cert.pem", directory / "key.pem"
        self.ca = directory / "ca.pem"
        issued.cert_chain_pems[0].write_to_path(self.cert)
        for pem in issued.cert_chain_pems[1:]:
            pem.write_to_path(self.cert, append=True)
        issued.private_key_pem.write_to_path(self.key)
        ca.cert_pem.write_to_path(self.ca)
        self.client_context = ssl.create_default_context()
        ca.configure_trust(self.client_context)
        """An SSLContext for clients that trusts the CA."""

    @property
    def server_settings(self) -> dict[str, str]:
        """``certfile``/``keyfile`` keywords for ``fws.Server``."""
        return {"certfile": str(self.cert), "keyfile": str(self.key)}


class WssClient:
    """A ``wss://`` WebSocket client that uses its TLS socket from one thread only.

    Why not ``websockets.sync.client``: it reads in a background thread while
    the caller writes, on one ``ssl.SSLSocket``, and OpenSSL does not allow
    that (python-engineio#461, cpython#151508). Over TLS 1.3 the server's
    session tickets arrive as the client writes its upgrade request, and on
    this Python about 1 upgrade in 250 was lost: the server logged "handshake
    timed out", the client "timed out while waiting for handshake response"
    (2,000 connects of each kind against one ``fws_server``: 8 lost with
    that client, none with TLS 1.2, none with tickets off, none when one
    thread did the same upgrade). This one is ``websocket-client``, which
    reads only when asked, with the calls of ``websockets``' client that
    the tests use: ``send``, ``recv(timeout=)``, ``close`` and ``with``.
    """

    def __init__(self, url: str, context: ssl.SSLContext, open_timeout: float = 10) -> None:
        # Raises ssl.SSLError (SSLCertVerificationError) for a certificate not trusted.
        self._client = connect(url, timeout=open_timeout, sslopt={"context": context})

    def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._client.send(message)
        else:
            self._client.send_binary(message)

    def recv(self, timeout: float | None = None) -> str | bytes:
        self._client.settimeout(timeout)
        message: str | bytes = self._client.recv()
        return message

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> WssClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def hub_held(server: fws.Server) -> Iterator[None]:
    """Keep the server's hub from running for the block: it accepts nothing meanwhile.

    A hub callback that blocks its (not monkey-patched) thread on an event,
    set when the block ends; 10 s at most, so a failing test cannot hang.
    """
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(10)

    server.hub.loop.run_callback_threadsafe(hold)  # type: ignore[attr-defined]
    assert holding.wait(5), "the server's hub did not run the hold"
    try:
        yield
    finally:
        release.set()


def head_before_accept(server: fws.Server, request: bytes) -> socket.socket:
    """A raw client whose ``request`` is in its socket when the server accepts it.

    The server's upgrade at the accept (``fws.at_accept``) depends on it.
    """
    with hub_held(server):
        sock = socket.create_connection((LOOPBACK, server.address[1]), timeout=5)
        sock.sendall(request)
        time.sleep(0.05)  # loopback delivery, should the kernel defer it to ksoftirqd
    return sock


def accepted_then_send(server: fws.Server, request: bytes) -> socket.socket:
    """A raw client that sends ``request`` only once the server has accepted it."""
    sock = socket.create_connection((LOOPBACK, server.address[1]), timeout=5)
    wait_for(lambda: len(server.pending_handshakes) == 1, message="not accepted")
    sock.sendall(request)
    return sock
