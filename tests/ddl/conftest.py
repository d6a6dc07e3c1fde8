"""DDL replication tests: the publisher is the shared ``cluster`` (each ``--pg``
major), the subscriber one PostgreSQL 18 cluster for the whole session, a
database of its own per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from pgferry.testing import Cluster, install_for_major
from tests.conformance.conftest import Ferry

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def sub18() -> Iterator[Cluster]:
    with Cluster(install_for_major(18)) as cluster:
        yield cluster


@pytest.fixture
def ddl_ferry(cluster: Cluster, dbname: str, sub18: Cluster) -> Iterator[Ferry]:
    """A publisher database of the shared cluster and a subscriber database on 18."""
    sub_db = f"ddl_sub_{next(_numbers)}_pg{cluster.major}"
    sub18.create_database(sub_db)
    try:
        yield Ferry(cluster, dbname, sub18, sub_db)
    finally:
        sub18.drop_database(sub_db)
        # Replication origins outlive the database; each holds one of the
        # cluster's max_active_replication_origins while it exists.
        sub18.sql(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin"
            " WHERE roname LIKE %s",
            (f"%{sub_db}%",),
        )


def unique(prefix: str, ferry: Ferry) -> str:
    """A subscription name no other test of the session uses (origins are per cluster)."""
    return f"{prefix}_{ferry.sub_db}"
