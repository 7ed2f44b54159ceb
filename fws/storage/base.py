"""The storage interface: shared state and pub/sub for filters.

A storage object keeps *groups*: sets of string values under string keys
(``broadcast_messages_by_token`` keeps connection ids under group names).
Backends with pub/sub also carry messages between servers: ``publish`` sends,
and whatever arrives on a subscribed channel is handed to the server, which
puts it on its queue for the consumer pipeline.

A backend lives in a module with a ``storage_class`` attribute; its ``options``
become command-line options of ``fws_server`` when it is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["PubSubMessage", "Storage", "StorageOption", "waits_in_connected"]


@dataclass(frozen=True)
class StorageOption:
    """A setting a backend takes, described once for the CLI and for scripts.

    ``name`` is both the keyword argument of the backend and, as ``--name``,
    the command-line option (the seed's spelling, e.g. ``redis_host``).
    """

    name: str
    default: Any
    help: str
    type: type = str
    multiple: bool = False


@dataclass(frozen=True)
class PubSubMessage:
    """One message received on a pub/sub channel."""

    channel: str
    data: str | bytes

    def __str__(self) -> str:
        data = self.data.decode("utf-8", "replace") if isinstance(self.data, bytes) else self.data
        return f"{self.channel}: {data}"


class Storage(ABC):
    """Base class of storage backends (the seed's "storage object")."""

    options: ClassVar[tuple[StorageOption, ...]] = ()

    connected_may_wait: ClassVar[bool] = False
    """Whether this class's own ``connected`` may wait (on I/O, or on a lock that a
    waiting greenlet may hold); ``waits_in_connected`` says how it is read.

    The base's records nothing and never waits. When no ``connected`` can wait,
    the server upgrades clients in its accept callback, without a greenlet
    (``fws.at_accept``), and ``connected`` runs in the gevent hub, where
    waiting is an error. A ``queue.Queue.put`` is fine only unbounded (or
    ``put_nowait``).
    """

    @abstractmethod
    def get(self, key: str) -> set[str]:
        """The members of group ``key`` (an empty set if there are none)."""

    def __getitem__(self, key: str) -> set[str]:
        return self.get(key)

    @abstractmethod
    def add(self, key: str, value: str) -> None:
        """Add ``value`` to group ``key`` (set semantics: adding twice is harmless)."""

    @abstractmethod
    def remove(self, key: str, value: str) -> None:
        """Remove ``value`` from group ``key``; removing a non-member is harmless."""

    # -- fan-out: how the built-in filters reach clients, here or on other servers

    @abstractmethod
    def broadcast(self, data: str | bytes, *, sender: str | None = None) -> None:
        """Deliver ``data`` to every client of every server sharing this storage.

        ``sender`` (a connection id) is skipped wherever it is connected.
        """

    @abstractmethod
    def send_to_group(self, key: str, data: str | bytes, *, sender: str | None = None) -> None:
        """Deliver ``data`` to the members of group ``key`` on every server, at most once each."""

    def send_to_client(self, connection_id: str, data: str | bytes) -> bool:
        """Deliver ``data`` to one client, on whichever server it is connected.

        Returns whether it was found (here, or registered by a live server).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot reach single clients")

    # -- pub/sub: channels whose messages feed the consumer pipeline

    def publish(self, channel: str, data: str | bytes) -> None:
        """Send ``data`` to the consumer pipeline of every server subscribed to ``channel``."""
        raise NotImplementedError(f"{type(self).__name__} has no pub/sub")

    @property
    def pubsub_live(self) -> bool:
        """Whether messages from other servers can arrive now (health checks read it)."""
        return True

    # -- life cycle, driven by the server

    def open(self, server: Server) -> None:
        """Called once by the server at start-up, before any client connects.

        Keep ``server``: ``server.broadcast(...)`` reaches local clients and
        ``server.queue.put(item)`` feeds the consumer pipeline.
        """

    def listen(self) -> None:
        """Receive from other servers until ``close``; the server runs it in a greenlet.

        Backends that receive nothing from outside return at once.
        """

    def connected(self, connection_id: str) -> None:
        """A client connected to this server.

        Backends that let other servers or programs reach one client by id
        (the Redis one) record it; the default does nothing.
        """

    def disconnected(self, connection_id: str) -> None:
        """The client ``connection_id`` is gone (its disconnect pipeline has run)."""

    def close(self) -> None:
        """Release connections; called once when the server stops."""


def waits_in_connected(storage: Storage) -> bool:
    """Whether ``storage.connected`` may wait: True unless the class defining it says not.

    Not simply inherited: a subclass that overrides ``connected`` (to write
    to a database, say) is taken to wait unless it declares
    ``connected_may_wait = False`` itself, next to its ``connected`` or below.
    """
    return _waits_in_connected(type(storage))


@cache  # storage classes live as long as the process anyway
def _waits_in_connected(cls: type) -> bool:
    for klass in cls.__mro__:
        own = vars(klass)
        if "connected_may_wait" in own:
            return bool(own["connected_may_wait"])
        if "connected" in own:  # overridden, and not said not to wait
            return True
    return True
