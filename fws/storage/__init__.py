"""Storage backends: where filters keep shared state and publish messages."""

from .base import PubSubMessage as PubSubMessage
from .base import Storage as Storage
from .base import StorageOption as StorageOption
from .memory import MemoryStorage as MemoryStorage

__all__ = ["MemoryStorage", "PubSubMessage", "Storage", "StorageOption"]
