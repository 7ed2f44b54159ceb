"""The one writer: this server's membership changes reach Redis in order.

Every change of this server's share of Redis (a client connected or gone, a
member added or removed, the heartbeat, a full snapshot) is an idempotent
operation on one queue, drained by one thread (a greenlet under gevent's
monkey-patching) in pipelines of ``transaction=False`` (on a cluster,
redis-py splits those by node). The callers update the storage's local
mirror and enqueue under one lock, so the queue order is the order of the
changes: whatever a snapshot does not hold is in an operation queued after
it.

A resync is just a :class:`Snapshot` queued like the rest. It replaces the
old "write everything, and start again if the state changed meanwhile" loop,
which on a busy server could restart without end. While Redis may be missing
this server's state (``Health.dirty``), operations before the next snapshot
are skipped: the snapshot holds their effect.

Liveness scores are Redis's clock: the writer reads ``TIME`` with every
heartbeat and snapshot and keeps the offset to the local clock, so servers
whose clocks disagree still judge each other's liveness alike. On a cluster
``TIME`` answers from one node while each script compares with its own
shard's clock: the cluster's hosts must agree (NTP; docs/guide/scaling.rst).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .health import Health
from .keys import KeyLayout
from .link import REDIS_ERRORS, Link

__all__ = [
    "Connected",
    "Disconnected",
    "Forget",
    "Heartbeat",
    "Joined",
    "Left",
    "Op",
    "Snapshot",
    "Writer",
]

log = logging.getLogger("fws.storage.redis")

BATCH = 512
"""Most operations in one pipeline: a storm of joins goes out in few round trips."""


@dataclass(frozen=True)
class Connected:
    client: str


@dataclass(frozen=True)
class Disconnected:
    client: str


@dataclass(frozen=True)
class Joined:
    group: str
    member: str


@dataclass(frozen=True)
class Left:
    group: str
    member: str
    last: bool
    """The group has no member on this server any more: leave its server set too."""


@dataclass(frozen=True)
class Heartbeat:
    """Refresh every TTL; a key found missing means Redis lost this server's state."""

    clients: bool
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """This server's whole share of Redis, as the local mirror held it when queued."""

    clients: frozenset[str]
    groups: dict[str, frozenset[str]]
    epoch: int
    done: threading.Event = field(default_factory=threading.Event)
    """Set once the writer is through with it, written or not (``Health`` says which)."""


@dataclass(frozen=True)
class Forget:
    """Remove this server's keys: the last operation of a clean stop."""

    groups: tuple[str, ...]


Op = Connected | Disconnected | Joined | Left | Heartbeat | Snapshot | Forget
_STOP = object()


