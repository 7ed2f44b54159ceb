"""Static files for plain HTTP requests: ``fws_server --static DIR``.

A plain WSGI application (no gevent, unit-testable with a dict and a
``start_response``): the server hands it every request that is not a WebSocket
upgrade, so one port serves a chat page and its WebSocket.

Only files inside ``DIR`` are served, and never dotfiles: the request path
(already percent-decoded by the HTTP server, so ``%2e%2e`` arrives as ``..``)
must be UTF-8 without backslashes or NUL bytes, no segment of it may start with
``.`` (which also refuses ``..``), and the file it names is resolved, symlinks
included, and must still lie inside ``DIR`` and outside dot-directories. A
directory serves its ``index.html`` (no listings); asked for without its
trailing slash it redirects, so that the page's relative links work.
Refusals and missing files are 404 alike, so probing learns nothing; a method
other than GET and HEAD is 405. Bodies are one short line.

``DIR`` is trusted: somebody who can change its symlinks between the check and
the ``open`` could serve files outside it, as they could by copying them in.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from .errors import ConfigurationError
from .http import respond

__all__ = ["StaticFiles"]

CHUNK_SIZE = 65536

# The types a web page needs, fixed here: the system's mime.types (which
# mimetypes reads) differ between machines, e.g. text/javascript for .js.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
}

StartResponse = Callable[..., Any]


def content_type(name: str) -> str:
    """The Content-Type for a file name; text is declared UTF-8."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


class StaticFiles:
    """Serve the files in ``directory`` to GET and HEAD; ``ConfigurationError`` if it is none."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        path = Path(directory)
        if not path.exists():
            raise ConfigurationError(f"static directory not found: {directory}")
        if not path.is_dir():
            raise ConfigurationError(f"static directory is not a directory: {directory}")
        self.root = path.resolve()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _short(start_response, "405 Method Not Allowed", [("Allow", "GET, HEAD")])
        found = self.find(str(environ.get("PATH_INFO") or "/"))
        if isinstance(found, str):
            query = str(environ.get("QUERY_STRING") or "")  # /chat?room=x keeps its room
            location = f"{found}?{query}" if query else found
            return _short(start_response, "301 Moved Permanently", [("Location", location)])
        if found is None:
            return _short(start_response, "404 Not Found")
        try:
            file = open(found, "rb")  # noqa: SIM115 - the response iterable closes it
            size = os.fstat(file.fileno()).st_size
        except OSError:  # unreadable, or gone since find()
            return _short(start_response, "404 Not Found")
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type(found.name)),
                ("Content-Length", str(size)),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        if method == "HEAD":
            file.close()
            return []
        return _FileBody(file)

    def find(self, path_info: str) -> Path | str | None:
        """The file for a request path, a redirect target (str), or None: not found or refused.

        ``path_info`` is WSGI's ``PATH_INFO``: percent-decoded bytes as latin-1.
        """
        try:
            path = path_info.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return None
        if "\\" in path or "\x00" in path:
            return None
        segments = [segment for segment in path.split("/") if segment]
        if any(segment.startswith(".") for segment in segments):
            return None  # dotfiles, and "." and ".." with them
        target = self._resolve(self.root.joinpath(*segments))
        if target is not None and target.is_dir():
            if not path.endswith("/"):
                # Built from the checked segments: "//host" cannot become an off-site URL.
                return "/" + "".join(quote(segment, safe="") + "/" for segment in segments)
            target = self._resolve(target / "index.html")
        if target is None or not target.is_file():
            return None
        return target

    def _resolve(self, path: Path) -> Path | None:
        """``path`` with its symlinks followed, if it exists inside the root, not in a dot-name."""
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, a symlink loop, a name too long
            return None
        if resolved != self.root and self.root not in resolved.parents:
            return None
        if any(part.startswith(".") for part in resolved.relative_to(self.root).parts):
            return None
        return resolved

    def __repr__(self) -> str:
        return f"StaticFiles({str(self.root)!r})"


class _FileBody:
    """A WSGI response body that reads a file in chunks and closes it, even unread."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.file.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self.file.close()


_BODIES = {
    "301 Moved Permanently": b"moved: add the trailing slash\n",
    "404 Not Found": b"not found\n",
    "405 Method Not Allowed": b"method not allowed: use GET or HEAD\n",
}


def _short(
    start_response: StartResponse, status: str, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    return respond(start_response, status, _BODIES[status], extra=headers or ())
