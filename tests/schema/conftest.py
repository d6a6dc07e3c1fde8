"""Fixtures of the schema tests: a publisher database on the shared cluster and an
empty subscriber database in a cluster of its own (its roles are its own too)."""

from __future__ import annotations

import pytest

from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.conformance.conftest import Ferry


@pytest.fixture
def ferry(cluster: Cluster, dbname: str, make_cluster: ClusterFactory) -> Ferry:
    subscriber = make_cluster()
    subscriber.create_database("sub")
    return Ferry(cluster, dbname, subscriber)
