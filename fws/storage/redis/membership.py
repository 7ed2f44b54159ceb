"""This server's clients and groups: the local mirror and the order of its changes.

The mirror is what *this* server put in Redis. Local delivery reads it (no
round trip per message) and a snapshot writes it back after an outage. Every
change updates the mirror and queues its operation for the writer under one
lock, so the queue order is the order of the changes: a snapshot taken under
that lock plus the operations queued after it is always the current state.
"""

from __future__ import annotations

import threading

from .keys import KeyLayout
from .subscriber import Listener
from .writer import Connected, Disconnected, Forget, Heartbeat, Joined, Left, Snapshot, Writer

__all__ = ["Membership"]


class Membership:
    """The mirror of this server's share of Redis; every change goes to the writer."""

    def __init__(self, keys: KeyLayout, writer: Writer, listener: Listener) -> None:
        self.keys = keys
        self._writer = writer
        self._listener = listener
        self._lock = threading.Lock()
        self.groups: dict[str, set[str]] = {}
        """Group name -> local members; read without the lock (a copy is never needed)."""
        self.clients: set[str] = set()
        self._snapshot_pending = False

    def join(self, group: str, member: str) -> threading.Event | None:
        """Record ``member``; an event set once this server follows the group's channel."""
        with self._lock:
            members = self.groups.setdefault(group, set())
            if member in members:
                return None
            members.add(member)
            self._writer.put(Joined(group, member))
            return self._listener.want(self.keys.group_channel(group))

    def leave(self, group: str, member: str) -> bool:
        """Drop a local member; False if this server never added it."""
        with self._lock:
            members = self.groups.get(group)
            if members is None or member not in members:
                return False
            members.discard(member)
            last = not members
            if last:  # the last one: stop following the group's channel
                del self.groups[group]
                self._listener.unwant(self.keys.group_channel(group))
            self._writer.put(Left(group, member, last))
            return True

    def connected(self, client: str) -> None:
        with self._lock:
            self.clients.add(client)
            self._writer.put(Connected(client))

    def disconnected(self, client: str) -> None:
        with self._lock:
            self.clients.discard(client)
            self._writer.put(Disconnected(client))

    def snapshot(self, epoch: int, *, force: bool = False) -> Snapshot | None:
        """Queue the whole mirror as one operation (None: one is queued already)."""
        with self._lock:
            if self._snapshot_pending and not force:
                return None
            self._snapshot_pending = True
            snapshot = Snapshot(
                frozenset(self.clients),
                {name: frozenset(members) for name, members in self.groups.items()},
                epoch,
            )
            self._writer.put(snapshot)
        return snapshot

    def snapshot_done(self) -> None:
        """The writer finished a snapshot (written or failed): another may be queued."""
        self._snapshot_pending = False

    def heartbeat(self) -> None:
        with self._lock:
            self._writer.put(Heartbeat(bool(self.clients), tuple(self.groups)))

    def forget(self) -> None:
        """Queue the removal of this server's keys (a clean stop)."""
        with self._lock:
            self._writer.put(Forget(tuple(self.groups)))
