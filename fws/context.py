"""What every connection of a server shares: its settings and its table.

A ``Connection`` reads nothing else of its server, so connection code can be
read, and tested, with a table and settings of its own (``connection.server``
stays for filters: the seed's filters reach the server through it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .stats import ServerStats

if TYPE_CHECKING:
    from .after_input import AfterInput
    from .busy_poll import BusyPoll
    from .connection import Connection
    from .inbound import Inbound
    from .outbound import Deferred, Outbound
    from .pipeline import Pipeline
    from .storage.base import Storage

__all__ = ["BACKLOG", "READ_SIZE", "ConnectionSettings", "ConnectionTable"]

BACKLOG = 2048
"""Listen backlog: reconnect storms open thousands of connections at once (the
kernel caps it at net.core.somaxconn)."""

READ_SIZE = 262144
"""Bytes one recv may return; the size of the read buffer every reader shares."""


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Limits and timeouts, the same for every connection of a server; ``None``: off.

    The defaults are ``fws.Server``'s (which documents each).
    """

    max_message_size: int | None = 2**20
    max_outbound_bytes: int | None = 4 * 2**20
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    idle_timeout: float | None = None
    close_timeout: float = 5.0
    max_messages_per_second: float | None = None
    message_burst: int = 1
    """Messages a client may send at once within the rate (the bucket's size)."""
    message_interval: float = field(init=False, default=0.0)
    """1 / max_messages_per_second: the rate limit's step, computed once, not per message."""
    message_slack: float = field(init=False, default=0.0)
    """How far ahead of now a client's bucket may run before it is over the rate."""

    def __post_init__(self) -> None:
        if self.max_messages_per_second is not None:
            interval = 1.0 / self.max_messages_per_second
            object.__setattr__(self, "message_interval", interval)
            # The 1e-9 keeps float rounding from refusing the burst's last message.
            object.__setattr__(self, "message_slack", self.message_burst * interval + 1e-9)


class ConnectionTable:
    """The connections of one server and what they use together while they run.

    ``dispatch(event, instance, data)`` runs an event's pipeline (the server's,
    which logs a filter that raises); ``pipelines`` says which events have
    filters at all, so that a connection skips work nobody listens to.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        queue: Any,
        pipelines: dict[str, Pipeline],
        dispatch: Callable[[str, Any, Any], Any],
    ) -> None:
        self.users: dict[str, Connection] = {}
        """Every open connection, by id."""
        self.reading: set[Inbound] = set()
        """Connections whose reader greenlet runs; the others wait on a watcher."""
        self.finishing: set[Connection] = set()
        """Connections out of ``users`` whose disconnect pipeline and storage clean-up run."""
        self.to_flush: list[Outbound] = []
        """Connections with frames queued for the flusher's next turn (``fws.outbound``)."""
        self.flusher: Any = None
        """The flusher's hub callback while it is due or running (True while ``after_input``
        runs it); None otherwise."""
        self.deferred: list[Deferred] = []
        """Broadcasts to every connection, queued for nobody yet: the flusher sends each
        connection its share with its queue (``fws.outbound.defer_broadcast``)."""
        self.after_input: AfterInput | None = None
        """Where deferred broadcasts wait for the hub to read what arrived (``fws.after_input``);
        None: sent on the hub's next turn (a server not started)."""
        self.opening = 0
        """Connections whose open pipeline runs: while any does, no broadcast is deferred."""
        self.read_buffer = bytearray(READ_SIZE)
        """Every reader's recv_into target; a chunk is parsed before its reader yields."""
        self.storage = storage
        self.queue = queue
        """Items put here run through the consumer pipeline."""
        self.pipelines = pipelines
        self.dispatch = dispatch
        self.stopping = False
        """True once the server stops: a connection upgraded now is closed with 1001."""
        self.hub: Any = None
        """The gevent hub of the thread that started the server: the flusher runs there,
        so queueing from another thread is refused (``fws.outbound``). None: not started."""
        self.busy_poll: BusyPoll | None = None
        """The hub's spinning after a reader waits (``fws.busy_poll``); None: off."""
        self.stats = ServerStats()
        """Counters for metrics; bump them, never read them on a hot path."""
