"""A real browser (headless Chromium) chats through the seed's ChatServer.

Skipped where Chromium is not installed (apt-get install chromium); the
protocol itself is covered for every client by the Autobahn run.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import LOOPBACK, ServerProcess, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CHAT_MODULE = '''
from fws import WebSocketMessageFilter


class ChatServer(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        for client_id, client in web_socket_instance.users.items():
            client.sendMessage(bytes(data))
'''

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


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_chromium_clients_chat_through_the_seed_chat_server(tmp_path):
    (tmp_path / "chat.py").write_text(CHAT_MODULE)
    args = ["-f", "chat", "stdout_messages", "--host", LOOPBACK, "-p", "0"]
    with ServerProcess(args, cwd=tmp_path) as server:
        page = tmp_path / "page.html"
        page.write_text(PAGE.replace("URL", server.url), encoding="utf-8")
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--remote-debugging-port=0", page.as_uri()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # The browser's socket b got the text back as a JavaScript string.
            wait_for(lambda: "=> seen string grüß dich ☃" in server.output, 30, server.output)
        finally:
            browser.kill()
            browser.wait(10)
