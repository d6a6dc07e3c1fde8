"""``copy_schema``: from an empty subscriber database to a replica, against real
PostgreSQL (see :mod:`pgferry.schema.copy`)."""

from __future__ import annotations

import pytest

from pgferry.schema.diff import diff_subscription
from pgferry.schema.dump import SchemaCopyError, find_tools
from pgferry.subscription import create_subscription
from pgferry.subscription.tables import SubscriberTablesMissing
from tests.conformance.conftest import Ferry
from tests.support import wait_for

APP = """
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.posint AS int CHECK (VALUE > 0);
CREATE FUNCTION app.double(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';
CREATE SEQUENCE app.shared_seq;
CREATE TABLE app.parent (
    id serial PRIMARY KEY,
    m app.mood NOT NULL DEFAULT 'ok',
    p app.posint CHECK (app.double(p) < 1000),
    n bigint DEFAULT nextval('app.shared_seq'),
    email text UNIQUE
);
CREATE TABLE app.child (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id int NOT NULL REFERENCES app.parent,
    note text
);
CREATE INDEX child_note ON app.child (lower(note));
COMMENT ON TABLE app.parent IS 'the parents';
COMMENT ON COLUMN app.child.note IS 'free text';
CREATE TABLE app.part (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE app.part_low PARTITION OF app.part FOR VALUES FROM (0) TO (10);
CREATE TABLE app.part_high PARTITION OF app.part FOR VALUES FROM (10) TO (20);
CREATE TABLE app.unrelated (x int);
ALTER SEQUENCE app.shared_seq OWNED BY app.unrelated.x;
CREATE TABLE "we ird"."x" ("odd ""c"" col" int PRIMARY KEY);
CREATE PUBLICATION pub FOR TABLE app.parent, app.child, app.part, "we ird"."x"
    WITH (publish_via_partition_root = true);
INSERT INTO app.parent (p, email) SELECT g, 'u' || g || '@x' FROM generate_series(1, 200) g;
INSERT INTO app.child (parent_id, note) SELECT 1 + g % 200, 'n' || g FROM generate_series(1, 500) g;
INSERT INTO app.part SELECT g, g % 20, 'v' FROM generate_series(1, 100) g;
INSERT INTO "we ird"."x" SELECT generate_series(1, 10);
"""


def _setup(ferry: Ferry) -> None:
    ferry.on_pub('CREATE SCHEMA "we ird"')
    ferry.on_pub(APP)


def _steps_left(ferry: Ferry) -> int:
    return int(ferry.on_sub("SELECT count(*) FROM pgferry.schema_step")[0][0])


def _rows(ferry: Ferry, query: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return ferry.on_pub(query), ferry.on_sub(query)


def test_copy_schema_creates_what_the_publication_needs(ferry: Ferry) -> None:
    _setup(ferry)
    ferry.subscribe("s", ["pub"], "copy_schema=true")
    # Each table's size on the publisher is known (the largest is copied first).
    assert ferry.on_sub("SELECT bool_and(size_bytes > 0) FROM pgferry.subscription_table")[0][0]
    # Before any data: the tables, types and sequences, and no index but none needed yet.
    assert ferry.on_sub("SELECT to_regclass('app.unrelated') IS NULL")[0][0]
    assert ferry.on_sub("SELECT obj_description('app.parent'::regclass)")[0][0] == "the parents"
    assert ferry.on_sub("SELECT count(*) FROM pg_indexes WHERE schemaname = 'app'")[0][0] == 0
    with ferry.running():
        ferry.wait_ready("s")
        wait_for(lambda: _steps_left(ferry) == 0, "every schema step done", 60)
        ferry.on_pub("INSERT INTO app.parent (p, email) VALUES (7, 'new@x')")
        ferry.on_pub("INSERT INTO app.child (parent_id, note) VALUES (201, 'late')")
        ferry.wait_rows("SELECT count(*) FROM app.child", [(501,)])
    for query in (
        "SELECT * FROM app.parent ORDER BY id",
        "SELECT * FROM app.child ORDER BY id",
        "SELECT tableoid::regclass::text, * FROM app.part ORDER BY id",
        'SELECT * FROM "we ird"."x" ORDER BY 1',
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname IN ('app', 'we ird')"
        " ORDER BY 1",
        "SELECT conname, contype, convalidated, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace IN ('app'::regnamespace, '\"we ird\"'::regnamespace) ORDER BY 1",
        "SELECT col_description('app.child'::regclass, 3)",
    ):
        theirs, ours = _rows(ferry, query)
        assert ours == theirs, query
    diff = diff_subscription(ferry.sub_dsn, "s")
    assert diff.equivalent, diff.differences


def test_existing_tables_are_checked_and_left_alone(ferry: Ferry) -> None:
    _setup(ferry)
    ferry.on_sub("CREATE SCHEMA app; CREATE TABLE app.unrelated (y int)")
    ferry.on_sub("CREATE TABLE app.child (id int PRIMARY KEY, parent_id bigint, note text)")
    with pytest.raises(SchemaCopyError) as exc:
        ferry.subscribe("s", ["pub"], "copy_schema=true")
    assert "app.child" in exc.value.message and "parent_id" in exc.value.message
    # Nothing was created: no slot, no catalog row, no table.
    assert ferry.pub.sql("SELECT count(*) FROM pg_replication_slots")[0][0] == 0
    assert ferry.on_sub("SELECT to_regclass('app.parent') IS NULL")[0][0]
    assert ferry.on_sub("SELECT count(*) FROM pgferry.subscription")[0][0] == 0
    ferry.on_sub("DROP TABLE app.child")
    ferry.on_sub(
        "CREATE TABLE app.child (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " parent_id int NOT NULL, note text)"
    )
    ferry.subscribe("s", ["pub"], "copy_schema=true", "enabled=false")
    # Left alone: no second primary key or index steps for it.
    assert ferry.on_sub(
        "SELECT count(*) FROM pgferry.schema_step WHERE table_name = 'child' AND phase = 1"
    ) == [(0,)]


