"""``pgferry subscription`` through the real command line (``python -m pgferry.cli``):
output, exit codes, ``list --json`` for scripts, warnings, one-line errors, and
never a password."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pgferry.catalog import SubscriptionOptions, store
from pgferry.cli.main import main
from pgferry.subscription.options import ALTER_KEYS, CREATE_KEYS
from pgferry.testing import Cluster
from tests.support import Run, drop_origins, pgferry

PASSWORD = "s3cret-Pa55"  # noqa: S105 - never a real password
UNREACHABLE = f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} connect_timeout=3"


def run(dsn: str, *args: str) -> Run:
    """``pgferry -d DSN subscription ARGS``."""
    return pgferry(dsn, "subscription", *args)


def assert_clean_failure(result: Run, *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pgferry: error: "), result.stderr
    assert len(lines) <= 2
    if len(lines) == 2:
        assert lines[1].startswith("hint: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert PASSWORD not in result.stderr


@dataclass
class Env:
    cluster: Cluster
    pub: str
    sub: str

    @property
    def dsn(self) -> str:
        """The subscriber (-d)."""
        return self.cluster.dsn(self.sub)

    @property
    def publisher(self) -> str:
        return self.cluster.dsn(self.pub)

    def listed(self) -> list[dict[str, Any]]:
        result = run(self.dsn, "list", "--json")
        assert result.returncode == 0, result.stderr
        document: list[dict[str, Any]] = json.loads(result.stdout)
        return document


@pytest.fixture
def env(cluster: Cluster, dbname: str) -> Iterator[Env]:
    sub = dbname[:50] + "_sub"
    cluster.create_database(sub)
    drop_origins(cluster)
    ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY)"
    cluster.sql(ddl, dbname=dbname)
    cluster.sql(ddl, dbname=sub)
    cluster.sql("CREATE PUBLICATION pub FOR TABLE t, u", dbname=dbname)
    try:
        yield Env(cluster, dbname, sub)
    finally:
        cluster.drop_database(sub)
        drop_origins(cluster)


def test_create_list_alter_drop(env: Env) -> None:
    created = run(env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "pub")
    assert (created.returncode, created.stdout, created.stderr) == (
        0,
        "created subscription 'ferry': slot 'ferry' created on the publisher,"
        " 2 tables (state i), enabled\n",
        "",
    )
    (sub,) = env.listed()
    assert (sub["name"], sub["enabled"], sub["slot_name"], sub["tables"]) == (
        "ferry",
        True,
        "ferry",
        {"i": 2},
    )
    with env.cluster.connect(env.sub) as conn:  # an apply error about 0/AB, to skip
        store.record_error(conn, "ferry", "boom", finish_lsn="0/AB")
    altered = run(env.dsn, "alter", "ferry", "--disable", "--with", "binary=on", "--skip", "0/AB")
    assert (altered.returncode, altered.stdout, altered.stderr) == (
        0,
        "altered subscription 'ferry': disabled; binary set to true; skip LSN set to 0/AB\n",
        "",
    )
    (sub,) = env.listed()
    assert (sub["enabled"], sub["options"]["binary"], sub["skip_lsn"]) == (False, True, "0/AB")
    dropped = run(env.dsn, "drop", "ferry")
    assert (dropped.returncode, dropped.stdout, dropped.stderr) == (
        0,
        "dropped subscription 'ferry' (slot 'ferry' dropped on the publisher)\n",
        "",
    )
    assert env.listed() == []
    assert env.cluster.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    again = run(env.dsn, "drop", "ferry", "--if-exists")
    assert (again.returncode, again.stdout, again.stderr) == (
        0,
        "subscription 'ferry' does not exist; nothing dropped\n",
        "",
    )


def test_human_list_masks_the_password(env: Env) -> None:
    empty = run(env.dsn, "list")
    assert (empty.returncode, empty.stdout) == (0, "no subscriptions\n")
    conninfo = f"host=db.example password={PASSWORD} dbname=app"
    created = run(
        env.dsn, "create", "[red]away", "--connection", conninfo, "--publication", "p",
        "--with", "connect=false", "--with", "slot_name=away",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created subscription '[red]away': slot 'away' (not created)")
    shown = run(env.dsn, "list")
    assert shown.returncode == 0, shown.stderr
    assert "[red]away" in shown.stdout  # shown as is, not as rich markup
    assert "password=********" in shown.stdout
    assert PASSWORD not in shown.stdout
    (sub,) = env.listed()
    assert "password=********" in sub["conninfo"] and PASSWORD not in json.dumps(sub)


def test_warnings_go_to_stderr(env: Env) -> None:
    result = run(
        env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "pub",
        "--with", "create_slot=false", "--with", "copy_data=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "pgferry: warning: replication slot 'ferry' does not exist on the publisher;"
        " create it before enabling the subscription\n"
    )
    assert "2 tables (state r)" in result.stdout


def test_errors_are_one_line_with_exit_status_1(env: Env) -> None:
    assert_clean_failure(
        run(env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "nope"),
        "publication 'nope' does not exist on the publisher",
        "hint: create them on the publisher",
    )
    assert_clean_failure(
        run(
            env.dsn,
            "create",
            "ferry",
            "--connection",
            env.publisher,
            "--publication",
            "pub",
            "--with",
            "colour=blue",
        ),
        "unrecognized subscription parameter 'colour'",
        "hint: valid keys: copy_data, create_slot,",
    )
    assert_clean_failure(
        run(
            env.dsn,
            "create",
            "ferry",
            "--connection",
            f"host=x password={PASSWORD} bogus=1",
            "--publication",
            "pub",
        ),
        "invalid connection string",
    )
    assert_clean_failure(
        run(env.dsn, "create", "ferry", "--connection", UNREACHABLE, "--publication", "pub"),
        "cannot connect",
        "password=********",
    )
    assert_clean_failure(run(env.dsn, "drop", "nope"), "subscription 'nope' does not exist")
    assert_clean_failure(run(env.dsn, "alter", "nope", "--enable"), "'nope' does not exist")
    assert_clean_failure(run(env.dsn, "alter", "nope"), "nothing to alter")
    assert_clean_failure(run(env.dsn, "alter", "nope", "--skip", "xyz"), "invalid LSN 'xyz'")
    assert env.cluster.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]


def test_missing_tables_error_names_them(env: Env) -> None:
    env.cluster.sql("ALTER TABLE t ADD COLUMN extra int", dbname=env.pub)
    env.cluster.sql("DROP TABLE u", dbname=env.sub)
    result = run(env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "pub")
    assert_clean_failure(
        result, "table public.t lacks column extra", "table public.u does not exist"
    )
    assert env.cluster.sql("SELECT count(*) FROM pg_replication_slots") == [(0,)]


def test_drop_with_unreachable_publisher(env: Env) -> None:
    created = run(
        env.dsn, "create", "ferry", "--connection", UNREACHABLE, "--publication", "pub",
        "--with", "connect=false",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert_clean_failure(
        run(env.dsn, "drop", "ferry"),
        "could not connect to the publisher to drop replication slot 'ferry'",
        "hint: to drop the subscription without its slot: pgferry subscription alter ferry"
        " --disable --with slot_name=NONE",
    )
    detached = run(env.dsn, "alter", "ferry", "--disable", "--with", "slot_name=NONE")
    assert detached.returncode == 0, detached.stderr
    dropped = run(env.dsn, "drop", "ferry")
    assert (dropped.returncode, dropped.stdout) == (0, "dropped subscription 'ferry'\n")


def test_bad_subscriber_dsn(env: Env) -> None:
    result = run(f"host=127.0.0.1 port=1 password={PASSWORD} connect_timeout=3", "list")
    assert_clean_failure(result, "cannot connect to the subscriber", "password=********")


# -- help --------------------------------------------------------------------------------


def _formatted(value: Any) -> str:
    """An option's default as ``--with`` spells it."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _help(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_with_keys_are_listed_with_their_defaults() -> None:
    defaults = {**SubscriptionOptions().to_json(), "enabled": True, "slot_name": "NAME"}
    create_help = _help("subscription", "create")
    alter_help = _help("subscription", "alter")
    for help_text, keys in (
        (create_help, CREATE_KEYS),
        (alter_help, (*ALTER_KEYS, "refresh", "copy_data")),
    ):
        lines = help_text.splitlines()
        for key in keys:
            default = "true" if key == "refresh" else _formatted(defaults[key])
            assert any(line.split()[:1] == [f"{key}={default}"] for line in lines if line), key
    # Every stored option can be given at create, and is listed.
    assert set(SubscriptionOptions().to_json()) <= set(CREATE_KEYS)
    assert "streaming=parallel" in create_help and "batch_transactions=1000" in create_help
    assert "conflict_resolution=error" in alter_help and "--rename NEW" in alter_help


