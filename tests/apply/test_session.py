"""The apply session (:mod:`pgferry.apply.session`) against a real subscriber."""

from __future__ import annotations

import threading

import psycopg
import pytest

from pgferry import origins
from pgferry.apply import session
from pgferry.protocol import Lsn
from tests.apply.pair import Pair


def test_session_setup_waits_for_an_exiting_holder_of_the_origin(pair: Pair) -> None:
    """A worker that just stopped may hold the replication origin while its backend
    exits; the next worker's session waits for it instead of failing."""
    holder = pair.cluster.connect(pair.sub, autocommit=True)
    session.prepare(holder, "pgferry_wait_test", "off")
    timer = threading.Timer(0.3, holder.close)
    timer.start()
    try:
        with pair.cluster.connect(pair.sub, autocommit=True) as conn:
            session.prepare(conn, "pgferry_wait_test", "off")
            row = conn.execute("SELECT pg_catalog.pg_replication_origin_session_is_setup()")
            assert row.fetchone() == (True,)
            conn.execute("SELECT pg_catalog.pg_replication_origin_session_reset()")
            conn.execute("SELECT pg_catalog.pg_replication_origin_drop('pgferry_wait_test')")
    finally:
        timer.join()


def test_an_origin_moved_by_an_aborted_commit_is_put_back(pair: Pair) -> None:
    """A transaction that aborts after ``pg_replication_origin_xact_setup`` may
    move the origin too (here, from PostgreSQL 16: the server ends the session
    between the setup and the COMMIT, as a fast shutdown does). The next session
    starts from the last commit, not past the lost transaction."""
    pair.publish("CREATE TABLE t (id int)", ["t"])
    origin = "pgferry_abort_test"
    with pair.cluster.connect(pair.sub, autocommit=True) as conn:
        assert session.prepare(conn, origin, "off") == Lsn(0)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO public.t VALUES (1)")
        conn.execute(origins.commit_with_origin(Lsn.parse("0/100"), "2026-01-01", origin))
        conn.execute("BEGIN")
        conn.execute("INSERT INTO public.t VALUES (2)")
        conn.execute("SELECT pg_replication_origin_xact_setup('0/200', '2026-01-02')")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        pair.rows(f"SELECT pg_terminate_backend({pid[0]})")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    moved = pair.rows(f"SELECT pg_replication_origin_progress('{origin}', false)::text")[0][0]
    assert moved == ("0/200" if pair.cluster.major >= 16 else "0/100")
    try:
        with pair.cluster.connect(pair.sub, autocommit=True) as conn:
            assert session.prepare(conn, origin, "off") == Lsn.parse("0/100")
            assert origins.progress(conn, origin) == Lsn.parse("0/100")
            origins.release(conn)
        assert pair.rows("SELECT id FROM t") == [(1,)]
    finally:
        pair.rows(f"SELECT pg_replication_origin_drop('{origin}')")
