"""Real Redis Cluster and Sentinel set-ups for tests: free loopback ports, temp dirs, no disk.

``redis_helpers.RedisServer`` runs one plain server; the cluster and sentinel
links need several cooperating processes that a test can SIGKILL one by one.
Nothing here touches a Redis on 6379. Without ``redis-server``/``redis-cli``
the tests skip, except under ``CI=true``, where they must fail instead.

Both fixtures are module-scoped: a cluster takes a few seconds to form, and
the CI budget is small. A test that kills a process restores the topology
with ``restart()`` / ``restart_old_primary()`` so later tests of the module
see all processes up again (possibly with primary and replica swapped, which
is exactly what fws must cope with anyway).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from helpers import LOOPBACK, require_binary, stop_process
from redis.cluster import key_slot

_T = TypeVar("_T")

NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout``: a killed primary is failed over about 1-2 s later."""
DOWN_AFTER_MS = 1000
"""Sentinel ``down-after-milliseconds``."""
FAILOVER_TIMEOUT_MS = 3000
SERVICE = "mymaster"


def require_redis_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli``; skip (fail under CI=true) when one is missing."""
    return (
        require_binary("redis-server", "apt-get install redis-server"),
        require_binary("redis-cli", "apt-get install redis-tools"),
    )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def free_port(bus: bool = False) -> int:
    """A free loopback port; with ``bus``, port+10000 (the cluster bus) is free too.

    Ports handed out earlier in this process are not handed out again: six
    nodes are chosen before any binds, and the kernel may otherwise return
    the same ephemeral port twice.
    """
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port in _handed_out or (bus and (port > 55535 or not _port_free(port + 10000))):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def _poll(predicate: Callable[[], _T], timeout: float, what: str, interval: float = 0.02) -> _T:
    """``predicate()`` once truthy; ``RuntimeError`` naming ``what`` after ``timeout`` s.

    Redis errors while polling count as "not yet": nodes come and go here.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout}s (last: {last!r})")
        time.sleep(interval)


@dataclass(eq=False)
class RedisProcess:
    """One ``redis-server`` (plain, cluster node or sentinel) on 127.0.0.1:``port``."""

    binary: str
    directory: Path
    port: int
    args: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False
    """SIGSTOPped: the process exists but answers nothing (a hung host, a partition)."""

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def name(self) -> str:
        """``host:port``, as redis-py's ``ClusterNode.name``."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (kept by Popen)
        self.process = subprocess.Popen(
            [self.binary, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 10) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server on {self.port} exited with {self.process.returncode}: "
                    + (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                )
            return bool(self.client().ping())

        _poll(ready, timeout, f"redis on port {self.port} ready")

    @property
    def alive(self) -> bool:
        """Running and answering (not killed, not paused)."""
        return self.process is not None and self.process.poll() is None and not self.paused

    def kill(self) -> None:
        """SIGKILL: no goodbye to peers or clients, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: sockets stay open but nothing answers, as with a hung or cut-off host."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        if self.paused and self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10) -> None:
        self.resume()  # a stopped process would not act on SIGTERM
        stop_process(self.process, timeout)

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 2)
        kwargs.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=LOOPBACK, port=self.port, **kwargs)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))


