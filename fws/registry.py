"""The filter registry: importing a filter module adds its filters.

The seed's ``FilterMeta``/``FilterBase`` pair is kept: a class whose direct
base is ``FilterBase`` starts a new *chain* (the event base classes in
``fws.events`` are such chains), and every subclass with a ``filter`` method is
*recorded* in the active ``Registry``, in definition order. Recording is all
the metaclass does; the server builds its ``Pipeline`` objects from a registry
when it starts, so nothing runs as a side effect of class creation.

The command line does not use the process-wide registry: it builds one from the
``-f`` modules with ``Registry.from_modules`` so that the order of ``-f`` is the
order of execution. Tests get a fresh registry with ``isolated_registry()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from .pipeline import Pipeline

__all__ = ["FilterBase", "FilterMeta", "Registry", "active_registry", "isolated_registry"]


class Registry:
    """Filter classes recorded per chain, in the order they were added."""

    def __init__(self) -> None:
        self._chains: dict[type, list[type]] = {}

    def record(self, filter_class: type) -> None:
        """Append ``filter_class`` to its chain; recording a class twice is an error."""
        chain = self._chains.setdefault(chain_of(filter_class), [])
        if filter_class in chain:
            raise ValueError(f"{filter_class.__qualname__} is already registered")
        chain.append(filter_class)

    def filters(self, chain: type) -> tuple[type, ...]:
        """The classes recorded for ``chain`` (an event base class), in order."""
        return tuple(self._chains.get(chain, ()))

    def pipeline(self, chain: type) -> Pipeline:
        """A pipeline of the classes recorded for ``chain``, in order."""
        return Pipeline(*self.filters(chain))

    @classmethod
    def from_modules(cls, modules: Iterable[ModuleType]) -> Registry:
        """A registry of the filter classes each module defines, module by module.

        Classes a module merely imports (say, to subclass them) are not added:
        only the order of the modules given decides the order of execution.
        """
        registry = cls()
        for module in modules:
            for filter_class in filters_defined_in(module):
                registry.record(filter_class)
        return registry

    def __repr__(self) -> str:
        chains = ", ".join(f"{chain.__name__}: {self.pipeline(chain)!r}" for chain in self._chains)
        return f"Registry({chains})"


def filters_defined_in(module: ModuleType) -> list[type]:
    """The recordable filter classes defined at the top level of ``module``.

    A class bound under two names counts once, where it first appears.
    """
    found = {
        id(value): value
        for value in vars(module).values()
        if isinstance(value, FilterMeta)
        and value.__module__ == module.__name__
        and _is_recordable(value)
    }
    return list(found.values())


def chain_of(filter_class: type) -> type:
    """The chain (event base class) ``filter_class`` belongs to."""
    root = getattr(filter_class, "_fws_chain", None)
    if root is None:
        raise TypeError(f"{filter_class!r} does not belong to a filter chain")
    return root


_active = Registry()


def active_registry() -> Registry:
    """The registry that newly created filter classes are recorded in."""
    return _active


@contextmanager
def isolated_registry(registry: Registry | None = None) -> Iterator[Registry]:
    """Record filter classes created inside the block in a fresh registry."""
    global _active
    previous = _active
    _active = registry if registry is not None else Registry()
    try:
        yield _active
    finally:
        _active = previous


def _is_recordable(cls: type) -> bool:
    return getattr(cls, "_fws_chain", None) not in (None, cls) and callable(
        getattr(cls, "filter", None)
    )


class FilterMeta(type):
    """Metaclass that records filter classes in the active registry."""

    _fws_chain: type | None

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        if not any(isinstance(base, FilterMeta) for base in bases):
            cls._fws_chain = None  # FilterBase itself
        elif any(base._fws_chain is None for base in bases if isinstance(base, FilterMeta)):
            cls._fws_chain = cls  # direct subclass of FilterBase: a new chain
        elif _is_recordable(cls):
            _active.record(cls)

    def run(cls, web_socket_instance: Any, data: Any = None) -> Any:
        """Run this class's chain from the active registry (the seed's ``A.run``)."""
        return _active.pipeline(chain_of(cls)).run(web_socket_instance, data)

    def __or__(cls, other: Any) -> Any:
        return Pipeline(cls).__or__(other)

    def __ror__(cls, other: Any) -> Any:
        return Pipeline(cls).__ror__(other)


class FilterBase(metaclass=FilterMeta):
    """Subclass directly to start a new chain; subclass a chain to join it."""
