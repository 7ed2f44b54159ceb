"""fws_server's glibc malloc settings (their effect on speed is measured by make bench)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the settings are glibc's"
)

# Whether a 1 MiB block is mmapped (glibc's default) or served from the heap,
# read from mallinfo2's count of mmapped blocks, before and after tuning.
PROBE = """
import ctypes
from fws.allocator import tune_for_server

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped() -> bool:
    before = libc.mallinfo2().hblks
    block = bytearray(2**20)
    return libc.mallinfo2().hblks > before

print(mmapped(), tune_for_server(), mmapped())
"""


def _run(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_large_blocks_come_from_the_heap_once_tuned():
    assert _run() == "True True False"


def test_the_operators_malloc_settings_win():
    assert _run(MALLOC_TRIM_THRESHOLD_="1048576") == "True False True"
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == "True False True"
    assert _run(GLIBC_TUNABLES="glibc.rtld.nns=4") == "True True False"  # not a malloc tunable
