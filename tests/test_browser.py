"""Real browsers (headless Chromium): the seed's ChatServer, and the chat page with JWT.

Chromium is Debian's (``apt-get install chromium``; ``.ci/run`` installs it);
Playwright for Python drives it through ``executable_path`` and downloads no
browser of its own. Missing Chromium skips these tests on a laptop and fails
them under ``CI=true``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import jwt
import pytest
from helpers import LOOPBACK, ServerProcess, require_binary, wait_for

EXAMPLES = Path(__file__).parent.parent / "examples"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CHAT_MODULE = """
from fws import WebSocketMessageFilter


class ChatServer(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        for client_id, client in web_socket_instance.users.items():
            client.sendMessage(bytes(data))
"""

PAGE = """<html><head><meta charset="utf-8"></head><body><script>
const a = new WebSocket("URL"), b = new WebSocket("URL");
let open = 0;
function ready() { if (++open === 2) a.send("grüß dich ☃"); }
a.onopen = ready; b.onopen = ready;
// b reports what it received back through the server, which prints it.
b.onmessage = (e) => {
  if (!e.data.startsWith("seen")) b.send("seen " + typeof e.data + " " + e.data);
};
</script></body></html>"""


def chromium() -> str:
    return require_binary("chromium", "apt-get install chromium")


def test_chromium_clients_chat_through_the_seed_chat_server(tmp_path):
    browser_path = chromium()
    (tmp_path / "chat.py").write_text(CHAT_MODULE)
    args = ["-f", "chat", "stdout_messages", "--host", LOOPBACK, "-p", "0"]
    with ServerProcess(args, cwd=tmp_path) as server:
        page = tmp_path / "page.html"
        page.write_text(PAGE.replace("URL", server.url), encoding="utf-8")
        browser = subprocess.Popen(
            [browser_path, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
             "--remote-debugging-port=0", page.as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # The browser's socket b got the text back as a JavaScript string.
            wait_for(lambda: "=> seen string grüß dich ☃" in server.output, 30, server.output)
        finally:
            browser.kill()
            browser.wait(10)


SECRET = "a-test-secret-of-at-least-32-bytes!!"


def token(user: str, lifetime: float = 300) -> str:
    claims = {"sub": user, "exp": int(time.time() + lifetime)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
def chat_server():
    args = ["--static", ".", "-f", "jwt_auth", "chat", "--jwt-secret", SECRET]
    args += ["--host", LOOPBACK, "-p", "0"]
    with ServerProcess(args, cwd=EXAMPLES / "chat") as server:
        yield server
        server.stop()


@pytest.fixture
def browser():
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS[1:])
        try:
            yield instance
        finally:
            instance.close()


ISSUED: list[str] = []


def open_chat(browser, server, user: str, room: str = "kitchen"):
    page = browser.new_page()
    base = f"http://{LOOPBACK}:{server.port}/"
    ISSUED.append(token(user))
    page.goto(f"{base}?room={room}#token={ISSUED[-1]}")
    page.wait_for_selector("#status[data-state=open]", timeout=15_000)
    page.wait_for_selector(f"#log li:has-text('Welcome, {user}, to room {room}.')")
    return page


def say(page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def test_two_chromium_pages_chat_through_the_page_with_jwt_and_deflate(chat_server, browser):
    alice = open_chat(browser, chat_server, "alice")
    bob = open_chat(browser, chat_server, "bob")
    for page in (alice, bob):
        # What the browser itself negotiated: our subprotocol, never the bearer entry,
        # and permessage-deflate (Chromium offers it; fws accepts it by default).
        assert page.text_content("#protocol") == "chat.v1"
        assert "permessage-deflate" in page.text_content("#extensions")
        assert page.evaluate("socket.protocol") == "chat.v1"
    alice.wait_for_selector("#log li:has-text('bob joined.')")

    say(alice, "Grüß dich, Bob! ☃ 🎉")
    bob.wait_for_selector("#log li.message:has-text('alice: Grüß dich, Bob! ☃ 🎉')")
    long_text = "ünïcödé " * 400  # over 1024 bytes: this one travels compressed
    say(bob, long_text)
    alice.wait_for_selector(f"#log li.message:has-text('bob: {long_text[:40]}')")
    received = alice.locator("#log li.message").last.text_content()
    assert received == f"bob: {long_text}"

    # A third page in another room hears nothing of it.
    carol = open_chat(browser, chat_server, "carol", room="attic")
    say(alice, "only for the kitchen")
    bob.wait_for_selector("#log li.message:has-text('alice: only for the kitchen')")
    assert "only for the kitchen" not in carol.text_content("#log")
    # The server logged the connections, never the tokens that opened them.
    assert "connection" in chat_server.output
    for issued in ISSUED:
        assert issued.split(".")[2] not in chat_server.output


def test_a_page_without_a_valid_token_is_refused_at_the_door(chat_server, browser):
    page = browser.new_page()
    page.goto(f"http://{LOOPBACK}:{chat_server.port}/?room=kitchen#token=not-a-jwt")
    page.wait_for_selector("#log li.closed", timeout=15_000)
    assert page.get_attribute("#status", "data-state") != "open"
    wait_for(lambda: "401" in chat_server.output and "malformed token" in chat_server.output)
    assert "not-a-jwt" not in chat_server.output
