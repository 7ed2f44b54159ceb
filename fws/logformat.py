"""Log line formats for ``fws_server --log-format``: ``text`` for people, ``json`` for collectors.

Both formatters escape the message itself (``fws.escape.printable``), as a
last line of defence: every module already escapes what clients sent, but a
value that slipped through (a filter's own log call with a request path, say)
still cannot forge a line or reach the terminal as an ANSI sequence. A
traceback stays multi-line in ``text`` (that is how people read it) and is one
JSON string in ``json``.

Structured fields are passed with ``extra=`` (``log.info("...", extra={"peer":
...})``); ``json`` turns each into a key of the object, ``text`` shows only the
message, which already says the same in words. Nothing here runs at import:
only the CLI calls ``configure_logging``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import IO, Any

from .escape import printable

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; the rest of its __dict__ came from extra=.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, the format fws has always printed, escaped."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message, None)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        # A traceback keeps its lines, but an exception's message can quote
        # what a client sent: each line is escaped like a message.
        return "\n".join(printable(line, None) for line in super().formatException(ei).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, then extras.

    ``time`` is UTC, ISO 8601 with milliseconds. An exception adds ``exc_info``
    (the formatted traceback). Values JSON cannot hold are written as ``str()``.
    The output is ASCII: C1 controls and line separators are ``\\u`` escapes,
    never raw bytes a terminal tailing the file could act on.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": printable(record.message, None),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry.setdefault(key, value)  # an extra named "time" cannot hide the time
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _utc_iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def configure_logging(level: int | str, log_format: str, stream: IO[str]) -> None:
    """Send the root logger's records to ``stream`` in ``log_format`` (``text`` or ``json``).

    As ``logging.basicConfig``: does nothing if the root logger already has
    handlers (an embedding program, or pytest, configured logging itself),
    not even turn off the thread and process fields its formats may print.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if logging.root.handlers:
        return
    # Neither format prints a record's thread or process, and asking costs: under
    # gevent every greenlet that logs becomes a new threading._DummyThread (about
    # 3 % of an open's instructions at INFO, bench/handshake_cost.py). So records
    # leave them out (threadName, processName, thread and process are None).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler])
