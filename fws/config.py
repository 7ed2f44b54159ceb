"""Reading ``fws_server -c FILE``: the seed's JSON config format.

A JSON object whose keys are long option names (``port``, ``filters``,
``redis_host``; dashes and underscores are the same); a list value stands for
several values; the key ``flags`` lists boolean options to switch on (or off,
by a flag's second spelling: ``no-health``). Lines
whose first non-blank character is ``#`` are comments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = ["read_config"]


def read_config(path: str | Path) -> dict[str, Any]:
    """The config file as a dict with normalised keys, or ``ConfigurationError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc}") from None
    # Blank the comment lines instead of dropping them, so that JSON error
    # positions still point at the user's line numbers.
    lines = ["" if line.lstrip().startswith("#") else line for line in text.splitlines()]
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"config file {path} must hold a JSON object {{...}}")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
