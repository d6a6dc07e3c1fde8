"""The views shaped like native's (pgferry.catalog.views) against a running
subscription: the queries monitoring runs on native's views return pgferry's
values, their columns are native's, and PUBLIC cannot read them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgferry.catalog import ensure_catalog
from pgferry.catalog.views import VIEWS
from pgferry.origins import sync_origin
from pgferry.protocol.lsn import Lsn
from pgferry.testing import Cluster
from tests.conformance.conftest import Ferry
from tests.support import subscriber_database, wait_for

SUB = "views_sub"


@pytest.fixture
def ferry(cluster: Cluster, dbname: str) -> Iterator[Ferry]:
    """A publisher database and a subscriber database, both on the shared cluster."""
    with subscriber_database(cluster, dbname) as sub_db:
        yield Ferry(cluster, dbname, cluster, sub_db)


def _columns(ferry: Ferry, relation: str) -> list[tuple[str, str]]:
    rows = ferry.on_sub(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (relation,),
    )
    return [(str(n), str(t)) for n, t in rows]


def test_columns_are_natives(ferry: Ferry) -> None:
    with psycopg.connect(ferry.sub_dsn, autocommit=True) as conn:
        ensure_catalog(conn)
    for view, (native, columns) in VIEWS.items():
        assert _columns(ferry, f"pgferry.{view}") == list(columns), view
        if ferry.sub.major >= 18:
            assert _columns(ferry, f"pg_catalog.{native}") == list(columns), native


def _lsn(value: Any) -> Lsn:
    return Lsn.parse(str(value))


def test_views_of_a_running_subscription(ferry: Ferry) -> None:
    ddl = (
        'CREATE SCHEMA "we ird"; CREATE TABLE "we ird"."x""" (id int PRIMARY KEY);'
        " CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE big (id int PRIMARY KEY)"
    )
    ferry.on_pub(ddl)
    ferry.on_sub(ddl)
    ferry.on_pub('INSERT INTO "we ird"."x""" VALUES (1), (2)')
    ferry.on_pub("INSERT INTO big SELECT generate_series(1, 100)")
    ferry.on_pub('CREATE PUBLICATION p FOR TABLE t, "we ird"."x"""')
    # Row 50 of big's copy waits for an advisory lock the test holds.
    ferry.on_sub(
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.id = 50 THEN PERFORM pg_advisory_lock_shared(4343);"
        " PERFORM pg_advisory_unlock_shared(4343); END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER hold BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION hold();"
        " ALTER TABLE big ENABLE ALWAYS TRIGGER hold"
    )
    oids = dict(
        ferry.on_sub(
            "SELECT relname, oid FROM pg_class"
            " WHERE oid IN ('t'::regclass, 'big'::regclass, '\"we ird\".\"x\"\"\"'::regclass)"
        )
    )
    ferry.subscribe(SUB, ["p"])
    (subid,) = ferry.on_sub("SELECT id FROM pgferry.subscription WHERE name = %s", (SUB,))[0]
    # No worker yet: one row of nulls, as native.
    assert ferry.on_sub("SELECT * FROM pgferry.stat_subscription") == [(subid, SUB, *([None] * 9))]
    with ferry.running(), psycopg.connect(ferry.sub_dsn, autocommit=True) as holder:
        ferry.wait_ready(SUB)
        # A table added: its copy held in state d (the others' copies are done: a
        # slot is created only once no transaction older than it runs).
        holder.execute("SELECT pg_advisory_lock(4343)")
        ferry.on_pub("ALTER PUBLICATION p ADD TABLE big")
        ferry.alter(SUB, refresh_publication=True)
        by_state = "SELECT srsubstate, count(*) FROM pgferry.subscription_rel GROUP BY 1 ORDER BY 1"
        wait_for(
            lambda: ferry.on_sub(by_state) == [("d", 1), ("r", 2)],
            "big held in its copy, the others ready",
        )
        rel = ferry.on_sub("SELECT srsubid, srrelid, srsubstate FROM pgferry.subscription_rel")
        assert sorted(rel) == sorted(
            (subid, oid, "d" if name == "big" else "r") for name, oid in oids.items()
        )
        wait_for(
            lambda: len(ferry.on_sub("SELECT 1 FROM pgferry.stat_subscription")) == 2,
            "the apply worker's row and the sync worker's",
        )
        workers = ferry.on_sub(
            "SELECT subid, subname, worker_type, pid IS NOT NULL, leader_pid, relid"
            " FROM pgferry.stat_subscription ORDER BY worker_type"
        )
        assert workers == [
            (subid, SUB, "apply", True, None, None),
            (subid, SUB, "table synchronization", True, None, oids["big"]),
        ]
        # The sync worker's pid is its session's: the one copying big.
        copying = (
            "SELECT p.relid FROM pgferry.stat_subscription s"
            " JOIN pg_stat_progress_copy p USING (pid)"
        )
        wait_for(lambda: ferry.on_sub(copying) == [(oids["big"],)], "big's copy, by pid")
        holder.execute("SELECT pg_advisory_unlock(4343)")
        ferry.wait_ready(SUB)

        ferry.on_pub("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g")
        ferry.wait_rows("SELECT count(*) FROM t", [(10,)])
        (written,) = ferry.on_pub("SELECT pg_current_wal_lsn()")[0]
        slot = ferry.subscription(SUB).slot_name

        def confirmed() -> bool:
            rows = ferry.on_sub(
                "SELECT subname, received_lsn, latest_end_lsn FROM pgferry.stat_subscription"
            )
            (flushed,) = ferry.on_pub(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )[0]
            return (
                len(rows) == 1
                and rows[0][0] == SUB
                and _lsn(rows[0][2]) >= _lsn(written)
                and _lsn(rows[0][1]) >= _lsn(rows[0][2])
                and _lsn(rows[0][2]) == _lsn(flushed)
            )

        wait_for(confirmed, "the applied position past the inserts, as the slot says")
        assert ferry.on_sub(by_state) == [("r", 3)]
        stats = ferry.on_sub(
            "SELECT subid, subname, apply_error_count, confl_insert_exists"
            " FROM pgferry.stat_subscription_stats"
        )
        assert stats == [(subid, SUB, 0, 0)]
    # The worker stopped cleanly: no worker row.
    assert ferry.on_sub("SELECT worker_type, pid FROM pgferry.stat_subscription") == [(None, None)]
    # A rename keeps the subscription's id.
    ferry.alter(SUB, rename=f"{SUB}_renamed")
    assert ferry.on_sub("SELECT subid, subname FROM pgferry.stat_subscription") == [
        (subid, f"{SUB}_renamed")
    ]


