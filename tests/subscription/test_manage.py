"""Subscription management on real PostgreSQL: create, alter, drop, list.

Publisher and subscriber are two databases of one cluster, which is also the case
native ``CREATE SUBSCRIPTION`` hangs on; every test would hang if pgferry created
the slot while a transaction was open on the subscriber.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgferry.apply import ApplyWorker
from pgferry.catalog import ensure_catalog, store
from pgferry.catalog.store import SubscriptionExists, SubscriptionNotFound
from pgferry.errors import (
    ConnectionFailed,
    InterfaceError,
    PublicationNotFound,
    ReplicationNotPermitted,
    SlotAlreadyExists,
    SlotInUse,
    WalLevelNotLogical,
)
from pgferry.protocol import Lsn
from pgferry.runner import Launcher
from pgferry.stream import PgoutputOptions, ReplicationConnection
from pgferry.subscription import (
    AlterRequest,
    ColumnListConflict,
    SubscriberTablesMissing,
    alter_subscription,
    create_subscription,
    drop_subscription,
    list_subscriptions,
    naming,
    to_json,
)
from pgferry.subscription.manage import PublisherCannotRead
from pgferry.subscription.options import create_options
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import create_slot, current_lsn, drop_origins

PASSWORD = "s3cret-Pa55"  # noqa: S105 - never a real password
UNREACHABLE = f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} connect_timeout=3"


@dataclass
class Env:
    cluster: Cluster
    pub: str
    sub: str

    @property
    def pub_dsn(self) -> str:
        return self.cluster.dsn(self.pub)

    @property
    def sub_dsn(self) -> str:
        return self.cluster.dsn(self.sub)

    def both(self, ddl: str) -> None:
        self.cluster.sql(ddl, dbname=self.pub)
        self.cluster.sql(ddl, dbname=self.sub)

    def on_pub(self, query: str) -> list[tuple[Any, ...]]:
        return self.cluster.sql(query, dbname=self.pub)

    def on_sub(self, query: str) -> list[tuple[Any, ...]]:
        return self.cluster.sql(query, dbname=self.sub)

    def slots(self) -> dict[str, tuple[Any, ...]]:
        """Slots of the publisher database: name -> (plugin, temporary, two_phase)."""
        rows = self.cluster.sql(
            "SELECT slot_name, plugin, temporary FROM pg_replication_slots WHERE database = %s",
            (self.pub,),
        )
        return {r[0]: tuple(r[1:]) for r in rows}

    def origins(self) -> set[str]:
        return {r[0] for r in self.on_sub("SELECT roname FROM pg_replication_origin")}

    def create(self, name: str = "ferry", *options: str, pubs: tuple[str, ...] = ("pub",)) -> Any:
        return create_subscription(self.sub_dsn, name, self.pub_dsn, pubs, options)

    def alter(self, name: str = "ferry", **request: Any) -> tuple[str, ...]:
        return alter_subscription(self.sub_dsn, name, AlterRequest(**request)).changes

    def row(self, name: str = "ferry") -> store.Subscription:
        with self.cluster.connect(self.sub) as conn:
            return store.get_subscription(conn, name)

    def tables(self, name: str = "ferry") -> dict[str, str]:
        """``schema.table`` -> state."""
        with self.cluster.connect(self.sub) as conn:
            return {f"{t.remote_schema}.{t.remote_name}": t.state for t in store.tables(conn, name)}

    def catalog_rows(self) -> int:
        rows = self.on_sub(
            "SELECT count(*) FROM pgferry.subscription"
            " WHERE to_regclass('pgferry.subscription') IS NOT NULL"
        )
        return int(rows[0][0])


@pytest.fixture
def env(cluster: Cluster, dbname: str) -> Iterator[Env]:
    sub = dbname[:50] + "_sub"
    cluster.create_database(sub)
    drop_origins(cluster)
    try:
        yield Env(cluster, dbname, sub)
    finally:
        cluster.drop_database(sub)
        drop_origins(cluster)


@pytest.fixture
def published(env: Env) -> Env:
    """Tables t1, t2 on both sides, publication ``pub`` of both on the publisher."""
    env.both(
        "CREATE TABLE t1 (id int PRIMARY KEY, v text);"
        " CREATE TABLE t2 (id int PRIMARY KEY, n numeric)"
    )
    env.on_pub("CREATE PUBLICATION pub FOR TABLE t1, t2")
    return env


def _catalog_empty(env: Env) -> bool:
    exists = env.on_sub("SELECT to_regclass('pgferry.subscription') IS NOT NULL")[0][0]
    return not exists or env.catalog_rows() == 0


# -- create ------------------------------------------------------------------------------


def test_create_with_defaults(published: Env) -> None:
    result = published.create()
    assert result.slot_created and result.enabled and not result.warnings
    assert published.slots() == {"ferry": ("pgoutput", False)}
    sub = published.row()
    assert sub.enabled and sub.slot_name == "ferry" and sub.origin_name == "pgferry_ferry"
    assert sub.publications == ("pub",) and sub.conninfo == published.pub_dsn
    assert sub.options.to_json() == {
        "copy_data": True,
        "create_slot": True,
        "connect": True,
        "binary": False,
        "streaming": "parallel",
        "two_phase": False,
        "disable_on_error": False,
        "synchronous_commit": "off",
        "origin": "any",
        "password_required": True,
        "run_as_owner": False,
        "conflict_resolution": "error",
        "apply_mode": "batch",
        "batch_transactions": 1000,
        "batch_latency_ms": 100,
        "copy_schema": "false",
        "schema_skip": "",
        "sequences": "off",
        "sequence_sync_interval": 5,
        "sequence_headroom": 0,
        "missing_columns": "error",
        "ddl_unsafe": "stop",
    }
    assert published.tables() == {"public.t1": "i", "public.t2": "i"}
    assert "pgferry_ferry" in published.origins()


def test_same_cluster_create_does_not_hang(published: Env) -> None:
    done: list[object] = []

    def run() -> None:
        try:
            done.append(published.create())
        except BaseException as exc:
            done.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=20)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), "create hung on a same-cluster subscription"
    assert not isinstance(done[0], BaseException), done[0]
    assert elapsed < 10
    assert "ferry" in published.slots()


def test_copy_data_false_registers_tables_ready(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    assert published.tables() == {"public.t1": "r", "public.t2": "r"}
    assert published.row().options.copy_data is False


@pytest.mark.pg_min(14)  # binary and streaming need a 14 publisher
def test_options_are_normalised(published: Env) -> None:
    published.create(
        "ferry",
        "binary=yes",
        "streaming=ON",
        "disable_on_error=1",
        "synchronous_commit=Remote_Apply",
        "run_as_owner=t",
        "enabled=off",
    )
    sub = published.row()
    assert not sub.enabled
    assert sub.options.binary is True and sub.options.disable_on_error is True
    assert sub.options.streaming == "on"
    assert sub.options.synchronous_commit == "remote_apply"
    assert sub.options.run_as_owner is True


def test_connect_false_creates_no_slot_and_is_disabled(env: Env) -> None:
    # The publisher is not even reachable: nothing connects to it.
    result = create_subscription(env.sub_dsn, "ferry", UNREACHABLE, ("pub",), ["connect=false"])
    assert not result.slot_created and not result.enabled and result.tables == ()
    sub = env.row()
    assert not sub.enabled and sub.slot_name == "ferry"
    assert sub.options.create_slot is False and sub.options.copy_data is False
    assert env.tables() == {}
    assert env.slots() == {}


def test_missing_subscriber_table_and_column_are_listed_and_nothing_is_created(env: Env) -> None:
    env.on_pub(
        "CREATE TABLE t1 (id int PRIMARY KEY, v text, extra int, more int);"
        " CREATE TABLE t2 (id int PRIMARY KEY); CREATE VIEW v AS SELECT 1 AS id;"
        " CREATE PUBLICATION pub FOR TABLE t1, t2"
    )
    env.on_sub("CREATE TABLE t1 (id int PRIMARY KEY, v text)")
    with pytest.raises(SubscriberTablesMissing) as exc:
        env.create()
    message = exc.value.message
    assert "table public.t1 lacks columns extra, more" in message
    assert "table public.t2 does not exist" in message
    assert "DDL" in (exc.value.hint or "")
    assert env.slots() == {}
    assert _catalog_empty(env)
    assert "pgferry_ferry" not in env.origins()


def test_subscriber_view_or_generated_column_is_refused(env: Env) -> None:
    env.on_pub(
        "CREATE TABLE t1 (id int PRIMARY KEY, v int); CREATE TABLE t2 (id int PRIMARY KEY);"
        " CREATE PUBLICATION pub FOR TABLE t1, t2"
    )
    env.on_sub(
        "CREATE TABLE t1 (id int PRIMARY KEY, v int GENERATED ALWAYS AS (id * 2) STORED);"
        " CREATE VIEW t2 AS SELECT 1 AS id"
    )
    with pytest.raises(SubscriberTablesMissing) as exc:
        env.create()
    assert "table public.t1 has generated column v" in exc.value.message
    assert "public.t2 is a view, not a table" in exc.value.message
    assert env.slots() == {}


def test_missing_publication(published: Env) -> None:
    with pytest.raises(PublicationNotFound) as exc:
        published.create("ferry", pubs=("pub", "nope", "gone"))
    assert "publications 'nope', 'gone' do not exist on the publisher" in exc.value.message
    assert published.slots() == {}
    assert _catalog_empty(published)


def test_duplicate_name_fails_before_creating_a_slot(published: Env) -> None:
    published.create()
    with pytest.raises(SubscriptionExists) as exc:
        published.create("ferry", "slot_name=other")
    assert exc.value.message == "subscription 'ferry' already exists"
    assert set(published.slots()) == {"ferry"}


def test_an_origin_of_that_name_in_the_cluster_is_refused(published: Env) -> None:
    # Another database of the cluster has a subscription "ferry" (its origin).
    published.on_sub("SELECT pg_replication_origin_create('pgferry_ferry')")
    with pytest.raises(InterfaceError, match="replication origin 'pgferry_ferry' already exists"):
        published.create()
    assert published.slots() == {}
    assert _catalog_empty(published)
    assert "pgferry_ferry" in published.origins()  # not ours to drop


def test_existing_slot_is_an_error_and_is_left_alone(published: Env) -> None:
    create_slot(published.cluster, published.pub, "ferry")
    with pytest.raises(SlotAlreadyExists) as exc:
        published.create()
    assert "create_slot=false" in (exc.value.hint or "")
    assert set(published.slots()) == {"ferry"}  # not ours: not dropped
    assert _catalog_empty(published)
    # Using it is what the hint says.
    result = published.create("ferry", "create_slot=false")
    assert not result.slot_created and not result.warnings
    assert published.row().slot_name == "ferry"


def test_create_slot_false_warns_when_the_slot_is_missing(published: Env) -> None:
    result = published.create("ferry", "create_slot=false")
    assert published.slots() == {}
    assert result.warnings == (
        "replication slot 'ferry' does not exist on the publisher;"
        " create it before enabling the subscription",
    )


def test_failure_after_the_slot_was_created_drops_it(published: Env) -> None:
    with published.cluster.connect(published.sub) as conn:
        ensure_catalog(conn)
    published.on_sub(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'catalog write refused'; END$$;"
        " CREATE TRIGGER boom BEFORE INSERT ON pgferry.subscription_table"
        " FOR EACH ROW EXECUTE FUNCTION boom()"
    )
    with pytest.raises(psycopg.errors.RaiseException, match="catalog write refused"):
        published.create()
    assert published.slots() == {}
    assert _catalog_empty(published)
    assert "pgferry_ferry" not in published.origins()


def test_unreachable_publisher_on_create(env: Env) -> None:
    with pytest.raises(ConnectionFailed) as exc:
        create_subscription(env.sub_dsn, "ferry", UNREACHABLE, ("pub",))
    assert "password=********" in exc.value.message
    assert PASSWORD not in exc.value.message
    assert _catalog_empty(env)


def test_publisher_without_logical_wal_level_is_refused(
    env: Env, make_cluster: ClusterFactory
) -> None:
    publisher = make_cluster(settings={"wal_level": "replica"})
    publisher.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t")
    with pytest.raises(WalLevelNotLogical, match="wal_level = replica"):
        create_subscription(env.sub_dsn, "ferry", publisher.dsn(), ("pub",))
    assert _catalog_empty(env)


def test_a_role_without_replication_is_refused(published: Env) -> None:
    published.cluster.sql("CREATE ROLE ferry_norepl LOGIN")
    try:
        conninfo = make_conninfo(published.pub_dsn, user="ferry_norepl")
        with pytest.raises(ReplicationNotPermitted) as exc:
            create_subscription(published.sub_dsn, "ferry", conninfo, ("pub",))
        assert "REPLICATION" in (exc.value.hint or "")
        assert published.slots() == {}
    finally:
        published.cluster.sql("DROP ROLE ferry_norepl")


def test_a_role_that_cannot_read_a_published_table_is_refused(published: Env) -> None:
    role = "ferry_reader"
    published.cluster.sql(f"CREATE ROLE {role} LOGIN REPLICATION")
    try:
        published.on_pub(f"GRANT SELECT ON t1 TO {role}")
        conninfo = make_conninfo(published.pub_dsn, user=role)
        with pytest.raises(PublisherCannotRead) as exc:
            create_subscription(published.sub_dsn, "ferry", conninfo, ("pub",))
        assert exc.value.message == (
            f"the publisher's role {role} cannot read published table public.t2:"
            " the initial copy needs SELECT"
        )
        assert f"GRANT SELECT ON public.t2 TO {role}" in (exc.value.hint or "")
        assert published.slots() == {} and published.catalog_rows() == 0
        # Without the copy, SELECT is not needed.
        create_subscription(published.sub_dsn, "ferry", conninfo, ("pub",), ["copy_data=false"])
        # A refresh checks the tables it adds for copying.
        published.both("CREATE TABLE t3 (id int PRIMARY KEY); CREATE TABLE t4 (id int)")
        published.on_pub(f"ALTER PUBLICATION pub ADD TABLE t3, t4; GRANT SELECT ON t2 TO {role}")
        with pytest.raises(PublisherCannotRead, match=r"tables public\.t3, public\.t4:"):
            published.alter(refresh_publication=True)
        assert set(published.tables()) == {"public.t1", "public.t2"}
        published.on_pub(f"GRANT SELECT (id) ON t3 TO {role}; GRANT SELECT ON t4 TO {role}")
        published.alter(refresh_publication=True)  # every published column is enough
        assert published.tables() == {
            "public.t1": "r", "public.t2": "r", "public.t3": "i", "public.t4": "i",
        }  # fmt: skip
    finally:
        published.on_pub(f"DROP OWNED BY {role}")
        published.cluster.sql(f"DROP ROLE {role}")


def test_origin_none_and_parallel_streaming_need_no_16(published: Env) -> None:
    # Before 16 too: pgferry filters the Origin messages itself, and applies a
    # streamed transaction as it arrives by itself (the publisher streams "on").
    published.create("ferry", "origin=none", "streaming=parallel")
    assert published.row().options.origin == "none"
    assert published.row().options.streaming == "parallel"


@pytest.mark.pg_min(15)
def test_column_lists_and_row_filters_are_recorded(env: Env) -> None:
    env.on_pub(
        "CREATE TABLE t (id int PRIMARY KEY, v text, secret text);"
        " CREATE TABLE u (id int PRIMARY KEY, v text);"
        " CREATE PUBLICATION pub FOR TABLE t (id, v) WHERE (id > 10), u"
    )
    # The subscriber needs only the published columns.
    env.on_sub("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int, v text)")
    env.create()
    with env.cluster.connect(env.sub) as conn:
        rows = {t.remote_name: t for t in store.tables(conn, "ferry")}
    assert rows["t"].columns == ("id", "v") and rows["t"].row_filter == "(id > 10)"
    assert rows["u"].columns is None and rows["u"].row_filter is None


@pytest.mark.pg_min(15)
def test_different_column_lists_in_two_publications_are_refused(env: Env) -> None:
    env.both("CREATE TABLE t (id int PRIMARY KEY, a int, b int)")
    env.on_pub(
        "CREATE PUBLICATION p1 FOR TABLE t (id, a); CREATE PUBLICATION p2 FOR TABLE t (id, b)"
    )
    with pytest.raises(ColumnListConflict, match=r"different column lists for table public\.t "):
        env.create("ferry", pubs=("p1", "p2"))
    assert env.slots() == {}


def test_catalog_is_not_readable_by_public(published: Env) -> None:
    published.create()
    published.cluster.sql("CREATE ROLE ferry_plain LOGIN")
    try:
        dsn = make_conninfo(published.sub_dsn, user="ferry_plain")
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT conninfo FROM pgferry.subscription")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM pgferry.subscription_table")
    finally:
        published.cluster.sql("DROP ROLE ferry_plain")


# -- drop --------------------------------------------------------------------------------


def test_drop_removes_slot_origin_and_row(published: Env) -> None:
    published.create()
    # (The origin verify --repair writes under, as if it had run.)
    published.on_sub("SELECT pg_replication_origin_create('pgferry_repair_ferry')")
    result = drop_subscription(published.sub_dsn, "ferry")
    assert result.dropped and result.slot_dropped == "ferry" and not result.warnings
    assert published.slots() == {}
    assert "pgferry_ferry" not in published.origins()
    assert "pgferry_repair_ferry" not in published.origins()
    assert published.catalog_rows() == 0
    assert published.on_sub("SELECT count(*) FROM pgferry.subscription_table") == [(0,)]


def test_drop_warns_when_the_slot_is_already_gone(published: Env) -> None:
    published.create()
    published.on_pub("SELECT pg_drop_replication_slot('ferry')")
    result = drop_subscription(published.sub_dsn, "ferry")
    assert result.dropped and result.slot_dropped is None
    assert result.warnings == ("replication slot 'ferry' did not exist on the publisher",)
    assert published.catalog_rows() == 0


def test_drop_with_unreachable_publisher_says_to_detach_the_slot(env: Env) -> None:
    create_subscription(env.sub_dsn, "ferry", UNREACHABLE, ("pub",), ["connect=false"])
    with pytest.raises(ConnectionFailed) as exc:
        drop_subscription(env.sub_dsn, "ferry")
    assert "could not connect to the publisher to drop replication slot 'ferry'" in str(exc.value)
    assert PASSWORD not in str(exc.value) and PASSWORD not in (exc.value.hint or "")
    assert "alter ferry --disable --with slot_name=NONE" in (exc.value.hint or "")
    assert env.catalog_rows() == 1  # nothing dropped
    # Doing what the hint says works.
    env.alter(disable=True, with_options=("slot_name=NONE",))
    result = drop_subscription(env.sub_dsn, "ferry")
    assert result.dropped and result.slot_dropped is None
    assert env.catalog_rows() == 0 and "pgferry_ferry" not in env.origins()


def test_drop_stops_the_workers_of_pgferry_run(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    launcher = Launcher(published.sub_dsn, poll_interval=0.2)
    thread = threading.Thread(target=launcher.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'ferry'"
        while published.on_pub(active) != [(True,)]:
            assert time.monotonic() < deadline, "the apply worker did not start"
            time.sleep(0.1)
        result = drop_subscription(published.sub_dsn, "ferry")
        assert result.dropped and result.slot_dropped == "ferry"
        assert published.slots() == {}
        assert "pgferry_ferry" not in published.origins()
        assert published.catalog_rows() == 0
    finally:
        launcher.request_stop()
        thread.join(timeout=60)
    assert not launcher.children


def test_drop_of_a_slot_someone_else_streams_fails_after_the_timeout(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    consumer = ReplicationConnection.connect(published.pub_dsn)
    stream = consumer.start_replication("ferry", PgoutputOptions(("pub",)))
    try:
        started = time.monotonic()
        with pytest.raises(SlotInUse) as exc:
            drop_subscription(published.sub_dsn, "ferry", stop_timeout=1)
        assert 1 <= time.monotonic() - started < 10
        assert "pgferry run stops its workers" in (exc.value.hint or "")
    finally:
        stream.close()
    # Nothing was dropped, but the subscription is disabled.
    assert published.catalog_rows() == 1 and not published.row().enabled
    assert "ferry" in published.slots()
    assert drop_subscription(published.sub_dsn, "ferry").slot_dropped == "ferry"


def test_drop_missing_subscription(env: Env) -> None:
    with pytest.raises(SubscriptionNotFound, match="subscription 'nope' does not exist"):
        drop_subscription(env.sub_dsn, "nope")
    assert not drop_subscription(env.sub_dsn, "nope", if_exists=True).dropped
    # No catalog was created by asking.
    assert env.on_sub("SELECT to_regnamespace('pgferry') IS NULL") == [(True,)]


def test_drop_also_drops_table_sync_slots(published: Env) -> None:
    from pgferry.origins import sync_origin

    published.create()
    sync = sync_origin("ferry", "public", "t1")
    create_slot(published.cluster, published.pub, sync)
    published.on_sub(f"SELECT pg_replication_origin_create('{sync}')")
    drop_subscription(published.sub_dsn, "ferry")
    assert published.slots() == {}
    assert sync not in published.origins()


# -- alter -------------------------------------------------------------------------------


def test_alter_enable_disable(published: Env) -> None:
    published.create()
    assert published.alter(disable=True) == ("disabled",)
    assert not published.row().enabled
    assert published.alter(enable=True) == ("enabled",)
    assert published.row().enabled
    with pytest.raises(InterfaceError, match="mutually exclusive"):
        published.alter(enable=True, disable=True)
    with pytest.raises(InterfaceError, match="nothing to alter"):
        published.alter()
    with pytest.raises(SubscriptionNotFound):
        published.alter("nope", enable=True)


def test_alter_connection_is_validated_stored_and_masked(published: Env) -> None:
    published.create()
    new = published.cluster.dsn(published.pub, password=PASSWORD)
    changes = published.alter(connection=new)
    assert published.row().conninfo == new
    assert "password=********" in changes[0] and PASSWORD not in changes[0]
    with pytest.raises(InterfaceError, match="invalid connection string") as exc:
        published.alter(connection=f"host=x password={PASSWORD} bogus=1")
    assert PASSWORD not in exc.value.message
    assert published.row().conninfo == new


def test_alter_each_option(published: Env) -> None:
    published.create()
    published.alter(
        with_options=(
            "binary=true",
            "streaming=parallel",
            "disable_on_error=on",
            "synchronous_commit=local",
            "origin=NONE",
            "password_required=false",
            "run_as_owner=yes",
        )
    )
    options = published.row().options
    assert options.binary is True and options.streaming == "parallel"
    assert options.disable_on_error is True and options.synchronous_commit == "local"
    assert options.origin == "none"
    assert options.password_required is False and options.run_as_owner is True
    assert options.copy_data is True  # untouched
    # slot_name: only a valid name; NONE only while disabled.
    published.alter(with_options=("slot_name=renamed",))
    assert published.row().slot_name == "renamed"
    with pytest.raises(InterfaceError, match="contains characters other than"):
        published.alter(with_options=("slot_name=Bad-Name",))
    with pytest.raises(InterfaceError, match="slot_name = NONE for enabled subscription"):
        published.alter(with_options=("slot_name=none",))
    # two_phase: only while disabled.
    with pytest.raises(InterfaceError, match="two_phase when the subscription is enabled"):
        published.alter(with_options=("two_phase=true",))
    published.alter(disable=True, with_options=("two_phase=true", "slot_name=NONE"))
    sub = published.row()
    assert sub.options.two_phase is True and sub.slot_name is None and not sub.enabled
    with pytest.raises(InterfaceError, match="does not have a slot name"):
        published.alter(enable=True)
    assert not published.row().enabled  # the failed alter changed nothing
    # Bad keys and values.
    with pytest.raises(InterfaceError) as exc:
        published.alter(with_options=("colour=blue",))
    assert "valid keys: slot_name, binary, streaming" in (exc.value.hint or "")
    with pytest.raises(InterfaceError, match="copy_data applies only to a publication change"):
        published.alter(with_options=("copy_data=false",))
    with pytest.raises(InterfaceError, match="binary requires a Boolean value"):
        published.alter(with_options=("binary=maybe",))
    with pytest.raises(InterfaceError, match="invalid value for synchronous_commit"):
        published.alter(with_options=("synchronous_commit=fast",))


def test_alter_publications_refreshes_tables(published: Env) -> None:
    published.both("CREATE TABLE t3 (id int PRIMARY KEY)")
    published.on_pub("CREATE PUBLICATION pub3 FOR TABLE t3")
    published.create()
    changes = published.alter(add_publications=("pub3",))
    assert changes[0] == "publications set to 'pub', 'pub3'"
    assert published.tables() == {"public.t1": "i", "public.t2": "i", "public.t3": "i"}
    published.alter(drop_publications=("pub",))
    assert published.row().publications == ("pub3",)
    assert published.tables() == {"public.t3": "i"}
    published.alter(set_publications=("pub", "pub3"), with_options=("copy_data=false",))
    assert published.tables() == {"public.t1": "r", "public.t2": "r", "public.t3": "i"}
    # refresh=false changes the publications only.
    published.alter(set_publications=("pub3",), with_options=("refresh=false",))
    assert published.row().publications == ("pub3",)
    assert set(published.tables()) == {"public.t1", "public.t2", "public.t3"}
    with pytest.raises(InterfaceError, match="publication 'pub3' is already in subscription"):
        published.alter(add_publications=("pub3",))
    with pytest.raises(InterfaceError, match="publication 'pub' is not in subscription"):
        published.alter(drop_publications=("pub",))
    with pytest.raises(InterfaceError, match="cannot drop all the publications"):
        published.alter(drop_publications=("pub3",))
    with pytest.raises(PublicationNotFound, match="'nope' does not exist"):
        published.alter(add_publications=("nope",))
    assert published.row().publications == ("pub3",)


def test_refresh_publication_adds_and_removes_tables(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    published.both("CREATE TABLE t3 (id int PRIMARY KEY); CREATE TABLE t4 (id int PRIMARY KEY)")
    published.on_pub("ALTER PUBLICATION pub ADD TABLE t3; ALTER PUBLICATION pub DROP TABLE t1")
    changes = published.alter(refresh_publication=True)
    assert changes == ("refreshed: 1 added (state i: public.t3), 1 removed (public.t1)",)
    assert published.tables() == {"public.t2": "r", "public.t3": "i"}
    published.on_pub("ALTER PUBLICATION pub ADD TABLE t4")
    published.alter(refresh_publication=True, with_options=("copy_data=false",))
    assert published.tables() == {"public.t2": "r", "public.t3": "i", "public.t4": "r"}
    # A newly published table the subscriber lacks: nothing changes.
    published.on_pub("CREATE TABLE t5 (id int PRIMARY KEY); ALTER PUBLICATION pub ADD TABLE t5")
    with pytest.raises(SubscriberTablesMissing, match=r"table public\.t5 does not exist"):
        published.alter(refresh_publication=True)
    assert set(published.tables()) == {"public.t2", "public.t3", "public.t4"}


def _failed(env: Env, lsn: str, name: str = "ferry") -> None:
    """Record an apply error about the remote transaction finished at ``lsn``."""
    with env.cluster.connect(env.sub) as conn:
        store.record_error(conn, name, "boom", finish_lsn=lsn)


def test_skip(published: Env) -> None:
    published.create()
    _failed(published, "0/ABC0")
    assert published.alter(skip="0/ABC0") == ("skip LSN set to 0/ABC0",)
    assert published.row().skip_lsn == Lsn.parse("0/ABC0")
    assert published.alter(skip="NONE") == ("skip LSN cleared",)
    assert published.row().skip_lsn is None
    with pytest.raises(InterfaceError, match="invalid LSN"):
        published.alter(skip="nonsense")
    with pytest.raises(InterfaceError, match="invalid WAL location"):
        published.alter(skip="0/0")
    # Not at or before what is already applied.
    published.on_sub("SELECT pg_replication_origin_advance('pgferry_ferry', '0/5000000')")
    _failed(published, "0/5000000")
    with pytest.raises(InterfaceError, match="must be greater than origin LSN 0/5000000"):
        published.alter(skip="0/5000000")
    assert published.row().skip_lsn is None


def test_skip_takes_only_the_failed_transaction(published: Env) -> None:
    published.create()
    # No error recorded: nothing to skip.
    with pytest.raises(InterfaceError, match="no failed transaction to skip") as exc:
        published.alter(skip="0/DEADBEEF")
    assert "nothing needs skipping" in (exc.value.hint or "")
    # An error about the transaction finished at 0/ABC0: only that LSN is taken.
    _failed(published, "0/ABC0")
    with pytest.raises(InterfaceError, match=r"LSN 0/DEADBEEF\) is not the finish LSN") as exc:
        published.alter(skip="0/DEADBEEF")
    assert exc.value.hint is not None and "--skip 0/ABC0" in exc.value.hint
    assert published.row().skip_lsn is None
    assert published.alter(skip="0/ABC0") == ("skip LSN set to 0/ABC0",)
    # Replication moved on (the error cleared): the LSN is no longer a failed one.
    with published.cluster.connect(published.sub) as conn:
        store.record_error(conn, "ferry", None)
        assert store.failed_lsn(conn, "ferry") is None
    with pytest.raises(InterfaceError, match="no failed transaction to skip"):
        published.alter(skip="0/ABC0")


def test_several_changes_in_one_alter_are_atomic(published: Env) -> None:
    published.create()
    before = published.row()
    # The connection is set, then two_phase is refused (enabled): nothing stays.
    with pytest.raises(InterfaceError, match="two_phase"):
        published.alter(connection="host=elsewhere", skip="0/10", with_options=("two_phase=on",))
    assert published.row() == before
    _failed(published, "0/10")
    changes = published.alter(disable=True, skip="0/10", with_options=("binary=true",))
    assert changes == ("disabled", "binary set to true", "skip LSN set to 0/10")


# -- list --------------------------------------------------------------------------------


def test_list_json_is_stable_and_masked(published: Env) -> None:
    assert list_subscriptions(published.sub_dsn) == []  # no catalog yet: none, none created
    published.create("ferry", "copy_data=false")
    create_subscription(
        published.sub_dsn,
        "away",
        f"host=db.example password={PASSWORD} dbname=app",
        ("p",),
        ["connect=false"],
    )
    document = json.loads(to_json(list_subscriptions(published.sub_dsn)))
    assert [d["name"] for d in document] == ["away", "ferry"]
    keys = {
        "name", "owner", "enabled", "conninfo", "publications", "slot_name", "origin_name",
        "options", "skip_lsn", "tables", "last_error", "last_error_lsn", "last_error_hint",
    }  # fmt: skip
    assert all(set(d) == keys for d in document)
    away, ferry = document
    assert conninfo_to_dict(away["conninfo"]) == {
        "host": "db.example",
        "password": "********",
        "dbname": "app",
    }
    assert PASSWORD not in json.dumps(document)
    assert away["tables"] == {} and away["enabled"] is False
    assert ferry["tables"] == {"r": 2} and ferry["slot_name"] == "ferry"
    assert ferry["options"]["synchronous_commit"] == "off"
    assert ferry["last_error"] is None and ferry["skip_lsn"] is None


# -- rename and owner ---------------------------------------------------------------------


def test_rename_while_pgferry_run_replicates_loses_and_duplicates_nothing(
    published: Env,
) -> None:
    published.create("ferry", "copy_data=false")
    launcher = Launcher(published.sub_dsn, poll_interval=0.2)
    thread = threading.Thread(target=launcher.run, daemon=True)
    stop = threading.Event()
    written: list[int] = []

    def load() -> None:
        # One remote transaction per row, all the time the rename happens.
        with psycopg.connect(published.pub_dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO t1 VALUES (%s, 'x')", (len(written) + 1,))
                written.append(len(written) + 1)
                time.sleep(0.005)

    loader = threading.Thread(target=load, daemon=True)
    new = 'fe "rry'
    thread.start()
    loader.start()
    try:
        count = "SELECT count(*) FROM t1"
        deadline = time.monotonic() + 30
        while published.on_sub(count)[0][0] < 50:
            assert time.monotonic() < deadline, "nothing was applied"
            time.sleep(0.1)
        assert published.alter("ferry", rename=new) == (f"renamed to {new!r}",)
        renamed_at = _origin_progress(published)
        deadline = time.monotonic() + 30
        while ("apply", new) not in launcher.children:
            assert time.monotonic() < deadline, "the launcher did not start the renamed one"
            time.sleep(0.1)
        time.sleep(1.0)  # the new worker applies under load too
        stop.set()
        loader.join(timeout=30)
        target = current_lsn(published.cluster, published.pub)
        deadline = time.monotonic() + 60
        while published.on_sub(count)[0][0] < len(written):
            assert time.monotonic() < deadline, (
                f"rows written were not applied: {published.on_sub(count)} of {len(written)}"
            )
            time.sleep(0.1)
        ids = [r[0] for r in published.on_sub("SELECT id FROM t1 ORDER BY id")]
        assert ids == list(range(1, len(written) + 1))  # nothing lost (and the key: no twice)
        sub = published.row(new)
        assert sub.last_error is None and sub.origin_name == "pgferry_ferry"
        with published.cluster.connect(published.sub) as conn:
            assert store.stats(conn, new)["confl_insert_exists"] == 0  # nothing applied twice
        # One origin, the one it had, with everything applied.
        assert {o for o in published.origins() if o.startswith("pgferry_")} == {"pgferry_ferry"}
        assert renamed_at < _origin_progress(published) <= target  # it went on from there
        assert ("apply", "ferry") not in launcher.children
        published.on_pub("INSERT INTO t2 VALUES (1, 1.5)")
        deadline = time.monotonic() + 30
        while published.on_sub("SELECT count(*) FROM t2") != [(1,)]:
            assert time.monotonic() < deadline, "the renamed subscription stopped applying"
            time.sleep(0.1)
    finally:
        stop.set()
        launcher.request_stop()
        thread.join(timeout=60)
    assert drop_subscription(published.sub_dsn, new).slot_dropped == "ferry"


def _origin_progress(env: Env) -> Lsn:
    rows = env.on_sub(
        "SELECT remote_lsn::text FROM pg_replication_origin_status s JOIN"
        " pg_replication_origin o ON o.roident = s.local_id WHERE o.roname = 'pgferry_ferry'"
    )
    return Lsn.parse(rows[0][0])


def test_rename_waits_for_the_initial_copy(published: Env) -> None:
    published.create("ferry")  # copy_data: the tables are in state i
    with pytest.raises(InterfaceError, match="while tables are being synchronised") as caught:
        published.alter("ferry", rename="other")
    assert caught.value.hint is not None
    assert "pgferry subscription wait ferry" in caught.value.hint
    assert published.row().name == "ferry"
    with pytest.raises(InterfaceError, match="'ferry' is already called 'ferry'"):
        published.alter("ferry", rename="ferry")
    with pytest.raises(InterfaceError, match="longer than 63 bytes"):
        published.alter("ferry", rename="x" * 64)


def test_rename_gives_up_when_the_slot_keeps_streaming(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    consumer = ReplicationConnection.connect(published.pub_dsn)
    stream = consumer.start_replication("ferry", PgoutputOptions(("pub",)))
    try:
        started = time.monotonic()
        with pytest.raises(InterfaceError, match="a worker still streams") as caught:
            naming.rename_subscription(published.sub_dsn, "ferry", "other", stop_timeout=1)
        assert 1 <= time.monotonic() - started < 10
        assert "pgferry run stops its workers" in (caught.value.hint or "")
    finally:
        stream.close()
    # As it was: its name, and enabled again.
    sub = published.row("ferry")
    assert sub.enabled and [s.name for s in _subs(published)] == ["ferry"]


def _subs(env: Env) -> list[store.Subscription]:
    with env.cluster.connect(env.sub) as conn:
        return store.list_subscriptions(conn)


def test_owner_is_recorded_and_checked(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    (info,) = list_subscriptions(published.sub_dsn)
    creator = published.on_sub("SELECT current_user")[0][0]
    assert info.owner == creator
    role = f"{published.sub[:40]}_Owner"
    published.cluster.sql(f'CREATE ROLE "{role}"')
    try:
        assert published.alter("ferry", owner=role) == (f'owner set to "{role}"',)
        (info,) = list_subscriptions(published.sub_dsn)
        assert info.owner == role
        with pytest.raises(InterfaceError, match='role "nobody here" does not exist'):
            published.alter("ferry", owner="nobody here")
    finally:
        published.cluster.sql(f'DROP ROLE "{role}"')


# -- end to end --------------------------------------------------------------------------


def test_apply_worker_replicates_after_create(published: Env) -> None:
    published.create("ferry", "copy_data=false")
    published.on_pub("INSERT INTO t1 VALUES (1, 'one'), (2, 'two')")
    target = current_lsn(published.cluster, published.pub)
    worker = ApplyWorker(published.sub_dsn, "ferry", status_interval=1)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline and thread.is_alive():
        rows = published.on_sub("SELECT id, v FROM t1 ORDER BY id")
        if len(rows) == 2:
            break
        time.sleep(0.1)
    worker.request_stop()
    thread.join(timeout=30)
    assert not failure, failure
    assert rows == [(1, "one"), (2, "two")]
    progress = published.on_sub(
        "SELECT remote_lsn::text FROM pg_replication_origin_status s"
        " JOIN pg_replication_origin o ON o.roident = s.local_id WHERE o.roname = 'pgferry_ferry'"
    )
    # The origin records the applied commit: past the slot's start, up to the insert.
    applied = Lsn.parse(progress[0][0])
    assert Lsn(0) < applied <= target


def test_create_then_pgferry_run_copies_replicates_and_drop_stops_it(published: Env) -> None:
    published.on_pub("INSERT INTO t1 SELECT g, 'old' FROM generate_series(1, 100) g")
    published.create()  # copy_data: the tables start in state i
    launcher = Launcher(published.sub_dsn, poll_interval=0.2)
    thread = threading.Thread(target=launcher.run, daemon=True)
    thread.start()
    try:
        published.on_pub("INSERT INTO t1 VALUES (1000, 'new'); INSERT INTO t2 VALUES (1, 2.5)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = published.on_sub("SELECT (SELECT count(*) FROM t1), (SELECT count(*) FROM t2)")
            if counts == [(101, 1)] and set(published.tables().values()) == {"r"}:
                break
            time.sleep(0.2)
        assert counts == [(101, 1)]
        assert published.tables() == {"public.t1": "r", "public.t2": "r"}
        assert drop_subscription(published.sub_dsn, "ferry").slot_dropped == "ferry"
        assert published.slots() == {}
        assert not {o for o in published.origins() if o.startswith("pgferry_")}
    finally:
        launcher.request_stop()
        thread.join(timeout=60)


# -- options (no server) -----------------------------------------------------------------


def test_option_rules() -> None:
    assert create_options("s", ["connect=false"]).create_slot is False
    with pytest.raises(InterfaceError, match="connect = false and enabled = true"):
        create_options("s", ["connect=false", "enabled=true"])
    with pytest.raises(InterfaceError, match="slot_name = NONE must also set enabled = false"):
        create_options("s", ["slot_name=NONE"])
    with pytest.raises(InterfaceError, match="slot_name = NONE must also set create_slot"):
        create_options("s", ["slot_name=NONE", "enabled=false"])
    opts = create_options("s", ["slot_name=none", "enabled=false", "create_slot=false"])
    assert opts.slot_name is None
    assert create_options("s", ["slot_name=NONE", "connect=false"]).slot_name is None
    with pytest.raises(InterfaceError) as exc:
        create_options("s", ["colour=blue"])
    assert "colour" in exc.value.message
    assert exc.value.hint == (
        "valid keys: copy_data, create_slot, enabled, connect, slot_name, binary, streaming,"
        " two_phase, disable_on_error, synchronous_commit, origin, password_required,"
        " run_as_owner, conflict_resolution, apply_mode, batch_transactions, batch_latency_ms,"
        " copy_schema, schema_skip, sequences, sequence_sync_interval, sequence_headroom,"
        " missing_columns, ddl_unsafe"
    )
    with pytest.raises(InterfaceError, match="given twice"):
        create_options("s", ["binary=true", "BINARY=false"])
    with pytest.raises(InterfaceError, match="expects KEY=VALUE"):
        create_options("s", ["binary"])
    with pytest.raises(InterfaceError, match="default slot name"):
        create_options("My-Sub", [])
    assert create_options("My-Sub", ["slot_name=my_sub"]).slot_name == "my_sub"
    for spelling, value in [("TRUE", True), ("off", False), ("1", True), ("No", False)]:
        assert create_options("s", [f"binary={spelling}"]).get("binary") is value
    assert create_options("s", ["streaming=true"]).get("streaming") == "on"
    assert create_options("s", ["synchronous_commit=false"]).get("synchronous_commit") == "off"
    with pytest.raises(InterfaceError, match="invalid value for origin"):
        create_options("s", ["origin=some"])


def test_apply_mode_and_batch_options() -> None:
    stored = create_options("s", ["apply_mode=EXACT", "batch_transactions=7"]).stored
    assert (stored["apply_mode"], stored["batch_transactions"]) == ("exact", 7)
    assert stored["batch_latency_ms"] == 100
    for bad in ("batch_transactions=0", "batch_latency_ms=-1", "batch_transactions=many"):
        with pytest.raises(InterfaceError, match="must be an integer"):
            create_options("s", [bad])
    with pytest.raises(InterfaceError, match="invalid value for apply_mode"):
        create_options("s", ["apply_mode=fast"])


def test_schema_and_sequence_options() -> None:
    """copy_schema takes a boolean or ``all``; sequences default to sync with it."""
    plain = create_options("s", [])
    assert plain.options.copy_schema == "false" and plain.options.sequences == "off"
    copied = create_options("s", ["copy_schema=on"])
    assert copied.options.copy_schema == "true" and copied.options.sequences == "sync"
    whole = create_options("s", ["copy_schema=ALL", "sequences=off"])
    assert whole.options.copy_schema == "all" and whole.options.sequences == "off"
    skipped = create_options("s", ["schema_skip= EXTENSION - pg_trgm "])
    assert skipped.options.schema_skip == "EXTENSION - pg_trgm"
    with pytest.raises(InterfaceError, match="copy_schema"):
        create_options("s", ["copy_schema=some"])
    with pytest.raises(InterfaceError, match="sequence_sync_interval"):
        create_options("s", ["sequence_sync_interval=-1"])
