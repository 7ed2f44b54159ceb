"""The seed's name for the in-memory storage (``storage_objects.default``)."""

from .memory import MemoryStorage, storage_class

__all__ = ["MemoryStorage", "storage_class"]