def test_refresh_creates_added_tables(ferry: Ferry) -> None:
    _setup(ferry)
    ferry.subscribe("s", ["pub"], "copy_schema=true", "enabled=false")
    ferry.on_pub("CREATE TABLE app.later (id int PRIMARY KEY, m app.mood)")
    ferry.on_pub("ALTER PUBLICATION pub ADD TABLE app.later")
    ferry.alter("s", refresh_publication=True)
    assert ferry.on_sub("SELECT to_regclass('app.later') IS NOT NULL")[0][0]
    assert ferry.states("s")["app.later"] == "i"


def test_copy_schema_all_copies_everything_but_pgferry(ferry: Ferry) -> None:
    _setup(ferry)
    ferry.on_pub("CREATE SCHEMA pgferry; CREATE TABLE pgferry.not_ours (x int)")
    ferry.subscribe("s", ["pub"], "copy_schema=all", "enabled=false")
    assert ferry.on_sub("SELECT to_regclass('app.unrelated') IS NOT NULL")[0][0]
    assert ferry.on_sub("SELECT to_regclass('pgferry.not_ours') IS NULL")[0][0]


def test_objects_that_cannot_be_owned_or_granted_are_reported(ferry: Ferry) -> None:
    ferry.pub.sql("DROP ROLE IF EXISTS app_owner")
    ferry.pub.sql("DROP ROLE IF EXISTS app_reader")
    ferry.pub.sql("CREATE ROLE app_owner")
    ferry.pub.sql("CREATE ROLE app_reader")
    try:
        ferry.on_pub("CREATE TABLE owned (id int PRIMARY KEY)")
        ferry.on_pub("ALTER TABLE owned OWNER TO app_owner")
        ferry.on_pub("GRANT SELECT ON owned TO app_reader")
        ferry.on_pub("COMMENT ON TABLE owned IS 'skip me'")
        ferry.on_pub("CREATE PUBLICATION pub FOR TABLE owned")
        result = create_subscription(
            ferry.sub_dsn, "s", ferry.pub.dsn(ferry.pub_db), ["pub"],
            ["copy_schema=true", "enabled=false", "schema_skip=COMMENT public TABLE owned"],
        )  # fmt: skip
        report = "\n".join(result.warnings)
        assert "left out the owner of TABLE public owned (app_owner)" in report
        assert 'left out ACL public TABLE owned: role "app_reader" does not exist' in report
        assert "skipped COMMENT public TABLE owned (schema_skip)" in report
        assert ferry.on_sub("SELECT to_regclass('owned') IS NOT NULL")[0][0]
        assert ferry.on_sub("SELECT obj_description('owned'::regclass)")[0][0] is None
    finally:
        ferry.on_pub("DROP TABLE IF EXISTS owned")
        ferry.pub.sql("DROP ROLE IF EXISTS app_owner")
        ferry.pub.sql("DROP ROLE IF EXISTS app_reader")


def test_a_pg_dump_too_old_is_named() -> None:
    with pytest.raises(SchemaCopyError) as exc:
        find_tools(99)
    assert "PostgreSQL 99 or newer" in exc.value.message
    assert exc.value.hint is not None and "postgresql-client-99" in exc.value.hint


def test_without_copy_schema_tables_must_exist(ferry: Ferry) -> None:
    _setup(ferry)
    with pytest.raises(SubscriberTablesMissing):
        ferry.subscribe("s", ["pub"])
