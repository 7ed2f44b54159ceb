"""Group names: what ``Connection.join`` accepts (plain Python, no gevent).

A group is a set of connection ids under a name, kept by the storage object
(``Storage.add``/``remove``/``send_to_group``), so that with a shared storage
a group spans servers. Names come from clients (``token:NAME``, ``?room=``),
so they are bounded: every storage keeps them, the Redis one in key names.
"""

from __future__ import annotations

__all__ = ["MAX_GROUP_NAME_BYTES", "check_group_name"]

MAX_GROUP_NAME_BYTES = 256
"""Longest group name, in bytes of UTF-8."""


def check_group_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a non-empty str of at most 256 UTF-8 bytes."""
    if not isinstance(name, str):
        raise TypeError(f"a group name is a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a group name cannot be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no storage could keep it
        raise ValueError("a group name must be valid Unicode text") from None
    if size > MAX_GROUP_NAME_BYTES:
        raise ValueError(f"group name longer than {MAX_GROUP_NAME_BYTES} bytes")
