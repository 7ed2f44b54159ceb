"""What the numbers ran on: they mean little without the machine and versions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "absent"


def _output(command: list[str]) -> str:
    """The first line ``command`` prints, or "absent"."""
    try:
        return (
            subprocess.run(command, capture_output=True, text=True, check=True)
            .stdout.splitlines()[0]
            .strip()
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "absent"


def _bun_version() -> str:
    from targets import _bun_binary

    binary = _bun_binary()
    return _output([binary, "--version"]) if binary else "absent"


def _ws_version() -> str:
    package = Path(__file__).resolve().parent / "node_modules" / "ws" / "package.json"
    try:
        return json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "absent"


def _revision() -> str:
    """The commit measured, and whether fws/ differed from it (others may be editing)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "fws"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"fws at {head}" + (" with uncommitted changes in fws/" if dirty else "")


def describe() -> list[str]:
    """One line each: CPU, cores and kernel; then the versions of what was compared."""
    return [
        f"{os.cpu_count()} x {_cpu_model()}, {platform.system()} {platform.release()}, "
        "server pinned to CPU 0, load generator to CPU 1 (bench/loadgen.c; "
        "loadgen.js, Node, in the JSON and deflate scenarios)",
        f"Python {platform.python_version()}, fws {_version('fws')}, gevent {_version('gevent')}, "
        f"gevent-websocket {_version('gevent-websocket')}, websockets {_version('websockets')}, "
        f"uvloop {_version('uvloop')}, picows {_version('picows')}, "
        f"socketify {_version('socketify')}, Bun {_bun_version()}, "
        f"Node {_node_version()}, ws {_ws_version()}, {_output(['gcc', '--version'])}",
        _revision(),
    ]
