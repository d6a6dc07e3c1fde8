"""``pgferry.status`` on real PostgreSQL with a real ``pgferry run``: the report of
a running, a stopped, a killed and a failing subscription, an unreachable
publisher, passwords masked, and :func:`wait_ready` (the library under
``subscription wait``)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from pgferry.conninfo import mask
from pgferry.status import (
    STALE_AFTER,
    SubscriptionStatus,
    WaitFailed,
    collect,
    render_table,
    render_text,
    to_document,
    to_json,
    wait_ready,
)
from pgferry.subscription import AlterRequest, alter_subscription
from pgferry.testing import Cluster
from tests.status import PASSWORD, Env, environment, until

UNREACHABLE = f"host=127.0.0.1 port=1 user=ferry password={PASSWORD} connect_timeout=3"


@pytest.fixture
def env(cluster: Cluster, dbname: str, tmp_path: Path) -> Iterator[Env]:
    with environment(cluster, dbname, tmp_path) as created:
        yield created


def _one(env: Env, stale_after: float = STALE_AFTER) -> SubscriptionStatus:
    (status,) = collect(env.sub_dsn, stale_after=stale_after)
    return status


def _rendered(statuses: list[SubscriptionStatus]) -> str:
    console = Console(record=True, width=250, color_system=None)
    console.print(render_table(statuses))
    return console.export_text()


def test_running_subscription(env: Env) -> None:
    env.on_pub("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g")
    env.create()
    launcher = env.launch()
    result = wait_ready(env.sub_dsn, "ferry", timeout=60)
    assert result.tables == 2 and result.applied_lsn >= result.target_lsn
    assert env.on_sub("SELECT count(*) FROM t") == [(2000,)]
    # A load, then the report once it is applied.
    env.on_pub("INSERT INTO u SELECT g FROM generate_series(1, 20000) g")
    load_end = int(env.on_pub("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])

    def caught_up() -> bool:
        status = _one(env)
        slot = status.publisher.slot
        return (
            slot is not None
            and slot.confirmed_flush_lsn is not None
            and slot.confirmed_flush_lsn >= load_end
            and status.worker.applied_lsn is not None
            and status.worker.applied_lsn >= load_end
            and status.lag_bytes is not None
            and status.lag_bytes < 64 * 1024
        )

    until(caught_up, 30, "the load to be applied")
    status = _one(env)
    assert env.on_sub("SELECT count(*) FROM u") == [(20000,)]
    pid = env.worker_pid()
    assert status.enabled and status.worker.state == "running"
    assert status.worker.pid == pid and pid is not None
    os.kill(pid, 0)  # the apply worker process exists
    assert status.worker.seconds_since_report is not None
    assert status.worker.seconds_since_report < 5
    assert status.worker.applied_lsn is not None and status.worker.received_lsn is not None
    assert status.worker.received_lsn >= status.worker.applied_lsn >= load_end
    assert status.table_states == {"r": 2} and status.not_ready == ()
    assert status.last_error is None and status.stats["apply_error_count"] == 0
    slot = status.publisher.slot
    assert status.publisher.reachable and status.publisher.error is None
    assert slot is not None and slot.exists and slot.active and slot.active_pid is not None
    assert slot.wal_status in ("reserved", "extended")
    assert slot.restart_lsn is not None and slot.retained_wal_bytes is not None
    assert status.publisher.wal_lsn is not None
    assert slot.retained_wal_bytes == status.publisher.wal_lsn - slot.restart_lsn

    # An active walsender has a flush lag: its own, or 0 once all it sent is
    # confirmed; lag in seconds is then known, and 0 once caught up.
    def lag_known() -> bool:
        known = _one(env)
        flush = known.publisher.slot.flush_lag_seconds if known.publisher.slot else None
        return flush is not None and flush >= 0 and known.lag_seconds is not None

    until(lag_known, 10, "the flush lag")
    if status.lag_bytes == 0:
        assert (status.lag_seconds, status.lag_seconds_source) == (0.0, "caught_up")
    assert status.sync_workers == ()
    doc = to_document(status)
    assert doc["worker"]["state"] == "running" and doc["worker"]["pid"] == pid
    assert doc["tables"] == {"total": 2, "states": {"r": 2}, "not_ready": []}
    assert doc["publisher"]["slot"]["active"] is True
    text = _rendered([status])
    assert "ferry" in text and f"running (pid {pid})" in text and "all ready" in text
    # 80 columns: no line longer, and every LSN whole.
    narrow = render_text([status], 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    for lsn in (slot.restart_lsn, slot.confirmed_flush_lsn, status.worker.received_lsn):
        assert str(lsn) in narrow

    # The launcher stopped: no worker, the slot inactive, nothing lost.
    env.stop(launcher)
    until(lambda: not env.slot_active(), 20, "the slot to be released")
    stopped = _one(env)
    assert stopped.worker.state == "stopped" and stopped.worker.pid is None
    assert stopped.publisher.slot is not None and not stopped.publisher.slot.active
    assert stopped.publisher.slot.confirmed_flush_lsn is not None
    assert stopped.publisher.slot.confirmed_flush_lsn >= load_end
    assert "stopped" in _rendered([stopped])


def test_killed_worker_is_stale_and_lag_grows(env: Env) -> None:
    env.create("ferry", "copy_data=false")
    launcher = env.launch()
    until(lambda: env.worker_pid() is not None, 30, "the apply worker")
    pid = env.worker_pid()
    assert pid is not None
    # kill -9 of the worker, then of the launcher before it restarts it: the
    # worker's row stays behind, nobody refreshes it.
    os.kill(pid, signal.SIGKILL)
    launcher.kill()
    launcher.wait()
    until(lambda: not env.slot_active(), 20, "the slot to be released")
    env.on_pub("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g")
    time.sleep(1.5)
    status = _one(env, stale_after=1.0)
    assert status.worker.state == "stale" and status.worker.pid == pid
    assert status.worker.seconds_since_report is not None
    assert status.worker.seconds_since_report > 1.0
    slot = status.publisher.slot
    assert slot is not None and slot.exists and not slot.active
    assert status.lag_bytes is not None and status.lag_bytes > 0
    assert status.lag_seconds_source == "since_last_report"
    assert status.lag_seconds == status.worker.seconds_since_report
    assert f"stale (pid {pid}" in _rendered([status])
    # The default threshold (30 s) still counts it as running.
    assert _one(env).worker.state == "running"


def test_apply_error_is_reported_and_ends_a_wait(env: Env) -> None:
    env.create("ferry", "copy_data=false")
    env.on_sub("INSERT INTO t VALUES (1, 'subscriber only')")
    env.launch()
    until(lambda: env.worker_pid() is not None, 30, "the apply worker")
    env.on_pub("INSERT INTO t VALUES (1, 'publisher')")  # duplicate key on the subscriber
    until(lambda: _one(env).last_error is not None, 30, "the error")
    status = _one(env)
    assert status.last_error is not None and "conflict=insert_exists" in status.last_error
    assert status.last_error_time is not None
    assert status.stats["apply_error_count"] >= 1
    assert status.stats["confl_insert_exists"] >= 1
    assert status.lag_bytes is not None and status.lag_bytes > 0
    doc = to_document(status)
    assert "insert_exists" in doc["last_error"] and doc["last_error_time"].endswith("+00:00")
    assert "insert_exists" in _rendered([status])
    # Its next action: the --skip of the failed transaction, in the report and text.
    assert status.last_error_lsn is not None
    skip = f"pgferry subscription alter ferry --skip {status.last_error_lsn}"
    assert status.last_error_hint is not None and skip in status.last_error_hint
    assert doc["last_error_lsn"] == str(status.last_error_lsn)
    assert doc["last_error_hint"] == status.last_error_hint
    assert "hint: resolve it by policy" in _rendered([status])
    # Between attempts the worker is retrying, with the attempt and when.
    until(lambda: _one(env).worker.state == "retrying", 30, "a planned retry")
    retrying = _one(env)
    retry = retrying.worker.retry
    assert retry is not None and retry.attempt >= 1 and retry.exit_code not in (None, 0)
    text = _rendered([retrying])
    assert f"worker: retrying (attempt {retry.attempt}, " in text
    assert to_document(retrying)["worker"]["retry"]["attempt"] == retry.attempt
    # The worker fails again on the same change: a wait ends with the error and its hint.
    started = time.monotonic()
    with pytest.raises(WaitFailed, match=r"failed: .*conflict=insert_exists") as failed:
        wait_ready(env.sub_dsn, "ferry", timeout=30)
    assert time.monotonic() - started < 15
    assert failed.value.hint is not None and skip in failed.value.hint


def test_unreachable_publisher_and_masked_passwords(env: Env) -> None:
    role = f"ferry_{env.pub[-8:]}"
    env.cluster.sql(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{PASSWORD}'")
    try:
        tcp = env.cluster.tcp_dsn(env.pub, user=role, password=PASSWORD)
        env.create("ferry", "copy_data=false", conninfo=tcp)
        env.create("other", "copy_data=false", conninfo=tcp)
        reachable = _one_named(env, "ferry")
        assert reachable.publisher.reachable and reachable.publisher.slot is not None
        assert reachable.publisher.slot.exists and not reachable.publisher.slot.active
        assert "********" in reachable.conninfo and "********" in reachable.publisher.conninfo
        # One publisher unreachable: reported, with the local part, next to the other.
        alter_subscription(env.sub_dsn, "ferry", AlterRequest(connection=UNREACHABLE))
        statuses = collect(env.sub_dsn)
        assert [s.name for s in statuses] == ["ferry", "other"]
        ferry, other = statuses
        assert not ferry.publisher.reachable and ferry.publisher.slot is None
        assert ferry.publisher.error is not None and "port 1" in ferry.publisher.error
        assert ferry.publisher.conninfo == mask(UNREACHABLE) == ferry.conninfo
        assert ferry.lag_bytes is None and ferry.lag_seconds is None
        assert ferry.enabled and ferry.table_states == {"r": 2}
        assert ferry.worker.state == "stopped"
        assert other.publisher.reachable and other.lag_bytes is not None
        # A wrong password: the server's refusal, still masked.
        alter_subscription(
            env.sub_dsn, "other", AlterRequest(connection=tcp.replace(PASSWORD, "x" + PASSWORD))
        )
        wrong = _one_named(env, "other")
        assert not wrong.publisher.reachable
        assert "password authentication failed" in (wrong.publisher.error or "")
        statuses = collect(env.sub_dsn)
        document = to_json(statuses)
        assert PASSWORD not in document and PASSWORD not in _rendered(statuses)
        parsed = json.loads(document)
        assert parsed[0]["publisher"]["reachable"] is False
        assert parsed[0]["publisher"]["conninfo"] == parsed[0]["conninfo"]
        assert "password=********" in parsed[0]["conninfo"]
        assert "publisher unreachable" in _rendered(statuses)
    finally:
        env.cluster.drop_database(env.sub)
        env.cluster.sql(f"DROP ROLE IF EXISTS {role}")


def _one_named(env: Env, name: str) -> SubscriptionStatus:
    (status,) = collect(env.sub_dsn, names=[name])
    return status
