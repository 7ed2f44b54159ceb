"""The documentation site: it builds without warnings, and documents every option.

The build is the real one (``python -m sphinx -W``, as ``make docs`` runs
it) into a fresh directory, so a stale cache cannot hide a warning; the
checks then read the HTML a user would read.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import click
import pytest
from helpers import LOOPBACK, ServerProcess, connect, run_fws_server, wait_for

import fws
from fws.cli import build_command
from fws.modules import load_storage_class

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
ANY_PORT = {"FWS_HOST": LOOPBACK, "FWS_PORT": "0", "FWS_CLOSE_TIMEOUT": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    warnings = out / "warnings.txt"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
               "-d", str(out / "doctrees"), "-w", str(warnings),
               str(DOCS), str(out / "html")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert warnings.read_text() == ""
    return out / "html"


class _Text(HTMLParser):
    """The visible text of a page, whitespace collapsed (what a reader sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(path: Path) -> str:
    parser = _Text()
    parser.feed(path.read_text(encoding="utf-8"))
    return " ".join("".join(parser.parts).split())


def commands() -> list[click.Command]:
    """``fws_server`` as each built-in storage makes it (a storage adds options)."""
    return [build_command(name, load_storage_class(name)) for name in ("default", "redis")]


def all_options() -> dict[str, click.Option]:
    options: dict[str, click.Option] = {}
    for command in commands():
        ctx = click.Context(command)
        for param in command.get_params(ctx):
            # -h/--help is click's own; sphinx-click leaves it out, as man pages do.
            if isinstance(param, click.Option) and param.name != "help":
                options.setdefault(param.opts[-1] if param.opts else param.name or "", param)
    return options


def test_docs_build_without_warnings(site):
    for page in ("index", "deployment", "reference/cli", "reference/api", "operations/index"):
        assert (site / f"{page}.html").is_file()


def test_cli_reference_documents_every_option_with_its_help(site):
    page = site / "reference" / "cli.html"
    text = page_text(page)
    anchors = set(re.findall(r'id="(cmdoption-[^"]+)"', page.read_text()))
    missing = []
    for option in all_options().values():
        for opt in [*option.opts, *option.secondary_opts]:
            if opt not in text:
                missing.append(opt)
        if not option.help:
            missing.append(f"{option.opts[-1]} (no help text)")
        elif " ".join(option.help.split()) not in html.unescape(text):
            missing.append(f"{option.opts[-1]} (help text not rendered)")
    assert missing == []
    # Each option is an entry of its own that the rest of the docs can link to.
    assert any(anchor.endswith("-redis_url") for anchor in anchors)
    assert any(anchor.endswith("-max-connections") for anchor in anchors)


def test_cli_reference_names_every_environment_variable_spelled_unlike_its_option():
    """click derives FWS_<NAME> from the parameter name, not the option's (FWS_ORIGINS)."""
    reference = (DOCS / "reference" / "cli.rst").read_text()
    irregular = []
    for option in all_options().values():
        longest = max(option.opts, key=len).lstrip("-")
        expected = "FWS_" + longest.upper().replace("-", "_")
        actual = "FWS_" + (option.name or "").upper()
        if option.name not in ("version", "config") and actual != expected:
            irregular.append(actual)
            assert actual in reference, f"{max(option.opts, key=len)} is {actual}"
    assert "FWS_TRUSTED_PROXIES" in irregular  # the check does find the plural spellings


def test_api_reference_documents_the_public_names(site):
    page = (site / "reference" / "api.html").read_text()
    documented = set(re.findall(r'id="(fws\.[\w.]+)"', page))
    wanted = {f"fws.{name}" for name in fws.__all__} | {
        "fws.storage.base.Storage",
        "fws.storage.redis.Publisher",
        "fws.Connection.send",
        "fws.Connection.join",
        "fws.Server.stop",
    }
    assert wanted - documented == set()


def test_deployment_guide_covers_what_operators_need(site):
    text = page_text(site / "deployment.html")
    for needle in ("LimitNOFILE", "ExecReload=/bin/kill -HUP $MAINPID", "EnvironmentFile",
                   "FROM python:3.11-slim", "readinessProbe", "/ready", "/health",
                   "ulimit -n", "proxy_http_version 1.1", "timeout tunnel",
                   "--trusted-proxy", "PUBLISH"):  # fmt: skip
        assert needle in html.unescape(text), needle


def test_readme_keeps_the_first_page_and_its_links_resolve():
    readme = (ROOT / "README.rst").read_text()
    assert "    make install" in readme and "    make test" in readme  # .ci/run relies on them
    assert "class ChatServer(WebSocketMessageFilter):" in readme
    links = re.findall(r"<(docs/[^>]+\.rst)>`_", readme)
    assert len(links) > 10
    assert [link for link in links if not (ROOT / link).is_file()] == []


def test_readme_redis_layout_is_the_scaling_guides():
    """README.rst's short layout names exactly the keys and channels the guide explains."""
    readme = (ROOT / "README.rst").read_text()
    guide = (DOCS / "guide" / "scaling.rst").read_text()
    section = readme[readme.index("The Redis layout") : readme.index("Documentation\n")]
    names = set(re.findall(r"P:[^\s`]+", section))
    explained = set(re.findall(r"^    (P:\S+)", guide, re.MULTILINE))
    assert len(names) == 8 and names == explained


def test_storage_guide_backend_example_runs_with_its_option(tmp_path):
    guide = (DOCS / "guide" / "storage.rst").read_text()
    block = guide[guide.index("    # mystore.py") :].partition("\n\n``fws_server")[0]
    (tmp_path / "mystore.py").write_text("\n".join(line[4:] for line in block.splitlines()))
    usage = run_fws_server(["--storage", "mystore", "-h"], cwd=tmp_path)
    assert usage.returncode == 0 and "--audit_level" in usage.stdout
    storage = ["--storage", "mystore", "--audit_level", "warning"]
    args = [*storage, "-f", "broadcast_messages_by_token"]
    with ServerProcess(args, cwd=tmp_path, env=ANY_PORT) as server:
        client = connect(server.url)
        client.send("token:kitchen")
        assert client.recv() == "Successfully registered with broadcast group: kitchen"
        # Logged as a warning, not at the default info: the option reached the backend.
        wait_for(lambda: re.search(r"WARNING.*mystore.*joined kitchen", server.output))
        client.close()
