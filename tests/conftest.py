from __future__ import annotations

from collections.abc import Iterator

import pytest

# Real Redis Cluster / Sentinel set-ups (module-scoped), for any test module.
from redis_topologies import redis_cluster, redis_sentinel  # noqa: F401

import fws


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[fws.Registry]:
    """Filter classes a test defines are recorded in a registry of its own."""
    with fws.isolated_registry() as registry:
        yield registry
