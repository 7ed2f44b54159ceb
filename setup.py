"""The optional C accelerator; the metadata lives in setup.cfg.

``fws._speedups`` (``fws/_speedups*.c``: a broadcast's fan-out, the
flusher's sends, the parser's common frame, the unmasking of large frames and
the encoding of a message, see ``fws/_accel.py``) is built where it can be: a failed compile only prints a
warning and fws runs on its pure-Python code, as websockets does with its
``speedups.c``. ``FWS_BUILD_EXTENSION=yes`` makes a
failed compile an error (CI, to know the accelerator was built and tested);
``no`` skips it.
"""

import os

from setuptools import Extension, setup

build = os.environ.get("FWS_BUILD_EXTENSION", "").lower()
if build not in ("", "yes", "no"):
    raise SystemExit(f"FWS_BUILD_EXTENSION={build!r}: say yes, no, or leave it unset")

ext_modules = []
if build != "no":
    ext_modules.append(
        Extension(
            "fws._speedups",
            sources=[
                "fws/_speedups.c",
                "fws/_speedups_outbound.c",
                "fws/_speedups_frames.c",
                "fws/_speedups_send.c",
            ],
            depends=["fws/_speedups.h"],
            optional=build != "yes",
        )
    )

setup(ext_modules=ext_modules)
