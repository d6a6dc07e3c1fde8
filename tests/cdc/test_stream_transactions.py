"""Streamed (in-progress) and two-phase transactions through ``pgferry stream``:
each is emitted once, after its commit, or not at all when it aborts."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from pgferry.protocol import Lsn, StreamAbort, StreamCommit, StreamStart
from pgferry.stream import PgoutputOptions
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import collect, create_slot, current_lsn, run_stream

# Small decoding memory so that these transactions are streamed before commit.
SMALL_MEMORY = "-c logical_decoding_work_mem=64kB"

BIG_TRANSACTION = """
BEGIN;
INSERT INTO big SELECT g, 'first' FROM generate_series(1, 100000) g;
SAVEPOINT s1;
INSERT INTO big SELECT g, 'rolled back' FROM generate_series(100001, 150000) g;
SAVEPOINT s1_inner;
UPDATE big SET v = 'rolled back too' WHERE id <= 1000;
ROLLBACK TO SAVEPOINT s1;
SAVEPOINT s2;
INSERT INTO big SELECT g, 'kept' FROM generate_series(150001, 250000) g;
RELEASE SAVEPOINT s2;
DELETE FROM big WHERE id BETWEEN 1 AND 10;
COMMIT;
"""


def _slot_stream_txns(cluster: Cluster, dbname: str, slot: str) -> int:
    """pg_stat_replication_slots.stream_txns, which is reported asynchronously."""
    deadline = time.monotonic() + 15
    value = 0
    while time.monotonic() < deadline:
        rows = cluster.sql(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s",
            (slot,),
            dbname=dbname,
        )
        value = int(rows[0][0]) if rows else 0
        if value > 0:
            break
        time.sleep(0.3)
    return value


def test_large_streamed_transaction_with_savepoints(cluster: Cluster, dbname: str) -> None:
    if cluster.major < 14:
        pytest.skip("streaming of in-progress transactions needs PostgreSQL 14")
    cluster.sql(
        "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE big",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    with cluster.connect(dbname) as conn:
        conn.execute(BIG_TRANSACTION)
        # A streamed transaction that aborts as a whole emits nothing.
        conn.execute(
            "BEGIN; INSERT INTO big SELECT g, 'aborted' FROM generate_series(300001, 340000) g;"
            " ROLLBACK;"
        )
        conn.execute("INSERT INTO big VALUES (0, 'after')")
    end = current_lsn(cluster, dbname)
    dsn = cluster.dsn(dbname, options=SMALL_MEMORY)
    result = run_stream(
        dsn, "--slot", "s", "--publication", "pub", "--streaming", "on", end_lsn=end, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert _slot_stream_txns(cluster, dbname, "s") >= 1, "the transaction was not streamed"

    ops = Counter((line["op"], line["new"]["v"] if line["new"] else None) for line in result.lines)
    assert ops == {
        ("insert", "first"): 100000,
        ("insert", "kept"): 100000,
        ("delete", None): 10,
        ("insert", "after"): 1,
    }
    inserted = [int(line["new"]["id"]) for line in result.lines if line["op"] == "insert"]
    assert sorted(inserted[:-1]) == list(range(1, 100001)) + list(range(150001, 250001))
    big_xids = {line["xid"] for line in result.lines[:-1]}
    assert len(big_xids) == 1
    # Emitted in commit order: the big transaction before the later small one.
    assert result.lines[-1]["new"] == {"id": "0", "v": "after"}
    assert Lsn.parse(result.lines[-1]["lsn"]) > Lsn.parse(result.lines[0]["lsn"])


def test_streamed_messages_arrive_in_chunks_with_subtransaction_aborts(
    cluster: Cluster, dbname: str
) -> None:
    """The decoder sees the real streaming protocol (not just the CLI's result)."""
    if cluster.major < 14:
        pytest.skip("streaming of in-progress transactions needs PostgreSQL 14")
    cluster.sql(
        "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE big",
        dbname=dbname,
    )
    create_slot(cluster, dbname, "s")
    cluster.sql(BIG_TRANSACTION, dbname=dbname)
    end = current_lsn(cluster, dbname)
    messages = collect(
        cluster.dsn(dbname),
        "s",
        PgoutputOptions(("pub",), streaming="on"),
        end,
        dsn_options=SMALL_MEMORY,
        timeout=300,
    )
    starts = [m for m in messages if isinstance(m, StreamStart)]
    aborts = [m for m in messages if isinstance(m, StreamAbort)]
    commits = [m for m in messages if isinstance(m, StreamCommit)]
    assert len(starts) > 1 and starts[0].first_segment and not starts[1].first_segment
    assert len(commits) == 1 and commits[0].xid == starts[0].xid
    # ROLLBACK TO s1 aborts s1's subtransaction (and the nested one) by xid.
    assert aborts and all(a.xid == starts[0].xid and a.subxid != a.xid for a in aborts)


def test_two_phase_emitted_once_after_commit_prepared(make_cluster: ClusterFactory) -> None:
    publisher = make_cluster(settings={"max_prepared_transactions": "10"})
    if publisher.major < 15:
        pytest.skip("two-phase pgoutput needs PostgreSQL 15")
    db = "postgres"
    publisher.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t", dbname=db
    )
    create_slot(publisher, db, "s")
    dsn = publisher.dsn(db)
    args = ("--slot", "s", "--publication", "pub", "--two-phase", "--with-tx")
    with publisher.connect(db) as conn:
        conn.execute("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'g1'")
        conn.execute("BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'g2'")
        conn.execute("INSERT INTO t VALUES (3)")
    # Stop while g1 and g2 are only prepared: only the plain transaction is emitted,
    # and the slot stays before the prepares so that the next run gets them again.
    end = current_lsn(publisher, db)
    first = run_stream(dsn, *args, end_lsn=end)
    assert first.returncode == 0, first.stderr
    assert [line["new"]["id"] for line in first.lines if line["op"] == "insert"] == ["3"]
    confirmed = publisher.sql(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'"
    )[0][0]
    # g1 and g2 were prepared before 3 committed: confirming 3 would lose them.
    commit_of_3 = Lsn.parse(first.lines[-1]["lsn"])
    assert Lsn.parse(str(confirmed)) < commit_of_3

    with publisher.connect(db) as conn:
        conn.execute("COMMIT PREPARED 'g1'")
        conn.execute("ROLLBACK PREPARED 'g2'")
        conn.execute("INSERT INTO t VALUES (4)")
    end = current_lsn(publisher, db)
    second = run_stream(dsn, *args, end_lsn=end)
    assert second.returncode == 0, second.stderr
    inserts = [line for line in second.lines if line["op"] == "insert"]
    ids = [line["new"]["id"] for line in inserts]
    # g1 once (its changes were replayed at COMMIT PREPARED), g2 never; 3 may come
    # again (at-least-once after the held-back confirmation), 4 once.
    assert ids.count("1") == 1 and "2" not in ids and ids.count("4") == 1
    begin_g1 = next(line for line in second.lines if line["op"] == "begin" and "gid" in line)
    assert begin_g1["gid"] == "g1"
    g1_insert = next(line for line in inserts if line["new"]["id"] == "1")
    assert g1_insert["xid"] == begin_g1["xid"]
    # The commit LSN reported is COMMIT PREPARED's, after the plain insert of 3.
    assert Lsn.parse(g1_insert["lsn"]) > Lsn.parse(first.lines[-1]["lsn"])
