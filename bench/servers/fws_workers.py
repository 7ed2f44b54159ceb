"""``fws_server --workers 2`` as the benchmark runs it: with a redis-server of its own.

Usage: python fws_workers.py WORKERS [-q] --host HOST -p PORT -f MODULE (the
options bench/targets.py gives fws_server). Several workers need a shared
storage (fws refuses the in-memory one), so this starts a private
redis-server on a free 127.0.0.1 port (no disk), runs fws_server with
``--workers WORKERS --storage redis`` on it, and on SIGTERM stops fws_server
(which drains its workers), then Redis. Both children get SIGKILL from Linux
if this script dies, so a benchmark never leaves a process behind. The
benchmark counts this script, Redis and every worker as the server (CPU
and memory of the whole process tree).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for procs

from procs import fws_command, redis_server  # noqa: E402


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the script dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def main() -> int:
    workers, *fws_args = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="fws-bench-redis-") as directory:
        with redis_server(directory, preexec_fn=_die_with_parent) as url:
            server = subprocess.Popen(
                [*fws_command(), "--workers", workers, "--storage", "redis",
                 "--redis-url", url, "--close-timeout", "1", *fws_args],
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
            signal.signal(signal.SIGINT, lambda *_: server.send_signal(signal.SIGTERM))
            return server.wait()


if __name__ == "__main__":
    sys.exit(main())
