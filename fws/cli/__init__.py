"""``fws_server``: the command line; click lives only in this package (``fws.cli``).

Precedence, highest first: command line, environment (``FWS_PORT``,
``FWS_FILTERS``..., and the seed's ``STORAGE_OBJECT_MODULE``), config file
(``-c``), defaults. The original let a config file replace the whole command
line; fws lets the command line override it.

The seed's spellings keep working: several modules after one ``-f``
(``-f a b c``), ``-key``/``-cert`` with one dash, and storage options such as
``--redis_channels a b``.

This module builds the command and runs it (one server, or the supervisor of
``--workers N``), and is the console script's entry point: the one place
gevent is patched. The options themselves are ``fws.cli.options``; the
config file and the pre-scan of ``--storage`` and ``--workers`` are
``fws.cli.inputs``. ``choose_storage``, ``choose_workers`` and
``spread_multiple_values`` are still importable from here, where the tests
import them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from .. import __version__
from ..allocator import tune_for_server
from ..collector import tune_collector
from ..deflate import DeflateSettings
from ..errors import BackgroundTaskFailed, ConfigurationError
from ..logformat import configure_logging
from ..metrics import metrics_settings_problem
from ..modules import load_filter_module, load_storage_class, load_wsgi_app
from ..pending import raise_descriptor_limit
from ..registry import Registry, filters_defined_in
from ..storage.base import Storage
from ..storage.memory import MemoryStorage
from ..supervisor import resolve_workers
from .inputs import choose_storage, choose_workers, spread_multiple_values
from .options import LIMITS, _jwt_keywords, command_params

__all__ = ["build_command", "main"]

log = logging.getLogger("fws.cli")


class FwsCommand(click.Command):
    """A click command that also accepts the seed's multi-value options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_multiple_values(self.params, args))


