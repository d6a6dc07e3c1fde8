"""``pgferry conflicts``, ``subscription alter --table-resolution`` and the
``origin = none`` copy warning, through the real command line."""

from __future__ import annotations

import json

from pgferry.catalog import conflict_log
from pgferry.conflict import Resolution
from pgferry.subscription import create_subscription
from tests.apply.pair import Pair
from tests.cli.test_subscription import assert_clean_failure
from tests.support import pgferry


def test_conflicts_lists_the_log(pair: Pair) -> None:
    pair.publish(
        "CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"], conflict_resolution="apply_remote"
    )
    dsn = pair.cluster.dsn(pair.sub)
    empty = pgferry(dsn, "conflicts")
    assert (empty.returncode, empty.stdout.strip()) == (0, "no conflicts"), empty
    pair.rows("INSERT INTO t VALUES (1, 'local'), (2, 'local')")
    pair.cluster.sql("INSERT INTO t VALUES (1, 'remote')", dbname=pair.pub)
    pair.cluster.sql("DELETE FROM t WHERE id = 1", dbname=pair.pub)
    pair.sync()
    # insert_exists, resolved; the delete then finds a row this subscription wrote.
    assert pair.rows("SELECT * FROM t") == [(2, "local")]
    result = pgferry(dsn, "conflicts", "--json")
    assert result.returncode == 0, result
    doc = json.loads(result.stdout)
    assert [(d["conflict_type"], d["resolution"], d["applied"]) for d in doc] == [
        ("insert_exists", "apply_remote", True),
    ]
    first = doc[0]
    assert first["table"] == {"schema": "public", "name": "t"}
    assert first["local"]["row"] == {"id": 1, "v": "local"}
    assert first["remote"]["row"] == {"id": "1", "v": "remote"}
    assert first["remote"]["commit_lsn"] and first["remote"]["xid"]
    assert first["key"] == {"id": "1"}
    human = pgferry(dsn, "conflicts", "--since", "1h", "--subscription", "ferry")
    assert human.returncode == 0 and "insert_exists" in human.stdout, human
    assert "apply_remote: applied" in human.stdout
    assert (
        pgferry(dsn, "conflicts", "--since", "2000-01-01 00:00+00").stdout.count("insert_exists")
        == 1
    )
    assert pgferry(dsn, "conflicts", "--subscription", "other").stdout.strip() == "no conflicts"
    assert pgferry(dsn, "conflicts", "--since", "3000-01-01").stdout.strip() == "no conflicts"
    assert_clean_failure(pgferry(dsn, "conflicts", "--since", "yesterday-ish"), "--since")
    status = pgferry(dsn, "status", "--json")
    stats = json.loads(status.stdout)[0]["stats"]
    assert stats["confl_insert_exists"] == 1
    assert "insert_exists 1" in pgferry(dsn, "status").stdout


def test_table_resolution_is_set_checked_and_cleared(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    dsn = pair.cluster.dsn(pair.sub)
    ok = pgferry(
        dsn,
        "subscription",
        "alter",
        "ferry",
        "--table-resolution",
        "public.t=last_update_wins,delete_missing:error",
    )
    assert ok.returncode == 0, ok
    assert "conflict_resolution of public.t set to last_update_wins,delete_missing:error" in (
        ok.stdout
    )
    with pair.cluster.connect(pair.sub) as conn:
        assert conflict_log.table_resolutions(conn, "ferry") == {
            ("public", "t"): Resolution.parse("last_update_wins,delete_missing:error")
        }
    assert_clean_failure(
        pgferry(dsn, "subscription", "alter", "ferry", "--table-resolution", "t=newest"),
        "unknown resolution policy 'newest'",
    )
    assert_clean_failure(
        pgferry(dsn, "subscription", "alter", "ferry", "--table-resolution", "nope=skip"),
        "table public.nope is not part of subscription 'ferry'",
    )
    assert_clean_failure(
        pgferry(dsn, "subscription", "alter", "ferry", "--with", "conflict_resolution=x:skip"),
        "unknown conflict type 'x'",
    )
    cleared = pgferry(dsn, "subscription", "alter", "ferry", "--table-resolution", "t=default")
    assert cleared.returncode == 0 and "the subscription default" in cleared.stdout
    with pair.cluster.connect(pair.sub) as conn:
        assert conflict_log.table_resolutions(conn, "ferry") == {}
    sub = pgferry(dsn, "subscription", "alter", "ferry", "--with", "conflict_resolution=SKIP")
    assert sub.returncode == 0 and "conflict_resolution set to skip" in sub.stdout, sub
    assert (
        json.loads(pgferry(dsn, "subscription", "list", "--json").stdout)[0]["options"][
            "conflict_resolution"
        ]
        == "skip"
    )


def test_origin_none_with_copy_data_warns_about_replicated_publisher_tables(
    pair: Pair,
) -> None:
    # The publisher database itself subscribes to table t (from a third database).
    cluster = pair.cluster
    source = pair.sub + "_src"
    cluster.create_database(source)
    try:
        for db in (source, pair.pub):
            cluster.sql("CREATE TABLE t (id int PRIMARY KEY, v text)", dbname=db)
        cluster.sql("CREATE PUBLICATION src FOR TABLE t", dbname=source)
        cluster.sql("CREATE PUBLICATION pub FOR TABLE t", dbname=pair.pub)
        create_subscription(
            cluster.dsn(pair.pub), "pub_from_src", cluster.dsn(source), ["src"], ["enabled=false"]
        )
        cluster.sql("CREATE TABLE t (id int PRIMARY KEY, v text)", dbname=pair.sub)
        args = ["--connection", cluster.dsn(pair.pub), "--publication", "pub"]
        warned = pgferry(
            cluster.dsn(pair.sub),
            "subscription",
            "create",
            "warned",
            *args,
            "--with",
            "origin=none",
            "--with",
            "enabled=false",
        )
        assert warned.returncode == 0, warned
        assert "requested copy_data with origin = none" in warned.stderr
        assert "public.t" in warned.stderr
        quiet = pgferry(
            cluster.dsn(pair.sub),
            "subscription",
            "create",
            "quiet",
            *args,
            "--with",
            "origin=none",
            "--with",
            "copy_data=false",
            "--with",
            "enabled=false",
        )
        assert quiet.returncode == 0 and "origin" not in quiet.stderr, quiet
    finally:
        for sub_db, name in ((pair.sub, "warned"), (pair.sub, "quiet"), (pair.pub, "pub_from_src")):
            pgferry(cluster.dsn(sub_db), "subscription", "drop", name, "--if-exists")
        cluster.drop_database(source)
