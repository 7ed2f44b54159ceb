"""The Redis set-ups the cluster benchmark compares: one redis-server, or a 3-shard cluster.

The cluster is the tests' own real-process fixture (``tests/redis_topologies.py``:
six ``--cluster-enabled`` nodes, three primaries with one replica each, on
free 127.0.0.1 ports), imported from there rather than copied. Each set-up
yields its URL for ``fws_server --redis-url`` and the pid, port and role of
every redis-server process, so that the benchmark can read each node's CPU
time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from procs import LOOPBACK, redis_server

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"


@dataclass(frozen=True)
class Node:
    port: int
    pid: int
    role: str  # "primary" or "replica"
    slots: tuple[tuple[int, int], ...] = ()  # slot ranges served (primaries of a cluster)

    @property
    def name(self) -> str:
        return f"{LOOPBACK}:{self.port}"


@dataclass(frozen=True)
class Setup:
    name: str
    url: str
    sharded: bool  # a cluster: fws's channels are SPUBLISH/SSUBSCRIBE
    nodes: tuple[Node, ...]

    @property
    def primaries(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.role == "primary")

    def primary_for_slot(self, slot: int) -> Node:
        for node in self.primaries:
            if any(first <= slot <= last for first, last in node.slots):
                return node
        if not self.sharded:
            return self.primaries[0]
        raise LookupError(f"slot {slot} is not served")


def redis_info_pid(port: int) -> int:
    import redis

    with redis.Redis(host=LOOPBACK, port=port) as client:
        return int(client.info("server")["process_id"])


@contextlib.contextmanager
def single(directory: Path) -> Iterator[Setup]:
    """One redis-server (``procs.redis_server``: no disk, no replica)."""
    with redis_server(directory) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        yield Setup("1 Redis", url, False, (Node(port, redis_info_pid(port), "primary"),))


@contextlib.contextmanager
def cluster() -> Iterator[Setup]:
    """Three primaries with a replica each: the tests' fixture, formed in a few seconds."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from redis_topologies import running_cluster  # tests/redis_topologies.py

    with running_cluster() as processes:
        with processes.nodes[0].client() as client:
            table = client.execute_command("CLUSTER", "SLOTS")
        ranges: dict[int, list[tuple[int, int]]] = {}
        for row in table:
            ranges.setdefault(int(row[2][1]), []).append((int(row[0]), int(row[1])))
        nodes = []
        for process in processes.nodes:
            assert process.process is not None
            role = "primary" if process.port in ranges else "replica"
            slots = tuple(ranges.get(process.port, ()))
            nodes.append(Node(process.port, process.process.pid, role, slots))
        yield Setup("3-shard cluster", processes.url, True, tuple(nodes))
