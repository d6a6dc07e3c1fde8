"""The sequence sync worker and the launcher's rule for it, on real PostgreSQL:
wanted for an enabled subscription with a slot and ``sequences = sync``; it waits
for every table to be ready, syncs at once then, then every
``sequence_sync_interval`` seconds (0: only that once), and stops promptly; with
``pgferry run`` it syncs after the initial sync and keeps up with the publisher."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pgferry.catalog import (
    Subscription,
    SubscriptionOptions,
    SubscriptionTable,
    TableState,
    ensure_catalog,
    store,
)
from pgferry.runner.kinds import build
from pgferry.runner.launcher import Launcher
from pgferry.sequences import SequenceSyncWorker
from pgferry.status import collect
from pgferry.testing import Cluster
from tests.status import Env, environment, until

SEQUENCED = "CREATE TABLE s (id serial PRIMARY KEY, v text)"


@pytest.fixture
def env(cluster: Cluster, dbname: str, tmp_path: Path) -> Iterator[Env]:
    with environment(cluster, dbname, tmp_path) as created:
        created.on_pub(SEQUENCED)
        created.on_sub(SEQUENCED)
        created.on_pub("ALTER PUBLICATION pub ADD TABLE s")
        yield created


def _value(env: Env) -> int | None:
    rows = env.on_sub("SELECT last_value FROM pg_sequences WHERE sequencename = 's_id_seq'")
    return None if rows[0][0] is None else int(rows[0][0])


def _register(env: Env, state: TableState, **options: object) -> None:
    """Subscription ``ferry`` of table ``s`` in ``state``, in the catalog only."""
    with env.cluster.connect(env.sub) as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn,
            Subscription(
                "ferry",
                env.pub_dsn,
                ("pub",),
                "ferry",
                "pgferry_ferry",
                options=replace(SubscriptionOptions(), **options),  # type: ignore[arg-type]
            ),
        )
        store.upsert_table(
            conn, SubscriptionTable("ferry", "public", "s", "public", "s", state, None)
        )


def test_launcher_wants_a_worker_for_sequences_sync(env: Env) -> None:
    with env.cluster.connect(env.sub) as conn:
        ensure_catalog(conn)
        for name, enabled, slot, sequences in (
            ("on", True, "on", "sync"),
            ("off", True, "off", "off"),
            ("disabled", False, "disabled", "sync"),
            ("slotless", True, None, "sync"),
        ):
            options = replace(SubscriptionOptions(), sequences=sequences)  # type: ignore[arg-type]
            store.create_subscription(
                conn,
                Subscription(
                    name, env.pub_dsn, ("pub",), slot, f"pgferry_{name}", enabled, options
                ),
            )
        wanted = Launcher(env.sub_dsn).wanted(conn)
    assert {k for k in wanted if k[0] == "sequences"} == {("sequences", "on")}
    assert ("apply", "off") in wanted
    worker = build(env.sub_dsn, ["sequences", "on"])
    assert isinstance(worker, SequenceSyncWorker) and worker.subscription == "on"


def test_worker_waits_for_ready_tables_then_follows_the_interval(env: Env) -> None:
    env.on_pub("INSERT INTO s (v) SELECT 'x' FROM generate_series(1, 100)")
    _register(env, TableState.INIT, sequences="sync", sequence_sync_interval=1)
    worker = SequenceSyncWorker(env.sub_dsn, "ferry", poll=30.0)  # (woken by the catalog)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(1.5)  # the table is not ready: nothing synced
        assert _value(env) is None and worker.reports == []
        with env.cluster.connect(env.sub) as conn:
            store.set_table_state(conn, "ferry", "public", "s", TableState.READY, None)
        ready_at = time.monotonic()
        until(lambda: _value(env) == 100, 10, "the sync once the table is ready")
        assert time.monotonic() - ready_at < 5.0  # woken by the catalog, not the 30 s poll
        # Then every second.
        env.on_pub("SELECT nextval('s_id_seq') FROM generate_series(1, 50)")
        until(lambda: _value(env) == 150, 10, "a periodic sync")
        assert thread.is_alive()
    finally:
        worker.request_stop()
        stopping = time.monotonic()
        thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - stopping < 1.0
    assert worker.reports[0].set_count == 1


def test_worker_with_interval_0_syncs_once(env: Env) -> None:
    env.on_pub("INSERT INTO s (v) SELECT 'x' FROM generate_series(1, 10)")
    _register(env, TableState.READY, sequences="sync", sequence_sync_interval=0)
    worker = SequenceSyncWorker(env.sub_dsn, "ferry")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: _value(env) == 10, 10, "the first sync")
        env.on_pub("SELECT nextval('s_id_seq') FROM generate_series(1, 5)")
        time.sleep(2.5)
        assert _value(env) == 10 and len(worker.reports) == 1
    finally:
        worker.request_stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_run_syncs_sequences_after_the_initial_sync(env: Env) -> None:
    env.on_pub("INSERT INTO s (v) SELECT 'row ' || g FROM generate_series(1, 500) g")
    env.create("ferry", "sequences=sync", "sequence_sync_interval=1", "sequence_headroom=10")
    launcher = env.launch()

    def synced(value: int) -> bool:
        return _value(env) == value

    until(lambda: synced(510), 60, "the sequence synced after the initial sync")
    assert env.on_sub("SELECT count(*) FROM s") == [(500,)]
    rows = env.on_sub("SELECT DISTINCT state FROM pgferry.subscription_table")
    assert rows == [("r",)]
    # New rows on the publisher: the periodic sync follows (with the headroom).
    env.on_pub("INSERT INTO s (v) SELECT 'more' FROM generate_series(1, 40)")
    until(lambda: synced(550), 30, "a periodic sync")
    (status,) = collect(env.sub_dsn)
    assert [(s.name, s.publisher_value, s.subscriber_value) for s in status.sequences] == [
        ("s_id_seq", 540, 550)
    ]
    assert status.largest_sequence_drift == -10
    env.stop(launcher)
    log = env.log()
    assert "subscription 'ferry': 1 sequence, 1 set; largest drift 500" in log, log
    assert "Traceback" not in log, log
