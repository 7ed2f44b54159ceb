"""Sphinx configuration for the fws documentation (``make docs``).

Built with warnings as errors (``-W``), by ``make docs`` and by
``tests/test_docs.py`` under ``make test``, so a broken reference or a
docstring that does not parse fails the suite rather than the reader.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # fws_cli_docs: the click commands sphinx-click renders
sys.path.insert(0, str(HERE.parent))  # this checkout's fws, not an installed one

import fws  # noqa: E402

project = "fws"
author = "the fws authors"
copyright = "the fws authors, MIT licence"  # noqa: A001
release = fws.__version__
version = ".".join(release.split(".")[:2])

# The docstrings are plain reStructuredText prose (no Google/NumPy sections),
# so autodoc alone reads them; napoleon would misread "Health flag: ..." as a type.
extensions = [
    "sphinx.ext.autodoc",
    "sphinx_click",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "WebSocket servers built from filters", "fixed_sidebar": True}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# Option names in click help texts ("with --cert clients use wss://") are
# plain text to sphinx-click: smart quotes would turn "--" into a dash.
smartquotes = False
