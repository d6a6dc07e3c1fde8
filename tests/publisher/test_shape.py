"""The published shape of a table (:mod:`pgferry.publisher.shape`): one definition
for subscription create/refresh (over the replication connection) and the table
sync worker's copy (in its snapshot), on a real publisher."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgferry.publisher import shape
from pgferry.publisher.shape import ColumnListConflict, PublishedTable
from pgferry.stream import ReplicationConnection
from pgferry.testing import Cluster


@pytest.fixture
def repl(cluster: Cluster, dbname: str) -> Iterator[ReplicationConnection]:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text, g int GENERATED ALWAYS AS (id * 2)"
        ' STORED); CREATE TABLE "we ird" (); CREATE TABLE u (id int PRIMARY KEY)',
        dbname=dbname,
    )
    with ReplicationConnection.connect(cluster.dsn(dbname)) as connection:
        yield connection


def _published(repl: ReplicationConnection, *publications: str) -> list[PublishedTable]:
    return shape.published_tables(repl.execute, repl.major, publications)


def _both(repl: ReplicationConnection, cluster: Cluster, dbname: str, *pubs: str) -> None:
    """The replication connection and an ordinary one read the same shapes."""
    with cluster.connect(dbname) as conn:

        def run(query: str) -> list[tuple[str | None, ...]]:
            return list(conn.execute(query).fetchall())

        assert shape.published_tables(run, repl.major, pubs) == _published(repl, *pubs)


def test_every_column_but_the_generated_ones_by_default(
    repl: ReplicationConnection, cluster: Cluster, dbname: str
) -> None:
    cluster.sql('CREATE PUBLICATION p FOR TABLE t, "we ird"', dbname=dbname)
    tables = {t.name: t for t in _published(repl, "p")}
    # pgoutput never sends a generated column unless 18 is told to.
    assert tables["t"] == PublishedTable("public", "t", ("id", "a", "b"), None, None)
    assert tables["we ird"] == PublishedTable("public", "we ird", (), None, None)
    _both(repl, cluster, dbname, "p")


@pytest.mark.pg_min(15)
def test_a_table_in_two_publications_with_different_column_lists_is_refused(
    repl: ReplicationConnection, cluster: Cluster, dbname: str
) -> None:
    cluster.sql(
        "CREATE PUBLICATION p1 FOR TABLE t (id, a) WHERE (id > 10);"
        " CREATE PUBLICATION p2 FOR TABLE t (id, b);"
        " CREATE PUBLICATION p3 FOR TABLE t (a, id) WHERE (a <> 'x');"
        " CREATE PUBLICATION p4 FOR TABLE t",
        dbname=dbname,
    )
    with pytest.raises(ColumnListConflict, match=r"different column lists for table public\.t"):
        _published(repl, "p1", "p2")
    # A publication without a list counts as every column: different from (id, a).
    with pytest.raises(ColumnListConflict):
        _published(repl, "p1", "p4")
    # The same columns in another order: one list; the row filters are OR-ed.
    (table,) = _published(repl, "p1", "p3")
    assert table.columns == ("id", "a")
    assert table.column_list == ("id", "a")
    assert table.row_filter == "((id > 10)) OR ((a <> 'x'::text))"
    _both(repl, cluster, dbname, "p1", "p3")


@pytest.mark.pg_min(15)
def test_no_row_filter_in_one_publication_means_every_row(
    repl: ReplicationConnection, cluster: Cluster, dbname: str
) -> None:
    cluster.sql(
        "CREATE PUBLICATION p1 FOR TABLE u WHERE (id > 10); CREATE PUBLICATION p2 FOR TABLE u",
        dbname=dbname,
    )
    (table,) = _published(repl, "p1", "p2")
    assert table.row_filter is None and table.column_list is None
