"""The default storage: groups in a dict of sets, pub/sub within this process.

Nothing is shared with other servers; use ``fws.storage.redis`` for that. A
message published here reaches this server's consumer pipeline, whatever its
channel, so a filter setup that publishes behaves the same on one server as on
several.
"""

from __future__ import annotations

from collections import defaultdict

from .base import Deliver, PubSubMessage, Storage

__all__ = ["MemoryStorage", "storage_class"]


class MemoryStorage(Storage):
    supports_pubsub = True

    def __init__(self) -> None:
        self._groups: defaultdict[str, set[str]] = defaultdict(set)
        self._deliver: Deliver | None = None

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

    def publish(self, channel: str, data: str | bytes) -> None:
        if self._deliver is not None:
            self._deliver(PubSubMessage(channel, data))

    def open(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def close(self) -> None:
        self._deliver = None


storage_class = MemoryStorage
