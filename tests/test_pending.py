"""PendingHandshakes on real socket pairs: the oldest is cut, the rest are left alone."""

from __future__ import annotations

import socket

import pytest

from fws.pending import PendingHandshakes
from fws.stats import ServerStats


def test_at_the_bound_the_oldest_is_shut_down_and_the_others_are_untouched(caplog):
    stats = ServerStats()
    pending = PendingHandshakes(2, stats)
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        for ours, _ in pairs:
            pending.add(ours, ours.fileno())
        assert len(pending) == 2
        for _, theirs in pairs[:2]:  # cut: their peer reads EOF at once
            theirs.settimeout(5)
            assert theirs.recv(1) == b""
        for _, theirs in pairs[2:]:  # still pending: nothing to read yet
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):
                theirs.recv(1)
        assert stats.disconnects["pending_evicted"] == 2
        # The cut sockets were shut down, not closed: their owners close them.
        assert all(ours.fileno() != -1 for ours, _ in pairs)
        assert caplog.text.count("cutting the oldest") == 1
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_a_discarded_connection_is_never_cut():
    pending = PendingHandshakes(1, ServerStats())
    (first, first_peer), (second, second_peer) = socket.socketpair(), socket.socketpair()
    try:
        pending.add(first, first.fileno())
        pending.discard(first)  # upgraded: it leaves before the next accept
        pending.discard(first)  # harmless twice
        pending.add(second, second.fileno())
        first_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            first_peer.recv(1)
        assert len(pending) == 1
    finally:
        for sock in (first, first_peer, second, second_peer):
            sock.close()


def test_no_limit_never_cuts():
    pending = PendingHandshakes(None, ServerStats())
    for token in range(5000):
        pending.add(token, -1)  # never touched without a limit
    assert len(pending) == 5000


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        PendingHandshakes(0, ServerStats())
