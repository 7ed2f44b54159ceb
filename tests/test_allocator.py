"""fws_server's glibc malloc settings (their effect on speed is measured by make bench)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CALL = "from fws.allocator import tune_for_server; print(tune_for_server())"


def _run(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", CALL], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_settings_apply_on_glibc_unless_the_operator_tunes_malloc_already():
    assert _run() == "True"
    assert _run(MALLOC_TRIM_THRESHOLD_="1048576") == "False"  # the operator's choice wins
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == "False"
    assert _run(GLIBC_TUNABLES="glibc.rtld.nns=4") == "True"  # not a malloc tunable

