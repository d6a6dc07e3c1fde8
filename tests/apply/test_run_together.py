"""A batch's staged statements run together (:func:`pgferry.apply.staging.run_together`):
in C as one simple query with its COPYs, and in Python one by one. Both leave the
same rows and raise the same errors, on real PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from pgferry._cmodule import SPEEDUPS
from pgferry.apply import staging
from pgferry.apply.mapping import TableMap, UniqueIndex
from pgferry.apply.staging import Eligibility, Stage, Staged, StageMismatch, run_together
from pgferry.protocol.messages import Column, Delete, Insert, Relation, Update
from pgferry.stream import libpq
from pgferry.testing import Cluster

WEIRD = '"we ird".""x"'


class _Counting:
    """SPEEDUPS, counting the calls of ``exchange``."""

    def __init__(self, speedups: Any) -> None:
        self._speedups = speedups
        self.exchanges = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._speedups, name)

    def exchange(self, *args: Any) -> Any:
        self.exchanges += 1
        return self._speedups.exchange(*args)


@pytest.fixture(params=["c", "python"])
def implementation(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Which implementation runs: the C exchange or psycopg's statements."""
    if request.param == "python":
        monkeypatch.setattr(libpq, "functions", lambda: None)
        yield request.param
        return
    if SPEEDUPS is None or libpq.functions() is None:
        pytest.skip("the C exchange is not available here")
    counting = _Counting(SPEEDUPS)
    monkeypatch.setattr(staging, "SPEEDUPS", counting)
    yield request.param
    # Otherwise the "c" cases would pass on the Python path.
    assert counting.exchanges > 0


def test_the_c_exchange_is_used_where_it_can_be() -> None:
    if SPEEDUPS is None or not sys.platform.startswith("linux"):
        pytest.skip("no C module, or not Linux")
    assert libpq.functions() is not None


@pytest.fixture
def conn(cluster: Cluster, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with cluster.connect(dbname, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE SCHEMA {s}; CREATE TABLE {t} (id int PRIMARY KEY, v text);"
                " CREATE TABLE {s}.plain (a int, b text)"
            ).format(s=sql.Identifier("we ird"), t=sql.Identifier("we ird", WEIRD))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, 'old' || g FROM generate_series(1, 10) g").format(
                sql.Identifier("we ird", WEIRD)
            )
        )
        yield conn


def _stage(conn: psycopg.Connection[Any], name: str, kind: Eligibility) -> Stage:
    relation = Relation(
        None, 1, "we ird", name, "d", (Column("id", 23, -1, True), Column("v", 25, -1, False))
    )
    keyed = kind is Eligibility.KEYED
    table = TableMap(
        relation=relation,
        target=sql.SQL("{}").format(sql.Identifier("we ird", name)),
        types=("integer", "text"),
        names=("id", "v") if keyed else ("a", "b"),
        key=(0,) if keyed else (),
        full=not keyed,
        no_equality=frozenset(),
        uniques=(UniqueIndex("pkey", (0,)),) if keyed else (),
        context=conn,
    )
    return Stage(table, kind)


def _row(k: int, v: str | None) -> tuple[bytes, bytes | None]:
    return (str(k).encode(), None if v is None else v.encode())


def _keyed(conn: psycopg.Connection[Any], *, keep: bool) -> Staged:
    """Every kind of staged row: D, U, I and A (inserted, then deleted)."""
    stage = _stage(conn, WEIRD, Eligibility.KEYED)
    changes: list[Insert | Update | Delete] = [
        Delete(None, 1, "K", _row(1, None)),
        Update(None, 1, None, None, _row(2, "new\ttab\\slash\nline")),
        Insert(None, 1, _row(11, "eleven")),
        Insert(None, 1, _row(12, "gone")),
        Delete(None, 1, "K", _row(12, None)),
    ]
    for change in changes:
        assert stage.add(change)
    staged = stage.prepare(keep=keep)
    assert staged is not None
    assert staged.counts == {"D": 1, "U": 1, "I": 1, "A": 1}
    return staged


def _plain(conn: psycopg.Connection[Any], *, keep: bool = False) -> Staged:
    stage = _stage(conn, "plain", Eligibility.INSERTS)
    for k in range(3):
        assert stage.add(Insert(None, 1, _row(k, None if k == 1 else f"p{k}")))
    staged = stage.prepare(keep=keep)
    assert staged is not None
    return staged


