"""Which code runs the hot loops: the optional C extension, or pure Python.

``fws._speedups`` (``fws/_speedups.c``) does a broadcast's fan-out (queueing
one frame for every recipient), the flusher's sends, the parser's common
frame (a whole text or binary message), the unmasking of a large frame
received in pieces and the encoding of an uncompressed message in C. It is
optional: ``pip install`` builds it where a C compiler and Python's headers
are found, and fws runs the same without it, on the pure-Python loops of
``fws.outbound`` and ``fws.frames``, which stay the reference (the tests
hold the two to the same results). ``FWS_NO_SPEEDUPS=1`` in the environment
leaves the extension unloaded even where it is built: to compare the two, or
to rule it out. An extension built from an older ``fws/_speedups.c`` (an
in-place build left behind by a checkout of another version) lacks some of
the functions: it is not used either, and ``IMPLEMENTATION`` says why.

This module only chooses; ``fws.connection`` binds the extension to its
classes, ``fws.outbound`` takes its loops, and ``fws.frames`` its parsing
loop, its unmasking and its encoder. It imports neither gevent nor the
extension's users.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["FUNCTIONS", "IMPLEMENTATION", "SWITCH", "speedups"]

FUNCTIONS = (
    "bind",
    "fan_out",
    "flush_each",
    "send_broadcasts",
    "parse_messages",
    "unmask_pieces",
    "message_encoder",
)
"""What fws uses of the extension: one built from an older source may lack some."""

SWITCH = "FWS_NO_SPEEDUPS"
"""The environment variable that, set to anything but ``0`` or empty, forces pure Python."""


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(SWITCH, "") not in ("", "0"):
        return None, f"pure Python ({SWITCH} is set)"
    try:
        from . import _speedups
    except ImportError as exc:  # not built here (no compiler at install time)
        return None, f"pure Python (fws._speedups is not built: {exc})"
    missing = [name for name in FUNCTIONS if not hasattr(_speedups, name)]
    if missing:
        return None, (
            f"pure Python (fws._speedups is out of date, without {', '.join(missing)}: "
            "rebuild it with 'pip install .' or 'python3 setup.py build_ext --inplace')"
        )
    return _speedups, "C (fws._speedups)"


speedups, IMPLEMENTATION = _load()
"""The extension module, or None for the pure-Python loops; and a line that says which, and why."""
