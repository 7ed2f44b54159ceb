"""fws as the benchmark runs it, but keeping compression context between messages.

Usage: python fws_context_takeover.py [-q] --host HOST -p PORT -f MODULE (the
options bench/targets.py gives fws_server). fws_server has no option for
context takeover; an application asks for it as this script does, with
``Server(compression=DeflateSettings(...))``. The benchmark puts the memory
this costs next to the bandwidth it saves; with it a broadcast compresses
once per client, not once for all.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402

import fws  # noqa: E402
from fws.allocator import tune_for_server  # noqa: E402
from fws.deflate import DeflateSettings  # noqa: E402
from fws.modules import load_filter_module  # noqa: E402
from fws.serving import serve_until_signalled  # noqa: E402

TAKEOVER = DeflateSettings(server_no_context_takeover=False, client_no_context_takeover=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("-f", "--filters", required=True)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if options.quiet else logging.INFO)
    tune_for_server()  # as fws_server does
    registry = fws.Registry.from_modules([load_filter_module(options.filters)])
    server = fws.Server(
        host=options.host, port=options.port, registry=registry, compression=TAKEOVER
    )
    server.start()
    serve_until_signalled(server)


if __name__ == "__main__":
    main()
