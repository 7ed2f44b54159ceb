"""Finding filter and storage modules by the names users type.

A filter module name may be a built-in short name (``broadcast_messages``),
the original project's dotted path (``filtered_websocket.filters.echo``), a
name another package registers in the ``fws.filters`` entry-point group, any
importable dotted name (the current directory is appended to the import
path, so ``broadcast`` imports ``./broadcast.py`` unless an installed module
has that name) or a path to a ``.py`` file, imported under a private module
name so that it never replaces another module in ``sys.modules``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigurationError, FilterModuleError
from .storage.base import Storage

__all__ = [
    "builtin_filter_names",
    "builtin_storage_names",
    "load_filter_module",
    "load_storage_class",
    "load_wsgi_app",
    "resolve_filter_name",
    "resolve_storage_name",
]

_LEGACY_FILTERS = "filtered_websocket.filters."
_LEGACY_STORAGE = "filtered_websocket.storage_objects."
_STORAGE_ALIASES = {"default": "memory"}
_FILE_MODULE_PREFIX = "_fws_file_"


def builtin_filter_names() -> list[str]:
    from . import filters

    return sorted(info.name for info in pkgutil.iter_modules(filters.__path__))


def builtin_storage_names() -> list[str]:
    from . import storage

    names = {info.name for info in pkgutil.iter_modules(storage.__path__)} - {"base"}
    return sorted(names)


def resolve_filter_name(name: str) -> str:
    """The module path (or file path) that ``-f name`` means."""
    if name.startswith(_LEGACY_FILTERS):
        return "fws.filters." + name[len(_LEGACY_FILTERS) :]
    if name.endswith(".py") or os.sep in name:
        return name
    if "." not in name:
        if name in builtin_filter_names():
            return f"fws.filters.{name}"
        for entry in entry_points(group="fws.filters", name=name):
            return entry.value
    return name


def load_filter_module(name: str) -> ModuleType:
    """Import the filter module ``name`` means, or raise ``FilterModuleError``."""
    target = resolve_filter_name(name)
    if target.endswith(".py"):
        return _import_file(name, Path(target))
    builtins = f"built-in filters: {', '.join(builtin_filter_names())}"
    return _import(target, name, "filter module", builtins, FilterModuleError)


def load_wsgi_app(spec: str) -> Any:
    """The WSGI application ``module:attribute`` names (``--app``), or ``ConfigurationError``.

    The module is found as filter modules are (a dotted name, the current
    directory included, or a ``./file.py`` path) but never among fws's
    built-in filters; the attribute defaults to ``app``.
    """
    name, _, attribute = spec.rpartition(":") if ":" in spec else (spec, "", "app")
    if not name or not attribute:
        raise ConfigurationError(f"--app {spec!r}: expected module:attribute, e.g. myapp:app")
    try:
        if name.endswith(".py") or os.sep in name:
            module = _import_file(name, Path(name), "module", ConfigurationError)
        else:
            hint = "is it on the path or in the current directory?"
            module = _import(name, name, "module", hint, ConfigurationError)
    except ConfigurationError as exc:
        raise ConfigurationError(f"--app {spec!r}: {exc}") from exc.__cause__
    app = module
    for part in attribute.split("."):
        if not hasattr(app, part):
            raise ConfigurationError(
                f"--app {spec!r}: module {name!r} has no attribute {attribute!r}"
            )
        app = getattr(app, part)
    if not callable(app):
        raise ConfigurationError(
            f"--app {spec!r}: {attribute!r} is not callable ({type(app).__name__}), "
            "so not a WSGI application"
        )
    return app


def _import(
    target: str,
    name: str,
    kind: str,
    builtins: str,
    error: type[ConfigurationError],
) -> ModuleType:
    """Import ``target`` (what the user's ``name`` means) or raise ``error``.

    A missing module is "unknown" and the message lists the built-ins; a module
    that exists but fails (or lacks a dependency) says where it failed.
    """
    _put_cwd_on_path()
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise error(
                f"unknown {kind} {name!r} (no module named {exc.name!r}); {builtins}"
            ) from None
        raise error(_failed(kind, name, exc)) from exc
    except Exception as exc:
        raise error(_failed(kind, name, exc)) from exc


def _import_file(
    name: str,
    path: Path,
    kind: str = "filter module",
    error: type[ConfigurationError] = FilterModuleError,
) -> ModuleType:
    """Import a ``.py`` file under a private module name (see ``_private_name``).

    Under its stem, ``./json.py`` would replace the standard library's
    ``json`` in ``sys.modules`` for every later importer, and a second
    ``echo.py`` from another directory would replace the first (its filters
    would vanish from the pipeline). The same file named twice is imported once.
    """
    if not path.is_file():
        raise error(f"{kind} file not found: {path}")
    module_name = _private_name(path)
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise error(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # In sys.modules while it runs, as any import: dataclasses and pickling
    # look a class's module up there by name.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise error(_failed(kind, name, exc)) from exc
    return module


def _private_name(path: Path) -> str:
    """``_fws_file_<stem>_<hash of the absolute path>``: one name per file, no clash."""
    resolved = str(path.resolve())
    digest = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    return f"{_FILE_MODULE_PREFIX}{stem}_{digest}"


def _put_cwd_on_path() -> None:
    # Console scripts do not have the current directory on sys.path; the
    # original's `-f broadcast` imported ./broadcast.py, so fws adds it, last:
    # a ./json.py or ./redis.py must not shadow the modules fws itself imports.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _failed(kind: str, name: str, exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return f"{kind} {name!r} failed to import: {type(exc).__name__}: {exc} ({where})"


def resolve_storage_name(name: str) -> str:
    """The module path a storage name means: a built-in (``redis``, ``default``),
    the original's dotted path, or any importable module name."""
    if name.startswith(_LEGACY_STORAGE):
        name = name[len(_LEGACY_STORAGE) :]
    name = _STORAGE_ALIASES.get(name, name)
    if "." not in name and name in builtin_storage_names():
        return f"fws.storage.{name}"
    return name


def load_storage_class(name: str) -> type[Storage]:
    """The storage class of the module ``name`` means, or ``ConfigurationError``."""
    target = resolve_storage_name(name)
    builtins = f"built-in storage: {', '.join(builtin_storage_names())}"
    module = _import(target, name, "storage", builtins, ConfigurationError)
    storage_class = getattr(module, "storage_class", None)
    if not (isinstance(storage_class, type) and issubclass(storage_class, Storage)):
        raise ConfigurationError(
            f"storage module {name!r} has no storage_class (a fws.storage.Storage subclass)"
        )
    return storage_class
