"""fws_server as run by the benchmark, but keeping compression context between messages.

Usage: python fws_context_takeover.py [fws_server options]. Not a setting
fws_server offers: ``Server(compression=DeflateSettings(...))`` is how an
application would ask for it. Here ``--compression deflate`` builds a
``DeflateSettings`` with server and client context takeover, everything else
being fws_server's own start-up (allocator tuning included), so that the
benchmark can put the memory this costs next to the bandwidth it saves.
With it a broadcast compresses once per client, not once for all.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

from dataclasses import dataclass  # noqa: E402

import fws.cli  # noqa: E402
from fws.deflate import DeflateSettings  # noqa: E402


@dataclass(frozen=True)
class ContextTakeover(DeflateSettings):
    """DeflateSettings whose defaults keep the compressor and inflater of each connection."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False


if __name__ == "__main__":
    fws.cli.DeflateSettings = ContextTakeover  # type: ignore[misc]  # what --compression deflate makes
    fws.cli.main()
