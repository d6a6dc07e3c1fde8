"""The apply worker's behaviour per change and on errors, on real PostgreSQL.

Publisher and subscriber are two databases of one cluster (seed practice 1: a
same-cluster subscription); the worker runs in a thread until the subscriber's
origin has caught up with the publisher or the worker fails.
"""

from __future__ import annotations

import threading

import pytest

from pgferry.apply import writer as writer_module
from pgferry.catalog import Subscription, SubscriptionTable, TableState, ensure_catalog, store
from pgferry.errors import ApplyError, ConflictError
from pgferry.protocol import Lsn
from tests.apply.pair import Pair
from tests.support import create_slot, current_lsn


def test_duplicate_key_is_a_clear_error_then_fixing_the_data_resumes(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    pair.rows("INSERT INTO t VALUES (1, 'local')")
    pair.cluster.sql("INSERT INTO t VALUES (1, 'remote'), (2, 'two')", dbname=pair.pub)
    finish = current_lsn(pair.cluster, pair.pub)
    with pytest.raises(ApplyError) as exc:
        pair.sync()
    err = exc.value
    assert err.subscription == "ferry" and err.table == "public.t"
    assert err.sqlstate == "23505"
    assert isinstance(err, ConflictError) and err.conflict_type == "insert_exists"
    assert "conflict=insert_exists" in err.message and 'unique index "t_pkey"' in err.message
    assert '"v": "local"' in err.message and '"v": "remote"' in err.message
    assert err.finish_lsn is not None and Lsn.parse(err.finish_lsn) < finish
    assert f"--skip {err.finish_lsn}" in (err.hint or "")
    # Nothing of the failed transaction was applied, and the error is recorded.
    assert pair.rows("SELECT * FROM t ORDER BY id") == [(1, "local")]
    with pair.cluster.connect(pair.sub) as conn:
        sub = store.get_subscription(conn, "ferry")
        assert sub.last_error == err.message
        assert store.stats(conn, "ferry")["apply_error_count"] == 1
        assert store.stats(conn, "ferry")["confl_insert_exists"] == 1
    # The same transaction fails again on retry...
    with pytest.raises(ApplyError):
        pair.sync()
    # ...until the data is fixed; then it applies, and the stored error is cleared.
    pair.rows("DELETE FROM t WHERE id = 1")
    pair.sync()
    assert pair.rows("SELECT * FROM t ORDER BY id") == [(1, "remote"), (2, "two")]
    with pair.cluster.connect(pair.sub) as conn:
        assert store.get_subscription(conn, "ferry").last_error is None
        assert store.stats(conn, "ferry")["apply_error_count"] == 2


def test_skip_lsn_skips_exactly_that_transaction(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    pair.rows("INSERT INTO t VALUES (1, 'local')")
    pair.cluster.sql("INSERT INTO t VALUES (1, 'remote'), (2, 'lost with it')", dbname=pair.pub)
    pair.cluster.sql("INSERT INTO t VALUES (3, 'after')", dbname=pair.pub)
    with pytest.raises(ApplyError) as exc:
        pair.sync()
    assert exc.value.finish_lsn is not None
    with pair.cluster.connect(pair.sub) as conn:
        store.set_skip_lsn(conn, "ferry", Lsn.parse(exc.value.finish_lsn))
    pair.sync()
    assert pair.rows("SELECT * FROM t ORDER BY id") == [(1, "local"), (3, "after")]
    with pair.cluster.connect(pair.sub) as conn:
        assert store.get_subscription(conn, "ferry").skip_lsn is None


def test_disable_on_error(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY)", ["t"], disable_on_error=True)
    pair.rows("INSERT INTO t VALUES (1)")
    pair.cluster.sql("INSERT INTO t VALUES (1)", dbname=pair.pub)
    with pytest.raises(ApplyError):
        pair.sync()
    with pair.cluster.connect(pair.sub) as conn:
        assert store.get_subscription(conn, "ferry").enabled is False


def test_missing_column_names_it_and_recovers_once_added(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    pair.cluster.sql("ALTER TABLE t ADD COLUMN extra int", dbname=pair.pub)
    pair.cluster.sql("INSERT INTO t VALUES (1, 'a', 42)", dbname=pair.pub)
    with pytest.raises(ApplyError) as exc:
        pair.sync()
    assert 'is missing replicated column: "extra"' in exc.value.message
    assert exc.value.table == "public.t"
    pair.rows("ALTER TABLE t ADD COLUMN extra bigint")
    pair.sync()
    assert pair.rows("SELECT * FROM t") == [(1, "a", 42)]


def test_missing_rows_are_skipped_and_counted(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    pair.cluster.sql("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')", dbname=pair.pub)
    pair.sync()
    pair.rows("DELETE FROM t WHERE id IN (1, 2)")
    pair.cluster.sql("UPDATE t SET v = 'x'", dbname=pair.pub)  # 1, 2 missing; 3 updated
    pair.cluster.sql("DELETE FROM t WHERE id <= 2", dbname=pair.pub)  # both missing
    pair.sync()
    assert pair.rows("SELECT * FROM t") == [(3, "x")]
    with pair.cluster.connect(pair.sub) as conn:
        counts = store.stats(conn, "ferry")
    assert counts["confl_update_missing"] == 2 and counts["confl_delete_missing"] == 2


def test_replica_identity_full_with_a_type_without_equality(pair: Pair) -> None:
    """Native fails here ("could not identify an equality operator for type point");
    pgferry compares such columns as text."""
    pair.publish(
        "CREATE TABLE shapes (id int, p point, j json); ALTER TABLE shapes REPLICA IDENTITY FULL",
        ["shapes"],
    )
    pair.cluster.sql(
        "INSERT INTO shapes VALUES (1, '(1,2)', '{\"a\": 1}'), (1, '(1,2)', '{\"a\": 1}');"
        " UPDATE shapes SET id = 2 WHERE ctid = (SELECT min(ctid) FROM shapes);"
        " DELETE FROM shapes WHERE id = 1",
        dbname=pair.pub,
    )
    pair.sync()
    assert pair.rows("SELECT id, p::text, j::text FROM shapes") == [(2, "(1,2)", '{"a": 1}')]


def test_triggers_fire_as_native_and_toast_and_truncate(pair: Pair) -> None:
    pair.publish(
        """
        CREATE TABLE big (id int PRIMARY KEY, doc text, n int);
        CREATE TABLE counter (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
        CREATE TABLE audit (what text);
        """,
        ["big", "counter"],
    )
    pair.rows(
        """
        CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO public.audit VALUES (TG_NAME); RETURN NEW; END $$;
        CREATE TRIGGER ordinary AFTER INSERT ON big FOR EACH ROW EXECUTE FUNCTION log_it();
        CREATE TRIGGER always AFTER INSERT ON big FOR EACH ROW EXECUTE FUNCTION log_it();
        ALTER TABLE big ENABLE ALWAYS TRIGGER always;
        """
    )
    pair.cluster.sql(
        "INSERT INTO big SELECT 1, string_agg(md5(g::text), ''), 0 FROM generate_series(1, 400) g",
        dbname=pair.pub,
    )
    pair.cluster.sql("UPDATE big SET n = 1", dbname=pair.pub)  # doc unchanged: not sent
    pair.cluster.sql("INSERT INTO counter (v) VALUES ('a'), ('b')", dbname=pair.pub)
    pair.cluster.sql("TRUNCATE big, counter RESTART IDENTITY", dbname=pair.pub)
    pair.cluster.sql("INSERT INTO counter (v) VALUES ('c')", dbname=pair.pub)
    pair.sync()
    # Only the ENABLE ALWAYS trigger fired (session_replication_role = replica).
    assert pair.rows("SELECT what FROM audit") == [("always",)]
    assert pair.rows("SELECT count(*) FROM big") == [(0,)]
    assert pair.rows("SELECT id, v FROM counter") == [(1, "c")]


def test_unchanged_toast_keeps_the_local_value(pair: Pair) -> None:
    pair.publish("CREATE TABLE big (id int PRIMARY KEY, doc text, n int)", ["big"])
    pair.cluster.sql(
        "INSERT INTO big SELECT 1, string_agg(md5(g::text), ''), 0 FROM generate_series(1, 400) g",
        dbname=pair.pub,
    )
    pair.cluster.sql("UPDATE big SET n = 1", dbname=pair.pub)
    pair.sync()
    expected = pair.cluster.sql("SELECT md5(doc), n FROM big", dbname=pair.pub)
    assert pair.rows("SELECT md5(doc), n FROM big") == expected == [(expected[0][0], 1)]


def test_check_constraint_and_type_conversion_errors_name_what_failed(pair: Pair) -> None:
    pair.cluster.sql("CREATE TABLE t (id int PRIMARY KEY, v int, code text)", dbname=pair.pub)
    pair.cluster.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int CONSTRAINT v_positive CHECK (v > 0), code int)",
        dbname=pair.sub,
    )
    pair.cluster.sql("CREATE PUBLICATION pub FOR TABLE t", dbname=pair.pub)
    create_slot(pair.cluster, pair.pub, "ferry")
    with pair.cluster.connect(pair.sub) as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn,
            Subscription("ferry", pair.cluster.dsn(pair.pub), ("pub",), "ferry", "pgferry_ferry"),
        )
        store.upsert_table(
            conn, SubscriptionTable("ferry", "public", "t", "public", "t", TableState.READY, None)
        )
    pair.cluster.sql("INSERT INTO t VALUES (1, -5, '7')", dbname=pair.pub)
    with pytest.raises(ApplyError) as exc:
        pair.sync()
    assert exc.value.sqlstate == "23514" and "constraint v_positive" in exc.value.message
    pair.rows("ALTER TABLE t DROP CONSTRAINT v_positive")
    pair.cluster.sql("INSERT INTO t VALUES (2, 1, 'not a number')", dbname=pair.pub)
    with pytest.raises(ApplyError) as exc:
        pair.sync()
    # The first transaction went through once the constraint was gone.
    assert pair.rows("SELECT id, v, code FROM t") == [(1, -5, 7)]
    assert exc.value.sqlstate == "22P02" and "column code" in exc.value.message
    assert "table public.t" in exc.value.message and exc.value.xid is not None
    pair.rows("ALTER TABLE t ALTER COLUMN code TYPE text")
    pair.sync()
    assert pair.rows("SELECT id, code FROM t ORDER BY id") == [(1, "7"), (2, "not a number")]


def test_a_deferred_constraint_failing_at_commit_loses_nothing(pair: Pair) -> None:
    """An abort advances the origin when xact_setup ran: deferred checks must fail
    before it, or the transaction would be recorded as applied and lost."""
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, u int)", ["t"])
    # A deferred constraint trigger that fires for replicated rows (ENABLE ALWAYS).
    pair.rows(
        "CREATE FUNCTION no_negative() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.u < 0 THEN RAISE EXCEPTION 'negative u %', NEW.u; END IF;"
        " RETURN NULL; END $$;"
        " CREATE CONSTRAINT TRIGGER no_negative AFTER INSERT ON t"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION no_negative();"
        " ALTER TABLE t ENABLE ALWAYS TRIGGER no_negative"
    )
    pair.cluster.sql("INSERT INTO t VALUES (1, -1)", dbname=pair.pub)
    progress = pair.progress()
    with pytest.raises(ApplyError) as exc:
        pair.sync()
    assert "negative u -1" in exc.value.message and "COMMIT" in exc.value.message
    assert pair.progress() == progress
    with pytest.raises(ApplyError):
        pair.sync()  # still there: not lost
    pair.rows("ALTER TABLE t DISABLE TRIGGER no_negative")
    pair.sync()
    assert pair.rows("SELECT * FROM t") == [(1, -1)]


