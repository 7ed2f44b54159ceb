"""Client-sent text made safe for one log line or one printed line.

Paths, headers, origins, close reasons and messages come from clients. Raw,
``%0a`` in a path would forge a second log line, and an ANSI sequence
(``ESC [ 31m``, or the one-byte C1 ``CSI``) would recolour, move or clear the
operator's terminal. Every such value goes through ``printable`` before it is
logged or printed. The handshake, the connection and the ``stdout_*`` filters
all use it, so it lives here, with no dependencies.
"""

from __future__ import annotations

__all__ = ["format_peer", "printable"]


def printable(text: str, limit: int | None = 200) -> str:
    """``text`` safe for one line: every non-printable character escaped.

    Control characters (C0 such as ``\\n``, ``\\r``, ``\\x07``, ``ESC``; DEL;
    C1 such as ``\\x9b``) and other characters Python does not call printable
    (line and paragraph separators, bidi overrides) become their Python
    escape (``\\n``, ``\\x1b``, ``\\u2028``): an ANSI sequence loses its ESC and
    shows as text. ``limit`` bounds the length (``...`` marks a cut) so a
    client cannot fill the log; ``None``: no bound (a printed message).
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():  # the usual case: one C-speed scan, no copy
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_peer(address: object) -> str:
    """A socket address as ``host:port`` for a log line; ``-`` when there is none."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "-")
