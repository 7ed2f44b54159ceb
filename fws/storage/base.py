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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["PubSubMessage", "Storage", "StorageOption"]


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


Deliver = Callable[[Any], None]


class Storage(ABC):
    """Base class of storage backends (the seed's "storage object")."""

    options: ClassVar[tuple[StorageOption, ...]] = ()

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

    supports_pubsub: ClassVar[bool] = False

    def publish(self, channel: str, data: str | bytes) -> None:
        """Send ``data`` to every server subscribed to ``channel``."""
        raise NotImplementedError(f"{type(self).__name__} has no pub/sub")

    def open(self, deliver: Deliver) -> None:
        """Called once by the server at start-up with where received messages go."""

    def listen(self) -> None:
        """Receive from subscribed channels until ``close``; run in a server greenlet.

        Backends that receive nothing from outside return at once.
        """

    def close(self) -> None:
        """Release connections; called once when the server stops."""
