"""``pgferry run``'s log on real servers, through the real command line: one line
per event (text or JSON), the level -v/-q give followed by every worker, each
error once per attempt with its hint on its line, the start, subscription and
stop lines, and ``--receiver-timeout``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgferry.catalog import TableState, handover, store
from pgferry.subscription import create_subscription, drop_subscription
from pgferry.testing import Cluster
from tests.stream.test_receiver_timeout import stopped, walsender_pid
from tests.support import PGFERRY, wait_for

PASSWORD = "n0t-a-Secret"  # noqa: S105 - never a real password (trust authentication)
SCHEMA = "CREATE TABLE t (id int PRIMARY KEY, v text)"
GAVE_UP = re.compile(r"WARNING apply worker for logs_rt \(pid \d+\) exited with status 1; retrying")


@dataclass
class Setup:
    cluster: Cluster
    pub: str
    sub: str
    logs: Path

    @property
    def sub_dsn(self) -> str:
        return self.cluster.dsn(self.sub, password=PASSWORD)

    def subscribe(self, name: str) -> None:
        create_subscription(self.sub_dsn, name, self.cluster.dsn(self.pub), ["pub"])

    def ready(self, name: str) -> None:
        def done() -> bool:
            with self.cluster.connect(self.sub) as conn:
                states = {s.state for s in handover.states(conn, name).values()}
            return states == {TableState.READY}

        wait_for(done, f"{name}'s tables ready")

    def rows(self, dbname: str) -> list[tuple[Any, ...]]:
        return self.cluster.sql("SELECT * FROM t ORDER BY id", dbname=dbname)

    def same(self) -> bool:
        return self.rows(self.pub) == self.rows(self.sub)

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self.cluster.connect(self.sub) as conn:
            store.set_enabled(conn, name, enabled)


@dataclass
class Running:
    """A ``pgferry ... run`` process and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """Every line of the log as a JSON object (it fails on a line that is not)."""
        return [json.loads(line) for line in self.text().splitlines()]

    def until(self, found: Callable[[], bool], what: str, timeout: float = 60) -> None:
        wait_for(found, f"{what}; the log:\n{self.text()}", timeout=timeout)

    def stop(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)
        assert self.process.wait(timeout=60) == 0, self.text()


@pytest.fixture
def setup(cluster: Cluster, dbname: str, tmp_path: Path) -> Iterator[Setup]:
    sub = dbname[:50] + "_sub"
    cluster.create_database(sub)
    cluster.sql(SCHEMA + "; CREATE PUBLICATION pub FOR TABLE t", dbname=dbname)
    cluster.sql(SCHEMA, dbname=sub)
    yield Setup(cluster, dbname, sub, tmp_path)


@pytest.fixture
def launch(setup: Setup) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        log = setup.logs / f"run-{len(started)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGFERRY_LOG_")}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*PGFERRY, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
            )
        started.append(Running(process, log))
        return started[-1]

    yield start
    for each in started:
        if each.process.poll() is None:
            each.process.kill()
            each.process.wait()


def test_run_logs_one_json_line_per_event(setup: Setup, launch: Callable[..., Running]) -> None:
    # (With --metrics the launcher has a second thread, so its workers are new
    # interpreters, not forks: the format reaches them in their environment.)
    run = launch("-d", setup.sub_dsn, "run", "--log-format", "json", "--metrics", "127.0.0.1:0")

    def find(**wanted: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in run.records()
            if all(
                (r.get(k) or "").startswith(v[:-1]) if str(v).endswith("*") else r.get(k) == v
                for k, v in wanted.items()
            )
        ]

    run.until(lambda: bool(find(message="run started*")), "the start line")
    (start,) = find(message="run started*")
    assert start["level"] == "INFO" and start["logger"] == "pgferry.runner"
    assert start["subscriptions"] == 0
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", start["metrics"])
    assert start["message"].endswith(f"0 subscriptions (0 enabled), metrics at {start['metrics']}")
    assert "password=********" in start["database"] and f"dbname={setup.sub}" in start["database"]

    setup.subscribe("logs_json")
    run.until(lambda: bool(find(message="subscription logs_json added")), "the added line")
    setup.ready("logs_json")
    apply_started = find(message="started apply worker*", subscription="logs_json")
    assert apply_started and apply_started[0]["worker"] == "apply"
    # The worker's own lines carry what it is, and the position they speak of.
    run.until(
        lambda: bool(find(worker="apply", subscription="logs_json", logger="pgferry.apply")),
        "a line of the apply worker",
    )
    (streaming, *_) = find(message="subscription logs_json: apply worker streaming from*")
    assert streaming["message"].endswith(f"streaming from {streaming['lsn']}")

    # An apply error (a PostgreSQL error with a DETAIL), retried.
    setup.cluster.sql("ALTER TABLE t ADD CONSTRAINT no_bad CHECK (v <> 'bad')", dbname=setup.sub)
    setup.cluster.sql("INSERT INTO t VALUES (1, 'bad')", dbname=setup.pub)
    run.until(
        lambda: len(find(level="WARNING", worker="apply", message="apply worker*")) >= 2,
        "two retries",
    )
    retry = find(level="WARNING", worker="apply")[0]
    assert retry["attempt"] == 1 and retry["exit_status"] == 1 and "retrying in" in retry["message"]
    setup.set_enabled("logs_json", False)
    run.until(lambda: bool(find(message="subscription logs_json disabled")), "the disabled line")

    errors = find(level="ERROR")
    assert len(errors) >= 2, run.text()
    pids = [e["pid"] for e in errors]
    assert len(pids) == len(set(pids)), "an error logged twice in one attempt:\n" + run.text()
    for error in errors:
        assert error["worker"] == "apply" and error["subscription"] == "logs_json"
        assert error["table"] == "public.t" and re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", error["lsn"])
        assert 'violates check constraint "no_bad"' in error["message"]
        assert "Failing row contains (1, bad)" in error["message"]
        assert f"--skip {error['lsn']}" in error["hint"]
        assert "traceback" not in error

    drop_subscription(setup.sub_dsn, "logs_json")
    run.until(lambda: bool(find(message="subscription logs_json dropped")), "the dropped line")
    run.stop(signal.SIGINT)
    messages = [r["message"] for r in run.records()]
    assert "run stopping (SIGINT): stopping 0 workers" in messages and messages[-1] == "run stopped"
    assert PASSWORD not in run.text()


