"""The apply worker's confirmations (``pgferry.apply.worker``)."""

from __future__ import annotations

import threading
import time

import pytest

from pgferry.apply import ApplyWorker, applier
from pgferry.apply import handover as apply_handover
from pgferry.catalog import Subscription, SubscriptionTable, TableState, ensure_catalog, store
from pgferry.protocol import Lsn
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.apply.pair import Pair
from tests.support import create_slot, current_lsn


def _wait_confirmed(pair: Pair, timeout: float) -> float:
    """Seconds until the slot confirmed everything written on the publisher so far."""
    target = current_lsn(pair.cluster, pair.pub)
    start = time.monotonic()
    while pair.confirmed() < target:
        assert time.monotonic() - start < timeout, "the slot was not confirmed"
        time.sleep(0.02)
    return time.monotonic() - start


def test_an_idle_worker_flushes_its_wal_and_confirms_at_once(pair: Pair) -> None:
    """With synchronous_commit off (the default) a transaction is confirmed only
    once the subscriber's WAL is flushed past its commit. With the WAL writer
    slowed to one round per 10 s, the idle worker flushes it itself: the
    publisher learns the position within a second or two, not at the WAL
    writer's next round."""
    cluster = pair.cluster
    pair.publish("CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    cluster.sql("ALTER SYSTEM SET wal_writer_delay = '10s'")
    cluster.sql("SELECT pg_reload_conf()")
    try:
        with pair.running() as run:
            cluster.sql("INSERT INTO t VALUES (1, 'a')", dbname=pair.pub)
            # The first commit also wakes a hibernating WAL writer, which then
            # sleeps 10 s at a time (it hibernates again only after 50 idle rounds).
            _wait_confirmed(pair, timeout=30)
            cluster.sql("INSERT INTO t VALUES (2, 'b')", dbname=pair.pub)
            elapsed = _wait_confirmed(pair, timeout=30)
            assert not run.failure
        assert elapsed < 3, f"confirmed after {elapsed:.1f} s"
        assert pair.rows("SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "b")]
    finally:
        cluster.sql("ALTER SYSTEM RESET wal_writer_delay")
        cluster.sql("SELECT pg_reload_conf()")


def test_a_batch_committed_in_the_background_is_confirmed_at_the_next_pause(
    make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recent transactions (a live stream) are committed by the writer thread as
    soon as they are received; what they applied is confirmed when the stream
    next pauses, not at the worker's next idle look (made 8 s here; 0.5 s by
    default). Every transaction counts as recent here. The publisher is a
    cluster of its own: the subscriber's commits would otherwise move its WAL,
    and the walsender's keepalives for that would confirm too."""
    monkeypatch.setattr(apply_handover, "IDLE_INTERVAL", 8.0)
    monkeypatch.setattr(applier, "LIVE_WINDOW", 3600.0)
    publisher, subscriber = make_cluster(), make_cluster()
    ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)"
    publisher.sql(ddl + "; CREATE PUBLICATION pub FOR TABLE t")
    subscriber.sql(ddl)
    create_slot(publisher, "postgres", "ferry")
    with subscriber.connect() as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn, Subscription("ferry", publisher.dsn(), ("pub",), "ferry", "pgferry_ferry")
        )
        store.upsert_table(
            conn, SubscriptionTable("ferry", "public", "t", "public", "t", TableState.READY, None)
        )
    publisher.sql("INSERT INTO t SELECT generate_series(1, 40), 'x'")
    target = current_lsn(publisher)
    ferry = ApplyWorker(subscriber.dsn(), "ferry", status_interval=30)
    thread = threading.Thread(target=ferry.run, daemon=True)
    began = time.monotonic()
    thread.start()
    try:
        while _confirmed(publisher) < target:
            assert time.monotonic() - began < 60, "the slot was not confirmed"
            time.sleep(0.01)
        elapsed = time.monotonic() - began
    finally:
        ferry.request_stop()
        thread.join(timeout=60)
    assert elapsed < 4, f"confirmed after {elapsed:.1f} s"
    assert subscriber.sql("SELECT count(*) FROM t") == [(40,)]


def _confirmed(cluster: Cluster) -> Lsn:
    (row,) = cluster.sql(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'ferry'"
    )
    return Lsn.parse(str(row[0]))


def _wait_rows(pair: Pair, query: str, expected: list[tuple[object, ...]]) -> None:
    deadline = time.monotonic() + 30
    while pair.rows(query) != expected:
        assert time.monotonic() < deadline, f"{query}: {pair.rows(query)}"
        time.sleep(0.05)


def test_a_table_removed_from_the_subscription_is_no_longer_applied(pair: Pair) -> None:
    """The worker decides once which tables it applies for as long as the table
    states stay as they are (Applies.ALWAYS); a running worker still sees a table
    leave the subscription (as ALTER SUBSCRIPTION ... REFRESH PUBLICATION does)
    when it next reads the states."""
    cluster = pair.cluster
    pair.publish(
        "CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY)", ["t1", "t2"]
    )
    with pair.running() as run:
        cluster.sql("INSERT INTO t1 VALUES (1); INSERT INTO t2 VALUES (1)", dbname=pair.pub)
        _wait_rows(pair, "SELECT id FROM t1", [(1,)])
        with cluster.connect(pair.sub) as conn:
            store.delete_table(conn, "ferry", "public", "t1")
        # The worker reads the states every half second, when idle too (the
        # walsender's keepalives wake it).
        time.sleep(2)
        cluster.sql("INSERT INTO t1 VALUES (2); INSERT INTO t2 VALUES (2)", dbname=pair.pub)
        _wait_rows(pair, "SELECT id FROM t2 ORDER BY id", [(1,), (2,)])
        assert not run.failure
    assert pair.rows("SELECT id FROM t1") == [(1,)]
