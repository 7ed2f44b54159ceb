"""fws._accel: the switch between the compiled loops and pure Python, and the pure path itself.

The suite runs with fws._speedups wherever it is built; the tests listed in
``PURE_PATH`` (the broadcast's fan-out, the flusher, the slow-client limit,
metrics run counting, the frames held while a connection opens, the frame parser) run once
more in a pytest of their own with ``FWS_NO_SPEEDUPS=1``, so that the pure
Python loops stay tested on real servers (``fws_server`` subprocesses
inherit the switch).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import fws.frames
import fws.outbound
from fws import _accel

ROOT = Path(__file__).resolve().parent.parent

PURE_PATH = (
    "tests/test_connection.py",
    "tests/test_deferred_broadcast.py",
    "tests/test_frames.py",
    "tests/test_speedups.py",
    "tests/test_accel.py::test_the_accelerator_is_the_one_in_use_unless_switched_off",
    "tests/test_metrics.py::test_a_broadcast_counts_one_message_per_recipient",
    "tests/test_metrics.py::test_a_slow_client_cut_is_counted",
    "tests/test_metrics.py::test_outbound_queue_bytes_show_a_client_that_does_not_read",
    "tests/test_server.py::test_broadcast_pipe_stdout_composes_with_pipe",
    "tests/test_server.py::test_frames_sent_together_with_the_handshake_are_not_lost",
    "tests/test_server.py::test_messages_stay_in_order_while_a_filter_blocks",
    "tests/test_server.py::test_a_client_streaming_without_pause_gets_every_echo_and_is_not_called_slow",
    "tests/test_server.py::test_slow_reader_is_cut_off_while_sender_and_fast_readers_go_on",
    "tests/test_server.py::test_a_large_message_sent_in_parts_is_read_into_pieces_and_echoed_whole",
    "tests/test_server.py::test_one_frame_larger_than_the_outbound_limit_still_goes_to_a_reading_client",
    "tests/test_compression.py::test_a_broadcast_compresses_once_for_every_client_that_keeps_no_context",
    "tests/test_limits.py::test_a_client_flooding_pings_without_reading_is_closed_not_buffered_for",
    "tests/test_limits.py::test_unanswered_server_close_is_reported_as_not_clean",
)


def test_the_accelerator_is_the_one_in_use_unless_switched_off():
    if os.environ.get(_accel.SWITCH):
        assert _accel.speedups is None
        assert _accel.IMPLEMENTATION == f"pure Python ({_accel.SWITCH} is set)"
        assert fws.outbound.fan_out is fws.outbound._pure_fan_out
        assert fws.outbound._flush_each is fws.outbound._pure_flush_each
        assert fws.outbound._send_broadcasts is fws.outbound._pure_send_broadcasts
        assert fws.frames._parse_messages is None
        assert fws.frames._unmask_pieces is fws.frames._pure_unmask_pieces
        assert fws.frames.encode_message is fws.frames._pure_encode_message
    elif _accel.speedups is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must build fws._speedups: {_accel.IMPLEMENTATION}", pytrace=False)
        pytest.skip(_accel.IMPLEMENTATION)
    else:
        assert _accel.IMPLEMENTATION == "C (fws._speedups)"
        assert fws.outbound.fan_out is _accel.speedups.fan_out
        assert fws.frames._parse_messages is _accel.speedups.parse_messages
        assert fws.frames._unmask_pieces is _accel.speedups.unmask_pieces
        assert fws.frames.encode_message is not fws.frames._pure_encode_message
        assert fws.outbound._flush_each is _accel.speedups.flush_each
        assert fws.outbound._send_broadcasts is _accel.speedups.send_broadcasts


@pytest.mark.parametrize("value, pure", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_switch_leaves_the_extension_unloaded(value, pure):
    probe = (
        "import sys, fws._accel as accel\n"
        "print(accel.speedups is None, 'fws._speedups' in sys.modules)"
    )
    environment = {**os.environ, _accel.SWITCH: value}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = importlib.util.find_spec("fws._speedups") is not None
    if pure or not built:
        assert result.stdout.split() == ["True", "False"]
    else:
        assert result.stdout.split() == ["False", "True"]


def test_an_extension_built_from_an_older_source_is_left_for_pure_python():
    # A stale in-place build (another checkout's) has the module but not every
    # function: fws must import, and run on the pure loops, not fail at import.
    probe = (
        "import sys, types\n"
        "old = types.ModuleType('fws._speedups')\n"
        "old.fan_out = old.flush_each = old.parse_messages = print\n"
        "sys.modules['fws._speedups'] = old\n"
        "import fws, fws.frames, fws.outbound\n"
        "from fws import _accel\n"
        "print(_accel.speedups is None, fws.frames._parse_messages is None,\n"
        "      fws.outbound.fan_out is fws.outbound._pure_fan_out)\n"
        "print(_accel.IMPLEMENTATION)\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != _accel.SWITCH}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.split() == ["True", "True", "True"]
    assert "out of date, without bind, send_broadcasts, unmask_pieces, message_encoder" in second


@pytest.mark.timeout(300)
def test_the_pure_python_loops_pass_the_fan_out_and_flush_tests():
    if os.environ.get(_accel.SWITCH):
        pytest.skip("this run is the pure-Python one")
    environment = {**os.environ, _accel.SWITCH: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PURE_PATH],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("build", ["", "no"])
def test_the_sdist_carries_the_c_source_however_it_was_built(tmp_path, build):
    # setuptools puts an Extension's sources in the sdist only when setup.py
    # declares it: with FWS_BUILD_EXTENSION=no it declared none, and the sdist
    # went out without fws/_speedups.c.
    source = tmp_path / "source"
    source.mkdir()
    names = ["setup.py", "setup.cfg", "pyproject.toml", "README.rst", "MANIFEST.in", "fws"]
    for name in names:
        if (ROOT / name).is_dir():
            skip = shutil.ignore_patterns("*.so", "__pycache__")
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        elif (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    environment = {**os.environ, "FWS_BUILD_EXTENSION": build}
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
        cwd=source,
        env=environment,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as sdist:
        names = sdist.getnames()
    for source in ("_speedups.c", "_speedups_outbound.c", "_speedups_frames.c", "_speedups.h"):
        assert any(name.endswith(f"/fws/{source}") for name in names), source


def test_the_c_source_compiles_without_warnings_under_wall_wextra():
    # setup.py compiles with Python's flags (-Wall, not -Wextra), so a warning
    # there scrolls past in pip's output; three unused parameters did.
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if compiler is None or not Path(include, "Python.h").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have a C compiler and Python's headers", pytrace=False)
        pytest.skip("no C compiler or no Python headers here")
    for source in ("fws/_speedups.c", "fws/_speedups_outbound.c", "fws/_speedups_frames.c"):
        result = subprocess.run(
            [compiler, "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{include}", source],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
