"""``pgferry publication`` through the real command line (``python -m pgferry.cli``):
output, exit codes, ``--json`` for scripts, warnings and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from pgferry.testing import Cluster
from pgferry.testing.pytest_plugin import ClusterFactory
from tests.support import PGFERRY

PASSWORD = "s3cret-Pa55"  # noqa: S105 - never a real password
JSON_KEYS = {"name", "owner", "all_tables", "publish", "via_root", "ddl", "schemas", "tables"}
TABLE_KEYS = {"schema", "table", "columns", "row_filter"}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("pgferry: warning: ")]


def run(dsn: str | None, *args: str, env: dict[str, str] | None = None) -> Run:
    """``pgferry [-d DSN] publication ARGS``, wide enough that tables never wrap."""
    cmd = [*PGFERRY] + (["-d", dsn] if dsn is not None else []) + ["publication", *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def listed(dsn: str) -> list[dict[str, Any]]:
    result = run(dsn, "list", "--json")
    assert result.returncode == 0, result.stderr
    document: list[dict[str, Any]] = json.loads(result.stdout)
    return document


def assert_clean_failure(result: Run, *needles: str, status: int = 1) -> None:
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pgferry: error: "), result.stderr
    assert len(lines) <= 2
    if len(lines) == 2:
        assert lines[1].startswith("hint: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr


# -- success paths ----------------------------------------------------------------------


def test_create_list_alter_drop(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cluster.sql(
        'CREATE SCHEMA "we ird"; CREATE TABLE "we ird".x (id int PRIMARY KEY, a int);'
        " CREATE TABLE t (id int PRIMARY KEY)",
        dbname=dbname,
    )
    created = run(dsn, "create", "app", "--table", '"we ird".x', "--with", "publish=insert,update")
    assert (created.returncode, created.stdout, created.stderr) == (
        0,
        "created publication 'app'\n",
        "",
    )
    (pub,) = listed(dsn)
    assert set(pub) == JSON_KEYS
    assert (pub["name"], pub["all_tables"], pub["publish"], pub["via_root"]) == (
        "app",
        False,
        ["insert", "update"],
        False,
    )
    assert pub["tables"] == [
        {"schema": "we ird", "table": "x", "columns": None, "row_filter": None}
    ]

    altered = run(dsn, "alter", "app", "--add-table", "t", "--drop-table", '"we ird".x')
    assert (altered.returncode, altered.stdout) == (0, "altered publication 'app'\n")
    assert [(t["schema"], t["table"]) for t in listed(dsn)[0]["tables"]] == [("public", "t")]

    dropped = run(dsn, "drop", "app")
    assert (dropped.returncode, dropped.stdout) == (0, "dropped publication 'app'\n")
    assert listed(dsn) == []
    again = run(dsn, "drop", "app", "--if-exists")
    assert (again.returncode, again.stdout, again.stderr) == (
        0,
        "publication 'app' does not exist; nothing dropped\n",
        "",
    )


def test_human_list(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    empty = run(dsn, "list")
    assert (empty.returncode, empty.stdout) == (0, "no publications\n")
    cluster.sql(
        'CREATE TABLE "[red]x" (id int PRIMARY KEY); CREATE TABLE nopk (a int)', dbname=dbname
    )
    assert run(dsn, "create", "pub_one", "--table", '"[red]x"').returncode == 0
    assert run(dsn, "create", "pub_two", "--all-tables", "--with", "publish=insert").returncode == 0
    result = run(dsn, "list")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for header in ("Name", "Owner", "All tables", "Publish", "Via root", "Tables"):
        assert header in out
    # Names are text, never rich markup: the brackets are shown as they are.
    assert 'public."[red]x"' in out
    rows = [line for line in out.splitlines() if "pub_" in line]
    assert len(rows) == 2
    assert "insert, update, delete, truncate" in rows[0] and " no " in rows[0]
    assert "insert" in rows[1] and "update" not in rows[1] and " yes " in rows[1]
    assert "public.nopk" in out


def test_json_is_parseable_and_stable(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cluster.sql(
        'CREATE TABLE t (id int PRIMARY KEY, "B" text); CREATE TABLE u (id int PRIMARY KEY)',
        dbname=dbname,
    )
    spec = 't (id, "B") WHERE (id > 1 AND "B" <> \')\')' if cluster.major >= 15 else "t"
    assert run(dsn, "create", "zeta", "--table", spec, "--table", "u").returncode == 0
    assert run(dsn, "create", "alpha", "--all-tables").returncode == 0
    document = listed(dsn)
    assert [p["name"] for p in document] == ["alpha", "zeta"]
    for pub in document:
        assert set(pub) == JSON_KEYS
        assert all(set(t) == TABLE_KEYS for t in pub["tables"])
    zeta = document[1]
    assert [t["table"] for t in zeta["tables"]] == ["t", "u"]
    t_entry, u_entry = zeta["tables"]
    if cluster.major >= 15:
        assert t_entry["columns"] == ["id", "B"]
        assert t_entry["row_filter"] == "((id > 1) AND (\"B\" <> ')'::text))"
    assert u_entry["columns"] is None and u_entry["row_filter"] is None


def test_warnings_go_to_stderr_one_line_each(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cluster.sql(
        "CREATE TABLE pk (id int PRIMARY KEY); CREATE TABLE nopk (a int);"
        " CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;"
        " CREATE TABLE full_t (a int); ALTER TABLE full_t REPLICA IDENTITY FULL",
        dbname=dbname,
    )
    result = run(dsn, "create", "p", "--table", "pk", "--table", "nopk", "--table", "nothing",
                 "--table", "full_t")  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == "created publication 'p'\n"
    assert result.stderr.splitlines() == result.warnings  # nothing but warnings
    assert len(result.warnings) == 2
    assert result.warnings[0].startswith("pgferry: warning: table public.nopk has no primary key")
    assert "ALTER TABLE public.nopk REPLICA IDENTITY FULL" in result.warnings[0]
    assert result.warnings[1].startswith(
        "pgferry: warning: table public.nothing has REPLICA IDENTITY NOTHING"
    )

    everything = run(dsn, "create", "all_of_it", "--all-tables", "--with", "publish=insert")
    assert everything.returncode == 0
    assert everything.warnings == [
        "pgferry: warning: publication 'all_of_it' is FOR ALL TABLES: every table created "
        "in this database from now on is replicated too"
    ]

    cluster.sql("CREATE TABLE nopk2 (a int)", dbname=dbname)
    added = run(dsn, "alter", "p", "--add-table", "nopk2")
    assert added.returncode == 0
    assert len(added.warnings) == 1 and "public.nopk2" in added.warnings[0]


def test_pg_environment_when_no_dsn(cluster: Cluster, dbname: str) -> None:
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=dbname)
    env = {
        "PGHOST": cluster.host,
        "PGPORT": str(cluster.port),
        "PGUSER": "postgres",
        "PGDATABASE": dbname,
    }
    assert run(None, "create", "p", "--table", "t", env=env).returncode == 0
    result = run("", "list", "--json", env=env)
    assert [p["name"] for p in json.loads(result.stdout)] == ["p"]


# -- errors: one line (plus a hint), status 1, no traceback ---------------------------------


def test_duplicate_create(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=dbname)
    assert run(dsn, "create", "p", "--table", "t").returncode == 0
    assert_clean_failure(
        run(dsn, "create", "p", "--table", "t"), "publication 'p' already exists", "hint: "
    )


def test_missing_publication(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=dbname)
    for args in (("alter", "ghost", "--add-table", "t"), ("drop", "ghost")):
        assert_clean_failure(
            run(dsn, *args),
            "pgferry: error: publication 'ghost' does not exist",
            "hint: pgferry publication list",
        )


def test_bad_spec_names_position(cluster: Cluster, dbname: str) -> None:
    assert_clean_failure(
        run(cluster.dsn(dbname), "create", "p", "--table", "t (a, b"),
        "invalid table spec 't (a, b': expected ',' or ')', found end of spec at position 8",
    )
    assert_clean_failure(
        run(cluster.dsn(dbname), "create", "p", "--table", "t WHERE (a > 1) OR (true)"),
        "expected end of spec, found 'O' at position 17",
    )


def test_bad_with(cluster: Cluster, dbname: str) -> None:
    assert_clean_failure(
        run(cluster.dsn(dbname), "create", "p", "--all-tables", "--with", "streaming=on"),
        "unknown key 'streaming'",
        "hint: valid keys: publish, publish_via_partition_root",
    )


def test_missing_tables(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=dbname)
    assert_clean_failure(
        run(dsn, "create", "p", "--table", "t", "--table", "ghost", "--table", '"we ird".x'),
        'tables do not exist on the publisher: ghost, "we ird".x',
    )
    assert listed(dsn) == []


def test_server_error_is_one_line(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    assert run(dsn, "create", "p", "--all-tables").returncode == 0
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=dbname)
    assert_clean_failure(
        run(dsn, "alter", "p", "--add-table", "t"),
        "pgferry: error: cannot alter the publication: "
        'publication "p" is defined as FOR ALL TABLES',
    )


def test_wal_level(make_cluster: ClusterFactory) -> None:
    replica = make_cluster(settings={"wal_level": "replica"})
    assert_clean_failure(
        run(replica.dsn(), "create", "p", "--all-tables"),
        "wal_level = replica",
        "hint: set wal_level = logical",
    )


def test_unreachable_server_hides_password() -> None:
    dsn = f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} connect_timeout=3"
    result = run(dsn, "list")
    assert_clean_failure(result, "cannot connect", "password=********")
    assert PASSWORD not in result.stderr


def test_usage_errors(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    cases = [
        (("create", "p"), "give --table, --tables-in-schema or --all-tables"),
        (("create", "p", "--all-tables", "--table", "t"), "cannot be combined"),
        (
            ("alter", "p"),
            "give --add-table, --drop-table, --set-table, --with, --ddl, --owner or --rename",
        ),
        (("alter", "p", "--set-table", "t", "--add-table", "u"), "cannot be combined"),
    ]
    for args, needle in cases:
        result = run(dsn, *args)
        assert result.returncode == 2, (args, result)
        assert needle in result.stderr and "Traceback" not in result.stderr


@pytest.mark.pg_max(14)
def test_filters_on_an_old_server(cluster: Cluster, dbname: str) -> None:
    cluster.sql("CREATE TABLE t (id int PRIMARY KEY)", dbname=dbname)
    assert_clean_failure(
        run(cluster.dsn(dbname), "create", "p", "--table", "t (id) WHERE (id > 1)"),
        "column lists and row filters (WHERE) need PostgreSQL 15 or later",
        "hint: publish whole tables",
    )


def test_rename_and_owner(cluster: Cluster, dbname: str) -> None:
    dsn = cluster.dsn(dbname)
    role = f'{dbname[:40]} Ow"ner'
    cluster.sql(f"CREATE TABLE t (id int PRIMARY KEY); CREATE ROLE {_quoted(role)}", dbname=dbname)
    try:
        assert run(dsn, "create", "app", "--table", "t").returncode == 0
        cluster.sql(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
            (f"{dbname[:40]}_slot",),
            dbname=dbname,
        )
        altered = run(dsn, "alter", "app", "--owner", role, "--rename", 'we "ird')
        assert altered.returncode == 0, altered.stderr
        assert altered.stdout == (
            f"altered publication 'app' (owner {_quoted(role)}) (renamed to 'we \"ird')\n"
        )
        # Subscribers name publications: with a slot here, a warning says what to do.
        (warning,) = altered.warnings
        assert "must now subscribe to 'we \"ird'" in warning
        assert "--drop-publication app --add-publication 'we \"ird'" in warning
        (pub,) = listed(dsn)
        assert (pub["name"], pub["owner"]) == ('we "ird', role)
        assert pub["tables"] == [{"schema": "public", "table": "t", "columns": None,
                                  "row_filter": None}]  # fmt: skip
        assert_clean_failure(run(dsn, "alter", "app", "--rename", "x"), "'app' does not exist")
        assert run(dsn, "create", "other", "--table", "t").returncode == 0
        assert_clean_failure(
            run(dsn, "alter", "other", "--rename", 'we "ird'), "'we \"ird' already exists"
        )
        assert_clean_failure(
            run(dsn, "alter", "other", "--owner", "no such role"), 'role "no such role"'
        )
        assert [p["name"] for p in listed(dsn)] == ["other", 'we "ird']
    finally:
        cluster.sql(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = %s",
            (dbname,),
        )
        cluster.sql('DROP PUBLICATION IF EXISTS "we ""ird", other', dbname=dbname)
        cluster.sql(f"DROP ROLE {_quoted(role)}")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
