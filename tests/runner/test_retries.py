"""The launcher and its workers after faults, on real servers: failed workers come
back after a short jittered pause recorded for ``status``, failures are forgotten
once a worker ran healthy, a publisher gone silent restarts the apply worker, and
a restart of the subscriber during a load loses nothing and logs no traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from pgferry.catalog import workers
from pgferry.runner import Launcher
from pgferry.runner.launcher import RETRY_BASE, backoff
from pgferry.subscription import create_subscription
from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.stream.test_receiver_timeout import stopped, walsender_pid
from tests.support import PGFERRY

SCHEMA = "CREATE TABLE t (id int PRIMARY KEY, v text)"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class Setup:
    publisher: Cluster
    pub_db: str
    subscriber: Cluster

    @property
    def sub_dsn(self) -> str:
        return self.subscriber.dsn("sub")

    def on_sub(self, query: str) -> list[tuple[Any, ...]]:
        return self.subscriber.sql(query, dbname="sub")

    def count(self, cluster: Cluster, dbname: str) -> int:
        return int(cluster.sql("SELECT count(*) FROM t", dbname=dbname)[0][0])

    def same(self) -> bool:
        query = "SELECT * FROM t ORDER BY id"
        return self.publisher.sql(query, dbname=self.pub_db) == self.on_sub(query)

    def retries(self) -> list[tuple[Any, ...]]:
        """(kind, attempt, seconds from the failure to the planned retry)."""
        return self.on_sub(
            "SELECT kind, attempt, extract(epoch FROM next_retry_at - failed_at)::float8"
            " FROM pgferry.worker_retry WHERE subscription = 'ferry'"
        )

    def planned(self) -> list[workers.Retry]:
        with self.subscriber.connect("sub") as conn:
            return workers.retries(conn)


@pytest.fixture
def setup(cluster: Cluster, dbname: str, make_cluster: ClusterFactory) -> Setup:
    cluster.sql(SCHEMA + "; CREATE PUBLICATION pub FOR TABLE t", dbname=dbname)
    subscriber = make_cluster()
    subscriber.create_database("sub")
    subscriber.sql(SCHEMA, dbname="sub")
    return Setup(cluster, dbname, subscriber)


def subscribe(setup: Setup, conninfo: str | None = None) -> None:
    create_subscription(
        setup.sub_dsn,
        "ferry",
        conninfo or setup.publisher.dsn(setup.pub_db),
        ["pub"],
        ["copy_data=false"] + (["connect=false"] if conninfo else []),
    )
    if conninfo:
        setup.on_sub("UPDATE pgferry.subscription SET enabled = true")


@contextmanager
def launched(launcher: Launcher) -> Iterator[Launcher]:
    """The launcher running in a thread for the block (its workers: processes)."""
    thread = threading.Thread(target=launcher.run, daemon=True)
    thread.start()
    try:
        yield launcher
    finally:
        launcher.request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.fixture
def closed_port() -> int:
    """A TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_backoff_starts_under_half_a_second_and_doubles_with_jitter_to_the_cap() -> None:
    for failures, low, high in [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (10, 2.5, 5.0)]:
        pauses = [backoff(failures, 5.0) for _ in range(200)]
        assert all(low <= p <= high for p in pauses), (failures, min(pauses), max(pauses))
        assert max(pauses) - min(pauses) > (high - low) / 4  # jittered, not fixed
    assert RETRY_BASE <= 0.5


def test_a_failing_worker_is_retried_soon_and_its_retry_is_recorded(
    setup: Setup, closed_port: int
) -> None:
    # A publisher that refuses connections: the apply worker fails at once, each time.
    subscribe(setup, f"host=127.0.0.1 port={closed_port} dbname=nowhere")
    seen: dict[int, float] = {}
    with launched(Launcher(setup.sub_dsn, poll_interval=0.05, retry_interval=2.0)):

        def planned() -> bool:
            for kind, attempt, delay in setup.retries():
                assert kind == "apply"
                seen.setdefault(int(attempt), float(delay))
            return len(seen) >= 4

        wait_for(planned, "four retries", timeout=60)
    # The first retry well under a second after the failure, then doubling to the cap.
    assert seen[1] <= 0.5 and seen[2] <= 1.0
    assert all(delay <= 2.0 for delay in seen.values())
    assert seen[4] >= 1.0
    # What status reads: the worker, its attempt, when it comes back.
    (retry,) = setup.planned()
    assert (retry.subscription, retry.kind, retry.table) == ("ferry", "apply", None)
    assert retry.attempt >= 4 and retry.next_in <= 2.0 and retry.exit_code == 1


