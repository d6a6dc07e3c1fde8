"""A worker process's log (``python -m pgferry.runner.child``): the level and
format the launcher passes in its environment, the error that ends it as one
line with its fields and hint, and a traceback only at DEBUG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from pgferry.runner.env import DSN_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV
from pgferry.testing import Cluster

# A worker of a kind that fails as pgferry never expects (a bug), run by main().
_BUGGY = (
    "import sys\n"
    "from pgferry.runner import child, kinds\n"
    "class Buggy:\n"
    "    def run(self):\n"
    "        raise ValueError('boom\\nsecond line')\n"
    "    def request_stop(self):\n"
    "        pass\n"
    "kinds.KINDS['apply'] = kinds.WorkerKind('apply', ('SUBSCRIPTION',), lambda d, a: Buggy())\n"
    "sys.exit(child.main(sys.argv[1:]))\n"
)


def worker(
    *args: str, env: dict[str, str], code: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["-c", code] if code else ["-m", "pgferry.runner.child"]
    return subprocess.run(
        [sys.executable, *command, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_error_that_ends_a_worker_is_one_json_line(cluster: Cluster, dbname: str) -> None:
    out = worker("apply", "nosuch", env={DSN_ENV: cluster.dsn(dbname), LOG_FORMAT_ENV: "json"})
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    record = json.loads(lines[0])
    assert record["level"] == "ERROR" and record["logger"] == "pgferry.runner"
    assert (record["worker"], record["subscription"]) == ("apply", "nosuch")
    assert "nosuch" in record["message"] and record["hint"], record
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_traceback_only_at_debug(level: str) -> None:
    out = worker("apply", "s", env={LOG_LEVEL_ENV: level}, code=_BUGGY)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    first = lines[0] if level == "INFO" else lines[1]
    assert re.search(
        r" pgferry\[\d+\] ERROR apply worker for s failed: ValueError: boom second line;"
        r" hint: a pgferry bug: run with -vv for the traceback",
        first,
    ), out.stderr
    if level == "INFO":
        assert lines == [first]
        return
    assert "DEBUG apply worker for s: running, logging at DEBUG" in lines[0]
    # The traceback: a block whose every line carries the record's prefix.
    prefix = first.split(" ERROR ")[0] + " ERROR | "
    assert lines[2] == prefix + "Traceback (most recent call last):", out.stderr
    assert all(line.startswith(prefix) for line in lines[2:]), out.stderr
    assert lines[-2:] == [prefix + "ValueError: boom", prefix + "second line"]
    # JSON: the traceback is a field of the one line.
    out = worker("apply", "s", env={LOG_LEVEL_ENV: level, LOG_FORMAT_ENV: "json"}, code=_BUGGY)
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert [r["level"] for r in records] == ["DEBUG", "ERROR"]
    assert records[1]["error"] == "ValueError" and "ValueError: boom" in records[1]["traceback"]


def test_a_level_that_is_not_one_stops_the_worker_at_once() -> None:
    out = worker("apply", "s", env={LOG_LEVEL_ENV: "chatty"})
    assert out.returncode == 2
    assert out.stderr == (
        "pgferry: error: PGFERRY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not 'chatty'\n"
    )
