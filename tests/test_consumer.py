"""The consumer queue's bound, and the consumer stopping before the storage closes."""

from __future__ import annotations

import logging
import threading
import time

import gevent
from helpers import connect, raw_upgrade, run_server, stop_server, wait_for

import fws
from fws.consumer import ConsumerQueue
from fws.storage import PubSubMessage
from fws.storage.memory import MemoryStorage


def test_a_full_queue_drops_counts_and_warns_once_per_burst(caplog):
    caplog.set_level(logging.WARNING, logger="fws.consumer")
    dropped = []
    queue = ConsumerQueue(3, on_drop=lambda: dropped.append(1), report_every=3600)
    for item in range(10):
        queue.put(item)  # never blocks, whatever the queue holds
    assert [queue.get() for _ in range(3)] == [0, 1, 2]
    assert len(dropped) == 7
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "consumer queue full (3 items): dropping new items until the consumer pipeline "
        "catches up (see --max-consumer-queue)"
    ]
    queue.put("room again")  # the burst is over: one summary
    assert len(caplog.records) == 2
    assert caplog.records[1].getMessage().startswith("consumer queue: 7 items dropped in all")
    assert caplog.records[1].dropped == 7
    queue.put_nowait("and more")
    assert len(caplog.records) == 2 and len(dropped) == 7


def test_a_long_burst_is_summarised_periodically(caplog):
    caplog.set_level(logging.WARNING, logger="fws.consumer")
    queue = ConsumerQueue(1, report_every=0.0)
    queue.put("kept")
    for item in range(4):
        queue.put(item)
    # The first drop starts the burst; each later one is past report_every (0 s).
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "consumer queue full (1 items)",
        "consumer queue still full",
        "consumer queue still full",
        "consumer queue still full",
    ]


def test_steady_overload_is_one_burst_with_every_drop_counted(caplog):
    """A producer at three times the consumer's rate: the queue stays near full.

    Each put that fits between two drops used to end the burst and the next
    drop started another: two warnings per consumed item.
    """
    caplog.set_level(logging.WARNING, logger="fws.consumer")
    server = fws.Server(host="127.0.0.1", port=0, max_consumer_queue=100)
    queue = server.queue
    produced = consumed = 0
    for _ in range(1_000):
        for _ in range(3):
            queue.put(produced)
            produced += 1
        queue.get()
        consumed += 1
    assert produced - consumed - queue.qsize() == server.table.stats.consumer_dropped > 1_000
    # One warning as the burst starts; summaries come at most every 5 s (this takes less).
    assert len(caplog.records) <= 2
    assert caplog.records[0].getMessage().startswith("consumer queue full (100 items)")
    while queue.qsize() > 50:
        queue.get()
    queue.put("room again")  # drained to half: the burst ends, with its total
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith(f"consumer queue: {server.table.stats.consumer_dropped} items dropped in all")
    )


def test_a_burst_ends_after_a_quiet_report_interval_even_near_full(caplog):
    caplog.set_level(logging.WARNING, logger="fws.consumer")
    queue = ConsumerQueue(4, report_every=0.05)
    for item in range(5):
        queue.put(item)  # the fifth is dropped
    queue.get()
    queue.put("fits, but too soon and too full to end the burst")
    assert len(caplog.records) == 1
    queue.get()
    time.sleep(0.06)
    queue.put("no drop for a report interval")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "consumer queue full (4 items)",
        "consumer queue",
    ]


def test_an_unbounded_queue_never_drops():
    queue = ConsumerQueue(None, on_drop=lambda: (_ for _ in ()).throw(AssertionError))
    for item in range(20_000):
        queue.put(item)
    assert queue.qsize() == 20_000


def test_server_drops_pubsub_items_past_max_consumer_queue(caplog):
    """A consumer pipeline that cannot keep up: the publisher is never blocked."""
    caplog.set_level(logging.WARNING, logger="fws")
    release = threading.Event()
    handled = []

    def slow_consumer(server, item):
        while not release.is_set():
            gevent.sleep(0.01)
        handled.append(item.data)

    def publish_burst(connection, data):
        for number in range(50):
            connection.storage_object.publish("chat", str(number))
        connection.send("published")

    settings = {"consumer": slow_consumer, "message": publish_burst, "max_consumer_queue": 10}
    with run_server(**settings) as server:
        client = connect(server)
        client.send("go")
        assert client.recv() == "published"  # 50 publishes returned without waiting
        # The publishing filter does not yield: ten items fit, forty were dropped.
        assert server.table.stats.consumer_dropped == 40
        release.set()
        wait_for(lambda: len(handled) == 10, 5, f"handled {handled}")
    assert handled == [str(n) for n in range(10)]
    full = [r for r in caplog.records if getattr(r, "event", None) == "consumer_queue_full"]
    assert len(full) == 1


class ClosingStorage(MemoryStorage):
    """In-memory storage that refuses use after close, and yields in close as Redis does."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.used_after_close: list[str] = []

    def publish(self, channel: str, data: str | bytes) -> None:
        if self.closed:
            self.used_after_close.append(channel)
            raise RuntimeError("publish on a closed storage")
        super().publish(channel, data)

    def close(self) -> None:
        self.closed = True
        gevent.sleep(0.3)  # the Redis backend waits for its listener here
        super().close()


def test_shutdown_stops_the_consumer_before_closing_the_storage(caplog):
    """A disconnect at shutdown publishes, the consumer republishes: not via a closed storage."""
    caplog.set_level(logging.ERROR, logger="fws")
    storage = ClosingStorage()
    seen = []

    def announce_leaving(connection, info):
        connection.storage_object.publish("left", connection.id)

    def relay(server, item: PubSubMessage):
        seen.append(item.channel)
        if item.channel == "left":
            gevent.sleep(0.1)  # a slow consumer: a database write, say
            server.storage_object.publish("relayed", item.data)

    with run_server(
        storage=storage, disconnect=announce_leaving, consumer=relay, close_timeout=0.3
    ) as server:
        silent = raw_upgrade(server.address[1])  # never answers the server's 1001
        wait_for(lambda: server.users)
        stop_server(server)
        wait_for(lambda: storage.closed, 10)
    silent.close()
    assert storage.used_after_close == []
    assert seen == ["left", "relayed"]  # both items ran before the storage closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
