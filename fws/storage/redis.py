"""Redis storage: several fws servers sharing one Redis act as one server.

Start the same ``fws_server --storage redis`` on several machines against one
Redis and every client behaves as if there were one server: broadcasts and
group messages reach the right clients on every server, exactly once, never
back to the sender. Redis does the distributed work (sets, pub/sub, TTLs and
atomic scripts); fws only keeps a local mirror of what *this* server wrote.

Key layout (``P`` is ``--redis_key``, default ``fws``; ``SID`` a server id)::

    P:servers              SET  ids of live servers
    P:server:SID           STR  JSON about server SID; its TTL is SID's liveness
    P:clients:SID          SET  connection ids connected to SID
    P:groups:NAME          SET  ids of the servers with members in group NAME
    P:members:SID:NAME     SET  the members of group NAME that SID added

Every key a server writes has a TTL of ``--redis_ttl`` seconds that its
heartbeat (every third of that) refreshes, so the state of a server killed
without cleaning up vanishes within ``--redis_ttl``. Membership changes are
single atomic commands (SADD/SREM in MULTI), never read-modify-write.

Channels::

    P:broadcast            every server with clients: broadcasts (JSON envelope)
    P:inbox:SID            server SID only: group and client messages (JSON envelope)
    --redis_channels       every server: raw data for the consumer pipeline

A group message goes only to the servers listed in ``P:groups:NAME`` (a Lua
script reads the set and publishes to each inbox in one round trip), so a
server receives only the traffic of the groups it has members in.

The envelope is JSON, never pickle: ``{"v": 1, "origin": SID, "sender": ID,
"group": NAME, "client": ID, "text": "..."}`` (``"binary": base64`` instead of
``"text"`` for binary data; absent fields are null). :class:`Publisher` lets a
backend program write such messages.

When Redis goes away the server keeps serving its local clients, logs one
warning, reconnects with capped exponential backoff, resubscribes and rewrites
its whole share of the state from its local mirror (Redis may have restarted
empty), then logs how many cross-server messages were lost meanwhile.

The blocking redis-py calls need a monkey-patched process (``fws_server``
patches first thing); without it they would stall the gevent hub.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.exceptions import RedisError
from redis.retry import Retry

from ..errors import ConfigurationError, FwsError
from .base import PubSubMessage, Storage, StorageOption

if TYPE_CHECKING:
    from ..server import Server

__all__ = [
    "Envelope",
    "KeyLayout",
    "Publisher",
    "RedisStorage",
    "StorageUnavailable",
    "decode_envelope",
    "encode_envelope",
    "storage_class",
]

log = logging.getLogger("fws.storage.redis")

_T = TypeVar("_T")

# Timeouts are short: a Redis that does not answer in time is treated as gone,
# and the server goes on serving its local clients meanwhile.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
POOL_SIZE = 32
"""Most Redis connections one server opens for commands (plus one for pub/sub)."""
POOL_WAIT = 5.0
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 2.0
"""Reconnection delays double from BACKOFF_FIRST up to this many seconds."""
POLL = 0.1
"""How often the listener looks up from pub/sub: heartbeat, stop, broadcast subscription."""


class StorageUnavailable(FwsError):
    """Redis cannot be reached, so the answer would be wrong; try again later."""


# -- the shared format: keys, channels, envelopes, scripts ---------------------


@dataclass(frozen=True)
class KeyLayout:
    """Names of the keys and channels under one prefix (see the module docstring)."""

    prefix: str = "fws"

    @property
    def servers(self) -> str:
        return f"{self.prefix}:servers"

    def server(self, server_id: str) -> str:
        return f"{self.prefix}:server:{server_id}"

    def clients(self, server_id: str) -> str:
        return f"{self.prefix}:clients:{server_id}"

    def group(self, name: str) -> str:
        return f"{self.prefix}:groups:{name}"

    def members(self, server_id: str, name: str) -> str:
        return f"{self.prefix}:members:{server_id}:{name}"

    @property
    def broadcast_channel(self) -> str:
        return f"{self.prefix}:broadcast"

    def inbox(self, server_id: str) -> str:
        return f"{self.prefix}:inbox:{server_id}"


@dataclass(frozen=True)
class Envelope:
    """A message between servers (or from a backend program) with its routing."""

    data: str | bytes
    origin: str | None = None
    """The server that published it; that server has delivered it locally already."""
    sender: str | None = None
    """The connection that sent it; it never gets its own message back."""
    group: str | None = None
    client: str | None = None
    op: str | None = None
    """``"remove"``: control message, ``data`` is a member to drop from ``group``."""


def encode_envelope(
    data: str | bytes | bytearray | memoryview,
    *,
    origin: str | None = None,
    sender: str | None = None,
    group: str | None = None,
    client: str | None = None,
    op: str | None = None,
) -> bytes:
    """The JSON form of an envelope; text stays text, binary goes as base64."""
    body: dict[str, Any] = {
        "v": 1,
        "origin": origin,
        "sender": sender,
        "group": group,
        "client": client,
    }
    if op is not None:
        body["op"] = op
    if isinstance(data, str):
        body["text"] = str(data)
    else:
        body["binary"] = base64.b64encode(bytes(data)).decode("ascii")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def decode_envelope(raw: bytes | str) -> Envelope:
    """Parse an envelope; ``ValueError`` if it is not one."""
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("an envelope is a JSON object")
    if isinstance(body.get("text"), str):
        data: str | bytes = body["text"]
    elif isinstance(body.get("binary"), str):
        data = base64.b64decode(body["binary"], validate=True)
    else:
        raise ValueError('an envelope needs "text" (a string) or "binary" (base64)')

    def field(name: str) -> str | None:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"envelope field {name!r} must be a string or null")
        return value

    return Envelope(
        data=data,
        origin=field("origin"),
        sender=field("sender"),
        group=field("group"),
        client=field("client"),
        op=field("op"),
    )


# The scripts take the key prefix (with its colon) as ARGV[1] and compute the
# per-server key names themselves: they need one standalone Redis (or a primary
# with replicas), not Redis Cluster. Servers whose liveness key is gone are
# skipped and pruned from the index sets on the way.

_SEND_TO_GROUP = """
local reached = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if sid ~= ARGV[2] then
    if redis.call('EXISTS', ARGV[1] .. 'server:' .. sid) == 1 then
      redis.call('PUBLISH', ARGV[1] .. 'inbox:' .. sid, ARGV[3])
      reached = reached + 1
    else
      redis.call('SREM', KEYS[1], sid)
    end
  end
