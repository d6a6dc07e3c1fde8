"""The counters the catalog keeps for the metrics endpoint, against a running
subscription: transactions and rows applied (exact once the worker wrote them,
kept across a worker's restart and ``pgferry run``'s), conflicts by type and
resolution, and worker restarts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import sql

from pgferry.testing import Cluster
from tests.conformance.conftest import Ferry
from tests.metrics.conftest import Samples, exporting, value, wait_scrape
from tests.support import subscriber_database, wait_for

SUB = "counters_sub"
#: Row changes of each transaction of :func:`_transactions`.
ROWS = 5


@pytest.fixture
def ferry(cluster: Cluster, dbname: str) -> Iterator[Ferry]:
    """A publisher database and a subscriber database, both on the shared cluster."""
    with subscriber_database(cluster, dbname) as sub_db:
        yield Ferry(cluster, dbname, cluster, sub_db)


def _publish(ferry: Ferry) -> None:
    """Table ``t`` on both sides, publication ``p`` of it, and a small
    logical_decoding_work_mem, so that a transaction of a few thousand rows is
    streamed while in progress."""
    ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)"
    ferry.on_pub(ddl)
    ferry.on_sub(ddl)
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE t")
    ferry.pub.sql(
        sql.SQL("ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'").format(
            sql.Identifier(ferry.pub_db)
        ),
        dbname=ferry.pub_db,
    )


def _transactions(ferry: Ferry, first: int, number: int) -> None:
    """``number`` transactions of :data:`ROWS` row changes each: three inserts, an
    update and a delete."""
    for i in range(first, first + number):
        base = 10 * i
        ferry.on_pub(
            "BEGIN;"
            f" INSERT INTO t VALUES ({base + 1}, 'a'), ({base + 2}, 'a'), ({base + 3}, 'a');"
            f" UPDATE t SET v = 'b' WHERE id = {base + 1};"
            f" DELETE FROM t WHERE id = {base + 2};"
            " COMMIT"
        )


def _applied(transactions: int) -> object:
    def check(s: Samples) -> bool:
        return (
            value(s, "pgferry_transactions_applied_total", subscription=SUB) == transactions
            and value(s, "pgferry_rows_applied_total", subscription=SUB) == transactions * ROWS
        )

    return check


def test_applied_conflict_and_restart_counters(ferry: Ferry) -> None:
    _publish(ferry)
    ferry.subscribe(SUB, ["p"], "copy_data=false")
    with exporting(ferry) as (_, server):
        s = wait_scrape(
            server,
            lambda s: value(s, "pgferry_transactions_applied_total", subscription=SUB) == 0,
            "the counters at 0",
        )
        assert value(s, "pgferry_rows_applied_total", subscription=SUB) == 0
        assert value(s, "pgferry_worker_restarts_total", subscription=SUB, kind="apply") is None
        _transactions(ferry, 0, 7)
        wait_scrape(server, _applied(7), "7 transactions of 5 rows applied")

        # A row that exists already: the worker stops on insert_exists, and is
        # restarted until the row is gone.
        ferry.on_sub("INSERT INTO t VALUES (1000, 'local')")
        ferry.on_pub("INSERT INTO t VALUES (1000, 'remote')")
        s = wait_scrape(
            server,
            lambda s: (
                (value(s, "pgferry_worker_restarts_total", subscription=SUB, kind="apply") or 0)
                >= 2
            ),
            "the apply worker restarted twice",
        )
        ferry.on_sub("DELETE FROM t WHERE id = 1000")
        s = wait_scrape(
            server,
            lambda s: value(s, "pgferry_transactions_applied_total", subscription=SUB) == 8,
            "the transaction applied at last",
        )
        assert value(s, "pgferry_rows_applied_total", subscription=SUB) == 7 * ROWS + 1
        # An update of a row the subscriber lacks: update_missing, skipped.
        ferry.on_sub("DELETE FROM t WHERE id = 11")
        ferry.on_pub("UPDATE t SET v = 'c' WHERE id = 11")
        s = wait_scrape(
            server,
            lambda s: value(s, "pgferry_transactions_applied_total", subscription=SUB) == 9,
            "the update applied (skipped)",
        )
        # (The row changes of the applied transactions, those a conflict skipped too.)
        assert value(s, "pgferry_rows_applied_total", subscription=SUB) == 7 * ROWS + 2
        # By type and resolution, as the conflict log has them: each conflict once.
        logged = ferry.on_sub(
            "SELECT conflict_type, resolution, count(*) FROM pgferry.conflict GROUP BY 1, 2"
        )
        assert {t for t, _, _ in logged} == {"insert_exists", "update_missing"}
        for ctype, resolution, count in logged:
            assert count == 1
            assert (
                value(
                    s,
                    "pgferry_conflict_resolutions_total",
                    subscription=SUB,
                    type=ctype,
                    resolution=resolution,
                )
                == count
            )
        restarts = value(s, "pgferry_worker_restarts_total", subscription=SUB, kind="apply")
        assert restarts is not None and restarts >= 2

    # pgferry run stopped and started again: the counters go on from where they were.
    with exporting(ferry) as (_, server):
        s = wait_scrape(
            server,
            lambda s: value(s, "pgferry_transactions_applied_total", subscription=SUB) == 9,
            "the counters kept",
        )
        assert value(s, "pgferry_worker_restarts_total", subscription=SUB, kind="apply") == restarts
        _transactions(ferry, 100, 2)
        s = wait_scrape(
            server,
            lambda s: value(s, "pgferry_transactions_applied_total", subscription=SUB) == 11,
            "two more transactions",
        )
        assert value(s, "pgferry_rows_applied_total", subscription=SUB) == 9 * ROWS + 2
        # A transaction large enough to be streamed (applied as it arrives, on
        # the worker's second session): one transaction, all its rows.
        ferry.on_pub(
            "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(10000, 12999) g"
        )
        s = wait_scrape(
            server,
            lambda s: value(s, "pgferry_transactions_applied_total", subscription=SUB) == 12,
            "the streamed transaction",
        )
        assert value(s, "pgferry_rows_applied_total", subscription=SUB) == 9 * ROWS + 2 + 3000
        slot = ferry.subscription(SUB).slot_name
        wait_for(
            lambda: (
                ferry.on_pub(
                    "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
                == [(1,)]
            ),
            "the publisher's count of streamed transactions",
        )


def test_spool_bytes_while_a_streamed_transaction_waits(ferry: Ferry) -> None:
    """``streaming=on`` spools a streamed transaction until its commit: the gauge
    shows the spooled bytes while it is open on the publisher, 0 once applied."""
    name = "spool_sub"
    _publish(ferry)
    ferry.subscribe(name, ["p"], "copy_data=false", "streaming=on")
    with exporting(ferry) as (_, server), ferry.pub.connect(ferry.pub_db) as open_tx:
        wait_scrape(
            server,
            lambda s: value(s, "pgferry_spool_bytes", subscription=name) == 0,
            "an empty spool reported",
        )
        open_tx.execute("BEGIN")
        open_tx.execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g")
        wait_scrape(
            server,
            lambda s: (value(s, "pgferry_spool_bytes", subscription=name) or 0) > 3000 * 100,
            "the open streamed transaction's changes spooled",
        )
        assert ferry.on_sub("SELECT count(*) FROM t") == [(0,)]
        open_tx.execute("COMMIT")
        ferry.wait_rows("SELECT count(*) FROM t", [(3000,)])
        wait_scrape(
            server,
            lambda s: value(s, "pgferry_spool_bytes", subscription=name) == 0,
            "the spool emptied by the commit",
        )
