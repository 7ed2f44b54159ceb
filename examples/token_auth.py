"""Token authentication at the handshake: ``fws_server -f token_auth broadcast_messages``.

Clients connect to ``ws://host:9000/?token=SECRET``; anyone else gets HTTP 401
and never holds an open WebSocket. Set the accepted tokens in FWS_TOKENS
(comma separated).
"""

import os

from fws import Reject, WebSocketConnectFilter

TOKENS = set(filter(None, os.environ.get("FWS_TOKENS", "").split(",")))


class RequireToken(WebSocketConnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        token = request.query.get("token") or request.headers.get("x-token")
        if token not in TOKENS:
            raise Reject(401, "a valid token is required")
        web_socket_instance.token = token
