"""DDL replication end to end: publisher (each ``--pg`` major) -> pgferry -> 18.

The corpus of :mod:`tests.ddl.corpus` runs on the publisher under a write load:
no apply stop, every row equal, ``schema diff`` clean, no echo into a capture on
the subscriber, and the DDL lag no larger than the row lag. Then unsafe
statements (stop, ``--skip``, ``ddl_unsafe=skip``), a DDL inside a streamed
transaction, and the CLI.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgferry.catalog import handover, store
from pgferry.ddl import capture
from pgferry.publisher import manage
from pgferry.schema.diff import diff_subscription
from pgferry.subscription.manage import create_subscription
from pgferry.testing import Cluster, install_for_major
from tests.conformance.conftest import Ferry
from tests.ddl.conftest import unique
from tests.ddl.corpus import CORPUS, LOAD, SCHEMA
from tests.support import pgferry, wait_for


class Load:
    """The corpus's write load, one transaction per statement, in a thread."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.done = threading.Event()
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.done.is_set():
                    statement = LOAD[self.count % len(LOAD)].format(i=self.count)
                    conn.execute(statement.encode())
                    self.count += 1
                    time.sleep(0.002)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def _rows(dsn: str, table: tuple[str, str]) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC") as conn:
        query = sql.SQL("SELECT to_jsonb(t)::text FROM {} t ORDER BY 1")
        return conn.execute(query.format(sql.Identifier(*table))).fetchall()


def _no_stops(ferry: Ferry, name: str) -> None:
    sub = ferry.subscription(name)
    assert sub.last_error is None, sub.last_error
    with ferry.sub.connect(ferry.sub_db) as conn:
        assert store.stats(conn, name)["apply_error_count"] == 0


def _tables(ferry: Ferry, name: str) -> set[tuple[str, str]]:
    with ferry.sub.connect(ferry.sub_db) as conn:
        return set(handover.states(conn, name))


def _caught_up(ferry: Ferry, marker: str) -> None:
    ferry.on_pub("INSERT INTO events (kind) VALUES (%s)", (marker,))
    ferry.wait_rows(f"SELECT count(*) FROM events WHERE kind = '{marker}'", [(1,)], timeout=120)


def _lags(ferry: Ferry, probes: int = 5) -> tuple[float, float]:
    """Median seconds from a publisher commit to its effect on the subscriber: of
    a row insert, and of a DDL statement (alternating, one at a time)."""
    row_lags: list[float] = []
    ddl_lags: list[float] = []

    def seen(query: str) -> float:
        while not ferry.on_sub(query)[0][0]:
            time.sleep(0.005)
        return time.monotonic()

    for k in range(probes):
        start = time.monotonic()
        ferry.on_pub("INSERT INTO events (kind) VALUES (%s)", (f"probe {k}",))
        row_lags.append(seen(f"SELECT count(*) FROM events WHERE kind = 'probe {k}'") - start)
        start = time.monotonic()
        ferry.on_pub(f"ALTER TABLE events ADD COLUMN probe_{k} int")
        ddl_lags.append(
            seen(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.events'::regclass"
                f" AND attname = 'probe_{k}'"
            )
            - start
        )
    return statistics.median(row_lags), statistics.median(ddl_lags)


