"""fws: WebSocket servers built from filters, composed like a UNIX pipeline.

Importing fws has no side effects: no monkey-patching, no logging set-up, no
signal handlers. Scripts call ``gevent.monkey.patch_all()`` themselves, first.

The public names are imported on first use (module ``__getattr__``), not
here: a program that only needs ``fws.storage.redis.Publisher`` (a web
backend, a cron job) then never loads gevent, pywsgi or gevent-websocket.
``import fws; fws.Server`` and ``from fws import Server`` work as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy and IDEs see; at run time __getattr__ imports on demand
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
    from .serving import serve as serve

__version__ = "0.5.0"

# Public name -> the submodule that defines it.
_ORIGINS = {
    "Connection": "connection",
    "CloseInfo": "datatypes",
    "Request": "datatypes",
    "TextMessage": "datatypes",
    "BackgroundTaskFailed": "errors",
    "ConfigurationError": "errors",
    "FilterError": "errors",
    "FilterModuleError": "errors",
    "FwsError": "errors",
    "ProtocolError": "errors",
    "Reject": "errors",
    "WebSocketConnectFilter": "events",
    "WebSocketConsumerFilter": "events",
    "WebSocketDataFilter": "events",
    "WebSocketDisconnectFilter": "events",
    "WebSocketMessageFilter": "events",
    "WebSocketOpenFilter": "events",
    "DROP": "pipeline",
    "Pipeline": "pipeline",
    "FilterBase": "registry",
    "FilterMeta": "registry",
    "Registry": "registry",
    "active_registry": "registry",
    "isolated_registry": "registry",
    "Server": "server",
    "serve": "serving",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use, then keep it here."""
    origin = _ORIGINS.get(name)
    if origin is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{origin}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
