"""PostgreSQL 18 counts conflicts in ``pg_stat_subscription_stats``: for the same
workload, pgferry's counters must say the same as a native subscription's.

One publisher; one subscriber cluster with a database for the native
subscription and one for pgferry's, both prepared the same way and given the same
local writes, so each conflict happens on both sides.
"""

from __future__ import annotations

import threading
import time

import pytest

from pgferry.catalog import store
from pgferry.conflict import CONFLICT_TYPES
from pgferry.runner import Launcher
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory

SCHEMA = "CREATE TABLE t (id int PRIMARY KEY, u int UNIQUE, v text)"
COUNTERS = [t.counter for t in CONFLICT_TYPES]


def _native_counts(sub: Cluster) -> dict[str, int]:
    row = sub.sql(
        f"SELECT {', '.join(COUNTERS)}, apply_error_count FROM pg_stat_subscription_stats"
        " WHERE subname = 'native'",
        dbname="native",
    )
    return dict(zip([*COUNTERS, "apply_error_count"], (int(str(v)) for v in row[0]), strict=True))


def _ferry_counts(sub: Cluster) -> dict[str, int]:
    with sub.connect("ferry") as conn:
        stats = store.stats(conn, "ferry")
    return {k: stats[k] for k in [*COUNTERS, "apply_error_count"]}


def _same_rows(pub: Cluster, db: str, sub: Cluster) -> bool:
    query = "SELECT id, u, v FROM t ORDER BY id"
    expected = pub.sql(query, dbname=db)
    return sub.sql(query, dbname="native") == sub.sql(query, dbname="ferry") == expected


def test_counts_match_pg_stat_subscription_stats(
    cluster: Cluster, dbname: str, make_cluster: ClusterFactory
) -> None:
    if cluster.major < 18:
        pytest.skip("pg_stat_subscription_stats counts conflicts from PostgreSQL 18")
    sub = make_cluster()
    cluster.sql(SCHEMA + "; CREATE PUBLICATION pub FOR TABLE t", dbname=dbname)
    for db in ("native", "ferry"):
        sub.create_database(db)
        sub.sql(SCHEMA, dbname=db)
    sub.sql(
        f"CREATE SUBSCRIPTION native CONNECTION '{cluster.dsn(dbname)}' PUBLICATION pub"
        " WITH (disable_on_error = true, copy_data = false)",
        dbname="native",
    )
    create_subscription(
        sub.dsn("ferry"),
        "ferry",
        cluster.dsn(dbname),
        ["pub"],
        ["disable_on_error=true", "copy_data=false"],
    )
    launcher = Launcher(sub.dsn("ferry"), poll_interval=0.3)
    thread = threading.Thread(target=launcher.run, daemon=True)
    thread.start()
    try:
        # Rows that arrive by apply (no copy: copied rows would carry the sync
        # origin, and whether a row is copied or applied is a race).
        cluster.sql(
            "INSERT INTO t SELECT g, g, 'initial' FROM generate_series(1, 20) g", dbname=dbname
        )
        deadline = time.monotonic() + 90
        while not _same_rows(cluster, dbname, sub):
            assert time.monotonic() < deadline, "the initial rows did not arrive"
            time.sleep(0.5)
        # The same local writes on both subscribers.
        for db in ("native", "ferry"):
            sub.sql(
                "DELETE FROM t WHERE id IN (1, 2, 3);"  # -> update_missing, delete_missing
                " UPDATE t SET v = 'local' WHERE id IN (4, 5, 6, 7);"  # -> *_origin_differs
                " INSERT INTO t VALUES (30, 30, 'local')",  # -> update_exists (u = 30)
                dbname=db,
            )
        cluster.sql(
            "UPDATE t SET v = 'remote' WHERE id IN (1, 2, 4, 5, 10);"
            " DELETE FROM t WHERE id IN (3, 6, 7);"
            " INSERT INTO t VALUES (40, 40, 'new');",
            dbname=dbname,
        )
        deadline = time.monotonic() + 60
        expected = {
            "confl_update_missing": 2,
            "confl_delete_missing": 1,
            "confl_update_origin_differs": 2,
            "confl_delete_origin_differs": 2,
        }
        while True:
            native, ferry = _native_counts(sub), _ferry_counts(sub)
            if native == ferry and all(native[k] == n for k, n in expected.items()):
                break
            assert time.monotonic() < deadline, f"native {native} != pgferry {ferry}"
            time.sleep(0.5)
        # Then one change each that native stops on (disable_on_error: counted once).
        cluster.sql("UPDATE t SET u = 30 WHERE id = 8", dbname=dbname)
        deadline = time.monotonic() + 60
        while True:
            native, ferry = _native_counts(sub), _ferry_counts(sub)
            if native["confl_update_exists"] and native == ferry:
                break
            assert time.monotonic() < deadline, f"native {native} != pgferry {ferry}"
            time.sleep(0.5)
        assert native["confl_update_exists"] == 1 and native["apply_error_count"] == 1
    finally:
        launcher.request_stop()
        thread.join(timeout=60)
        sub.sql("ALTER SUBSCRIPTION native DISABLE", dbname="native")
        sub.sql("DROP SUBSCRIPTION native", dbname="native")
