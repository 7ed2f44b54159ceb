"""``fws_server``: the command line (click lives only here).

Precedence, highest first: command line, environment (``FWS_PORT``,
``FWS_FILTERS``..., and the seed's ``STORAGE_OBJECT_MODULE``), config file
(``-c``), defaults. The original let a config file replace the whole command
line; fws lets the command line override it.

The seed's spellings keep working: several modules after one ``-f``
(``-f a b c``), ``-key``/``-cert`` with one dash, and storage options such as
``--redis_channels a b``.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from . import __version__
from .allocator import tune_for_server
from .config import read_config
from .deflate import COMPRESSION_CHOICES, DeflateSettings
from .errors import BackgroundTaskFailed, ConfigurationError
from .events import WebSocketConnectFilter
from .hub_errors import log_hub_errors
from .logformat import LOG_FORMATS, configure_logging
from .modules import (
    builtin_filter_names,
    load_filter_module,
    load_storage_class,
    load_wsgi_app,
)
from .pending import raise_descriptor_limit
from .registry import Registry, filters_defined_in
from .storage.base import Storage
from .storage.memory import MemoryStorage
from .supervisor import resolve_workers

__all__ = ["build_command", "main"]

log = logging.getLogger("fws.cli")

DEFAULT_FILTERS = ("broadcast_messages", "stdout_messages")
STORAGE_ENVVARS = ("FWS_STORAGE", "STORAGE_OBJECT_MODULE")
LOG_LEVELS = ("debug", "info", "warning", "error")


class FwsCommand(click.Command):
    """A click command that also accepts the seed's multi-value options."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_multiple_values(self.params, args))


def spread_multiple_values(params: Sequence[click.Parameter], args: Sequence[str]) -> list[str]:
    """Rewrite ``-f a b c`` as ``-f a -f b -f c`` for every ``multiple`` option."""
    multiple = {
        name
        for param in params
        if isinstance(param, click.Option) and param.multiple
        for name in param.opts
    }
    result: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        result.append(arg)
        position += 1
        if arg == "--":
            result.extend(args[position:])
            break
        if arg in multiple and position < len(args):
            result.append(args[position])
            position += 1
            while position < len(args) and not args[position].startswith("-"):
                result.extend((arg, args[position]))
                position += 1
    return result


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """Eager ``-c`` callback: the config file becomes click's default map."""
    if path is None:
        return None
    try:
        config = read_config(path)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None
    # A key is an option's long name (dashes or underscores) or its parameter
    # name: "origin" and "origins" both set --origin.
    options: dict[str, click.Option] = {}
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name not in ("config", "help", "version"):
            options[param.name] = param
            for opt in param.opts:
                if opt.startswith("--"):
                    options.setdefault(opt[2:].replace("-", "_"), param)
    defaults: dict[str, Any] = {}
    for key, value in config.items():
        if key == "flags":
            flags = [value] if isinstance(value, str) else value
            if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
                raise click.BadParameter(f"{path}: 'flags' must be a list of option names")
            for flag in flags:
                option = options.get(flag.lstrip("-").replace("-", "_"))
                if option is None or not option.is_flag:
                    raise click.BadParameter(
                        f"{path}: 'flags' names {flag!r}, which is not a boolean option"
                    )
                defaults[option.name] = True
        elif key == "storage":
            continue  # already used to choose the storage options (see choose_storage)
        elif key not in options:
            known = sorted({"flags", *(o.name for o in options.values() if o.name)})
            listed = ", ".join(known)
            raise click.BadParameter(f"{path}: unknown key {key!r}; known keys: {listed}")
        else:
            option = options[key]
            defaults[option.name] = _config_value(path, key, option, value)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _config_value(path: str, key: str, option: click.Option, value: Any) -> Any:
    """A config value as the command line would give it, or ``BadParameter`` saying why.

    JSON can hold what no command line can (a list for a single value, an
    object, null, true for a text option); those are refused here, once for
    every option, rather than reaching the code that uses the value.
    """

    def is_scalar(item: Any) -> bool:
        return isinstance(item, str | int | float) and not isinstance(item, bool)

    if option.is_flag:
        if not isinstance(value, bool):
            raise click.BadParameter(f"{path}: {key!r} must be true or false")
        return value
    if option.multiple:
        items = value.split() if isinstance(value, str) else value  # "echo stdout_messages"
        if not isinstance(items, list) or not all(is_scalar(item) for item in items):
            raise click.BadParameter(
                f"{path}: {key!r} must be a list of values or a space-separated string"
            )
        return [str(item) for item in items]
    if not is_scalar(value):
        raise click.BadParameter(f"{path}: {key!r} must be a string or a number")
    return str(value)


