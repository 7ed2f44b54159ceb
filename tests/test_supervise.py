"""Background greenlets that die are logged with a traceback and restarted, or the server stops."""

from __future__ import annotations

import logging
import time

import gevent
import gevent.event
from helpers import ServerProcess, connect, run_server, wait_for

from fws.storage import PubSubMessage
from fws.storage.memory import MemoryStorage
from fws.supervise import supervised


class ListenerDiesOnce(MemoryStorage):
    """Its first listen() fails as a bug would; the second listens until close."""

    def __init__(self) -> None:
        super().__init__()
        self.listens = 0
        self._closing = gevent.event.Event()

    def listen(self) -> None:
        self.listens += 1
        if self.listens == 1:
            raise RuntimeError("listener bug")
        self._closing.wait()

    def close(self) -> None:
        self._closing.set()
        super().close()


def _died(caplog, task: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if getattr(r, "event", None) == "task_died" and getattr(r, "task", None) == task
    ]


def test_a_storage_listener_that_dies_is_logged_and_restarted(caplog):
    caplog.set_level(logging.INFO, logger="fws")
    storage = ListenerDiesOnce()
    with run_server(storage=storage):
        wait_for(lambda: storage.listens == 2, 5, "the listener was not restarted")
        (record,) = _died(caplog, "storage listener")
        assert record.levelno == logging.ERROR
        assert record.getMessage() == (
            "background task storage listener died; restarting it in 0.1 s"
        )
        assert record.exc_info is not None and "listener bug" in str(record.exc_info[1])
    assert storage.listens == 2  # the restarted one ran until the server stopped it


class Bomb(BaseException):
    """Not an Exception: pipelines let it through, as they let gevent.Timeout through."""


def test_a_consumer_killed_by_a_filter_restarts_and_takes_the_next_item(caplog):
    caplog.set_level(logging.INFO, logger="fws")
    handled = []

    def explosive(server, item: PubSubMessage):
        if item.data == "bomb":
            raise Bomb("consumer bug")
        handled.append(item.data)

    def publish(connection, data):
        connection.storage_object.publish("chat", data)

    with run_server(consumer=explosive, message=publish) as server:
        client = connect(server)
        client.send("bomb")
        wait_for(lambda: _died(caplog, "consumer"), 5, "no log line for the consumer")
        client.send("after")
        wait_for(lambda: handled == ["after"], 5, f"handled {handled}")
    (record,) = _died(caplog, "consumer")
    assert isinstance(record.exc_info[1], Bomb)


def test_a_task_that_returns_is_not_restarted_and_exits_are_not_deaths():
    calls = []
    gave_up = []
    done = supervised("done", lambda: calls.append("ran"), lambda *a: gave_up.append(a))
    done.join(2)
    assert calls == ["ran"] and done.dead and not gave_up
    waiting = supervised("waiting", lambda: gevent.sleep(60), lambda *a: gave_up.append(a))
    gevent.sleep(0)
    waiting.kill(block=True, timeout=2)
    assert waiting.dead and not gave_up


def test_a_task_that_keeps_dying_is_given_up(caplog):
    caplog.set_level(logging.ERROR, logger="fws.supervise")
    gave_up = []

    def broken() -> None:
        raise ValueError("always")

    started = time.monotonic()
    task = supervised("broken", broken, lambda name, exc: gave_up.append((name, exc)))
    task.join(10)
    assert task.dead
    assert [(name, str(exc)) for name, exc in gave_up] == [("broken", "always")]
    levels = [r.levelname for r in caplog.records]
    assert levels == ["ERROR"] * 4 + ["CRITICAL"]
    # Backoff 0.1, 0.2, 0.4, 0.8 s between the five deaths: a generous bound.
    assert 1.0 < time.monotonic() - started < 8


BROKEN_STORAGE = """
from fws.storage.memory import MemoryStorage


class AlwaysBroken(MemoryStorage):
    def listen(self):
        raise RuntimeError("cannot listen, ever")


storage_class = AlwaysBroken
"""


def test_the_server_exits_non_zero_when_a_task_keeps_dying(tmp_path):
    (tmp_path / "broken_listener.py").write_text(BROKEN_STORAGE)
    args = ["-p", "0", "--host", "127.0.0.1", "--storage", "broken_listener"]
    with ServerProcess(args, cwd=tmp_path) as server:
        assert server.process is not None
        code = server.process.wait(20)
        server.stop()
    assert code == 1, server.output
    assert "storage listener died; restarting it in 0.1 s" in server.output
    assert "RuntimeError: cannot listen, ever" in server.output  # the traceback
    last = server.output.strip().splitlines()[-1]
    assert last == (
        "Error: background task storage listener kept failing "
        "(RuntimeError: cannot listen, ever); server stopped"
    )
