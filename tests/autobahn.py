"""Run the Autobahn|Testsuite cases 1 to 13 (with kosoku) against ``fws_server -f echo``.

``make autobahn`` runs this file and prints the summary; ``tests/test_autobahn.py``
runs the same function in ``make test`` and fails on any FAILED case. The
HTML/JSON report goes to ``reports/autobahn`` (git-ignored).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import LOOPBACK, ServerProcess  # noqa: E402

REPORT_DIR = Path(__file__).parent.parent / "reports" / "autobahn"
# The 9.x cases send messages of up to 16 MiB: raise the 1 MiB default for them.
SERVER_ARGS = ["-f", "echo", "--host", LOOPBACK, "-p", "0"]
SERVER_ARGS += ["--max-message-size", str(64 * 2**20), "--max-outbound-bytes", str(64 * 2**20)]
# Groups 12 and 13 (permessage-deflate): compress every message, the empty one
# too (kosoku hands an empty *uncompressed* text echo to case 12.1.1 as str and
# fails it while hashing), and no keepalive pings (a server ping that arrives
# while a long 12.x/13.x case runs makes kosoku lose the echo it was waiting
# for; the cases then time out). Small uncompressed messages under deflate are
# covered by tests/test_compression.py with the websockets client.
SERVER_ARGS += ["--compression", "deflate", "--compression-min-size", "0", "--ping-interval", "0"]
EXCLUDED: tuple[str, ...] = ()
LARGEST_COMPRESSED = tuple(
    f"{group}.{subgroup}.{case}"
    for group, subgroups in (("12", range(1, 6)), ("13", range(1, 8)))
    for subgroup in subgroups
    for case in range(13, 19)
)
"""The compression cases of 32 KiB to 128 KiB messages (x.y.13 to x.y.18 of groups 12
and 13, 72 cases): 59 % of the suite's time, and the same code paths as their
smaller neighbours. ``make test`` leaves them out to stay within its time on a
slow machine; ``make autobahn`` runs them."""


def kosoku_command() -> list[str]:
    found = shutil.which("kosoku")
    if found is None:
        raise RuntimeError("kosoku is not installed: pip install kosoku (make install does)")
    return [found]


def run_autobahn(
    report_dir: Path = REPORT_DIR, parallelism: int = 4, excluded: tuple[str, ...] = EXCLUDED
) -> dict[str, Counter[str]]:
    """Run the suite but ``excluded``; return {"behavior": Counter, "behaviorClose": Counter,
    "groups": Counter, "failed": [...]}."""
    if report_dir.exists():
        shutil.rmtree(report_dir)
    report_dir.mkdir(parents=True)
    with ServerProcess(SERVER_ARGS) as server:
        command = [*kosoku_command(), "-o", str(report_dir), "-p", str(parallelism)]
        for pattern in excluded:
            command += ["-x", pattern]
        subprocess.run(
            [*command, f"{LOOPBACK}:{server.port}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        server.stop()
    behavior: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    behavior_close: Counter[str] = Counter()
    failed: list[str] = []
    cases = sorted(report_dir.glob("*_case_*.json"))
    for path in cases:
        case = json.loads(path.read_text())
        behavior[case["behavior"]] += 1
        groups[case["id"].split(".")[0]] += 1
        behavior_close[case["behaviorClose"]] += 1
        if "FAILED" in (case["behavior"], case["behaviorClose"]):
            failed.append(f"{case['id']}: {case['behavior']}/{case['behaviorClose']}")
    return {  # type: ignore[return-value]
        "behavior": behavior,
        "behaviorClose": behavior_close,
        "groups": groups,
        "failed": failed,
    }


def summary(result: dict[str, Counter[str]]) -> str:
    behavior, close = result["behavior"], result["behaviorClose"]
    total = sum(behavior.values())
    parts = ", ".join(f"{count} {name}" for name, count in sorted(behavior.items()))
    closes = ", ".join(f"{count} {name}" for name, count in sorted(close.items()))
    return f"Autobahn: {total} cases: {parts}; close behaviour: {closes}"


if __name__ == "__main__":
    outcome = run_autobahn()
    print(summary(outcome))
    for line in outcome["failed"]:  # type: ignore[attr-defined]
        print("FAILED", line)
    print(f"report: {REPORT_DIR / 'index.html'}")
    sys.exit(1 if outcome["failed"] or not sum(outcome["behavior"].values()) else 0)
