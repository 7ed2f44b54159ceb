"""Plain HTTP beside the sockets: probes, metrics, the user's WSGI app, static files.

Every request that is not a WebSocket upgrade reaches ``route``, which
answers, in this order:

1. ``/health`` and ``/ready`` (unless the server's ``health`` is off, so that
   the application can own those paths):

   - ``/health``: 200 ``{"status":"ok"}`` while the process serves at all,
     draining included (a liveness probe that failed during a drain would
     get the process killed before its clients were closed);
   - ``/ready``: 200 ``{"status":"ready"}`` while the server listens, its
     storage is live (for Redis: subscribed and in sync) and it is not
     draining; otherwise 503 ``{"status":"unavailable","reason":"..."}``, so a
     load balancer or a Kubernetes readiness probe sends new clients elsewhere.

2. ``/metrics``, when the server has a ``metrics_app`` (``fws.metrics``);
3. the user's WSGI application (``--app``), if any: it gets everything else;
4. else the static files (``--static``), if any;
5. else 426 Upgrade Required: this is a WebSocket server.

``route_metrics_port`` answers the requests of the ``--metrics-port``
listener: the same probes, ``/metrics``, and 404 for anything else. At
``max_connections`` the main port answers every new connection 503 before
reading its path, probes included; the metrics port keeps answering them.

No gevent here: ``route`` is plain WSGI, testable with a dict and a
``start_response``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["PROBE_PATHS", "HttpServer", "respond", "route", "route_metrics_port"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

PROBE_PATHS = ("/health", "/ready")
"""The paths fws answers itself unless its probes are switched off."""

_UPGRADE_REQUIRED = (
    b"426 Upgrade Required: this is a WebSocket server; connect with a WebSocket client "
    b"(ws:// or wss://).\n"
)


class HttpServer(Protocol):
    """What ``route`` needs of the server (``fws.Server`` is one)."""

    @property
    def health(self) -> bool:
        """Whether fws answers /health and /ready itself."""

    @property
    def app(self) -> WSGIApp | None: ...

    @property
    def static(self) -> WSGIApp | None: ...

    @property
    def metrics_app(self) -> WSGIApp | None: ...

    def not_ready_reason(self) -> str | None:
        """None when ready for new clients; else a short reason (``draining``...)."""

    def count_upgrade_required(self) -> None:
        """A plain request got 426: metrics count it among the handshakes' outcomes."""


def route(
    server: HttpServer, environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    """Answer one plain HTTP request for ``server`` (see the module docstring)."""
    path = environ.get("PATH_INFO") or "/"
    if server.health and path in PROBE_PATHS:
        return _probe(server, path, environ, start_response)
    if path == "/metrics" and server.metrics_app is not None:
        return server.metrics_app(environ, start_response)
    if server.app is not None:
        return server.app(environ, start_response)
    if server.static is not None:
        return server.static(environ, start_response)
    server.count_upgrade_required()
    return respond(
        start_response,
        "426 Upgrade Required",
        _UPGRADE_REQUIRED,
        extra=[("Upgrade", "websocket"), ("Connection", "close")],
    )


def route_metrics_port(
    server: HttpServer,
    metrics_app: WSGIApp,
    environ: dict[str, Any],
    start_response: StartResponse,
) -> Iterable[bytes]:
    """Answer one request on the metrics port: the probes (unless ``health`` is
    off), else ``metrics_app``, which serves ``/metrics`` and 404s the rest."""
    path = environ.get("PATH_INFO") or "/"
    if server.health and path in PROBE_PATHS:
        return _probe(server, path, environ, start_response)
    return metrics_app(environ, start_response)


def _probe(
    server: HttpServer, path: str, environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        return _json(
            start_response,
            "405 Method Not Allowed",
            {"status": "error", "reason": f"{path} answers GET and HEAD"},
            method,
            [("Allow", "GET, HEAD")],
        )
    if path == "/health":
        return _json(start_response, "200 OK", {"status": "ok"}, method)
    reason = server.not_ready_reason()
    if reason is None:
        return _json(start_response, "200 OK", {"status": "ready"}, method)
    return _json(
        start_response,
        "503 Service Unavailable",
        {"status": "unavailable", "reason": reason},
        method,
    )


def _json(
    start_response: StartResponse,
    status: str,
    body: dict[str, str],
    method: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    return respond(
        start_response,
        status,
        json.dumps(body, separators=(",", ":")).encode() + b"\n",
        content_type="application/json",
        # A probe's answer is about this instant: no cache may keep it.
        extra=[("Cache-Control", "no-store"), *(extra or [])],
        head=method == "HEAD",
    )


def respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: Iterable[tuple[str, str]] = (),
    head: bool = False,
) -> list[bytes]:
    """A short answer fws writes itself (a probe, a refusal, a metrics page).

    ``head``: a HEAD request's answer, the same headers without the body.
    """
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra],
    )
    return [] if head else [body]
