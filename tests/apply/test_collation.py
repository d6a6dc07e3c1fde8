"""UPDATEs that find their row through a nondeterministic collation, after
PostgreSQL's src/test/subscription/t/012_collation.pl.

The subscriber's row is equal to the publisher's under the column's collation but
holds other bytes (canonically equivalent Unicode, or another case under a
case-insensitive collation). Native finds it by the replica identity and writes
the publisher's whole new tuple into it, so afterwards the subscriber holds the
publisher's bytes, key columns included; pgferry must too, in both apply modes,
with and without commit timestamps (which add the origin checks).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.apply.pair import Pair

COMPOSED = "U&'\\00E4bc'"
DECOMPOSED = "U&'\\0061\\0308bc'"

#: Both sides start with the same rows (no initial copy: the tables are ready).
#: pk_nondet is staged in batch mode; pk_unique (a second unique index) and
#: full_nondet (REPLICA IDENTITY FULL) go row by row in either mode.
SCHEMA = f"""
CREATE COLLATION ctest_nondet (provider = icu, locale = 'und', deterministic = false);
CREATE COLLATION ctest_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE pk_nondet (a text COLLATE ctest_nondet PRIMARY KEY, b text);
CREATE TABLE pk_ci (a text COLLATE ctest_ci PRIMARY KEY, b text);
CREATE TABLE pk_unique (a text COLLATE ctest_nondet PRIMARY KEY, b text UNIQUE);
CREATE TABLE full_nondet (a text COLLATE ctest_nondet, b text);
ALTER TABLE full_nondet REPLICA IDENTITY FULL;
INSERT INTO pk_nondet VALUES ({COMPOSED}, 'foo'), ('xyz', 'foo');
INSERT INTO pk_ci VALUES ('abc', 'foo'), ('xyz', 'foo');
INSERT INTO pk_unique VALUES ({COMPOSED}, 'foo'), ('xyz', 'foo2');
INSERT INTO full_nondet VALUES ({COMPOSED}, 'foo'), ('xyz', 'foo');
"""
TABLES = ["pk_nondet", "pk_ci", "pk_unique", "full_nondet"]

#: The subscriber's rows rewritten to bytes its collation takes as equal.
LOCAL_BYTES = [
    f"UPDATE pk_nondet SET a = {DECOMPOSED} WHERE a = {COMPOSED}",
    "UPDATE pk_ci SET a = 'ABC' WHERE a = 'abc'",
    f"UPDATE pk_unique SET a = {DECOMPOSED} WHERE a = {COMPOSED}",
    f"UPDATE full_nondet SET a = {DECOMPOSED} WHERE a = {COMPOSED}",
]

#: Each in a remote transaction of its own (batch mode groups them).
REMOTE = [
    f"UPDATE pk_nondet SET b = 'bar' WHERE a = {COMPOSED}",
    "UPDATE pk_ci SET b = 'bar' WHERE a = 'abc'",
    f"UPDATE pk_unique SET b = 'bar' WHERE a = {COMPOSED}",
    f"UPDATE full_nondet SET b = 'bar' WHERE a = {COMPOSED}",
    "UPDATE pk_nondet SET b = 'baz' WHERE a = 'xyz'",
]

ROWS = "SELECT pg_catalog.convert_to(a, 'UTF8'), b FROM {} ORDER BY 1, 2"


def _has_icu(cluster: Cluster, dbname: str) -> bool:
    """The server can create ICU collations: initdb imported some. (From
    PostgreSQL 16 the catalog lists the ICU collation ``unicode`` even in a build
    without ICU, which refuses to create one.)"""
    rows = cluster.sql(
        "SELECT count(*) FROM pg_catalog.pg_collation"
        " WHERE collprovider = 'i' AND collname <> 'unicode'",
        dbname=dbname,
    )
    return bool(rows[0][0])


@pytest.fixture(params=["off", "on"], ids=lambda value: f"commit_ts_{value}")
def ferry(request: pytest.FixtureRequest, make_cluster: ClusterFactory) -> Iterator[Pair]:
    """A :class:`Pair` on a cluster whose ``track_commit_timestamp`` is the param."""
    if request.param == "off":
        yield request.getfixturevalue("pair")
        return
    cluster = make_cluster(settings={"track_commit_timestamp": "on"})
    for name in ("pub", "sub"):
        cluster.create_database(name)
    yield Pair(cluster, "pub", "sub")


@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_update_writes_the_publishers_key_bytes(ferry: Pair, mode: str) -> None:
    if not _has_icu(ferry.cluster, ferry.pub):
        pytest.skip(f"PostgreSQL {ferry.cluster.major} was built without ICU")
    ferry.publish(SCHEMA, TABLES, apply_mode=mode)
    for statement in LOCAL_BYTES:
        ferry.cluster.sql(statement, dbname=ferry.sub)
    for table in TABLES:
        assert ferry.rows(ROWS.format(table)) != ferry.cluster.sql(
            ROWS.format(table), dbname=ferry.pub
        ), f"{table}: the subscriber's bytes should differ before the UPDATEs"
    for statement in REMOTE:
        ferry.cluster.sql(statement, dbname=ferry.pub)
    ferry.sync()
    for table in TABLES:
        published = ferry.cluster.sql(ROWS.format(table), dbname=ferry.pub)
        assert ferry.rows(ROWS.format(table)) == published, table
