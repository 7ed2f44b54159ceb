"""Exceptions raised by fws.

Two families are kept apart, because they call for different reactions::

    FwsError
    ├── ConfigurationError      the user started fws wrongly: one clear line, exit 2
    │   ├── FilterModuleError   a ``-f`` module is missing or fails to import
    │   └── InvalidFilter       not a filter: no filter(), or a wrong signature
    ├── ProtocolError           the *client* misbehaved: one log line, close 1002/1007/1009
    ├── FilterError             a *filter* raised: traceback, that event's pipeline stops
    ├── Reject                  a connect filter refused the handshake with an HTTP status
    └── BackgroundTaskFailed    a server greenlet kept dying: the server stopped, exit 1

Anything else escaping fws is *our* bug: it is logged with a traceback and the
connection is closed with 1011, but the server keeps serving.
"""

from __future__ import annotations

from http import HTTPStatus


class FwsError(Exception):
    """Base class of every exception fws raises on purpose."""


class ConfigurationError(FwsError):
    """Bad options, config file, port, certificate or storage choice."""


class FilterModuleError(ConfigurationError):
    """A filter module named on the command line cannot be loaded."""


class InvalidFilter(ConfigurationError, TypeError):
    """Something given as a filter cannot be one (no filter(), wrong signature)."""


class ProtocolError(FwsError):
    """The client broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (close {code})")
        self.code = code
        self.reason = reason
        self.events: list[object] = []
        """Events completed before the violation, in the same chunk of bytes."""


class FilterError(FwsError):
    """A filter raised; ``__cause__`` holds the original exception."""

    def __init__(self, filter_name: str) -> None:
        super().__init__(f"filter {filter_name} raised")
        self.filter_name = filter_name


class Reject(FwsError):
    """Raise in a connect filter to refuse the WebSocket handshake.

    The client gets an HTTP response with ``status`` and ``reason`` as its body
    instead of the 101 upgrade, so an unauthenticated client never holds an
    open WebSocket.
    """

    def __init__(self, status: int = 403, reason: str | None = None) -> None:
        self.status = HTTPStatus(status)
        self.reason = reason if reason is not None else self.status.phrase
        super().__init__(f"{self.status.value} {self.reason}")


class BackgroundTaskFailed(FwsError):
    """A background greenlet of the server (consumer, pub/sub listener...) kept dying.

    Each death is logged with its traceback and the task restarted; when it
    dies again and again (see ``fws.supervise``), the server stops and
    ``Server.serve_forever`` raises this, so that a process manager sees a
    failed process and restarts it, instead of a server silently without
    pub/sub or keepalives.
    """
