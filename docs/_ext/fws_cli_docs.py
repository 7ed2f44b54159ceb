"""The ``fws_server`` command as module-level objects, for sphinx-click.

``fws.cli`` builds its command at run time, because the chosen storage adds
options; sphinx-click needs ``module:object``. These are built by the same
``build_command`` the console script calls, so the CLI reference can never
drift from the real options: an option added to ``fws.cli.options`` appears
here.
"""

from __future__ import annotations

import click

from fws.cli import build_command
from fws.modules import load_storage_class

#: ``fws_server`` with the default (in-process) storage: every general option.
command = build_command("default", load_storage_class("default"))


def _storage_only(name: str) -> click.Command:
    """A command holding only the options a storage backend adds."""
    storage_class = load_storage_class(name)
    names = {option.name for option in storage_class.options}
    full = build_command(name, storage_class)
    return click.Command(
        f"fws_server --storage {name}",
        params=[param for param in full.params if param.name in names],
        help=f"Options added when the storage is {name} (--storage {name}, "
        f"FWS_STORAGE={name} or STORAGE_OBJECT_MODULE).",
        add_help_option=False,
    )


#: The options ``--storage redis`` adds.
redis_options = _storage_only("redis")