class Writer:
    """Drains the operation queue into Redis; ``start`` once, ``stop`` once."""

    def __init__(
        self,
        link: Link,
        keys: KeyLayout,
        server_id: str,
        ttl: int,
        health: Health,
        on_snapshot_done: Callable[[], None],
    ) -> None:
        self.link = link
        self.keys = keys
        self.sid = server_id
        self.ttl = ttl
        self.health = health
        self._on_snapshot_done = on_snapshot_done
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._offset: float | None = None  # Redis's clock minus ours, in seconds
        self._written: set[str] = set()  # groups this server may have in Redis
        self.info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "ttl": ttl},
            separators=(",", ":"),
        )

    def put(self, op: Op) -> None:
        self._queue.put(op)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="fws redis writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write what is queued (a ``Forget`` last, if the caller put one), then end."""
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not _STOP and len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            ops = [op for op in batch if op is not _STOP]
            try:
                self.execute(ops)
            except Exception:
                if not self.health.closing:
                    log.exception("redis writer failed; the next snapshot rewrites the state")
                else:  # close() may have disconnected the pools under it; still, say so
                    log.debug("redis writer failed while closing", exc_info=True)
                self.health.mark_dirty()
            if stop:
                return

    # -- one batch -------------------------------------------------------------------

    def execute(self, ops: list[Op]) -> None:
        """Write ``ops`` in one pipeline; on failure the state is left to a snapshot."""
        if self.health.dirty:
            # Redis may lack this server's state: only a snapshot (and what
            # follows it) is worth writing; it holds everything before it.
            first = next((i for i, op in enumerate(ops) if isinstance(op, Snapshot)), None)
            ops = [] if first is None else ops[first:]
        if self.health.down:
            ops = [op for op in ops if not isinstance(op, Forget)]
        if not ops:
            return
        snapshots = [op for op in ops if isinstance(op, Snapshot)]
        # The groups this server may have in Redis once the pipeline ran; kept
        # apart until it ran, so that a failed snapshot's successor still
        # deletes the groups left meanwhile.
        written = set(self._written)
        try:
            if self._offset is None or any(isinstance(op, Heartbeat | Snapshot) for op in ops):
                self._read_clock()
            with self.link.commands().pipeline(transaction=False) as pipe:
                checks: list[int] = []
                for op in ops:
                    self._build(pipe, op, checks, written)
                results = pipe.execute()
        except REDIS_ERRORS as exc:
            # Partly written, maybe (a cluster pipeline is one per node): every
            # group either set names may be in Redis.
            self._written |= written
            self.health.failed(exc)
            for snapshot in snapshots:
                snapshot.done.set()
                self._on_snapshot_done()
            return
        self._written = written
        for snapshot in snapshots:
            self.health.synced(snapshot.epoch)
            snapshot.done.set()
            self._on_snapshot_done()
        if not all(results[position] for position in checks):
            log.warning(
                "this server's keys were missing from Redis (restart or eviction?); rewriting them"
            )
            self.health.mark_dirty()

    def _read_clock(self) -> None:
        before = time.time()
        seconds, micros = self.link.commands().time()
        after = time.time()
        self._offset = seconds + micros / 1e6 - (before + after) / 2

    def expiry(self) -> float:
        """When a liveness written now expires, by Redis's clock."""
        return time.time() + (self._offset or 0.0) + self.ttl

    def _build(self, pipe: Any, op: Op, checks: list[int], written: set[str]) -> None:
        """Queue ``op``'s commands on ``pipe``; ``written`` gets the groups it leaves in Redis."""
        keys, sid, ttl = self.keys, self.sid, self.ttl
        if isinstance(op, Connected):
            pipe.sadd(keys.clients(sid), op.client)
            pipe.expire(keys.clients(sid), ttl)
        elif isinstance(op, Disconnected):
            pipe.srem(keys.clients(sid), op.client)
        elif isinstance(op, Joined):
            written.add(op.group)
            pipe.sadd(keys.members(sid, op.group), op.member)
            pipe.expire(keys.members(sid, op.group), ttl)
            self._enlist(pipe, op.group)
        elif isinstance(op, Left):
            pipe.srem(keys.members(sid, op.group), op.member)
            if op.last:
                written.discard(op.group)
                pipe.delete(keys.members(sid, op.group))
                pipe.zrem(keys.group_servers(op.group), sid)
        elif isinstance(op, Heartbeat):
            checks.append(len(pipe))
            pipe.expire(keys.info(sid), ttl)
            self._announce(pipe)
            if op.clients:
                checks.append(len(pipe))
                pipe.expire(keys.clients(sid), ttl)
            for name in op.groups:
                checks.append(len(pipe))
                pipe.expire(keys.members(sid, name), ttl)
                self._enlist(pipe, name)
        elif isinstance(op, Snapshot):
            self._build_snapshot(pipe, op, written)
        elif isinstance(op, Forget):
            # One key per DEL: redis-py's cluster pipeline refuses multi-key DEL.
            pipe.delete(keys.info(sid))
            pipe.delete(keys.clients(sid))
            pipe.zrem(keys.servers, sid)
            for name in written | set(op.groups):
                pipe.delete(keys.members(sid, name))
                pipe.zrem(keys.group_servers(name), sid)

    def _build_snapshot(self, pipe: Any, op: Snapshot, written: set[str]) -> None:
        keys, sid, ttl = self.keys, self.sid, self.ttl
        pipe.set(keys.info(sid), self.info, ex=ttl)
        self._announce(pipe)
        # DEL then SADD: adjacent in one pipeline, so only a reader racing this
        # very round trip could see the set empty; the set is then exact.
        pipe.delete(keys.clients(sid))
        if op.clients:
            pipe.sadd(keys.clients(sid), *op.clients)
            pipe.expire(keys.clients(sid), ttl)
        for name, members in op.groups.items():
            pipe.delete(keys.members(sid, name))
            pipe.sadd(keys.members(sid, name), *members)
            pipe.expire(keys.members(sid, name), ttl)
            self._enlist(pipe, name)
        for name in written - op.groups.keys():
            pipe.delete(keys.members(sid, name))
            pipe.zrem(keys.group_servers(name), sid)
        written.intersection_update(op.groups)
        written.update(op.groups)

    def _announce(self, pipe: Any) -> None:
        """This server is live until ``expiry``; ids already expired are pruned."""
        expiry = self.expiry()
        pipe.zadd(self.keys.servers, {self.sid: expiry})
        pipe.expire(self.keys.servers, self.ttl)
        pipe.zremrangebyscore(self.keys.servers, "-inf", expiry - self.ttl)

    def _enlist(self, pipe: Any, name: str) -> None:
        """This server hosts members of ``name`` until ``expiry``."""
        pipe.zadd(self.keys.group_servers(name), {self.sid: self.expiry()})
        pipe.expire(self.keys.group_servers(name), self.ttl)
