"""The catalog's migrations on a real server: an older catalog is upgraded in
place, keeping its data, and nothing in it is readable by PUBLIC."""

from __future__ import annotations

from pgferry.catalog import ensure_catalog, store
from pgferry.catalog.schema import MIGRATIONS, current_version
from pgferry.testing import Cluster


def test_version_2_catalog_is_upgraded_keeping_its_counters(cluster: Cluster, dbname: str) -> None:
    with cluster.connect(dbname, autocommit=True) as conn:
        # A catalog as version 2 left it, with a subscription and counters.
        conn.execute("CREATE SCHEMA pgferry")
        conn.execute("CREATE TABLE pgferry.schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO pgferry.schema_version VALUES (2)")
        for migration in MIGRATIONS[:2]:
            conn.execute(migration.encode())
        conn.execute(
            "INSERT INTO pgferry.subscription (name, conninfo, publications, origin_name)"
            " VALUES ('old', 'dbname=x', '{p}', 'pgferry_old')"
        )
        conn.execute(
            "INSERT INTO pgferry.subscription_stats (subscription, update_missing,"
            " delete_missing, apply_error_count) VALUES ('old', 5, 7, 2)"
        )
        assert current_version(conn) == 2
        assert ensure_catalog(conn) == len(MIGRATIONS) == current_version(conn)
        stats = store.stats(conn, "old")
        assert stats["confl_update_missing"] == 5 and stats["confl_delete_missing"] == 7
        assert stats["apply_error_count"] == 2 and stats["confl_insert_exists"] == 0
        readable = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'pgferry' AND c.relkind = 'r'"
            " AND has_table_privilege('public', c.oid, 'SELECT')"
        ).fetchall()
        assert readable == []
        assert conn.execute("SELECT count(*) FROM pgferry.conflict").fetchone() == (0,)
        # Running it again is a no-op.
        assert ensure_catalog(conn) == len(MIGRATIONS)


def test_counters_migration_counts_the_logged_conflicts(cluster: Cluster, dbname: str) -> None:
    """The migration of the views and counters numbers the existing subscriptions
    and counts the conflicts already logged by type and resolution."""
    number = next(i for i, m in enumerate(MIGRATIONS) if "pgferry.conflict_count" in m)
    with cluster.connect(dbname, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA pgferry")
        conn.execute("CREATE TABLE pgferry.schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO pgferry.schema_version VALUES (%s)", (number,))
        for migration in MIGRATIONS[:number]:
            conn.execute(migration.encode())
        for name in ("a", "b"):
            conn.execute(
                "INSERT INTO pgferry.subscription (name, conninfo, publications, origin_name)"
                " VALUES (%s, 'dbname=x', '{p}', %s)",
                (name, f"pgferry_{name}"),
            )
            conn.execute(
                "INSERT INTO pgferry.subscription_stats (subscription) VALUES (%s)", (name,)
            )
        conn.execute(
            "INSERT INTO pgferry.conflict (subscription, table_schema, table_name,"
            " conflict_type, resolution, applied)"
            " VALUES ('a', 's', 't', 'update_missing', 'skip', false),"
            " ('a', 's', 't', 'update_missing', 'skip', false),"
            " ('a', 's', 't', 'insert_exists', 'error', false),"
            " ('b', 's', 'u', 'update_missing', 'skip', false)"
        )
        assert ensure_catalog(conn) == len(MIGRATIONS)
        counts = conn.execute(
            "SELECT subscription, conflict_type, resolution, count FROM pgferry.conflict_count"
            " ORDER BY 1, 2"
        ).fetchall()
        assert counts == [
            ("a", "insert_exists", "error", 1),
            ("a", "update_missing", "skip", 2),
            ("b", "update_missing", "skip", 1),
        ]
        ids = conn.execute("SELECT subname, subid FROM pgferry.stat_subscription_stats").fetchall()
        assert len({i for _, i in ids}) == 2 and {n for n, _ in ids} == {"a", "b"}
        applied = conn.execute(
            "SELECT transactions_applied, rows_applied FROM pgferry.subscription_stats"
        ).fetchall()
        assert applied == [(0, 0), (0, 0)]
