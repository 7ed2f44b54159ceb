"""``--static DIR``: plain HTTP GET/HEAD served from a directory, safely."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import pytest
from helpers import LOOPBACK, assert_clean_failure, connect, run_fws_server, run_server

from fws.errors import ConfigurationError
from fws.static import StaticFiles


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site directory, and a secret beside it that must never be served."""
    root = tmp_path / "site"
    (root / "js").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "index.html").write_text("<p>grüß</p>", encoding="utf-8")
    (root / "js" / "app.js").write_text("console.log(1);\n")
    (root / "style.css").write_text("p { color: red }\n")
    (root / "docs" / "index.html").write_text("docs\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (root / ".env").write_text("SECRET=1\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("secret\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "outdir").symlink_to(tmp_path)
    (root / "dotlink").symlink_to(root / ".env")
    (root / "inside.css").symlink_to(root / "style.css")
    (root / "back\\slash.txt").write_text("a backslash in its name\n")
    return root


def call(app: StaticFiles, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    """Run the WSGI app on a path as a client sends it (%-escapes decoded, as pywsgi does)."""
    from urllib.parse import unquote_to_bytes

    seen: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
    }
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return str(seen["status"]), seen["headers"], body  # type: ignore[return-value]


def test_index_files_and_types_without_a_server(site: Path) -> None:
    app = StaticFiles(site)
    status, headers, body = call(app, "/")
    assert status == "200 OK" and body == "<p>grüß</p>".encode()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))
    assert call(app, "/js/app.js")[1]["Content-Type"] == "application/javascript"
    assert call(app, "/style.css")[1]["Content-Type"] == "text/css; charset=utf-8"
    assert call(app, "/docs/")[2] == b"docs\n"
    assert call(app, "/inside.css")[0] == "200 OK"  # a symlink within the directory is fine
    status, headers, _ = call(app, "/docs")
    assert status.startswith("301") and headers["Location"] == "/docs/"
    # "//docs" must not redirect to //docs/, which a browser reads as the host "docs".
    status, headers, _ = call(app, "//docs")
    assert status.startswith("301") and headers["Location"] == "/docs/"
    status, headers, _ = call(app, "/docs?room=kitchen")
    assert headers["Location"] == "/docs/?room=kitchen"
    assert call(app, "/data.bin")[2] == bytes(range(256)) * 1000


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/js/../../secret.txt",
        "/..%5csecret.txt",
        "/js\\..\\..\\secret.txt",
        "/index.html%00.txt",
        "/.env",
        "/.git/config",
        "/%2egit/config",
        "/out.txt",
        "/outdir/secret.txt",
        "/dotlink",
        "/missing.html",
        "/%ff%fe",
        "/back\\slash.txt",  # exists, but a backslash is refused (a Windows separator)
    ],
)
def test_unsafe_and_missing_paths_are_404(site: Path, path: str) -> None:
    status, _, body = call(StaticFiles(site), path)
    assert status == "404 Not Found"
    assert body == b"not found\n"


def test_other_methods_are_405_and_head_has_no_body(site: Path) -> None:
    app = StaticFiles(site)
    status, headers, body = call(app, "/", "POST")
    assert status.startswith("405") and headers["Allow"] == "GET, HEAD"
    status, headers, body = call(app, "/", "HEAD")
    assert status == "200 OK" and body == b"" and headers["Content-Length"] == "13"


def test_a_missing_or_non_directory_is_a_configuration_error(site: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        StaticFiles(site / "nope")
    with pytest.raises(ConfigurationError, match="not a directory"):
        StaticFiles(site / "index.html")


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are (urllib and http.client would normalise the path)."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_real_server_serves_pages_beside_its_websockets(site: Path) -> None:
    with run_server(static=str(site)) as server:
        port = server.address[1]
        web = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        web.request("GET", "/")
        response = web.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/html; charset=utf-8"
        assert response.read() == "<p>grüß</p>".encode()
        web.request("GET", "/js/app.js")  # the same keep-alive connection
        response = web.getresponse()
        assert response.getheader("Content-Type") == "application/javascript"
        assert response.read() == b"console.log(1);\n"
        web.request("HEAD", "/style.css")
        response = web.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == "17"
        assert response.read() == b""
        web.request("GET", "/data.bin")
        assert web.getresponse().read() == bytes(range(256)) * 1000
        web.request("DELETE", "/")
        response = web.getresponse()
        assert response.status == 405
        assert response.read() == b"method not allowed: use GET or HEAD\n"
        web.request("GET", "/missing")
        response = web.getresponse()
        assert response.status == 404 and response.read() == b"not found\n"
        web.close()
        for path in (b"/../secret.txt", b"/%2e%2e/secret.txt", b"/..%5csecret.txt",
                     b"/out.txt", b"/outdir/secret.txt", b"/.env", b"/a%00b"):  # fmt: skip
            answer = raw_request(port, b"GET " + path + b" HTTP/1.0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 404"), (path, answer)
            assert b"outside" not in answer and b"SECRET" not in answer
        # Upgrades still reach the WebSocket side.
        client = connect(server)
        client.close()


def test_without_static_plain_requests_still_get_426(site: Path) -> None:
    with run_server() as server:
        answer = raw_request(server.address[1], b"GET / HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 426")


def test_cli_refuses_a_missing_static_directory_at_start(tmp_path: Path) -> None:
    result = run_fws_server(["--static", str(tmp_path / "nope"), "-p", "0"])
    assert_clean_failure(result, 2, "--static", "does not exist")
    (tmp_path / "file").write_text("")
    result = run_fws_server(["--static", str(tmp_path / "file"), "-p", "0"])
    assert_clean_failure(result, 2, "is a file")


def test_a_file_that_cannot_be_opened_is_404(site: Path) -> None:
    """The open() failure branch (unreadable, or gone since it was found), as any user.

    chmod 0 cannot make a file unreadable for root (CI runs as root), so the
    file disappears between find() and open() instead.
    """

    class Vanishing(StaticFiles):
        def find(self, path: str) -> Path | str | None:
            found = super().find(path)
            assert isinstance(found, Path)
            found.unlink()
            return found

    (site / "fleeting.txt").write_text("x")
    assert call(Vanishing(site), "/fleeting.txt")[0] == "404 Not Found"
