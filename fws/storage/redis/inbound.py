"""What arrives on fws's channels: checked, then delivered to this server's clients.

An envelope this server cannot read as a message (an unknown version or op,
over the size cap, malformed) is dropped with one warning per kind (then at
debug level), never delivered to clients as text, and counted in
``fws_redis_envelopes_dropped_total{reason}``. The kinds are a fixed set, so
neither the warnings nor what remembers them grow with what others publish.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..base import PubSubMessage
from .envelope import EnvelopeError, decode_envelope
from .membership import Membership

if TYPE_CHECKING:
    from ...server import Server

__all__ = ["Inbound", "warn_if_not_patched"]

log = logging.getLogger("fws.storage.redis")


class Inbound:
    """Delivers what the listener reads; ``max_size`` is the server's ``max_message_size``."""

    def __init__(self, server_id: str, members: Membership) -> None:
        self.server_id = server_id
        self._members = members
        self.max_size: int | None = None
        self.dropped = 0
        """Envelopes refused (unknown version or op, over the size cap, malformed)."""
        self._warned: set[str] = set()

    def received(self, server: Server, channel: str, data: Any, raw: bool) -> None:
        if raw:
            server.queue.put(PubSubMessage(channel, data))
            return
        try:
            envelope = decode_envelope(data, max_size=self.max_size)
        except EnvelopeError as exc:
            self.dropped += 1
            server.table.stats.redis_envelopes_dropped[exc.kind] += 1
            level = logging.DEBUG if exc.kind in self._warned else logging.WARNING
            self._warned.add(exc.kind)
            log.log(level, "dropped a message on %s: %s", channel, exc)
            return
        if envelope.origin == self.server_id:
            return  # delivered locally when it was sent
        if envelope.op == "remove":
            if envelope.group is not None and isinstance(envelope.data, str):
                self._members.leave(envelope.group, envelope.data)
        elif envelope.group is not None:
            members = self._members.groups.get(envelope.group)
            if members:
                server.broadcast(envelope.data, exclude=envelope.sender, to=members)
        elif envelope.client is not None:
            server.broadcast(envelope.data, to=(envelope.client,))
        else:
            server.broadcast(envelope.data, exclude=envelope.sender)


def warn_if_not_patched() -> None:
    """Blocking redis-py calls in an unpatched gevent process would stall every client."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency of fws
        return
    if not monkey.is_module_patched("socket"):
        log.warning(
            "the process is not monkey-patched: Redis calls will block the gevent hub "
            "(call gevent.monkey.patch_all() first, as fws_server does)"
        )
