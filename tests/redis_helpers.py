"""Throw-away ``redis-server`` processes for tests: free loopback port, tmp dir, no disk.

Tests never touch the Redis a developer may run on 6379. Without a
``redis-server`` binary the tests skip, except under ``CI=true``, where a
missing Redis must fail the build rather than silently test less.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import LOOPBACK, free_port, require_binary, stop_process


def require_redis_server() -> str:
    """The ``redis-server`` path; skip (fail under CI=true) when it is missing."""
    return require_binary("redis-server", "apt-get install redis-server")


class RedisServer:
    """A private redis-server on 127.0.0.1; ``stop()`` and ``start()`` again keep the port."""

    def __init__(self, directory: Path, port: int | None = None, tls: bool = False) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None
        self._tls_args: list[str] = []
        if tls:
            self._make_certificates()

    def _make_certificates(self) -> None:
        """A CA and a server certificate for 127.0.0.1, made for this test."""
        import trustme

        ca = trustme.CA()
        issued = ca.issue_cert(LOOPBACK)
        cert, key = self.directory / "redis-cert.pem", self.directory / "redis-key.pem"
        self.ca_file = self.directory / "redis-ca.pem"
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(self.ca_file)
        self._tls_args = [
            "--tls-port", str(self.port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        if self.ca_file is not None:
            return f"rediss://{LOOPBACK}:{self.port}/0?ssl_ca_certs={self.ca_file}"
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                "0" if self._tls_args else str(self.port),
                *self._tls_args,
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        stop_process(self.process, timeout)
        self.process = None
        # The port must be free again before a restart on it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, self.port)) != 0:
                    return
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        if self.ca_file is not None:
            return redis.Redis.from_url(self.url, socket_timeout=5)
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped afterwards."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