class RedisClusterProcesses:
    """Six ``--cluster-enabled`` nodes, three primaries with one replica each.

    ``startup_seconds`` says how long forming the cluster took (for the CI budget).
    """

    def __init__(self, directory: Path, nodes: int = 6, replicas: int = 1) -> None:
        self.binary, self.cli = require_redis_binaries()
        self.directory = directory
        self.replicas = replicas
        self.nodes: list[RedisProcess] = []
        for _ in range(nodes):
            port = free_port(bus=True)
            node_dir = directory / f"node-{port}"
            args = [
                "--port", str(port), "--bind", LOOPBACK,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "no", "--save", "",
                # Replicas sync at once instead of after the default 5 s delay.
                "--repl-diskless-sync-delay", "0",
                "--dir", str(node_dir), "--protected-mode", "yes",
            ]  # fmt: skip
            self.nodes.append(RedisProcess(self.binary, node_dir, port, args))
        self.startup_seconds = 0.0
        self._killed_slots: dict[str, int | None] = {}

    # -- addresses -------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.name for node in self.nodes)

    def node(self, name: str) -> RedisProcess:
        """The process of ``host:port`` ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def _any_live(self) -> RedisProcess:
        for node in self.nodes:
            if node.alive:
                return node
        raise RuntimeError("no cluster node is alive")

    def slots(self) -> dict[int, RedisProcess]:
        """First slot of each range -> its primary; asked from a live node."""
        with self._any_live().client() as client:
            table = client.execute_command("CLUSTER", "SLOTS")
        return {int(row[0]): self._process_of(row[2]) for row in table}

    def _process_of(self, entry: list[Any]) -> RedisProcess:
        return self.node(f"{LOOPBACK}:{int(entry[1])}")

    def primary_for_slot(self, slot: int, via: RedisProcess | None = None) -> RedisProcess:
        """The node that ``via`` (else any live node) believes serves ``slot``."""
        with (via or self._any_live()).client() as client:
            table = client.execute_command("CLUSTER", "SLOTS")
        for row in table:
            if int(row[0]) <= slot <= int(row[1]):
                return self._process_of(row[2])
        raise LookupError(f"slot {slot} is not covered")

    def node_for_key(self, key: str | bytes) -> RedisProcess:
        """The primary of ``key``'s slot (hash tags respected)."""
        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def primaries(self) -> list[RedisProcess]:
        return sorted(set(self.slots().values()), key=lambda node: node.port)

    # -- life cycle ------------------------------------------------------------

    def start(self, timeout: float = 30) -> RedisClusterProcesses:
        began = time.monotonic()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready(timeout)
        create = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(node.name for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if create.returncode != 0:
            output = create.stdout + create.stderr
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")
        self.wait_healthy(timeout)
        self.startup_seconds = time.monotonic() - began
        return self

    def _healthy(self) -> bool:
        """Every live node: state ok, knows every node, and all agree on the slot owners.

        The other live nodes must be replicas whose first sync is done: a
        replica still syncing cannot be promoted, and a restarted primary
        briefly claims its old slots before it learns it was replaced.
        """
        live = [node for node in self.nodes if node.alive]
        tables = set()
        for node in live:
            with node.client() as client:
                info = client.cluster("INFO")
                table = client.execute_command("CLUSTER", "SLOTS")
            if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                return False
            if int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
            tables.add(tuple((int(row[0]), int(row[1]), int(row[2][1])) for row in table))
        if len(tables) != 1:
            return False
        primaries = {port for _, _, port in tables.pop()}
        for node in live:
            if node.port in primaries:
                continue
            replication = node.info("replication")
            if replication["role"] != "slave" or replication["master_link_status"] != "up":
                return False
        return True

    def wait_healthy(self, timeout: float = 30) -> None:
        _poll(self._healthy, timeout, "cluster state ok on every node", interval=0.05)

    def kill(self, node: RedisProcess, *, pause: bool = False) -> float:
        """SIGKILL (SIGSTOP with ``pause``) ``node``; returns ``time.monotonic()`` of it.

        The first slot it served (if a primary) is noted for ``wait_for_failover``.
        """
        mine = [first for first, owner in self.slots().items() if owner is node]
        self._killed_slots[node.name] = mine[0] if mine else None
        if pause:
            node.pause()
        else:
            node.kill()
        return time.monotonic()

    def wait_for_failover(
        self, killed: RedisProcess, timeout: float = 20
    ) -> tuple[RedisProcess, float]:
        """Once every live node routes ``killed``'s slots to a replica: (new primary, when).

        ``when`` is the ``time.monotonic()`` at which this poll (every 20 ms)
        first saw all live nodes agree; ``LookupError`` if ``killed`` was no primary.
        """
        slot = self._killed_slots.get(killed.name)
        if slot is None:
            raise LookupError(f"{killed.name} served no slots when it was killed")

        def promoted() -> RedisProcess | None:
            try:
                owners = {
                    self.primary_for_slot(slot, via=node).name for node in self.nodes if node.alive
                }
            except LookupError:  # a node's table mid-failover may not list the slot yet
                return None
            if len(owners) == 1 and killed.name not in owners:
                owner = self.node(owners.pop())
                with owner.client() as client:
                    ok = client.cluster("INFO").get("cluster_state") == "ok"
                return owner if ok else None
            return None

        owner = _poll(promoted, timeout, f"failover of {killed.name}")
        return owner, time.monotonic()

    def node_id(self, node: RedisProcess) -> str:
        """``node``'s cluster id (``CLUSTER MYID``)."""
        with node.client(decode_responses=True) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def shard_subscribers(self, channel: str) -> dict[str, int]:
        """``PUBSUB SHARDNUMSUB channel`` on every live node: node name -> count."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            if node.alive:
                with node.client() as client:
                    reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
                counts[node.name] = int(reply[1])
        return counts

    def move_slot(self, slot: int, target: RedisProcess, timeout: float = 30) -> RedisProcess:
        """Migrate ``slot`` and its keys to primary ``target``; returns the former owner.

        What ``redis-cli --cluster reshard`` does for one slot, in the order
        the Redis Cluster spec gives: IMPORTING on the target, MIGRATING on
        the source, MIGRATE every key (new keys are ASK-redirected to the
        target meanwhile), then SETSLOT NODE on the target, the source and
        the other primaries. The cluster is healthy again on return.
        """
        source = self.primary_for_slot(slot)
        if source is target:
            return source
        source_id, target_id = self.node_id(source), self.node_id(target)
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

            def moved() -> bool:
                while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                    src.execute_command("MIGRATE", LOOPBACK, target.port, "", 0, 5000,
                                        "REPLACE", "KEYS", *keys)  # fmt: skip
                # The source refuses NODE while it still holds a key of the slot.
                for node in (target, source):
                    with node.client() as client:
                        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                return True

            _poll(moved, timeout, f"slot {slot} moved to {target.name}")
        for node in self.primaries():
            if node not in (source, target):
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_healthy(timeout)
        return source

    def restart(self, node: RedisProcess, timeout: float = 30) -> None:
        """Start a killed node again, or resume a paused one: it rejoins as a replica."""
        if node.paused:
            node.resume()
        else:
            node.start()
        node.wait_ready(timeout)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinelProcesses:
    """One primary, one replica, three sentinels watching service ``mymaster``."""

    def __init__(self, directory: Path, sentinels: int = 3) -> None:
        self.binary, self.cli = require_redis_binaries()
        self.directory = directory
        self.service = SERVICE
        primary_port, replica_port = free_port(), free_port()
        common = [
            "--bind", LOOPBACK, "--appendonly", "no", "--save", "", "--protected-mode", "no",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.servers = [
            RedisProcess(
                self.binary,
                directory / f"redis-{primary_port}",
                primary_port,
                [
                    "--port",
                    str(primary_port),
                    "--dir",
                    str(directory / f"redis-{primary_port}"),
                    *common,
                ],
            ),  # fmt: skip
            RedisProcess(
                self.binary,
                directory / f"redis-{replica_port}",
                replica_port,
                [
                    "--port",
                    str(replica_port),
                    "--dir",
                    str(directory / f"redis-{replica_port}"),
                    "--replicaof",
                    LOOPBACK,
                    str(primary_port),
                    *common,
                ],
            ),  # fmt: skip
        ]
        self.sentinels: list[RedisProcess] = []
        for _ in range(sentinels):
            port = free_port()
            sentinel_dir = directory / f"sentinel-{port}"
            self.sentinels.append(
                RedisProcess(self.binary, sentinel_dir, port, [str(sentinel_dir / "sentinel.conf"),
                                                              "--sentinel"])
            )  # fmt: skip
        self.old_primary: RedisProcess | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        hosts = ",".join(sentinel.name for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [sentinel.address for sentinel in self.sentinels]

    def _write_sentinel_config(self, sentinel: RedisProcess, primary: RedisProcess) -> None:
        sentinel.directory.mkdir(parents=True, exist_ok=True)
        (sentinel.directory / "sentinel.conf").write_text(
            f"port {sentinel.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {sentinel.directory}\n"
            "protected-mode no\n"
            f"sentinel monitor {self.service} {LOOPBACK} {primary.port} 2\n"
            f"sentinel down-after-milliseconds {self.service} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {self.service} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )

    def primary_address(self, via: RedisProcess | None = None) -> tuple[str, int]:
        """The primary as ``via`` (else the first live sentinel) names it."""
        sentinel = via or next(s for s in self.sentinels if s.alive)
        with sentinel.client(decode_responses=True) as client:
            host, port = client.sentinel_get_master_addr_by_name(self.service)
        return (host, int(port))

    @property
    def primary(self) -> RedisProcess:
        port = self.primary_address()[1]
        return next(server for server in self.servers if server.port == port)

    def _ready(self) -> bool:
        """Sentinels agree on the primary and know each other; a replica is in sync.

        The replica's link is checked on the processes themselves: sentinels
        refresh a replica's INFO only every 10 s, and waiting for that would
        make each restart slow without making a failover any surer.
        """
        primary = self.primary
        for sentinel in self.sentinels:
            with sentinel.client(decode_responses=True) as client:
                state = dict(client.execute_command("SENTINEL", "MASTER", self.service))
                replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
            if int(state["port"]) != primary.port or "s_down" in state["flags"]:
                return False
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                return False
            known = {int(dict(r)["port"]) for r in replicas if "s_down" not in dict(r)["flags"]}
            if not known:
                return False
        replication = primary.info("replication")
        return any(
            isinstance(value, dict) and value.get("state") == "online"
            for key, value in replication.items()
            if key.startswith("slave")
        )

    def start(self, timeout: float = 30) -> RedisSentinelProcesses:
        began = time.monotonic()
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready(timeout)
        # The replica in sync first: a sentinel learns replicas from the primary's
        # INFO, which it asks at once and then only every 10 s.
        _poll(lambda: self.servers[1].info("replication")["master_link_status"] == "up",
              timeout, "replica in sync")  # fmt: skip
        for sentinel in self.sentinels:
            self._write_sentinel_config(sentinel, self.servers[0])
            sentinel.start()
        for sentinel in self.sentinels:
            sentinel.wait_ready(timeout)
        self.wait_ready(timeout)
        self.startup_seconds = time.monotonic() - began
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Every sentinel agrees on the primary, knows the others and a synced replica."""
        _poll(self._ready, timeout, "sentinels agree on a primary with a replica", interval=0.05)

    def kill_primary(self, *, pause: bool = False) -> float:
        """SIGKILL (SIGSTOP with ``pause``) the primary; returns ``time.monotonic()`` of it."""
        self.old_primary = self.primary
        if pause:
            self.old_primary.pause()
        else:
            self.old_primary.kill()
        return time.monotonic()

    def wait_for_promotion(self, timeout: float = 30) -> tuple[tuple[str, int], float]:
        """(new primary address, ``time.monotonic()`` when a sentinel first named it).

        Sentinels switch the address they answer at ``+switch-master``, after
        the replica accepted ``REPLICAOF NO ONE``; polled every 10 ms.
        """
        assert self.old_primary is not None, "kill_primary() first"
        old = self.old_primary.address

        def promoted() -> tuple[str, int] | None:
            for sentinel in self.sentinels:
                if sentinel.alive:
                    address = self.primary_address(via=sentinel)
                    if address != old:
                        return address
            return None

        address = _poll(promoted, timeout, "sentinel promotion", interval=0.01)
        return address, time.monotonic()

    def restart_old_primary(self, timeout: float = 30) -> None:
        """Start the killed (resume the paused) primary again, as a replica of the new one.

        Sentinels would reconfigure it themselves, but only after their next
        INFO round (10 s); REPLICAOF here does the same at once.
        """
        old = self.old_primary
        if old is not None and old.paused:
            old.resume()
        if old is not None:
            if not old.alive:
                old.start()
            old.wait_ready(timeout)
            host, port = self.primary_address()
            with old.client() as client:
                client.execute_command("REPLICAOF", host, str(port))
        self.old_primary = None
        self.wait_ready(timeout)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()


@contextlib.contextmanager
def _temporary_directory(prefix: str) -> Iterator[Path]:
    """A short temp dir: unix socket paths and log lines stay readable."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[RedisClusterProcesses]:
    """A formed cluster, stopped and removed afterwards (also when start-up fails)."""
    with _temporary_directory("fws-cluster-") as directory:
        cluster = RedisClusterProcesses(directory)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@contextlib.contextmanager
def running_sentinel() -> Iterator[RedisSentinelProcesses]:
    """A sentinel-managed primary/replica, stopped and removed afterwards."""
    with _temporary_directory("fws-sentinel-") as directory:
        setup = RedisSentinelProcesses(directory)
        try:
            yield setup.start()
        finally:
            setup.stop()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A six-node cluster shared by one test module (forming one takes seconds)."""
    with running_cluster() as cluster:
        print(f"\nredis cluster formed in {cluster.startup_seconds:.2f}s")
        yield cluster


@pytest.fixture(scope="module")
def redis_sentinel() -> Iterator[RedisSentinelProcesses]:
    """A sentinel set-up shared by one test module."""
    with running_sentinel() as setup:
        print(f"\nredis sentinel set-up ready in {setup.startup_seconds:.2f}s")
        yield setup
