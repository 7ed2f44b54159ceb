"""A WSGI application beside the sockets: ``Server(app=...)`` and ``fws_server --app``.

A real Flask application on the same port as the WebSockets, in-process and
as an ``fws_server`` subprocess; the ``--app`` errors as the user sees them.
"""

from __future__ import annotations

import http.client
import json
import socket
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flask  # noqa: F401  a test dependency (setup.cfg [test]): missing fails, never skips
import gevent
import websockets.sync.client as ws_sync
from helpers import (
    LOOPBACK,
    ServerProcess,
    assert_clean_failure,
    connect,
    run_fws_server,
    run_server,
    url,
)

from fws.filters.echo import Echo

FLASK_APP = textwrap.dedent(
    """
    from flask import Flask, request

    app = Flask(__name__)

    @app.get("/")
    def index():
        return "<h1>the site</h1>"

    @app.post("/echo")
    def echo():
        return {"got": request.get_data(as_text=True)}

    @app.get("/boom")
    def boom():
        raise RuntimeError("the app's own bug")

    @app.get("/health")
    def health():
        return "the app's health"
    """
)


def make_flask_app() -> Any:
    namespace: dict[str, Any] = {"__name__": "flask_site"}
    exec(compile(FLASK_APP, "flask_site.py", "exec"), namespace)
    return namespace["app"]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_flask_app_serves_the_site_and_sockets_share_the_port() -> None:
    with run_server(app=make_flask_app(), message=Echo) as server:
        port = server.address[1]
        with ws_sync.connect(url(server)) as client:
            assert request(port, "GET", "/") == (200, b"<h1>the site</h1>")
            status, body = request(
                port, "POST", "/echo", b"a body", {"Content-Type": "text/plain"}
            )
            assert (status, json.loads(body)) == (200, {"got": "a body"})
            client.send("over the socket")
            assert client.recv(timeout=5) == "over the socket"


def test_fws_keeps_health_and_ready_unless_switched_off() -> None:
    with run_server(app=make_flask_app()) as server:
        status, body = request(server.address[1], "GET", "/health")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
    with run_server(app=make_flask_app(), health=False) as server:
        assert request(server.address[1], "GET", "/health") == (200, b"the app's health")
        assert request(server.address[1], "GET", "/ready")[0] == 404  # Flask's own 404


def test_app_exception_is_a_500_and_the_sockets_stay_up() -> None:
    with run_server(app=make_flask_app(), message=Echo) as server:
        port = server.address[1]
        with ws_sync.connect(url(server)) as client:
            assert request(port, "GET", "/boom")[0] == 500
            client.send("after the 500")
            assert client.recv(timeout=5) == "after the 500"
        assert request(port, "GET", "/")[0] == 200


def test_raw_wsgi_app_that_raises_gets_500_from_the_server() -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise ValueError("no page here")

    with run_server(app=broken, message=Echo) as server:
        assert request(server.address[1], "GET", "/")[0] == 500
        client = connect(server)
        client.send("still serving")
        assert client.recv() == "still serving"
        client.close()


def test_a_slow_answer_is_not_cut_by_the_handshake_timeout() -> None:
    """handshake_timeout bounds a request's head, not the app's time to answer it."""

    def slow(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        gevent.sleep(2.5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"worth the wait"]

    with run_server(app=slow, handshake_timeout=1) as server:
        assert request(server.address[1], "GET", "/") == (200, b"worth the wait")


def test_a_body_read_line_by_line_is_not_bound_by_the_head_limit() -> None:
    def lines(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"]
        count = 0
        while body.readline():
            count += 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(count).encode()]

    body = b"".join(b"line %05d " % n + b"x" * 90 + b"\n" for n in range(400))  # 40 KB
    with run_server(app=lines, max_header_bytes=16 * 1024) as server:
        assert request(server.address[1], "POST", "/", body) == (200, b"400")
        # The head itself is still bounded, on the same keep-alive-capable port.
        big = {f"X-Filler-{n}": "y" * 1000 for n in range(20)}
        assert request(server.address[1], "GET", "/", headers=big)[0] == 431


def test_an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() -> None:
    with run_server(app=make_flask_app(), handshake_timeout=1) as server:
        conn = http.client.HTTPConnection(LOOPBACK, server.address[1], timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"<h1>the site</h1>")
        sock = conn.sock
        assert sock is not None
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(1) == b"", "an idle keep-alive connection stayed open"
        # Kept alive for the timeout (so this is keep-alive), then closed.
        assert 0.5 < time.monotonic() - started < 4
        conn.close()


# -- fws_server --app -----------------------------------------------------------


def test_cli_app_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "chatsite.py").write_text(FLASK_APP)
    args = ["--host", LOOPBACK, "-p", "0", "-f", "echo", "--app", "chatsite:app"]
    with ServerProcess(args, cwd=tmp_path) as server:
        assert request(server.port, "GET", "/") == (200, b"<h1>the site</h1>")
        client = connect(server.url)
        client.send("hello")
        assert client.recv() == "hello"
        client.close()
        assert server.stop() == 0


