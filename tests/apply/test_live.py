"""Streamed transactions applied as they arrive (``streaming = parallel``, the
default; see :mod:`pgferry.apply.live`), on real PostgreSQL.

The walsender streams a transaction once it has decoded more than
``logical_decoding_work_mem`` of it: the tests set that to 64 kB. The worker runs
in a thread while the publisher's transaction is still open, so what the
subscriber holds before the commit can be looked at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgferry.apply.live import UNKNOWN_COMMIT
from pgferry.errors import ConflictError
from pgferry.protocol import Lsn
from tests.apply.pair import Pair, Running
from tests.support import current_lsn

TABLE = "CREATE TABLE big (id int PRIMARY KEY, v text);CREATE TABLE small (id int PRIMARY KEY)"


@pytest.fixture
def streams_early(pair: Pair) -> Iterator[None]:
    """The walsenders stream a transaction past 64 kB of changes."""
    cluster = pair.cluster
    cluster.sql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    cluster.sql("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        cluster.sql("ALTER SYSTEM RESET logical_decoding_work_mem")
        cluster.sql("SELECT pg_reload_conf()")


def wait_for(what: str, check: Callable[[], bool], failure: list[BaseException]) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if failure:
            raise failure[0]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def side_holds_big(pair: Pair) -> bool:
    """A subscriber session holds a write lock on ``big``: its rows are being
    applied in a transaction not committed yet."""
    rows = pair.rows(
        "SELECT count(*) FROM pg_catalog.pg_locks"
        " WHERE relation = 'public.big'::regclass AND mode = 'RowExclusiveLock' AND granted"
    )
    return bool(rows[0][0])


def stream_in(pair: Pair, run: Running, publisher: psycopg.Connection[Any]) -> None:
    """Insert 20,000 rows in the publisher's open transaction, and wait until the
    subscriber applies them, before the commit."""
    publisher.execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    wait_for("the side session's lock", lambda: side_holds_big(pair), run.failure)


def same_rows(pair: Pair, query: str) -> None:
    assert pair.rows(query) == pair.cluster.sql(query, dbname=pair.pub)


def test_a_streamed_transaction_is_applied_while_it_is_open(
    pair: Pair, streams_early: None
) -> None:
    pair.publish(TABLE, ["big", "small"])
    publisher = pair.cluster.connect(pair.pub, autocommit=False)
    try:
        with pair.running() as run:
            stream_in(pair, run, publisher)
            assert pair.rows("SELECT count(*) FROM big") == [(0,)]
            # A transaction committed meanwhile goes on through the main session.
            pair.cluster.sql("INSERT INTO small VALUES (1)", dbname=pair.pub)
            wait_for(
                "the interleaved commit",
                lambda: pair.rows("SELECT count(*) FROM small") == [(1,)],
                run.failure,
            )
            publisher.execute("UPDATE big SET v = 'u' WHERE id % 3 = 0")
            publisher.execute("DELETE FROM big WHERE id % 5 = 0")
            publisher.execute("INSERT INTO small VALUES (2)")
            publisher.commit()
            target = current_lsn(pair.cluster, pair.pub)
            wait_for("the commit", lambda: pair.caught_up(target), run.failure)
            same_rows(pair, "SELECT * FROM big ORDER BY id")
            same_rows(pair, "SELECT * FROM small ORDER BY id")
        assert run.worker.live_applied == 1
        # One local transaction for the streamed one, with the origin.
        assert len(pair.rows("SELECT DISTINCT xmin::text FROM big")) == 1
    finally:
        publisher.close()


def test_subtransaction_aborts_and_a_rolled_back_stream(pair: Pair, streams_early: None) -> None:
    pair.publish(TABLE, ["big", "small"])
    fill = "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(%s::int, %s::int) g"
    with (
        pair.running() as run,
        pair.cluster.connect(pair.pub, autocommit=False) as publisher,
    ):
        publisher.execute(fill, (1, 5000))
        publisher.execute("SAVEPOINT a")
        publisher.execute(fill, (5001, 10000))
        publisher.execute("UPDATE big SET v = 'gone' WHERE id < 100")
        publisher.execute("SAVEPOINT a2")
        publisher.execute(fill, (10001, 12000))
        publisher.execute("ROLLBACK TO SAVEPOINT a")
        publisher.execute(fill, (20001, 25000))
        publisher.execute("SAVEPOINT b")
        publisher.execute("DELETE FROM big WHERE id < 50")
        publisher.execute("RELEASE SAVEPOINT b")
        publisher.execute("SAVEPOINT c")
        publisher.execute("UPDATE big SET v = 'c' WHERE id > 24000")
        publisher.execute("ROLLBACK TO SAVEPOINT c")
        publisher.commit()
        # A whole streamed transaction rolled back.
        publisher.execute(fill, (30001, 40000))
        publisher.rollback()
        publisher.execute("INSERT INTO small VALUES (1)")
        publisher.commit()
        target = current_lsn(pair.cluster, pair.pub)
        wait_for("the commits", lambda: pair.caught_up(target), run.failure)
        same_rows(pair, "SELECT * FROM big ORDER BY id")
        same_rows(pair, "SELECT * FROM small")
    assert pair.rows("SELECT count(*), min(id), max(id) FROM big") == [(9951, 50, 25000)]
    assert run.worker.live_applied == 1


def test_a_worker_stopped_mid_stream_gets_it_again(pair: Pair, streams_early: None) -> None:
    pair.publish(TABLE, ["big", "small"])
    publisher = pair.cluster.connect(pair.pub, autocommit=False)
    try:
        with pair.running() as run:
            stream_in(pair, run, publisher)
        # Stopped: what it applied of the open transaction is rolled back.
        assert not side_holds_big(pair)
        assert pair.rows("SELECT count(*) FROM big") == [(0,)]
        publisher.execute("UPDATE big SET v = 'again' WHERE id <= 10")
        publisher.commit()
        worker = pair.sync(timeout=60)
        same_rows(pair, "SELECT * FROM big ORDER BY id")
        assert worker.live_applied == 1
    finally:
        publisher.close()


def test_a_conflict_sends_the_transaction_to_its_commit(pair: Pair, streams_early: None) -> None:
    """A conflict met while streaming is decided and reported with the commit's
    LSN: the transaction is applied again at its commit (from the spool)."""
    pair.publish(TABLE, ["big", "small"])
    pair.cluster.sql("INSERT INTO big VALUES (7, 'local')", dbname=pair.sub)
    before = current_lsn(pair.cluster, pair.pub)
    pair.cluster.sql(
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
        dbname=pair.pub,
    )
    after = current_lsn(pair.cluster, pair.pub)
    with pytest.raises(ConflictError) as raised:
        pair.sync(timeout=60)
    assert raised.value.conflict_type == "insert_exists"
    finish = Lsn.parse(str(raised.value.finish_lsn))
    assert finish != UNKNOWN_COMMIT and before < finish < after
    assert pair.rows("SELECT count(*) FROM big") == [(1,)]


def test_the_main_session_does_not_wait_for_the_side_one(pair: Pair, streams_early: None) -> None:
    """Where the subscriber differs (a unique index of its own), a transaction
    committed while another streams can wait for the streamed one's row: the wait
    is cut short and the streamed transaction applied at its commit, in order."""
    pair.publish(TABLE, ["big", "small"])
    pair.cluster.sql("CREATE UNIQUE INDEX big_v ON big (v)", dbname=pair.sub)
    publisher = pair.cluster.connect(pair.pub, autocommit=False)
    try:
        with pair.running() as run:
            publisher.execute("INSERT INTO big VALUES (0, 'same')")
            stream_in(pair, run, publisher)
            # Committed first on the publisher: it must win the value.
            pair.cluster.sql("INSERT INTO big VALUES (-1, 'same')", dbname=pair.pub)
            publisher.commit()

            def stopped() -> bool:
                return bool(run.failure)

            wait_for("the conflict", stopped, [])
        assert isinstance(run.failure[0], ConflictError)
        # The streamed transaction met the row of the one committed before it.
        assert run.failure[0].conflict_type == "insert_exists"
        assert pair.rows("SELECT id FROM big") == [(-1,)]
        assert run.worker.live_applied == 0
    finally:
        publisher.close()
