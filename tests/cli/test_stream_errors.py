"""Bad input to ``pgferry stream``: one line saying what is wrong and what to do,
a non-zero exit, no traceback, and never the password."""

from __future__ import annotations

from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import StreamResult, create_slot, current_lsn, run_stream

PASSWORD = "s3cret-Pa55"  # noqa: S105 - a throwaway test role's password


def _assert_clean_failure(result: StreamResult, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.lines == []
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pgferry: error: ")
    assert len(lines) <= 2 and all(not line.startswith("hint:") for line in lines[:1])
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert PASSWORD not in result.stderr


def _publication(cluster: Cluster, dbname: str) -> None:
    cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t", dbname=dbname
    )


def test_wrong_password(cluster: Cluster, dbname: str) -> None:
    _publication(cluster, dbname)
    cluster.sql(f"CREATE ROLE ferry_pw LOGIN REPLICATION PASSWORD '{PASSWORD}'")
    try:
        dsn = cluster.tcp_dsn(dbname, user="ferry_pw", password=PASSWORD + "x")
        result = run_stream(dsn, "--slot", "s", "--publication", "pub", "--create-slot")
        _assert_clean_failure(result, "password authentication failed", "hint: check the password")
        # Right password: the same command works.
        good = cluster.tcp_dsn(dbname, user="ferry_pw", password=PASSWORD)
        ok = run_stream(
            good,
            "--slot",
            "s",
            "--publication",
            "pub",
            "--create-slot",
            "--temporary",
            "--end-lsn",
            "0/1",
        )
        assert ok.returncode == 0, ok.stderr
    finally:
        cluster.sql("DROP ROLE ferry_pw")


def test_unreachable_server(cluster: Cluster) -> None:
    dsn = f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} connect_timeout=3"
    result = run_stream(dsn, "--slot", "s", "--publication", "pub")
    _assert_clean_failure(result, "cannot connect", "port=1", "password=********")


def test_invalid_dsn() -> None:
    result = run_stream(
        f"host=x password={PASSWORD} bogus_key=1", "--slot", "s", "--publication", "p"
    )
    _assert_clean_failure(result, "invalid connection string")


def test_missing_slot(cluster: Cluster, dbname: str) -> None:
    _publication(cluster, dbname)
    result = run_stream(cluster.dsn(dbname), "--slot", "nope", "--publication", "pub")
    _assert_clean_failure(result, "replication slot 'nope' does not exist", "--create-slot")


def test_existing_slot_with_create_slot(cluster: Cluster, dbname: str) -> None:
    _publication(cluster, dbname)
    create_slot(cluster, dbname, "taken")
    result = run_stream(
        cluster.dsn(dbname), "--slot", "taken", "--publication", "pub", "--create-slot"
    )
    _assert_clean_failure(result, "'taken' already exists")


def test_missing_publication(cluster: Cluster, dbname: str) -> None:
    _publication(cluster, dbname)
    create_slot(cluster, dbname, "s")
    result = run_stream(
        cluster.dsn(dbname), "--slot", "s", "--publication", "pub", "--publication", "ghost"
    )
    _assert_clean_failure(result, "ghost", "do not exist")


def test_wal_level_not_logical(make_cluster: ClusterFactory) -> None:
    replica = make_cluster(settings={"wal_level": "replica", "max_wal_senders": "5"})
    result = run_stream(replica.dsn(), "--slot", "s", "--publication", "pub", "--create-slot")
    _assert_clean_failure(result, "wal_level", "hint: set wal_level = logical")


def test_role_without_replication(cluster: Cluster, dbname: str) -> None:
    _publication(cluster, dbname)
    cluster.sql(f"CREATE ROLE ferry_norepl LOGIN PASSWORD '{PASSWORD}'")
    try:
        dsn = cluster.tcp_dsn(dbname, user="ferry_norepl", password=PASSWORD)
        result = run_stream(dsn, "--slot", "s", "--publication", "pub", "--create-slot")
        _assert_clean_failure(result, "REPLICATION")
    finally:
        cluster.sql("DROP ROLE ferry_norepl")


def test_bad_lsn_option(cluster: Cluster, dbname: str) -> None:
    result = run_stream(cluster.dsn(dbname), "--slot", "s", "--publication", "p", "--start", "zz")
    assert result.returncode == 2 and "invalid LSN" in result.stderr
    assert "Traceback" not in result.stderr


def test_weird_publication_name_is_quoted(cluster: Cluster, dbname: str) -> None:
    cluster.sql(
        'CREATE TABLE "we ird"".""x" (id int PRIMARY KEY);'
        ' CREATE PUBLICATION "we ird"".""pub" FOR TABLE "we ird"".""x"',
        dbname=dbname,
    )
    create_slot(cluster, dbname, "weird_slot")
    cluster.sql('INSERT INTO "we ird"".""x" VALUES (1)', dbname=dbname)
    end = current_lsn(cluster, dbname)
    result = run_stream(
        cluster.dsn(dbname), "--slot", "weird_slot", "--publication", 'we ird"."pub', end_lsn=end
    )
    assert result.returncode == 0, result.stderr
    assert [(r["table"], r["new"]) for r in result.lines] == [('we ird"."x', {"id": "1"})]