end
return reached
"""

_SEND_TO_CLIENT = """
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'server:' .. sid) == 0 then
    redis.call('SREM', KEYS[1], sid)
  elseif redis.call('SISMEMBER', ARGV[1] .. 'clients:' .. sid, ARGV[2]) == 1 then
    redis.call('PUBLISH', ARGV[1] .. 'inbox:' .. sid, ARGV[3])
    return 1
  end
end
return 0
"""

_GROUP_MEMBERS = """
local keys = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'server:' .. sid) == 1 then
    table.insert(keys, ARGV[1] .. 'members:' .. sid .. ':' .. ARGV[2])
  end
end
if #keys == 0 then return {} end
return redis.call('SUNION', unpack(keys))
"""

# Removes a member whichever server added it, and tells that server (its local
# mirror decides whom it delivers group messages to).
_REMOVE_EVERYWHERE = """
local removed = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('SREM', ARGV[1] .. 'members:' .. sid .. ':' .. ARGV[2], ARGV[3]) == 1 then
    removed = removed + 1
    if sid ~= ARGV[4] then
      redis.call('PUBLISH', ARGV[1] .. 'inbox:' .. sid, ARGV[5])
    end
  end
end
return removed
"""


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _connection_kwargs(name: str) -> dict[str, Any]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_keepalive": True,
        # fws retries itself, with backoff and a resync; redis-py's own retries
        # would hide outages and stall the greenlet that made the call.
        "retry": Retry(NoBackoff(), 0),
        "client_name": name,
    }


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Scripts:
    """The Lua scripts on one client, with their KEYS/ARGV conventions in one place.

    redis-py loads a script on first use. The servers and ``Publisher`` call
    the same scripts; only ``origin`` differs (a server's id, or "" for none).
    """

    def __init__(self, client: redis.Redis, keys: KeyLayout) -> None:
        self._keys = keys
        self._prefix = keys.prefix + ":"
        self._send_to_group = client.register_script(_SEND_TO_GROUP)
        self._send_to_client = client.register_script(_SEND_TO_CLIENT)
        self._group_members = client.register_script(_GROUP_MEMBERS)
        self._remove_everywhere = client.register_script(_REMOVE_EVERYWHERE)

    def send_to_group(self, group: str, origin: str, payload: bytes) -> int:
        """How many servers with members of ``group`` (other than ``origin``) took it."""
        args: list[str | bytes] = [self._prefix, origin, payload]
        return int(self._send_to_group(keys=[self._keys.group(group)], args=args))

    def send_to_client(self, connection_id: str, payload: bytes) -> bool:
        """Whether a live server registered ``connection_id`` and took the message."""
        args: list[str | bytes] = [self._prefix, connection_id, payload]
        return bool(self._send_to_client(keys=[self._keys.servers], args=args))

    def group_members(self, group: str) -> set[str]:
        members = self._group_members(keys=[self._keys.group(group)], args=[self._prefix, group])
        return {_text(member) for member in members}

    def remove_everywhere(self, group: str, member: str, origin: str, notice: bytes) -> None:
        args: list[str | bytes] = [self._prefix, group, member, origin, notice]
        self._remove_everywhere(keys=[self._keys.group(group)], args=args)


# -- a backend program's way in ----------------------------------------------------


class Publisher:
    """Send to fws clients from any program through the Redis the servers share.

    No gevent needed: a web backend, a cron job or a shell can use it::

        from fws.storage.redis import Publisher
        fws = Publisher("redis://localhost:6379/0")
        fws.send_to_group("room42", "the build is green")   # servers reached
        fws.send_to_client(connection_id, "just for you")       # found or not
        fws.broadcast("maintenance at noon")
        fws.publish("global", "to the consumer pipelines")

    ``key`` must match the servers' ``--redis_key``. Each method returns how
    many servers (or, for ``send_to_client``, whether a server) took the
    message; 0 means nobody was there to receive it.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key: str = "fws",
        client: redis.Redis | None = None,
    ) -> None:
        if client is None:
            try:
                client = redis.Redis.from_url(url)
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL {_redact(url)}: {exc}") from None
        self.redis = client
        self.keys = KeyLayout(key)
        self._scripts = _Scripts(client, self.keys)

    def broadcast(self, data: str | bytes) -> int:
        """Every client of every server."""
        return int(self.redis.publish(self.keys.broadcast_channel, encode_envelope(data)))

    def send_to_group(self, group: str, data: str | bytes) -> int:
        """The members of ``group``, on whichever servers they are."""
        return self._scripts.send_to_group(group, "", encode_envelope(data, group=group))

    def send_to_client(self, connection_id: str, data: str | bytes) -> bool:
        """One client, by its connection id (``web_socket_instance.id``)."""
        payload = encode_envelope(data, client=connection_id)
        return self._scripts.send_to_client(connection_id, payload)

    def publish(self, channel: str, data: str | bytes) -> int:
        """Raw data to a ``--redis_channels`` channel: the consumer pipelines get it."""
        return int(self.redis.publish(channel, data))

    def group_members(self, group: str) -> set[str]:
        """The connection ids in ``group``, over all live servers."""
        return self._scripts.group_members(group)

    def servers(self) -> set[str]:
        """Ids of the servers whose heartbeat is current."""
        ids = {_text(sid) for sid in self.redis.smembers(self.keys.servers)}
        return {sid for sid in ids if self.redis.exists(self.keys.server(sid))}

    def close(self) -> None:
        self.redis.close()