def test_a_failing_batch_is_retried_exactly_and_keeps_what_preceded(pair: Pair) -> None:
    """In batch mode several remote transactions share one pipelined local one; when
    one of them fails, the batch is rolled back and applied again one by one: the
    transactions before the failing one commit, the failing one is reported."""
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"], batch_transactions=1000)
    pair.rows("INSERT INTO t VALUES (100, 'local')")
    for i in range(1, 6):
        pair.cluster.sql(f"INSERT INTO t VALUES ({i}, 'remote')", dbname=pair.pub)
    pair.cluster.sql("INSERT INTO t VALUES (100, 'remote')", dbname=pair.pub)
    pair.cluster.sql("INSERT INTO t VALUES (6, 'after')", dbname=pair.pub)
    with pytest.raises(ConflictError) as exc:
        pair.sync()
    assert exc.value.conflict_type == "insert_exists"
    assert pair.rows("SELECT id FROM t ORDER BY id") == [(1,), (2,), (3,), (4,), (5,), (100,)]
    with pair.cluster.connect(pair.sub) as conn:
        assert store.stats(conn, "ferry")["confl_insert_exists"] == 1
    pair.rows("DELETE FROM t WHERE id = 100")
    pair.sync()
    assert pair.rows("SELECT id, v FROM t WHERE id IN (6, 100) ORDER BY id") == [
        (6, "after"),
        (100, "remote"),
    ]