def test_top_level_help_shows_whole_summaries() -> None:
    # (Compared without white space: the formatter wraps a summary onto more lines,
    # also after a hyphen.)
    text = "".join(_help().split())
    for name, command in main.all_commands(click.Context(main)).items():
        first = (command.short_help or command.help or "").split("\n\n")[0]
        assert name + "".join(first.split()) in text, name
    assert "..." not in text.partition("Commands:")[2]
    sub = " ".join(_help("subscription").split())
    assert "Wait until NAME has every table ready and has applied the publisher's" in sub


# -- list, rename, owner ---------------------------------------------------------------


def test_list_shows_options_skip_lsn_and_the_error_with_its_fix(env: Env) -> None:
    created = run(
        env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "pub",
        "--with", "copy_data=false", "--with", "binary=true",
        "--with", "conflict_resolution=last_update_wins",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    shown = run(env.dsn, "list")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "subscription 'ferry'"
    assert "  state:        enabled" in lines
    assert "  tables:       r:2" in lines
    assert (
        "  options:      copy_data=false, binary=true, conflict_resolution=last_update_wins"
        in lines
    )
    assert not any("skip LSN" in line or "last error" in line for line in lines)
    with env.cluster.connect(env.sub) as conn:
        store.record_error(conn, "ferry", "duplicate key value", finish_lsn="0/AB")
    (sub,) = env.listed()
    assert (sub["last_error"], sub["last_error_lsn"]) == ("duplicate key value", "0/AB")
    assert sub["last_error_hint"].endswith("pgferry subscription alter ferry --skip 0/AB")
    assert sub["options"]["streaming"] == "parallel"  # --json: every option
    lines = run(env.dsn, "list").stdout.splitlines()
    assert "  state:        enabled, failing" in lines
    assert "  last error:   duplicate key value" in lines
    (hint,) = [line for line in lines if line.startswith("  hint:")]
    assert "fix the data on the subscriber" in hint
    assert hint.endswith("pgferry subscription alter ferry --skip 0/AB")
    assert run(env.dsn, "alter", "ferry", "--disable", "--skip", "0/AB").returncode == 0
    lines = run(env.dsn, "list").stdout.splitlines()
    assert "  skip LSN:     0/AB" in lines
    assert "  state:        disabled, failing" in lines
    (hint,) = [line for line in lines if line.startswith("  hint:")]
    assert hint.endswith("pgferry subscription alter ferry --skip 0/AB --enable")
    # Key: value lines, never wrapped (whatever the width, piped or not).
    assert all(line == lines[0] or re.fullmatch(r"  [a-zA-Z ]+: +\S.*", line) for line in lines)


def test_rename_and_owner(env: Env) -> None:
    role = f'{env.sub[:40]} ow"ner'
    env.cluster.sql(f"CREATE ROLE {_quoted(role)}")
    try:
        created = run(
            env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "pub",
            "--with", "copy_data=false",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        (before,) = env.listed()
        new = 'we "ird'
        assert_clean_failure(
            run(env.dsn, "alter", "ferry", "--owner", role, "--rename", new),
            "--rename cannot be combined with other changes",
            "hint: rename in a command of its own",
        )
        owned = run(env.dsn, "alter", "ferry", "--owner", role)
        assert (owned.returncode, owned.stderr) == (0, "")
        assert owned.stdout == f"altered subscription 'ferry': owner set to {_quoted(role)}\n"
        altered = run(env.dsn, "alter", "ferry", "--rename", new)
        assert (altered.returncode, altered.stderr) == (0, "")
        assert altered.stdout == "altered subscription 'ferry': renamed to 'we \"ird'\n"
        (after,) = env.listed()
        # The same subscription under its new name: origin, slot, tables kept.
        assert (after["name"], after["owner"]) == (new, role)
        for key in ("origin_name", "slot_name", "tables", "options", "conninfo"):
            assert after[key] == before[key], key
        assert after["origin_name"] == "pgferry_ferry"
        # The old name is free again; its origin is taken, so a new one is chosen.
        again = run(
            env.dsn, "create", "ferry", "--connection", env.publisher, "--publication", "pub",
            "--with", "copy_data=false", "--with", "slot_name=ferry2",
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        origins = {s["name"]: s["origin_name"] for s in env.listed()}
        assert origins == {"ferry": "pgferry_ferry_2", new: "pgferry_ferry"}
        assert_clean_failure(
            run(env.dsn, "alter", "ferry", "--rename", new), f"subscription {new!r} already exists"
        )
        assert_clean_failure(
            run(env.dsn, "alter", "ferry", "--owner", "no such role"),
            'role "no such role" does not exist',
            "hint: ",
        )
        for name in ("ferry", new):
            assert run(env.dsn, "drop", name).returncode == 0
    finally:
        env.cluster.sql(f"DROP ROLE {_quoted(role)}")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
