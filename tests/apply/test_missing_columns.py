"""``missing_columns = add``: a column added on the publisher is added on the
subscriber before the change that carries it is applied (publisher 15 or 18,
subscriber 18); the default ``error`` stops as native does.

The publisher is the shared ``cluster`` (its major from ``--pg``); the subscriber
is a database of it when it is 18, else of an 18 cluster of this module.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.apply import ApplyWorker
from pgferry.apply.columns import LOCK_TIMEOUT, missing_value
from pgferry.catalog import (
    Subscription,
    SubscriptionOptions,
    SubscriptionTable,
    TableState,
    ensure_catalog,
    handover,
    store,
)
from pgferry.errors import ApplyError, InterfaceError
from pgferry.protocol import Lsn
from pgferry.subscription.options import create_options
from pgferry.sync import TableSyncWorker
from pgferry.testing import Cluster, install_for_major
from tests.support import create_slot, current_lsn, drop_origins, wait_for
from tests.sync.test_table_sync import Runner

_names = itertools.count()
LOCK_TIMEOUT_S = int(LOCK_TIMEOUT.removesuffix("s"))

#: A column name with a quote, a dot and a space.
WEIRD = 'we ird".""x'

TABLES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE t (id int PRIMARY KEY, v text);
"""


@pytest.fixture(scope="module")
def cluster18() -> Iterator[list[Cluster]]:
    """An 18 cluster, started when a test asks for it (the list is empty before)."""
    started: list[Cluster] = []
    yield started
    for cluster in started:
        cluster.destroy()


@dataclass
class Ferry:
    pub: Cluster
    pub_db: str
    sub: Cluster
    sub_db: str
    name: str

    def on_pub(self, query: str) -> list[tuple[Any, ...]]:
        return self.pub.sql(query, dbname=self.pub_db)

    def on_sub(self, query: str) -> list[tuple[Any, ...]]:
        return self.sub.sql(query, dbname=self.sub_db)

    def states(self) -> set[str]:
        """The sync states of the subscription's tables."""
        with self.sub.connect(self.sub_db) as conn:
            return {s.state for s in handover.states(conn, self.name).values()}

    def progress(self) -> Lsn:
        rows = self.on_sub(
            "SELECT s.remote_lsn::text FROM pg_replication_origin_status s"
            " JOIN pg_replication_origin o ON o.roident = s.local_id"
            f" WHERE o.roname = 'pgferry_{self.name}'"
        )
        return Lsn.parse(rows[0][0]) if rows and rows[0][0] else Lsn(0)

    def confirmed(self) -> Lsn:
        rows = self.pub.sql(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (self.name,),
            dbname=self.pub_db,
        )
        return Lsn.parse(rows[0][0])

    def sync(self, timeout: float = 60) -> None:
        """Run the apply worker until everything written so far is applied;
        re-raise what it raised."""
        target = current_lsn(self.pub, self.pub_db)
        worker = ApplyWorker(self.sub.dsn(self.sub_db), self.name, status_interval=1)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        try:
            while thread.is_alive() and time.monotonic() < deadline:
                if self.progress() >= target or self.confirmed() >= target:
                    break
                time.sleep(0.1)
        finally:
            worker.request_stop()
            thread.join(timeout=30)
        assert not thread.is_alive()
        if failure:
            raise failure[0]
        assert self.progress() >= target or self.confirmed() >= target, "not caught up"

    def same(self, table: str) -> None:
        """The table's columns (names, types, NOT NULL) and rows are the same on both sides."""
        columns = (
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            f" WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attname"
        )
        assert self.on_sub(columns) == self.on_pub(columns)
        rows = f"SELECT to_jsonb(x) FROM {table} x ORDER BY id"
        published = self.on_pub(rows)
        assert published and self.on_sub(rows) == published


