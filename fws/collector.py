"""The cyclic garbage collector's settings for a server process that holds many connections.

CPython's collector runs a full collection whenever the objects that survived
into its oldest generation have grown by a quarter since the last one. A
server that opens thousands of connections grows that generation all the
time, so it ran full collections over everything it held, its start-up
objects (modules, classes, the registry: 32,000 objects for ``fws_server -f
echo``) included, again and again: over a ramp to 10,000 idle connections
(``python3 bench/open_cost.py``) four full collections took 175-240 ms of the
server's CPU, 45-60 ms each with every client waiting, against a
whole open phase of about 1 s. A connection leaves no reference cycle behind
when it closes (a full collection after 2,000 connections had come and gone
found only start-up garbage), so collecting less often holds no more memory.

``tune_collector`` therefore, once the server has started:

* freezes what exists then (``gc.freeze``): start-up objects live as long as
  the process, and no collection ever looks at them again;
* raises the oldest generation's threshold from 10 to ``OLDEST_GENERATION``
  collections of the middle one, so that a full collection comes after
  700,000 net allocations at the soonest (over 100,000 connections opened)
  rather than 70,000 (about 12,000), still only once the oldest generation
  has grown by a quarter. The younger generations keep CPython's
  thresholds: raising the first one to 10,000 instead avoided the full
  collections as well, but cost the 100 x 10 echo about a tenth of its
  rate (set at interpreter start by a ``sitecustomize``, fws at 3f13d44,
  ``bench/run.py --only echo-100x10 --servers fws``, five interleaved
  pairs: 384,000-431,000 messages a second against 429,000-486,000), for
  no reason found, while the collector's own time in that scenario was the
  same small 10-17 ms either way.

Measured over the ramp to 10,000 connections: no full collection, and the
collector's time over the run 60-62 ms against 259-323 ms with CPython's
defaults. ``fws_server`` calls it; a script may call it itself, once its
server has started. It changes process-wide settings, so a library must never
call it on import.
"""

from __future__ import annotations

import gc

__all__ = ["CPYTHON_DEFAULT", "OLDEST_GENERATION", "tune_collector"]

OLDEST_GENERATION = 100
"""Collections of the middle generation between two full ones, at the most often."""

CPYTHON_DEFAULT = (700, 10, 10)
"""CPython 3.11's thresholds: any other value was chosen by the operator, and is kept."""


def tune_collector() -> bool:
    """Freeze what exists and raise the oldest threshold; False where nothing was changed.

    Nothing is changed when the collector is off or its thresholds are not
    CPython's defaults (set by a ``sitecustomize``, or by the script that
    runs the server): the operator's choice wins.
    """
    if not gc.isenabled() or gc.get_threshold() != CPYTHON_DEFAULT:
        return False
    gc.freeze()
    gc.set_threshold(*CPYTHON_DEFAULT[:2], OLDEST_GENERATION)
    return True
