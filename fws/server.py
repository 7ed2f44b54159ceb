"""The fws server: gevent's pywsgi, a greenlet per active connection, pipelines per event.

``Server`` owns the listening socket, the connections (``users``), the queue
the consumer pipeline reads and the storage object. It builds one ``Pipeline``
per event when it starts: the one passed for that event, or else the one the
registry holds for it.

The plumbing under it (pywsgi's servers, TLS, the metrics port's socket) is
``fws.listeners``; running a server until a signal stops it is
``fws.serving``. ``serve``, ``serve_until_signalled`` and ``tls_context``
are still importable from here, where scripts and the docs name them.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
import time
from collections.abc import Collection, Iterable, Sequence
from functools import partial
from typing import Any

import gevent
import gevent.event
import gevent.pool
import gevent.ssl
from gevent.pywsgi import WSGIServer

from ._accel import IMPLEMENTATION
from .after_input import AfterInput
from .busy_poll import BusyPoll
from .connection import PARK_AFTER, Connection
from .consumer import ConsumerQueue
from .context import BACKLOG, ConnectionSettings, ConnectionTable
from .datatypes import ExtensionOffer
from .deflate import COMPRESSION_CHOICES, DeflateSettings, PerMessageDeflate, negotiate
from .errors import BackgroundTaskFailed, ConfigurationError, FilterError
from .events import EVENTS
from .frames import encode_message
from .handshake import ConnectionHandler
from .http import WSGIApp, route, route_metrics_port
from .listeners import MetricsPort, WebSocketPort, http_logs, metrics_listener, tls_context
from .metrics import FLUSH_INTERVAL, Metrics, metrics_settings_problem
from .outbound import (
    check_thread,
    defer_broadcast,
    deliver_deferred,
    fan_out,
    flush_after_input,
)
from .pending import PendingHandshakes, fit_to_descriptors
from .pipeline import DROP, Pipeline
from .proxies import ProxyNetworks
from .registry import Registry, active_registry
from .serving import serve, serve_until_signalled  # re-exported: fws.server.serve and co.
from .static import StaticFiles
from .stats import SAMPLE_INTERVAL, FilterTimes
from .storage.base import Storage
from .storage.memory import MemoryStorage
from .supervise import supervised

__all__ = ["Server", "serve", "serve_until_signalled", "tls_context"]


log = logging.getLogger("fws.server")

_perf_counter = time.perf_counter  # a global, not an attribute lookup, on the per-message path


class Server:
    """A WebSocket server whose behaviour is its pipelines.

    Pipelines (``None``: take the event's pipeline from ``registry``, which
    defaults to the active registry; pass ``Pipeline()`` for none):
    ``connect``, ``open``, ``data``, ``message``, ``disconnect``, ``consumer``.

    ``max_connections`` counts open connections and upgrades in progress; a
    client accepted above it gets 503 before its request is read (so do plain
    HTTP requests). ``max_pending_handshakes`` bounds the TCP connections
    accepted but not yet upgraded; the oldest is cut to admit a new one (see
    ``fws.pending`` for why the oldest).

    ``max_messages_per_second`` limits each client's messages (and pings, which
    cost an answer) with a token bucket of ``message_burst`` messages (``None``:
    twice the rate, at least 1); a client over it is closed with 1008 "rate
    limit". Off by default: the right rate is the application's (a game sends
    60 a second, a chat one), and one fast client cannot starve the others
    anyway, since readers yield to the hub after every 1024 frames.
    """

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 9000,
        # An already bound and listening socket to accept on instead of binding
        # host:port: the one the fws supervisor shares between its workers.
        listener: socket.socket | None = None,
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
        max_pending_handshakes: int | None = 1024,
        origins: Collection[str] | None = None,
        max_header_bytes: int | None = 16 * 1024,
        max_messages_per_second: float | None = None,
        message_burst: int | None = None,
        # Items waiting for the consumer pipeline; a full queue drops new ones
        # (counted, and logged once per burst) rather than grow or block pub/sub.
        max_consumer_queue: int | None = 10_000,
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
        # Plain HTTP (requests that are not upgrades; see fws.http): the probes
        # /health and /ready (health=False leaves those paths to the app), then a
        # WSGI application of yours, or else the files of the static directory
        # (see fws.static); neither: 426 Upgrade Required.
        static: str | os.PathLike[str] | None = None,
        app: WSGIApp | None = None,
        health: bool = True,
        # Whether /ready answers 503 "storage unavailable" while the storage
        # (Redis) is out of reach; False: only draining and not listening count,
        # so a shared Redis going down does not take every server out of rotation.
        ready_needs_storage: bool = True,
        # Shutdown: seconds between "stop" and closing the listener, during which
        # /ready answers 503 "draining" and new upgrades get 503, so a load
        # balancer takes this server out of rotation first. 0: no drain.
        drain_delay: float = 0.0,
        # Prometheus metrics at GET /metrics (see fws.metrics): on the main port,
        # or on metrics_port when that is set, which also answers /health and
        # /ready (they still work there at max_connections); False: none at all.
        # metrics_host: the address metrics_port binds; None: the server's host.
        metrics: bool = True,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        # Busy polling (see fws.busy_poll): after a reader starts to wait, the
        # hub polls without sleeping for up to this many microseconds, while
        # clients' next messages keep arriving that soon. None or 0: never.
        busy_poll_us: int | None = 50,
        # Broadcasts to everyone wait for the hub to read what arrived (see
        # fws.after_input), this many microseconds at most. None or 0: they go
        # on the hub's next turn.
        broadcast_wait_us: int | None = 500,
    ) -> None:
        if close_timeout <= 0:
            raise ValueError("close_timeout must be more than 0 seconds")
        if busy_poll_us is not None and busy_poll_us < 0:
            raise ValueError("busy_poll_us must be 0 (off) or more microseconds")
        if broadcast_wait_us is not None and broadcast_wait_us < 0:
            raise ValueError("broadcast_wait_us must be 0 (off) or more microseconds")
        if drain_delay < 0:
            raise ValueError("drain_delay must be 0 or more seconds")
        if app is not None and not callable(app):
            raise ConfigurationError(f"app must be a WSGI application (a callable), not {app!r}")
        if app is not None and static is not None:
            raise ConfigurationError(
                "an app and a static directory cannot be combined: the app gets every plain "
                "HTTP request, so serve the files from the app"
            )
        self.host = host
        self.port = port
        self.busy_poll_us = busy_poll_us or 0
        self.broadcast_wait_us = broadcast_wait_us or 0
        self._listener = listener
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
        if max_messages_per_second is not None and max_messages_per_second <= 0:
            raise ConfigurationError("max_messages_per_second must be more than 0 (None: off)")
        if message_burst is None:
            message_burst = max(1, round(2 * (max_messages_per_second or 0)))
        elif max_messages_per_second is None:
            raise ConfigurationError("message_burst needs max_messages_per_second")
        elif message_burst < 1:
            raise ConfigurationError("message_burst must be at least 1")
        self.connection_settings = ConnectionSettings(
            max_message_size=max_message_size,
            max_outbound_bytes=max_outbound_bytes,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            idle_timeout=idle_timeout,
            close_timeout=close_timeout,
            max_messages_per_second=max_messages_per_second,
            message_burst=message_burst,
        )
        self.queue = ConsumerQueue(max_consumer_queue or None, on_drop=self._count_consumer_drop)
        """Items for the consumer pipeline; ``put`` never blocks (see ``fws.consumer``)."""
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
        self.app = app
        self.health = health
        self.ready_needs_storage = ready_needs_storage
        self.drain_delay = drain_delay
        self.draining = False
        """True from the moment ``stop()`` is called: /ready says 503, upgrades get 503."""
        self.upgrades_in_progress = 0
        """Handshakes accepted but not yet in ``users`` (they count for max_connections)."""
        try:
            self.pending_handshakes = PendingHandshakes(max_pending_handshakes, self.table.stats)
            """TCP connections accepted and not yet upgraded; see ``fws.pending``."""
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        problem = metrics_settings_problem(metrics, metrics_port, metrics_host)
        if problem is not None:
            raise ConfigurationError(problem)
        self.metrics: Metrics | None = None
        if metrics:
            self.metrics = Metrics(
                self.table.stats,
                connections=self.users.__len__,
                settle_connections=self._settle_connections,
                pubsub_live=lambda: self.storage_object.pubsub_live,
            )
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host if metrics_host is not None else host
        self.metrics_app: Any = (
            self.metrics.wsgi_app if self.metrics is not None and metrics_port is None else None
        )
        """WSGI app for plain ``GET /metrics`` on the main port; None: not served there."""
        self._metrics_wsgi: WSGIServer | None = None
        self._filter_times: dict[str, FilterTimes | None] = dict.fromkeys(EVENTS)
        """Per event, where this run's time goes; None: not timed (metrics off, or a
        per-message event between two samples, see ``fws.stats.SAMPLE_INTERVAL``)."""
        self._timed: dict[str, FilterTimes] = {}
        """The histograms of the events with filters, when metrics are on."""
        self._rearm: dict[str, Any] = {}
        """Per sampled event, the one-shot timer (made by ``_timed_run``) that has its next
        run timed; kept to be stopped when the server stops."""

        self._wsgi: WSGIServer | None = None
        self._greenlets: list[gevent.Greenlet] = []
        """Supervised tasks that can publish, the consumer first: stopped before the storage."""
        self._storage_listener: gevent.Greenlet | None = None
        self._consuming = False  # the consumer pipeline is running on an item
        self._failure: BackgroundTaskFailed | None = None
        self._stopped = gevent.event.Event()
        self._drain_cut = gevent.event.Event()
        self._accepting_stopped = False  # stop_accepting(): no drain needed

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Build the pipelines, bind the port and start serving in the background.

        Raises ``OSError`` if the address cannot be bound.
        """
        self._fit_pending_to_descriptors()
        self.table.hub = gevent.get_hub()
        registry = self._registry if self._registry is not None else active_registry()
        for event, root in EVENTS.items():
            explicit = self._explicit[event]
            if explicit is None:
                self.pipelines[event] = registry.pipeline(root)
            else:
                self.pipelines[event] = Pipeline(*_as_filters(explicit))
        if self.metrics is not None:
            # Timing costs two clock reads a run: only where filters run, only if exported.
            # Every event keeps a key (None: this run untimed), so that dispatch can
            # index the dict without a KeyError for a pipeline set after start.
            stats = self.table.stats
            self._timed = {
                event: stats.filter_time(event)
                for event, pipeline in self.pipelines.items()
                if pipeline
            }
            self._filter_times.update(self._timed)
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self._listener is None:
            kwargs["backlog"] = BACKLOG  # a given listener already has its own
        self._wsgi = WebSocketPort(
            self._listener if self._listener is not None else (self.host, self.port),
            self,
            handler_class=ConnectionHandler,
            spawn=gevent.pool.Pool(),
            **http_logs(),
            **kwargs,
        )
        if self._listener is not None:
            # Processes sharing one listening socket: take one connection per
            # wake-up (gevent takes up to 100), so that a burst of clients is
            # spread over the workers instead of going to whichever woke first.
            self._wsgi.max_accept = 1
        if self.metrics is not None and self.metrics_port is not None:
            try:
                listener = metrics_listener(
                    self.metrics_host, self.metrics_port, self.metrics.multiprocess
                )
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot listen on {self.metrics_host}:{self.metrics_port} for metrics: "
                    f"{exc.strerror or exc}"
                ) from None
            self._metrics_wsgi = MetricsPort(
                listener,
                self._serve_metrics_port,
                read_timeout=self.handshake_timeout,
                **http_logs(),
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
        if self.busy_poll_us:
            # On the hub of the thread that serves, once nothing can fail any more
            # (nothing yields before this: no reader can have run yet).
            self.table.busy_poll = BusyPoll(
                gevent.get_hub().loop, self.busy_poll_us * 1e-6, self.table.stats
            )
        if self.broadcast_wait_us:
            self.table.after_input = AfterInput(
                gevent.get_hub().loop,
                partial(flush_after_input, self.table),
                self.broadcast_wait_us * 1e-6,
            )
        self._greenlets = [
            supervised("consumer", self._consume, self._give_up),
            supervised("parking", self._park_quiet_readers, self._give_up),
        ]
        settings = self.connection_settings
        if settings.ping_interval or settings.idle_timeout:
            self._greenlets.append(supervised("liveness", self._watch_liveness, self._give_up))
        self._storage_listener = supervised(
            "storage listener", self.storage_object.listen, self._give_up
        )
        if self.metrics is not None and self.metrics.multiprocess:
            self._greenlets.append(supervised("metrics flush", self._flush_metrics, self._give_up))
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info(
            "fws listening on %s://%s:%d; message pipeline: %r; hot loops: %s",
            "wss" if self.ssl_context else "ws",
            host,
            self.address[1],
            self.pipelines["message"],
            IMPLEMENTATION,  # an operator comparing two hosts' speed sees why at once
        )
        if self.metrics_address is not None:
            metrics_host = self.metrics_host
            metrics_host = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
            log.info("metrics at http://%s:%d/metrics", metrics_host, self.metrics_address[1])

    def _fit_pending_to_descriptors(self) -> None:
        pending = self.pending_handshakes
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fitted = fit_to_descriptors(pending.limit, soft)
        if fitted != pending.limit:
            log.warning(
                "max_pending_handshakes %s lowered to %s: only %d file descriptors "
                "(ulimit -n); raise it for the full bound",
                pending.limit,
                fitted,
                soft,
            )
            pending.limit = fitted

    @property
    def stopping(self) -> bool:
        """True from the moment ``stop()`` is called."""
        return self.table.stopping

    def not_ready_reason(self) -> str | None:
        """Why new clients should go elsewhere now (``/ready``), or None when ready."""
        if self.draining or self.stopping:
            return "draining"
        if self._wsgi is None or not self._wsgi.started:
            return "not listening"
        if self.ready_needs_storage and not self.pubsub_live:
            return "storage unavailable"
        return None

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
        """Start if needed, then block until ``stop()`` has finished.

        Raises ``BackgroundTaskFailed`` if the server stopped itself because a
        background task kept dying (see ``fws.supervise``).
        """
        if self._wsgi is None:
            self.start()
        self._stopped.wait()
        if self._failure is not None:
            raise self._failure

    def _give_up(self, task: str, exc: BaseException) -> None:
        """A background task kept dying: stop, and make ``serve_forever`` say why."""
        self._failure = BackgroundTaskFailed(
            f"background task {task} kept failing ({type(exc).__name__}: {exc}); server stopped"
        )
        gevent.spawn(self.stop)

    def _count_consumer_drop(self) -> None:
        self.table.stats.consumer_dropped += 1

    def stop_accepting(self) -> None:
        """Accept no new clients; those connected and handshakes under way go on.

        A worker being replaced calls this first, so that the handshakes it
        has already accepted complete rather than get 503 from ``stop()``,
        while new clients go to the other workers sharing the socket. A later
        ``stop()`` then skips ``drain_delay``: no new client can arrive anyway.
        """
        if self._wsgi is not None:
            self._wsgi.stop_accepting()
            self._accepting_stopped = True

    def stop(self, timeout: float | None = None) -> None:
        """Drain, stop accepting, close every client with 1001, wait, then kill the rest.

        The drain (``drain_delay`` seconds, if any) keeps the port open while
        ``/ready`` answers 503 and new upgrades are refused with 503, so that
        load balancers stop sending clients here before the port closes;
        clients already connected are served meanwhile. After
        ``stop_accepting()`` there is no drain.

        Idempotent: a second call cuts the drain short, then waits for the first
        to finish. ``timeout`` (default: ``close_timeout`` + 1 s) bounds the
        wait for clients.
        """
        if self.draining:
            self._drain_cut.set()
            self._stopped.wait()
            return
        self.draining = True
        if self.drain_delay and self._wsgi is not None and not self._accepting_stopped:
            log.info(
                "draining for %g s: /ready answers 503, new clients are refused",
                self.drain_delay,
            )
            self._drain_cut.wait(self.drain_delay)
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
            # Whatever can publish stops before the storage closes: the
            # consumer pipeline gets what is left of the timeout (at least
            # 0.5 s) for the items the disconnect pipelines queued.
            self._drain_consumer(max(deadline, time.monotonic() + 0.5))
            gevent.killall(self._greenlets, block=True, timeout=2)
            self.queue.report_drops()
            self.storage_object.close()
            if self._storage_listener is not None:
                self._storage_listener.kill(block=True, timeout=2)
            if self._metrics_wsgi is not None:
                self._metrics_wsgi.stop(timeout=1)
            if self.metrics is not None:
                self.metrics.close()
            log.info("fws stopped")
        finally:
            for timer in self._rearm.values():
                timer.stop()
            if self.table.busy_poll is not None:
                self.table.busy_poll.close()
                self.table.busy_poll = None
            if self.table.after_input is not None:
                # Every connection was closed above, each close sending what
                # was deferred first (deliver_deferred): nothing waits here.
                self.table.after_input.stop()
                self.table.after_input = None
            self._stopped.set()

    def _drain_consumer(self, deadline: float) -> None:
        consumer = self._greenlets[0] if self._greenlets else None
        while consumer is not None and not consumer.dead and time.monotonic() < deadline:
            if not (self.queue.qsize() or self._consuming):
                break
            gevent.sleep(0.02)
        if self.queue.qsize():
            log.warning(
                "%d consumer queue items not processed before the storage closed",
                self.queue.qsize(),
            )

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

        The frame is encoded once and the same bytes go to every recipient;
        for permessage-deflate clients it is compressed once per codec
        setting (clients whose server side keeps no context share one
        compressed frame), or per client where the client's codec keeps context.
        The connection whose id is ``exclude`` (usually the sender) is
        skipped, and an id named twice in ``to`` gets the message once (a set
        is taken as it is; any other iterable is deduplicated, in its order).
        With ``to``, returns how many connections it was queued for.

        A broadcast to every connection is queued for nobody at once: the
        flusher sends each connection its share of the turn's broadcasts
        with the rest of its queue, in one call, once the hub has read what
        arrived meanwhile, ``broadcast_wait_us`` after the first at most
        (``fws.outbound.defer_broadcast``, ``fws.after_input``; anything
        queued meanwhile goes on the hub's next turn, and overtakes none of
        them). It returns how many connections it is for: every one in
        ``users`` (open, or closing and not yet gone; a closing one gets
        nothing), the ``exclude`` one not counted. While a connection's open
        pipeline runs, it is queued at once, as with ``to``. The loop that
        queues is ``fws.outbound.fan_out``: compiled, as the flusher's, where
        ``fws._speedups`` is built (see ``fws._accel``).
        """
        check_thread(self.table)  # before anything is queued
        frame = encode_message(data)
        first = frame[0]
        compressed: dict[Any, bytes] = {}  # one deflated frame per shared codec setting

        def deliver(connection: Connection) -> bool:
            # Any one recipient: the fan-out's own loop does only the common case.
            if connection.id == exclude:
                return False
            deflate = connection.deflate
            if deflate is None:
                return connection.send_message_frame(frame, first)
            if deflate.shared_key is None:  # context takeover: its own stream
                return connection.send_frame(encode_message(data, deflate))
            shared = compressed.get(deflate.shared_key)
            if shared is None:
                shared = compressed[deflate.shared_key] = encode_message(data, deflate)
            return connection.send_frame(shared)

        table = self.table
        users = self.users
        if to is None and not table.opening:
            defer_broadcast(table, frame, first, exclude, deliver)
            return len(users) - (exclude is not None and exclude in users)
        if table.deferred:  # they go first
            deliver_deferred(table)
        if to is None:
            recipients: Sequence[Connection | None] = tuple(users.values())
        else:
            if type(to) is not set and type(to) is not frozenset:
                to = dict.fromkeys(to)  # each id once, in order
            # Taken at once: a send cannot change ``to`` (a live group) mid-way.
            recipients = [users.get(connection_id) for connection_id in to]
        return fan_out(recipients, frame, first, exclude, deliver)

    def at_connection_limit(self) -> bool:
        """True when a new client is refused with 503 (``max_connections`` reached)."""
        limit = self.max_connections
        return limit is not None and len(self.users) + self.upgrades_in_progress >= limit

    def negotiate_compression(self, offers: Sequence[ExtensionOffer]) -> PerMessageDeflate | None:
        """The permessage-deflate codec for a client's extension offers, or None."""
        if self.deflate_settings is None or not offers:
            return None
        negotiated = negotiate(offers, self.deflate_settings)
        return None if negotiated is None else negotiated[1]

    def dispatch(self, event: str, instance: Any, data: Any) -> Any:
        """Run an event's pipeline; a filter that raises is logged and drops the event."""
        # No test for an empty pipeline: its run returns the data as it is, and
        # len() of a Pipeline is a Python call, dear on the per-message path.
        pipeline = self.pipelines[event]
        times = self._filter_times[event]
        if times is not None:  # metrics on, and this run is to be timed
            return self._timed_run(times, pipeline, event, instance, data)
        try:
            return pipeline.run(instance, data)
        except FilterError as exc:
            return self._filter_failed(event, instance, exc)

    def _timed_run(
        self, times: FilterTimes, pipeline: Pipeline, event: str, instance: Any, data: Any
    ) -> Any:
        """Run and time a pipeline; a per-message event's next run is timed after an interval."""
        if times.sampled:
            self._filter_times[event] = None
            # A new timer each time: libev keeps a fired one-shot timer's expiry
            # relative to when it fired, so restarting it fired it on the hub's
            # next turn, and every run of an echo with one message in flight
            # was timed. At most one a SAMPLE_INTERVAL: the allocation is free.
            timer = self._rearm[event] = gevent.get_hub().loop.timer(SAMPLE_INTERVAL)
            timer.start(self._time_next_run, event)
        started = _perf_counter()
        try:
            return pipeline.run(instance, data)
        except FilterError as exc:
            return self._filter_failed(event, instance, exc)
        finally:
            times.observe(_perf_counter() - started)

    def _time_next_run(self, event: str) -> None:
        # In the hub, SAMPLE_INTERVAL after a timed run.
        if event in self._timed and not self._stopped.is_set():
            self._filter_times[event] = self._timed[event]

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

    def _settle_connections(self) -> int:
        """At each metrics flush: every connection adds the messages it sent since the
        last (``Connection.flush_sent_counts``); returns the bytes queued to clients.

        One pass over the connections does both (the flush visits them anyway).
        """
        queued = 0
        for connection in tuple(self.users.values()):
            connection.flush_sent_counts()
            queued += connection.outbound_bytes
        return queued

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
            self._consuming = True
            try:
                self.dispatch("consumer", self, item)
            finally:
                self._consuming = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI application for requests that are not WebSocket upgrades (see fws.http)."""
        return route(self, environ, start_response)

    def _serve_metrics_port(self, environ: dict[str, Any], start_response: Any) -> Any:
        """WSGI application of the metrics port: probes and /metrics (``fws.http``)."""
        assert self.metrics is not None
        return route_metrics_port(self, self.metrics.wsgi_app, environ, start_response)

    def count_upgrade_required(self) -> None:
        """Count a plain request answered 426 (see ``fws.http.route``)."""
        self.table.stats.handshakes[426] += 1

    def __repr__(self) -> str:
        return f"<fws.Server {self.host}:{self.port} {len(self.users)} connections>"


def _as_filters(pipeline: Any) -> tuple[Any, ...]:
    if isinstance(pipeline, Pipeline):
        return (pipeline,)
    if isinstance(pipeline, list | tuple):
        return tuple(pipeline)
    return (pipeline,)
