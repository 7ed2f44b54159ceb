"""Redis memory per connection: fws's layout-2 keys for many clients, in a private redis-server.

Writes, with fws's own key names (``fws.storage.redis.keys``), the state that
SERVERS fws servers keep for CONNECTIONS clients in groups of GROUP_SIZE
(placed at random, as a load balancer would): each server's client set, each
group's server ZSET and per-server member sets, the server ZSET. Then reads
``used_memory`` and prints bytes per connection. Nothing but Redis runs: a
few seconds, 127.0.0.1 only.

Run: python bench/redis_memory.py [--connections 200000] [--servers 80] [--group-size 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from procs import redis_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fws.storage.redis.keys import KeyLayout  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200_000)
    parser.add_argument("--servers", type=int, default=80)
    parser.add_argument("--group-size", type=int, default=10)
    args = parser.parse_args()
    if not (1 <= args.connections <= 2_000_000 and 1 <= args.servers <= 1000):
        parser.error("keep it bounded: connections 1..2,000,000, servers 1..1000")
    keys = KeyLayout("fws")
    servers = [uuid.uuid4().hex for _ in range(args.servers)]
    chooser = random.Random(1)
    expires = time.time() + 3600
    with tempfile.TemporaryDirectory(prefix="fws-bench-") as tmp, redis_server(tmp) as url:
        client = redis.Redis.from_url(url)
        empty = int(client.info("memory")["used_memory"])
        pipe = client.pipeline(transaction=False)
        pipe.zadd(keys.servers, {sid: expires for sid in servers})
        hosts: dict[str, set[str]] = {}
        for index in range(args.connections):
            connection = str(uuid.UUID(int=chooser.getrandbits(128), version=4))
            sid = servers[chooser.randrange(args.servers)]
            group = f"room-{index // args.group_size}"
            pipe.sadd(keys.clients(sid), connection)
            pipe.sadd(keys.members(sid, group), connection)
            hosts.setdefault(group, set()).add(sid)
            if index % 5000 == 4999:
                pipe.execute()
        for group, sids in hosts.items():
            pipe.zadd(keys.group_servers(group), {sid: expires for sid in sids})
        pipe.execute()
        used = int(client.info("memory")["used_memory"]) - empty
        fanout = sum(len(s) for s in hosts.values()) / len(hosts)
        client.close()
    print(
        f"{args.connections:,} connections on {args.servers} servers in groups of "
        f"{args.group_size} ({len(hosts):,} groups on {fanout:.1f} servers each): Redis "
        f"used_memory +{used / 2**20:,.1f} MiB = {used / args.connections:,.0f} bytes per "
        f"connection"
    )


if __name__ == "__main__":
    main()
