"""An initial copy in progress, seen by ``status`` (library, text, ``--json``,
``--watch``) and ``subscription wait``: rows and bytes done, the estimated totals,
rate and ETA, the sync worker (phase, pid), and a lag that does not say
"caught up" while a table is still being copied.

The copy is held at a known row: a trigger on the subscriber table (enabled
ALWAYS, so it fires in the sync worker's replica session) waits for an advisory
lock the test holds when it meets row 5000, so COPY FROM stops after 4999 rows
until the test lets it go."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgferry.status import (
    SubscriptionStatus,
    SyncWorkerStatus,
    collect,
    render_text,
    to_document,
    wait_ready,
)
from pgferry.testing import Cluster
from tests.cli.test_status import pgferry
from tests.status import Env, environment, until

ROWS = 20000
HELD_AT = 5000
LOCK = 424242


@pytest.fixture
def env(cluster: Cluster, dbname: str, tmp_path: Path) -> Iterator[Env]:
    with environment(cluster, dbname, tmp_path) as created:
        yield created


def _hold_copy_at_row(env: Env) -> None:
    env.on_sub(
        "CREATE FUNCTION public.hold() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF NEW.id = {HELD_AT} THEN"
        f" PERFORM pg_catalog.pg_advisory_xact_lock_shared({LOCK}); END IF;"
        " RETURN NEW; END $$;"
        " CREATE TRIGGER hold BEFORE INSERT ON public.t"
        " FOR EACH ROW EXECUTE FUNCTION public.hold();"
        " ALTER TABLE public.t ENABLE ALWAYS TRIGGER hold"
    )


def _copy_of_t(status: SubscriptionStatus) -> SyncWorkerStatus | None:
    """Table t's sync worker while it copies (u's, empty, comes and goes)."""
    return next((w for w in status.copies if w.name == "t"), None)


def _copying(env: Env) -> SubscriptionStatus | None:
    (status,) = collect(env.sub_dsn)
    worker = _copy_of_t(status)
    if worker is not None and worker.copy is not None and worker.copy.rows >= HELD_AT - 1:
        return status
    return None


def test_copy_progress_in_status_and_wait(env: Env) -> None:
    env.on_pub(
        f"INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g; ANALYZE t"
    )
    _hold_copy_at_row(env)
    with env.cluster.connect(env.sub) as locker:
        locker.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        env.create()
        env.launch()
        until(lambda: _copying(env) is not None, 60, "the copy to reach the held row")
        status = _copying(env)
        assert status is not None
        worker = _copy_of_t(status)
        assert worker is not None
        copy = worker.copy
        assert copy is not None
        assert (worker.schema, worker.name, worker.state, worker.phase) == (
            "public",
            "t",
            "d",
            "copying",
        )
        backend = env.on_sub(
            "SELECT pid FROM pg_stat_progress_copy WHERE relid = 'public.t'::regclass"
        )
        assert worker.pid == backend[0][0] and worker.since is not None
        assert copy.rows == HELD_AT - 1 and copy.bytes > 0
        assert copy.total_rows == ROWS  # the publisher's reltuples after ANALYZE
        # The publisher's size recorded at create (autovacuum may have added a
        # free space or visibility map page to the table since).
        recorded = env.on_sub(
            "SELECT size_bytes FROM pgferry.subscription_table WHERE remote_name = 't'"
        )[0][0]
        assert copy.total_bytes == recorded
        size = env.on_pub("SELECT pg_table_size('t')")[0][0]
        assert size - 3 * 8192 <= recorded <= size
        assert copy.fraction == pytest.approx((HELD_AT - 1) / ROWS)
        assert copy.rows_per_second is not None and copy.rows_per_second > 0
        assert copy.eta_seconds is not None and copy.eta_seconds > 0
        # Not caught up while a table is being copied, whatever the stream says.
        assert status.lag_seconds_source != "caught_up"
        if status.lag_bytes == 0:
            assert (status.lag_seconds, status.lag_seconds_source) == (None, "tables_syncing")
        text = render_text([status])
        assert "caught up" not in text.replace("not caught up", "")
        assert "sync public.t: copying, pid " in text
        assert f"copy public.t: 25% [#####---------------] {HELD_AT - 1:,} of ~{ROWS:,}" in text
        assert "rows/s" in text and "ETA " in text
        doc = to_document(status)
        (sync,) = (w for w in doc["sync_workers"] if w["name"] == "t")
        assert sync["phase"] == "copying" and sync["pid"] == worker.pid
        assert sync["copy"]["rows"] == HELD_AT - 1 and sync["copy"]["total_rows"] == ROWS
        assert sync["copy"]["eta_seconds"] > 0

        # The command line: --json, a watch of two views, and wait's progress lines.
        result = pgferry(env.sub_dsn, "status", "--json")
        (cli_doc,) = json.loads(result.stdout)
        (cli_sync,) = (w for w in cli_doc["sync_workers"] if w["name"] == "t")
        assert cli_sync["copy"]["rows"] == HELD_AT - 1
        watched = pgferry(env.sub_dsn, "status", "--watch", "0.2", "--count", "2")
        print(watched.stdout)
        assert watched.returncode == 0 and watched.stderr == "", watched
        assert watched.stdout.count("pgferry status at ") == 2
        assert watched.stdout.count("copy public.t: 25% [") == 2
        assert max(len(line) for line in watched.stdout.splitlines()) <= 80
        waited = pgferry(env.sub_dsn, "subscription", "wait", "ferry", "--timeout", "1.5")
        assert waited.returncode == 1 and waited.stdout == "", waited
        lines = waited.stderr.splitlines()
        print(waited.stderr)
        copying = f"copying public.t: 25% [#####---------------] {HELD_AT - 1:,} of ~{ROWS:,}"
        assert lines[0].startswith(copying), waited.stderr
        assert any(x.startswith("waiting: ") and "tables ready" in x for x in lines)
        assert lines[-1].startswith("pgferry: error: timed out after 1.")
        locker.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
    wait_ready(env.sub_dsn, "ferry", timeout=60)
    (done,) = collect(env.sub_dsn)
    assert done.sync_workers == () and done.not_ready == ()
    assert env.on_sub("SELECT count(*) FROM t") == [(ROWS,)]
    until(lambda: collect(env.sub_dsn)[0].lag_seconds_source == "caught_up", 30, "caught up")


def test_failing_copy_is_retrying_with_its_next_action(env: Env) -> None:
    env.on_pub("INSERT INTO t SELECT g, 'p' FROM generate_series(1, 10) g")
    env.on_sub("INSERT INTO t VALUES (3, 'subscriber only')")  # the copy's duplicate key
    env.create()
    env.launch()

    def retrying() -> SubscriptionStatus | None:
        (status,) = collect(env.sub_dsn)
        found = [w for w in status.sync_workers if w.phase == "retrying"]
        return status if found and status.last_error is not None else None

    until(lambda: retrying() is not None, 60, "the sync worker waiting to retry")
    status = retrying()
    assert status is not None
    (worker,) = (w for w in status.sync_workers if w.name == "t")
    assert worker.retry is not None and worker.retry.attempt >= 1 and worker.pid is None
    assert status.last_error is not None and "initial copy of public.t" in status.last_error
    assert status.last_error_hint is not None
    assert status.last_error_hint.startswith("fix the subscriber table")
    text = render_text([status])
    assert f"sync public.t: retrying (attempt {worker.retry.attempt}, " in text
    assert "  hint: fix the subscriber table" in text
    assert status.stats["sync_error_count"] >= 1
    # Fixed: the next attempt copies, and the table becomes ready.
    env.on_sub("DELETE FROM t")
    until(lambda: not collect(env.sub_dsn)[0].not_ready, 60, "the table to be ready")
    assert env.on_sub("SELECT count(*) FROM t") == [(10,)]
    assert collect(env.sub_dsn)[0].sync_workers == ()
