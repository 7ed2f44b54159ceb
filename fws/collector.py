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
* raises the first generation's threshold from 700 to ``FIRST_GENERATION``
  allocations, so that full collections, which come after every hundred
  first-generation ones at most, come no sooner than a million net
  allocations apart. The first generation's own cost is what is alive in it,
  whatever the threshold: the 10,000 opens cost the same 36-41 ms in it with
  either (about 1 ms per collection at this threshold).

Measured with both: no full collection during the 10,000 opens, the
collector's time over the run 67-74 ms against 259-323 ms with CPython's
defaults. ``fws_server`` calls it; a script may call it itself, once its
server has started. It changes process-wide settings, so a library must never
call it on import.
"""

from __future__ import annotations

import gc

__all__ = ["CPYTHON_DEFAULT", "FIRST_GENERATION", "tune_collector"]

FIRST_GENERATION = 10_000
"""Net allocations of tracked objects between two first-generation collections."""

CPYTHON_DEFAULT = (700, 10, 10)
"""CPython 3.11's thresholds: any other value was chosen by the operator, and is kept."""


def tune_collector() -> bool:
    """Freeze what exists and raise the first threshold; False where nothing was changed.

    Nothing is changed when the collector is off or its thresholds are not
    CPython's defaults (set by a ``sitecustomize``, or by the script that
    runs the server): the operator's choice wins.
    """
    if not gc.isenabled() or gc.get_threshold() != CPYTHON_DEFAULT:
        return False
    gc.freeze()
    gc.set_threshold(FIRST_GENERATION, *CPYTHON_DEFAULT[1:])
    return True
