"""A filter module: ``fws_server -f shout`` (run from this folder) answers in capitals."""

from fws import DROP, WebSocketMessageFilter


class IgnoreEmpty(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        if not data.strip():
            return DROP  # like grep: empty messages go no further


class Shout(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        web_socket_instance.send(data.upper())
