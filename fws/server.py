"""The fws server: gevent's pywsgi, a greenlet per active connection, pipelines per event.

``Server`` owns the listening socket, the connections (``users``), the queue
the consumer pipeline reads and the storage object. It builds one ``Pipeline``
per event when it starts: the one passed for that event, or else the one the
registry holds for it.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import time
from bisect import bisect_left as _bisect_left
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.pool
import gevent.queue
import gevent.socket
import gevent.ssl
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from .connection import PARK_AFTER, Connection
from .context import ConnectionSettings, ConnectionTable
from .datatypes import ExtensionOffer
from .deflate import COMPRESSION_CHOICES, DeflateSettings, PerMessageDeflate, negotiate
from .errors import ConfigurationError, FilterError
from .events import EVENTS
from .frames import encode_message
from .handshake import ConnectionHandler, ProxyNetworks
from .metrics import FLUSH_INTERVAL, Metrics
from .pipeline import DROP, Pipeline
from .registry import Registry, active_registry
from .static import StaticFiles
from .stats import FILTER_TIME_BUCKETS, FilterTimes
from .storage.base import Storage
from .storage.memory import MemoryStorage

__all__ = ["Server", "serve", "serve_until_signalled", "tls_context"]


log = logging.getLogger("fws.server")

_perf_counter = time.perf_counter  # a global, not an attribute lookup, on the per-message path

_UPGRADE_REQUIRED = (
    b"426 Upgrade Required: this is a WebSocket server; connect with a WebSocket client "
    b"(ws:// or wss://).\n"
)


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server TLS context, or ``ConfigurationError`` naming the unusable file.

    The context is gevent's: the standard library's would block the whole hub
    on every TLS read when the process is not monkey-patched.
    """
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        # ssl's FileNotFoundError and PermissionError carry no file name: find it.
        for path in (certfile, keyfile):
            if path is not None and not os.path.exists(path):
                raise ConfigurationError(f"TLS file not found: {path}") from None
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigurationError(f"TLS file not readable: {path}") from None
        names = certfile if keyfile is None else f"{certfile} / {keyfile}"
        raise ConfigurationError(
            f"cannot load TLS certificate and key from {names}: {exc}"
        ) from None
    return context


class _WSGIServer(WSGIServer):
    """pywsgi's server, with the TLS handshake under ``handshake_timeout`` too.

    gevent performs the TLS handshake before any handler exists, on a socket
    without a timeout: a client that opens TCP and says nothing would hold a
    greenlet and a descriptor forever, and a failed handshake (a scanner, or
    plain HTTP sent to a wss port) would print a traceback.
    """

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> Any:
        # One deadline for the whole handshake: a socket timeout would restart
        # at every byte, and a client trickling its hello would never be cut.
        deadline = self.application.handshake_timeout or None
        try:
            with gevent.Timeout(deadline, TimeoutError("TLS handshake timed out")):
                tls_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError as exc:  # ssl.SSLError and our TimeoutError are OSErrors
            log.info("TLS handshake from %s:%s failed: %s", *address[:2], exc)
            client_socket.close()
            return None
        detached = False
        try:
            detached = self.handle(tls_socket, address)
        finally:
            if not detached:
                tls_socket.close()
        return None

    def handle(self, sock: Any, address: Any) -> bool:
        """Handle one client; True when its socket now belongs to an open connection."""
        handler = self.handler_class(sock, address, self)
        handler.handle()
        return handler.detached


