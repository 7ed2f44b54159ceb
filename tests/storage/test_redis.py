"""The Redis storage's own operations, against a real redis-server.

The storage runs in the test thread (and its listener in a plain thread): the
test process is not monkey-patched, so blocking redis-py calls are fine here.
A ``Recorder`` stands in for the fws server: it records what the storage asks
it to deliver. Whole servers are tested in ``tests/test_cluster.py``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from helpers import LOOPBACK, free_port, wait_for
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

from fws.errors import ConfigurationError
from fws.stats import ServerStats
from fws.storage.base import PubSubMessage
from fws.storage.redis import (
    Publisher,
    RedisStorage,
    StorageUnavailable,
    decode_envelope,
    encode_envelope,
)
from fws.storage.redis.envelope import DROP_KINDS, EnvelopeError
from fws.storage.redis.inbound import Inbound
from fws.storage.redis.link import ClusterLink, SentinelLink, SingleLink, open_link


class Recorder:
    """What a storage needs of a server: ``users``, ``queue``, ``broadcast``, ``table.stats``."""

    def __init__(self, *user_ids: str, max_message_size: int | None = 2**20) -> None:
        self.table = types.SimpleNamespace(stats=ServerStats())
        self.connection_settings = types.SimpleNamespace(max_message_size=max_message_size)
        self.users: dict[str, object] = {user_id: object() for user_id in user_ids}
        self.queue: queue.Queue[Any] = queue.Queue()
        self.sent: list[tuple[Any, str | None, tuple[str, ...] | None]] = []

    def broadcast(self, data: Any, *, exclude: str | None = None, to: Any = None) -> int:
        recipients = tuple(self.users) if to is None else tuple(to)
        self.sent.append((data, exclude, None if to is None else tuple(sorted(to))))
        return len([r for r in recipients if r in self.users and r != exclude])


class Running:
    """A storage opened on a Recorder, its listener in a thread; closed at the end."""

    def __init__(self, url: str, *users: str, **options: Any) -> None:
        options.setdefault("redis_ttl", 3)
        self.storage = RedisStorage(redis_url=url, **options)
        self.server = Recorder(*users)
        self.thread = threading.Thread(target=self.storage.listen, daemon=True)

    def __enter__(self) -> Running:
        self.storage.open(self.server)  # type: ignore[arg-type]
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.storage.close()
        self.thread.join(10)
        assert not self.thread.is_alive(), "listener did not stop"


@pytest.fixture
def running(redis_server: RedisServer) -> Iterator[Any]:  # noqa: F811
    opened: list[Running] = []

    def start(*users: str, **options: Any) -> Running:
        node = Running(redis_server.url, *users, **options).__enter__()
        opened.append(node)
        return node

    try:
        yield start
    finally:
        for node in reversed(opened):
            node.__exit__(None, None, None)


# -- the envelope ------------------------------------------------------------------


def test_envelope_is_json_and_round_trips_text_and_binary() -> None:
    text = encode_envelope("héllo", origin="s1", sender="c1", group="g")
    assert json.loads(text)["text"] == "héllo"
    assert decode_envelope(text).data == "héllo"
    assert decode_envelope(text).group == "g"
    binary = encode_envelope(b"\x00\xff", client="c2")
    assert "binary" in json.loads(binary)
    assert decode_envelope(binary).data == b"\x00\xff"
    assert decode_envelope(binary).client == "c2"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"v": 1}', b'{"text": "x", "group": 3}'])
def test_malformed_envelope_is_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_envelope(raw)


# -- start-up errors -----------------------------------------------------------------


def test_invalid_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis URL"):
        RedisStorage(redis_url="http://127.0.0.1:1/0")


def test_refused_connection_at_start_up_is_a_configuration_error() -> None:
    port = free_port()
    with pytest.raises(
        ConfigurationError, match=f"cannot reach Redis at redis://{LOOPBACK}:{port}"
    ):
        RedisStorage(redis_url=f"redis://{LOOPBACK}:{port}/0")


def test_password_is_not_shown_in_errors() -> None:
    port = free_port()
    with pytest.raises(ConfigurationError) as info:
        RedisStorage(redis_url=f"redis://user:s3cret@{LOOPBACK}:{port}/0")
    assert "s3cret" not in str(info.value)


# -- groups ------------------------------------------------------------------------


def test_groups_are_per_server_redis_sets_with_a_ttl(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    node = running(redis_key="app", redis_ttl=30)
    storage = node.storage
    storage.add("room", "c1")
    storage.add("room", "c2")
    storage.add("room", "c1")
    r = redis_server.client()
    sid = storage.server_id
    members, servers = f"app:{{g:room}}:members:{sid}", "app:{g:room}:servers"
    wait_for(lambda: r.smembers(members) == {b"c1", b"c2"}, 5, "members not written")
    now = r.time()[0]
    assert 0 < r.zscore(servers, sid) - now <= 31  # liveness expiry, by Redis's clock
    assert 0 < r.zscore("app:servers", sid) - now <= 31
    assert 0 < r.ttl(members) <= 30
    assert 0 < r.ttl(servers) <= 30
    assert 0 < r.ttl(f"app:{{s:{sid}}}:info") <= 30
    assert json.loads(r.get(f"app:{{s:{sid}}}:info"))["ttl"] == 30  # JSON, never pickle
    assert storage.get("room") == storage["room"] == {"c1", "c2"}
    assert all(key.startswith(b"app:") for key in r.keys("*"))

    storage.remove("room", "c1")
    storage.remove("room", "nobody")
    wait_for(lambda: storage.get("room") == {"c2"}, 5, "c1 stayed")
    storage.remove("room", "c2")
    wait_for(lambda: storage.get("room") == set(), 5, "c2 stayed")
    wait_for(lambda: not r.exists(members), 5, "the empty member set stayed")
    assert r.zrange(servers, 0, -1) == []


def test_each_script_and_pipeline_key_of_a_group_shares_one_hash_tag(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    from redis.crc import key_slot

    node = running("c1")
    node.storage.connected("c1")
    node.storage.add("a}b{c", "c1")  # braces in a name: still one slot per group
    r = redis_server.client()
    wait_for(lambda: len(r.keys("fws:{g:*")) == 2, 5, "group keys not written")
    group_keys = [*r.keys("fws:{g:*"), node.storage.keys.group_channel("a}b{c").encode()]
    assert len({key_slot(key) for key in group_keys}) == 1
    sid = node.storage.server_id
    server_keys = [*r.keys(f"fws:{{s:{sid}}}*"), node.storage.keys.inbox(sid).encode()]
    assert len(server_keys) == 3
    assert len({key_slot(key) for key in server_keys}) == 1


def test_groups_are_shared_by_servers(running: Any) -> None:
    a = running("a1").storage
    b = running("b1").storage
    a.add("room", "a1")
    b.add("room", "b1")
    # get() is eventually consistent: add() does not wait for the writer.
    wait_for(lambda: a.get("room") == b.get("room") == {"a1", "b1"}, 5, "not written")
    b.remove("room", "a1")  # whoever added it
    wait_for(lambda: a.get("room") == {"b1"}, 5, "a1 stayed")
    # a's own view follows, so it stops delivering group messages to a1
    wait_for(lambda: "room" not in a._groups, 5, "the owner was not told about the removal")


def test_removing_a_member_whose_join_is_not_written_yet(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b removes a's fresh member while a's writer still holds the SADD: it stays removed.

    Redis has nothing to remove yet; the notice must go out anyway, so that
    a drops the member from its mirror and its writer's Left follows the SADD.
    """
    a = running("a1").storage
    b = running("b1").storage
    release = threading.Event()
    execute = a._writer.execute

    def held(ops: Any) -> None:
        release.wait(5)
        execute(ops)

    monkeypatch.setattr(a._writer, "execute", held)
    a.add("room", "a1")  # returns once a follows the room; the SADD waits in the writer
    assert b.get("room") == set()
    b.remove("room", "a1")
    wait_for(lambda: "room" not in a._groups, 5, "a was not told about the removal")
    release.set()
    time.sleep(0.3)
    assert b.get("room") == set()


