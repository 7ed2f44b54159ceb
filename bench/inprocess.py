"""What the in-process benchmarks (``fanout_cost.py``, ``metrics_cost.py``) share."""

from __future__ import annotations

import gevent

import fws
import fws.outbound


def flush_turn(server: fws.Server) -> None:
    """Run the hub's flusher for what is queued, as an idle hub would, then let the others run.

    Since 87dc460 a broadcast waits for the hub to have no reader ready
    (``fws.after_input``), 0.5 ms at most: ``gevent.sleep(0)`` keeps the
    hub busy, and a longer sleep lets busy polling spin on this process's
    CPU time. So the flusher runs here, where ``gevent.sleep(0)`` ran it
    before (older checkouts have no ``flush_after_input``).
    """
    flush_after_input = getattr(fws.outbound, "flush_after_input", None)
    if flush_after_input is not None:
        flush_after_input(server.table)
    gevent.sleep(0)