def test_cli_app_from_a_file_path_with_the_default_name_and_no_health(tmp_path: Path) -> None:
    (tmp_path / "chatsite.py").write_text(FLASK_APP)
    args = ["--host", LOOPBACK, "-p", "0", "--app", str(tmp_path / "chatsite.py"), "--no-health"]
    with ServerProcess(args) as server:
        assert request(server.port, "GET", "/") == (200, b"<h1>the site</h1>")
        assert request(server.port, "GET", "/health") == (200, b"the app's health")
        assert server.stop() == 0


def _refused(args: list[str], cwd: Path) -> str:
    result = run_fws_server(["--host", LOOPBACK, "-p", "0", *args], cwd=cwd)
    assert_clean_failure(result, 2)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_app_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "chatsite.py").write_text(FLASK_APP + "\nnumber = 3\n")
    (tmp_path / "broken.py").write_text("import no_such_dependency_here\n")
    assert "unknown module 'nosuchsite'" in _refused(["--app", "nosuchsite:app"], tmp_path)
    assert "has no attribute 'application'" in _refused(
        ["--app", "chatsite:application"], tmp_path
    )
    assert "not a WSGI application" in _refused(["--app", "chatsite:number"], tmp_path)
    assert "file not found" in _refused(["--app", "./missing.py:app"], tmp_path)
    assert "no_such_dependency_here" in _refused(["--app", "broken:app"], tmp_path)
    (tmp_path / "typo.py").write_text("def app(:\n")
    refused = _refused(["--app", "./typo.py"], tmp_path)
    assert "module './typo.py' failed to import: SyntaxError" in refused
    assert "filter module" not in refused  # an app is not a filter module
    (tmp_path / "static").mkdir()
    assert "cannot be combined" in _refused(
        ["--app", "chatsite:app", "--static", str(tmp_path / "static")], tmp_path
    )


def test_each_keep_alive_request_head_gets_the_whole_handshake_timeout() -> None:
    """The timeout restarts at each answer; it does not resume what the last head left.

    libev's stop() keeps a timer's remaining time and start() resumes it, so a
    restarted timer gave a keep-alive head only what the first head had left.
    """

    def ok(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    def answer(sock: Any) -> bytes:
        received = b""
        while not received.endswith(b"\r\n\r\nok"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received

    with run_server(app=ok, handshake_timeout=1) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: fws\r\n")
            time.sleep(0.7)  # the first head takes most of its second
            sock.sendall(b"\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.6)  # more than the first head left, less than a second
            sock.sendall(b"GET / HTTP/1.1\r\nHost: fws\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 200"), "the second head was cut short"


def test_each_keep_alive_request_head_is_counted_against_the_whole_bound() -> None:
    """Two heads under ``max_header_bytes`` pass one after the other; one over it is 431.

    The bound stops counting at a plain request's body; each next head on the
    connection starts a new count (neither unbounded, nor added to the last).
    """

    def ok(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    def head(filler: int) -> bytes:
        return b"GET / HTTP/1.1\r\nHost: fws\r\nX-Filler: " + b"y" * filler + b"\r\n\r\n"

    def status(sock: Any) -> bytes:
        received = b""
        while b"\r\n\r\n" not in received or not (
            received.endswith(b"ok") or b"Connection: close" in received
        ):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received[:12]

    with run_server(app=ok, max_header_bytes=1000) as server:
        with socket.create_connection((LOOPBACK, server.address[1]), timeout=5) as sock:
            for _ in range(2):
                sock.sendall(head(600))
                assert status(sock) == b"HTTP/1.1 200"
            sock.sendall(head(1200))
            assert status(sock) == b"HTTP/1.1 431"