# -- the storage ------------------------------------------------------------------


class _Backoff:
    """Capped exponential backoff with jitter, so servers do not reconnect in step."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class RedisStorage(Storage):
    """Groups and pub/sub in Redis, shared by every server using the same Redis and key.

    ``redis_url`` (``redis://[user:pass@]host:port/db``, ``rediss://`` for TLS,
    ``unix://``) wins over ``redis_host``/``redis_port`` when given.
    ``redis_ttl``: seconds after which the state of a server that died without
    cleaning up is gone from Redis. ``check``: ping Redis now and raise
    ``ConfigurationError`` if it cannot be reached, so that ``fws_server``
    fails at start-up with a clear message instead of serving half a cluster.
    """

    options: ClassVar[tuple[StorageOption, ...]] = (
        StorageOption("redis_host", "localhost", "Redis host."),
        StorageOption("redis_port", 6379, "Redis port.", type=int),
        StorageOption(
            "redis_channels",
            ("global",),
            "Channels whose messages feed the consumer pipeline (e.g. broadcast_pubsub).",
            multiple=True,
        ),
        StorageOption("redis_key", "fws", "Prefix of every key and internal channel fws uses."),
        StorageOption(
            "redis_url",
            None,
            "redis://[user:pass@]host:port/db (rediss:// for TLS); overrides "
            "--redis_host/--redis_port.",
        ),
        StorageOption(
            "redis_ttl",
            30,
            "Seconds before a dead server's group memberships vanish from Redis.",
            type=int,
        ),
    )

    def __init__(
        self,
        *,
        redis_host: str = "localhost",
        redis_port: int = 6379,
        redis_channels: Iterable[str] = ("global",),
        redis_key: str = "fws",
        redis_url: str | None = None,
        redis_ttl: int = 30,
        check: bool = True,
    ) -> None:
        self.url = redis_url or f"redis://{redis_host}:{redis_port}/0"
        self.channels: tuple[str, ...] = tuple(redis_channels)
        if not redis_key:
            raise ConfigurationError("--redis_key must not be empty")
        if redis_ttl < 1:
            raise ConfigurationError(f"--redis_ttl must be at least 1 second, not {redis_ttl}")
        self.keys = KeyLayout(redis_key)
        self.ttl = int(redis_ttl)
        self.heartbeat_interval = max(self.ttl / 3, 0.2)
        self.server_id = uuid.uuid4().hex
        """This server's id in Redis (keys, inbox channel, client names)."""
        try:
            self._pool = redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=POOL_SIZE,
                timeout=POOL_WAIT,
                **_connection_kwargs(f"fws-{self.server_id}"),
            )
            self._pubsub_pool = redis.ConnectionPool.from_url(
                self.url, max_connections=1, **_connection_kwargs(f"fws-{self.server_id}-pubsub")
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {_redact(self.url)}: {exc}") from None
        self.redis = redis.Redis(connection_pool=self._pool)
        self._scripts = _Scripts(self.redis, self.keys)
        if check:
            try:
                self.redis.ping()
            except RedisError as exc:
                self._pool.disconnect()
                raise ConfigurationError(
                    f"cannot reach Redis at {_redact(self.url)}: {exc}"
                ) from None

        self._server: Server | None = None
        # The local mirror: what this server put in Redis. It decides local
        # delivery (no round trip per message) and rebuilds Redis after an outage.
        self._groups: dict[str, set[str]] = {}
        self._clients: set[str] = set()
        self._written_groups: set[str] = set()
        self._generation = 0
        self._dirty = True  # nothing written yet: the first sync writes everything
        self._down_since: float | None = None
        self._undelivered = 0
        self._pubsub: PubSub | None = None
        self._pubsub_live = False
        self._backoff = _Backoff()
        self._retry_at = 0.0
        self._closing = threading.Event()
        self._listener_done = threading.Event()
        self._listening = False
        self._closed = False
        self._broadcast_subscribed = False

    # -- groups ----------------------------------------------------------------

    def get(self, key: str) -> set[str]:
        """Members of ``key`` over all live servers; ``StorageUnavailable`` during an outage."""
        if self._down_since is not None:
            raise StorageUnavailable(f"Redis at {_redact(self.url)} is unreachable")
        try:
            return self._scripts.group_members(key)
        except RedisError as exc:
            self._outage(exc)
            raise StorageUnavailable(f"Redis at {_redact(self.url)}: {exc}") from exc

    def add(self, key: str, value: str) -> None:
        members = self._groups.setdefault(key, set())
        if value in members:
            return
        members.add(value)
        self._generation += 1
        sid = self.server_id

        def write(pipe: Any) -> None:
            pipe.sadd(self.keys.members(sid, key), value)
            pipe.expire(self.keys.members(sid, key), self.ttl)
            pipe.sadd(self.keys.group(key), sid)
            pipe.expire(self.keys.group(key), self.ttl)

        self._written_groups.add(key)
        self._write(write)

    def remove(self, key: str, value: str) -> None:
        """Remove ``value`` from ``key``, whichever server added it.

        Removing another server's member needs Redis: during an outage that
        raises ``StorageUnavailable`` instead of pretending it worked.
        """
        members = self._groups.get(key)
        if members is not None and value in members:
            members.discard(value)
            self._generation += 1
            if not members:
                del self._groups[key]
            sid = self.server_id

            def write(pipe: Any) -> None:
                pipe.srem(self.keys.members(sid, key), value)
                if not members:
                    pipe.srem(self.keys.group(key), sid)

            self._write(write)
            return
        if self._down_since is not None:
            raise StorageUnavailable(f"Redis at {_redact(self.url)} is unreachable")
        notice = encode_envelope(value, origin=self.server_id, group=key, op="remove")
        try:
            self._scripts.remove_everywhere(key, value, self.server_id, notice)
        except RedisError as exc:
            self._outage(exc)
            raise StorageUnavailable(f"Redis at {_redact(self.url)}: {exc}") from exc

    # -- this server's connections (so that a backend can reach one client) ------

    def connected(self, connection_id: str) -> None:
        self._clients.add(connection_id)
        self._generation += 1
        key = self.keys.clients(self.server_id)

        def write(pipe: Any) -> None:
            pipe.sadd(key, connection_id)
            pipe.expire(key, self.ttl)

        self._write(write)

    def disconnected(self, connection_id: str) -> None:
        self._clients.discard(connection_id)
        self._generation += 1
        key = self.keys.clients(self.server_id)
        self._write(lambda pipe: pipe.srem(key, connection_id))

    def _follow_broadcasts(self, pubsub: PubSub) -> None:
        """Be subscribed to the broadcast channel exactly while this server has clients.

        A server with no clients then receives no broadcast traffic at all. Only
        the listener calls this, between reads: it owns every byte of the pub/sub
        connection, so a failure here takes its ordinary reconnect path. A first
        client on an empty server follows cross-server broadcasts within POLL.
        """
        wanted = bool(self._clients)
        if wanted == self._broadcast_subscribed:
            return
        if wanted:
            pubsub.subscribe(self.keys.broadcast_channel)
        else:
            pubsub.unsubscribe(self.keys.broadcast_channel)
        self._broadcast_subscribed = wanted

    # -- fan-out ---------------------------------------------------------------------

    def broadcast(self, data: str | bytes, *, sender: str | None = None) -> None:
        if self._server is not None:
            self._server.broadcast(data, exclude=sender)
        payload = encode_envelope(data, origin=self.server_id, sender=sender)
        self._publish(lambda: self.redis.publish(self.keys.broadcast_channel, payload))

    def send_to_group(self, key: str, data: str | bytes, *, sender: str | None = None) -> None:
        local = self._groups.get(key)
        if local and self._server is not None:
            self._server.broadcast(data, exclude=sender, to=tuple(local))
        payload = encode_envelope(data, origin=self.server_id, sender=sender, group=key)
        self._publish(lambda: self._scripts.send_to_group(key, self.server_id, payload))

    def send_to_client(self, connection_id: str, data: str | bytes) -> bool:
        """Deliver to one client wherever it is connected; whether it was found.

        During an outage only local clients can be reached.
        """
        if self._server is not None and connection_id in self._server.users:
            return self._server.broadcast(data, to=(connection_id,)) > 0
        payload = encode_envelope(data, origin=self.server_id, client=connection_id)
        return bool(self._publish(lambda: self._scripts.send_to_client(connection_id, payload)))

    def publish(self, channel: str, data: str | bytes) -> None:
        """Send raw ``data`` to every server subscribed to ``channel`` (this one included).

        While Redis is unreachable, this server's own consumer pipeline still
        gets it (if it follows ``channel``), as local clients still get local
        broadcasts: a pub/sub chat goes on within each server.
        """
        published = self._publish(lambda: self.redis.publish(channel, data))
        if published is None and channel in self.channels and self._server is not None:
            self._server.queue.put(PubSubMessage(channel, data))

    @property
    def pubsub_live(self) -> bool:
        """True while subscribed and in sync: messages from other servers arrive."""
        return self._pubsub_live and self._down_since is None

    # -- life cycle --------------------------------------------------------------

    def open(self, server: Server) -> None:
        """Subscribe and write this server's state before the first client arrives."""
        self._server = server
        _warn_if_not_patched()
        log.info(
            "redis storage at %s, key prefix %r, server id %s, channels %s, ttl %d s",
            _redact(self.url),
            self.keys.prefix,
            self.server_id,
            " ".join(self.channels) or "(none)",
            self.ttl,
        )
        try:
            self._connect()
        except (RedisError, OSError) as exc:
            self._drop_pubsub()
            self._outage(exc)

    def listen(self) -> None:
        """Deliver what arrives from Redis, heartbeat, and reconnect until ``close``."""
        self._listening = True
        try:
            while not self._closing.is_set():
                try:
                    if self._pubsub is None:
                        self._connect()
                    self._read_loop()
                except (RedisError, OSError) as exc:
                    self._drop_pubsub()
                    if self._closing.is_set():
                        break
                    self._outage(exc)
                    self._closing.wait(self._backoff.next())
                except Exception:
                    if self._closing.is_set():
                        break  # close() disconnected the pools under a command
                    # Our bug, not Redis's: say so loudly, but keep the cluster link.
                    log.exception("redis listener failed; reconnecting")
                    self._drop_pubsub()
                    self._closing.wait(self._backoff.next())
        finally:
            self._drop_pubsub()
            self._listener_done.set()

    def close(self) -> None:
        """Stop the listener, remove this server's state from Redis, close connections."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._listening:
            self._listener_done.wait(POLL + COMMAND_TIMEOUT)
        self._drop_pubsub()
        if self._down_since is None:
            try:
                self._forget_server()
            except RedisError as exc:
                log.info(
                    "could not remove this server's keys (they expire in %d s): %s", self.ttl, exc
                )
        self._server = None
        self._pool.disconnect()
        self._pubsub_pool.disconnect()

    # -- internals -----------------------------------------------------------------

    def _connect(self) -> None:
        """Subscribe, wait for Redis to confirm, then rewrite this server's state."""
        pubsub = PubSub(self._pubsub_pool)
        self._pubsub = pubsub
        channels = [self.keys.inbox(self.server_id), *self.channels]
        if self._clients:
            channels.append(self.keys.broadcast_channel)
        self._broadcast_subscribed = bool(self._clients)
        pubsub.subscribe(*channels)
        pending = set(channels)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise redis.TimeoutError("Redis did not confirm the subscriptions")
            message = pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message["type"] == "subscribe":
                pending.discard(_text(message["channel"]))
            else:
                self._handle(message)
        self._resync()
        self._pubsub_live = True
        self._backoff.reset()
        self._recovered()

    def _read_loop(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        interval = self.heartbeat_interval
        last_seen = time.monotonic()
        next_beat = last_seen + interval
        while not self._closing.is_set():
            self._follow_broadcasts(pubsub)
            message = pubsub.get_message(timeout=min(POLL, interval))
            now = time.monotonic()
            if message is not None:
                last_seen = now
                self._handle(message)
            if now >= next_beat:
                if now - last_seen > 2 * interval + COMMAND_TIMEOUT:
                    raise redis.ConnectionError(
                        "Redis stopped answering on the pub/sub connection"
                    )
                next_beat = now + interval
                pubsub.ping()  # answered by a "pong" message, which counts as seen
                self._heartbeat()
            elif self._dirty and now >= self._retry_at:
                self._try_resync()

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] != "message":
            return
        channel = _text(message["channel"])
        data = message["data"]
        if channel == self.keys.broadcast_channel or channel == self.keys.inbox(self.server_id):
            try:
                envelope = decode_envelope(data)
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("ignored a malformed message on %s: %s", channel, exc)
                return
            self._deliver(envelope)
        elif self._server is not None:
            self._server.queue.put(PubSubMessage(channel, data))

    def _deliver(self, envelope: Envelope) -> None:
        server = self._server
        if server is None or envelope.origin == self.server_id:
            return  # delivered locally when it was sent
        if envelope.op == "remove":
            if envelope.group is not None and isinstance(envelope.data, str):
                members = self._groups.get(envelope.group)
                if members is not None:
                    members.discard(envelope.data)
                    if not members:
                        del self._groups[envelope.group]
            return
        if envelope.group is not None:
            members = self._groups.get(envelope.group)
            if members:
                server.broadcast(envelope.data, exclude=envelope.sender, to=tuple(members))
        elif envelope.client is not None:
            server.broadcast(envelope.data, to=(envelope.client,))
        else:
            server.broadcast(envelope.data, exclude=envelope.sender)

    def _write(self, build: Callable[[Any], None]) -> None:
        """Apply one membership change atomically, or leave it to the next resync."""
        if self._dirty:
            return  # a resync is due; it writes the whole local mirror
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                build(pipe)
                pipe.execute()
        except RedisError as exc:
            self._dirty = True
            self._outage(exc)
        except ValueError as exc:  # redis-py, when close() disconnected the pool under it
            if not self._closed:
                raise
            log.debug("write cut short by close: %s", exc)

    def _publish(self, send: Callable[[], _T]) -> _T | None:
        if self._down_since is not None:
            self._lost_one()
            return None
        try:
            return send()
        except RedisError as exc:
            self._lost_one()
            self._outage(exc)
            return None

    def _lost_one(self) -> None:
        self._undelivered += 1
        if self._server is not None:
            self._server.table.stats.redis_messages_lost += 1

    def _resync(self) -> None:
        """Rewrite this server's whole share of Redis from the local mirror, atomically.

        Runs after every (re)connection and after a failed write: Redis may
        have restarted empty, or missed a change. Changes made while it runs
        are skipped by ``_write`` and caught by running it again.
        """
        self._dirty = True
        sid = self.server_id
        for _ in range(10):
            generation = self._generation
            groups = {name: set(members) for name, members in self._groups.items() if members}
            stale = self._written_groups - groups.keys()
            with self.redis.pipeline(transaction=True) as pipe:
                self._write_liveness(pipe)
                pipe.delete(self.keys.clients(sid))
                if self._clients:
                    pipe.sadd(self.keys.clients(sid), *self._clients)
                    pipe.expire(self.keys.clients(sid), self.ttl)
                for name, members in groups.items():
                    pipe.delete(self.keys.members(sid, name))
                    pipe.sadd(self.keys.members(sid, name), *members)
                    pipe.expire(self.keys.members(sid, name), self.ttl)
                    pipe.sadd(self.keys.group(name), sid)
                    pipe.expire(self.keys.group(name), self.ttl)
                for name in stale:
                    pipe.delete(self.keys.members(sid, name))
                    pipe.srem(self.keys.group(name), sid)
                pipe.execute()
            self._written_groups = set(groups)
            if generation == self._generation:
                self._dirty = False
                return
        log.warning("local groups keep changing; the resync will be retried")

    def _try_resync(self) -> None:
        try:
            self._resync()
        except RedisError as exc:
            self._outage(exc)
            self._retry_at = time.monotonic() + self._backoff.next()
        else:
            self._backoff.reset()
            self._recovered()

    def _write_liveness(self, pipe: Any) -> None:
        info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "ttl": self.ttl},
            separators=(",", ":"),
        )
        pipe.set(self.keys.server(self.server_id), info, ex=self.ttl)
        pipe.sadd(self.keys.servers, self.server_id)
        pipe.expire(self.keys.servers, self.ttl)

    def _heartbeat(self) -> None:
        """Refresh every TTL this server owns; a key found missing triggers a resync."""
        if self._dirty:
            self._try_resync()
            return
        sid = self.server_id
        groups = [name for name, members in self._groups.items() if members]
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.expire(self.keys.server(sid), self.ttl)
                pipe.sadd(self.keys.servers, sid)
                pipe.expire(self.keys.servers, self.ttl)
                owned = [0]  # positions of EXPIREs on keys that must exist
                if self._clients:
                    owned.append(len(pipe))
                    pipe.expire(self.keys.clients(sid), self.ttl)
                for name in groups:
                    owned.append(len(pipe))
                    pipe.expire(self.keys.members(sid, name), self.ttl)
                    pipe.sadd(self.keys.group(name), sid)
                    pipe.expire(self.keys.group(name), self.ttl)
                results = pipe.execute()
        except RedisError as exc:
            self._dirty = True
            self._outage(exc)
            return
        if not all(results[position] for position in owned):
            log.warning(
                "this server's keys were missing from Redis (restart or eviction?); rewriting them"
            )
            self._try_resync()
        self._prune_dead_servers()

    def _prune_dead_servers(self) -> None:
        """Remove from ``P:servers`` the ids whose liveness key has expired (SIGKILL)."""
        try:
            ids = [_text(sid) for sid in self.redis.smembers(self.keys.servers)]
            with self.redis.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.exists(self.keys.server(sid))
                alive = pipe.execute()
            dead = [sid for sid, exists in zip(ids, alive, strict=True) if not exists]
            if dead:
                self.redis.srem(self.keys.servers, *dead)
                log.info("removed %d dead server id(s) from %s", len(dead), self.keys.servers)
        except RedisError as exc:
            self._outage(exc)

    def _forget_server(self) -> None:
        sid = self.server_id
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.server(sid), self.keys.clients(sid))
            pipe.srem(self.keys.servers, sid)
            for name in self._written_groups | self._groups.keys():
                pipe.delete(self.keys.members(sid, name))
                pipe.srem(self.keys.group(name), sid)
            pipe.execute()

    def _drop_pubsub(self) -> None:
        self._pubsub_live = False
        self._broadcast_subscribed = False
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except (RedisError, OSError) as exc:
                log.debug("closing the pub/sub connection: %s", exc)

    def _outage(self, exc: BaseException) -> None:
        """Note a failure; only the first of an outage is logged as a warning.

        Any failure (a publish or a read too, not only the pub/sub link) marks the
        state dirty, so the listener resyncs and ends the outage as soon as Redis
        answers again; otherwise a single timed-out PUBLISH would cut this server
        off from the cluster until its pub/sub connection happened to drop.
        """
        if self._closing.is_set():
            # Quietly: but a Redis that just failed is not worth a last clean-up
            # attempt that would hold the stop for another command timeout.
            if self._down_since is None:
                self._down_since = time.monotonic()
            return
        self._dirty = True
        if self._down_since is None:
            self._down_since = time.monotonic()
            if self._server is not None:
                self._server.table.stats.redis_outages += 1
            log.warning(
                "Redis at %s unreachable (%s); serving local clients only, reconnecting "
                "with backoff up to %.0f s",
                _redact(self.url),
                exc,
                BACKOFF_CAP,
            )
        else:
            log.debug("Redis still unreachable: %s", exc)

    def _recovered(self) -> None:
        if self._down_since is None or not self._pubsub_live or self._dirty:
            return
        outage = time.monotonic() - self._down_since
        self._down_since = None
        lost, self._undelivered = self._undelivered, 0
        if lost:
            log.warning(
                "Redis at %s is back after %.1f s; resubscribed and rewrote this server's "
                "groups; %d message(s) for other servers could not be sent meanwhile",
                _redact(self.url),
                outage,
                lost,
            )
        else:
            log.info(
                "Redis at %s is back after %.1f s; resubscribed and rewrote this server's groups",
                _redact(self.url),
                outage,
            )

    def __repr__(self) -> str:
        return f"<RedisStorage {_redact(self.url)} key={self.keys.prefix!r} id={self.server_id}>"


def _warn_if_not_patched() -> None:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency of fws
        return
    if not monkey.is_module_patched("socket"):
        log.warning(
            "the process is not monkey-patched: Redis calls will block the gevent hub "
            "(call gevent.monkey.patch_all() first, as fws_server does)"
        )


storage_class = RedisStorage
