"""``import fws`` has no side effects (as click's test_light_imports checks)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, logging, signal, sys
before = signal.getsignal(signal.SIGTERM)
import fws, fws.filters.broadcast_messages, fws.storage
from gevent import monkey
print(json.dumps({
    "patched": monkey.is_anything_patched(),
    "root_handlers": len(logging.getLogger().handlers),
    "fws_handlers": len(logging.getLogger("fws").handlers),
    "redis": "redis" in sys.modules,
    "signal_changed": signal.getsignal(signal.SIGTERM) is not before,
}))
"""


def test_import_fws_patches_nothing_and_configures_nothing():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == {
        "patched": False,
        "root_handlers": 0,
        "fws_handlers": 0,
        "redis": False,
        "signal_changed": False,
    }


def test_public_names_are_listed():
    import fws

    assert set(fws.__all__) <= set(dir(fws))
    for name in ("Pipeline", "DROP", "Server", "serve", "Reject", "WebSocketMessageFilter"):
        assert name in fws.__all__


def test_server_module_still_exports_what_moved_out_of_it():
    """Scripts and the docs import these from fws.server; they live in fws.serving/listeners."""
    import fws.listeners
    import fws.server
    import fws.serving

    assert fws.server.serve is fws.serving.serve is fws.serve
    assert fws.server.serve_until_signalled is fws.serving.serve_until_signalled
    assert fws.server.tls_context is fws.listeners.tls_context


def test_the_cli_package_imports_no_gevent():
    """gevent is imported once main() has patched it, never by importing the CLI."""
    probe = "import sys, fws.cli, fws.cli.inputs, fws.cli.options; print('gevent' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_handshake_rules_import_no_gevent():
    """The opening handshake's rules are plain Python; only fws.handshake does its I/O."""
    probe = (
        "import json, sys, fws.handshake_rules;"
        " print(json.dumps(sorted(m for m in sys.modules if m.startswith('gevent'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []  # neither gevent, its pywsgi, nor geventwebsocket
