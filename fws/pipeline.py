"""Pipelines: the ``server_event | behaviour_a | behaviour_b`` of fws.

A pipeline is an immutable tuple of stages. Each stage is called with the
object the event belongs to (a connection, or the server for the consumer
event) and the data the previous stage produced. What a stage returns steers
the flow, as a shell filter's output does:

* ``None`` passes the data on unchanged (the seed's filters return nothing);
* ``DROP`` stops the pipeline for this event, the way ``grep`` drops a line;
* any other value replaces the data for the next stage.

This module is plain Python: no gevent, sockets or Redis, so pipelines and
filters can be tested on their own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Final

from .errors import FilterError, InvalidFilter

__all__ = ["DROP", "Pipeline"]


class _Drop:
    """Type of the ``DROP`` sentinel; a class so that ``repr`` reads well."""

    _instance: _Drop | None = None

    def __new__(cls) -> _Drop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "fws.DROP"

    def __reduce__(self) -> str:
        return "DROP"


DROP: Final = _Drop()
"""Return this from a filter to stop the pipeline for the current event."""


class _Stage:
    """One filter, with the call that adapts it to ``(instance, data)``."""

    __slots__ = ("filter", "name", "call")

    def __init__(self, filter_: Any) -> None:
        self.filter = filter_
        self.name, function = _filter_function(filter_)
        if _positional_arity(function) >= 2:
            self.call: Callable[[Any, Any], Any] = function
        else:
            # The seed's chain example writes ``filter(cls, web_socket_instance)``:
            # a filter that does not want the data is called without it.
            self.call = lambda instance, _data: function(instance)


def _filter_function(filter_: Any) -> tuple[str, Callable[..., Any]]:
    """Find the callable behind a filter class, filter object or function."""
    if isinstance(filter_, type):
        member = inspect.getattr_static(filter_, "filter", None)
        if member is None:
            raise InvalidFilter(f"{filter_.__name__} has no filter() method")
        if isinstance(member, classmethod | staticmethod):
            return filter_.__name__, filter_.filter  # type: ignore[attr-defined]
        # A class whose filter() is a plain method is instantiated once.
        try:
            instance = filter_()
        except TypeError as exc:
            raise InvalidFilter(
                f"{filter_.__name__}.filter is a plain method, so fws instantiates the class, "
                f"but {filter_.__name__}() failed: {exc}"
            ) from None
        return filter_.__name__, instance.filter
    method = getattr(type(filter_), "filter", None)
    if callable(method):
        return type(filter_).__name__, filter_.filter
    if callable(filter_):
        return getattr(filter_, "__name__", repr(filter_)), filter_
    raise InvalidFilter(
        f"{filter_!r} is not a filter: expected a class or object with a filter() "
        "method, or a function (web_socket_instance, data)"
    )


def _positional_arity(function: Callable[..., Any]) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: assume both
        return 2
    count = 0
    for parameter in parameters:
        if parameter.kind is parameter.VAR_POSITIONAL:
            return 2
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    if count == 0:
        name = getattr(function, "__qualname__", repr(function))
        raise InvalidFilter(f"{name} takes no arguments; a filter takes (instance, data)")
    return count


def is_filter(candidate: Any) -> bool:
    """Whether ``candidate`` has the shape of a pipeline stage (used by ``|``).

    Only the shape: a class is not instantiated here, so that ``A | B``
    instantiates a plain-method filter class once, when its stage is built.
    """
    if isinstance(candidate, Pipeline):
        return True
    if isinstance(candidate, type):
        return inspect.getattr_static(candidate, "filter", None) is not None
    return callable(getattr(type(candidate), "filter", None)) or callable(candidate)


class Pipeline:
    """An immutable sequence of filters run one after another.

    Build one with ``Pipeline(A, B)`` or with the shell's pipe: ``A | B``.
    ``pipeline | C`` returns a new pipeline; ``Pipeline | Pipeline`` flattens.
    """

    __slots__ = ("_stages", "empty")

    def __init__(self, *filters: Any) -> None:
        stages: list[_Stage] = []
        for filter_ in filters:
            if isinstance(filter_, Pipeline):
                stages.extend(filter_._stages)
            else:
                stages.append(_Stage(filter_))
        self._stages: tuple[_Stage, ...] = tuple(stages)
        self.empty = not stages
        """No filters. ``not pipeline`` says the same through ``__len__``, a Python
        call: about 1,800 instructions, more than this test is worth per message."""

    @property
    def filters(self) -> tuple[Any, ...]:
        """The filters, in the order they run."""
        return tuple(stage.filter for stage in self._stages)

    def run(self, instance: Any, data: Any = None) -> Any:
        """Run every stage; return the final data, or ``DROP`` if a stage dropped it.

        A stage that raises stops the pipeline: the exception is re-raised as
        ``FilterError`` naming the filter, with the original as ``__cause__``.
        """
        for stage in self._stages:
            try:
                result = stage.call(instance, data)
            except Exception as exc:
                raise FilterError(stage.name) from exc
            if result is None:
                continue
            if result is DROP:
                return DROP
            data = result
        return data

    def __or__(self, other: Any) -> Pipeline:
        if not is_filter(other):
            return NotImplemented
        return Pipeline(self, other)

    def __ror__(self, other: Any) -> Pipeline:
        if not is_filter(other):
            return NotImplemented
        return Pipeline(other, self)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.filters)

    def __len__(self) -> int:
        return len(self._stages)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pipeline):
            return NotImplemented
        return self.filters == other.filters

    def __hash__(self) -> int:
        return hash(self.filters)

    def __repr__(self) -> str:
        return f"Pipeline({' | '.join(stage.name for stage in self._stages)})"