def test_failures_are_forgotten_once_a_worker_ran_healthy(setup: Setup) -> None:
    subscribe(setup)
    launcher = Launcher(setup.sub_dsn, poll_interval=0.05, retry_interval=2.0, healthy_after=1.5)

    def kill_apply() -> None:
        wait_for(lambda: ("apply", "ferry") in launcher.children, "an apply worker")
        os.kill(launcher.children["apply", "ferry"].process.pid, signal.SIGKILL)

    def attempt() -> int | None:
        rows = setup.retries()
        return int(rows[0][1]) if rows else None

    with launched(launcher):
        kill_apply()
        wait_for(lambda: attempt() == 1, "the first retry")
        kill_apply()  # again, soon after its start: a second failure in a row
        wait_for(lambda: attempt() == 2, "the second retry")
        # Healthy for a while: the failures are forgotten, and so is the retry row.
        wait_for(lambda: attempt() is None, "the retry to be forgotten", timeout=20)
        kill_apply()
        wait_for(lambda: attempt() is not None, "the next retry")
        assert attempt() == 1


def test_a_silent_publisher_restarts_the_apply_worker(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PGFERRY_RECEIVER_TIMEOUT", "1.5")  # for the worker processes
    subscribe(setup)
    setup.publisher.sql("INSERT INTO t VALUES (1, 'before')", dbname=setup.pub_db)
    with launched(Launcher(setup.sub_dsn, poll_interval=0.1, retry_interval=1.0)):
        wait_for(setup.same, "the first row")
        with stopped(walsender_pid(setup.publisher, setup.pub_db, "ferry")):
            wait_for(lambda: bool(setup.retries()), "the apply worker to give up", timeout=15)
        setup.publisher.sql("INSERT INTO t VALUES (2, 'after')", dbname=setup.pub_db)
        wait_for(setup.same, "the row after the restart", timeout=60)
    log = capfd.readouterr().err
    assert (
        "subscription 'ferry': replication from slot 'ferry': nothing received from the"
        " publisher" in log
    ), log
    assert "Traceback" not in log


def _launch(setup: Setup, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*PGFERRY, "-v", "-d", setup.sub_dsn, "run"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PGFERRY_LOG_LEVEL": "INFO"},
        )


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_subscriber_restart_during_apply(
    setup: Setup, tmp_path: Path, mode: Literal["fast", "immediate"]
) -> None:
    subscribe(setup)
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with setup.publisher.connect(setup.pub_db) as conn:
                i = 0
                while not stop.is_set():
                    conn.execute(
                        "INSERT INTO t SELECT g, repeat('x', 100)"
                        " FROM generate_series(%s::int, %s::int) g",
                        (i * 50 + 1, i * 50 + 50),
                    )
                    i += 1
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    log = tmp_path / "run.log"
    launcher = _launch(setup, log)
    loader = threading.Thread(target=load, daemon=True)
    try:
        wait_for(lambda: bool(setup.on_sub("SELECT FROM pgferry.worker")), "the apply worker")
        loader.start()
        wait_for(
            lambda: bool(errors) or setup.count(setup.subscriber, "sub") > 2000, "rows applied"
        )
        assert not errors, errors
        setup.subscriber.stop(mode)
        time.sleep(0.5)
        setup.subscriber.start()
        wait_for(lambda: setup.count(setup.subscriber, "sub") > 0, "the subscriber back")
        time.sleep(1)
        stop.set()
        loader.join(timeout=30)
        assert not errors, errors
        wait_for(setup.same, "every row after the restart", timeout=90)
        assert launcher.poll() is None, "the launcher died"
    finally:
        stop.set()
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        print(log.read_text())  # shown when the test fails
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "catalog connection failed" in text, text  # the launcher saw it, and went on
