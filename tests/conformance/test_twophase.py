"""After PostgreSQL's ``021_twophase.pl``: ``subscription wait`` while a prepared
transaction is pending on the publisher. It is not committed, so it is not waited
for: wait returns once every committed transaction is applied, and the prepared
one arrives at its COMMIT PREPARED."""

from __future__ import annotations

import pytest

from pgferry.status.wait import wait_ready
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.conformance.conftest import Ferry


@pytest.mark.pg_min(15)
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_wait_does_not_wait_for_a_pending_prepared_transaction(
    make_cluster: ClusterFactory, streamed: bool
) -> None:
    settings = {"max_prepared_transactions": "10", "logical_decoding_work_mem": "64kB"}
    ferry = Ferry(make_cluster(settings=settings), "postgres", make_cluster())
    ferry.sub.create_database("sub")
    schema = "CREATE TABLE t (id int PRIMARY KEY, v text)"
    ferry.on_pub(schema + "; CREATE PUBLICATION pub FOR TABLE t")
    ferry.on_sub(schema)
    ferry.subscribe("s", ["pub"], "two_phase=true", "copy_data=false", "streaming=on")
    rows = 5000 if streamed else 1  # past logical_decoding_work_mem: streamed
    count = "SELECT count(*) FROM t"
    with ferry.running():
        ferry.on_pub("INSERT INTO t VALUES (0, 'before')")
        ferry.wait_rows(count, [(1,)])
        with ferry.pub.connect() as conn:
            conn.execute(
                f"BEGIN; INSERT INTO t SELECT g, 'prepared' FROM generate_series(1, {rows}) g;"
                " PREPARE TRANSACTION 'p1'"
            )
        ferry.on_pub("INSERT INTO t VALUES (-1, 'after')")
        result = wait_ready(ferry.sub_dsn, "s", timeout=30)
        assert result.applied_lsn >= result.target_lsn
        assert ferry.on_sub("SELECT id FROM t ORDER BY id") == [(-1,), (0,)]
        ferry.on_pub("COMMIT PREPARED 'p1'")
        wait_ready(ferry.sub_dsn, "s", timeout=30)
        assert ferry.on_sub(count) == [(rows + 2,)]
