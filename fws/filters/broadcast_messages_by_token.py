"""Broadcast groups: ``token:NAME`` joins group NAME, messages reach the group.

A message containing ``token:NAME`` puts the sender in group NAME (leaving the
group it joined this way before) and is answered with
``Successfully registered with broadcast group: NAME``. Any other message goes
to the other members of the sender's group; a client in no group is answered
``Error: No token has been set``. A NAME longer than 256 bytes of UTF-8 is
answered ``Error: group name longer than 256 bytes`` and changes nothing.

The group is joined with ``Connection.join``, so it lives in the storage object
(with a shared storage it spans servers) and the client leaves it when it
disconnects. ``connection.token`` is the seed's name for the group joined
through ``token:``; this filter routes only to a group the connection has
actually joined, so a ``token`` another filter set (a secret, say) never
becomes a group name.

This is a *grouping* key, not authentication: anyone who knows a name can join.
Refuse clients at the handshake with a ``WebSocketConnectFilter`` for that.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fws.events import TextMessage, WebSocketMessageFilter

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
        group = client.token if client.token in client.groups else None
        if match is not None:
            token = match.group(1)
            try:
                client.join(token)
            except ValueError as exc:
                client.send(f"Error: {exc}")
                return
            if group is not None and group != token:
                client.leave(group)
            client.token = token
            client.send(REGISTERED.format(token))
        elif group is None:
            client.send(NO_TOKEN)
        else:
            client.storage_object.send_to_group(group, data, sender=client.id)
