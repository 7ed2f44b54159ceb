"""``Publisher``: a backend program's way to reach fws clients through Redis.

Needs redis-py only: importing it loads neither gevent nor gevent-websocket
(``tests/storage/test_redis.py`` checks), so a Flask or Django process, a cron
job or a shell can use it. It must run the same fws version as the servers:
the key layout and envelope are version 2.
"""

from __future__ import annotations

from typing import Any

from .envelope import encode_envelope
from .keys import KeyLayout
from .link import Link, SingleLink, open_link
from .scripts import Scripts

__all__ = ["Publisher"]


class Publisher:
    """Send to fws clients from any program through the Redis the servers share.

    ::

        from fws.storage.redis import Publisher
        fws = Publisher("redis://localhost:6379/0")
        fws.send_to_group("room42", "the build is green")   # servers reached
        fws.send_to_client(connection_id, "just for you")       # found or not
        fws.broadcast("maintenance at noon")
        fws.publish("global", "to the consumer pipelines")

    ``key`` must match the servers' ``--redis_key``. Each method returns how
    many servers (or, for ``send_to_client``, whether a server) took the
    message; 0 means nobody was there to receive it. On a cluster that count
    is what the one node that took the (S)PUBLISH saw: exact for groups,
    clients and broadcasts (sharded channels live on one shard), but only
    that node's subscribers for ``publish`` on a raw channel, which servers
    follow on any node. ``url`` takes every form the servers take
    (``redis+cluster://h:p,h:p``, ``redis+sentinel://h:p,h:p/SERVICE``, ...).
    ``client``: a ``redis.Redis`` of your own instead of ``url`` (one node
    only); ``close()`` then leaves its connections alone.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key: str = "fws",
        client: Any = None,
    ) -> None:
        self.link: Link = (
            SingleLink.from_client(client) if client is not None
            else open_link(url, "fws-publisher", pool_size=8)
        )  # fmt: skip
        self.keys = KeyLayout(key)
        self._scripts = Scripts(self.link.commands, self.keys)

    def broadcast(self, data: str | bytes) -> int:
        """Every client of every server."""
        return self.link.publish(self.keys.broadcast_channel, encode_envelope(data))

    def send_to_group(self, group: str, data: str | bytes) -> int:
        """The members of ``group``, on whichever servers they are; servers reached."""
        payload = encode_envelope(data, group=group)
        return self.link.publish(self.keys.group_channel(group), payload)

    def send_to_client(self, connection_id: str, data: str | bytes) -> bool:
        """One client, by its connection id (``web_socket_instance.id``); whether found."""
        sid = find_server(self.link.commands(), self._scripts, self.keys, connection_id)
        if sid is None:
            return False
        payload = encode_envelope(data, client=connection_id)
        return self.link.publish(self.keys.inbox(sid), payload) > 0

    def publish(self, channel: str, data: str | bytes) -> int:
        """Raw data to a ``--redis_channels`` channel: the consumer pipelines get it.

        Always a classic PUBLISH: on a cluster it reaches every node, so the
        servers' classic subscriptions (on any node) all get it.
        """
        return int(self.link.commands().publish(channel, data))

    def group_members(self, group: str) -> set[str]:
        """The connection ids in ``group``, over all live servers."""
        return self._scripts.group_members(group)

    def servers(self) -> set[str]:
        """Ids of the servers whose heartbeat is current."""
        return set(self._scripts.live_servers())

    def close(self) -> None:
        """Close the connections this Publisher opened (a given ``client``'s stay open)."""
        self.link.close()


def find_server(client: Any, scripts: Scripts, keys: KeyLayout, connection_id: str) -> str | None:
    """The live server that registered ``connection_id``, or None.

    One script for the live servers, then one pipelined SISMEMBER per server
    (each on its own slot ``{s:SID}``; a cluster pipeline splits them by node).
    """
    live = scripts.live_servers()
    if not live:
        return None
    with client.pipeline(transaction=False) as pipe:
        for sid in live:
            pipe.sismember(keys.clients(sid), connection_id)
        found = pipe.execute()
    for sid, member in zip(live, found, strict=True):
        if member:
            return sid
    return None
