"""A chat server composed in a script: every message to everyone else, and to stdout."""

from gevent import monkey

monkey.patch_all()  # first, before anything else is imported

import logging  # noqa: E402
import os  # noqa: E402

import fws  # noqa: E402
from fws.filters.broadcast_messages import BroadcastMessages  # noqa: E402
from fws.filters.stdout_messages import StdoutMessages  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
fws.serve(
    message=BroadcastMessages | StdoutMessages,
    host=os.environ.get("HOST", "0.0.0.0"),
    port=int(os.environ.get("PORT", "9000")),
)
