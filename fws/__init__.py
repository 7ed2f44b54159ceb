"""fws: WebSocket servers built from filters, composed like a UNIX pipeline.

Importing fws has no side effects: no monkey-patching, no logging set-up, no
signal handlers. Scripts call ``gevent.monkey.patch_all()`` themselves, first.
"""

from __future__ import annotations

from .connection import Connection as Connection
from .datatypes import CloseInfo as CloseInfo
from .datatypes import Request as Request
from .datatypes import TextMessage as TextMessage
from .errors import BackgroundTaskFailed as BackgroundTaskFailed
from .errors import ConfigurationError as ConfigurationError
from .errors import FilterError as FilterError
from .errors import FilterModuleError as FilterModuleError
from .errors import FwsError as FwsError
from .errors import ProtocolError as ProtocolError
from .errors import Reject as Reject
from .events import WebSocketConnectFilter as WebSocketConnectFilter
from .events import WebSocketConsumerFilter as WebSocketConsumerFilter
from .events import WebSocketDataFilter as WebSocketDataFilter
from .events import WebSocketDisconnectFilter as WebSocketDisconnectFilter
from .events import WebSocketMessageFilter as WebSocketMessageFilter
from .events import WebSocketOpenFilter as WebSocketOpenFilter
from .pipeline import DROP as DROP
from .pipeline import Pipeline as Pipeline
from .registry import FilterBase as FilterBase
from .registry import FilterMeta as FilterMeta
from .registry import Registry as Registry
from .registry import active_registry as active_registry
from .registry import isolated_registry as isolated_registry
from .server import Server as Server
from .server import serve as serve

__version__ = "0.5.0"

__all__ = [
    "DROP",
    "BackgroundTaskFailed",
    "CloseInfo",
    "ConfigurationError",
    "Connection",
    "FilterBase",
    "FilterError",
    "FilterMeta",
    "FilterModuleError",
    "FwsError",
    "Pipeline",
    "ProtocolError",
    "Registry",
    "Reject",
    "Request",
    "Server",
    "TextMessage",
    "WebSocketConnectFilter",
    "WebSocketConsumerFilter",
    "WebSocketDataFilter",
    "WebSocketDisconnectFilter",
    "WebSocketMessageFilter",
    "WebSocketOpenFilter",
    "active_registry",
    "isolated_registry",
    "serve",
]