def test_corpus_under_load(ddl_ferry: Ferry) -> None:
    ferry = ddl_ferry
    ddl_statements = [s for _, s in CORPUS if not s.startswith(("INSERT", "UPDATE"))]
    assert len(ddl_statements) >= 50
    name = unique("corpus", ferry)
    ferry.on_pub(SCHEMA)
    ferry.on_pub("CREATE PUBLICATION app FOR ALL TABLES WITH (publish_via_partition_root = true)")
    with manage.connect(ferry.pub.dsn(ferry.pub_db)) as conn:
        manage.alter_publication(conn, "app", ddl=True)
    ferry.subscribe(name, ["app"], "copy_schema=true", "sequences=off")
    with ferry.running():
        ferry.wait_ready(name, timeout=120)
        # A capture on the subscriber too, as in a two-way setup: what the apply
        # worker replays must not be captured again (no echo).
        ferry.on_sub("CREATE PUBLICATION back FOR TABLE events")
        with manage.connect(ferry.sub_dsn) as conn:
            manage.alter_publication(conn, "back", ddl=True)
        with Load(ferry.pub.dsn(ferry.pub_db)) as load:
            for framework, statement in CORPUS:
                try:
                    ferry.on_pub(statement)
                except psycopg.Error as exc:
                    raise AssertionError(f"{framework}: {statement}: {exc}") from exc
                time.sleep(0.01)
        assert load.error is None, load.error
        assert load.count > 0
        _caught_up(ferry, "after the corpus")
        row_lag, ddl_lag = _lags(ferry)
        _no_stops(ferry, name)
    tables = _tables(ferry, name)
    # New tables joined the subscription; a renamed one followed; dropped ones left.
    assert {("public", "app_publisher"), ("public", "accounts")} <= tables
    assert not {("public", "app_tag"), ("public", "app_label"), ("public", "app_book_tags")} & (
        tables
    )
    for table in sorted(tables):
        assert _rows(ferry.sub_dsn, table) == _rows(ferry.pub.dsn(ferry.pub_db), table), table
    diff = diff_subscription(ferry.sub_dsn, name)
    assert diff.equivalent, diff.differences
    assert ferry.on_sub("SELECT count(*) FROM pgferry_ddl.queue") == [(0,)]
    # (The subscriber's own capture works: a local statement is recorded.)
    ferry.on_sub("COMMENT ON TABLE events IS 'local'")
    assert ferry.on_sub("SELECT count(*) FROM pgferry_ddl.queue") == [(1,)]
    # In stream order with the rows: a DDL is not later than a row would be
    # (one polling interval of tolerance).
    print(f"median lag: row {row_lag * 1000:.0f} ms, DDL {ddl_lag * 1000:.0f} ms")
    assert ddl_lag <= row_lag + 0.05, (ddl_lag, row_lag)


def _table_list_setup(ferry: Ferry, name: str, *options: str) -> None:
    ferry.on_pub("CREATE TABLE t (id int PRIMARY KEY, v text)")
    ferry.on_sub("CREATE TABLE t (id int PRIMARY KEY, v text)")
    dsn = ferry.pub.dsn(ferry.pub_db)
    run = pgferry(dsn, "publication", "create", "p", "--table", "t", "--ddl")
    assert run.returncode == 0, run.stderr
    assert "(with DDL)" in run.stdout
    ferry.subscribe(name, ["p"], *options)


def test_unsafe_statement_stops_then_skip(ddl_ferry: Ferry) -> None:
    ferry = ddl_ferry
    name = unique("unsafe", ferry)
    _table_list_setup(ferry, name)
    statement = "DO $$ BEGIN EXECUTE 'CREATE INDEX t_d ON t (v)'; END $$"
    with ferry.running():
        ferry.wait_ready(name)
        ferry.on_pub("INSERT INTO t VALUES (1, 'before')")
        ferry.on_pub(statement)
        ferry.on_pub("INSERT INTO t VALUES (2, 'after')")
        wait_for(lambda: ferry.subscription(name).last_error is not None, "the apply error", 60)
        error = ferry.subscription(name).last_error or ""
        assert "DDL not replicated" in error and "DO statement" in error, error
        with ferry.sub.connect(ferry.sub_db) as conn:
            lsn = store.failed_lsn(conn, name)
        assert lsn is not None and str(lsn) in error
        ferry.wait_rows("SELECT id FROM t ORDER BY id", [(1,)])
        ferry.alter(name, skip=str(lsn))
        ferry.wait_rows("SELECT id FROM t ORDER BY id", [(1,), (2,)])
        # With ddl_unsafe=skip the statement is left out and replication goes on.
        ferry.alter(name, with_options=("ddl_unsafe=skip",))
        ferry.on_pub(statement.replace("t_d", "t_e"))
        ferry.on_pub("INSERT INTO t VALUES (3, 'skipped past')")
        ferry.wait_rows("SELECT id FROM t ORDER BY id", [(1,), (2,), (3,)])
    assert ferry.on_sub("SELECT count(*) FROM pg_indexes WHERE indexname IN ('t_d', 't_e')") == [
        (0,)
    ]