@pytest.fixture
def ferry(cluster: Cluster, dbname: str, cluster18: list[Cluster]) -> Iterator[Ferry]:
    if cluster.major == 18:
        sub = cluster
    else:
        if not cluster18:
            cluster18.append(Cluster(install_for_major(18)).__enter__())
        sub = cluster18[0]
    sub_db = dbname[:50] + "_sub"
    sub.create_database(sub_db)
    name = f"mc_{next(_names)}_{dbname[-20:]}".lower()
    try:
        yield Ferry(cluster, dbname, sub, sub_db, name[:60])
    finally:
        sub.drop_database(sub_db)
        drop_origins(sub)


def register(ferry: Ferry, state: TableState, **options: object) -> None:
    """The slot, and the subscription of table ``t`` in ``state`` in the catalog."""
    create_slot(ferry.pub, ferry.pub_db, ferry.name)
    with ferry.sub.connect(ferry.sub_db) as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn,
            Subscription(
                ferry.name,
                ferry.pub.dsn(ferry.pub_db),
                ("pub",),
                ferry.name,
                f"pgferry_{ferry.name}",
                options=SubscriptionOptions.from_json(options),
            ),
        )
        store.upsert_table(
            conn, SubscriptionTable(ferry.name, "public", "t", "public", "t", state, None)
        )


def subscribe(ferry: Ferry, sub_ddl: str, **options: object) -> None:
    """Tables ``t`` (and the type ``mood``) on the publisher, ``sub_ddl`` on the
    subscriber, the publication, slot and subscription (``t`` ready)."""
    ferry.on_pub(TABLES + "CREATE PUBLICATION pub FOR TABLE t")
    ferry.on_sub(sub_ddl)
    register(ferry, TableState.READY, **options)


@pytest.mark.parametrize("mode", ["batch", "exact"])
def test_added_columns_are_added_and_replicated(ferry: Ferry, mode: str) -> None:
    subscribe(ferry, TABLES, missing_columns="add", apply_mode=mode)
    ferry.on_pub("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g")
    ferry.sync()
    # Plain, constant default, NOT NULL with default, an enum, a weird name with
    # a typmod, a stable default (its value at the ALTER), an array of the enum
    # with a default, Django's add-then-drop default; rows before and after each.
    ferry.on_pub(
        f"""
        ALTER TABLE t ADD COLUMN plain text;
        INSERT INTO t VALUES (6, 'six', 'p6');
        ALTER TABLE t ADD COLUMN d int DEFAULT 7;
        ALTER TABLE t ADD COLUMN nn bigint NOT NULL DEFAULT 3;
        INSERT INTO t (id, v, plain, d, nn) VALUES (7, 'seven', 'p7', 70, 700);
        ALTER TABLE t ADD COLUMN m mood, ADD COLUMN "{WEIRD.replace('"', '""')}" varchar(12);
        ALTER TABLE t ADD COLUMN ts timestamptz DEFAULT now();
        ALTER TABLE t ADD COLUMN tags mood[] DEFAULT '{{ok,"sad"}}';
        ALTER TABLE t ADD COLUMN dj int DEFAULT 0 NOT NULL;
        ALTER TABLE t ALTER COLUMN dj DROP DEFAULT;
        UPDATE t SET m = 'happy', "{WEIRD.replace('"', '""')}" = 'w''"' || id WHERE id % 2 = 0;
        INSERT INTO t (id, v, m, dj) VALUES (8, 'eight', 'sad', 8);
        """
    )
    # One remote transaction that changes the table before and after an ALTER:
    # the column is added inside the open batch.
    ferry.on_pub(
        """
        BEGIN;
        UPDATE t SET v = 'before' WHERE id = 1;
        ALTER TABLE t ADD COLUMN late numeric(6, 2) DEFAULT 1.5;
        UPDATE t SET v = 'after', late = 2.25 WHERE id = 2;
        COMMIT;
        """
    )
    ferry.sync()
    ferry.same("t")
    # The default of the subscriber's column is the publisher's (gone for dj).
    defaults = (
        "SELECT a.attname, d.adbin IS NOT NULL FROM pg_attribute a LEFT JOIN pg_attrdef d"
        " ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = 't'::regclass"
        " AND a.attname IN ('d', 'nn', 'dj', 'plain') ORDER BY 1"
    )
    assert ferry.on_sub(defaults) == [("d", True), ("dj", False), ("nn", True), ("plain", False)]
    # Replication goes on in the new shape.
    ferry.on_pub("INSERT INTO t (id, v, dj) SELECT g, 'n' || g, g FROM generate_series(100, 120) g")
    ferry.sync()
    ferry.same("t")


