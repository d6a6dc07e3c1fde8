"""The COPY relay of the table sync (pgferry.sync.relay), in C and in Python, on
real PostgreSQL: every byte arrives, and a failure on either side is reported as
that side's error with both sessions left usable."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from pgferry._cmodule import SPEEDUPS
from pgferry.sync.relay import c_relay_available, relay
from pgferry.testing import Cluster

SOURCE = sql.SQL("COPY (SELECT id, v FROM src ORDER BY id) TO STDOUT")
TARGET = sql.SQL("COPY dst (id, v) FROM STDIN")


@pytest.fixture(params=["c", "python"])
def use_c(request: pytest.FixtureRequest) -> bool:
    if request.param == "c" and not c_relay_available():
        pytest.skip("the C relay is not available here")
    return bool(request.param == "c")


@pytest.fixture
def sessions(cluster: Cluster, dbname: str) -> Iterator[tuple[psycopg.Connection[Any], ...]]:
    target_db = f"{dbname}_t"
    cluster.create_database(target_db)
    remote = cluster.connect(dbname, autocommit=True)
    local = cluster.connect(target_db, autocommit=True)
    try:
        yield remote, local
    finally:
        remote.close()
        local.close()
        cluster.drop_database(target_db)


def test_the_c_relay_is_used_where_it_can_be() -> None:
    # Otherwise the "c" cases are skipped and nothing checks the C loop.
    if SPEEDUPS is None or not sys.platform.startswith("linux"):
        pytest.skip("no C module, or not Linux")
    assert c_relay_available()


def test_every_byte_arrives(sessions: tuple[psycopg.Connection[Any], ...], use_c: bool) -> None:
    remote, local = sessions
    remote.execute("CREATE TABLE src (id int PRIMARY KEY, v text)")
    remote.execute(
        "INSERT INTO src SELECT g, CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN 'tab\tnl\ncr\r'"
        " WHEN 2 THEN 'back\\slash \\N' WHEN 3 THEN 'ünï ☃ ' || g ELSE repeat('x', g % 300) END"
        " FROM generate_series(1, 30000) g"
    )
    # Rows longer than the 64 kB chunk, and one just under it.
    remote.execute("INSERT INTO src VALUES (-1, repeat('L', 200000)), (-2, repeat('m', 65530))")
    local.execute("CREATE TABLE dst (id int PRIMARY KEY, v text)")
    local.execute("BEGIN")
    remote.execute("BEGIN")
    rows = relay(remote, local, SOURCE, TARGET, use_c=use_c)
    remote.execute("COMMIT")
    local.execute("COMMIT")
    assert rows == 30002
    query = "SELECT id, v FROM {} ORDER BY id"
    expected = remote.execute(query.format("src")).fetchall()
    assert local.execute(query.format("dst")).fetchall() == expected


def test_a_source_failure_is_the_source_error(
    sessions: tuple[psycopg.Connection[Any], ...], use_c: bool
) -> None:
    remote, local = sessions
    remote.execute("CREATE TABLE src (id int PRIMARY KEY, v text)")
    remote.execute("INSERT INTO src SELECT g, 'v' FROM generate_series(1, 50000) g")
    local.execute("CREATE TABLE dst (id int PRIMARY KEY, v text)")
    local.execute("BEGIN")
    # Fails after some 40000 rows have gone through.
    failing = sql.SQL("COPY (SELECT id, (1 / (40000 - id))::text FROM src ORDER BY id) TO STDOUT")
    with pytest.raises(errors.DivisionByZero):
        relay(remote, local, failing, TARGET, use_c=use_c)
    local.execute("ROLLBACK")
    assert local.execute("SELECT count(*) FROM dst").fetchone() == (0,)
    assert remote.execute("SELECT count(*) FROM src").fetchone() == (50000,)


def test_a_target_failure_is_the_target_error(
    sessions: tuple[psycopg.Connection[Any], ...], use_c: bool
) -> None:
    remote, local = sessions
    remote.execute("CREATE TABLE src (id int PRIMARY KEY, v text)")
    remote.execute("INSERT INTO src SELECT g, 'v' || g FROM generate_series(1, 200000) g")
    local.execute("CREATE TABLE dst (id int PRIMARY KEY, v text)")
    local.execute("INSERT INTO dst VALUES (10, 'already there')")
    local.execute("BEGIN")
    remote.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(errors.UniqueViolation):
        relay(remote, local, SOURCE, TARGET, use_c=use_c)
    local.execute("ROLLBACK")
    remote.execute("ROLLBACK")
    assert local.execute("SELECT id, v FROM dst").fetchall() == [(10, "already there")]
    assert remote.execute("SELECT count(*) FROM src").fetchone() == (200000,)


def test_a_target_that_cannot_start_leaves_the_source_alone(
    sessions: tuple[psycopg.Connection[Any], ...], use_c: bool
) -> None:
    remote, local = sessions
    remote.execute("CREATE TABLE src (id int PRIMARY KEY, v text)")
    with pytest.raises(errors.UndefinedTable):
        relay(remote, local, SOURCE, TARGET, use_c=use_c)
    assert remote.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert remote.execute("SELECT 1").fetchone() == (1,)
    assert local.execute("SELECT 1").fetchone() == (1,)


def test_a_source_that_cannot_start_ends_the_target(
    sessions: tuple[psycopg.Connection[Any], ...], use_c: bool
) -> None:
    remote, local = sessions
    local.execute("CREATE TABLE dst (id int PRIMARY KEY, v text)")
    with pytest.raises(errors.UndefinedTable):
        relay(remote, local, SOURCE, TARGET, use_c=use_c)
    assert local.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert local.execute("SELECT count(*) FROM dst").fetchone() == (0,)


def test_a_target_lost_midway_stops_the_source(
    sessions: tuple[psycopg.Connection[Any], ...], cluster: Cluster, use_c: bool
) -> None:
    remote, local = sessions
    local.execute("CREATE TABLE dst (id int PRIMARY KEY, v text)")
    pid = local.info.backend_pid
    # 100M rows, produced as they go (a single generate_series is materialized
    # before the first row).
    endless = sql.SQL(
        "COPY (SELECT a * 10000 + b, repeat('x', 200) FROM generate_series(1, 10000) a,"
        " generate_series(1, 10000) b) TO STDOUT"
    )
    killer = threading.Timer(0.5, lambda: cluster.sql("SELECT pg_terminate_backend(%s)", (pid,)))
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(psycopg.DatabaseError, match="server closed the connection"):
            relay(remote, local, endless, TARGET, use_c=use_c)
    finally:
        killer.join()
    # The source was cancelled, not read to its end (minutes), and can go on.
    assert time.monotonic() - started < 20
    assert remote.execute("SELECT 1").fetchone() == (1,)
