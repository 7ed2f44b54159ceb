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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

LOOPBACK = "127.0.0.1"


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the script dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def main() -> int:
    workers, *fws_args = sys.argv[1:]
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("fws_workers.py needs redis-server (apt-get install redis-server)")
    script = shutil.which("fws_server")
    # -P: not the current directory first on sys.path (as fws's own workers).
    fws = [script] if script else [sys.executable, "-P", "-m", "fws"]
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="fws-bench-redis-") as directory:
        redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex((LOOPBACK, port)) == 0:
                        break
                if time.monotonic() > deadline or redis.poll() is not None:
                    sys.exit("fws_workers.py: redis-server did not start")
                time.sleep(0.05)
            server = subprocess.Popen(
                [*fws, "--workers", workers, "--storage", "redis",
                 "--redis-url", f"redis://{LOOPBACK}:{port}/0", "--close-timeout", "1",
                 *fws_args],
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
            signal.signal(signal.SIGINT, lambda *_: server.send_signal(signal.SIGTERM))
            return server.wait()
        finally:
            redis.terminate()
            redis.wait(10)


if __name__ == "__main__":
    sys.exit(main())
