"""``fws_server``: the seed's commands verbatim, the modern options, every error."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import websocket
import websockets.sync.client as ws_sync
from click.testing import CliRunner
from helpers import (
    LOOPBACK,
    LOOPBACK_ANY_PORT,
    ServerProcess,
    TLSFiles,
    WssClient,
    assert_clean_failure,
    connect,
    free_port,
    run_fws_server,
    wait_for,
)
from websockets.exceptions import ConnectionClosed

import fws
from fws.cli import build_command
from fws.cli.inputs import choose_storage, choose_workers, spread_multiple_values
from fws.storage.memory import MemoryStorage

# The seed's commands carry no port; these variables keep them verbatim while
# the servers listen on a free loopback port.
# Clients that a test leaves open do not answer the shutdown close: do not wait long.


def chat_pair(url: str) -> tuple[websocket.WebSocket, websocket.WebSocket]:
    return connect(url), connect(url)


# -- the seed's commands -------------------------------------------------------


def test_bare_fws_server_broadcasts_and_prints_messages():
    with ServerProcess([], env=LOOPBACK_ANY_PORT) as server:
        alice, bob = chat_pair(server.url)
        alice.send("hello from alice")
        assert bob.recv() == "hello from alice"
        wait_for(lambda: "=> hello from alice" in server.output)
        assert "--MESSAGE--" in server.output
        assert server.stop() == 0


def test_bare_fws_server_listens_on_port_9000_by_default():
    if not _port_free(9000):
        reason = "port 9000 is taken on this machine; the default cannot be shown here"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true must run every test", pytrace=False)
        pytest.skip(reason)
    with ServerProcess([], env={"FWS_CLOSE_TIMEOUT": "1"}) as server:
        assert server.port == 9000
        alice, bob = chat_pair(f"ws://{LOOPBACK}:9000/")
        alice.send("on 9000")
        assert bob.recv() == "on 9000"
        assert server.stop() == 0


def test_legacy_dotted_filter_path():
    with ServerProcess(
        ["-f", "filtered_websocket.filters.broadcast_messages"], env=LOOPBACK_ANY_PORT
    ) as server:
        alice, bob = chat_pair(server.url)
        alice.send("legacy")
        assert bob.recv() == "legacy"
        assert "--MESSAGE--" not in server.output  # only the module asked for


def test_several_modules_after_one_f_run_in_order():
    with ServerProcess(
        ["-f", "echo", "stdout_messages", "broadcast_messages"], env=LOOPBACK_ANY_PORT
    ) as server:
        alice, bob = chat_pair(server.url)
        alice.send("both")
        assert alice.recv() == "both"
        assert bob.recv() == "both"
        wait_for(lambda: "=> both" in server.output)
        assert "Pipeline(Echo | StdoutMessages | BroadcastMessages)" in server.output


def test_module_in_the_current_directory(tmp_path):
    (tmp_path / "broadcast.py").write_text(
        "from fws import WebSocketMessageFilter\n\n\n"
        "class Shout(WebSocketMessageFilter):\n"
        "    @classmethod\n"
        "    def filter(cls, web_socket_instance, data):\n"
        "        web_socket_instance.send(data.upper())\n"
    )
    with ServerProcess(["-f", "broadcast"], cwd=tmp_path, env=LOOPBACK_ANY_PORT) as server:
        client = connect(server.url)
        client.send("quiet")
        assert client.recv() == "QUIET"


def test_seed_config_file_with_token_groups(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        "# config.json\n"
        "{\n"
        '"port": "9000",\n'
        '"filters": ["filtered_websocket.filters.broadcast_messages_by_token", '
        '"filtered_websocket.filters.stdout_messages"]\n'
        "}\n"
    )
    # FWS_PORT=0 overrides the file's 9000 (environment beats config file).
    with ServerProcess(["-c", str(config)], env=LOOPBACK_ANY_PORT) as server:
        alice, bob = chat_pair(server.url)
        alice.send("hi")
        assert alice.recv() == "Error: No token has been set"
        for client in (alice, bob):
            client.send("token:team")
            assert client.recv() == "Successfully registered with broadcast group: team"
        alice.send("team talk")
        assert bob.recv() == "team talk"
        wait_for(lambda: "=> team talk" in server.output)


def test_config_file_port_and_flags_and_command_line_override(tmp_path):
    port = free_port()
    config = tmp_path / "fws.json"
    config.write_text(
        json.dumps({"port": port, "host": LOOPBACK, "filters": ["echo"], "flags": ["quiet"]})
    )
    with ServerProcess(["-c", str(config)], env={"FWS_PORT": ""}).start(port=port) as server:
        client = connect(f"ws://{LOOPBACK}:{port}/")
        client.send("from config")
        assert client.recv() == "from config"
        assert "INFO" not in server.output  # the quiet flag from the file
    # The command line wins over the file.
    config.write_text(json.dumps({"port": port, "host": LOOPBACK, "filters": ["echo"]}))
    with ServerProcess(["-c", str(config), "-f", "broadcast_messages", "-p", "0"]) as server:
        assert server.port != port
        alice, bob = chat_pair(server.url)
        alice.send("overridden")
        assert bob.recv() == "overridden"


def test_tls_with_single_dash_key_and_cert(tmp_path):
    tls = TLSFiles(tmp_path)
    cert, key, context = tls.cert, tls.key, tls.client_context
    with ServerProcess(
        ["-f", "echo", "-key", str(key), "-cert", str(cert)], env=LOOPBACK_ANY_PORT
    ) as server:
        assert server.scheme == "wss"
        with WssClient(server.url, context) as client:
            client.send("over tls")
            assert client.recv(timeout=5) == "over tls"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_close_clients_with_1001_and_exit_0(sig):
    with ServerProcess(["-f", "echo"], env=LOOPBACK_ANY_PORT) as server:
        with ws_sync.connect(server.url) as client:
            client.send("x")
            assert client.recv(timeout=5) == "x"
            server.process.send_signal(sig)
            with pytest.raises(ConnectionClosed) as info:
                client.recv(timeout=10)
            assert info.value.rcvd.code == 1001
        assert server.stop() == 0
        assert "Traceback" not in server.output


def test_python_dash_m_fws_and_version():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fws", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"fws_server, version {fws.__version__}"


def test_storage_module_options_appear_in_help(tmp_path):
    (tmp_path / "my_storage.py").write_text(
        "from fws.storage import MemoryStorage, StorageOption\n\n\n"
        "class TunedStorage(MemoryStorage):\n"
        "    options = (StorageOption('tuning_knob', 'low', 'How the knob is set.'),)\n\n"
        "    def __init__(self, tuning_knob):\n"
        "        super().__init__()\n\n\n"
        "storage_class = TunedStorage\n"
    )
    result = run_fws_server(["-h"], cwd=tmp_path, env={"STORAGE_OBJECT_MODULE": "my_storage"})
    assert result.returncode == 0, result.stderr
    assert "--tuning_knob" in result.stdout and "How the knob is set." in result.stdout
    plain = run_fws_server(["-h"])
    assert "--tuning_knob" not in plain.stdout
    for option in ("--port", "--config", "--filters", "-key", "-cert", "--host", "--storage"):
        assert option in plain.stdout


def test_legacy_default_storage_path_is_accepted():
    env = {
        **LOOPBACK_ANY_PORT,
        "STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.default",
    }
    with ServerProcess(["-f", "echo"], env=env) as server:
        client = connect(server.url)
        client.send("ok")
        assert client.recv() == "ok"


# -- errors: one clear line, non-zero exit, no traceback ----------------------------


def test_unknown_filter_module_names_the_builtins():
    result = run_fws_server(["-f", "no_such_filters"])
    assert_clean_failure(
        result, 2, "unknown filter module 'no_such_filters'", "broadcast_messages_by_token", "echo"
    )


def test_broken_filter_module_names_the_error_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("x = 1\nraise ZeroDivisionError('bad module')\n")
    result = run_fws_server(["-f", "broken"], cwd=tmp_path)
    assert_clean_failure(
        result, 2, "filter module 'broken' failed to import", "ZeroDivisionError", "broken.py:2"
    )
    (tmp_path / "needs_dep.py").write_text("import not_installed_anywhere\n")
    result = run_fws_server(["-f", "needs_dep"], cwd=tmp_path)
    assert_clean_failure(
        result, 2, "filter module 'needs_dep' failed to import", "not_installed_anywhere"
    )
    (tmp_path / "syntax.py").write_text("def (:\n")
    result = run_fws_server(["-f", "syntax"], cwd=tmp_path)
    assert_clean_failure(result, 2, "SyntaxError", "syntax.py:1")


@pytest.mark.parametrize(
    ("content", "phrases"),
    [
        (None, ["config file not found"]),
        ("{not json", ["not valid JSON", "line 1"]),
        ('["a", "b"]', ["must hold a JSON object"]),
        ('{"prot": 9000}', ["unknown key 'prot'", "port"]),
        ('{"flags": ["port"]}', ["not a boolean option"]),
        ('{"port": "nine"}', ["nine"]),
        # JSON that no command line could give: refused by name, never a traceback.
        ('{"static": ["a"]}', ["'static' must be a string or a number"]),
        ('{"jwt_secret": true}', ["'jwt_secret' must be a string or a number"]),
        ('{"origin": {"a": 1}}', ["'origin' must be a list of values"]),
        ('{"quiet": "yes"}', ["'quiet' must be true or false"]),
        ('{"static": 5}', ["Directory '5' does not exist"]),
    ],
)
def test_config_file_errors(tmp_path, content, phrases):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert_clean_failure(run_fws_server(["-c", str(path)]), 2, *phrases)


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_fws_server(["--host", LOOPBACK, "-p", str(port)])
    assert_clean_failure(result, 1, f"cannot listen on {LOOPBACK}:{port}", "in use")


def test_bad_port_number():
    assert_clean_failure(run_fws_server(["-p", "70000"]), 2, "70000")
    assert_clean_failure(run_fws_server(["-p", "http"]), 2, "http")


def test_unreadable_or_bad_tls_files(tmp_path):
    missing = tmp_path / "missing.pem"
    assert_clean_failure(
        run_fws_server(["-key", str(missing), "-cert", str(missing)]),
        2,
        f"TLS file not found: {missing}",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert_clean_failure(
        run_fws_server(["--key", str(garbage), "--cert", str(garbage)]),
        2,
        "cannot load TLS certificate and key",
    )
    assert_clean_failure(run_fws_server(["--key", str(garbage)]), 2, "--key needs --cert")


def test_unknown_storage():
    result = run_fws_server(["-h"], env={"STORAGE_OBJECT_MODULE": "no_such_storage"})
    assert_clean_failure(result, 2, "unknown storage 'no_such_storage'", "memory")


# -- the command object, in process --------------------------------------------------


def test_spread_multiple_values_keeps_other_arguments():
    command = build_command("default", MemoryStorage)
    spread = spread_multiple_values(command.params, ["-f", "a", "b", "-p", "1", "--filters", "c"])
    assert spread == ["-f", "a", "-f", "b", "-p", "1", "--filters", "c"]
    assert spread_multiple_values(command.params, ["-f", "a", "--", "-b"]) == [
        "-f",
        "a",
        "--",
        "-b",
    ]


def test_choose_storage_precedence(tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"storage": "from_config"}')
    assert choose_storage([], {}) == "default"
    assert choose_storage(["-c", str(config)], {}) == "from_config"
    assert choose_storage(["-c", str(config)], {"STORAGE_OBJECT_MODULE": "from_env"}) == "from_env"
    assert choose_storage(["--storage", "cli", "-c", str(config)], {"FWS_STORAGE": "env"}) == "cli"


def test_help_via_cli_runner_lists_defaults():
    result = CliRunner().invoke(build_command("default", MemoryStorage), ["-h"])
    assert result.exit_code == 0
    assert "9000" in result.output
    assert "broadcast_messages, stdout_messages" in result.output


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_every_option_has_an_environment_variable():
    env = {**LOOPBACK_ANY_PORT, "FWS_FILTERS": "echo stdout_messages"}
    with ServerProcess([], env=env) as server:
        client = connect(server.url)
        client.send("from env")
        assert client.recv() == "from env"
        assert "Pipeline(Echo | StdoutMessages)" in server.output


def test_a_module_named_twice_is_loaded_once():
    names = ["-f", "echo", "echo", "fws.filters.echo", "filtered_websocket.filters.echo"]
    with ServerProcess(names, env=LOOPBACK_ANY_PORT) as server:
        client = connect(server.url)
        client.send("once")
        assert client.recv() == "once"
        client.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            client.recv()  # not echoed twice
        assert "Pipeline(Echo)" in server.output


@pytest.mark.parametrize(
    ("module", "phrase"),
    [
        (
            "class NoArguments(WebSocketMessageFilter):\n"
            "    @staticmethod\n"
            "    def filter():\n"
            "        pass\n",
            "takes no arguments",
        ),
        (
            "class NeedsSetup(WebSocketMessageFilter):\n"
            "    def __init__(self, setting):\n"
            "        self.setting = setting\n\n"
            "    def filter(self, ws, data):\n"
            "        pass\n",
            "NeedsSetup() failed",
        ),
    ],
)
def test_a_class_that_cannot_be_a_filter_is_a_clear_error(tmp_path, module, phrase):
    header = "from fws import WebSocketMessageFilter\n\n\n"
    (tmp_path / "bad_filter.py").write_text(header + module)
    result = run_fws_server(["-f", "bad_filter", "-p", "0"], cwd=tmp_path)
    assert_clean_failure(result, 2, phrase)


def test_flags_must_be_a_list_of_names(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"flags": 5}')
    assert_clean_failure(run_fws_server(["-c", str(path)]), 2, "'flags' must be a list")


def test_close_timeout_zero_is_refused():
    assert_clean_failure(run_fws_server(["--close-timeout", "0"]), 2, "close-timeout")


def test_config_file_indented_comments_dashed_keys_and_a_single_flag(tmp_path):
    port = free_port()
    config = tmp_path / "fws.json"
    config.write_text(
        "{\n"
        "    # an indented comment line, as in the seed's example\n"
        f'    "port": {port}, "host": "{LOOPBACK}", "filters": ["echo"],\n'
        '    "max-message-size": 10,\n'
        '    "flags": "quiet"\n'
        "}\n"
    )
    with ServerProcess(["-c", str(config)], env={"FWS_PORT": ""}).start(port=port) as server:
        client = connect(f"ws://{LOOPBACK}:{port}/")
        client.send("0123456789")
        assert client.recv() == "0123456789"
        client.send("0123456789!")  # 11 bytes: over the configured limit
        opcode, payload = client.recv_data(control_frame=True)
        assert (opcode, payload[:2]) == (websocket.ABNF.OPCODE_CLOSE, b"\x03\xf1")  # 1009
        assert "INFO" not in server.output  # "flags": "quiet" as a single name


def test_config_keys_by_option_name_and_a_string_for_several_values(tmp_path):
    config = tmp_path / "fws.json"
    config.write_text(
        json.dumps({"filters": "echo stdout_messages", "origin": ["https://ok.example"]})
    )
    with ServerProcess(["-c", str(config)], env=LOOPBACK_ANY_PORT) as server:
        assert "Pipeline(Echo | StdoutMessages)" in server.output
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server.url, origin="https://other.example")
        assert info.value.status_code == 403
        client = connect(server.url, origin="https://ok.example")
        client.send("configured")
        assert client.recv() == "configured"


def test_options_read_before_parsing_take_the_last_value_as_click_does(tmp_path):
    # --workers decides whether this process patches gevent and --storage which
    # options exist: a prescan that disagreed with click would serve unpatched.
    assert choose_workers(["--workers", "4", "--workers", "1"], {}) == 1
    assert choose_workers(["--workers=1", "--workers", "3"], {"FWS_WORKERS": "2"}) == 3
    assert choose_workers([], {"FWS_WORKERS": "2"}) == 2
    assert choose_storage(["--storage", "redis", "--storage=memory"], {}) == "memory"
    config = tmp_path / "fws.json"
    config.write_text('{"workers": 2}')
    assert choose_workers(["-c", str(tmp_path / "none.json"), "-c", str(config)], {}) == 2


def test_config_flags_can_name_a_flags_off_spelling(tmp_path):
    """'flags' turns a boolean option on by its name and off by its second one."""
    import urllib.error
    import urllib.request

    port = free_port()
    config = tmp_path / "fws.json"
    settings = {"port": port, "host": LOOPBACK, "filters": ["echo"]}
    config.write_text(json.dumps({**settings, "flags": ["--no-health", "no-metrics"]}))
    with ServerProcess(["-c", str(config)], env={"FWS_PORT": ""}).start(port=port):
        for path in ("/health", "/metrics"):  # neither answered: plain HTTP gets 426
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5)
            assert refused.value.code == 426


@pytest.mark.parametrize("keyword", ["busy_poll_us", "broadcast_wait_us"])
def test_a_negative_hub_window_is_refused_by_the_server_and_the_cli(keyword):
    option = "--" + keyword.replace("_", "-")
    with pytest.raises(ValueError, match=keyword):
        fws.Server(**{keyword: -1})
    result = run_fws_server(["-f", "echo", option, "-1"])
    assert result.returncode == 2
    assert option in result.stderr
