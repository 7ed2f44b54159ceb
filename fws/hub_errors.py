"""Errors gevent's hub reports, through logging instead of raw stderr.

gevent prints the traceback of every greenlet that dies with an error, and of
the accept loop's failures, straight to ``sys.stderr``: past ``--log-format
json``, unescaped, and for a process out of descriptors once per accept retry
(up to a hundred a second). Entry points (the CLI, ``fws.serve``) route them
here: one ERROR record with the traceback, or for EMFILE/ENFILE one WARNING
line per ``EMFILE_EVERY`` seconds.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

import gevent

from .escape import printable

__all__ = ["EMFILE_EVERY", "log_hub_errors"]

log = logging.getLogger("fws.gevent")

EMFILE_EVERY = 10.0
"""Seconds between two warnings about running out of file descriptors."""

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def log_hub_errors(hub: Any = None) -> None:
    """Make ``hub`` (default: this thread's) log the errors it would print."""
    hub = hub if hub is not None else gevent.get_hub()
    last_warning = -EMFILE_EVERY

    def print_exception(context: Any, type_: Any, value: Any, tb: Any) -> None:
        nonlocal last_warning
        if isinstance(value, OSError) and value.errno in _OUT_OF_DESCRIPTORS:
            now = time.monotonic()
            if now - last_warning >= EMFILE_EVERY:
                last_warning = now
                log.warning(
                    "out of file descriptors (%s): new connections wait; raise ulimit -n "
                    "or lower --max-connections / --max-pending-handshakes",
                    value.strerror or value,
                )
            return
        log.error(
            "unexpected error in %s", printable(repr(context), 200), exc_info=(type_, value, tb)
        )

    hub.print_exception = print_exception
