"""Which code runs the hot loops: the optional C extension, or pure Python.

``fws._speedups`` (``fws/_speedups.c``) does a broadcast's fan-out (queueing
one frame for every recipient), the flusher's sends, the parser's common
frame (a whole, short text or binary message) and the encoding of an
uncompressed message in C. It is optional:
``pip install`` builds it where a C compiler and Python's headers are found,
and fws runs the same without it, on the pure-Python loops of
``fws.connection`` and ``fws.frames``, which stay the reference (the tests
hold the two to the same results). ``FWS_NO_SPEEDUPS=1`` in the environment
leaves the extension unloaded even where it is built: to compare the two, or
to rule it out.

This module only chooses; ``fws.connection`` binds the extension to its
classes, and ``fws.frames`` takes its parsing loop and its encoder. It imports neither gevent
nor the extension's users.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["IMPLEMENTATION", "SWITCH", "speedups"]

SWITCH = "FWS_NO_SPEEDUPS"
"""The environment variable that, set to anything but ``0`` or empty, forces pure Python."""


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(SWITCH, "") not in ("", "0"):
        return None, f"pure Python ({SWITCH} is set)"
    try:
        from . import _speedups
    except ImportError as exc:  # not built here (no compiler at install time)
        return None, f"pure Python (fws._speedups is not built: {exc})"
    return _speedups, "C (fws._speedups)"


speedups, IMPLEMENTATION = _load()
"""The extension module, or None for the pure-Python loops; and a line that says which, and why."""
