"""The settings ``--storage redis`` adds to ``fws_server`` (``RedisStorage.options``).

Each is a keyword argument of :class:`~fws.storage.redis.RedisStorage` and, as
``--name``, a command-line option (the seed's spellings), ``FWS_NAME`` in the
environment and a key of the ``-c`` JSON file.
"""

from __future__ import annotations

from ..base import StorageOption

__all__ = ["OPTIONS"]

OPTIONS: tuple[StorageOption, ...] = (
    StorageOption("redis_host", "localhost", "Redis host."),
    StorageOption("redis_port", 6379, "Redis port.", type=int),
    StorageOption(
        "redis_channels",
        ("global",),
        "Channels whose messages feed the consumer pipeline (e.g. broadcast_pubsub).",
        multiple=True,
    ),
    StorageOption("redis_key", "fws", "Prefix of every key and internal channel fws uses."),
    StorageOption(
        "redis_url",
        None,
        "redis://[user:pass@]host:port/db (rediss:// for TLS, unix:///path), "
        "redis+cluster://host:port[,host:port...] (Redis Cluster), "
        "redis+sentinel://host:port[,host:port...]/SERVICE[/DB] (Sentinel); "
        "overrides --redis_host/--redis_port.",
    ),
    StorageOption(
        "redis_ttl",
        30,
        "Seconds before a dead server's group memberships vanish from Redis.",
        type=int,
    ),
)