def test_a_failing_statement_stops_with_the_statement(ddl_ferry: Ferry) -> None:
    ferry = ddl_ferry
    name = unique("failing", ferry)
    _table_list_setup(ferry, name)
    with ferry.running():
        ferry.wait_ready(name)
        ferry.on_pub("CREATE INDEX t_v ON t (v)")
        ferry.wait_rows("SELECT count(*) FROM pg_indexes WHERE indexname = 't_v'", [(1,)])
        ferry.on_sub("DROP INDEX t_v")  # the subscriber differs
        ferry.on_pub('ALTER INDEX t_v RENAME TO "t v"')
        ferry.on_pub("INSERT INTO t VALUES (1, 'after')")
        wait_for(lambda: ferry.subscription(name).last_error is not None, "the apply error", 60)
        error = ferry.subscription(name).last_error or ""
        assert 'relation "t_v" does not exist' in error, error
        assert "applying DDL 'ALTER INDEX t_v RENAME TO \"t v\"'" in error, error
        with ferry.sub.connect(ferry.sub_db) as conn:
            lsn = store.failed_lsn(conn, name)
        assert lsn is not None and f"finished at {lsn}" in error
        # Once the subscriber has what the statement expects, it goes on by itself.
        ferry.on_sub("CREATE INDEX t_v ON t (v)")
        ferry.wait_rows("SELECT id FROM t", [(1,)])
    assert ferry.on_sub("SELECT indexname FROM pg_indexes WHERE tablename = 't' ORDER BY 1") == [
        ("t v",),
        ("t_pkey",),
    ]


def test_unpublished_tables_of_the_schema_are_left_alone(ddl_ferry: Ferry) -> None:
    """A column, a constraint or the whole of a table the publication does not
    publish (in the schema of one it does) is not recorded, so a table of that
    name on the subscriber keeps them."""
    ferry = ddl_ferry
    name = unique("scratch", ferry)
    scratch = "CREATE TABLE scratch (id int PRIMARY KEY, x int CHECK (x > 0), y int)"
    ferry.on_pub(scratch)
    ferry.on_sub(scratch + "; INSERT INTO scratch VALUES (1, 2, 3)")
    _table_list_setup(ferry, name)
    with ferry.running():
        ferry.wait_ready(name)
        ferry.on_pub("ALTER TABLE scratch DROP COLUMN y")
        ferry.on_pub("ALTER TABLE scratch DROP CONSTRAINT scratch_x_check")
        ferry.on_pub("DROP TABLE scratch")
        ferry.on_pub("ALTER TABLE t ADD COLUMN z int")
        ferry.on_pub("INSERT INTO t VALUES (1, 'a', 5)")
        ferry.wait_rows("SELECT count(*) FROM t", [(1,)])
    assert [r[0] for r in ferry.on_pub("SELECT command FROM pgferry_ddl.queue")] == [
        "ALTER TABLE t ADD COLUMN z int"
    ]
    assert ferry.on_sub("SELECT * FROM scratch") == [(1, 2, 3)]
    assert ferry.on_sub("SELECT count(*) FROM pg_constraint WHERE conname = 'scratch_x_check'") == [
        (1,)
    ]


def test_ddl_runs_as_the_role_that_ran_it(ddl_ferry: Ferry) -> None:
    """Not as the apply worker's role: the publisher's role must exist on the
    subscriber (one error with what to do until it does), and its rights there
    are what the statement has."""
    ferry = ddl_ferry
    name = unique("role", ferry)
    tag = uuid.uuid4().hex[:8]
    owner, member = f"ddl_owner_{tag}", f"ddl member {tag}"
    for run_on in (ferry.on_pub, ferry.on_sub):
        run_on(
            f'CREATE ROLE "{owner}"; CREATE TABLE t (id int PRIMARY KEY, v text);'
            f' ALTER TABLE t OWNER TO "{owner}"'
        )
    ferry.on_pub(f'CREATE ROLE "{member}" LOGIN IN ROLE "{owner}"')
    run = pgferry(
        ferry.pub.dsn(ferry.pub_db), "publication", "create", "p", "--table", "t", "--ddl"
    )
    assert run.returncode == 0, run.stderr
    ferry.subscribe(name, ["p"])
    try:
        with ferry.running():
            ferry.wait_ready(name)
            with psycopg.connect(ferry.pub.dsn(ferry.pub_db), user=member) as conn:
                conn.execute("ALTER TABLE t ADD COLUMN w int")
                conn.commit()
            ferry.on_pub("INSERT INTO t VALUES (1, 'after', 7)")
            wait_for(lambda: ferry.subscription(name).last_error is not None, "the error", 60)
            error = ferry.subscription(name).last_error or ""
            assert f"role '{member}' does not exist on the subscriber" in error, error
            # With the role (and so the rights) it has on the publisher, it goes on.
            ferry.on_sub(f'CREATE ROLE "{member}" IN ROLE "{owner}"')
            column = (
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'w'"
            )
            wait_for(lambda: ferry.on_sub(column) == [(1,)], "the column added", 60)
            ferry.wait_rows("SELECT id, w FROM t", [(1, 7)])
    finally:
        for run_on in (ferry.on_pub, ferry.on_sub):
            run_on(f'DROP TABLE IF EXISTS t; DROP ROLE IF EXISTS "{member}"')
            run_on(f'DROP ROLE IF EXISTS "{owner}"')


