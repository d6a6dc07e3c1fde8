"""``pgferry run`` with real worker processes: it syncs and applies, follows catalog
changes, restarts killed workers, and after kill -9 of workers and of itself
during a write load the subscriber ends with exactly the publisher's rows."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.catalog import (
    Subscription,
    SubscriptionTable,
    TableState,
    ensure_catalog,
    handover,
    store,
)
from pgferry.protocol import Lsn
from pgferry.runner.launcher import Launcher
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import PGFERRY, create_slot

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
CREATE TABLE history (account int, delta int, at timestamptz DEFAULT now());
"""


@dataclass
class Setup:
    publisher: Cluster
    pub_db: str
    subscriber: Cluster

    @property
    def sub_dsn(self) -> str:
        return self.subscriber.dsn("sub")


@pytest.fixture
def setup(cluster: Cluster, dbname: str, make_cluster: ClusterFactory) -> Iterator[Setup]:
    cluster.sql(SCHEMA, dbname=dbname)
    cluster.sql(
        "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 1000) g;"
        " CREATE PUBLICATION pub FOR TABLE accounts, history",
        dbname=dbname,
    )
    subscriber = make_cluster()
    subscriber.create_database("sub")
    subscriber.sql(SCHEMA, dbname="sub")
    create_slot(cluster, dbname, "ferry")
    with subscriber.connect("sub") as conn:
        ensure_catalog(conn)
        store.create_subscription(
            conn, Subscription("ferry", cluster.dsn(dbname), ("pub",), "ferry", "pgferry_ferry")
        )
        for t in ("accounts", "history"):
            store.upsert_table(
                conn, SubscriptionTable("ferry", "public", t, "public", t, TableState.INIT, None)
            )
    yield Setup(cluster, dbname, subscriber)


def _launch(setup: Setup) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*PGFERRY, "-d", setup.sub_dsn, "run"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PGFERRY_LOG_LEVEL": "WARNING"},
    )