def test_a_batch_failing_while_the_next_is_in_flight_loses_and_repeats_nothing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writer batches in flight: the first fails in its writer thread after a
    wait (a local session's uncommitted row with a key it inserts, committed a
    moment later), the second, queued behind it, must not run; both are rolled
    back and the transactions applied again one by one, up to the failing one."""
    skipped: list[bool] = []

    class Recording(writer_module.Writer):
        def join(self) -> None:
            super().join()
            skipped.append(self.skipped)

    monkeypatch.setattr(writer_module, "Writer", Recording)
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"], batch_transactions=2)
    for i in range(4):
        pair.cluster.sql(
            f"INSERT INTO t SELECT g, 'remote' FROM generate_series({i * 10 + 1}, {i * 10 + 10}) g",
            dbname=pair.pub,
        )
    local = pair.cluster.connect(pair.sub)
    local.execute("INSERT INTO t VALUES (15, 'local')")  # not committed yet
    later = threading.Timer(1.5, local.commit)
    later.start()
    try:
        with pytest.raises(ConflictError) as exc:
            pair.sync()
    finally:
        later.join()
        local.close()
    assert exc.value.conflict_type == "insert_exists"
    # The batch behind the failing one was in flight, and did nothing.
    assert skipped.count(True) == 1
    # Exactly the transaction before the failing one, once.
    assert pair.rows("SELECT count(*), min(id), max(id) FROM t WHERE v = 'remote'") == [(10, 1, 10)]
    pair.rows("DELETE FROM t WHERE id = 15")
    pair.sync()
    assert pair.rows("SELECT id, v FROM t ORDER BY id") == [(i, "remote") for i in range(1, 41)]


def test_exact_mode_commits_each_remote_transaction(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"], apply_mode="exact")
    for i in range(1, 4):
        pair.cluster.sql(f"INSERT INTO t VALUES ({i}, 'x')", dbname=pair.pub)
    pair.sync()
    # One local transaction per remote one: three distinct xmins.
    assert len({r[0] for r in pair.rows("SELECT xmin::text FROM t")}) == 3


def test_batch_mode_groups_remote_transactions(pair: Pair) -> None:
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"], batch_latency_ms=5000)
    with pair.cluster.connect(pair.pub) as conn:
        for i in range(1, 21):
            conn.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
    pair.sync()
    assert len(pair.rows("SELECT * FROM t")) == 20
    # Fewer local transactions than remote ones.
    assert len({r[0] for r in pair.rows("SELECT xmin::text FROM t")}) < 20


def test_a_long_replay_keeps_the_walsender_alive(pair: Pair) -> None:
    """A streamed transaction is replayed at its commit without reading the stream;
    status updates keep going out, so wal_sender_timeout does not end the stream
    (the worker would fail with "server closed the connection" otherwise)."""
    pair.publish("CREATE TABLE big (id int PRIMARY KEY, v text)", ["big"], streaming="on")
    pair.cluster.sql(
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 400000) g",
        dbname=pair.pub,
    )
    # The walsender's own settings: it streams past 64kB, and gives up on a
    # subscriber that has not replied for 3 s.
    pair.cluster.sql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    pair.cluster.sql("ALTER SYSTEM SET wal_sender_timeout = '3s'")
    pair.cluster.sql("SELECT pg_reload_conf()")
    try:
        worker = pair.sync(timeout=120)
    finally:
        pair.cluster.sql("ALTER SYSTEM RESET logical_decoding_work_mem")
        pair.cluster.sql("ALTER SYSTEM RESET wal_sender_timeout")
        pair.cluster.sql("SELECT pg_reload_conf()")
    assert pair.rows("SELECT count(*) FROM big") == [(400000,)]
    assert worker.applier is not None and worker.applier.applied_count == 1
