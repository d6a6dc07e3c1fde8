"""The global options (``-d``, ``-v``, ``-q``, ``--log-format``) before and after
every command, merged; and hints that name the executable that was started.

Every registered command is walked (groups recursively), so a command added
later is covered without a change here."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pgferry import logs
from pgferry.cli import options
from pgferry.cli.main import hint_rewriter, invoked_as, main
from pgferry.runner.env import LOG_LEVEL_ENV
from pgferry.testing import Cluster
from tests.support import PGFERRY, Run

PASSWORD = "n0t-a-Secret"  # noqa: S105 - never a real password
#: The console script of this environment (``.venv/bin/pgferry``).
SCRIPT = Path(sys.executable).parent / "pgferry"


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = list(commands(main))


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """CliRunner runs the group callback in this process: put logging back."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs.set_hint_rewriter(str)


def cli(*args: str, env: dict[str, str] | None = None, command: list[str] | None = None) -> Run:
    proc = subprocess.run(
        [*(command or PGFERRY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_the_walk_finds_nested_commands() -> None:
    assert ("run",) in ALL and ("status",) in ALL
    assert ("subscription", "create") in ALL and ("publication", "list") in ALL


def test_a_command_loads_only_its_own_module() -> None:
    # A command started beside a write load (switchover) takes less of the
    # machine when the other commands' modules stay unloaded.
    code = (
        "import sys\n"
        "from pgferry.cli.main import main\n"
        "try:\n"
        "    main(['switchover', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('pgferry.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert "pgferry.cli.switchover" in loaded
    for other in ("pgferry.cli.run", "pgferry.cli.status", "pgferry.runner.launcher"):
        assert other not in loaded, other


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_takes_the_global_options_after_it(path: tuple[str, ...]) -> None:
    flags = ["-d", "host=nowhere", "-v", "-q", "--log-format", "json"]
    runner = CliRunner()
    after = runner.invoke(main, [*path, *flags, "--help"])
    assert after.exit_code == 0, after.output
    for option in ("-d, --dsn DSN", "-v, --verbose", "-q, --quiet", "--log-format"):
        assert option in after.output, after.output
    before = runner.invoke(main, [*flags, *path, "--help"])
    assert before.exit_code == 0, before.output


def test_levels_from_v_and_q() -> None:
    def level(verbose: int, quiet: int, default: int = logging.WARNING) -> str:
        given = options.GlobalOptions(verbose=verbose, quiet=quiet)
        return logging.getLevelName(options.log_level(given, default))

    assert [level(0, 0), level(1, 0), level(2, 0), level(3, 0), level(0, 1)] == [
        "WARNING",
        "INFO",
        "DEBUG",
        "DEBUG",
        "ERROR",
    ]
    # run's default is INFO; -vv is DEBUG whatever the default.
    assert [level(0, 0, logging.INFO), level(1, 0, logging.INFO), level(2, 0, logging.INFO)] == [
        "INFO",
        "INFO",
        "DEBUG",
    ]
    assert [level(0, 1, logging.INFO), level(0, 2, logging.INFO)] == ["WARNING", "ERROR"]


def test_the_environment_sets_the_level_where_no_flag_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "debug")
    assert options.log_level(options.GlobalOptions()) == logging.DEBUG
    assert options.log_level(options.GlobalOptions(quiet=1)) == logging.ERROR
    monkeypatch.setenv(LOG_LEVEL_ENV, "loud")
    result = CliRunner().invoke(main, ["status", "--help"])
    assert result.exit_code == 1
    assert "PGFERRY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not 'loud'" in result.output


def test_dsn_after_the_command(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    before = cli("-d", dsn, "subscription", "list", "--json")
    assert before.returncode == 0, before.stderr
    after = cli("subscription", "list", "--json", "-d", dsn)
    assert (after.returncode, after.stdout) == (0, before.stdout), after.stderr
    # The example: status with -d after it.
    status = cli("status", "-d", dsn)
    assert status.returncode == 0, status.stderr
    # After replaces before, at every level of nesting.
    unreachable = f"host=127.0.0.1 port=1 password={PASSWORD} connect_timeout=3"
    replaced = cli("-d", unreachable, "subscription", "list", "--json", "-d", dsn)
    assert (replaced.returncode, replaced.stdout) == (0, before.stdout), replaced.stderr
    middle = cli("-d", dsn, "subscription", "-d", unreachable, "list")
    assert middle.returncode == 1
    assert "port=1" in middle.stderr and PASSWORD not in middle.stderr, middle.stderr


def test_verbosity_and_format_after_the_command_merge(cluster: Cluster, dbname: str) -> None:
    # -v before and -v after: -vv (DEBUG); --log-format after the command.
    result = cli(
        "-v", "subscription", "list", "-v", "--log-format", "json", "-d", cluster.dsn(dbname)
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["level"] == "DEBUG" and r["message"].startswith("using ") for r in records), (
        result.stderr
    )
    quiet = cli("-v", "subscription", "list", "-q", "-q", "-d", cluster.dsn(dbname))
    assert (quiet.returncode, quiet.stderr) == (0, ""), quiet.stderr


def test_hints_name_the_executable_that_ran(cluster: Cluster, dbname: str) -> None:
    assert SCRIPT.is_file()
    dsn = cluster.dsn(dbname)
    # pgferry is not on PATH: the hint names the script that ran, as it was typed.
    bare = {"PATH": "/usr/bin:/bin"}
    result = cli("-d", dsn, "schema", "diff", "nosuch", env=bare, command=[str(SCRIPT)])
    assert result.returncode == 1
    hint = [line for line in result.stderr.splitlines() if line.startswith("hint: ")]
    assert hint and f"{SCRIPT} subscription list" in hint[0], result.stderr
    # That script is the pgferry on PATH: the hint says pgferry.
    on_path = {"PATH": f"{SCRIPT.parent}:/usr/bin:/bin"}
    result = cli("-d", dsn, "schema", "diff", "nosuch", env=on_path, command=[str(SCRIPT)])
    assert "hint: pgferry subscription list" in result.stderr, result.stderr
    # python -m pgferry has no executable of its own to name.
    result = cli("-d", dsn, "schema", "diff", "nosuch", env=bare)
    assert "hint: pgferry subscription list" in result.stderr, result.stderr


def test_the_hint_rewriter_touches_commands_only() -> None:
    rewrite = hint_rewriter(".venv/bin/pgferry", ["subscription", "run", "status"])
    assert rewrite(
        "fix the row, or skip it with `pgferry subscription alter s --skip 0/1`;"
        " pgferry run starts it again; the pgferry catalog is fine (pgferry -d X status)"
    ) == (
        "fix the row, or skip it with `.venv/bin/pgferry subscription alter s --skip 0/1`;"
        " .venv/bin/pgferry run starts it again; the pgferry catalog is fine"
        " (.venv/bin/pgferry -d X status)"
    )
    assert rewrite("see /usr/bin/pgferry run") == "see /usr/bin/pgferry run"
    assert hint_rewriter(None, ["run"])("pgferry run") == "pgferry run"
    assert invoked_as("/usr/lib/python3/dist-packages/pgferry/__main__.py") is None
    assert invoked_as(str(SCRIPT)) in (None, str(SCRIPT))
