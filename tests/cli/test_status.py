"""``pgferry status`` and ``pgferry subscription wait`` through the real command
line (``python -m pgferry.cli``): output, exit codes, one-line failures."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgferry.catalog import store
from pgferry.testing import Cluster
from tests.status import Env, environment
from tests.support import PGFERRY

#: Every key of a ``status --json`` object (the documented, stable set).
KEYS = {
    "name", "enabled", "publications", "slot_name", "conninfo", "worker", "lag",
    "last_error", "last_error_time", "last_error_lsn", "last_error_hint", "stats", "tables",
    "sync_workers", "sequences", "publisher",
}  # fmt: skip
WORKER_KEYS = {
    "state", "pid", "started_at", "received_lsn", "applied_lsn", "last_msg_send_time",
    "last_msg_receipt_time", "latest_end_time", "seconds_since_report", "spool_bytes", "retry",
}  # fmt: skip
SLOT_KEYS = {
    "name", "exists", "active", "active_pid", "restart_lsn", "confirmed_flush_lsn",
    "retained_wal_bytes", "wal_status", "flush_lag_seconds",
}  # fmt: skip


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def pgferry(dsn: str, *args: str, timeout: float = 90) -> Run:
    started = time.monotonic()
    proc = subprocess.run(
        [*PGFERRY, "-d", dsn, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "250"},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def one_line_failure(result: Run, *needles: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pgferry: error: "), result.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), result.stderr
    for needle in needles:
        assert needle in lines[0], result.stderr


@pytest.fixture
def env(cluster: Cluster, dbname: str, tmp_path: Path) -> Iterator[Env]:
    with environment(cluster, dbname, tmp_path) as created:
        yield created


def status_json(env: Env) -> list[dict[str, Any]]:
    result = pgferry(env.sub_dsn, "status", "--json")
    assert result.returncode == 0 and result.stderr == "", result
    document: list[dict[str, Any]] = json.loads(result.stdout)
    return document


def test_status_without_subscriptions(env: Env) -> None:
    assert status_json(env) == []  # no catalog: nothing, and nothing created
    assert env.on_sub("SELECT to_regnamespace('pgferry') IS NULL") == [(True,)]
    human = pgferry(env.sub_dsn, "status")
    assert (human.returncode, human.stdout, human.stderr) == (0, "no subscriptions\n", "")


def test_status_of_a_subscription_without_launcher(env: Env) -> None:
    env.create()  # tables i: nothing runs them
    (doc,) = status_json(env)
    assert set(doc) == KEYS and set(doc["worker"]) == WORKER_KEYS
    assert set(doc["publisher"]["slot"]) == SLOT_KEYS
    assert (doc["name"], doc["enabled"], doc["slot_name"]) == ("ferry", True, "ferry")
    assert doc["worker"]["state"] == "stopped" and doc["worker"]["pid"] is None
    assert doc["tables"]["states"] == {"i": 2}
    assert [t["name"] for t in doc["tables"]["not_ready"]] == ["t", "u"]
    slot = doc["publisher"]["slot"]
    assert slot["exists"] is True and slot["active"] is False
    assert "/" in slot["confirmed_flush_lsn"] and "/" in doc["publisher"]["wal_lsn"]
    assert doc["stats"] == {
        "apply_error_count": 0,
        "sync_error_count": 0,
        **{k: 0 for k in store.STATS_KEYS[2:]},
        "stats_reset": None,
    }
    assert set(doc["lag"]) == {"bytes", "seconds", "seconds_source"}
    assert doc["sequences"] == {
        "total": 0,
        "largest_drift": None,
        "oldest_sync": None,
        "items": [],
    }
    human = pgferry(env.sub_dsn, "status")
    assert human.returncode == 0 and human.stderr == "", human
    assert "ferry" in human.stdout and "stopped" in human.stdout
    assert "not ready: public.t (i), public.u (i)" in human.stdout


def test_wait_returns_after_a_load_with_the_launcher(env: Env) -> None:
    env.on_pub("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g")
    env.create()
    env.launch()
    first = pgferry(env.sub_dsn, "subscription", "wait", "ferry", "--timeout", "60")
    assert first.returncode == 0, (first, env.log())
    assert first.stdout.startswith("subscription 'ferry' caught up: 2 tables ready, applied ")
    # Progress goes to stderr (plain lines when not a terminal), and nothing else.
    for line in first.stderr.splitlines():
        assert line.startswith(("copying public.", "sync public.", "waiting: ")), first.stderr
    assert env.on_sub("SELECT count(*) FROM t") == [(5000,)]  # the initial copy
    # A load in many transactions, committed before wait starts: all of it is on
    # the subscriber when wait returns.
    with env.cluster.connect(env.pub) as conn:
        for batch in range(20):
            conn.execute(
                "INSERT INTO u SELECT g FROM generate_series(%s::int, %s::int) g",
                (batch * 1000 + 1, batch * 1000 + 1000),
            )
    result = pgferry(env.sub_dsn, "subscription", "wait", "ferry", "--timeout", "60")
    assert result.returncode == 0, (result, env.log())
    assert env.on_sub("SELECT count(*) FROM u") == [(20000,)]
    (doc,) = status_json(env)
    assert doc["worker"]["state"] == "running" and doc["tables"]["not_ready"] == []


def test_wait_times_out_without_the_launcher(env: Env) -> None:
    env.create()
    env.on_pub("INSERT INTO u SELECT g FROM generate_series(1, 100) g")
    result = pgferry(env.sub_dsn, "subscription", "wait", "ferry", "--timeout", "1")
    one_line_failure(
        result,
        "timed out after 1.",
        "subscription 'ferry'",
        "2 of 2 tables not ready: public.t (i), public.u (i)",
        "bytes behind",
        "is pgferry run running",
    )
    assert 1 <= result.seconds < 10


def test_wait_fails_fast_when_disabled_or_missing(env: Env) -> None:
    env.create("ferry", "enabled=false")
    result = pgferry(env.sub_dsn, "subscription", "wait", "ferry", "--timeout", "60")
    one_line_failure(result, "subscription 'ferry' is disabled")
    assert result.seconds < 10
    missing = pgferry(env.sub_dsn, "subscription", "wait", "nope", "--timeout", "60")
    one_line_failure(missing, "subscription 'nope' does not exist")
    assert missing.seconds < 10


def test_status_text_fits_80_columns_when_piped(env: Env) -> None:
    env.create()
    result = pgferry(env.sub_dsn, "status")  # piped: 80 columns whatever COLUMNS says
    assert result.returncode == 0 and result.stderr == "", result
    lines = result.stdout.splitlines()
    assert lines[0] == "subscription ferry (enabled; publications pub)"
    assert max(len(line) for line in lines) <= 80
    (doc,) = status_json(env)
    slot = doc["publisher"]["slot"]
    assert f"slot positions: restart {slot['restart_lsn']}," in result.stdout
    assert "  hint: is pgferry run running for this database?" in lines


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_watch_top_and_ctrl_c(env: Env) -> None:
    env.create()
    top = pgferry(env.sub_dsn, "top", "--interval", "0.1", "--count", "2")
    assert top.returncode == 0 and top.stderr == "", top
    assert top.stdout.count("pgferry status at ") == 2
    assert top.stdout.count("table public.t: i") == 2 and "table public.u: i" in top.stdout
    lines = pgferry(env.sub_dsn, "status", "--watch", "0.1", "--count", "3", "--json")
    documents = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(documents) == 3 and all(d[0]["name"] == "ferry" for d in documents)
    # Until Ctrl-C: a clean end, exit status 0, no traceback.
    proc = subprocess.Popen(
        [*PGFERRY, "-d", env.sub_dsn, "status", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        # As from a terminal: a test run in the background (CI) may have SIGINT
        # ignored, which a child inherits, and then Python leaves it ignored.
        preexec_fn=_interruptible,
    )
    # (Once it shows a first view: a loaded machine may take seconds to start it.)
    assert proc.stdout is not None
    seen, deadline = "", time.monotonic() + 60
    while "pgferry status at " not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        if select.select([proc.stdout], [], [], 1)[0]:
            seen += proc.stdout.readline()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    out = seen + out
    assert proc.returncode == 0 and err == "", err
    assert out.count("pgferry status at ") >= 2 and "subscription ferry" in out


def _on_terminal(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run ``pgferry ARGS`` on a pseudo-terminal of 80 columns; exit status, output."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        os.environ.update(COLUMNS="80", LINES="40")
        os.execv(PGFERRY[0], [*PGFERRY, *args])  # noqa: S606 - our own interpreter
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_watch_and_wait_on_a_terminal(env: Env) -> None:
    env.create()
    code, out = _on_terminal(["-d", env.sub_dsn, "status", "--watch", "0.1", "--count", "2"])
    assert code == 0 and "Traceback" not in out, out
    assert "Ctrl-C to stop" in out and "subscription ferry" in out
    code, out = _on_terminal(["-d", env.sub_dsn, "subscription", "wait", "ferry", "--timeout", "1"])
    assert code == 1 and "Traceback" not in out, out
    assert "waiting: 0 of 2 tables ready" in out and "pgferry: error: timed out" in out
