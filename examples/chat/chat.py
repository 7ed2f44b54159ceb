"""The chat page's server side: ``cd examples/chat && fws_server --static . -f chat``.

Then open http://localhost:9000/ (``index.html`` and ``chat.js`` beside this
file). Messages are JSON both ways. A client joins the room named by the
``room`` query parameter (default ``lobby``) and is greeted with
``{"type": "welcome", "user": ..., "room": ...}``; the others in the room get
``{"type": "joined", ...}``, and ``{"type": "left", ...}`` when it goes. Each
``{"text": "..."}`` a client sends reaches everyone in its room, *the sender
included* (the page shows a message once the server has it, in the order
everyone sees), as ``{"type": "message", "user": ..., "room": ..., "text": ...}``.
Rooms are groups (``connection.join``), so with ``--storage redis`` a room
spans servers. ``user`` is ``connection.user``, set by an authentication
filter listed before this one (``-f jwt_auth chat``), else ``"anonymous"``.
"""

import json

from fws import (
    WebSocketConnectFilter,
    WebSocketDisconnectFilter,
    WebSocketMessageFilter,
    WebSocketOpenFilter,
)

PROTOCOL = "chat.v1"


def to_room(connection, room, kind, sender=None, **fields):
    message = {"type": kind, "user": connection.user or "anonymous", "room": room, **fields}
    data = json.dumps(message, ensure_ascii=False)
    connection.storage_object.send_to_group(room, data, sender=sender)


class SpeakChatV1(WebSocketConnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        # A browser that offers subprotocols fails the connection unless one is
        # chosen back; the page offers "chat.v1" (and "bearer.<token>", for jwt_auth).
        if PROTOCOL in request.subprotocols:
            web_socket_instance.subprotocol = PROTOCOL


class JoinRoom(WebSocketOpenFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        connection = web_socket_instance
        room = request.query.get("room") or "lobby"
        try:
            connection.join(room)
        except ValueError as exc:  # a name over 256 bytes
            connection.close(1008, str(exc))
            return
        # Sent from the open event: it reaches the client before any room message.
        user = connection.user or "anonymous"
        connection.send(json.dumps({"type": "welcome", "user": user, "room": room}))
        to_room(connection, room, "joined", sender=connection.id)


class SayInRoom(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        try:
            text = json.loads(data)["text"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):  # not JSON, not an object, no text
            error = {"type": "error", "text": 'send JSON: {"text": "..."}'}
            web_socket_instance.send(json.dumps(error))
            return
        for room in web_socket_instance.groups:
            to_room(web_socket_instance, room, "message", text=text)


class LeaveRoom(WebSocketDisconnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        # Disconnect filters run before the connection leaves its groups.
        for room in web_socket_instance.groups:
            to_room(web_socket_instance, room, "left", sender=web_socket_instance.id)
