"""How fws reaches Redis: the URL grammars, the timeouts, the connection settings.

Every link (:mod:`.link`, :mod:`.cluster_link`, :mod:`.sentinel_link`) takes
its timeouts and connection keyword arguments from here, so one change
applies to all three.

``redis.Redis.from_url`` knows one host per URL; a cluster or a sentinel
set-up is reached through a list of seed addresses, so fws has its own
grammar for them (issue 11)::

    redis+cluster://[user[:password]@]host:port[,host:port...][?ssl options]
    rediss+cluster://...                                        TLS to every node
    redis+sentinel://[user[:password]@]host:port[,host:port...]/SERVICE[/DB][?options]
    rediss+sentinel://...                                       TLS to the data nodes

The password belongs to the data nodes. Sentinels may have their own
(``?sentinel_password=...``, ``?sentinel_username=...``); without it they are
asked without AUTH, which is how sentinels are usually deployed.

A malformed URL is the user's mistake: ``ConfigurationError`` with the
password replaced by ``***``, so the message can go to logs and stderr.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.backoff import NoBackoff
from redis.retry import Retry

from ...errors import ConfigurationError
from .liveness import PUBSUB_SILENCE

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "POOL_SIZE",
    "POOL_WAIT",
    "ClusterSettings",
    "SentinelSettings",
    "connection_kwargs",
    "parse_cluster_url",
    "parse_sentinel_url",
    "redact",
]

# Timeouts are short: a Redis that does not answer in time is treated as gone,
# and the server goes on serving its local clients meanwhile.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
POOL_SIZE = 32
"""Most Redis connections one server opens for commands (plus its pub/sub session)."""
POOL_WAIT = 5.0
"""How long a command waits for a free pooled connection before failing."""
CLUSTER_DEFAULT_PORT = 6379
SENTINEL_DEFAULT_PORT = 26379

_TLS_OPTIONS = {
    "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
}  # fmt: skip
_SENTINEL_OPTIONS = {"sentinel_password", "sentinel_username"}


def connection_kwargs(name: str, *, pubsub: bool = False) -> dict[str, Any]:
    """Keyword arguments for every data connection fws opens; ``name`` shows in CLIENT LIST.

    No redis-py retries: they would hide an outage and stall the caller;
    fws reconnects itself, with backoff and a resync. A ``pubsub`` session's
    blocking reads (the CLIENT SETNAME of a new connection, a cluster's slot
    table) give up after ``PUBSUB_SILENCE``, as its liveness check does: a
    reconnection that reaches a hung node must not wait ``COMMAND_TIMEOUT``
    while the replica is being promoted.
    """
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": PUBSUB_SILENCE if pubsub else COMMAND_TIMEOUT,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "client_name": name,
    }


_SECRET_OPTION = re.compile(r"(?<=[?&])(sentinel_password=)[^&]*")


def redact(url: str) -> str:
    """``url`` with its passwords (userinfo and ``sentinel_password``) as ``***``.

    ``urlsplit`` cannot be trusted with host lists such as ``h1:1,h2:2`` (its
    ``.port`` raises), so the authority is cut out by hand.
    """
    url = _SECRET_OPTION.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    authority, question, query = authority.partition("?")
    if "@" not in authority:
        return url
    userinfo, _, hosts = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    userinfo = f"{user}:***" if colon else "***"
    return f"{scheme}://{userinfo}@{hosts}{question}{query}{slash}{tail}"


@dataclass(frozen=True)
class _Common:
    url: str
    """The URL with the password redacted, for logs."""
    nodes: list[tuple[str, int]]
    tls: bool
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls_options: dict[str, str] = field(default_factory=dict)

    def credentials(self) -> dict[str, Any]:
        """``username``/``password``/TLS keyword arguments for redis-py connections."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
            for key, value in self.tls_options.items():
                if key == "ssl_check_hostname":
                    kwargs[key] = value.lower() in ("1", "true", "yes")
                else:
                    kwargs[key] = value
        return kwargs


@dataclass(frozen=True)
class ClusterSettings(_Common):
    """A parsed ``redis+cluster://`` URL: the seed nodes redis-py discovers the rest from."""


@dataclass(frozen=True)
class SentinelSettings(_Common):
    """A parsed ``redis+sentinel://`` URL: ``nodes`` are the sentinels."""

    service: str = ""
    db: int = 0
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    def sentinel_credentials(self) -> dict[str, Any]:
        """Keyword arguments for the connections to the sentinels themselves."""
        kwargs = connection_kwargs("")
        del kwargs["client_name"]  # sentinels are asked, not used: no name needed
        if self.sentinel_username:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs


def _fail(url: str, reason: str) -> ConfigurationError:
    return ConfigurationError(f"invalid Redis URL {redact(url)}: {reason}")


def _parse_host_port(url: str, text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``host`` or ``[v6]:port`` -> (host, port)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _fail(url, f"bad address {text!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail(url, f"bad IPv6 address {host!r}") from None
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise _fail(url, f"bad address {text!r} (write IPv6 addresses as [addr]:port)")
    if not host:
        raise _fail(url, f"address {text!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(url, f"bad port in {text!r}")
    return host, int(port_text)


def _split(
    url: str, schemes: tuple[str, str], default_port: int, allowed_options: set[str]
) -> tuple[bool, str | None, str | None, list[tuple[str, int]], str, dict[str, str]]:
    """(tls, username, password, nodes, path, options) of a multi-host URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        raise _fail(url, f"scheme must be {schemes[0]}:// or {schemes[1]}://")
    tls = scheme.lower() == schemes[1]
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not authority:
        raise _fail(url, "no host:port given")
    nodes = [_parse_host_port(url, part.strip(), default_port) for part in authority.split(",")]
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise _fail(url, "malformed query string") from None
    if not tls:
        allowed_options = allowed_options - _TLS_OPTIONS
    unknown = sorted(set(options) - allowed_options)
    if unknown:
        raise _fail(url, f"unknown option(s) {', '.join(unknown)}")
    return tls, username, password, nodes, path, options


def parse_cluster_url(url: str) -> ClusterSettings:
    """``redis+cluster://h:p[,h:p...]`` (or ``rediss+cluster``) -> ``ClusterSettings``.

    A cluster has a single database, so a path other than ``/`` or ``/0`` is refused
    rather than silently ignored.
    """
    tls, username, password, nodes, path, options = _split(
        url, ("redis+cluster", "rediss+cluster"), CLUSTER_DEFAULT_PORT, _TLS_OPTIONS
    )
    if path.strip("/") not in ("", "0"):
        raise _fail(url, "a Redis Cluster has only database 0")
    return ClusterSettings(redact(url), nodes, tls, username, password, options)


def parse_sentinel_url(url: str) -> SentinelSettings:
    """``redis+sentinel://h:p[,h:p...]/SERVICE[/DB]`` -> ``SentinelSettings``."""
    tls, username, password, nodes, path, options = _split(
        url,
        ("redis+sentinel", "rediss+sentinel"),
        SENTINEL_DEFAULT_PORT,
        _TLS_OPTIONS | _SENTINEL_OPTIONS,
    )
    parts = [unquote(part) for part in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise _fail(url, "no service name (redis+sentinel://host:port/SERVICE[/DB])")
    if len(parts) > 2:
        raise _fail(url, "the path is /SERVICE[/DB]")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _fail(url, f"database must be a number, not {parts[1]!r}")
        db = int(parts[1])
    tls_options = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    return SentinelSettings(
        redact(url),
        nodes,
        tls,
        username,
        password,
        tls_options,
        service=parts[0],
        db=db,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password"),
    )