def _rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        sql.SQL("SELECT id, v FROM {} ORDER BY id").format(sql.Identifier("we ird", WEIRD))
    ).fetchall()


@pytest.mark.parametrize("keep", [True, False])
def test_every_kind_of_row_is_applied(
    conn: psycopg.Connection[Any], implementation: str, keep: bool
) -> None:
    keyed, plain = _keyed(conn, keep=keep), _plain(conn)
    assert keyed.create is not None  # the staging tables are made in the same query
    run_together(conn, [keyed, plain], begin=True)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.execute("COMMIT")
    expected = [(2, "new\ttab\\slash\nline"), *((k, f"old{k}") for k in range(3, 11))]
    assert _rows(conn) == [*expected, (11, "eleven")]
    plain_rows = conn.execute('SELECT a, b FROM "we ird".plain ORDER BY a').fetchall()
    assert plain_rows == [(0, "p0"), (1, None), (2, "p2")]


def test_a_second_batch_in_the_same_transaction(
    conn: psycopg.Connection[Any], implementation: str
) -> None:
    conn.execute("BEGIN")
    first = _keyed(conn, keep=True)
    run_together(conn, [first], begin=False)
    stage = _stage(conn, WEIRD, Eligibility.KEYED)
    stage.created = True  # as the applier's stage would know
    assert stage.add(Update(None, 1, None, None, _row(11, "again")))
    second = stage.prepare(keep=False)
    assert second is not None and second.create is None
    run_together(conn, [second], begin=False)
    conn.execute("COMMIT")
    assert (11, "again") in _rows(conn)


@pytest.mark.parametrize("missing", [1, 2, 11, 12])
def test_a_row_count_that_is_not_the_staged_one_is_a_mismatch(
    conn: psycopg.Connection[Any], implementation: str, missing: int
) -> None:
    # 1 and 2 are gone (a DELETE and an UPDATE find nothing); 11 and 12 exist
    # (an INSERT meets its key; a row expected absent is there).
    table = sql.Identifier("we ird", WEIRD)
    if missing <= 2:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), [missing])
    else:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'here')").format(table), [missing])
    staged = [_plain(conn), _keyed(conn, keep=False)]
    error: type[BaseException] = errors.UniqueViolation if missing == 11 else StageMismatch
    with pytest.raises(error):
        run_together(conn, staged, begin=True)
    conn.execute("ROLLBACK")
    assert conn.execute('SELECT count(*) FROM "we ird".plain').fetchone() == (0,)


def test_a_value_the_server_refuses_is_its_error(
    conn: psycopg.Connection[Any], implementation: str
) -> None:
    stage = _stage(conn, WEIRD, Eligibility.KEYED)
    assert stage.add(Insert(None, 1, (b"not a number", b"v")))
    staged = stage.prepare(keep=False)
    assert staged is not None
    with pytest.raises(errors.InvalidTextRepresentation, match="not a number"):
        run_together(conn, [staged], begin=True)
    conn.execute("ROLLBACK")
    # The session is usable, and nothing was applied.
    assert len(_rows(conn)) == 10


def test_a_closed_connection_is_an_operational_error(
    conn: psycopg.Connection[Any], cluster: Cluster, implementation: str
) -> None:
    staged = _keyed(conn, keep=False)
    pid = conn.info.backend_pid
    cluster.sql(f"SELECT pg_terminate_backend({pid}, 10000)")
    with pytest.raises(psycopg.OperationalError):
        run_together(conn, [staged], begin=True)


def test_a_notice_during_the_query_reaches_psycopg(
    conn: psycopg.Connection[Any], implementation: str
) -> None:
    # The second CREATE TEMP TABLE IF NOT EXISTS says "already exists, skipping":
    # libpq calls psycopg's notice receiver while the C loop runs without the GIL.
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    # (The first empties the staging table after it, as a batch that goes on does.)
    first, again = _plain(conn, keep=True), _plain(conn)
    assert first.create is not None and again.create is not None
    run_together(conn, [first, again], begin=True)
    conn.execute("COMMIT")
    assert any("already exists" in notice for notice in notices)
    assert conn.execute('SELECT count(*) FROM "we ird".plain').fetchone() == (6,)
