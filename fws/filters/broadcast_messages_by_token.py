"""Broadcast groups: ``token:NAME`` joins group NAME, messages reach the group.

A message containing ``token:NAME`` puts the sender in group NAME (leaving the
group it was in) and is answered with
``Successfully registered with broadcast group: NAME``. Any other message goes
to the other members of the sender's group; a client in no group is answered
``Error: No token has been set``. Groups live in the storage object, so with a
shared storage they span servers.

This is a *grouping* key, not authentication: anyone who knows a name can join.
Refuse clients at the handshake with a ``WebSocketConnectFilter`` for that.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fws.events import CloseInfo, TextMessage, WebSocketDisconnectFilter, WebSocketMessageFilter

if TYPE_CHECKING:
    from fws.connection import Connection

TOKEN = re.compile(r"token:(\S+)")
REGISTERED = "Successfully registered with broadcast group: {}"
NO_TOKEN = "Error: No token has been set"


class BroadcastMessagesByToken(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: TextMessage | bytes) -> None:
        client = web_socket_instance
        text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
        match = TOKEN.search(text)
        if match is not None:
            token = match.group(1)
            if client.token is not None and client.token != token:
                client.storage_object.remove(client.token, client.id)
            client.token = token
            client.storage_object.add(token, client.id)
            client.send(REGISTERED.format(token))
        elif client.token is None:
            client.send(NO_TOKEN)
        else:
            client.storage_object.send_to_group(client.token, data, sender=client.id)


class LeaveTokenGroup(WebSocketDisconnectFilter):
    @classmethod
    def filter(cls, web_socket_instance: Connection, data: CloseInfo) -> None:
        if web_socket_instance.token is not None:
            web_socket_instance.storage_object.remove(
                web_socket_instance.token, web_socket_instance.id
            )
