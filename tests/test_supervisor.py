"""``fws.supervisor.Supervisor`` with small real worker programs instead of fws workers.

The programs follow the workers' protocol (write a byte to the readiness
pipe named in the environment), which lets a test make a worker die when it
wants; everything fws-specific is in tests/test_workers.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from fws.supervisor import READY_FD_ENV, Supervisor, bind_listener, describe_status

# Ready once (the first start), then every later start fails at once.
FLAKY_WORKER = """
import os, sys, time
marker = sys.argv[1]
if os.path.exists(marker):
    sys.exit(3)
open(marker, "w").close()
os.write(int(os.environ["{ready}"]), b"1")
time.sleep(0.2)
sys.exit(1)
""".replace("{ready}", READY_FD_ENV)

# Ready, then waits for SIGTERM and exits 0.
STEADY_WORKER = f"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
os.write(int(os.environ["{READY_FD_ENV}"]), b"1")
while True:
    time.sleep(1)
"""


def test_supervisor_gives_up_when_every_worker_keeps_failing_at_start(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="fws.supervisor")
    listener = bind_listener("127.0.0.1", 0)
    try:
        supervisor = Supervisor(
            [sys.executable, "-c", FLAKY_WORKER, str(tmp_path / "started")],
            1,
            listener,
            backoff_start=0.05,
            give_up_after=4,
        )
        status = supervisor.run()
    finally:
        listener.close()
    assert status == 1
    messages = [record.getMessage() for record in caplog.records]
    assert "every worker failed to start 4 times in a row; stopping" in messages
    delays = [m for m in messages if m.startswith("worker 0 restarts in")]
    assert delays == [f"worker 0 restarts in {d:.1f} s" for d in (0.05, 0.1, 0.2, 0.4)]
    assert any("exited with status 3" in m for m in messages)


def test_supervisor_exits_0_once_every_worker_drained(caplog):
    caplog.set_level(logging.INFO, logger="fws.supervisor")
    listener = bind_listener("127.0.0.1", 0)
    supervisor = Supervisor([sys.executable, "-c", STEADY_WORKER], 2, listener)

    # run() installs signal handlers, so it runs in this (the main) thread; the
    # SIGTERM comes from another thread once the workers are up.
    def stop_when_listening() -> None:
        for _ in range(400):
            if any("with 2 workers" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=stop_when_listening, daemon=True)
    thread.start()
    try:
        status = supervisor.run()
    finally:
        listener.close()
    thread.join(5)
    assert status == 0
    assert not supervisor.workers
    messages = [record.getMessage() for record in caplog.records]
    assert "SIGTERM: draining the workers" in messages
    assert sum("drained and exited with status 0" in m for m in messages) == 2
    assert messages[-1] == "fws stopped"


@pytest.mark.parametrize(
    ("code", "text"),
    [(0, "exited with status 0"), (2, "exited with status 2"), (-9, "was killed by SIGKILL")],
)
def test_describe_status(code: int, text: str) -> None:
    assert describe_status(code) == text