def build_command(
    storage_name: str,
    storage_class: type[Storage],
    *,
    argv: Sequence[str] = (),
    listener: socket.socket | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> click.Command:
    """The ``fws_server`` command, with the chosen storage's options added.

    ``argv`` is the command line, which ``--workers N`` passes on to each
    worker. ``listener`` and ``on_ready`` are set in a worker (``fws.worker``):
    the socket inherited from the supervisor, and what to call with the
    started ``Server`` once clients are accepted.
    """

    def run(**options: Any) -> None:
        _check_options(options)
        if listener is None:
            workers = resolve_workers(options.pop("workers"))
            if workers > 1:
                _supervise(storage_class, options, workers, argv)
                return
        else:
            options.pop("workers")
        _serve(storage_class, options, listener=listener, on_ready=on_ready)

    command = FwsCommand(
        "fws_server",
        params=command_params(storage_name, storage_class),
        callback=run,
        help="Run a Filtered WebSocket server whose behaviour is the filter modules given.",
        context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FWS"},
    )
    click.version_option(__version__, "--version", prog_name="fws_server")(command)
    return command


def _configure_logging(options: dict[str, Any]) -> None:
    configure_logging(
        "WARNING" if options["quiet"] else options["log_level"].upper(),
        options["log_format"].lower(),
        sys.stderr,
    )


def _cannot_listen(options: dict[str, Any], exc: OSError) -> click.ClickException:
    # gevent's errors carry the address in strerror too: the errno's own text.
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return click.ClickException(f"cannot listen on {options['host']}:{options['port']}: {reason}")


def _check_options(options: dict[str, Any]) -> None:
    """Combinations of options that cannot work, refused once, before any worker starts."""
    if options["key"] and not options["cert"]:
        raise click.UsageError("--key needs --cert (the certificate that goes with the key)")
    if options["require_subprotocol"] and not options["subprotocols"]:
        raise click.UsageError("--require-subprotocol needs at least one --subprotocol NAME")
    if options["app"] and options["static"]:
        raise click.UsageError(
            "--app and --static cannot be combined: the app gets every plain HTTP request, "
            "so serve the files from the app"
        )
    if options["message_burst"] and not options["max_messages_per_second"]:
        raise click.UsageError("--message-burst needs --max-messages-per-second RATE")
    problem = metrics_settings_problem(
        options["metrics"], options["metrics_port"], options["metrics_host"]
    )
    if problem is not None:
        raise click.UsageError(problem)


def _supervise(
    storage_class: type[Storage], options: dict[str, Any], workers: int, argv: Sequence[str]
) -> None:
    """``--workers N`` with N > 1: bind the port, then run the supervisor.

    Checks what can be checked without loading application code (the
    supervisor imports none); the rest, such as a filter module that does not
    load, stops the first worker, and the supervisor with its status.
    """
    from ..supervisor import Supervisor, bind_listener, worker_command

    _configure_logging(options)
    if issubclass(storage_class, MemoryStorage):
        click.echo(
            f"fws_server: error: --workers {workers} needs a shared storage (--storage redis): "
            "with the in-memory storage each worker would see only its own clients",
            err=True,
        )
        sys.exit(2)
    try:
        listener = bind_listener(options["host"], options["port"])
    except OSError as exc:
        raise _cannot_listen(options, exc) from None
    supervisor = Supervisor(
        [*worker_command(), *argv],
        workers,
        listener,
        # A worker's own stop: drain_delay with the port open, close_timeout
        # + 1 s for clients, up to 1 s to cut them and 2 s for its background
        # work; then a margin.
        shutdown_timeout=options["drain_delay"] + options["close_timeout"] + 10,
        tls=bool(options["cert"]),
    )
    try:
        status = supervisor.run()
    finally:
        listener.close()
    sys.exit(status)


def _serve(
    storage_class: type[Storage],
    options: dict[str, Any],
    *,
    listener: socket.socket | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> None:
    from ..hub_errors import log_hub_errors  # gevent: imported once it is patched
    from ..listeners import tls_context
    from ..server import Server
    from ..serving import serve_until_signalled

    _configure_logging(options)
    log_hub_errors()
    storage_options = {opt.name: options.pop(opt.name) for opt in storage_class.options}
    try:
        loaded = [load_filter_module(name) for name in options["filters"]]
        app = load_wsgi_app(options["app"]) if options["app"] else None
        ssl_context = tls_context(options["cert"], options["key"]) if options["cert"] else None
        storage = storage_class(**storage_options)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    # A module named twice (-f echo echo, or echo and fws.filters.echo) adds its
    # filters once, where it first appears.
    modules = list(dict.fromkeys(loaded))
    if len(modules) < len(loaded):
        log.warning("filter modules named more than once are loaded once")
    for module in modules:
        if not filters_defined_in(module):
            log.warning("filter module %s defines no filters", module.__name__)
    registry = Registry.from_modules(modules)
    limits: dict[str, Any] = {name: options[name] or None for name, _, _ in LIMITS}
    try:
        jwt_keywords = _jwt_keywords(registry, options)
        server = Server(
            host=options["host"],
            port=options["port"],
            listener=listener,
            registry=registry,
            storage=storage,
            ssl_context=ssl_context,
            origins=options["origins"] or None,
            subprotocols=options["subprotocols"],
            require_subprotocol=options["require_subprotocol"],
            compression=(
                DeflateSettings(compress_min_size=options["compression_min_size"])
                if options["compression"] == "deflate"
                else "off"
            ),
            trusted_proxies=options["trusted_proxies"],
            **limits,
            close_timeout=options["close_timeout"],
            static=options["static"],
            app=app,
            health=options["health"],
            ready_needs_storage=options["ready_needs_storage"],
            drain_delay=options["drain_delay"],
            metrics=options["metrics"],
            metrics_port=options["metrics_port"],
            metrics_host=options["metrics_host"],
            **jwt_keywords,
        )
    except ConfigurationError as exc:  # unusable --jwt-* settings, a bad --trusted-proxy
        storage.close()
        raise click.UsageError(str(exc)) from None
    try:
        server.start()
    except ConfigurationError as exc:  # a filter that cannot be one
        storage.close()
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        storage.close()
        raise _cannot_listen(options, exc) from None
    tune_collector()  # everything made so far lives as long as the process
    if on_ready is not None:
        on_ready(server)
    try:
        serve_until_signalled(server)
    except BackgroundTaskFailed as exc:  # logged with its traceback already
        raise click.ClickException(str(exc)) from None


def main(
    argv: Sequence[str] | None = None,
    *,
    listener: socket.socket | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> None:
    """Console-script entry point: patch gevent first, then run the command.

    With ``--workers N`` (N > 1) this process is the supervisor and is not
    patched; each worker (``fws.worker``) patches itself and calls this with
    the inherited ``listener`` and its ``on_ready`` callback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if listener is not None or choose_workers(args, os.environ) == 1:
        from gevent import monkey

        monkey.patch_all()
        tune_for_server()
        raise_descriptor_limit()
    storage_name = choose_storage(args, os.environ)
    try:
        storage_class = load_storage_class(storage_name)
    except ConfigurationError as exc:
        click.echo(f"fws_server: error: {exc}", err=True)
        sys.exit(2)
    build_command(
        storage_name, storage_class, argv=args, listener=listener, on_ready=on_ready
    ).main(args=args, prog_name="fws_server")