def test_ddl_in_a_streamed_transaction(ddl_ferry: Ferry) -> None:
    """Streamed while in progress (a small logical_decoding_work_mem): a
    transaction holding DDL is applied at its commit, whole."""
    ferry = ddl_ferry
    if ferry.pub.major < 14:
        pytest.skip("streaming needs a publisher of 14 or later")
    name = unique("streamed", ferry)
    ferry.on_pub("CREATE TABLE t (id int PRIMARY KEY, v text)")
    ferry.on_sub("CREATE TABLE t (id int PRIMARY KEY, v text)")
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE t")
    with manage.connect(ferry.pub.dsn(ferry.pub_db)) as conn:
        manage.alter_publication(conn, "p", ddl=True)
    conninfo = ferry.pub.dsn(ferry.pub_db) + " options='-c logical_decoding_work_mem=64kB'"
    create_subscription(ferry.sub_dsn, name, conninfo, ["p"], ["streaming=parallel"])
    with ferry.running():
        ferry.wait_ready(name)
        with ferry.pub.connect(ferry.pub_db) as conn, conn.transaction():
            conn.execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g")
            conn.execute("ALTER TABLE t ADD COLUMN w int")
            conn.execute("INSERT INTO t SELECT g, 'y', g FROM generate_series(3001, 6000) g")
        wait_for(
            lambda: ferry.on_sub("SELECT count(*) FROM t") == [(6000,)], "the streamed rows", 120
        )
        assert ferry.on_sub("SELECT sum(w) FROM t") == [(sum(range(3001, 6001)),)]
        _no_stops(ferry, name)


def test_publication_ddl_on_off(ddl_ferry: Ferry) -> None:
    ferry = ddl_ferry
    dsn = ferry.pub.dsn(ferry.pub_db)
    ferry.on_pub('CREATE TABLE "we ird" (id int PRIMARY KEY)')
    run = pgferry(dsn, "publication", "create", 'pub"x', "--table", '"we ird"')
    assert run.returncode == 0, run.stderr
    run = pgferry(dsn, "publication", "alter", 'pub"x', "--ddl", "on")
    assert run.returncode == 0, run.stderr
    with manage.connect(dsn) as conn:
        assert capture.enabled(conn, 'pub"x')
    # Listed as a publication with DDL; the queue is not among its tables.
    run = pgferry(dsn, "publication", "list", "--json")
    (listed,) = [p for p in json.loads(run.stdout) if p["name"] == 'pub"x']
    assert listed["ddl"] is True
    assert [(t["schema"], t["table"]) for t in listed["tables"]] == [("public", "we ird")]
    ferry.on_pub('ALTER TABLE "we ird" ADD COLUMN c int')
    rows = ferry.on_pub("SELECT publications, command FROM pgferry_ddl.queue")
    assert rows == [('["pub\\"x"]', 'ALTER TABLE "we ird" ADD COLUMN c int')]
    run = pgferry(dsn, "publication", "alter", 'pub"x', "--ddl", "off")
    assert run.returncode == 0, run.stderr
    ferry.on_pub('ALTER TABLE "we ird" ADD COLUMN d int')
    assert len(ferry.on_pub("SELECT 1 FROM pgferry_ddl.queue")) == 1
    assert ferry.on_pub(
        "SELECT count(*) FROM pg_publication_tables WHERE schemaname = 'pgferry_ddl'"
    ) == [(0,)]
    ferry.on_pub("CREATE PUBLICATION updates FOR TABLE \"we ird\" WITH (publish = 'update')")
    run = pgferry(dsn, "publication", "alter", "updates", "--ddl", "on")
    assert run.returncode == 1
    assert "does not publish inserts" in run.stderr and "hint:" in run.stderr, run.stderr
    # Not readable by PUBLIC.
    assert ferry.on_pub("SELECT has_schema_privilege('public', 'pgferry_ddl', 'USAGE')") == [
        (False,)
    ]


