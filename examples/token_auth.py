"""Token authentication at the handshake: ``fws_server -f token_auth broadcast_messages``.

Clients connect to ``ws://host:9000/?token=SECRET`` (or send an ``X-Token``
header); anyone else gets HTTP 401 and never holds an open WebSocket. Set the
accepted tokens in FWS_TOKENS (comma separated).

The secret is checked and then forgotten: it is not ``connection.token``, which
``broadcast_messages_by_token`` uses for the group joined with ``token:NAME``,
so ``fws_server -f token_auth broadcast_messages_by_token`` routes by the
group a client chose, never by its secret.
"""

import os

from fws import Reject, WebSocketConnectFilter

TOKENS = set(filter(None, os.environ.get("FWS_TOKENS", "").split(",")))


class RequireToken(WebSocketConnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        secret = request.query.get("token") or request.headers.get("x-token")
        if secret not in TOKENS:
            raise Reject(401, "a valid token is required")
