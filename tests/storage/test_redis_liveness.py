"""The outage bookkeeping of :mod:`fws.storage.redis.health` and :mod:`.liveness`.

The real failovers (SIGKILL and SIGSTOP of a primary) are in
``test_redis_sentinel.py`` and ``test_redis_cluster.py``; these pin down the
rules they rely on, in milliseconds (one of them with a plain redis-server).
"""

from __future__ import annotations

import logging
import time

import pytest
import redis
from redis_helpers import RedisServer, redis_server  # noqa: F401  (fixture)

from fws.storage.redis.classic import ClassicSubscriber
from fws.storage.redis.health import Health
from fws.storage.redis.liveness import PUBSUB_SILENCE, Heard, PrimarySwitched, Silent, describe


def test_recovery_needs_a_session_proven_alive_after_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Health("redis://x", lambda: None)
    opened = time.monotonic()
    health.set_subscribed(True, since=opened)
    health.synced(health.epoch)
    health.failed(redis.TimeoutError("hung"))
    health.synced(health.epoch)  # the writer reached a new primary...
    assert health.down  # ...but the session is older than the failure
    health.alive(opened)
    assert health.down
    health.alive(time.monotonic())  # every connection answered since
    assert not health.down and health.live
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1


def test_a_failed_publish_marks_the_outage_without_forcing_a_snapshot() -> None:
    health = Health("redis://x", lambda: None)
    health.set_subscribed(True, since=time.monotonic())
    health.synced(health.epoch)
    epoch = health.epoch
    health.failed(redis.TimeoutError("publish"), state_lost=False)
    health.lost_one()
    assert health.down and not health.dirty and health.epoch == epoch
    health.alive(time.monotonic())
    assert not health.down


def test_the_outage_line_carries_type_and_first_line_truncated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    huge = redis.ConnectionError("No master found\n" + "x" * 5000)
    assert describe(huge) == "ConnectionError: No master found"
    assert len(describe(redis.ConnectionError("y" * 5000))) == 200
    health = Health("redis://x", lambda: None)
    health.failed(huge)
    (record,) = caplog.records
    assert "ConnectionError: No master found" in record.getMessage()
    assert len(record.getMessage()) < 400


def test_a_silent_connection_is_lost_after_the_silence_bound() -> None:
    heard = Heard()
    heard.start("node")
    assert heard.check([("node", None)]) <= time.monotonic()
    heard._last["node"] -= PUBSUB_SILENCE + 0.1  # nothing heard for too long
    with pytest.raises(Silent) as raised:
        heard.check([("node", None)])
    assert raised.value.key == "node"
    heard.heard("node")
    heard.check([("node", None)])


def test_a_session_on_a_node_the_sentinels_no_longer_name_is_dropped(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Without a kill or a hang (a SENTINEL FAILOVER, a demotion) only this check notices."""
    named = {"primary": ("127.0.0.1", redis_server.port)}
    pool = redis.ConnectionPool(host="127.0.0.1", port=redis_server.port)
    subscriber = ClassicSubscriber(pool, primary=lambda: named["primary"])
    try:
        subscriber.subscribe("fws:{broadcast}")
        deadline = time.monotonic() + 5
        while subscriber.get_message(timeout=0.1) is None and time.monotonic() < deadline:
            pass  # the subscribe confirmation
        subscriber.ping()  # still the primary: nothing happens
        named["primary"] = ("127.0.0.1", redis_server.port + 1)  # the sentinels moved on
        with pytest.raises(PrimarySwitched, match="promoted"):
            subscriber.ping()
        with pytest.raises(redis.ConnectionError):  # the session was dropped with it
            subscriber.ping()
    finally:
        subscriber.close()
        pool.disconnect()
