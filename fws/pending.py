"""The bound on pending handshakes: TCP connections accepted but not yet upgraded.

Every accepted connection holds a descriptor and a greenlet until its
handshake ends (``handshake_timeout``, 10 s by default). A flood of clients
that connect and say nothing would otherwise hold one descriptor each until
the process has none left, and then nobody could connect at all.

When the bound is reached, the *oldest* pending connection is cut to make
room for the new one, rather than the new one refused. Refusing the newest
would let a flood keep every real client out for as long as it lasts; cutting
the oldest means a real client, which completes its handshake within a round
trip, is only cut if more than the bound of new connections arrive during
that round trip. The price: in a legitimate reconnect storm larger than the
bound, the slowest handshakes are cut and their clients reconnect, which is
why the default (1024) is far above what one process upgrades concurrently.

No gevent here: a pending connection is cut by shutting its socket down,
which wakes whatever greenlet reads it with EOF, as ``handshake_timeout`` does.
"""

from __future__ import annotations

import _socket
import logging
import resource
import socket
import time

from .stats import ServerStats

__all__ = ["PendingHandshakes", "fit_to_descriptors", "raise_descriptor_limit"]

log = logging.getLogger("fws.pending")

WARN_EVERY = 10.0
"""Seconds between two warnings that the bound was reached (not one line per cut)."""

MIN_PENDING = 16
"""The least a descriptor limit lowers the bound to: below it, raise ``ulimit -n``."""


def fit_to_descriptors(limit: int | None, soft_limit: int) -> int | None:
    """The pending bound that fits ``soft_limit`` descriptors: at most half of them.

    The bound protects only if it is reached before the process runs out of
    descriptors: with ``ulimit -n 1024`` (many distributions' default) a
    bound of 1024 never is, and a flood then starves every client. Half is
    left for open connections, Redis and the rest. None (no bound) stays None:
    the operator chose it.
    """
    if limit is None or soft_limit == resource.RLIM_INFINITY:
        return limit
    return min(limit, max(soft_limit // 2, MIN_PENDING))


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft descriptor limit to its hard one; return (old, new).

    The soft limit (often 1024) is a default for programs that never expect
    many descriptors; a server holding one per client wants all it may have,
    as Go's runtime and nginx's worker_rlimit_nofile arrange.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


class PendingHandshakes:
    """The pending connections of one server, oldest first; ``limit`` None: unbounded.

    A connection is registered by an object of its own (the accepted socket)
    with its descriptor, and the descriptor is what a cut shuts down: a TLS
    socket takes the descriptor over from the accepted one during its own
    handshake. Callers discard a connection before its descriptor is closed
    or handed to an open WebSocket, so every descriptor held here is live.
    """

    def __init__(self, limit: int | None, stats: ServerStats) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the pending handshake limit must be at least 1 (None: off)")
        self.limit = limit
        self._stats = stats
        self._pending: dict[object, int] = {}  # insertion order: oldest first
        self._warned_at = float("-inf")

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, token: object, fd: int) -> None:
        """Register a connection just accepted, cutting the oldest if the bound is reached."""
        limit = self.limit
        if limit is not None:
            while len(self._pending) >= limit:
                self._cut_oldest()
        self._pending[token] = fd

    def discard(self, token: object) -> None:
        """The connection's handshake ended (upgraded, refused, or gone); harmless twice."""
        self._pending.pop(token, None)

    def _cut_oldest(self) -> None:
        oldest = next(iter(self._pending))
        fd = self._pending.pop(oldest)
        self._stats.disconnects["pending_evicted"] += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "%d handshakes pending: cutting the oldest to admit new clients "
                "(a flood of silent connections? see --max-pending-handshakes)",
                self.limit,
            )
        try:
            # A socket object of our own on the descriptor, released again
            # without closing it: the greenlet that owns it closes it on EOF.
            # The C module's: gevent's (once monkey-patched) would add watchers.
            sock = _socket.socket(fileno=fd)
        except OSError:
            return  # not a socket any more: nothing left to cut
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut down or reset by the peer: the goal is reached
        finally:
            sock.detach()
