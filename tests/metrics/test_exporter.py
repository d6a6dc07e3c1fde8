"""The metrics endpoint of ``pgferry run --metrics`` against real clusters: the values
it exports for a subscription that catches up, meets conflicts and an apply error,
copies a table, is disabled, and whose publisher is down or does not answer."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from pgferry import metrics
from pgferry.origins import sync_origin
from tests.conformance.conftest import Ferry
from tests.metrics.conftest import Samples, exporting, scrape, value, wait_scrape

SUB = "s1"


def _caught_up(s: Samples) -> bool:
    return (
        value(s, "pgferry_lag_bytes", subscription=SUB) == 0
        and value(s, "pgferry_apply_worker", subscription=SUB, state="running") == 1
        and value(s, "pgferry_workers", subscription=SUB, kind="apply") == 1
    )


def _setup(ferry: Ferry) -> None:
    ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY)"
    ferry.on_pub(ddl)
    ferry.on_sub(ddl)
    ferry.on_pub("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 3) g")
    ferry.on_sub("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 3) g")
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE t, u")
    ferry.subscribe(SUB, ["p"], "copy_data=false")


def test_subscription_metrics(ferry: Ferry) -> None:
    _setup(ferry)
    slot = ferry.subscription(SUB).slot_name
    assert slot is not None
    ferry.on_sub("CREATE SEQUENCE public.seq")
    ferry.on_sub(
        "INSERT INTO pgferry.sequence_state (subscription, sequence_schema, sequence_name,"
        " publisher_value, subscriber_value) VALUES (%s, 'public', 'seq', 100, 40)",
        (SUB,),
    )
    with exporting(ferry) as (_, server):
        s = wait_scrape(server, _caught_up, "the subscription caught up")
        assert value(s, "pgferry_subscriber_up") == 1
        assert value(s, "pgferry_subscription_enabled", subscription=SUB) == 1
        assert value(s, "pgferry_subscription_last_error", subscription=SUB) == 0
        assert value(s, "pgferry_publisher_up", subscription=SUB) == 1
        # Caught up: no lag in bytes or seconds, and the positions agree.
        assert value(s, "pgferry_lag_seconds", subscription=SUB) == 0
        wal = value(s, "pgferry_publisher_wal_lsn_bytes", subscription=SUB)
        assert wal is not None and wal > 0
        assert value(s, "pgferry_flushed_lsn_bytes", subscription=SUB) == wal
        received = value(s, "pgferry_received_lsn_bytes", subscription=SUB)
        applied = value(s, "pgferry_applied_lsn_bytes", subscription=SUB)
        assert received is not None and applied is not None and 0 < applied <= received
        for state, number in (("r", 2), ("s", 0), ("f", 0), ("d", 0), ("i", 0)):
            assert value(s, "pgferry_tables", subscription=SUB, state=state) == number
        table = {"subscription": SUB, "schema": "public", "table": "t"}
        assert value(s, "pgferry_table_state", **table, state="r") == 1
        assert value(s, "pgferry_slot_exists", subscription=SUB, slot=slot) == 1
        assert value(s, "pgferry_slot_active", subscription=SUB, slot=slot) == 1
        retained = value(s, "pgferry_slot_retained_wal_bytes", subscription=SUB, slot=slot)
        assert retained is not None and retained >= 0
        safe = value(s, "pgferry_slot_safe_wal_size_bytes", subscription=SUB, slot=slot)
        assert safe is not None and 0 < safe < 2 * 1024**3  # (max_slot_wal_keep_size 1GB)
        statuses = {
            st: value(s, "pgferry_slot_wal_status", subscription=SUB, slot=slot, status=st)
            for st in metrics.WAL_STATUSES
        }
        assert statuses == {"reserved": 1, "extended": 0, "unreserved": 0, "lost": 0}
        assert value(s, "pgferry_sequences", subscription=SUB) == 1
        assert value(s, "pgferry_sequence_drift_max", subscription=SUB) == 60
        assert value(s, "pgferry_apply_errors_total", subscription=SUB) == 0
        for ctype in ("insert_exists", "update_missing", "multiple_unique_conflicts"):
            assert value(s, "pgferry_conflicts_total", subscription=SUB, type=ctype) == 0

        # An update of a row the subscriber lacks: update_missing, skipped (native's way).
        ferry.on_sub("DELETE FROM t WHERE id = 3")
        ferry.on_pub("UPDATE t SET v = 'b' WHERE id = 3")
        wait_scrape(
            server,
            lambda s: (
                value(s, "pgferry_conflicts_total", subscription=SUB, type="update_missing") == 1
            ),
            "an update_missing conflict",
        )

        # A row that exists already: insert_exists stops apply, retried until fixed.
        ferry.on_sub("INSERT INTO u VALUES (10)")
        ferry.on_pub("INSERT INTO u VALUES (10)")
        s = wait_scrape(
            server,
            lambda s: (
                value(s, "pgferry_subscription_last_error", subscription=SUB) == 1
                and (
                    value(s, "pgferry_worker_failures", subscription=SUB, kind="apply", table="")
                    or 0
                )
                >= 1
            ),
            "an apply error, and the apply worker restarted",
        )
        errors = value(s, "pgferry_apply_errors_total", subscription=SUB)
        assert errors is not None and errors >= 1
        conflicts = value(s, "pgferry_conflicts_total", subscription=SUB, type="insert_exists")
        assert conflicts is not None and conflicts >= 1
        when = value(s, "pgferry_subscription_last_error_timestamp_seconds", subscription=SUB)
        assert when is not None and abs(when - time.time()) < 120
        ferry.on_sub("DELETE FROM u WHERE id = 10")
        s = wait_scrape(
            server,
            lambda s: (
                value(s, "pgferry_subscription_last_error", subscription=SUB) == 0 and _caught_up(s)
            ),
            "the error cleared once the row is gone",
        )
        when = value(s, "pgferry_subscription_last_error_timestamp_seconds", subscription=SUB)
        assert when is None

        # Disabled: no worker, an inactive slot, and the publisher's WAL goes on.
        ferry.alter(SUB, disable=True)
        wait_scrape(
            server,
            lambda s: (
                value(s, "pgferry_apply_worker", subscription=SUB, state="stopped") == 1
                and value(s, "pgferry_slot_active", subscription=SUB, slot=slot) == 0
            ),
            "the apply worker stopped",
        )
        ferry.on_pub("INSERT INTO t VALUES (4, 'c')")
        s = scrape(server)
        assert value(s, "pgferry_subscription_enabled", subscription=SUB) == 0
        assert value(s, "pgferry_workers", subscription=SUB, kind="apply") is None
        lag = value(s, "pgferry_lag_bytes", subscription=SUB)
        assert lag is not None and lag > 0
        assert value(s, "pgferry_received_lsn_bytes", subscription=SUB) is None


def test_copy_progress(ferry: Ferry) -> None:
    """A table held in the middle of its initial copy: rows done, size and estimate."""
    ferry.on_pub("CREATE TABLE big (id int PRIMARY KEY, v text)")
    ferry.on_pub("INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g")
    ferry.on_pub("ANALYZE big")
    ferry.on_pub("CREATE PUBLICATION p FOR TABLE big")
    ferry.on_sub("CREATE TABLE big (id int PRIMARY KEY, v text)")
    # Row 500 waits for an advisory lock the test holds (ALWAYS: also as replica).
    ferry.on_sub(
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.id = 500 THEN PERFORM pg_advisory_lock_shared(4242);"
        " PERFORM pg_advisory_unlock_shared(4242); END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER hold BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION hold();"
        " ALTER TABLE big ENABLE ALWAYS TRIGGER hold"
    )
    table = {"subscription": SUB, "schema": "public", "table": "big"}
    with psycopg.connect(ferry.sub_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        ferry.subscribe(SUB, ["p"])
        with exporting(ferry) as (_, server):
            s = wait_scrape(
                server,
                lambda s: value(s, "pgferry_table_copy_rows", **table) == 499,
                "the copy held at row 500",
            )
            copied = value(s, "pgferry_table_copy_bytes", **table)
            assert copied is not None and copied > 0
            assert value(s, "pgferry_table_state", **table, state="d") == 1
            assert value(s, "pgferry_tables", subscription=SUB, state="d") == 1
            # (What the catalog holds, measured at create.)
            size = ferry.on_sub("SELECT size_bytes FROM pgferry.subscription_table")[0][0]
            assert value(s, "pgferry_table_size_bytes", **table) == size
            assert value(s, "pgferry_table_estimated_rows", **table) == 1000
            assert value(s, "pgferry_workers", subscription=SUB, kind="sync") == 1
            sync_slot = sync_origin(SUB, "public", "big")
            # (The sync worker's slot exists; it is active only during the catch-up.)
            assert value(s, "pgferry_slot_active", subscription=SUB, slot=sync_slot) == 0
            assert value(s, "pgferry_slot_retained_wal_bytes", subscription=SUB, slot=sync_slot)
            holder.execute("SELECT pg_advisory_unlock(4242)")
            s = wait_scrape(
                server,
                lambda s: value(s, "pgferry_table_state", **table, state="r") == 1,
                "the table ready",
            )
            assert value(s, "pgferry_table_copy_rows", **table) is None
            assert value(s, "pgferry_table_size_bytes", **table) is None
            assert value(s, "pgferry_table_estimated_rows", **table) is None
            assert value(s, "pgferry_slot_active", subscription=SUB, slot=sync_slot) is None


def test_publisher_down(ferry: Ferry) -> None:
    """The publisher stopped: publisher_up 0, no publisher-side series, the rest as usual."""
    _setup(ferry)
    with exporting(ferry) as (_, server):
        wait_scrape(server, _caught_up, "the subscription caught up")
        ferry.pub.stop()
        started = time.monotonic()
        s = scrape(server)
        assert time.monotonic() - started < 5
        assert value(s, "pgferry_subscriber_up") == 1
        assert value(s, "pgferry_publisher_up", subscription=SUB) == 0
        assert value(s, "pgferry_subscription_enabled", subscription=SUB) == 1
        assert value(s, "pgferry_tables", subscription=SUB, state="r") == 2
        for name in ("pgferry_lag_bytes", "pgferry_lag_seconds", "pgferry_flushed_lsn_bytes"):
            assert value(s, name, subscription=SUB) is None, name


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_scrape_never_hangs(ferry: Ferry, silent_server: int) -> None:
    """A publisher that does not answer costs a scrape the connect timeout, or the
    scrape's deadline when the conninfo's own timeout is longer; it is not asked
    again while an earlier question is pending."""
    _setup(ferry)
    ferry.alter(SUB, disable=True)

    def point_at(conninfo: str) -> None:
        ferry.on_sub("UPDATE pgferry.subscription SET conninfo = %s", (conninfo,))

    def timed_read() -> tuple[float, metrics.Reading]:
        started = time.monotonic()
        reading = metrics.read(ferry.sub_dsn, probes=probes)
        return time.monotonic() - started, reading

    probes = metrics.Probes()
    point_at(f"host=127.0.0.1 port={silent_server} dbname=pub password=secret")
    seconds, reading = timed_read()
    status = reading.publishers[SUB].status
    assert not status.reachable and status.error is not None
    assert "secret" not in status.error
    assert metrics.CONNECT_TIMEOUT - 0.5 < seconds < metrics.PUBLISHER_DEADLINE
    assert reading.subscriber_up and reading.subscriptions[0].name == SUB

    point_at(f"host=127.0.0.1 port={silent_server} dbname=pub connect_timeout=20")
    seconds, reading = timed_read()
    assert metrics.PUBLISHER_DEADLINE - 0.5 < seconds < metrics.PUBLISHER_DEADLINE + 2
    deadline = f"no answer within {metrics.PUBLISHER_DEADLINE:g} s"
    assert reading.publishers[SUB].status.error == deadline
    seconds, reading = timed_read()
    assert seconds < 2
    assert reading.publishers[SUB].status.error == "still busy with an earlier scrape's query"
    names = {family.name for family in metrics.families(reading)}
    assert "pgferry_subscription_enabled" in names


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_run_metrics_option(ferry: Ferry) -> None:
    """The real ``pgferry run --metrics``: it serves while running, and stops with it."""
    _setup(ferry)
    port = _free_port()
    command = [sys.executable, "-m", "pgferry", "-d", ferry.sub_dsn, "run"]
    run = subprocess.Popen([*command, "--metrics", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}/metrics"

    def serving() -> str:
        try:
            with urllib.request.urlopen(endpoint, timeout=10) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    try:
        deadline = time.monotonic() + 60
        while 'pgferry_workers{kind="apply",subscription="s1"} 1.0' not in serving():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert "process_cpu_seconds_total" in serving()
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0
    assert serving() == ""

    bad = subprocess.run(
        [*command, "--metrics", "9187"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert "pgferry: error: invalid metrics address '9187'" in bad.stderr
    assert "hint: give [HOST]:PORT" in bad.stderr
