"""Differential tests: one publisher workload, replicated by a native subscription
into one database and by pgferry's apply worker into another, must leave both
with the publisher's rows.

These cover the apply path (copy_data = false); initial sync comes with the
table sync worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.apply import ApplyWorker
from pgferry.catalog import Subscription, SubscriptionTable, TableState, ensure_catalog, store
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import create_slot

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(10,2),
                    tags text[], doc jsonb, updated timestamptz);
CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text,
                     payload text);
CREATE TABLE full_rows (a int, b text, c numeric);
ALTER TABLE full_rows REPLICA IDENTITY FULL;
CREATE TABLE by_code (code text NOT NULL, v int);
CREATE UNIQUE INDEX by_code_idx ON by_code (code);
ALTER TABLE by_code REPLICA IDENTITY USING INDEX by_code_idx;
CREATE TABLE "we ird"".""x" ("Id" int PRIMARY KEY, "va""l" text);
"""
TABLES = ["items", "events", "full_rows", "by_code", '"we ird"".""x"']
REMOTE_NAMES = [
    ("public", "items"),
    ("public", "events"),
    ("public", "full_rows"),
    ("public", "by_code"),
    ("public", 'we ird"."x'),
]
# The subscriber's items differ: other column order, a wider type, an extra column.
SUBSCRIBER_ITEMS = """
DROP TABLE items;
CREATE TABLE items (note text DEFAULT 'local', updated timestamptz, doc jsonb,
                    tags text[], price numeric(12,2), qty bigint, name text,
                    id int PRIMARY KEY);
"""

WORKLOAD = [
    """INSERT INTO items SELECT g, 'item ' || g, g * 10, g * 1.5, ARRAY['a', 'b' || g],
       jsonb_build_object('g', g), '2024-01-01'::timestamptz + g * interval '1 hour'
       FROM generate_series(1, 200) g""",
    "INSERT INTO events (kind, payload) SELECT 'k' || (g % 5), repeat('x', g)"
    " FROM generate_series(1, 300) g",
    "UPDATE items SET qty = qty + 1, doc = doc || '{\"touched\": true}' WHERE id % 3 = 0",
    "UPDATE items SET id = id + 1000 WHERE id BETWEEN 10 AND 20",
    "DELETE FROM items WHERE id % 7 = 0",
    "INSERT INTO full_rows VALUES (1, 'dup', 1.5), (1, 'dup', 1.5), (2, NULL, NULL)",
    "UPDATE full_rows SET b = 'one of the dups' WHERE ctid = (SELECT min(ctid) FROM full_rows)",
    "DELETE FROM full_rows WHERE a = 2",
    "INSERT INTO by_code VALUES ('a', 1), ('b', 2), ('c', 3)",
    "UPDATE by_code SET code = 'z' WHERE code = 'a'",
    "DELETE FROM by_code WHERE code = 'b'",
    """INSERT INTO "we ird"".""x" VALUES (1, 'it''s'), (2, E'back\\\\slash')""",
    """UPDATE "we ird"".""x" SET "va""l" = 'changed' WHERE "Id" = 2""",
    "UPDATE events SET payload = upper(payload) WHERE id % 10 = 0",
    "DELETE FROM events WHERE id > 290",
]


@dataclass
class Setup:
    publisher: Cluster
    pub_db: str
    subscriber: Cluster
    publisher_dsn: str


@pytest.fixture
def setup(cluster: Cluster, dbname: str, make_cluster: ClusterFactory) -> Iterator[Setup]:
    cluster.sql(SCHEMA, dbname=dbname)
    cluster.sql("CREATE PUBLICATION pub FOR TABLE " + ", ".join(TABLES), dbname=dbname)
    subscriber = make_cluster()
    for db in ("native", "ferry"):
        subscriber.create_database(db)
        subscriber.sql(SCHEMA, dbname=db)
        subscriber.sql(SUBSCRIBER_ITEMS, dbname=db)
    yield Setup(cluster, dbname, subscriber, cluster.dsn(dbname))


