"""Running a server in the foreground of a process until a signal stops it.

A ``Server`` is started and stopped by whoever holds it (a test, a program
embedding it) and installs no signal handlers; ``serve`` and
``serve_until_signalled`` are for the process's main greenlet (a script,
``fws_server``, a worker) and give SIGINT, SIGTERM and SIGHUP their meaning.
Signals are the process's business, not the server's: hence a module apart.

``fws.server`` re-exports both names, where scripts import them from. This
module imports ``Server`` only when ``serve`` runs, so that the re-export
is not a circular import. Its records go to the ``fws.server`` logger, the
name operators know (``docs/operations/workers.rst`` shows the SIGHUP line).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from .server import Server

__all__ = ["serve", "serve_until_signalled"]


log = logging.getLogger("fws.server")


def serve(**settings: Any) -> None:
    """Run a ``Server(**settings)`` until SIGINT or SIGTERM, then stop it cleanly.

    Call ``gevent.monkey.patch_all()`` first thing in the script, before other
    imports, so that blocking libraries the filters use cooperate with gevent.
    """
    from .hub_errors import log_hub_errors
    from .server import Server

    log_hub_errors()
    server = Server(**settings)
    server.start()
    serve_until_signalled(server)


def serve_until_signalled(server: Server) -> None:
    """Block in ``server.serve_forever()``; SIGINT or SIGTERM stops it cleanly.

    A SIGINT while the clients drain exits at once, with status 130: an
    operator pressing Ctrl-C twice means "now", not "after close_timeout".
    A repeated SIGTERM changes nothing (as in uvicorn): process managers
    escalate with SIGKILL, and one that resends SIGTERM should not cut the
    drain short. SIGHUP (a service manager's reload) is logged and ignored
    rather than killing the server: only a supervisor (``--workers N``)
    reloads. A SIGHUP already ignored (``nohup``, or a worker of such a
    supervisor) stays ignored, silently.
    """
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received and signum == signal.SIGINT:
            log.warning("SIGINT while draining: exiting now without waiting for clients")
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(128 + signum)
        if not received:
            gevent.spawn(server.stop)
        received.append(signum)

    def on_hangup() -> None:
        log.warning("SIGHUP: reloading needs --workers N (N > 1); ignored")

    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, on_signal, signum)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        gevent.signal_handler(signal.SIGHUP, on_hangup)
    server.serve_forever()
