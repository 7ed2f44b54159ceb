"""Drive ``loadgen.js`` (the Node ``ws`` client) from Python, one scenario run at a time.

The load generator prints JSON lines; this module reads them as they come so
that the server's CPU can be sampled exactly at the ``start`` and ``end`` of
the measurement window, and answers the idle scenario's questions (``go``,
``done``) once the caller has read the server's memory.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import (
    CLIENT_CPU,
    SERVER_CPU,
    cpu_busy_seconds,
    cpu_seconds,
    pinned,
    raise_nofile,
    rss_bytes,
)

BENCH_DIR = Path(__file__).resolve().parent
SCRIPT = BENCH_DIR / "loadgen.js"

# Called with each event other than "result"; returns a line to send to the
# load generator's stdin, or None.
EventHandler = Callable[[dict[str, Any]], str | None]


class LoadgenError(RuntimeError):
    """The load generator failed (a server refused connections, or it timed out)."""


def ensure_installed() -> None:
    """``npm ci`` once if ``bench/node_modules`` lacks ``ws`` (it is git-ignored)."""
    if (BENCH_DIR / "node_modules" / "ws").is_dir():
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=BENCH_DIR, check=True)


def run(
    config: dict[str, Any],
    server_pid: int,
    on_event: EventHandler | None = None,
    *,
    server_pinned: bool = True,
) -> dict[str, Any]:
    """Run one scenario; the result, plus ``server_cpu`` (% of a core) over the window.

    ``server_pinned=False``: the server runs on every CPU (``--workers 2``),
    so what others used is the CPUs' total less the server's and the client's.

    Also the server's RSS before the load generator starts and at the end of
    the window (``server_rss_start``, ``server_rss_end``, bytes): what its
    connections hold while busy. Hard-bounded: the script stops itself, and
    this waits at most its bound plus 30 s.
    """
    rss_start = rss_bytes(server_pid)
    command = pinned(CLIENT_CPU, ["node", str(SCRIPT), json.dumps(config)])
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_nofile,
    )
    assert process.stdout is not None and process.stdin is not None
    result: dict[str, Any] | None = None
    window: dict[str, Any] = {}
    busy_at_start: dict[int, float] = {}
    error = None
    try:
        for line in process.stdout:
            event = json.loads(line)
            kind = event["event"]
            if kind == "start":
                window["cpu"] = cpu_seconds(server_pid)
                busy_at_start = cpu_busy_seconds()
                window["wall"] = time.monotonic()
            elif kind == "end":
                wall = time.monotonic() - window["wall"]
                window["server_cpu"] = (cpu_seconds(server_pid) - window["cpu"]) / wall * 100
                window["rss_end"] = rss_bytes(server_pid)
                busy = cpu_busy_seconds()
                window["busy"] = {
                    cpu: (busy[cpu] - busy_at_start.get(cpu, 0.0)) / wall * 100 for cpu in busy
                }
            elif kind == "result":
                result = event
            elif kind == "error":
                error = event["message"]
            if on_event is not None and kind not in ("result", "error"):
                answer = on_event(event)
                if answer is not None:
                    process.stdin.write(answer + "\n")
                    process.stdin.flush()
        bound = config.get("warmup", 0) + config.get("duration", 0) + config.get("timeout", 60)
        process.wait(bound + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if error is not None or result is None:
        stderr = process.stderr.read() if process.stderr else ""
        raise LoadgenError(error or f"no result (exit {process.returncode}): {stderr[-1000:]}")
    result["server_rss_start"] = rss_start
    if "server_cpu" in window:
        result["server_cpu"] = window["server_cpu"]
        result["server_rss_end"] = window["rss_end"]
        # Whatever else ran on the two benchmark CPUs (other jobs on the machine)
        # disturbs the numbers: measure it rather than assume it away.
        busy: dict[int, float] = window["busy"]
        if server_pinned:
            others = [
                busy.get(SERVER_CPU, 0.0) - result["server_cpu"],
                busy.get(CLIENT_CPU, 0.0) - result.get("client_cpu", 0.0),
            ]
        else:
            both = busy.get(SERVER_CPU, 0.0) + busy.get(CLIENT_CPU, 0.0)
            others = [both - result["server_cpu"] - result.get("client_cpu", 0.0)]
        result["others_cpu"] = max(0.0, *others)
    return result