class Server:
    """A WebSocket server whose behaviour is its pipelines.

    Pipelines (``None``: take the event's pipeline from ``registry``, which
    defaults to the active registry; pass ``Pipeline()`` for none):
    ``connect``, ``open``, ``data``, ``message``, ``disconnect``, ``consumer``.
    """

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 9000,
        # Pipelines, one per event.
        connect: Any = None,
        open: Any = None,  # noqa: A002 - the event's name, like the other pipelines
        data: Any = None,
        message: Any = None,
        disconnect: Any = None,
        consumer: Any = None,
        registry: Registry | None = None,
        # Shared state and pub/sub; None: a fresh in-memory storage.
        storage: Storage | None = None,
        # TLS: a certificate chain file and key file, or a gevent.ssl.SSLContext.
        certfile: str | None = None,
        keyfile: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        # Limits; None disables one.
        max_message_size: int | None = 2**20,
        max_outbound_bytes: int | None = 4 * 2**20,
        max_connections: int | None = None,
        origins: Collection[str] | None = None,
        max_header_bytes: int | None = 16 * 1024,
        # The handshake: subprotocols offered (the first the client also offers is
        # chosen), whether a client must offer one, permessage-deflate ("off",
        # "deflate" for DeflateSettings(), or DeflateSettings of your own), and
        # proxies whose X-Forwarded-For / Forwarded headers are believed.
        subprotocols: Sequence[str] = (),
        require_subprotocol: bool = False,
        compression: str | DeflateSettings = "deflate",
        trusted_proxies: Iterable[str] = (),
        # Timeouts, in seconds; None disables one.
        handshake_timeout: float | None = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        idle_timeout: float | None = None,
        close_timeout: float = 5.0,
        # Plain HTTP: GET/HEAD requests that are not upgrades get the files of
        # this directory (see fws.static); None: they get 426 Upgrade Required.
        static: str | os.PathLike[str] | None = None,
        # Prometheus metrics at GET /metrics (see fws.metrics): on the main port,
        # or on metrics_port (same host) when that is set; False: none at all.
        metrics: bool = True,
        metrics_port: int | None = None,
    ) -> None:
        if close_timeout <= 0:
            raise ValueError("close_timeout must be more than 0 seconds")
        self.host = host
        self.port = port
        self._explicit: dict[str, Any] = {
            "connect": connect,
            "open": open,
            "data": data,
            "message": message,
            "disconnect": disconnect,
            "consumer": consumer,
        }
        self._registry = registry
        self.pipelines: dict[str, Pipeline] = {event: Pipeline() for event in EVENTS}
        self.storage_object: Storage = storage if storage is not None else MemoryStorage()
        if ssl_context is None and certfile is not None:
            ssl_context = tls_context(certfile, keyfile)
        if ssl_context is not None and not isinstance(ssl_context, gevent.ssl.SSLContext):
            raise TypeError(
                "ssl_context must be a gevent.ssl.SSLContext (use fws.server.tls_context, "
                "or monkey-patch before creating it)"
            )
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.origins = frozenset(origins) if origins is not None else None
        self.max_header_bytes = max_header_bytes
        self.subprotocols = tuple(subprotocols)
        if require_subprotocol and not self.subprotocols:
            raise ConfigurationError("require_subprotocol needs at least one subprotocol")
        self.require_subprotocol = require_subprotocol
        if isinstance(compression, DeflateSettings):
            self.deflate_settings: DeflateSettings | None = compression
        elif compression in COMPRESSION_CHOICES:
            self.deflate_settings = DeflateSettings() if compression == "deflate" else None
        else:
            raise ConfigurationError(
                f"compression must be one of {', '.join(COMPRESSION_CHOICES)}, not {compression!r}"
            )
        try:
            self.trusted_proxies = ProxyNetworks(trusted_proxies)
        except ValueError as exc:
            raise ConfigurationError(f"trusted proxy: {exc}") from None
        self.handshake_timeout = handshake_timeout
        self.connection_settings = ConnectionSettings(
            max_message_size=max_message_size,
            max_outbound_bytes=max_outbound_bytes,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            idle_timeout=idle_timeout,
            close_timeout=close_timeout,
        )
        self.queue: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self.table = ConnectionTable(
            storage=self.storage_object,
            queue=self.queue,
            pipelines=self.pipelines,
            dispatch=self.dispatch,
        )
        """What the connections share; ``users`` and the rest below are its own objects."""
        self.table.stats.count_messages = metrics  # per-message counts: for metrics only
        self.users = self.table.users
        self.reading = self.table.reading
        self.finishing = self.table.finishing
        self.static = StaticFiles(static) if static is not None else None
        self.upgrades_in_progress = 0
        """Handshakes accepted but not yet in ``users`` (they count for max_connections)."""
        if metrics_port is not None and not metrics:
            raise ConfigurationError("--metrics-port needs metrics on (drop --no-metrics)")
        self.metrics: Metrics | None = None
        if metrics:
            self.metrics = Metrics(
                self.table.stats,
                connections=self.users.__len__,
                outbound_bytes=self._outbound_bytes,
                pubsub_live=lambda: self.storage_object.pubsub_live,
            )
        self.metrics_port = metrics_port
        self.metrics_app: Any = (
            self.metrics.wsgi_app if self.metrics is not None and metrics_port is None else None
        )
        """WSGI app for plain ``GET /metrics`` on the main port; None: not served there."""
        self._metrics_wsgi: WSGIServer | None = None
        self._filter_times: dict[str, FilterTimes | None] = dict.fromkeys(EVENTS)
        """Per event with filters, where its run times go; None when metrics are off."""

        self._wsgi: WSGIServer | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._stopped = gevent.event.Event()

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Build the pipelines, bind the port and start serving in the background.

        Raises ``OSError`` if the address cannot be bound.
        """
        registry = self._registry if self._registry is not None else active_registry()
        for event, root in EVENTS.items():
            explicit = self._explicit[event]
            if explicit is None:
                self.pipelines[event] = registry.pipeline(root)
            else:
                self.pipelines[event] = Pipeline(*_as_filters(explicit))
        if self.metrics is not None:
            # Timing costs two clock reads a run: only where filters run, only if exported.
            self._filter_times = {
                event: self.table.stats.filter_time(event)
                for event, pipeline in self.pipelines.items()
                if pipeline
            }
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        self._wsgi = _WSGIServer(
            (self.host, self.port),
            self,
            handler_class=ConnectionHandler,
            spawn=gevent.pool.Pool(),
            # Reconnect storms open thousands of connections at once; the
            # kernel caps this at net.core.somaxconn.
            backlog=2048,
            log=LoggingLogAdapter(logging.getLogger("fws.http"), logging.DEBUG),
            error_log=LoggingLogAdapter(logging.getLogger("fws.http"), logging.ERROR),
            **kwargs,
        )
        if self.metrics is not None and self.metrics_port is not None:
            try:
                listener = _metrics_listener(
                    self.host, self.metrics_port, self.metrics.multiprocess
                )
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot listen on {self.host}:{self.metrics_port} for metrics: "
                    f"{exc.strerror or exc}"
                ) from None
            self._metrics_wsgi = WSGIServer(
                listener,
                self.metrics.wsgi_app,
                log=LoggingLogAdapter(logging.getLogger("fws.http"), logging.DEBUG),
                error_log=LoggingLogAdapter(logging.getLogger("fws.http"), logging.ERROR),
            )
        # The storage is ready (subscribed, state written) before the first
        # client can arrive; if it fails, nothing is bound yet.
        try:
            self.storage_object.open(self)
        except BaseException:
            if self._metrics_wsgi is not None:
                self._metrics_wsgi.close()
            raise
        try:
            self._wsgi.start()
            if self._metrics_wsgi is not None:
                self._metrics_wsgi.start()
        except BaseException:
            self._wsgi.close()
            if self._metrics_wsgi is not None:
                self._metrics_wsgi.close()
            self.storage_object.close()
            raise
        self._greenlets = [
            gevent.spawn(self._consume),
            gevent.spawn(self.storage_object.listen),
            gevent.spawn(self._park_quiet_readers),
        ]
        settings = self.connection_settings
        if settings.ping_interval or settings.idle_timeout:
            self._greenlets.append(gevent.spawn(self._watch_liveness))
        if self.metrics is not None and self.metrics.multiprocess:
            self._greenlets.append(gevent.spawn(self._flush_metrics))
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info(
            "fws listening on %s://%s:%d; message pipeline: %r",
            "wss" if self.ssl_context else "ws",
            host,
            self.address[1],
            self.pipelines["message"],
        )
        if self.metrics_address is not None:
            log.info("metrics at http://%s:%d/metrics", host, self.metrics_address[1])

    @property
    def stopping(self) -> bool:
        """True from the moment ``stop()`` is called."""
        return self.table.stopping

    @property
    def pubsub_live(self) -> bool:
        """Health flag: whether messages from other servers can arrive now."""
        return self.storage_object.pubsub_live

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        if self._wsgi is None:
            raise RuntimeError("the server is not started")
        return self._wsgi.address[0], self._wsgi.server_port

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The bound (host, port) of ``metrics_port``; None when metrics share the main port."""
        if self._metrics_wsgi is None:
            return None
        return self._metrics_wsgi.address[0], self._metrics_wsgi.server_port

    def serve_forever(self) -> None:
        """Start if needed, then block until ``stop()`` has finished."""
        if self._wsgi is None:
            self.start()
        self._stopped.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, close every client with 1001, wait, then kill the rest.

        Idempotent: a second call waits for the first to finish. ``timeout``
        (default: ``close_timeout`` + 1 s) bounds the wait for clients.
        """
        if self.table.stopping:
            self._stopped.wait()
            return
        self.table.stopping = True
        deadline = time.monotonic() + (
            self.connection_settings.close_timeout + 1 if timeout is None else timeout
        )
        try:
            if self._wsgi is not None:
                self._wsgi.close()
                for connection in list(self.users.values()):
                    connection.close(1001, "server shutting down")
                # Handshakes in progress: new upgrades are closed with 1001 at once.
                self._wsgi.stop(timeout=max(deadline - time.monotonic(), 0))
                self._wait_for_connections(deadline)
                if self.users:
                    log.warning("%d clients did not close in time; cutting them", len(self.users))
                    for connection in list(self.users.values()):
                        connection.abort()
                    self._wait_for_connections(time.monotonic() + 1)
            self.storage_object.close()
            gevent.killall(self._greenlets, block=True, timeout=2)
            if self._metrics_wsgi is not None:
                self._metrics_wsgi.stop(timeout=1)
            if self.metrics is not None:
                self.metrics.close()
            log.info("fws stopped")
        finally:
            self._stopped.set()

    def _wait_for_connections(self, deadline: float) -> None:
        # Until every connection is closed and its disconnect pipeline has run.
        while (self.users or self.finishing) and time.monotonic() < deadline:
            gevent.sleep(0.02)

    # -- what connections and filters use -----------------------------------------

    def broadcast(
        self,
        data: str | bytes,
        *,
        exclude: str | None = None,
        to: Iterable[str] | None = None,
    ) -> int:
        """Send ``data`` to every open connection (or those whose id is in ``to``).

        The frame is encoded once and the same bytes are queued for every
        recipient; for permessage-deflate clients it is compressed once per
        codec setting (clients whose server side keeps no context share one
        compressed frame), or per client where the client's codec keeps context.
        The connection whose id is ``exclude`` (usually the sender) is
        skipped. Returns how many connections it was queued for.
        """
        frame = encode_message(data)
        compressed: dict[Any, bytes] = {}  # one deflated frame per shared codec setting
        if to is None:
            recipients: Iterable[Connection | None] = tuple(self.users.values())
        else:
            recipients = [self.users.get(connection_id) for connection_id in to]
        sent = plain = 0
        for connection in recipients:
            if connection is None or connection.id == exclude:
                continue
            deflate = connection.deflate
            if deflate is None:
                plain += connection.send_frame(frame, False)  # counted below, once for all
            elif deflate.shared_key is None:  # context takeover: its own stream
                sent += connection.send_frame(encode_message(data, deflate))
            else:
                shared = compressed.get(deflate.shared_key)
                if shared is None:
                    shared = compressed[deflate.shared_key] = encode_message(data, deflate)
                sent += connection.send_frame(shared)
        self.table.stats.count_sent(frame, plain)
        return sent + plain

    def negotiate_compression(self, offers: Sequence[ExtensionOffer]) -> PerMessageDeflate | None:
        """The permessage-deflate codec for a client's extension offers, or None."""
        if self.deflate_settings is None or not offers:
            return None
        negotiated = negotiate(offers, self.deflate_settings)
        return None if negotiated is None else negotiated[1]

    def dispatch(self, event: str, instance: Any, data: Any) -> Any:
        """Run an event's pipeline; a filter that raises is logged and drops the event."""
        pipeline = self.pipelines[event]
        if not pipeline:
            return data
        times = self._filter_times[event]
        if times is not None:  # metrics on: time one run in times.every
            countdown = times.countdown
            if not countdown:
                return self._timed_run(times, pipeline, event, instance, data)
            times.countdown = countdown - 1
        try:
            return pipeline.run(instance, data)
        except FilterError as exc:
            return self._filter_failed(event, instance, exc)

    def _timed_run(
        self, times: FilterTimes, pipeline: Pipeline, event: str, instance: Any, data: Any
    ) -> Any:
        """Run and time a pipeline; the run stands for itself and the untimed ones before it."""
        weight, times.weight = times.weight, times.every
        times.countdown = times.every - 1
        started = _perf_counter()
        try:
            return pipeline.run(instance, data)
        except FilterError as exc:
            return self._filter_failed(event, instance, exc)
        finally:
            elapsed = _perf_counter() - started
            times.counts[_bisect_left(FILTER_TIME_BUCKETS, elapsed)] += weight
            times.total += elapsed * weight

    def _filter_failed(self, event: str, instance: Any, exc: FilterError) -> Any:
        self.table.stats.filter_errors[event, exc.filter_name] += 1
        log.error(
            "%s filter %s raised on %r; the rest of its pipeline is skipped",
            event,
            exc.filter_name,
            instance,
            exc_info=exc.__cause__,
        )
        return DROP

    def _watch_liveness(self) -> None:
        """One greenlet for all connections: keepalive pings and the idle timeout.

        A ping goes to each connection every ``ping_interval``; one whose pong
        has not come back within ``ping_timeout`` is closed with 1011 (browsers
        cannot see a dead link otherwise). A connection that sent no message for
        ``idle_timeout`` is closed with 1001. One greenlet instead of a timer per
        connection keeps idle connections cheap.
        """
        settings = self.connection_settings
        periods = [
            p for p in (settings.ping_interval, settings.ping_timeout, settings.idle_timeout) if p
        ]
        tick = max(min(periods) / 4, 0.05)
        while True:
            gevent.sleep(tick)
            now = time.monotonic()
            for connection in tuple(self.users.values()):
                connection.check_liveness(now)

    def _park_quiet_readers(self) -> None:
        """Move connections that went quiet from a greenlet each to a watcher each.

        A greenlet blocked in recv costs about 7 kB (its saved C stack and a
        page of Python frame stack); a watcher about 100 bytes. Only connections
        in ``reading`` are visited, so the cost follows the active clients.
        """
        while True:
            gevent.sleep(PARK_AFTER / 2)
            now = time.monotonic()
            for connection in tuple(self.reading):
                connection.park_if_quiet(now)

    def _outbound_bytes(self) -> int:
        """Bytes queued to every client and not yet written (read at each metrics flush)."""
        return sum(connection.outbound_bytes for connection in tuple(self.users.values()))

    def _flush_metrics(self) -> None:
        """Multi-process mode: write this worker's counts where any worker's scrape sees them."""
        assert self.metrics is not None
        while True:
            gevent.sleep(FLUSH_INTERVAL)
            try:
                self.metrics.flush()
            except Exception:  # a full disk, say: metrics must not take the server down
                log.exception("flushing metrics failed")

    def _consume(self) -> None:
        while True:
            item = self.queue.get()
            self.dispatch("consumer", self, item)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI application for requests that are not WebSocket upgrades."""
        if self.metrics_app is not None and environ.get("PATH_INFO") == "/metrics":
            return self.metrics_app(environ, start_response)
        if self.static is not None:
            return self.static(environ, start_response)
        start_response(
            "426 Upgrade Required",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(_UPGRADE_REQUIRED))),
                ("Upgrade", "websocket"),
                ("Connection", "close"),
            ],
        )
        self.table.stats.handshakes[426] += 1
        return [_UPGRADE_REQUIRED]

    def __repr__(self) -> str:
        return f"<fws.Server {self.host}:{self.port} {len(self.users)} connections>"


def _as_filters(pipeline: Any) -> tuple[Any, ...]:
    if isinstance(pipeline, Pipeline):
        return (pipeline,)
    if isinstance(pipeline, list | tuple):
        return tuple(pipeline)
    return (pipeline,)


def _metrics_listener(host: str, port: int, shared: bool) -> Any:
    """The metrics port's listening socket; ``shared``: workers bind it together.

    With workers (multi-process mode) every worker binds the port with
    SO_REUSEPORT and any of them answers a scrape with the sum of all;
    otherwise a second server on the port is an error, as for the main port.
    """
    family = gevent.socket.AF_INET6 if ":" in host else gevent.socket.AF_INET
    sock = gevent.socket.socket(family, gevent.socket.SOCK_STREAM)
    try:
        sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(**settings: Any) -> None:
    """Run a ``Server(**settings)`` until SIGINT or SIGTERM, then stop it cleanly.

    Call ``gevent.monkey.patch_all()`` first thing in the script, before other
    imports, so that blocking libraries the filters use cooperate with gevent.
    """
    server = Server(**settings)
    server.start()
    serve_until_signalled(server)


def serve_until_signalled(server: Server) -> None:
    """Block in ``server.serve_forever()``; SIGINT or SIGTERM stops it cleanly."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, server.stop)
    server.serve_forever()
