"""fws.after_input on a real gevent hub: after the readers, and never later than its bound."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
import gevent.socket
import pytest

from fws.after_input import AfterInput


@pytest.fixture
def ran() -> Iterator[list[float]]:
    yield []


def record(ran: list[float], how: list[bool] | None = None) -> Callable[[bool], None]:
    """A callback that notes when it ran in ``ran``, and in ``how`` whether the bound ran it."""

    def callback(bounded: bool) -> None:
        ran.append(time.monotonic())
        if how is not None:
            how.append(bounded)

    return callback


def spinner(ran: list[float], seconds: float) -> gevent.Greenlet:
    """A greenlet keeping the hub busy (a callback due every turn) until ``ran`` or ``seconds``.

    ``gevent.sleep(0)`` queues a callback, and libev runs no idle watcher
    while anything else is due: the case the bound is for.
    """

    def spin() -> None:
        end = time.monotonic() + seconds
        while not ran and time.monotonic() < end:
            gevent.sleep(0)

    return gevent.spawn(spin)


def test_runs_once_the_hub_has_nothing_else_to_run(ran: list[float]) -> None:
    after = AfterInput(gevent.get_hub().loop, record(ran), limit=60)
    after.start()
    assert after.pending and not ran  # not from start() itself
    gevent.sleep(0.05)
    assert len(ran) == 1  # long before the 60 s bound: the idle watcher ran it
    assert not after.pending


def test_a_reader_with_data_waiting_runs_before_it() -> None:
    """The point of the wait: what has arrived is read before the callback runs."""
    order: list[str] = []
    ours, theirs = gevent.socket.socketpair()

    def reader() -> None:
        order.append(f"read {ours.recv(100).decode()}")

    def callback(bounded: bool) -> None:
        order.append(f"callback, bounded={bounded}")

    after = AfterInput(gevent.get_hub().loop, callback, limit=60)
    waiting = gevent.spawn(reader)
    gevent.sleep(0)  # the reader waits on its watcher
    theirs.sendall(b"burst")  # readable before the hub polls again
    after.start()
    waiting.join(timeout=5)
    gevent.sleep(0.05)
    assert order == ["read burst", "callback, bounded=False"]
    ours.close()
    theirs.close()


def test_a_busy_hub_still_runs_it_at_the_bound(ran: list[float]) -> None:
    how: list[bool] = []
    after = AfterInput(gevent.get_hub().loop, record(ran, how), limit=0.02)
    busy = spinner(ran, seconds=5)
    gevent.sleep(0)  # the spinner runs
    started = time.monotonic()
    after.start()
    busy.join()
    assert ran, "the callback never ran while the hub was busy"
    assert ran[0] - started >= 0.02  # the bound ran it, not the idle watcher
    assert how == [True]


def test_start_while_pending_keeps_the_first_bound_and_runs_once(ran: list[float]) -> None:
    after = AfterInput(gevent.get_hub().loop, record(ran), limit=0.2)
    busy = spinner(ran, seconds=5)
    gevent.sleep(0)
    started = time.monotonic()
    after.start()
    gevent.sleep(0.1)
    assert not ran
    after.start()  # another broadcast, while the first waits
    busy.join()
    assert len(ran) == 1
    assert 0.2 <= ran[0] - started < 0.3  # the first start's bound; the second's is 0.3


def test_stop_runs_nothing(ran: list[float]) -> None:
    after = AfterInput(gevent.get_hub().loop, record(ran), limit=0.01)
    after.start()
    after.stop()
    gevent.sleep(0.05)
    assert ran == [] and not after.pending
    after.start()  # and it can be used again
    gevent.sleep(0.05)
    assert len(ran) == 1


def test_overdue_once_the_bound_passes_without_the_hub(ran: list[float]) -> None:
    after = AfterInput(gevent.get_hub().loop, record(ran), limit=0.002)
    assert not after.overdue()  # nothing waits
    after.start()
    assert not after.overdue()
    bound = time.monotonic() + 0.004
    while time.monotonic() < bound:  # no yield: libev cannot run the check watcher
        pass
    assert after.overdue() and not ran
    gevent.sleep(0.05)
    assert len(ran) == 1 and not after.overdue()
