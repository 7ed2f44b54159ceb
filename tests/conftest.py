from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# Real Redis Cluster / Sentinel set-ups (module-scoped), for any test module.
from redis_topologies import redis_cluster, redis_sentinel  # noqa: F401

import fws
from fws.storage.redis.cluster_link import ClusterLink


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[fws.Registry]:
    """Filter classes a test defines are recorded in a registry of its own."""
    with fws.isolated_registry() as registry:
        yield registry


@pytest.fixture
def cluster_link(redis_cluster: Any) -> Iterator[ClusterLink]:  # noqa: F811 (imported fixture)
    """A ``ClusterLink`` on the module's real Redis Cluster, closed after the test."""
    link = ClusterLink(redis_cluster.url, name="fws-test")
    yield link
    link.close()