def test_ddl_during_the_initial_sync(ddl_ferry: Ferry) -> None:
    """The apply worker runs each DDL at its position whatever the table's sync
    state; the copy and its catch-up follow the table's shape (retried while the
    two disagree), and the table ends equal on both sides."""
    ferry = ddl_ferry
    name = unique("sync", ferry)
    ferry.on_pub(
        "CREATE TABLE big (id int PRIMARY KEY, v text);"
        " INSERT INTO big SELECT g, repeat('v', 50) FROM generate_series(1, 30000) g"
    )
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE big")
    with manage.connect(ferry.pub.dsn(ferry.pub_db)) as conn:
        manage.alter_publication(conn, "p", ddl=True)
    ferry.subscribe(name, ["p"], "copy_schema=true")
    with ferry.running():
        ferry.on_pub("ALTER TABLE big ADD COLUMN c int DEFAULT 7 NOT NULL")
        ferry.on_pub("INSERT INTO big VALUES (30001, 'after', 8)")
        ferry.on_pub("CREATE INDEX big_c ON big (c)")
        ferry.on_pub("UPDATE big SET c = 9 WHERE id <= 10")
        ferry.wait_ready(name, timeout=120)
        ferry.wait_rows("SELECT count(*), sum(c) FROM big", [(30001, 29990 * 7 + 8 + 90)], 120)
    assert _rows(ferry.sub_dsn, ("public", "big")) == _rows(
        ferry.pub.dsn(ferry.pub_db), ("public", "big")
    )
    diff = diff_subscription(ferry.sub_dsn, name)
    assert diff.equivalent, diff.differences


@pytest.mark.parametrize("major", [13, 14, 16, 17])
def test_publisher_major_smoke(sub18: Cluster, major: int) -> None:
    """The other publishers pgferry supports (13: pgoutput 1, no logical messages;
    the queue table carries the statements all the same)."""
    with Cluster(install_for_major(major)) as pub:
        pub.create_database("app")
        sub18.create_database(f"ddl_sub_pg{major}")
        try:
            ferry = Ferry(pub, "app", sub18, f"ddl_sub_pg{major}")
            ferry.on_pub(
                "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')"
            )
            with manage.connect(pub.dsn("app")) as conn:
                manage.create_publication(conn, "p", all_tables=True, ddl=True)
            ferry.subscribe(f"ddl_pg{major}", ["p"], "copy_schema=true")
            with ferry.running():
                ferry.wait_ready(f"ddl_pg{major}")
                ferry.on_pub("ALTER TABLE t ADD COLUMN w int DEFAULT 0 NOT NULL")
                ferry.on_pub("CREATE TABLE u (id int PRIMARY KEY)")
                ferry.on_pub("INSERT INTO u VALUES (5)")
                # A query string of DDL only is replayed whole.
                ferry.on_pub("ALTER TABLE t ADD COLUMN x int")
                ferry.on_pub("CREATE INDEX t_x ON t (x)")
                ferry.on_pub("INSERT INTO t VALUES (2, 'b', 3, 4)")
                ferry.wait_rows("SELECT * FROM t ORDER BY id", [(1, "a", 0, None), (2, "b", 3, 4)])
                ferry.wait_rows("SELECT * FROM u", [(5,)])
                _no_stops(ferry, f"ddl_pg{major}")
            diff = diff_subscription(ferry.sub_dsn, f"ddl_pg{major}")
            assert diff.equivalent, diff.differences
        finally:
            sub18.drop_database(f"ddl_sub_pg{major}")
            sub18.sql("SELECT pg_replication_origin_drop(%s)", (f"pgferry_ddl_pg{major}",))


