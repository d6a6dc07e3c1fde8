"""pgbench (scale 10, 4 clients, 60 s) under replication by ``pgferry run``: after
the initial copy and the load, the subscriber holds exactly the publisher's rows."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from pgferry.catalog import handover
from pgferry.errors import PgferryError
from pgferry.protocol import Lsn
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import PGFERRY

TABLES = {
    "pgbench_accounts": "aid",
    "pgbench_branches": "bid",
    "pgbench_tellers": "tid",
    "pgbench_history": "tid, bid, aid, delta, mtime",
}
SECONDS = int(os.environ.get("PGFERRY_PGBENCH_SECONDS", "60"))


def _pgbench(cluster: Cluster, db: str, *args: str) -> str:
    proc = subprocess.run(
        [
            str(cluster.bin("pgbench")),
            "-h",
            cluster.host,
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            *args,
            db,
        ],
        check=True,
        capture_output=True,
    )
    return proc.stdout.decode()


def _checksum(cluster: Cluster, db: str, table: str) -> str:
    rows = cluster.sql(
        f"SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|'"
        f" ORDER BY {TABLES[table]}), '')) FROM {table} t",
        dbname=db,
    )
    return str(rows[0][0])


def test_pgbench_under_replication_ends_identical(
    cluster: Cluster, dbname: str, make_cluster: ClusterFactory
) -> None:
    try:
        cluster.bin("pgbench")
    except PgferryError:
        pytest.skip("no pgbench in this PostgreSQL installation")
    _pgbench(cluster, dbname, "-i", "-q", "-s", "10")
    cluster.sql("CREATE PUBLICATION pub FOR TABLE " + ", ".join(TABLES), dbname=dbname)
    subscriber = make_cluster()
    _pgbench(subscriber, "postgres", "-i", "-I", "dtp")
    create_subscription(subscriber.dsn(), "bench", cluster.dsn(dbname), ["pub"])
    launcher = subprocess.Popen(
        [*PGFERRY, "-d", subscriber.dsn(), "run"],
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PGFERRY_LOG_LEVEL": "WARNING"},
    )
    try:
        out = _pgbench(cluster, dbname, "-n", "-c", "4", "-j", "2", "-T", str(SECONDS))
        assert "number of failed transactions: 0" in out or "failed" not in out
        target = Lsn.parse(str(cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0]))
        deadline = time.monotonic() + 600
        while True:
            with subscriber.connect() as conn:
                ready = all(s.state == "r" for s in handover.states(conn, "bench").values())
            confirmed = cluster.sql(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                " WHERE slot_name = 'bench'",
                dbname=dbname,
            )[0][0]
            if ready and confirmed and Lsn.parse(str(confirmed)) >= target:
                break
            assert time.monotonic() < deadline, "the subscriber did not catch up in 10 min"
            time.sleep(1)
        for table in TABLES:
            assert _checksum(subscriber, "postgres", table) == _checksum(cluster, dbname, table), (
                table
            )
        history = subscriber.sql("SELECT count(*) FROM pgbench_history")[0][0]
        assert history > 1000  # the load really ran and was replicated
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
