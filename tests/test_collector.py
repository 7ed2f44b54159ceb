"""fws_server's garbage-collector settings (their effect on opens is measured by make bench)."""

from __future__ import annotations

import subprocess
import sys

from helpers import LOOPBACK_ANY_PORT, ServerProcess, connect

from fws.collector import OLDEST_GENERATION

# A filter that reports the collector's state of the server process it runs in.
REPORT_GC = """
import gc

from fws import WebSocketMessageFilter


class ReportGC(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        web_socket_instance.send(f"{gc.get_threshold()} frozen={gc.get_freeze_count() > 0}")
"""


def test_fws_server_freezes_its_start_up_objects_and_raises_the_oldest_threshold(tmp_path):
    (tmp_path / "report_gc.py").write_text(REPORT_GC)
    with ServerProcess(["-f", "report_gc"], cwd=tmp_path, env=LOOPBACK_ANY_PORT) as server:
        client = connect(server.url)
        client.send("?")
        assert client.recv() == f"(700, 10, {OLDEST_GENERATION}) frozen=True"
        client.close()


PROBE = """
import gc, sys
{before}
from fws.collector import tune_collector
print(tune_collector(), gc.get_threshold(), gc.get_freeze_count() > 0, gc.isenabled())
"""


def _probe(before: str = "") -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_tuning_applies_over_cpythons_defaults():
    assert _probe() == f"True (700, 10, {OLDEST_GENERATION}) True True"


def test_the_operators_collector_settings_win():
    assert _probe("gc.set_threshold(5000, 20, 20)") == "False (5000, 20, 20) False True"
    assert _probe("gc.disable()") == "False (700, 10, 10) False False"
