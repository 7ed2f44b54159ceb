"""The servers under test and how to start each in a mode (``echo`` or ``broadcast``).

fws runs as users run it (``fws_server -f echo``); the others are the small
scripts in ``bench/servers/``, each taking ``PORT MODE``, and fws+takeover is
``fws_server`` with compression context kept (``servers/fws_context_takeover.py``),
run only where a client offers deflate; "fws --workers 2" is fws_server with two
worker processes and the redis-server they share (``servers/fws_workers.py``),
not pinned to one CPU; fws-no-metrics is ``fws_server --no-metrics``, so that the
fws/no-metrics ratio is the cost of metrics; "fws (pure Python)" is ``fws_server``
with ``FWS_NO_SPEEDUPS=1``, without the optional C accelerator. picows (on
uvloop), socketify.py and Bun (both on uWebSockets) are the servers issue 10
measures fws against;
"floor" and "floor-batched" (``servers/floor.c``, compiled here) and
"floor-python" (``servers/floor_python.py``) are no WebSocket servers at all
but the least program that does the broadcasts' fan-out, to show what the
kernel allows on loopback. One place to read what exactly is compared.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadgen import compiled

SERVERS_DIR = Path(__file__).resolve().parent / "servers"

# fws's filter module for each mode; the default filters (broadcast + stdout) are off.
FWS_FILTERS = {"echo": "echo", "broadcast": "broadcast_messages"}


@dataclass(frozen=True)
class Target:
    """A server under test: a short name for the table, and its command line."""

    name: str
    command: Callable[[int, str], list[str]]
    missing: str | None = None  # why it cannot run here; None: it can
    scenarios: tuple[str, ...] | None = None  # the only scenarios it runs in; None: all
    pinned: bool = True  # on the server CPU; False: on every CPU, competing with the client


def _fws_options(port: int, mode: str) -> list[str]:
    return ["-q", "--host", "127.0.0.1", "-p", str(port), "-f", FWS_FILTERS[mode]]


def _fws(port: int, mode: str) -> list[str]:
    script = shutil.which("fws_server")
    base = [script] if script else [sys.executable, "-m", "fws"]
    return [*base, *_fws_options(port, mode)]


def _fws_no_metrics(port: int, mode: str) -> list[str]:
    return [*_fws(port, mode), "--no-metrics"]


def _fws_no_busy_poll(port: int, mode: str) -> list[str]:
    return [*_fws(port, mode), "--busy-poll-us", "0"]


def _fws_pure(port: int, mode: str) -> list[str]:
    # env execs fws_server: the process measured is the server itself.
    return ["env", "FWS_NO_SPEEDUPS=1", *_fws(port, mode)]


def _fws_takeover(port: int, mode: str) -> list[str]:
    script = SERVERS_DIR / "fws_context_takeover.py"
    return [sys.executable, str(script), *_fws_options(port, mode)]


def _fws_workers(port: int, mode: str) -> list[str]:
    script = SERVERS_DIR / "fws_workers.py"
    return [sys.executable, str(script), "2", *_fws_options(port, mode)]


def _script(name: str, *extra: str) -> Callable[[int, str], list[str]]:
    def command(port: int, mode: str) -> list[str]:
        return [sys.executable, str(SERVERS_DIR / name), str(port), mode, *extra]

    return command


def _node(port: int, mode: str) -> list[str]:
    return ["node", str(SERVERS_DIR / "node_server.js"), str(port), mode]


# npm ci in bench/ puts Bun's binary here (the optional dependency of package.json).
BUN = SERVERS_DIR.parent / "node_modules" / "@oven" / "bun-linux-x64" / "bin" / "bun"


def _bun_binary() -> str | None:
    return str(BUN) if BUN.exists() else shutil.which("bun")


def _bun(port: int, mode: str) -> list[str]:
    return [_bun_binary() or "bun", str(SERVERS_DIR / "bun_server.js"), str(port), mode]


def _floor(*extra: str) -> Callable[[int, str], list[str]]:
    def command(port: int, mode: str) -> list[str]:
        return [str(compiled(SERVERS_DIR / "floor.c")), str(port), mode, *extra]

    return command


# The floors only do the fan-out of a 64-byte broadcast.
FLOOR_SCENARIOS = ("broadcast-100", "broadcast-1000")


def _missing_module(*names: str) -> str | None:
    absent = [name for name in names if not importlib.util.find_spec(name)]
    return f"pip install {' '.join(absent)}" if absent else None


def all_targets() -> list[Target]:
    """Every server, fws first (ratios are fws / each other one)."""
    return [
        Target("fws", _fws),
        # fws without its optional C accelerator (fws._speedups: the broadcast's
        # fan-out and the flusher's sends), in the scenarios those loops carry.
        Target(
            "fws (pure Python)",
            _fws_pure,
            scenarios=("echo-100x10", "broadcast-100", "broadcast-1000", "broadcast-100-json"),
        ),
        # Only where a client offers deflate: elsewhere it is fws.
        Target(
            "fws+takeover",
            _fws_takeover,
            scenarios=(
                "broadcast-100-deflate",
                "broadcast-100-chat-deflate",
                "echo-100x10-deflate",
                "idle-deflate",
            ),
        ),
        # Two worker processes and the Redis they need, on both CPUs: the load
        # generator's CPU too, so on a two-core machine they compete with it.
        Target(
            "fws --workers 2",
            _fws_workers,
            None if shutil.which("redis-server") else "apt-get install redis-server",
            pinned=False,
        ),
        # The cost of metrics (issue 9: under 3 %): fws as above has them on,
        # this one off, in the scenarios whose hot path they touch.
        Target(
            "fws-no-metrics",
            _fws_no_metrics,
            scenarios=("echo-latency", "echo-100x10", "broadcast-100", "broadcast-1000"),
        ),
        # What busy polling (fws.busy_poll, on by default) buys and costs: fws
        # with it off, where a client keeps sending as soon as it can.
        Target(
            "fws-no-busy-poll",
            _fws_no_busy_poll,
            scenarios=("echo-latency", "echo-100x10", "broadcast-100", "broadcast-1000"),
        ),
        Target(
            "gevent-websocket",
            _script("gevent_websocket_server.py"),
            _missing_module("geventwebsocket"),
        ),
        Target("websockets", _script("websockets_server.py"), _missing_module("websockets")),
        Target(
            "websockets+uvloop",
            _script("websockets_server.py", "--uvloop"),
            _missing_module("websockets") or _missing_module("uvloop"),
        ),
        Target("picows", _script("picows_server.py"), _missing_module("picows", "uvloop")),
        Target("socketify", _script("socketify_server.py"), _missing_socketify()),
        Target("bun", _bun, None if _bun_binary() else "npm ci in bench/ (x86-64 Linux)"),
        Target("node ws", _node, None if shutil.which("node") else "install Node.js"),
        Target("floor", _floor(), _missing_gcc(), scenarios=FLOOR_SCENARIOS),
        Target("floor-batched", _floor("batch"), _missing_gcc(), scenarios=FLOOR_SCENARIOS),
        Target("floor-python", _script("floor_python.py"), scenarios=FLOOR_SCENARIOS),
    ]


def _missing_socketify() -> str | None:
    """socketify's bundled libsocketify links to the system's libuv.so.1 (Debian's libuv1,
    which Debian's nodejs pulls in): without it, importing socketify fails."""
    if ctypes.util.find_library("uv") is None:
        return "apt-get install libuv1 (socketify's native library links to libuv.so.1)"
    return _missing_module("socketify")


def _missing_gcc() -> str | None:
    return None if shutil.which("gcc") else "apt-get install gcc"