def _rows(cluster: Cluster, db: str, table: str) -> list[tuple[Any, ...]]:
    columns = "id, name, qty, price, tags, doc, updated" if table == "items" else "*"
    rows = cluster.sql(f"SELECT {columns} FROM {table}", dbname=db)
    return sorted(rows, key=repr)


def _start_pgferry(setup: Setup, slot: str = "ferry") -> tuple[ApplyWorker, threading.Thread]:
    create_slot(setup.publisher, setup.pub_db, slot)
    with setup.subscriber.connect("ferry") as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn,
            Subscription(
                name="ferry",
                conninfo=setup.publisher_dsn,
                publications=("pub",),
                slot_name=slot,
                origin_name="pgferry_ferry",
            ),
        )
        for schema, name in REMOTE_NAMES:
            store.upsert_table(
                conn, SubscriptionTable("ferry", schema, name, schema, name, TableState.READY, None)
            )
    return _run_worker(setup)


def _run_worker(setup: Setup) -> tuple[ApplyWorker, threading.Thread]:
    worker = ApplyWorker(setup.subscriber.dsn("ferry"), "ferry", status_interval=1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.errors = errors  # type: ignore[attr-defined]
    return worker, thread


def _wait_equal(setup: Setup, dbs: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        expected = {t: _rows(setup.publisher, setup.pub_db, t) for t in TABLES}
        got = {db: {t: _rows(setup.subscriber, db, t) for t in TABLES} for db in dbs}
        if all(got[db] == expected for db in dbs):
            return
        if time.monotonic() > deadline:
            for db in dbs:
                for t in TABLES:
                    assert got[db][t] == expected[t], f"{db}.{t} differs from the publisher"
        time.sleep(0.3)


def test_native_and_pgferry_end_with_identical_tables(setup: Setup) -> None:
    setup.subscriber.sql(
        f"CREATE SUBSCRIPTION native CONNECTION '{setup.publisher_dsn}' PUBLICATION pub"
        " WITH (copy_data = false)",
        dbname="native",
    )
    worker, thread = _start_pgferry(setup)
    try:
        for statement in WORKLOAD:
            setup.publisher.sql(statement, dbname=setup.pub_db)
        _wait_equal(setup, ["native", "ferry"])
        # Columns the publisher does not have took their default on the subscriber.
        notes = setup.subscriber.sql("SELECT DISTINCT note FROM items", dbname="ferry")
        assert notes == [("local",)]
        # Exactly what native counts as skipped: nothing was missing.
        with setup.subscriber.connect("ferry") as conn:
            assert store.stats(conn, "ferry")["confl_update_missing"] == 0
    finally:
        worker.request_stop()
        thread.join(timeout=30)
        setup.subscriber.sql("DROP SUBSCRIPTION native", dbname="native")
    assert not thread.errors  # type: ignore[attr-defined]


def test_restart_neither_loses_nor_repeats(setup: Setup) -> None:
    """Stop and restart the worker between and during batches: every event row is
    applied once (events has an identity key, so a repeat would be a duplicate key
    error and a loss would show as a difference)."""
    worker, thread = _start_pgferry(setup)
    try:
        for round_ in range(4):
            for _ in range(25):
                setup.publisher.sql(
                    "INSERT INTO events (kind, payload) SELECT 'r', g::text"
                    " FROM generate_series(1, 20) g",
                    dbname=setup.pub_db,
                )
            worker.request_stop()
            thread.join(timeout=30)
            assert not thread.errors, thread.errors  # type: ignore[attr-defined]
            if round_ < 3:
                worker, thread = _run_worker(setup)
        worker, thread = _run_worker(setup)
        _wait_equal(setup, ["ferry"])
        count = setup.subscriber.sql("SELECT count(*) FROM events", dbname="ferry")[0][0]
        assert count == 4 * 25 * 20
    finally:
        worker.request_stop()
        thread.join(timeout=30)
    assert not thread.errors  # type: ignore[attr-defined]
