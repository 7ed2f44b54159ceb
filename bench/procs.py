"""Processes of the benchmark: start pinned to a core, wait for the port, always stop.

Why pinning: the issue compares servers "on one core, the client on the
other"; ``taskset`` keeps the server on CPU 0 and the load generator on CPU 1
so that neither steals the other's time. Why the file limit: 10,000 idle
connections need more descriptors than a default shell allows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1
NOFILE = 65536
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    """Raise RLIMIT_NOFILE as far as allowed (a ``preexec_fn``, also used on ourselves)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (NOFILE, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
            return
        except (ValueError, OSError):
            continue  # not root: settle for the hard limit


def pinned(cpu: int, command: Sequence[str]) -> list[str]:
    """``command`` run on one CPU, if ``taskset`` exists and the CPU does."""
    if shutil.which("taskset") and cpu < (os.cpu_count() or 1):
        return ["taskset", "-c", str(cpu), *command]
    return list(command)


def free_port() -> int:
    """A port free now on 127.0.0.1; the run reuses it for every server in turn."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants: a server may be a supervisor and its workers."""
    pids, position = [pid], 0
    while position < len(pids):
        current, position = pids[position], position + 1
        for task in glob.glob(f"/proc/{current}/task/*/children"):
            with contextlib.suppress(OSError), open(task) as children:
                pids.extend(int(child) for child in children.read().split())
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far (``/proc/PID/stat``)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            if member == pid:
                raise
            continue  # a child that just ended
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def cpu_busy_seconds() -> dict[int, float]:
    """Time each CPU spent running processes, or stolen by the hypervisor (``/proc/stat``).

    Interrupt and softirq time are left out: on loopback they are mostly the
    benchmark's own packets, not someone else's work.
    """
    busy = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(field) for field in fields]
                user, nice, system, steal = ticks[0], ticks[1], ticks[2], ticks[7]
                busy[int(name[3:])] = (user + nice + system + steal) / _CLOCK_TICKS
    return busy


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (``VmRSS``, summed).

    For a supervisor and its workers the sum counts pages they share once per
    process, so it overstates what they use together.
    """
    total = 0
    for member in process_tree(pid):
        try:
            total += _own_rss(member)
        except (OSError, RuntimeError):
            if member == pid:
                raise
    return total


def _own_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class ServerProcess:
    """A running server under test."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]
    pinned: bool = True  # on SERVER_CPU; False: on every CPU, the load generator's too

    def log_tail(self, size: int = 4000) -> str:
        """The end of what the server wrote to stderr so far (warnings, tracebacks)."""
        self.stderr.flush()
        end = self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, end - size))
        return self.stderr.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.process.pid


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not listening on {port} after {timeout} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: a benchmark never leaves a process behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def run_server(
    name: str, command: Sequence[str], port: int, *, pin: bool = True
) -> Iterator[ServerProcess]:
    """Start ``command`` on the server CPU, wait until ``port`` accepts, stop it at the end.

    ``pin=False`` lets it use every CPU (a server with several worker processes).

    The server's stderr goes to a temporary file, shown if the server fails to start
    (a pipe nobody reads could fill up and block a chatty server).
    """
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            pinned(SERVER_CPU, command) if pin else list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            preexec_fn=raise_nofile,
        )
        try:
            try:
                _wait_listening(process, port, timeout=15)
            except RuntimeError as exc:
                stop(process)
                errors.seek(0)
                detail = errors.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{name}: {exc}\n{detail}") from None
            yield ServerProcess(name, port, process, errors, pinned=pin)
        finally:
            stop(process)


def fws_command() -> list[str]:
    """``fws_server`` as installed; ``python -P -m fws`` where the script is not on PATH."""
    script = shutil.which("fws_server")
    # -P: the current directory not first on sys.path, as fws's own workers.
    return [script] if script else [sys.executable, "-P", "-m", "fws"]


@contextlib.contextmanager
def redis_server(
    directory: str | Path, preexec_fn: Callable[[], None] | None = None
) -> Iterator[str]:
    """A private redis-server on a free 127.0.0.1 port, no disk; yields its URL.

    Stopped when the block ends; ``preexec_fn`` runs in the child (e.g. to
    die with its parent).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("the benchmark needs redis-server (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec_fn,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, port)) == 0:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
