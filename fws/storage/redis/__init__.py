"""Redis storage: several fws servers sharing one Redis act as one server.

One job per module (issue 11):

=====================  ================================================================
:mod:`.keys`            the key and channel layout (version 2, hash-tagged)
:mod:`.envelope`        the versioned JSON envelope on fws's channels
:mod:`.scripts`         the Lua scripts (``lua/*.lua``), one hash tag each
:mod:`.link`            the connection strategy chosen from the URL: one node,
                        :mod:`.cluster_link` (Redis Cluster, sharded pub/sub) or
                        :mod:`.sentinel_link` (Sentinel); :mod:`.classic` is the
                        classic pub/sub session, :mod:`.urls` the URLs and timeouts
:mod:`.publisher`       ``Publisher``, for backend programs (no gevent needed)
:mod:`.writer`          the one writer of this server's state: a queue of operations
:mod:`.subscriber`      the pub/sub session: subscriptions, heartbeat, reconnection
:mod:`.health`          outage state: one warning per outage, lost messages counted
:mod:`.storage`         ``RedisStorage``, the storage backend on top
=====================  ================================================================

``fws_server --storage redis`` loads this package (its ``storage_class``).
Importing it loads redis-py, not gevent: ``from fws.storage.redis import
Publisher`` works in any program.
"""

from __future__ import annotations

from .envelope import Envelope, decode_envelope, encode_envelope
from .keys import KeyLayout
from .link import POOL_SIZE
from .publisher import Publisher
from .storage import RedisStorage, StorageUnavailable, storage_class
from .subscriber import POLL

__all__ = [
    "POLL",
    "POOL_SIZE",
    "Envelope",
    "KeyLayout",
    "Publisher",
    "RedisStorage",
    "StorageUnavailable",
    "decode_envelope",
    "encode_envelope",
    "storage_class",
]
