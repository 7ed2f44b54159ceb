"""``RedisStorage``: several fws servers sharing one Redis act as one server.

Start the same ``fws_server --storage redis`` on several machines against one
Redis and every client behaves as if there were one server. What holds: each
message is delivered at most once to each client, never back to its sender,
and, when nothing fails, to every member (every client for a broadcast) on
every server. Redis pub/sub is at most once: while Redis or a link to it is
down, messages for other servers are lost (and counted), not queued.

This module is the storage on top of the parts: the layout (:mod:`.keys`),
the envelope (:mod:`.envelope`), the scripts (:mod:`.scripts`), the link to
Redis (:mod:`.link`), the one writer (:mod:`.writer`), this server's clients
and groups (:mod:`.membership`), the pub/sub listener (:mod:`.subscriber`) and
the outage state (:mod:`.health`).

The blocking redis-py calls need a monkey-patched process (``fws_server``
patches first thing); without it they would stall the gevent hub. The
storage uses ``threading`` primitives, which work both ways.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ...errors import ConfigurationError, FwsError
from ..base import PubSubMessage, Storage, StorageOption
from .envelope import encode_envelope
from .health import Health
from .inbound import Inbound, warn_if_not_patched
from .keys import KeyLayout
from .link import COMMAND_TIMEOUT, REDIS_ERRORS, open_link
from .liveness import describe
from .membership import Membership
from .options import OPTIONS
from .publisher import find_server
from .scripts import Scripts
from .subscriber import POLL, Listener
from .writer import Writer

if TYPE_CHECKING:
    from ...server import Server

__all__ = ["RedisStorage", "StorageUnavailable", "storage_class"]

log = logging.getLogger("fws.storage.redis")

_T = TypeVar("_T")

JOIN_WAIT = COMMAND_TIMEOUT
"""Longest a join waits for Redis to confirm its group's subscription."""


class StorageUnavailable(FwsError):
    """Redis cannot be reached, so the answer would be wrong; try again later."""


