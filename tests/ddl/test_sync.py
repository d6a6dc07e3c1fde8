"""Replicated DDL on a table whose initial sync is under way (:mod:`pgferry.ddl.restart`).

Each test holds the sync or the apply worker with a lock on the subscriber, so
that the statement reaches the apply worker in one given state of the table's
sync; the copy must start over in the statement's shape, exactly once per
statement, and the table end equal on both sides.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from pgferry.ddl.restart import added_columns
from pgferry.origins import sync_origin
from pgferry.publisher import manage
from pgferry.schema.diff import diff_subscription
from tests.conformance.conftest import Ferry
from tests.ddl.conftest import unique
from tests.support import wait_for


def _rows(dsn: str, table: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1").fetchall()


def _equal(ferry: Ferry, name: str, table: str, *, errors: bool = False) -> None:
    """``table`` equal on both sides, ``schema diff`` clean, and (unless
    ``errors``) no error recorded."""
    assert _rows(ferry.sub_dsn, table) == _rows(ferry.pub.dsn(ferry.pub_db), table)
    diff = diff_subscription(ferry.sub_dsn, name)
    assert diff.equivalent, diff.differences
    sub = ferry.subscription(name)
    assert errors or sub.last_error is None, sub.last_error


def _ddl_publication(ferry: Ferry, tables: str) -> None:
    ferry.on_pub(f"CREATE PUBLICATION p FOR TABLE {tables}")
    with manage.connect(ferry.pub.dsn(ferry.pub_db)) as conn:
        manage.alter_publication(conn, "p", ddl=True)


def _slots(ferry: Ferry) -> list[str]:
    return [
        r[0]
        for r in ferry.on_pub(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgferry_sync_%'"
        )
    ]


def test_alter_during_the_copy_restarts_it(
    ddl_ferry: Ferry, capfd: pytest.CaptureFixture[str]
) -> None:
    """State ``d``: the sync worker's COPY waits for a lock the test holds; the
    statement ends that worker, and the copy is taken again in the new shape."""
    ferry = ddl_ferry
    name = unique("restart_d", ferry)
    ferry.on_pub(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        " INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 2000) g"
    )
    ferry.on_sub("CREATE TABLE t (id int PRIMARY KEY, v text)")
    _ddl_publication(ferry, "t")
    ferry.subscribe(name, ["p"])
    with psycopg.connect(ferry.sub_dsn) as holder:
        holder.execute("LOCK TABLE t IN SHARE MODE")
        with ferry.running():
            wait_for(lambda: ferry.states(name).get("public.t") == "d", "copy under way", 30)
            ferry.on_pub("ALTER TABLE t ADD COLUMN c int DEFAULT 7 NOT NULL")
            ferry.on_pub("INSERT INTO t VALUES (2001, 'after', 8)")
            time.sleep(1.0)
            holder.rollback()  # the lock goes: the statement, then the new copy
            ferry.wait_ready(name, timeout=60)
            ferry.wait_rows("SELECT count(*), sum(c) FROM t", [(2001, 2000 * 7 + 8)], 60)
    _equal(ferry, name, "t")
    assert "the copy starts over" in capfd.readouterr().err
    assert _slots(ferry) == []


def test_alter_before_a_refresh_copy_is_replayed_once(
    ddl_ferry: Ferry, capfd: pytest.CaptureFixture[str]
) -> None:
    """The apply worker is held behind the statement while a refresh copies the
    schema and the rows of a table in the statement's shape; the statement then
    reaches a table already copied (``f``, or handed over after it): the copy
    starts over and the column is added once, with the publisher's definition."""
    ferry = ddl_ferry
    name = unique("restart_refr", ferry)
    _two_tables(ferry)
    ferry.subscribe(name, ["p"], "copy_schema=true")
    with ferry.running():
        ferry.wait_ready(name)
        with psycopg.connect(ferry.sub_dsn) as holder:
            holder.execute("LOCK TABLE u IN ACCESS EXCLUSIVE MODE")
            ferry.on_pub("INSERT INTO u VALUES (1)")  # the apply worker waits here
            ferry.on_pub("ALTER PUBLICATION p ADD TABLE t")
            ferry.on_pub("ALTER TABLE t ADD COLUMN c int DEFAULT 7 NOT NULL")
            ferry.on_pub("INSERT INTO t VALUES (501, 'after', 8)")
            ferry.alter(name, refresh_publication=True)
            wait_for(lambda: ferry.states(name).get("public.t") == "f", "copy done", 60)
            holder.rollback()
        _converges(ferry, name)
    assert "the copy starts over" in capfd.readouterr().err


