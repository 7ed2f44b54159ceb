"""A strict parser for HTTP/1.1 request heads: the WebSocket upgrade's fast path.

gevent's pywsgi reads a request head line by line through a buffered file,
parses the headers with the ``email`` package and builds a WSGI environ: a
third of the CPU time of an upgrade, for a head that is ten short lines. The
handshake (``fws.handshake``) reads an upgrade's head itself and parses it
here instead.

The parser is strict on purpose, and ``None`` is its only answer to anything
unusual: it does not mean "malformed", it means "not for the fast path". The
handshake then gives the same bytes to pywsgi, whose answer (a 400, a 414,
a plain HTTP response, an upgrade after all) is what it always was. So a head
is parsed here only if pywsgi would read it the same way:

- the request line is ``METHOD SP /origin-form SP HTTP/x.y``, single spaces,
  printable ASCII (an absolute-form or ``*`` target is left to pywsgi);
- every line ends in CRLF (no bare LF or CR), and header lines are
  ``name:value`` with a token for a name (no space before the colon) and
  printable ASCII, space or tab in the value: no obs-fold continuation lines,
  no control characters, no bytes above 0x7F;
- no header name holds ``_``: WSGI servers drop those (``X_Token`` and
  ``X-Token`` would be one environ key), so such a head goes to pywsgi;
- pywsgi's and http.client's bounds: a request line under 8,192 bytes, header
  lines up to 65,536, at most 100 headers.

It does no I/O and imports nothing from gevent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_LINE",
    "MAX_REQUEST_LINE",
    "RequestHead",
    "head_length",
    "parse_head",
]

MAX_REQUEST_LINE = 8192
"""pywsgi answers 414 to a request line of this many bytes (CRLF included) or more."""
MAX_HEADER_LINE = 65536
"""http.client refuses a header line longer than this (CRLF included)."""
MAX_HEADERS = 100
"""http.client refuses more header lines than this."""

# RFC 9110 5.6.2 tchar; header names without "_" (see the module docstring).
_TCHAR = r"!#$%&'*+.^`|~0-9A-Za-z-"
_REQUEST_LINE = re.compile(rf"([{_TCHAR}_]+) (/[\x21-\x7e]*) (HTTP/[0-9]\.[0-9])")
_HEADER_LINE = re.compile(rf"([{_TCHAR}]+):([\t\x20-\x7e]*)")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head: what the upgrade needs of it."""

    method: str
    """As sent: methods are case-sensitive, and ``get`` is not ``GET``."""
    target: str
    """The origin-form request target, percent-escapes and query string included."""
    version: str
    """``HTTP/1.1``, ``HTTP/1.0``..."""
    headers: dict[str, str]
    """Names in lower case; a repeated header's values joined as pywsgi's environ joins
    them: with ``,`` (``; `` for any name holding ``cookie``, as ``X-Cookie-Id``)."""


def head_length(buffer: bytes | bytearray, start: int = 0) -> int | None:
    """The length of the head at the start of ``buffer``, through its empty line; None: incomplete.

    Ends at the first empty line as a line reader sees it, CRLF or bare LF:
    a head that ends in ``\\n\\n`` is complete too (and then refused by
    ``parse_head``), so that its client is answered, not left waiting.
    ``start``: where to look from, for a buffer that grows (a client
    trickling its head byte by byte must not cost a rescan per byte); the
    end found is the first at or after it, so ``start`` must be no later
    than two bytes before the newest data.
    """
    crlf = buffer.find(b"\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if lf != -1 and (crlf == -1 or lf < crlf):
        return lf + 2
    if crlf != -1:
        return crlf + 3
    return None


def parse_head(head: bytes | bytearray) -> RequestHead | None:
    """Parse a complete head (``head_length`` bytes, through its empty line), or None.

    None: the head is not one this parser reads exactly as pywsgi would
    (see the module docstring); it may still be valid HTTP.
    """
    if not head.endswith(b"\r\n\r\n") or not head.isascii():
        return None
    lines = head[:-4].decode("ascii").split("\r\n")
    request_line = lines[0]
    if len(request_line) + 2 >= MAX_REQUEST_LINE:
        return None
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None or len(lines) - 1 > MAX_HEADERS:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        header = _HEADER_LINE.fullmatch(line)
        if header is None or len(line) + 2 > MAX_HEADER_LINE:
            return None  # obs-fold, a bare CR or LF, a control character, "Name :"...
        name = header[1].lower()
        value = header[2].strip(" \t")
        if name in headers:
            value = headers[name] + ("; " if "cookie" in name else ",") + value
        headers[name] = value
    return RequestHead(match[1], match[2], match[3], headers)
