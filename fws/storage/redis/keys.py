"""Names of fws's keys and channels in Redis: layout version 2.

``P`` is ``--redis_key`` (default ``fws``), ``SID`` a server id, ``NAME`` a
group. Whatever one script or one transaction touches shares a hash tag
``{...}``, so it lives in one slot: every Lua script then runs on one shard of
a Redis Cluster, and on one node nothing changes::

    P:servers                 ZSET  server id -> when its liveness expires (Redis clock)
    P:{s:SID}:info            STR   JSON about server SID (host, pid, ttl); TTL = liveness
    P:{s:SID}:clients         SET   connection ids connected to SID (TTL)
    P:{g:NAME}:servers        ZSET  server id -> liveness expiry: servers with members in NAME
    P:{g:NAME}:members:SID    SET   the members of NAME that SID added (TTL)

Channels (fws's own; sharded pub/sub on a cluster)::

    P:{broadcast}             every server, always subscribed: broadcasts
    P:{g:NAME}                the servers hosting group NAME: its messages, remove notices
    P:{s:SID}:inbox           server SID only: messages to one client

The ``--redis_channels`` are raw channels, outside this layout (classic
PUBLISH/SUBSCRIBE). Version 1 (``P:groups:NAME``, ``P:inbox:SID``, ...) is
gone: a Publisher and the servers must run the same fws version.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LAYOUT_VERSION", "KeyLayout"]

LAYOUT_VERSION = 2
"""Also the envelope's ``"v"``: both changed together."""


@dataclass(frozen=True)
class KeyLayout:
    """The key and channel names under one prefix (see the module docstring)."""

    prefix: str = "fws"

    # -- keys ---------------------------------------------------------------------

    @property
    def servers(self) -> str:
        return f"{self.prefix}:servers"

    def info(self, server_id: str) -> str:
        return f"{self.prefix}:{{s:{server_id}}}:info"

    def clients(self, server_id: str) -> str:
        return f"{self.prefix}:{{s:{server_id}}}:clients"

    def group_servers(self, name: str) -> str:
        return f"{self.prefix}:{{g:{name}}}:servers"

    def members_prefix(self, name: str) -> str:
        """What ``members(SID, name)`` starts with: scripts append the server ids."""
        return f"{self.prefix}:{{g:{name}}}:members:"

    def members(self, server_id: str, name: str) -> str:
        return self.members_prefix(name) + server_id

    # -- channels -----------------------------------------------------------------

    @property
    def broadcast_channel(self) -> str:
        return f"{self.prefix}:{{broadcast}}"

    def group_channel(self, name: str) -> str:
        return f"{self.prefix}:{{g:{name}}}"

    def inbox(self, server_id: str) -> str:
        return f"{self.prefix}:{{s:{server_id}}}:inbox"