def test_a_transaction_block_around_one_statement(ddl_ferry: Ferry) -> None:
    """``BEGIN; <DDL>; COMMIT;`` sent as one query string is that statement,
    replayed without its block; a literal read when the statement runs
    (``'now'``) is as unsafe as ``now()``."""
    ferry = ddl_ferry
    name = unique("block", ferry)
    _table_list_setup(ferry, name)
    with ferry.running():
        ferry.wait_ready(name)
        ferry.on_pub("BEGIN; ALTER TABLE t ADD COLUMN w int; COMMIT;")
        ferry.on_pub("START TRANSACTION;\n-- migration 2\nCREATE INDEX t_w ON t (w); END; ")
        ferry.on_pub("INSERT INTO t VALUES (1, 'a', 2)")
        ferry.wait_rows("SELECT id, v, w FROM t", [(1, "a", 2)])
        assert ferry.on_sub("SELECT count(*) FROM pg_indexes WHERE indexname = 't_w'") == [(1,)]
        _no_stops(ferry, name)
        ferry.on_pub("BEGIN; ALTER TABLE t ADD COLUMN at timestamptz DEFAULT 'now'; COMMIT")
        wait_for(lambda: ferry.subscription(name).last_error is not None, "the apply error", 60)
        error = ferry.subscription(name).last_error or ""
        assert "DDL not replicated" in error and "may give other values" in error, error
        with ferry.sub.connect(ferry.sub_db) as conn:
            lsn = store.failed_lsn(conn, name)
        assert lsn is not None
        # What the hint says: the statement's effect by hand, then --skip.
        at = ferry.on_pub("SELECT DISTINCT at::text FROM t")[0][0]
        ferry.on_sub(f"ALTER TABLE t ADD COLUMN at timestamptz DEFAULT '{at}'")
        ferry.alter(name, skip=str(lsn))
        ferry.on_pub("INSERT INTO t VALUES (2, 'b', 3)")
        ferry.wait_rows("SELECT id FROM t ORDER BY id", [(1,), (2,)])
    table = ("public", "t")
    assert _rows(ferry.sub_dsn, table) == _rows(ferry.pub.dsn(ferry.pub_db), table)


def test_ddl_runs_under_the_publisher_session_settings(ddl_ferry: Ferry) -> None:
    """TimeZone, DateStyle and IntervalStyle of the publisher's session are
    recorded with the statement and set for its replay: a subscriber database
    with other defaults ends with the same data."""
    ferry = ddl_ferry
    name = unique("settings", ferry)
    for run_on in (ferry.on_pub, ferry.on_sub):
        run_on("CREATE TABLE t (id int PRIMARY KEY, ts timestamp)")
    ferry.on_pub("INSERT INTO t VALUES (1, '2025-03-04 10:00'), (2, '2025-07-01 23:30')")
    ferry.sub.sql(
        sql.SQL(
            "ALTER DATABASE {0} SET TimeZone = 'UTC';"
            " ALTER DATABASE {0} SET DateStyle = 'ISO, MDY';"
            " ALTER DATABASE {0} SET IntervalStyle = 'postgres'"
        ).format(sql.Identifier(ferry.sub_db))
    )
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE t")
    with manage.connect(ferry.pub.dsn(ferry.pub_db)) as conn:
        manage.alter_publication(conn, "p", ddl=True)
    ferry.subscribe(name, ["p"])
    with ferry.running():
        ferry.wait_ready(name)
        with psycopg.connect(ferry.pub.dsn(ferry.pub_db), autocommit=True) as conn:
            conn.execute("SET TimeZone = 'America/New_York'")
            conn.execute("SET DateStyle = 'SQL, DMY'")
            conn.execute("SET IntervalStyle = 'sql_standard'")
            conn.execute("ALTER TABLE t ALTER COLUMN ts TYPE timestamptz")
            conn.execute("ALTER TABLE t ADD COLUMN d date DEFAULT '03/04/2025'")
            conn.execute("ALTER TABLE t ADD COLUMN span text DEFAULT (interval '1 day 2 hours')")
            conn.execute("INSERT INTO t (id, ts) VALUES (3, '2025-12-31 22:00')")
        ferry.wait_rows("SELECT count(*) FROM t", [(3,)], 60)
        _no_stops(ferry, name)
    settings = json.loads(
        ferry.on_pub("SELECT settings FROM pgferry_ddl.queue ORDER BY id LIMIT 1")[0][0]
    )
    assert settings["TimeZone"] == "America/New_York" and settings["DateStyle"] == "SQL, DMY"
    assert _rows(ferry.sub_dsn, ("public", "t")) == _rows(
        ferry.pub.dsn(ferry.pub_db), ("public", "t")
    )
    assert ferry.on_sub(
        "SELECT (ts AT TIME ZONE 'UTC')::text, d::text, span FROM t WHERE id = 1"
    ) == [("2025-03-04 15:00:00", "2025-04-03", "1 2:00:00")]


