"""Plain HTTP beside the sockets: /health, /ready, the drain, the routing order.

Real servers on loopback ports, real HTTP (http.client) and WebSocket clients,
a real redis-server for readiness following the storage.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import websocket
import websockets.sync.client as ws_sync
from helpers import LOOPBACK, ServerProcess, accepts, connect, run_server, stop_server, wait_for
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)
from websockets.exceptions import ConnectionClosed

import fws
from fws.filters.echo import Echo
from fws.http import route


def get(
    port: int, path: str, method: str = "GET", body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request; (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


# -- the probes --------------------------------------------------------------------


def test_health_and_ready_answer_json_that_no_cache_keeps() -> None:
    with run_server() as server:
        port = server.address[1]
        status, headers, body = get(port, "/health")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        status, headers, body = get(port, "/ready")
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        assert headers["cache-control"] == "no-store"


def test_probes_answer_head_without_a_body_and_refuse_post() -> None:
    with run_server() as server:
        port = server.address[1]
        status, _, body = get(port, "/ready", method="HEAD")
        assert (status, body) == (200, b"")
        status, headers, body = get(port, "/health", method="POST", body=b"x")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        assert json.loads(body)["status"] == "error"


def test_other_paths_still_get_426_and_upgrades_still_work() -> None:
    with run_server() as server:
        port = server.address[1]
        status, headers, _ = get(port, "/healthz")
        assert status == 426
        assert headers["upgrade"] == "websocket"
        client = connect(server)
        client.close()


def test_no_health_leaves_the_probe_paths_to_the_static_files(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("the site's own\n")
    with run_server(health=False, static=tmp_path) as server:
        port = server.address[1]
        assert get(port, "/health")[::2] == (200, b"the site's own\n")
        assert get(port, "/ready")[0] == 404


def test_ready_turns_503_when_redis_stops_and_200_when_it_returns(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # A subprocess: fws_server monkey-patches, so Redis calls do not block its hub.
    args = ["--host", LOOPBACK, "-p", "0", "--storage", "redis", "--redis-url", redis_server.url]
    with ServerProcess(args) as server:
        port = server.port
        assert get(port, "/ready")[0] == 200
        redis_server.stop()
        status, _, body = wait_for(
            lambda: (answer := get(port, "/ready"))[0] == 503 and answer,
            timeout=20,
            message="/ready did not turn 503 after Redis stopped",
        )
        assert json.loads(body) == {"status": "unavailable", "reason": "storage unavailable"}
        # Liveness is about the process, not its storage: it still serves.
        assert get(port, "/health")[0] == 200
        redis_server.start()
        wait_for(
            lambda: get(port, "/ready")[0] == 200,
            timeout=20,
            message="/ready did not return to 200 after Redis came back",
        )
        assert server.stop() == 0


def test_ready_without_storage_stays_200_through_a_redis_outage(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """--ready-without-storage: a Redis outage leaves the server in rotation."""
    args = ["--host", LOOPBACK, "-p", "0", "--storage", "redis", "--redis-url", redis_server.url]
    with ServerProcess([*args, "--ready-without-storage"]) as server:
        port = server.port
        assert get(port, "/ready")[0] == 200
        redis_server.stop()
        # The server has noticed: its pub/sub is down (the gauge /ready would follow).
        wait_for(
            lambda: b"\nfws_pubsub_live 0.0" in get(port, "/metrics")[2],
            timeout=20,
            message="the server did not notice that Redis stopped",
        )
        status, _, body = get(port, "/ready")
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        with ws_sync.connect(f"ws://{LOOPBACK}:{port}/") as client:  # still taking clients
            client.send("still here")
        redis_server.start()
        assert server.stop() == 0


# -- the drain ---------------------------------------------------------------------


def test_drain_turns_ready_503_first_then_closes_clients_with_1001() -> None:
    with run_server(drain_delay=3.0, message=Echo) as server:
        port = server.address[1]
        with ws_sync.connect(f"ws://{LOOPBACK}:{port}/") as client:
            wait_for(lambda: server.users)
            started = time.monotonic()
            stop_server(server)
            status, _, body = wait_for(
                lambda: (answer := get(port, "/ready"))[0] == 503 and answer,
                message="/ready did not turn 503 when the drain began",
            )
            assert json.loads(body) == {"status": "unavailable", "reason": "draining"}
            # The process still serves: /health stays 200, so that a liveness
            # probe does not kill a draining server.
            assert get(port, "/health")[0] == 200
            # New WebSocket clients are sent elsewhere with 503...
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                connect(f"ws://{LOOPBACK}:{port}/")
            assert refused.value.status_code == 503
            # ...while the clients already here are still served.
            client.send("still here")
            assert client.recv(timeout=5) == "still here"
            # Once the drain is over they are closed with 1001 and the port closes.
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert time.monotonic() - started >= 2.5, "clients were closed before the drain ended"
            wait_for(lambda: not accepts(port), message="the port stayed open after the drain")


def test_a_second_stop_ends_the_drain_at_once() -> None:
    with run_server(drain_delay=60.0) as server:
        port = server.address[1]
        stop_server(server)
        wait_for(lambda: get(port, "/ready")[0] == 503)
        started = time.monotonic()
        stop_server(server)
        wait_for(lambda: not accepts(port), 10, "a second stop did not cut the drain short")
        assert time.monotonic() - started < 10


# -- the routing order, as plain WSGI -----------------------------------------------


class _Probed:
    """The least a server is to ``route``: a real object, no network."""

    def __init__(self, **settings: Any) -> None:
        self.health = settings.get("health", True)
        self.app = settings.get("app")
        self.static = settings.get("static")
        self.metrics_app = settings.get("metrics_app")
        self.reason: str | None = None

    def not_ready_reason(self) -> str | None:
        return self.reason


def _named(name: str) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [name.encode()]

    return app


def _call(server: _Probed, path: str) -> tuple[str, bytes]:
    box: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        box["status"] = status

    body = b"".join(route(server, {"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return box["status"], body


def test_route_order_probes_then_metrics_then_app() -> None:
    server = _Probed(app=_named("app"), metrics_app=_named("metrics"))
    assert _call(server, "/health")[0] == "200 OK"
    assert _call(server, "/metrics") == ("200 OK", b"metrics")
    assert _call(server, "/") == ("200 OK", b"app")
    server.reason = "storage unavailable"
    status, body = _call(server, "/ready")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["reason"] == "storage unavailable"
    server.health = False
    assert _call(server, "/ready") == ("200 OK", b"app")


def test_without_metrics_app_metrics_goes_to_the_app() -> None:
    assert _call(_Probed(app=_named("app")), "/metrics") == ("200 OK", b"app")


def test_server_refuses_app_with_static(tmp_path: Path) -> None:
    with pytest.raises(fws.ConfigurationError, match="cannot be combined"):
        fws.Server(app=_named("app"), static=tmp_path)


def test_server_refuses_an_app_that_is_not_callable() -> None:
    with pytest.raises(fws.ConfigurationError, match="WSGI application"):
        fws.Server(app="myapp:app")  # type: ignore[arg-type]


def test_server_refuses_a_negative_drain_delay() -> None:
    with pytest.raises(ValueError, match="drain_delay"):
        fws.Server(drain_delay=-1)
