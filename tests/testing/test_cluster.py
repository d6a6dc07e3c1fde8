"""The shared per-major cluster: settings, connections, authentication, helpers."""

from __future__ import annotations

import os
import pwd
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgferry.testing import Cluster, PgInstall
from pgferry.testing.cluster import OS_USER


def show(cluster: Cluster, name: str) -> str:
    rows = cluster.sql(sql.SQL("SHOW {}").format(sql.Identifier(name)))
    return str(rows[0][0])


def test_replication_settings(cluster: Cluster, pg_install: PgInstall) -> None:
    assert show(cluster, "wal_level") == "logical"
    assert show(cluster, "track_commit_timestamp") == "on"
    assert show(cluster, "max_wal_senders") == "20"
    assert show(cluster, "max_replication_slots") == "20"
    assert show(cluster, "max_logical_replication_workers") == "8"
    assert show(cluster, "max_worker_processes") == "16"
    assert show(cluster, "fsync") == "off"
    assert show(cluster, "logging_collector") == "off"
    assert show(cluster, "listen_addresses") == "127.0.0.1"
    assert int(show(cluster, "server_version_num")) // 10000 == pg_install.major
    assert cluster.major == pg_install.major


def test_server_runs_as_unprivileged_user(cluster: Cluster) -> None:
    pid = cluster.pid()
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    real_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    expected = pwd.getpwnam(OS_USER).pw_uid if os.geteuid() == 0 else os.getuid()
    assert real_uid == expected
    assert real_uid != 0


def test_unix_socket_connection(cluster: Cluster) -> None:
    socket_file = Path(cluster.host) / f".s.PGSQL.{cluster.port}"
    assert socket_file.is_socket()
    assert len(os.fsencode(socket_file)) < 100
    assert Path(cluster.host).is_relative_to(cluster.path)
    with cluster.connect() as conn:
        # inet_server_addr() is NULL exactly when the connection is a unix socket.
        row = conn.execute("SELECT inet_server_addr(), current_user, current_database()").fetchone()
        assert row == (None, "postgres", "postgres")
        assert conn.autocommit


def test_tcp_connection(cluster: Cluster) -> None:
    with psycopg.connect(cluster.tcp_dsn()) as conn:
        row = conn.execute("SELECT host(inet_server_addr()), inet_server_port()").fetchone()
    assert row == ("127.0.0.1", cluster.port)


def test_password_role_over_tcp(cluster: Cluster) -> None:
    role = f"pw_{uuid.uuid4().hex[:8]}"
    secret = f"s3cret 'quoted' \\ {uuid.uuid4().hex}"  # quotes and a backslash
    wrong = secret + "x"
    cluster.sql(
        sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(secret)
        )
    )
    try:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(cluster.tcp_dsn(user=role, password=wrong)).close()
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(cluster.tcp_dsn(user=role)).close()
        dsn = cluster.tcp_dsn(user=role, password=secret)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        # The replication lines of pg_hba.conf ask for the password too.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                cluster.tcp_dsn(user=role, password=wrong) + " replication=database"
            ).close()
        with psycopg.connect(dsn + " replication=database", autocommit=True) as conn:
            system = conn.execute("IDENTIFY_SYSTEM").fetchone()
            assert system is not None and system[3] == "postgres"
        # Over the unix socket every role is trusted.
        with cluster.connect(user=role) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    finally:
        cluster.sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_dsn_quotes_weird_database_name(cluster: Cluster) -> None:
    name = 'we ird"db'
    cluster.drop_database(name)
    cluster.create_database(name)
    try:
        assert cluster.sql("SELECT current_database()", dbname=name) == [(name,)]
        app = "it's a \\ test"
        with psycopg.connect(cluster.dsn(name, application_name=app)) as conn:
            row = conn.execute("SELECT current_database(), current_setting('application_name')")
            assert row.fetchone() == (name, app)
        with psycopg.connect(cluster.tcp_dsn(name)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
        assert "application_name" not in cluster.dsn(name, application_name=None)
    finally:
        cluster.drop_database(name)
    assert cluster.sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) == []


def test_sql_returns_rows_or_nothing(cluster: Cluster, dbname: str) -> None:
    assert cluster.sql("CREATE TABLE t (id int PRIMARY KEY, v text)", dbname=dbname) == []
    cluster.sql("INSERT INTO t VALUES (1, 'a'); INSERT INTO t VALUES (2, 'b')", dbname=dbname)
    rows = cluster.sql("SELECT id, v FROM t WHERE id >= %s ORDER BY id", (1,), dbname=dbname)
    assert rows == [(1, "a"), (2, "b")]
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("t"))
    assert cluster.sql(query, dbname=dbname) == [(2,)]


def test_dbname_fixture_gives_fresh_database(cluster: Cluster, dbname: str) -> None:
    assert cluster.sql("SELECT current_database()", dbname=dbname) == [(dbname,)]
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert cluster.sql(tables, dbname=dbname) == [(0,)]


def test_drop_database_drops_slots_walsenders_and_subscriptions(cluster: Cluster) -> None:
    name = f"drop_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    cluster.sql("CREATE PUBLICATION pub FOR ALL TABLES", dbname=name)
    cluster.sql("SELECT pg_create_logical_replication_slot('idle_slot', 'pgoutput')", dbname=name)
    cluster.sql(
        sql.SQL(
            "CREATE SUBSCRIPTION sub CONNECTION {} PUBLICATION pub"
            " WITH (connect = false, slot_name = 'idle_slot')"
        ).format(sql.Literal(cluster.dsn(name))),
        dbname=name,
    )
    # A walsender streaming from a slot keeps it active until it is terminated.
    walsender = psycopg.connect(cluster.dsn(name, replication="database"), autocommit=True)
    walsender.execute("CREATE_REPLICATION_SLOT busy_slot LOGICAL pgoutput")
    walsender.execute(
        "START_REPLICATION SLOT busy_slot LOGICAL 0/0 (proto_version '1', publication_names 'pub')"
    )
    try:
        active = cluster.sql(
            "SELECT slot_name FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL",
            (name,),
        )
        assert active == [("busy_slot",)]
        cluster.drop_database(name)
    finally:
        walsender.close()
    assert cluster.sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) == []
    slots = "SELECT slot_name FROM pg_replication_slots WHERE database = %s"
    assert cluster.sql(slots, (name,)) == []
    assert cluster.sql("SELECT subname FROM pg_subscription WHERE subname = 'sub'") == []
    cluster.drop_database(name)  # absent: a no-op


def test_server_log_and_bin(cluster: Cluster) -> None:
    marker = f"marker_{uuid.uuid4().hex}"
    offset = cluster.log_size()
    with pytest.raises(psycopg.errors.UndefinedFunction):
        cluster.sql(sql.SQL("SELECT {}()").format(sql.Identifier(marker)))
    assert marker in cluster.server_log(offset=offset)
    assert marker not in cluster.server_log(offset=cluster.log_size())
    assert cluster.log_path == cluster.path / "server.log"
    assert cluster.data_dir == cluster.path / "data"
    assert (cluster.data_dir / "PG_VERSION").read_text().strip() == str(cluster.major)
    assert cluster.bin("postgres") == cluster.install.bindir / "postgres"