def test_install_brings_an_older_queue_up_to_date(ddl_ferry: Ferry) -> None:
    """A queue table of an older capture (no ``settings`` column) is upgraded in
    place: its rows stay, new ones record the settings."""
    ferry = ddl_ferry
    ferry.on_pub(
        "CREATE SCHEMA pgferry_ddl;"
        " CREATE TABLE pgferry_ddl.queue (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " at timestamptz NOT NULL DEFAULT clock_timestamp(), xid bigint NOT NULL,"
        " started timestamptz NOT NULL, publications text NOT NULL, command_tag text NOT NULL,"
        " command text NOT NULL, search_path text NOT NULL, role text NOT NULL,"
        " objects text NOT NULL);"
        " INSERT INTO pgferry_ddl.queue (xid, started, publications, command_tag, command,"
        " search_path, role, objects) VALUES (1, now(), '[\"p\"]', 'ALTER TABLE', 'older',"
        " 'public', 'app', '[]');"
        " CREATE TABLE t (id int PRIMARY KEY)"
    )
    dsn = ferry.pub.dsn(ferry.pub_db)
    run = pgferry(dsn, "publication", "create", "p", "--table", "t", "--ddl")
    assert run.returncode == 0, run.stderr
    with manage.connect(dsn) as conn:
        capture.install(conn)  # again: nothing changes
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("ALTER TABLE t ADD COLUMN c int")
    rows = ferry.on_pub("SELECT command, settings FROM pgferry_ddl.queue ORDER BY id")
    assert [r[0] for r in rows] == ["older", "ALTER TABLE t ADD COLUMN c int"]
    assert rows[0][1] is None
    assert json.loads(rows[1][1])["TimeZone"] == "Asia/Tokyo"
    assert ferry.on_pub("SELECT obj_description('pgferry_ddl'::regnamespace)") == [
        (f"pgferry DDL capture, version {capture.VERSION}",)
    ]


def test_ddl_on_a_table_not_refreshed_yet_is_left_to_the_refresh(ddl_ferry: Ferry) -> None:
    """A table added to the publication and altered before the subscriber's
    refresh: its statements are not replicated (its rows are not either, as
    native), apply goes on, and the refresh copies the table as it is then."""
    ferry = ddl_ferry
    name = unique("notyet", ferry)
    ferry.on_pub("CREATE TABLE t1 (id int PRIMARY KEY)")
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE t1")
    with manage.connect(ferry.pub.dsn(ferry.pub_db)) as conn:
        manage.alter_publication(conn, "p", ddl=True)
    ferry.subscribe(name, ["p"], "copy_schema=true")
    with ferry.running():
        ferry.wait_ready(name)
        ferry.on_pub("CREATE TABLE t2 (id int PRIMARY KEY)")
        ferry.on_pub("ALTER PUBLICATION p ADD TABLE t2")
        ferry.on_pub("ALTER TABLE t2 ADD COLUMN x int")
        ferry.on_pub("CREATE INDEX t2_x ON t2 (x)")
        ferry.on_pub("INSERT INTO t2 VALUES (1, 2)")
        ferry.on_pub("INSERT INTO t1 VALUES (1)")
        ferry.wait_rows("SELECT id FROM t1", [(1,)])
        _no_stops(ferry, name)
        assert ferry.on_sub("SELECT to_regclass('public.t2')") == [(None,)]
        ferry.alter(name, refresh_publication=True)
        ferry.wait_ready(name)
        ferry.wait_rows("SELECT id, x FROM t2", [(1, 2)])
    diff = diff_subscription(ferry.sub_dsn, name)
    assert diff.equivalent, diff.differences