def test_sync_rows_follow_the_sync_workers_sessions(ferry: Ferry) -> None:
    """A table's sync row is there while a session named like its sync worker's
    slot is connected (names quoted, not ASCII), with that session's pid."""
    ferry.on_sub('CREATE SCHEMA "we ird"; CREATE TABLE "we ird"."x""é" (id int)')
    with psycopg.connect(ferry.sub_dsn, autocommit=True) as conn:
        ensure_catalog(conn)
    ferry.on_sub(
        "INSERT INTO pgferry.subscription (name, conninfo, publications, origin_name)"
        " VALUES (%s, 'dbname=x', '{p}', %s)",
        (f"{SUB} é", f"pgferry_{SUB}_e"),
    )
    ferry.on_sub(
        "INSERT INTO pgferry.subscription_table (subscription, remote_schema, remote_name,"
        " local_schema, local_name, state) VALUES (%s, %s, %s, %s, %s, 'd')",
        (f"{SUB} é", "rem ote", 'ta"ble', "we ird", 'x"é'),
    )
    query = "SELECT subname, worker_type, pid, relid FROM pgferry.stat_subscription"
    assert ferry.on_sub(query) == [(f"{SUB} é", None, None, None)]
    (relid,) = ferry.on_sub("""SELECT '"we ird"."x""é"'::regclass::oid""")[0]
    name = sync_origin(f"{SUB} é", "rem ote", 'ta"ble')
    with psycopg.connect(ferry.sub_dsn, application_name=name) as session:
        pid = session.info.backend_pid
        assert ferry.on_sub(query) == [(f"{SUB} é", "table synchronization", pid, relid)]
    wait_for(
        lambda: ferry.on_sub(query) == [(f"{SUB} é", None, None, None)],
        "the row gone with the session",
    )


def test_views_are_not_readable_by_public(ferry: Ferry) -> None:
    with psycopg.connect(ferry.sub_dsn, autocommit=True) as conn:
        ensure_catalog(conn)
        role = f"{SUB}_nobody"
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        try:
            for view in VIEWS:
                name = f"pgferry.{view}"
                row = conn.execute(
                    "SELECT has_table_privilege('public', %s, 'SELECT'),"
                    " has_table_privilege(%s, %s, 'SELECT')",
                    (name, role, name),
                ).fetchone()
                assert row == (False, False), name
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM pgferry.stat_subscription")
            conn.execute("RESET ROLE")
            # A monitoring role given the views alone reads them, not the conninfo.
            conn.execute(
                sql.SQL(
                    "GRANT USAGE ON SCHEMA pgferry TO {0};"
                    " GRANT SELECT ON pgferry.stat_subscription TO {0}"
                ).format(sql.Identifier(role))
            )
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            assert conn.execute("SELECT count(*) FROM pgferry.stat_subscription").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT conninfo FROM pgferry.subscription")
        finally:
            conn.execute("RESET ROLE")
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))