def prescan_option(
    args: Sequence[str],
    environ: dict[str, str] | os._Environ[str],
    option: str,
    envvars: Sequence[str],
) -> str | None:
    """An option's value before click parses the command line, or None if unset.

    For the few options that decide how parsing itself goes (``--storage``
    chooses which options exist, ``--workers`` whether this process patches
    gevent). Same precedence as every option: the command line, the
    environment, the config file's key (the option's name), no value; and,
    as click does, the last of an option given twice.
    """
    given = _last_value(args, (f"--{option}",))
    if given is not None:
        return given
    for name in envvars:
        if environ.get(name):
            return environ[name]
    path = _last_value(args, ("-c", "--config"))
    if path is not None:
        try:
            configured = read_config(path).get(option)
        except ConfigurationError:
            return None  # reported properly when -c is parsed
        if configured is not None and configured != "":
            return str(configured)
    return None


def _last_value(args: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of the last of ``names`` in ``args`` (``--name value`` or ``--name=value``)."""
    value = None
    for position, arg in enumerate(args):
        if arg in names and position + 1 < len(args):
            value = args[position + 1]
        elif arg.startswith("--") and arg.partition("=")[0] in names and "=" in arg:
            value = arg.partition("=")[2]
    return value


def choose_storage(args: Sequence[str], environ: dict[str, str] | os._Environ[str]) -> str:
    """The storage name before parsing, since it decides which options exist."""
    return prescan_option(args, environ, "storage", STORAGE_ENVVARS) or "default"


def _storage_click_options(storage_class: type[Storage]) -> list[click.Option]:
    options = []
    for option in storage_class.options:
        names = [f"--{option.name}"]
        if "_" in option.name:
            names.append(f"--{option.name.replace('_', '-')}")
        options.append(
            click.Option(
                [*names, option.name],
                type=option.type,
                default=option.default,
                multiple=option.multiple,
                show_default=True,
                help=option.help,
            )
        )
    return options


# Limits: (Server keyword, type, help). The defaults are read from Server's
# signature, so the library and the command line cannot disagree; the option
# is the keyword with dashes, and 0 on the command line is None (off).
LIMITS: tuple[tuple[str, type, str], ...] = (
    ("max_message_size", int, "Largest message a client may send, in bytes (close 1009)."),
    ("max_outbound_bytes", int, "Bytes queued for a client before it is closed as too slow."),
    ("max_connections", int, "Open connections above which new clients get HTTP 503, "
     "before their request is read."),
    ("max_pending_handshakes", int, "Connections accepted but not yet upgraded; a new one "
     "beyond it cuts the oldest, so silent connections cannot use up descriptors."),
    ("max_header_bytes", int, "Largest HTTP request head (request line and headers), in "
     "bytes (HTTP 431)."),
    ("handshake_timeout", float, "Seconds a client has to complete the HTTP upgrade."),
    ("max_messages_per_second", float, "Messages (pings count too) each client may send per "
     "second, on average; a client over it is closed with 1008 'rate limit'."),
    ("message_burst", int, "Messages a client may send at once within "
     "--max-messages-per-second (the token bucket's size). 0: twice the rate."),
    ("ping_interval", float, "Seconds between keepalive pings."),
    ("ping_timeout", float, "Seconds to wait for a pong before closing with 1011."),
    ("idle_timeout", float, "Close clients that send no message for this many seconds."),
    ("max_consumer_queue", int, "Items (pub/sub messages) waiting for the consumer pipeline; "
     "when it is full new items are dropped, counted and logged, never left to grow "
     "memory or to stall the pub/sub listener."),
    # Not a limit, but the same kind of option: a number from Server, 0 for off.
    ("busy_poll_us", int, "Microseconds the server keeps polling, without sleeping, after "
     "a client's reader starts to wait, while clients' next messages keep coming that soon: "
     "lower latency for chatty clients for some CPU; it stops by itself when they pause."),
)


def _server_default(name: str) -> Any:
    from .server import Server

    return inspect.signature(Server).parameters[name].default


def _limit_options() -> list[click.Option]:
    return [
        click.Option(
            [f"--{name.replace('_', '-')}"],
            type=click.IntRange(min=0) if kind is int else click.FloatRange(min=0),
            default=_server_default(name) or 0,
            show_default=True,
            help=text if " 0: " in text else f"{text} 0: off.",
        )
        for name, kind, text in LIMITS
    ]


def _jwt_options() -> list[click.Option]:
    """JWT at the door (-f jwt_auth); click spells the environment FWS_JWT_SECRET etc."""
    return [
        click.Option(
            ["--jwt-secret"],
            help="jwt_auth: HMAC secret (HS256); prefer $FWS_JWT_SECRET: ps shows arguments.",
        ),
        click.Option(
            ["--jwt-key-file"],
            type=click.Path(dir_okay=False),
            help="jwt_auth: PEM public key or certificate (RS256, ES256 or EdDSA tokens).",
        ),
        click.Option(
            ["--jwt-algorithms"],
            multiple=True,
            metavar="ALG...",
            help="jwt_auth: accepted algorithms. Default: HS256 with a secret, the key's own "
            "(RS256, ES256, EdDSA) with a key file; HMAC with a key file is refused.",
        ),
        click.Option(["--jwt-audience"], help="jwt_auth: required 'aud' claim."),
        click.Option(["--jwt-issuer"], help="jwt_auth: required 'iss' claim."),
        click.Option(
            ["--jwt-leeway"],
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="jwt_auth: seconds of clock skew allowed for exp, nbf and iat.",
        ),
        click.Option(
            ["--jwt-cookie"],
            metavar="NAME",
            help="jwt_auth: also read the token from this cookie.",
        ),
    ]


def _jwt_keywords(registry: Registry, options: dict[str, Any]) -> dict[str, Any]:
    """``Server`` keywords that give the jwt_auth filters their settings (``--jwt-*``).

    The connect pipeline is passed explicitly, with every ``JwtAuth`` class
    of the registry replaced by an instance holding the settings.
    """
    given = {name: options.pop(name) for name in list(options) if name.startswith("jwt_")}
    auth = sys.modules.get("fws.filters.jwt_auth")  # imported by -f jwt_auth, or a subclass
    connect = registry.filters(WebSocketConnectFilter)
    if auth is None or not any(issubclass(f, auth.JwtAuth) for f in connect):
        if any(given.values()):
            log.warning("--jwt-* options have no effect without -f jwt_auth")
        return {}
    if not (given["jwt_secret"] or given["jwt_key_file"]):
        raise ConfigurationError(
            "-f jwt_auth needs --jwt-secret or --jwt-key-file (or $FWS_JWT_SECRET, "
            "$FWS_JWT_KEY_FILE); without one no client could be verified"
        )
    key_file = given["jwt_key_file"]
    settings = auth.JwtSettings(
        secret=given["jwt_secret"] or None,
        public_key=auth.load_public_key(key_file) if key_file else None,
        algorithms=tuple(given["jwt_algorithms"]),
        audience=given["jwt_audience"],
        issuer=given["jwt_issuer"],
        leeway=given["jwt_leeway"],
        cookie=given["jwt_cookie"],
    )
    return {"connect": [f(settings) if issubclass(f, auth.JwtAuth) else f for f in connect]}


class WorkersType(click.ParamType):
    """``--workers``: a positive number, or ``auto`` for one per CPU."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not a positive number of workers or 'auto'", param, ctx)


