"""The JSON envelope fws servers (and a ``Publisher``) put on fws's channels.

::

    {"v": 2, "op": "remove", "origin": SID, "sender": ID, "group": NAME,
     "client": ID, "text": "..."}           # or "binary": "<base64>" instead of "text"

``op`` is absent for a message to deliver; ``"remove"`` is a control notice
(``text`` is a member to drop from ``group``). Absent fields are null. JSON,
never pickle: whoever can publish to Redis must not be able to run code in
fws.

A server must never deliver what it cannot read as a message, so
:func:`decode_envelope` raises :class:`EnvelopeError` for an unknown version
or op (from a newer fws, or an older one: layout 1 is gone), and for an
envelope above the size cap (the server's ``max_message_size``: a client
could not have sent it either). The subscriber drops those with one warning
per kind. The kinds are the fixed :data:`DROP_KINDS`: whoever can publish
chooses the values, so a value only appears, truncated, in the message.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from .keys import LAYOUT_VERSION

__all__ = [
    "DROP_KINDS",
    "KNOWN_OPS",
    "Envelope",
    "EnvelopeError",
    "decode_envelope",
    "encode_envelope",
    "raw_limit",
]

KNOWN_OPS = frozenset({"remove"})
"""The control operations this version understands (``None`` is a plain message)."""

DROP_KINDS = ("version", "op", "size", "malformed")
"""Every :attr:`EnvelopeError.kind`: one warning and one metric label each, never more."""

_SHOWN = 40
"""Most characters of a foreign value quoted in an error message."""

_OVERHEAD = 4096
"""Bytes of routing fields (ids, a group name up to 256 bytes) on top of the data."""


class EnvelopeError(ValueError):
    """Not an envelope this server may deliver; ``kind`` (one of :data:`DROP_KINDS`) says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Envelope:
    """A message between servers (or from a backend program) with its routing."""

    data: str | bytes
    origin: str | None = None
    """The server that published it; that server has delivered it locally already."""
    sender: str | None = None
    """The connection that sent it; it never gets its own message back."""
    group: str | None = None
    client: str | None = None
    op: str | None = None
    """``"remove"``: control message, ``data`` is a member to drop from ``group``."""


def encode_envelope(
    data: str | bytes | bytearray | memoryview,
    *,
    origin: str | None = None,
    sender: str | None = None,
    group: str | None = None,
    client: str | None = None,
    op: str | None = None,
) -> bytes:
    """The JSON form of an envelope; text stays text, binary goes as base64."""
    body: dict[str, Any] = {
        "v": LAYOUT_VERSION,
        "origin": origin,
        "sender": sender,
        "group": group,
        "client": client,
    }
    if op is not None:
        body["op"] = op
    if isinstance(data, str):
        body["text"] = str(data)
    else:
        body["binary"] = base64.b64encode(bytes(data)).decode("ascii")
    # ensure_ascii=False: non-ASCII text costs its UTF-8 bytes, not 6 per character.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def raw_limit(max_size: int | None) -> int | None:
    """The most bytes an envelope carrying ``max_size`` bytes of data can take.

    JSON escapes a control character in 6 bytes, so 6 per data byte bounds
    every text; base64 takes 4 per 3. Bigger than that is refused unparsed.
    """
    return None if max_size is None else 6 * max_size + _OVERHEAD


def decode_envelope(raw: bytes | str, *, max_size: int | None = None) -> Envelope:
    """Parse an envelope; ``ValueError`` (an :class:`EnvelopeError`) if it is not one.

    ``max_size`` caps the data (bytes of UTF-8 for text); ``None``: no cap.
    """
    limit = raw_limit(max_size)
    if limit is not None and len(raw) > limit:
        raise EnvelopeError("size", f"envelope of {len(raw)} bytes is over the size cap")
    try:
        body = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError too
        raise EnvelopeError("malformed", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EnvelopeError("malformed", "an envelope is a JSON object")
    version = body.get("v")
    if version != LAYOUT_VERSION:
        raise EnvelopeError(
            "version",
            f"envelope version {_shown(version)} (this fws speaks {LAYOUT_VERSION}: "
            "servers and Publisher must run the same fws version)",
        )
    op = body.get("op")
    if op is not None and (not isinstance(op, str) or op not in KNOWN_OPS):  # [] is unhashable
        raise EnvelopeError("op", f"unknown envelope op {_shown(op)}")
    data: str | bytes
    if isinstance(body.get("text"), str):
        text: str = body["text"]
        data = text
        # UTF-8 takes at most 4 bytes a character: encode (per message from
        # Redis) only a text that could be over the cap.
        if max_size is not None and len(text) * 4 > max_size:
            _check_size(len(text.encode("utf-8", "surrogatepass")), max_size)
    elif isinstance(body.get("binary"), str):
        try:
            data = base64.b64decode(body["binary"], validate=True)
        except ValueError as exc:
            raise EnvelopeError("malformed", f"bad base64: {exc}") from None
        if max_size is not None:
            _check_size(len(data), max_size)
    else:
        raise EnvelopeError("malformed", 'an envelope needs "text" (a string) or "binary"')

    def field(name: str) -> str | None:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise EnvelopeError("malformed", f"envelope field {name!r} must be a string or null")
        return value

    return Envelope(
        data=data,
        origin=field("origin"),
        sender=field("sender"),
        group=field("group"),
        client=field("client"),
        op=op,
    )


def _check_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise EnvelopeError("size", f"envelope data of {size} bytes is over {max_size}")


def _shown(value: Any) -> str:
    """``repr(value)``, cut to ``_SHOWN`` characters: a log line stays a line."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