class RedisStorage(Storage):
    """Groups and pub/sub in Redis, shared by every server using the same Redis and key.

    ``redis_url`` (``redis://[user:pass@]host:port/db``, ``rediss://`` for TLS,
    ``unix://``, ``redis+cluster://h:p[,h:p...]``,
    ``redis+sentinel://h:p[,h:p...]/SERVICE[/DB]``; see :mod:`.link`) wins over
    ``redis_host``/``redis_port`` when given.
    ``redis_ttl``: seconds after which the state of a server that died without
    cleaning up is gone from Redis. ``check``: ping Redis now and raise
    ``ConfigurationError`` if it cannot be reached, so that ``fws_server``
    fails at start-up with a clear message instead of serving half a cluster.
    """

    options: ClassVar[tuple[StorageOption, ...]] = OPTIONS

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
        url = redis_url or f"redis://{redis_host}:{redis_port}/0"
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
        self.link = open_link(url, f"fws-{self.server_id}")
        self.url = self.link.url
        if check:
            try:
                self.link.commands().ping()
            except REDIS_ERRORS as exc:
                self.link.close()
                raise ConfigurationError(
                    f"cannot reach Redis at {self.url}: {describe(exc)}"
                ) from None
        self._scripts = Scripts(self.link.commands, self.keys)
        self._server: Server | None = None
        self._health = Health(self.url, self._stats)
        self._writer = Writer(
            self.link, self.keys, self.server_id, self.ttl, self._health, self._snapshot_done
        )
        self._listener = Listener(
            self.link,
            self._health,
            fixed=(self.keys.broadcast_channel, self.keys.inbox(self.server_id)),
            raw=self.channels,
            interval=self.heartbeat_interval,
            on_message=self._received,
            on_connected=self._request_snapshot,
            on_beat=self._heartbeat,
            on_dirty=self._request_snapshot,
        )
        self._members = Membership(self.keys, self._writer, self._listener)
        self._groups = self._members.groups  # read by local delivery, without a lock
        self._listening = False
        self._listener_done = threading.Event()
        self._closed = False
        self._inbound = Inbound(self.server_id, self._members)

    # -- groups ----------------------------------------------------------------

    def get(self, key: str) -> set[str]:
        """Members of ``key`` over all live servers; ``StorageUnavailable`` during an outage.

        Eventually consistent across servers: another server's ``add`` returns
        once it follows the group, and its writer puts the member in Redis
        independently, usually within a round trip; ``get`` here in between
        may not list it yet. This server's own members are listed only once
        its writer has written them too.
        """
        return self._ask(lambda: self._scripts.group_members(key))

    def add(self, key: str, value: str) -> None:
        """Add ``value`` to ``key``; returns once this server follows the group's channel.

        The wait (at most ``JOIN_WAIT``, not during an outage) is what makes a
        member whose join returned receive every group message sent after it.
        """
        waiter = self._members.join(key, value)
        if waiter is not None and not self._health.down and not self._closed:
            if not waiter.wait(JOIN_WAIT):
                log.warning(
                    "Redis did not confirm the subscription to group %r within %.0f s: "
                    "messages sent to it by other servers may miss %s until it does",
                    key,
                    JOIN_WAIT,
                    value,
                )

    def remove(self, key: str, value: str) -> None:
        """Remove ``value`` from ``key``, whichever server added it.

        Removing another server's member needs Redis: during an outage that
        raises ``StorageUnavailable`` instead of pretending it worked.
        """
        if self._members.leave(key, value):
            return
        notice = encode_envelope(value, origin=self.server_id, group=key, op="remove")

        def remove_everywhere() -> None:
            self._scripts.remove_everywhere(key, value)
            # Always, even if the script found nothing: the member's server may
            # have it in its mirror with the SADD still queued in its writer,
            # which would write it back after us. leave() there is idempotent.
            self.link.publish(self.keys.group_channel(key), notice)

        self._ask(remove_everywhere)

    # -- this server's connections (so that a backend can reach one client) ------

    # Updates the mirror and queues the write under in-memory locks that nothing
    # holds across a wait: the server may call it in its accept callback.
    connected_may_wait = False

    def connected(self, connection_id: str) -> None:
        self._members.connected(connection_id)

    def disconnected(self, connection_id: str) -> None:
        self._members.disconnected(connection_id)

    # -- fan-out ---------------------------------------------------------------------

    def broadcast(self, data: str | bytes, *, sender: str | None = None) -> None:
        if self._server is not None:
            self._server.broadcast(data, exclude=sender)
        payload = encode_envelope(data, origin=self.server_id, sender=sender)
        self._publish(lambda: self.link.publish(self.keys.broadcast_channel, payload))

    def send_to_group(self, key: str, data: str | bytes, *, sender: str | None = None) -> None:
        local = self._groups.get(key)
        if local and self._server is not None:
            self._server.broadcast(data, exclude=sender, to=local)
        payload = encode_envelope(data, origin=self.server_id, sender=sender, group=key)
        self._publish(lambda: self.link.publish(self.keys.group_channel(key), payload))

    def send_to_client(self, connection_id: str, data: str | bytes) -> bool:
        """Deliver to one client wherever it is connected; whether it was found.

        During an outage only local clients can be reached.
        """
        if self._server is not None and connection_id in self._server.users:
            return self._server.broadcast(data, to=(connection_id,)) > 0
        payload = encode_envelope(data, origin=self.server_id, client=connection_id)

        def send() -> bool:
            sid = find_server(self.link.commands(), self._scripts, self.keys, connection_id)
            return sid is not None and self.link.publish(self.keys.inbox(sid), payload) > 0

        return bool(self._publish(send))

    def publish(self, channel: str, data: str | bytes) -> None:
        """Send raw ``data`` to every server subscribed to ``channel`` (this one included).

        While Redis is unreachable, this server's own consumer pipeline still
        gets it (if it follows ``channel``), as local clients still get local
        broadcasts: a pub/sub chat goes on within each server.
        """
        # Raw channels are classic pub/sub on every link (on a cluster a
        # classic PUBLISH reaches every node), as the seed's redis-cli publish.
        published = self._publish(lambda: self.link.commands().publish(channel, data))
        if published is None and channel in self.channels and self._server is not None:
            self._server.queue.put(PubSubMessage(channel, data))

    @property
    def pubsub_live(self) -> bool:
        """True while subscribed and in sync: messages from other servers arrive."""
        return self._health.live

    # -- life cycle --------------------------------------------------------------

    def open(self, server: Server) -> None:
        """Subscribe and write this server's state before the first client arrives."""
        self._server = server
        self._inbound.max_size = server.connection_settings.max_message_size
        warn_if_not_patched()
        log.info(
            "redis storage at %s, key prefix %r, server id %s, channels %s, ttl %d s",
            self.url,
            self.keys.prefix,
            self.server_id,
            " ".join(self.channels) or "(none)",
            self.ttl,
        )
        self._writer.start()
        try:
            self._listener.connect()  # subscribes, then queues the first snapshot
        except REDIS_ERRORS as exc:
            self._listener.drop()
            self._health.failed(exc)
            return
        self._request_snapshot(wait=True)

    def listen(self) -> None:
        """Deliver what arrives from Redis, heartbeat, and reconnect until ``close``."""
        self._listening = True
        try:
            self._listener.run()
        finally:
            self._listener_done.set()

    def close(self) -> None:
        """Stop the listener, remove this server's state from Redis, close connections."""
        if self._closed:
            return
        self._closed = True
        self._health.closing = True
        self._listener.closing.set()
        if self._listening:
            self._listener_done.wait(POLL + COMMAND_TIMEOUT)
        self._listener.drop()
        self._members.forget()
        self._writer.stop(2 * COMMAND_TIMEOUT)
        self._server = None
        self.link.close()

    # -- internals -----------------------------------------------------------------

    def _stats(self) -> Any:
        return None if self._server is None else self._server.table.stats

    def _request_snapshot(self, wait: bool = False) -> None:
        """Queue this server's whole state, as the mirror holds it now (see .membership)."""
        snapshot = self._members.snapshot(self._health.epoch, force=wait)
        if wait and snapshot is not None:
            snapshot.done.wait(2 * COMMAND_TIMEOUT)

    def _snapshot_done(self) -> None:
        self._members.snapshot_done()

    def _heartbeat(self) -> None:
        if self._health.dirty:
            self._request_snapshot()
        else:
            self._members.heartbeat()

    def _received(self, channel: str, data: Any, raw: bool) -> None:
        if self._server is not None:
            self._inbound.received(self._server, channel, data, raw)

    def _ask(self, read: Callable[[], _T]) -> _T:
        """A call whose answer needs Redis: ``StorageUnavailable`` rather than a wrong one."""
        if self._health.down:
            raise StorageUnavailable(f"Redis at {self.url} is unreachable")
        try:
            return read()
        except REDIS_ERRORS as exc:
            self._health.failed(exc)
            raise StorageUnavailable(f"Redis at {self.url}: {exc}") from exc

    def _publish(self, send: Callable[[], _T]) -> _T | None:
        """``send()``, or count the message as lost: at most once, never queued.

        During a known outage nothing is tried (fail fast: no greenlet waits on
        a dead primary). A failure counts the loss and starts an outage, but
        does not force a snapshot: it says nothing about this server's keys
        (the writer and the heartbeat detect lost state). A PUBLISH already
        under way when a primary hangs waits until the listener notices
        (2-3 s, then ``Link.reset`` cuts it) or ``COMMAND_TIMEOUT``.
        """
        if self._health.down:
            self._health.lost_one()
            return None
        try:
            return send()
        except REDIS_ERRORS as exc:
            self._health.lost_one()
            self._health.failed(exc, state_lost=False)
            return None

    def __repr__(self) -> str:
        return f"<RedisStorage {self.url} key={self.keys.prefix!r} id={self.server_id}>"


storage_class = RedisStorage
