"""Drive the load generators from Python, one scenario run at a time.

Two generators, one protocol: ``loadgen.c`` (C, epoll, raw sockets, compiled
here with gcc) for the binary scenarios, and ``loadgen.js`` (Node) for the
JSON and permessage-deflate ones, which need zlib (its lean client) or the
``ws`` client. Why C: pinned to one core, the Node ``ws`` client was over
90 % busy in the broadcasts against every server but fws, so those figures
were lower bounds (issue 10); the C client does only what the scenarios
need and uses a quarter to a half of its core where ws used all of it.

A load generator prints JSON lines; this module reads them as they come so
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
from urllib.parse import urlsplit

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
GENERATOR = BENCH_DIR / "loadgen.c"
BUILD = BENCH_DIR / "build"  # compiled programs (git-ignored)
# The node_modules entries `npm ci` brings: the ws client, and Bun (a server under test).
NODE_MODULES = ("ws", "@oven/bun-linux-x64")

# Called with each event other than "result"; returns a line to send to the
# load generator's stdin, or None.
EventHandler = Callable[[dict[str, Any]], str | None]


class LoadgenError(RuntimeError):
    """The load generator failed (a server refused connections, or it timed out)."""


def ensure_installed() -> None:
    """``npm ci`` if ``bench/node_modules`` (git-ignored) lacks a package; gcc the generator.

    Bun is an optional dependency (its package exists for x86-64 Linux only):
    elsewhere npm skips it, and its column says "not installed".
    """
    modules = BENCH_DIR / "node_modules"
    if not all((modules / name).is_dir() for name in NODE_MODULES):
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=BENCH_DIR, check=True
        )
    compiled(GENERATOR)


def compiled(source: Path) -> Path:
    """``source`` (one C file) built with ``gcc -O2`` into bench/build/, if older or absent."""
    binary = BUILD / source.stem
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    BUILD.mkdir(exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True, cwd=BENCH_DIR
    )
    return binary


def uses_node(config: dict[str, Any]) -> bool:
    """Whether a scenario needs loadgen.js: JSON pages, deflate, or its lean client."""
    return (
        config.get("payload", "binary") != "binary"
        or bool(config.get("compression"))
        or config.get("client") == "lean"
    )


def command_for(config: dict[str, Any]) -> list[str]:
    """The generator's command line for ``config`` (loadgen.c takes key=value words)."""
    if uses_node(config):
        return ["node", str(SCRIPT), json.dumps(config)]
    url = urlsplit(config["url"])
    words = {**config, "host": url.hostname, "port": url.port}
    skip = ("url", "client", "payload", "compression")
    return [
        str(compiled(GENERATOR)),
        *(f"{key}={value}" for key, value in words.items() if key not in skip),
    ]


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
    command = pinned(CLIENT_CPU, command_for(config))
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
    result["generator"] = "loadgen.js" if uses_node(config) else "loadgen.c"
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