def test_a_column_added_in_a_streamed_transaction(ferry: Ferry) -> None:
    subscribe(ferry, TABLES, missing_columns="add", streaming="parallel")
    # Large transactions stream (their walsender reads this database's setting).
    ferry.on_pub(f"ALTER DATABASE \"{ferry.pub_db}\" SET logical_decoding_work_mem = '64kB'")
    ferry.on_pub("INSERT INTO t VALUES (0, 'zero')")
    ferry.sync()
    ferry.on_pub(
        """
        BEGIN;
        INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 2000) g;
        ALTER TABLE t ADD COLUMN m mood DEFAULT 'sad', ADD COLUMN k int;
        INSERT INTO t SELECT g, repeat('b', 100), 'happy', g FROM generate_series(2001, 4000) g;
        UPDATE t SET k = -id WHERE id <= 10;
        COMMIT;
        """
    )
    ferry.sync()
    ferry.same("t")


def test_a_type_missing_on_the_subscriber_stops_with_what_to_do(ferry: Ferry) -> None:
    subscribe(ferry, "CREATE TABLE t (id int PRIMARY KEY, v text)", missing_columns="add")
    ferry.on_pub("ALTER TABLE t ADD COLUMN m mood; INSERT INTO t VALUES (1, 'one', 'ok')")
    with pytest.raises(ApplyError) as info:
        ferry.sync()
    message = str(info.value)
    assert ferry.name in message and "public.t" in message and '"m"' in message
    assert "public.mood does not exist on the subscriber" in message
    assert "finished at" in message
    assert info.value.hint is not None and "create the type public.mood" in info.value.hint
    assert "copy_schema" in info.value.hint
    # Nothing applied, and once the type exists replication resumes.
    assert ferry.on_sub("SELECT count(*) FROM t") == [(0,)]
    ferry.on_sub("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    ferry.sync()
    ferry.same("t")


def test_a_lock_held_past_the_lock_timeout_is_waited_out(ferry: Ferry) -> None:
    subscribe(ferry, TABLES, missing_columns="add")
    ferry.on_pub("ALTER TABLE t ADD COLUMN c int DEFAULT 5; INSERT INTO t VALUES (1, 'one', 6)")
    released = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with ferry.sub.connect(ferry.sub_db) as conn, conn.transaction():
            conn.execute("LOCK TABLE t IN ACCESS SHARE MODE")
            holding.set()
            time.sleep(LOCK_TIMEOUT_S + 1.5)  # longer than one attempt's lock_timeout
        released.set()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    ferry.sync()
    assert released.is_set()
    holder.join(10)
    ferry.same("t")


def test_a_column_added_while_the_table_syncs(ferry: Ferry) -> None:
    """The copy ends (state f) before the ALTER; the changes after it reach the
    table through the sync worker's catch-up, which adds the columns."""
    ferry.on_pub(TABLES + "CREATE PUBLICATION pub FOR TABLE t")
    ferry.on_pub("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 300) g")
    ferry.on_sub(TABLES)
    register(ferry, TableState.INIT, missing_columns="add")

    dsn = ferry.sub.dsn(ferry.sub_db)
    runner = Runner()
    try:
        runner.start(TableSyncWorker(dsn, ferry.name, "public", "t"))
        wait_for(lambda: ferry.states() == {"f"} or bool(runner.errors), "the copy")
        runner.stop()
        ferry.on_pub(
            "UPDATE t SET v = 'changed' WHERE id <= 10;"
            " ALTER TABLE t ADD COLUMN m mood DEFAULT 'ok', ADD COLUMN n int NOT NULL DEFAULT 1;"
            " INSERT INTO t VALUES (301, 'late', 'happy', 2)"
        )
        ferry.on_pub("UPDATE t SET n = 3 WHERE id BETWEEN 5 AND 15")
        # The apply worker's answer, as if it had gone past the changes: the
        # sync worker's catch-up applies them (and adds the columns).
        with ferry.sub.connect(ferry.sub_db) as conn:
            target = current_lsn(ferry.pub, ferry.pub_db)
            handover.set_catchup(conn, ferry.name, "public", "t", target)
        runner.start(TableSyncWorker(dsn, ferry.name, "public", "t"))
        wait_for(lambda: ferry.states() == {"s"} or bool(runner.errors), "the catch-up")
        assert ferry.on_sub("SELECT count(*) FROM t WHERE n = 3") == [(11,)]
        runner.start(ApplyWorker(dsn, ferry.name, status_interval=1))
        wait_for(lambda: ferry.states() == {"r"} or bool(runner.errors), "the handover")
        expected = ferry.on_pub("SELECT to_jsonb(x) FROM t x ORDER BY id")
        rows = "SELECT to_jsonb(x) FROM t x ORDER BY id"
        wait_for(lambda: ferry.on_sub(rows) == expected or bool(runner.errors), "the rows")
        assert not runner.errors, runner.errors
    finally:
        runner.stop()
    ferry.same("t")


def test_a_column_added_before_the_copy(ferry: Ferry) -> None:
    """The publisher gained columns after the subscription was created: the sync
    worker adds them before its copy, which then carries their values."""
    ferry.on_pub(TABLES + "CREATE PUBLICATION pub FOR TABLE t")
    ferry.on_sub(TABLES)
    weird = WEIRD.replace('"', '""')
    ferry.on_pub(
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;"
        f""" ALTER TABLE t ADD COLUMN m mood DEFAULT 'ok', ADD COLUMN "{weird}" """
        " varchar(12) NOT NULL DEFAULT 'w';"
        " INSERT INTO t VALUES (101, 'late', 'happy', 'x')"
    )
    register(ferry, TableState.INIT, missing_columns="add")

    runner = Runner()
    try:
        runner.start(TableSyncWorker(ferry.sub.dsn(ferry.sub_db), ferry.name, "public", "t"))
        wait_for(lambda: ferry.states() == {"f"} or bool(runner.errors), "the copy")
        assert not runner.errors, runner.errors
    finally:
        runner.stop()
    ferry.same("t")


def test_the_option_is_parsed() -> None:
    assert create_options("s", []).options.missing_columns == "error"
    assert create_options("s", ["missing_columns=ADD"]).options.missing_columns == "add"
    with pytest.raises(InterfaceError) as info:
        create_options("s", ["missing_columns=create"])
    assert info.value.hint == "valid values: error, add"


def test_the_default_stops_as_native(ferry: Ferry) -> None:
    subscribe(ferry, TABLES)
    ferry.on_pub("ALTER TABLE t ADD COLUMN extra int; INSERT INTO t VALUES (1, 'one', 1)")
    with pytest.raises(ApplyError) as info:
        ferry.sync()
    assert 'is missing replicated column: "extra"' in str(info.value)
    assert ferry.on_sub("SELECT count(*) FROM t") == [(0,)]


def test_missing_value_text() -> None:
    assert missing_value("{7}") == "7"
    assert missing_value('{"a \\"b\\" \\\\c"}') == 'a "b" \\c'
    assert missing_value("{NULL}") is None
    assert missing_value('{"NULL"}') == "NULL"
    assert missing_value('{"{1,2}"}') == "{1,2}"
    assert missing_value(None) is None
