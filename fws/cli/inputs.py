"""What ``fws_server`` reads besides what click parses: the config file and a pre-scan.

Three things happen to the raw inputs (arguments, environment, ``-c`` file)
around click's parser rather than in it: the seed's ``-f a b c`` is
respelled ``-f a -f b -f c`` before parsing; the ``-c`` file becomes click's
default map, each value checked as the command line would give it; and a
few options (``--storage``, ``--workers``) are read before parsing at all,
because they decide which options exist and whether the process patches
gevent (``WorkersType`` lives here for that: the pre-scan reads
``--workers`` as click will). That is one job, the inputs' plumbing, apart from the options
themselves (``fws.cli.options``) and from running the command
(``fws.cli``): it needs neither gevent nor the server, only click and the
config reader, and can be tested on plain lists and dicts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

from ..config import read_config
from ..errors import ConfigurationError
from ..supervisor import resolve_workers

__all__ = [
    "STORAGE_ENVVARS",
    "WorkersType",
    "choose_storage",
    "choose_workers",
    "prescan_option",
    "spread_multiple_values",
]

STORAGE_ENVVARS = ("FWS_STORAGE", "STORAGE_OBJECT_MODULE")


def spread_multiple_values(params: Sequence[click.Parameter], args: Sequence[str]) -> list[str]:
    """Rewrite ``-f a b c`` as ``-f a -f b -f c`` for every ``multiple`` option."""
    multiple = {
        name
        for param in params
        if isinstance(param, click.Option) and param.multiple
        for name in param.opts
    }
    result: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        result.append(arg)
        position += 1
        if arg == "--":
            result.extend(args[position:])
            break
        if arg in multiple and position < len(args):
            result.append(args[position])
            position += 1
            while position < len(args) and not args[position].startswith("-"):
                result.extend((arg, args[position]))
                position += 1
    return result


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """Eager ``-c`` callback: the config file becomes click's default map."""
    if path is None:
        return None
    try:
        config = read_config(path)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None
    # A key is an option's long name (dashes or underscores) or its parameter
    # name: "origin" and "origins" both set --origin.
    options: dict[str, click.Option] = {}
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name not in ("config", "help", "version"):
            options[param.name] = param
            for opt in param.opts:
                if opt.startswith("--"):
                    options.setdefault(opt[2:].replace("-", "_"), param)
    defaults: dict[str, Any] = {}
    for key, value in config.items():
        if key == "flags":
            flags = [value] if isinstance(value, str) else value
            if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
                raise click.BadParameter(f"{path}: 'flags' must be a list of option names")
            # A flag's second spelling turns it off: "no-health" as --no-health.
            turning_off = {
                opt[2:].replace("-", "_"): param
                for param in options.values()
                if param.is_flag
                for opt in param.secondary_opts
                if opt.startswith("--")
            }
            for flag in flags:
                name = flag.lstrip("-").replace("-", "_")
                option = options.get(name)
                if option is not None and option.is_flag:
                    defaults[option.name] = True
                elif name in turning_off:
                    defaults[turning_off[name].name] = False
                else:
                    raise click.BadParameter(
                        f"{path}: 'flags' names {flag!r}, which is not a boolean option"
                    )
        elif key == "storage":
            continue  # already used to choose the storage options (see choose_storage)
        elif key not in options:
            known = sorted({"flags", *(o.name for o in options.values() if o.name)})
            listed = ", ".join(known)
            raise click.BadParameter(f"{path}: unknown key {key!r}; known keys: {listed}")
        else:
            option = options[key]
            defaults[option.name] = _config_value(path, key, option, value)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _config_value(path: str, key: str, option: click.Option, value: Any) -> Any:
    """A config value as the command line would give it, or ``BadParameter`` saying why.

    JSON can hold what no command line can (a list for a single value, an
    object, null, true for a text option); those are refused here, once for
    every option, rather than reaching the code that uses the value.
    """

    def is_scalar(item: Any) -> bool:
        return isinstance(item, str | int | float) and not isinstance(item, bool)

    if option.is_flag:
        if not isinstance(value, bool):
            raise click.BadParameter(f"{path}: {key!r} must be true or false")
        return value
    if option.multiple:
        items = value.split() if isinstance(value, str) else value  # "echo stdout_messages"
        if not isinstance(items, list) or not all(is_scalar(item) for item in items):
            raise click.BadParameter(
                f"{path}: {key!r} must be a list of values or a space-separated string"
            )
        return [str(item) for item in items]
    if not is_scalar(value):
        raise click.BadParameter(f"{path}: {key!r} must be a string or a number")
    return str(value)


def prescan_option(
    args: Sequence[str],
    environ: dict[str, str] | os._Environ[str],
    option: str,
    envvars: Sequence[str],
) -> str | None:
    """An option's value before click parses the command line, or None if unset.

    For the few options that decide how parsing itself goes (``--storage``
    chooses which options exist, ``--workers`` whether this process patches
    gevent). Same precedence as every option: the command line, the
    environment, the config file's key (the option's name), no value; and,
    as click does, the last of an option given twice.
    """
    given = _last_value(args, (f"--{option}",))
    if given is not None:
        return given
    for name in envvars:
        if environ.get(name):
            return environ[name]
    path = _last_value(args, ("-c", "--config"))
    if path is not None:
        try:
            configured = read_config(path).get(option)
        except ConfigurationError:
            return None  # reported properly when -c is parsed
        if configured is not None and configured != "":
            return str(configured)
    return None


def _last_value(args: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of the last of ``names`` in ``args`` (``--name value`` or ``--name=value``)."""
    value = None
    for position, arg in enumerate(args):
        if arg in names and position + 1 < len(args):
            value = args[position + 1]
        elif arg.startswith("--") and arg.partition("=")[0] in names and "=" in arg:
            value = arg.partition("=")[2]
    return value


def choose_storage(args: Sequence[str], environ: dict[str, str] | os._Environ[str]) -> str:
    """The storage name before parsing, since it decides which options exist."""
    return prescan_option(args, environ, "storage", STORAGE_ENVVARS) or "default"


class WorkersType(click.ParamType):
    """``--workers``: a positive number, or ``auto`` for one per CPU."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not a positive number of workers or 'auto'", param, ctx)


def choose_workers(args: Sequence[str], environ: dict[str, str] | os._Environ[str]) -> int:
    """How many workers, before parsing: one decides whether this process patches gevent.

    The supervisor of ``--workers N`` must not be monkey-patched (it forks and
    waits as a plain process), while a single server patches first thing.
    Same precedence as the options; an unusable value counts as 1 and is
    reported by click.
    """
    value = prescan_option(args, environ, "workers", ("FWS_WORKERS",))
    try:
        return resolve_workers(WorkersType().convert(value or 1, None, None))
    except click.BadParameter:
        return 1
