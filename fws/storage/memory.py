"""The default storage: groups in a dict of sets, pub/sub within this process.

Nothing is shared with other servers; use ``fws.storage.redis`` for that. A
message published here reaches this server's consumer pipeline, whatever its
channel, so a filter setup that publishes behaves the same on one server as on
several.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from .base import PubSubMessage, Storage

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["MemoryStorage", "storage_class"]


class MemoryStorage(Storage):
    """Groups and pub/sub within this one process: the default, and what tests use."""

    def __init__(self) -> None:
        self._groups: defaultdict[str, set[str]] = defaultdict(set)
        self._server: Server | None = None

    def get(self, key: str) -> set[str]:
        return set(self._groups.get(key, ()))

    def add(self, key: str, value: str) -> None:
        self._groups[key].add(value)

    def remove(self, key: str, value: str) -> None:
        members = self._groups.get(key)
        if members is not None:
            members.discard(value)
            if not members:
                del self._groups[key]

    def broadcast(self, data: str | bytes, *, sender: str | None = None) -> None:
        if self._server is not None:
            self._server.broadcast(data, exclude=sender)

    def send_to_group(self, key: str, data: str | bytes, *, sender: str | None = None) -> None:
        if self._server is not None:
            self._server.broadcast(data, exclude=sender, to=self.get(key))

    def send_to_client(self, connection_id: str, data: str | bytes) -> bool:
        if self._server is None:
            return False
        return self._server.broadcast(data, to=(connection_id,)) == 1

    def publish(self, channel: str, data: str | bytes) -> None:
        if self._server is not None:
            self._server.queue.put(PubSubMessage(channel, data))

    def open(self, server: Server) -> None:
        self._server = server

    def close(self) -> None:
        self._server = None


storage_class = MemoryStorage
