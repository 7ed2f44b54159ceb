"""``python -m fws.worker ARGS``: one worker of ``fws_server --workers N``.

Started by ``fws.supervisor`` with the same arguments as ``fws_server``; the
environment carries the listening socket it inherited and a pipe to report
readiness on. It
patches gevent first, then runs the ordinary ``fws_server`` command on that
socket. Not meant to be started by hand.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Patch gevent, then serve on the supervisor's socket until told to stop."""
    from gevent import monkey

    monkey.patch_all()

    import signal
    import socket

    import gevent

    from .cli import main as cli_main
    from .context import BACKLOG
    from .server import Server
    from .supervisor import (
        LISTEN_FD_ENV,
        READY_FD_ENV,
        SUPERVISOR_PID_ENV,
    )

    supervisor = os.environ.pop(SUPERVISOR_PID_ENV, None)
    _exit_with_parent(int(supervisor) if supervisor else None)
    listen_fd = os.environ.pop(LISTEN_FD_ENV, None)
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    if listen_fd is not None:
        listener = socket.socket(fileno=int(listen_fd))
        # The first worker opens the port; for later ones this changes nothing.
        # Not later, once ready: gevent's server fails (EINVAL) and stops
        # accepting for good if its hub polls the socket before listen().
        listener.listen(BACKLOG)
    else:
        sys.exit("fws.worker: error: run by fws_server --workers N, not by hand")

    def ready(server: Server) -> None:
        # SIGUSR1 from the supervisor: this worker is being replaced; SIGTERM follows.
        gevent.signal_handler(signal.SIGUSR1, server.stop_accepting)
        if ready_fd is not None:
            os.write(int(ready_fd), b"1")
            os.close(int(ready_fd))

    # The supervisor's Ctrl-C is forwarded as SIGTERM; a worker ignores SIGHUP
    # (the supervisor replaces it instead of it reloading itself).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until ready() handles it
    cli_main(list(sys.argv[1:] if argv is None else argv), listener=listener, on_ready=ready)


def _exit_with_parent(supervisor: int | None) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (kill -9 included).

    Otherwise orphaned workers would keep serving on the port forever.
    ``supervisor`` is the supervisor's pid (None: unknown), to tell whether it
    died before the request took effect: the parent is then another process.
    Elsewhere than Linux a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if supervisor is not None and os.getppid() != supervisor:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
