"""glibc malloc settings for a server that moves large messages.

By default glibc returns freed heap to the kernel as soon as more than
128 KiB is free at its top, and checks that on every free of 64 KiB or more.
A server echoing or relaying large messages frees such blocks on every
message, so the heap shrinks and grows back each time and every fresh page
faults: echoing 64 KiB messages here, that was 820,000 page faults in five
seconds instead of 49,000, and 26% less throughput. Keeping freed memory for reuse (up
to ``TRIM_THRESHOLD``) and serving blocks up to ``MMAP_THRESHOLD`` from the
heap instead of a fresh mmap each removes that cost, at the price of a
process that holds on to memory it used at its peak.

``fws_server`` calls ``tune_for_server()`` at start-up. Scripts may call it
themselves, first thing. It changes process-wide settings, so a library must
never call it on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["tune_for_server"]

log = logging.getLogger("fws.allocator")

TRIM_THRESHOLD = 32 * 2**20
"""Free heap glibc may keep at its top before returning it to the kernel."""
MMAP_THRESHOLD = 4 * 2**20
"""Blocks smaller than this (every message under the default 1 MiB limit) come from the heap."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def tune_for_server() -> bool:
    """Apply the settings above; False where they do not apply.

    Nothing is changed when the C library is not glibc, or when the operator
    already tunes malloc through its environment (``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``..., or ``glibc.malloc``
    tunables in ``GLIBC_TUNABLES``): their choice wins.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # The mmap threshold first: setting either turns off glibc's own adjustment.
    done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(
        _M_TRIM_THRESHOLD, TRIM_THRESHOLD
    )
    if not done:
        log.warning("mallopt refused the server settings; glibc keeps its defaults")
    return bool(done)