def _wait(condition: Callable[[], bool], timeout: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _states(setup: Setup) -> set[str]:
    with setup.subscriber.connect("sub") as conn:
        return {s.state for s in handover.states(conn, "ferry").values()}


def _apply_pid(setup: Setup) -> int | None:
    rows = setup.subscriber.sql(
        "SELECT pid FROM pgferry.worker WHERE subscription = 'ferry' AND relation = ''",
        dbname="sub",
    )
    return int(rows[0][0]) if rows else None


def _same(setup: Setup) -> bool:
    for query in (
        "SELECT * FROM accounts ORDER BY id",
        "SELECT account, delta, at FROM history ORDER BY at, account, delta",
    ):
        if setup.publisher.sql(query, dbname=setup.pub_db) != setup.subscriber.sql(
            query, dbname="sub"
        ):
            return False
    return True


def _walsender_active(setup: Setup) -> bool:
    rows = setup.publisher.sql(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'ferry'", dbname=setup.pub_db
    )
    return bool(rows and rows[0][0])


def test_run_syncs_applies_and_follows_the_catalog(setup: Setup) -> None:
    launcher = _launch(setup)
    try:
        _wait(lambda: _states(setup) == {"r"}, what="tables ready")
        setup.publisher.sql(
            "UPDATE accounts SET balance = balance + 5 WHERE id <= 10;"
            " INSERT INTO history VALUES (1, 5)",
            dbname=setup.pub_db,
        )
        _wait(lambda: _same(setup), what="the update")
        # Disabled: the apply worker stops within a few seconds.
        with setup.subscriber.connect("sub") as conn:
            store.set_enabled(conn, "ferry", False)
        _wait(lambda: not _walsender_active(setup), timeout=20, what="the worker to stop")
        setup.publisher.sql("INSERT INTO history VALUES (2, 7)", dbname=setup.pub_db)
        time.sleep(2)
        assert not _same(setup)
        # Enabled again: it resumes where it stopped.
        with setup.subscriber.connect("sub") as conn:
            store.set_enabled(conn, "ferry", True)
        _wait(lambda: _same(setup), timeout=30, what="resume after enable")
        # Altered: the worker restarts with the new settings.
        _wait(lambda: _apply_pid(setup) is not None, timeout=30, what="the worker row")
        before = _apply_pid(setup)
        with setup.subscriber.connect("sub") as conn:
            store.set_skip_lsn(conn, "ferry", Lsn.parse("FFFFFFFF/0"))
        _wait(
            lambda: _apply_pid(setup) not in (None, before),
            timeout=30,
            what="a restart after ALTER",
        )
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    # The launcher took its workers with it: the slot is free.
    _wait(lambda: not _walsender_active(setup), timeout=20, what="the slot to be released")


def test_kill_9_of_workers_and_launcher_during_load(setup: Setup) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with setup.publisher.connect(setup.pub_db) as conn:
                i = 0
                while not stop.is_set():
                    i += 1
                    with conn.transaction():
                        conn.execute(
                            "UPDATE accounts SET balance = balance + 1 WHERE id = %s",
                            (i % 1000 + 1,),
                        )
                        conn.execute(
                            "INSERT INTO history VALUES (%s, 1, clock_timestamp())", (i % 1000 + 1,)
                        )
                    time.sleep(0.002)  # a steady load the workers can keep up with
        except BaseException as exc:
            errors.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    launcher = _launch(setup)
    kills = 0
    kill_times: list[float] = []
    try:
        _wait(lambda: _states(setup) == {"r"}, what="tables ready")
        for round_ in range(20):
            _wait(lambda: _apply_pid(setup) is not None, timeout=30, what="an apply worker")
            time.sleep(0.3)
            old = _apply_pid(setup)
            if round_ % 5 == 4:
                launcher.kill()  # kill -9 of the launcher: its workers follow it
                launcher.wait()
                launcher = _launch(setup)
            else:
                assert old is not None
                try:
                    os.kill(old, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            kill_times.append(time.time())

            def restarted(old: int | None = old) -> bool:
                return _apply_pid(setup) not in (None, old)

            # The worker row of a killed worker stays; wait for a new one.
            _wait(restarted, timeout=60, what="a restarted apply worker")
    finally:
        stop.set()
        loader.join(timeout=30)
    try:
        assert not errors, errors
        assert kills >= 12
        try:
            _wait(lambda: _same(setup), timeout=120, what="convergence after the kills")
        except AssertionError:
            query = "SELECT account, delta, extract(epoch FROM at) FROM history ORDER BY at"
            pub = _rows(setup.publisher, setup.pub_db, query)
            sub = _rows(setup.subscriber, "sub", query)
            extra = len(sub) - len(set(sub))
            missing = sorted(set(pub) - set(sub), key=repr)
            error = setup.subscriber.sql(
                "SELECT last_error FROM pgferry.subscription", dbname="sub"
            )
            raise AssertionError(
                f"publisher {len(pub)} history rows, subscriber {len(sub)}: {missing[:3]} missing"
                f" ({len(missing)}), {extra} duplicated; worker={_apply_pid(setup)}"
                f" error={error} kills at {kill_times}"
            ) from None
        count = setup.subscriber.sql("SELECT count(*) FROM history", dbname="sub")[0][0]
        assert count > 100
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)


def _rows(cluster: Cluster, db: str, query: str) -> list[tuple[Any, ...]]:
    return cluster.sql(query, dbname=db)


def test_workers_are_forked_and_leave_the_launcher_session_alone(
    setup: Setup, tmp_path: Any
) -> None:
    """``pgferry run`` forks its workers (no new interpreter: the same command
    line, the launcher as parent); the sync workers' exits do not touch the
    catalog connection the fork copied, so the launcher never loses it."""
    log = tmp_path / "launcher.log"
    with log.open("wb") as stderr:
        launcher = subprocess.Popen(
            [*PGFERRY, "-d", setup.sub_dsn, "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PGFERRY_LOG_LEVEL": "WARNING"},
        )
    try:
        _wait(lambda: _states(setup) == {"r"}, what="tables ready")
        _wait(lambda: _apply_pid(setup) is not None, timeout=30, what="the worker row")
        worker = _apply_pid(setup)
        with open(f"/proc/{worker}/cmdline", "rb") as f:
            worker_cmdline = f.read()
        with open(f"/proc/{worker}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{launcher.pid}/cmdline", "rb") as f:
            assert worker_cmdline == f.read()
        assert parent == launcher.pid
        # Replication works on, and the launcher still follows the catalog.
        setup.publisher.sql("INSERT INTO history VALUES (3, 9)", dbname=setup.pub_db)
        _wait(lambda: _same(setup), what="the insert")
        with setup.subscriber.connect("sub") as conn:
            store.set_enabled(conn, "ferry", False)
        _wait(lambda: not _walsender_active(setup), timeout=20, what="the worker to stop")
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    text = log.read_text()
    assert "catalog connection failed" not in text, text
    assert "Traceback" not in text, text


def test_a_catalog_change_wakes_the_launcher_at_once(setup: Setup) -> None:
    """Enabling a subscription starts its workers at once, not at the launcher's
    next look (here a minute away): the catalog's triggers notify it. Also when
    the catalog is written with session_replication_role = replica, as workers do,
    and after its catalog session was lost while it waited."""
    with setup.subscriber.connect("sub") as conn:
        store.set_enabled(conn, "ferry", False)
    launcher = Launcher(setup.sub_dsn, poll_interval=60.0)
    thread = threading.Thread(target=launcher.run)
    thread.start()
    try:
        time.sleep(1.0)  # (its first look: nothing enabled)
        assert not launcher.children
        with setup.subscriber.connect("sub") as conn:
            conn.execute("SET session_replication_role = replica")
            store.set_enabled(conn, "ferry", True)
        _wait(lambda: _states(setup) == {"r"}, timeout=20, what="tables ready")
        assert ("apply", "ferry") in launcher.children
        # Disabled: its workers are stopped at once too.
        with setup.subscriber.connect("sub") as conn:
            store.set_enabled(conn, "ferry", False)
        _wait(lambda: not launcher.children, timeout=10, what="the workers to stop")
        # Its catalog session ended while it waits: it connects again and listens.
        setup.subscriber.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'sub'"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        time.sleep(2.0)
        with setup.subscriber.connect("sub") as conn:
            store.set_enabled(conn, "ferry", True)
        _wait(lambda: ("apply", "ferry") in launcher.children, timeout=20, what="a restart")
        assert thread.is_alive()
    finally:
        launcher.request_stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
