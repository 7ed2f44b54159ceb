from __future__ import annotations

from collections.abc import Iterator

import pytest

import fws


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[fws.Registry]:
    """Filter classes a test defines are recorded in a registry of its own."""
    with fws.isolated_registry() as registry:
        yield registry
