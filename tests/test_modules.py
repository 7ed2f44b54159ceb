"""``-f ./file.py`` loads under a private module name; the current directory goes last."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from helpers import LOOPBACK, ServerProcess

from fws.errors import FilterModuleError
from fws.modules import load_filter_module
from fws.registry import filters_defined_in

ECHO_TEMPLATE = """
from fws.events import WebSocketMessageFilter


class {name}(WebSocketMessageFilter):
    @classmethod
    def filter(cls, connection, data):
        connection.send("{prefix}" + data)
"""


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path and sys.modules as they were, whatever a test imported."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _write_echo(directory: Path, name: str, prefix: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "echo.py"
    path.write_text(ECHO_TEMPLATE.format(name=name, prefix=prefix))
    return path


@pytest.mark.usefixtures("clean_imports")
def test_two_files_with_one_name_load_side_by_side(tmp_path):
    first = load_filter_module(str(_write_echo(tmp_path / "a", "EchoA", "a:")))
    second = load_filter_module(str(_write_echo(tmp_path / "b", "EchoB", "b:")))
    assert first is not second
    assert first.__name__ != second.__name__
    assert [f.__name__ for f in filters_defined_in(first)] == ["EchoA"]
    assert [f.__name__ for f in filters_defined_in(second)] == ["EchoB"]
    # Both stay importable by their own names; neither took the name "echo".
    assert sys.modules[first.__name__] is first and sys.modules[second.__name__] is second
    assert "echo" not in sys.modules
    builtin = load_filter_module("echo")  # the built-in is still the built-in
    assert builtin.__name__ == "fws.filters.echo"
    assert builtin.__file__.endswith(os.path.join("fws", "filters", "echo.py"))


@pytest.mark.usefixtures("clean_imports")
def test_the_same_file_twice_is_one_module(tmp_path):
    path = _write_echo(tmp_path, "EchoOnce", "")
    assert load_filter_module(str(path)) is load_filter_module(str(tmp_path / "." / "echo.py"))


@pytest.mark.usefixtures("clean_imports")
def test_a_json_py_file_does_not_replace_the_standard_library(tmp_path, monkeypatch):
    (tmp_path / "json.py").write_text("BROKEN = True\n")
    monkeypatch.chdir(tmp_path)
    module = load_filter_module("./json.py")
    assert module.BROKEN is True
    assert sys.modules["json"] is json
    assert not hasattr(json, "BROKEN")


@pytest.mark.usefixtures("clean_imports")
def test_the_current_directory_is_appended_to_the_import_path(tmp_path, monkeypatch):
    (tmp_path / "json.py").write_text("BROKEN = True\n")
    (tmp_path / "my_local_filters.py").write_text(ECHO_TEMPLATE.format(name="Local", prefix=""))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    module = load_filter_module("my_local_filters")  # by module name, from ./
    assert [f.__name__ for f in filters_defined_in(module)] == ["Local"]
    assert sys.path[-1] == str(tmp_path)
    # By name, "json" is the standard library's: the directory comes last.
    assert load_filter_module("json") is json


@pytest.mark.usefixtures("clean_imports")
def test_a_failing_file_leaves_nothing_in_sys_modules(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('nope')\n")
    before = set(sys.modules)
    with pytest.raises(FilterModuleError, match="RuntimeError: nope"):
        load_filter_module(str(path))
    assert set(sys.modules) == before


def test_two_echo_files_from_the_command_line_both_run(tmp_path):
    _write_echo(tmp_path / "one", "EchoOne", "one:")
    _write_echo(tmp_path / "two", "EchoTwo", "two:")
    (tmp_path / "json.py").write_text("raise SystemExit('the local json.py was imported')\n")
    args = ["-p", "0", "--host", LOOPBACK, "-f", "./one/echo.py", "./two/echo.py"]
    with ServerProcess(args, cwd=tmp_path) as server:
        client = websocket.create_connection(server.url, timeout=5)
        client.send("hi")
        assert sorted([client.recv(), client.recv()]) == ["one:hi", "two:hi"]
        client.close()
        assert server.stop() == 0