def test_a_failed_write_still_deletes_the_groups_it_left(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last member leaves, that pipeline fails: the snapshot after it deletes the group.

    The writer must not forget a group as "no longer in Redis" before its
    DEL was written; otherwise the key stays visible to ``get`` until its TTL.
    """
    node = running("c1", redis_ttl=30)
    node.storage.add("room", "c1")
    key = f"fws:{{g:room}}:members:{node.storage.server_id}"
    wait_for(lambda: redis_server.client().exists(key), 5, "not written")
    real = redis.client.Pipeline.execute
    failed: list[bool] = []

    def flaky(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        if not failed and any(args[0] == "SREM" for args, _ in pipe.command_stack):
            failed.append(True)
            raise redis.ConnectionError("injected")
        return real(pipe, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", flaky)
    node.storage.remove("room", "c1")
    wait_for(lambda: failed, 5, "the Left was not written")
    wait_for(lambda: not redis_server.client().exists(key), 10, "the group's key stayed")


def abandon(storage: RedisStorage) -> None:
    """Stop a storage as SIGKILL would: no heartbeat, no clean-up, its keys left to expire."""
    storage._listener.closing.set()
    storage._writer.stop(5)
    storage._listener.drop()
    storage.link.close()


def test_dead_server_members_expire(running: Any, redis_server: RedisServer) -> None:  # noqa: F811
    a = running("ghost", redis_ttl=1).storage
    a.add("room", "ghost")
    b = running("b1", redis_ttl=1).storage
    b.add("room", "b1")
    wait_for(lambda: b.get("room") == {"ghost", "b1"}, 5, "not both written")
    abandon(a)
    wait_for(lambda: b.get("room") == {"b1"}, 4, "the dead server's member stayed")
    wait_for(lambda: not redis_server.client().exists(f"fws:{{g:room}}:members:{a.server_id}"), 4)
    assert Publisher(redis_server.url).servers() == {b.server_id}


def test_heartbeat_rewrites_state_lost_by_redis(running: Any, redis_server: RedisServer) -> None:  # noqa: F811
    node = running("c1", redis_ttl=1)
    node.storage.add("room", "c1")
    wait_for(lambda: node.storage.get("room") == {"c1"}, 5, "not written")
    redis_server.client().flushall()
    wait_for(lambda: node.storage.get("room") == {"c1"}, 5, "state not rewritten after FLUSHALL")


# -- fan-out -------------------------------------------------------------------------


def test_group_message_reaches_only_servers_with_members_once(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    def following() -> int:
        """Sessions subscribed to the group's channel (what c must not be)."""
        return int(redis_server.client().pubsub_numsub("fws:{g:room}")[0][1])

    a = running("a1", "a2")
    b = running("b1")
    c = running("c1")
    a.storage.add("room", "a1")
    a.storage.add("room", "a2")
    b.storage.add("room", "b1")
    a.storage.send_to_group("room", "hi", sender="a1")
    assert a.server.sent == [("hi", "a1", ("a1", "a2"))]  # local, at once
    wait_for(lambda: b.server.sent, 5, "b did not get the group message")
    time.sleep(0.3)
    assert b.server.sent == [("hi", "a1", ("b1",))]
    assert c.server.sent == []  # no members in room: no traffic
    assert following() == 2  # a and b; c never subscribed
    a.storage.remove("room", "a1")
    time.sleep(0.2)
    assert following() == 2  # a still hosts a2
    a.storage.remove("room", "a2")
    wait_for(lambda: following() == 1, 5, "a still follows the room after its last member")
    b.storage.remove("room", "b1")
    wait_for(lambda: following() == 0, 5, "b still follows the room after its last member")


def test_broadcast_reaches_every_server_once_and_skips_the_origin(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    a = running("a1")
    b = running("b1")
    a.storage.connected("a1")
    b.storage.connected("b1")
    numsub = redis_server.client().pubsub_numsub
    assert dict(numsub("fws:{broadcast}"))[b"fws:{broadcast}"] == 2  # since open()
    a.storage.broadcast(b"\x00bin", sender="a1")
    wait_for(lambda: b.server.sent, 5, "b did not get the broadcast")
    time.sleep(0.3)
    assert a.server.sent == [(b"\x00bin", "a1", None)]
    assert b.server.sent == [(b"\x00bin", "a1", None)]


def test_configured_channels_feed_the_consumer_queue(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    node = running(redis_channels=("global", "news"))
    redis_server.client().publish("news", b"hello")
    item = node.server.queue.get(timeout=5)
    assert item == PubSubMessage("news", b"hello")
    node.storage.publish("global", "from fws")
    assert node.server.queue.get(timeout=5) == PubSubMessage("global", b"from fws")


def test_publisher_close_leaves_a_given_client_connected(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = redis_server.client()
    before = client.client_id()
    backend = Publisher(client=client)
    assert backend.broadcast("nobody listens") == 0
    backend.close()
    assert client.client_id() == before  # the same connection: not disconnected
    client.close()


def test_publisher_targets_a_group_or_one_client(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    a = running("a1", "a2")
    b = running("b1")
    for storage, user in ((a.storage, "a1"), (a.storage, "a2"), (b.storage, "b1")):
        storage.connected(user)
    a.storage.add("room", "a1")
    b.storage.add("room", "b1")
    backend = Publisher(redis_server.url)
    try:
        wait_for(lambda: backend.group_members("room") == {"a1", "b1"}, 5, "not written")
        wait_for(lambda: backend.send_to_client("a2", "just a2"), 5, "a2 not registered")
        assert backend.servers() == {a.storage.server_id, b.storage.server_id}
        assert backend.send_to_group("room", "to the room") == 2
        assert backend.send_to_client("nobody", "lost") is False
        assert backend.send_to_group("empty", "lost") == 0
        wait_for(lambda: len(a.server.sent) == 2 and b.server.sent, 5, "not delivered")
        assert sorted(a.server.sent, key=str) == sorted(
            [("to the room", None, ("a1",)), ("just a2", None, ("a2",))], key=str
        )
        assert b.server.sent == [("to the room", None, ("b1",))]
    finally:
        backend.close()


# -- outages -------------------------------------------------------------------------


def test_outage_flags_health_defers_writes_and_resyncs(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="fws.storage.redis")
    node = running("c1", "c2")
    storage = node.storage
    storage.add("room", "c1")
    assert storage.pubsub_live
    redis_server.stop()
    wait_for(lambda: not storage.pubsub_live, 5, "health flag stayed up")
    for n in range(20):
        storage.send_to_group("room", f"m{n}", sender="c2")  # local delivery goes on
    storage.publish("global", b"still here")  # a followed channel: this server's consumers
    assert node.server.queue.get(timeout=5) == PubSubMessage("global", b"still here")
    storage.publish("elsewhere", b"x")  # a channel this server does not follow
    storage.add("room", "c2")  # kept locally, written after the outage
    with pytest.raises(StorageUnavailable):
        storage.get("room")
    assert len(node.server.sent) == 20
    redis_server.start()
    wait_for(lambda: storage.pubsub_live, 10, "did not reconnect")
    assert storage.get("room") == {"c1", "c2"}  # rewritten from the local mirror
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "unreachable" in r.message
    ]
    assert len(warnings) == 1, [r.message for r in caplog.records]
    assert any("22 message(s)" in r.message for r in caplog.records)
    assert node.server.queue.empty()
    stats = node.server.table.stats  # what fws_redis_*_total export
    assert (stats.redis_outages, stats.redis_messages_lost) == (1, 22)


def test_one_pool_and_one_pubsub_connection(running: Any, redis_server: RedisServer) -> None:  # noqa: F811
    node = running()
    for n in range(300):
        node.storage.connected(f"c{n}")
        node.storage.add(f"g{n % 7}", f"c{n}")
        node.storage.remove(f"g{n % 7}", f"c{n}")
        node.storage.disconnected(f"c{n}")
    sid = node.storage.server_id
    names = [c["name"] for c in redis_server.client().client_list()]
    assert names.count(f"fws-{sid}-pubsub") == 1
    # 1,200 sequential operations reuse a connection or two (the heartbeat may
    # hold one at the same moment); a leak would show hundreds.
    assert 1 <= names.count(f"fws-{sid}") <= 2


def test_a_failed_publish_while_pubsub_stays_up_recovers_by_itself(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="fws.storage.redis")
    node = running("c1")
    storage = node.storage
    storage.add("room", "c1")
    admin = redis_server.client()
    # A command-side failure only: Redis refuses PUBLISH and scripts for a while;
    # the pub/sub connection and the heartbeat's commands keep working.
    admin.execute_command("ACL", "SETUSER", "default", "-publish", "-evalsha", "-eval")
    storage.send_to_group("room", "hello", sender="c1")
    assert not storage.pubsub_live
    admin.execute_command("ACL", "SETUSER", "default", "+@all")
    wait_for(lambda: storage.pubsub_live, 10, "never recovered after a command-side failure")
    assert storage.get("room") == {"c1"}
    assert any("is back after" in r.message for r in caplog.records)


def test_dead_server_ids_are_pruned_from_the_server_set(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    node = running("c1", redis_ttl=1)
    admin = redis_server.client()
    admin.zadd("fws:servers", {"ghost-of-a-killed-server": admin.time()[0] - 1})
    wait_for(
        lambda: admin.zscore("fws:servers", "ghost-of-a-killed-server") is None,
        5,
        "a dead server id stayed in fws:servers",
    )
    assert admin.zscore("fws:servers", node.storage.server_id) is not None


def test_every_server_follows_broadcasts_from_the_start(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    admin = redis_server.client()
    empty, busy = running(), running("c1")
    assert dict(admin.pubsub_numsub("fws:{broadcast}"))[b"fws:{broadcast}"] == 2
    empty.storage.broadcast("to every client", sender=None)  # from the server with none
    wait_for(lambda: busy.server.sent, 5, "the broadcast did not arrive")
    assert empty.server.sent == [("to every client", None, None)]  # its own local delivery


# -- the envelope: version 2, unknown versions and ops, the size cap ------------------


def test_envelope_carries_layout_version_2() -> None:
    assert json.loads(encode_envelope("x"))["v"] == 2


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"v": 1, "text": "from fws 0.5"}', "version"),
        (b'{"v": 3, "text": "from the future"}', "version"),
        (b'{"text": "no version"}', "version"),
        (b'{"v": 2, "op": "teleport", "text": "x"}', "op"),
    ],
)
def test_unknown_version_or_op_is_refused_not_read_as_a_message(raw: bytes, kind: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(raw)
    assert info.value.kind == kind


def test_envelope_size_cap_is_the_message_size_limit() -> None:
    assert decode_envelope(encode_envelope("é" * 50), max_size=100).data == "é" * 50
    # Four bytes a character, the most UTF-8 takes: at the cap, then over it.
    assert decode_envelope(encode_envelope("😀" * 25), max_size=100).data == "😀" * 25
    with pytest.raises(EnvelopeError, match="104 bytes"):
        decode_envelope(encode_envelope("😀" * 26), max_size=100)
    with pytest.raises(EnvelopeError, match="over 100"):
        decode_envelope(encode_envelope("é" * 51), max_size=100)  # 102 bytes of UTF-8
    with pytest.raises(EnvelopeError, match="over 100"):
        decode_envelope(encode_envelope(b"\x00" * 101), max_size=100)
    with pytest.raises(EnvelopeError, match="size cap"):  # refused before parsing
        decode_envelope(b" " * 5000 + encode_envelope("x"), max_size=100)
    assert decode_envelope(encode_envelope(b"\x00" * 10**6)).data == b"\x00" * 10**6  # no cap


def test_refused_envelopes_are_dropped_with_one_warning_per_kind(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="fws.storage.redis")
    node = running("c1")
    admin = redis_server.client()
    bad = [
        b'{"v": 1, "text": "old"}', b'{"v": 1, "text": "old again"}',
        b'{"v": 2, "op": "teleport", "text": "x"}', b"not json",
        encode_envelope("x" * 101), encode_envelope("x" * 102),
    ]  # fmt: skip
    node.storage._inbound.max_size = 100  # what open() read from the server
    for raw in [*bad, encode_envelope("fits")]:
        admin.publish("fws:{broadcast}", raw)
    wait_for(lambda: node.server.sent, 5, "the good envelope did not arrive")
    assert node.server.sent == [("fits", None, None)]
    warnings = [r.message for r in caplog.records if r.message.startswith("dropped")]
    assert len(warnings) == 4, warnings  # version 1, op, malformed, size: once each
    assert node.storage._inbound.dropped == 6
    assert node.server.table.stats.redis_envelopes_dropped == Counter(
        {"version": 2, "op": 1, "malformed": 1, "size": 2}
    )


def test_a_flood_of_distinct_bad_versions_logs_once_and_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever can publish picks the values: they must not pick log lines or memory."""
    caplog.set_level("DEBUG", logger="fws.storage.redis")
    inbound = Inbound("sid", members=None)  # type: ignore[arg-type]  (never reached)
    server = Recorder("c1")
    for number in range(2000):
        version = f"{number}" + "x" * (number % 7) * 1000  # distinct, some of them long
        raw = json.dumps({"v": version, "op": f"op{number}", "text": "x"}).encode()
        inbound.received(server, "fws:{broadcast}", raw, raw=False)  # type: ignore[arg-type]
    dropped = [r for r in caplog.records if r.message.startswith("dropped")]
    assert [r.levelname for r in dropped].count("WARNING") == 1
    assert max(len(r.getMessage()) for r in dropped) < 300  # the value is cut short
    assert inbound._warned == {"version"}
    assert server.sent == []
    assert server.table.stats.redis_envelopes_dropped == Counter({"version": 2000})
    assert {error.kind for error in map(envelope_error, FOREIGN)} <= set(DROP_KINDS)


FOREIGN = [
    b"[]", b'{"v": 9}', b'{"v": [9]}', b'{"v": 2, "op": 7, "text": "x"}',
    b'{"v": 2, "op": [1], "text": "x"}', b'{"v": 2, "binary": "!"}',
]  # fmt: skip


def envelope_error(raw: bytes) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(raw, max_size=1)
    return info.value


# -- imports and URLs -----------------------------------------------------------------

PUBLISHER_PROBE = """
import json, sys
from fws.storage.redis import Publisher
publisher = Publisher(sys.argv[1])
servers = publisher.servers()
publisher.close()
print(json.dumps(sorted(
    name for name in sys.modules
    if name.split(".")[0] in ("gevent", "geventwebsocket") or name == "fws.server"
)))
"""


def test_publisher_works_without_loading_gevent(redis_server: RedisServer) -> None:  # noqa: F811
    result = subprocess.run(
        [sys.executable, "-c", PUBLISHER_PROBE, redis_server.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:7000/0", SingleLink),
        ("unix:///tmp/redis.sock", SingleLink),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", ClusterLink),
        ("rediss+cluster://127.0.0.1:7000", ClusterLink),
        ("redis+sentinel://127.0.0.1:26379/m", SentinelLink),
        ("rediss+sentinel://127.0.0.1:26379,127.0.0.1:26380/m/2", SentinelLink),
    ],
)
def test_open_link_chooses_the_strategy_by_scheme(url: str, kind: type) -> None:
    link = open_link(url, "test")  # nothing connects before the first command
    try:
        assert isinstance(link, kind)
    finally:
        link.close()


def test_unknown_schemes_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="redis\\+sentinel://"):
        open_link("http://nowhere/0", "test")


def test_single_node_subscriber_raises_once_then_holds_no_subscriptions(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """The loss semantics every link shares: no silent resubscription by redis-py."""
    link = open_link(redis_server.url, "fws-loss-test")
    subscriber = link.subscriber()
    try:
        subscriber.subscribe("fws:{broadcast}")
        wait_for(lambda: subscriber.get_message(0.1) is not None, 5, "no confirmation")
        redis_server.client().client_kill_filter(_type="pubsub")
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            for _ in range(50):
                subscriber.get_message(0.1)
        redis_server.client().publish("fws:{broadcast}", "after the loss")
        assert subscriber.get_message(0.3) is None
        assert redis_server.client().pubsub_numsub("fws:{broadcast}") == [(b"fws:{broadcast}", 0)]
    finally:
        subscriber.close()
        link.close()


def test_lua_scripts_are_package_data() -> None:
    from fws.storage.redis.scripts import lua_source

    for name in ("group_members", "remove_everywhere", "live_servers"):
        assert "redis.call" in lua_source(name)


# -- the one writer -------------------------------------------------------------------


def redis_groups(redis_server: RedisServer, storage: RedisStorage) -> dict[str, set[str]]:  # noqa: F811
    """This server's groups as Redis holds them: what its member sets say."""
    admin, sid = redis_server.client(), storage.server_id
    prefix, suffix = "fws:{g:", f"}}:members:{sid}"
    found = {}
    for key in admin.keys(f"fws:{{g:*}}:members:{sid}"):
        name = key.decode()[len(prefix) : -len(suffix)]
        found[name] = {member.decode() for member in admin.smembers(key)}
        if admin.zscore(f"fws:{{g:{name}}}:servers", sid) is None:
            found[name].add("(server not listed)")  # a wait_for retries; it must settle
    return found


def test_writes_reach_redis_in_the_order_they_were_made(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    storage = running().storage
    storage.add("room", "anchor")  # the group stays hosted: no join waits below
    for _ in range(500):
        storage.add("room", "c1")
        storage.remove("room", "c1")
        storage.connected("c1")
        storage.disconnected("c1")
    storage.add("room", "c1")
    storage.connected("c2")
    wait_for(lambda: redis_groups(redis_server, storage) == {"room": {"anchor", "c1"}}, 5)
    clients = f"fws:{{s:{storage.server_id}}}:clients"
    wait_for(lambda: redis_server.client().smembers(clients) == {b"c2"}, 5)


def test_a_resync_during_a_storm_of_joins_and_leaves_completes_and_converges(
    running: Any,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    storage = running(redis_ttl=30).storage
    stop = threading.Event()

    def storm() -> None:
        number = 0
        while not stop.is_set():
            group, member = f"g{number % 5}", f"c{number % 37}"
            if member in storage._groups.get(group, ()):
                storage.remove(group, member)
            else:
                storage.add(group, member)
            number += 1

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        for _ in range(3):
            redis_server.client().flushall()  # Redis lost everything...
            storage._health.mark_dirty()  # ...as a heartbeat would find out
            # The old resync restarted while the state kept changing; a
            # snapshot is one queued operation: it completes, storm or not.
            wait_for(lambda: not storage._health.dirty, 5, "the resync never completed")
            assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
    expected = {name: set(members) for name, members in storage._groups.items()}
    assert expected
    wait_for(lambda: redis_groups(redis_server, storage) == expected, 5, "did not converge")


# -- joins and first clients: no message published after them is missed ---------------


def test_a_member_whose_join_returned_gets_every_group_message_sent_after(running: Any) -> None:
    a, b = running("a1"), running("b1")
    for number in range(20):
        group = f"room{number}"
        b.storage.add(group, "b1")  # new to b: returns once b follows the group
        a.storage.send_to_group(group, f"m{number}", sender="a1")
        wait_for(lambda: (f"m{number}", "a1", ("b1",)) in b.server.sent, 5, f"m{number} lost")  # noqa: B023


def test_the_first_client_of_a_new_server_gets_every_broadcast_sent_after(running: Any) -> None:
    a = running("a1")
    for number in range(20):
        b = running("b1")  # a new, empty server...
        b.storage.connected("b1")  # ...and its first client
        a.storage.broadcast(f"hello {number}", sender="a1")
        wait_for(lambda: (f"hello {number}", "a1", None) in b.server.sent, 5, "lost")  # noqa: B023
