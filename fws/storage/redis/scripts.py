"""The Lua scripts (``lua/*.lua``, package data) with their KEYS/ARGV conventions.

Each script touches the keys of ONE hash tag (see :mod:`.keys`), so on a
Redis Cluster it runs on the shard that owns that slot. Scripts read the
time with ``redis.call('TIME')``: liveness is judged by Redis's clock, never
by the clocks of the fws machines, which may disagree.

redis-py loads a script on first use (EVALSHA, then SCRIPT LOAD on NOSCRIPT).
The servers and :class:`~fws.storage.redis.Publisher` call the same scripts.
Each call runs on the client the link gives at that moment: a cluster link
only has one once the cluster has answered, and may replace it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from redis.commands.core import Script

from .keys import KeyLayout

__all__ = ["Scripts", "lua_source", "text"]


@cache
def lua_source(name: str) -> str:
    """The text of ``lua/NAME.lua``; read through importlib.resources, so zips work."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py answers bytes unless told otherwise)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _script(name: str) -> Script:
    """``lua/NAME.lua`` as a redis-py ``Script`` bound to no client (given at each call).

    The source is passed as bytes, so no client's encoder is needed to hash it.
    """
    return Script(None, lua_source(name).encode("utf-8"))  # type: ignore[arg-type]


class Scripts:
    """The scripts, run on ``commands()`` (a ``redis.Redis`` or ``RedisCluster``).

    Keys are passed as KEYS (never only built inside the script), so
    RedisCluster routes each call to the shard of its one hash tag.
    """

    def __init__(self, commands: Callable[[], Any], keys: KeyLayout) -> None:
        self._commands = commands
        self._keys = keys
        self._group_members = _script("group_members")
        self._remove_everywhere = _script("remove_everywhere")
        self._live_servers = _script("live_servers")

    def group_members(self, group: str) -> set[str]:
        """The connection ids in ``group`` over all live servers."""
        keys = [self._keys.group_servers(group)]
        args = [self._keys.members_prefix(group)]
        members = self._group_members(keys=keys, args=args, client=self._commands())
        return {text(member) for member in members}

    def remove_everywhere(self, group: str, member: str) -> int:
        """Remove ``member`` from ``group`` on every server; how many sets held it."""
        keys = [self._keys.group_servers(group)]
        args = [self._keys.members_prefix(group), member]
        return int(self._remove_everywhere(keys=keys, args=args, client=self._commands()))

    def live_servers(self) -> list[str]:
        """Ids of the servers whose heartbeat is current, by Redis's clock."""
        found = self._live_servers(keys=[self._keys.servers], client=self._commands())
        return [text(sid) for sid in found]
