"""The options of ``fws_server``: names, types, defaults, help text and their order.

Everything ``fws_server --help`` and the generated CLI reference show comes
from here, in the order shown, and nothing here runs a server: building the
command and what it does when run is ``fws.cli``. The defaults that the
library also has are read from ``Server``'s signature (``_server_default``),
so the two cannot disagree. The ``--jwt-*`` options are defined here with
``_jwt_keywords``, which turns them into ``Server`` keywords, so that an
option and what it means stay side by side.

Apart from ``fws.cli`` because defining some fifty options is a job of its
own, and a long one; importing this module imports neither gevent nor the
server (``Server`` is imported only when a default is read).
"""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any

import click

from ..deflate import COMPRESSION_CHOICES, DeflateSettings
from ..errors import ConfigurationError
from ..events import WebSocketConnectFilter
from ..logformat import LOG_FORMATS
from ..modules import builtin_filter_names
from ..registry import Registry
from ..storage.base import Storage
from .inputs import WorkersType, _load_config

__all__ = ["DEFAULT_FILTERS", "LIMITS", "LOG_LEVELS", "command_params"]

# "fws.cli", the logger name operators already filter on (the --jwt-* warning).
log = logging.getLogger("fws.cli")

DEFAULT_FILTERS = ("broadcast_messages", "stdout_messages")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    (
        "max_connections",
        int,
        "Open connections above which new clients get HTTP 503, before their request is read.",
    ),
    (
        "max_pending_handshakes",
        int,
        "Connections accepted but not yet upgraded; a new one "
        "beyond it cuts the oldest, so silent connections cannot use up descriptors.",
    ),
    (
        "max_header_bytes",
        int,
        "Largest HTTP request head (request line and headers), in bytes (HTTP 431).",
    ),
    ("handshake_timeout", float, "Seconds a client has to complete the HTTP upgrade."),
    (
        "max_messages_per_second",
        float,
        "Messages (pings count too) each client may send per "
        "second, on average; a client over it is closed with 1008 'rate limit'.",
    ),
    (
        "message_burst",
        int,
        "Messages a client may send at once within "
        "--max-messages-per-second (the token bucket's size). 0: twice the rate.",
    ),
    ("ping_interval", float, "Seconds between keepalive pings."),
    ("ping_timeout", float, "Seconds to wait for a pong before closing with 1011."),
    ("idle_timeout", float, "Close clients that send no message for this many seconds."),
    (
        "max_consumer_queue",
        int,
        "Items (pub/sub messages) waiting for the consumer pipeline; "
        "when it is full new items are dropped, counted and logged, never left to grow "
        "memory or to stall the pub/sub listener.",
    ),
    # Not a limit, but the same kind of option: a number from Server, 0 for off.
    (
        "busy_poll_us",
        int,
        "Microseconds the server keeps polling, without sleeping, after "
        "a client's reader starts to wait, while clients' next messages keep coming that soon: "
        "lower latency for chatty clients for some CPU; it stops by itself when they pause.",
    ),
    (
        "broadcast_wait_us",
        int,
        "Microseconds at most that a broadcast to every client waits for the server to read "
        "what has arrived meanwhile, so that a burst of messages leaves in one send per client; "
        "0: broadcasts go at once (on the next loop turn).",
    ),
)


def _server_default(name: str) -> Any:
    from ..server import Server

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


def command_params(storage_name: str, storage_class: type[Storage]) -> list[click.Parameter]:
    """Every option of ``fws_server``, in ``--help`` order, with the chosen storage's.

    ``storage_name`` is ``--storage``'s default, as the pre-scan found it
    (``fws.cli.inputs.choose_storage``), so that ``--help`` shows the storage
    whose options it lists.
    """
    return [
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
            "listening, storage live (unless --ready-without-storage) and not draining, "
            "else 503 with a JSON reason). "
            "--no-health leaves those paths to --app or --static.",
        ),
        click.Option(
            ["--ready-needs-storage/--ready-without-storage"],
            default=_server_default("ready_needs_storage"),
            show_default=True,
            help="Whether GET /ready answers 503 'storage unavailable' while Redis is out of "
            "reach. --ready-without-storage keeps servers in rotation through a Redis outage "
            "(each then serves its own clients only).",
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