def test_every_worker_follows_v_and_q(setup: Setup, launch: Callable[..., Running]) -> None:
    # -q given after the subcommand: the launcher and its workers log warnings only.
    quiet = launch("-d", setup.sub_dsn, "run", "-q")
    setup.subscribe("logs_q")
    setup.ready("logs_q")
    setup.cluster.sql("INSERT INTO t VALUES (1, 'one')", dbname=setup.pub)
    wait_for(setup.same, "the row")
    quiet.stop(signal.SIGTERM)
    assert quiet.text() == ""

    # -v before and -v after: DEBUG everywhere, the workers' own lines included.
    loud = launch("-v", "-d", setup.sub_dsn, "run", "-v")
    loud.until(
        lambda: "DEBUG apply worker for logs_q: running, logging at DEBUG" in loud.text(),
        "the apply worker's debug line",
    )
    setup.cluster.sql("INSERT INTO t VALUES (2, 'two')", dbname=setup.pub)
    wait_for(setup.same, "the second row")
    loud.stop(signal.SIGTERM)
    lines = loud.text().splitlines()
    assert all(re.match(r"\S+ \S+ pgferry\[\d+\] (DEBUG|INFO|WARNING|ERROR) ", x) for x in lines)
    assert any(" INFO run started: catalog database " in x for x in lines), lines
    assert any(" INFO stopped apply worker for logs_q (pid " in x for x in lines), lines
    assert lines[-2].endswith("): run stopping") and lines[-1].endswith(" INFO run stopped")
    assert " INFO run stopping (SIGTERM): stopping 1 worker" in loud.text()
    drop_subscription(setup.sub_dsn, "logs_q")


def test_receiver_timeout_option(setup: Setup, launch: Callable[..., Running]) -> None:
    run = launch("-d", setup.sub_dsn, "run", "--receiver-timeout", "1")
    setup.subscribe("logs_rt")
    setup.ready("logs_rt")
    with stopped(walsender_pid(setup.cluster, setup.pub, "logs_rt")):
        run.until(lambda: bool(GAVE_UP.search(run.text())), "the apply worker to give up", 20)
    setup.cluster.sql("INSERT INTO t VALUES (1, 'after')", dbname=setup.pub)
    wait_for(setup.same, "the row after the retry")
    run.stop(signal.SIGTERM)
    lines = run.text().splitlines()
    timeouts = [x for x in lines if "nothing received from the publisher" in x]
    assert timeouts, lines
    assert re.search(
        r" ERROR subscription 'logs_rt': replication from slot 'logs_rt': nothing received"
        r" .*\(receiver timeout 1 s\); hint: .*--receiver-timeout",
        timeouts[0],
    ), timeouts[0]
    errors = [x for x in lines if " ERROR " in x]
    pids = [re.findall(r"pgferry\[(\d+)\]", x)[0] for x in errors]
    assert len(pids) == len(set(pids)), "\n".join(lines)
    assert any(GAVE_UP.search(x) for x in lines), lines
    drop_subscription(setup.sub_dsn, "logs_rt")


def test_run_help_gives_the_receiver_timeout_default() -> None:
    out = subprocess.run(
        [*PGFERRY, "run", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--receiver-timeout SECONDS" in out
    assert "PGFERRY_RECEIVER_TIMEOUT or 60" in " ".join(out.split())