def test_alter_before_a_copy_that_added_the_column(
    ddl_ferry: Ferry, capfd: pytest.CaptureFixture[str]
) -> None:
    """``missing_columns = add`` adds the column before a copy taken after the
    statement, while the apply worker is held before it: the statement is not
    replayed on top of that column."""
    ferry = ddl_ferry
    name = unique("restart_miss", ferry)
    _two_tables(ferry)
    ferry.on_sub("CREATE TABLE u (id int PRIMARY KEY); CREATE TABLE t (id int PRIMARY KEY, v text)")
    ferry.subscribe(name, ["p"], "missing_columns=add")
    with ferry.running():
        ferry.wait_ready(name)
    ferry.on_pub("INSERT INTO u VALUES (1)")
    ferry.on_pub("ALTER PUBLICATION p ADD TABLE t")
    ferry.alter(name, refresh_publication=True)
    ferry.on_pub("ALTER TABLE t ADD COLUMN c int DEFAULT 7 NOT NULL")
    ferry.on_pub("INSERT INTO t VALUES (501, 'after', 8)")
    with psycopg.connect(ferry.sub_dsn) as holder:
        holder.execute("LOCK TABLE u IN ACCESS EXCLUSIVE MODE")
        with ferry.running():
            wait_for(lambda: ferry.states(name).get("public.t") == "f", "copy done", 60)
            holder.rollback()
            _converges(ferry, name)
    assert "the copy starts over" in capfd.readouterr().err


def _two_tables(ferry: Ferry) -> None:
    ferry.on_pub(
        "CREATE TABLE u (id int PRIMARY KEY);"
        " CREATE TABLE t (id int PRIMARY KEY, v text);"
        " INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g"
    )
    _ddl_publication(ferry, "u")


def _converges(ferry: Ferry, name: str) -> None:
    ferry.wait_ready(name, timeout=60)
    ferry.wait_rows("SELECT count(*), sum(c) FROM t", [(501, 500 * 7 + 8)], 60)
    ferry.wait_rows("SELECT id FROM u", [(1,)])
    _equal(ferry, name, "t")
    assert _slots(ferry) == []


def test_rename_and_drop_of_a_syncing_table_leave_no_slot(
    ddl_ferry: Ferry, capfd: pytest.CaptureFixture[str]
) -> None:
    """A syncing table renamed, another dropped: their sync slots and origins go."""
    ferry = ddl_ferry
    name = unique("restart_rn", ferry)
    ferry.on_pub(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);"
        " INSERT INTO a SELECT generate_series(1, 100);"
        " INSERT INTO b SELECT generate_series(1, 100)"
    )
    ferry.on_sub("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    _ddl_publication(ferry, "a, b")
    ferry.subscribe(name, ["p"])
    with psycopg.connect(ferry.sub_dsn) as holder:
        holder.execute("LOCK TABLE a, b IN SHARE MODE")
        with ferry.running():
            wait_for(lambda: set(ferry.states(name).values()) == {"d"}, "both copies under way", 30)
            ferry.on_pub("ALTER TABLE a RENAME TO a2")
            ferry.on_pub("DROP TABLE b")
            ferry.on_pub("INSERT INTO a2 VALUES (101)")
            time.sleep(1.0)
            holder.rollback()
            wait_for(lambda: set(ferry.states(name)) == {"public.a2"}, "a renamed, b gone", 60)
            ferry.wait_ready(name, timeout=60)
            ferry.wait_rows("SELECT count(*) FROM a2", [(101,)])
    assert capfd.readouterr().err.count("the copy starts over") == 2
    # A sync worker whose COPY on the publisher starts after the rename or the
    # drop fails once (the table is gone there) before its restart.
    _equal(ferry, name, "a2", errors=True)
    assert ferry.on_sub("SELECT to_regclass('public.b')") == [(None,)]
    assert _slots(ferry) == []
    names = [sync_origin(name, "public", t) for t in ("a", "b", "a2")]
    left = ferry.sub.sql(
        "SELECT roname FROM pg_replication_origin WHERE roname = ANY(%s)", (names,)
    )
    assert left == []


def test_added_columns() -> None:
    assert added_columns("ALTER TABLE big ADD COLUMN c int DEFAULT 7 NOT NULL") == ["c"]
    assert added_columns(
        'alter table if exists only public."We ird" * add "X y" numeric(3,2),'
        " ADD column if not exists z int, add constraint k check (a > 0),"
        " add primary key (id), ADD UNIQUE (v)"
    ) == ["X y", "z"]
    assert added_columns("ALTER TABLE t DROP COLUMN x, ALTER COLUMN y TYPE text") == []
    assert added_columns("CREATE TABLE t (add int)") == []