def choose_workers(args: Sequence[str], environ: dict[str, str] | os._Environ[str]) -> int:
    """How many workers, before parsing: one decides whether this process patches gevent.

    The supervisor of ``--workers N`` must not be monkey-patched (it forks and
    waits as a plain process), while a single server patches first thing.
    Same precedence as the options; an unusable value counts as 1 and is
    reported by click.
    """
    value = prescan_option(args, environ, "workers", ("FWS_WORKERS",))
    try:
        return resolve_workers(WorkersType().convert(value or 1, None, None))
    except click.BadParameter:
        return 1


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
    params: list[click.Parameter] = [
        click.Option(
            ["-c", "--config"],
            type=click.Path(dir_okay=False),
            is_eager=True,
            expose_value=False,
            callback=_load_config,
            help="JSON config file; keys are long option names. The command line overrides it.",
        ),
        click.Option(
            ["-p", "--port"],
            type=click.IntRange(0, 65535),
            default=_server_default("port"),
            show_default=True,
            help="TCP port; 0 picks a free one.",
        ),
        click.Option(
            ["--host"],
            default=_server_default("host"),
            show_default=True,
            help="Interface to listen on (0.0.0.0: all IPv4 interfaces; '::' IPv4 and IPv6).",
        ),
        click.Option(
            ["-f", "--filters"],
            multiple=True,
            default=DEFAULT_FILTERS,
            show_default=True,
            metavar="MODULE...",
            help="Filter modules, in pipeline order: built-in names ("
            + ", ".join(builtin_filter_names())
            + "), dotted module names, ./file.py paths.",
        ),
        click.Option(
            ["--key", "-key"],
            type=click.Path(dir_okay=False),
            help="TLS private key file (PEM); with --cert clients use wss://.",
        ),
        click.Option(
            ["--cert", "-cert"],
            type=click.Path(dir_okay=False),
            help="TLS certificate chain file (PEM).",
        ),
        click.Option(
            ["--storage"],
            default=storage_name,
            show_default=True,
            help="Storage backend (default, memory, redis, or a module); also "
            "$STORAGE_OBJECT_MODULE. Its options are listed below.",
        ),
        *_storage_click_options(storage_class),
        *_limit_options(),
        click.Option(
            ["--origin", "origins"],
            multiple=True,
            metavar="URL...",
            help="Allowed Origin headers (e.g. https://chat.example); other browser origins "
            "get 403. Default: any.",
        ),
        click.Option(
            ["--subprotocol", "subprotocols"],
            multiple=True,
            metavar="NAME...",
            help="Subprotocols this server speaks, preferred first; the first one the client "
            "also offers is chosen. Clients offering none are let in unless "
            "--require-subprotocol.",
        ),
        click.Option(
            ["--require-subprotocol"],
            is_flag=True,
            help="Refuse (HTTP 400) clients that offer none of the --subprotocol names.",
        ),
        click.Option(
            ["--compression"],
            type=click.Choice(COMPRESSION_CHOICES),
            default=_server_default("compression"),
            show_default=True,
            help="permessage-deflate for clients that offer it (RFC 7692), or off.",
        ),
        click.Option(
            ["--compression-min-size"],
            type=click.IntRange(min=0),
            default=DeflateSettings.compress_min_size,
            show_default=True,
            help="With --compression deflate: messages shorter than this many bytes are "
            "sent uncompressed.",
        ),
        click.Option(
            ["--trusted-proxy", "trusted_proxies"],
            multiple=True,
            metavar="CIDR...",
            help="Proxies (addresses or networks) whose X-Forwarded-For / Forwarded headers "
            "name the client; from anyone else those headers are ignored.",
        ),
        click.Option(
            ["--close-timeout"],
            type=click.FloatRange(min=0, min_open=True),
            default=_server_default("close_timeout"),
            show_default=True,
            help="Seconds a client has to answer a close before the socket is cut.",
        ),
        click.Option(
            ["--static"],
            type=click.Path(exists=True, file_okay=False),
            metavar="DIR",
            help="Serve DIR's files to plain HTTP GET/HEAD requests (index.html at /); "
            "without it they get 426.",
        ),
        click.Option(
            ["--app"],
            metavar="MODULE:NAME",
            help="A WSGI application (Flask, Django, any) that gets the plain HTTP requests: "
            "one port for the site and its sockets. MODULE is found as -f modules are "
            "(dotted name, current directory included, or ./file.py); NAME defaults to "
            "'app'. Not with --static.",
        ),
        click.Option(
            ["--health/--no-health"],
            default=_server_default("health"),
            show_default=True,
            help="Answer GET /health (200 while the process serves) and GET /ready (200 when "
            "listening, storage live and not draining, else 503 with a JSON reason). "
            "--no-health leaves those paths to --app or --static.",
        ),
        click.Option(
            ["--drain-delay"],
            type=click.FloatRange(min=0),
            default=_server_default("drain_delay"),
            show_default=True,
            metavar="SECONDS",
            help="On SIGTERM or SIGINT, keep the port open this long while /ready answers 503 "
            "and new WebSocket clients get 503, so a load balancer stops sending clients "
            "here; then close clients with 1001. Set it above the balancer's check interval "
            "times its fall count. A second SIGINT (Ctrl-C) exits at once; a repeated SIGTERM "
            "changes nothing.",
        ),
        click.Option(
            ["--metrics/--no-metrics"],
            default=True,
            show_default=True,
            help="Serve Prometheus metrics at GET /metrics (on the main port, or on "
            "--metrics-port). With PROMETHEUS_MULTIPROC_DIR set, workers' metrics are summed.",
        ),
        click.Option(
            ["--metrics-port"],
            type=click.IntRange(0, 65535),
            metavar="PORT",
            help="Serve /metrics, /health and /ready on this port instead of /metrics on the "
            "main port. It binds --host too unless --metrics-host says otherwise; use a "
            "firewall or --metrics-host to keep it private. Probes here still answer at "
            "--max-connections, where the main port refuses every new connection with 503.",
        ),
        click.Option(
            ["--metrics-host"],
            metavar="HOST",
            help="Address for --metrics-port to bind (default: --host), e.g. 127.0.0.1 to "
            "keep metrics and probes off the public interface.",
        ),
        click.Option(
            ["--log-level"],
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            default="info",
            show_default=True,
            help="Least severe messages logged (to stderr).",
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(LOG_FORMATS, case_sensitive=False),
            default="text",
            show_default=True,
            help="Log lines on stderr: text (one readable line each, for a terminal or "
            "journalctl) or json (one JSON object per line with the fields as keys, for a "
            "log collector). Text is the default because a person running the server "
            "reads it first; client-sent values are escaped in both.",
        ),
        click.Option(["-q", "--quiet"], is_flag=True, help="Log only warnings and errors."),
        click.Option(
            ["--workers"],
            type=WorkersType(),
            default=1,
            show_default=True,
            help="Worker processes sharing the port (auto: one per CPU). Above 1 a "
            "supervisor restarts workers that die and replaces them one at a time on "
            "SIGHUP; needs --storage redis, since workers share clients only through it.",
        ),
        *_jwt_options(),
    ]

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
        params=params,
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
    if options["metrics_port"] is not None and not options["metrics"]:
        raise click.UsageError("--metrics-port needs metrics on (drop --no-metrics)")
    if options["metrics_host"] is not None and options["metrics_port"] is None:
        raise click.UsageError("--metrics-host needs --metrics-port")


def _supervise(
    storage_class: type[Storage], options: dict[str, Any], workers: int, argv: Sequence[str]
) -> None:
    """``--workers N`` with N > 1: bind the port, then run the supervisor.

    Checks what can be checked without loading application code (the
    supervisor imports none); the rest, such as a filter module that does not
    load, stops the first worker, and the supervisor with its status.
    """
    from .supervisor import Supervisor, bind_listener, worker_command

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
    from .listeners import tls_context
    from .server import Server
    from .serving import serve_until_signalled

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
